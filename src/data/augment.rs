//! Aligned augmentation of an image and its label map (DESIGN.md section 1).
//!
//! Train: torchvision `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))` (its
//! `get_params`, 10 tries then the centre-crop fallback, Python's round-half-even), bicubic for
//! the image (Pillow's kernel: `fast_image_resize` Catmull-Rom convolution, antialiased like
//! Pillow when shrinking) and Pillow NEAREST for the label map (`src = top + floor((dst + 0.5) *
//! h / out)`); horizontal flip p = 0.5 on both; `ColorJitter(b, c, s[, h])` with torchvision's
//! random op order and tensor formulas on f32 in [0, 1] (Pillow would round to u8 between ops).
//! Eval: `Resize(resize)` of the shorter side (bicubic; long side `int(resize * long / short)`)
//! then `CenterCrop(crop)` (offsets `round((H - crop) / 2)`).
//!
//! All randomness comes from [`sample_rng`]`(seed, epoch, index)`: a batch is reproducible.

use fast_image_resize as fr;
use image::RgbImage;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::imageio::LabelMap;
use crate::{Error, Result};

/// Train-time augmentation parameters (defaults = the paper's).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainAug {
    pub size: usize,
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
    pub flip: bool,
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
}

impl Default for TrainAug {
    fn default() -> Self {
        TrainAug {
            size: 224,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip: true,
            brightness: 0.1,
            contrast: 0.1,
            saturation: 0.1,
            hue: 0.0,
        }
    }
}

/// Either transform.
#[derive(Clone, Debug, PartialEq)]
pub enum Transform {
    Train(TrainAug),
    Eval { resize: usize, crop: usize },
}

impl Transform {
    pub fn eval_default() -> Self {
        Transform::Eval {
            resize: 256,
            crop: 224,
        }
    }
    /// Output side length.
    pub fn out_size(&self) -> usize {
        match self {
            Transform::Train(a) => a.size,
            Transform::Eval { crop, .. } => *crop,
        }
    }
}

/// SplitMix64 step: decorrelates (seed, epoch, index) into one RNG seed.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The RNG of one sample: a function of (seed, epoch, dataset index) only.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    let s = splitmix(splitmix(splitmix(seed) ^ epoch) ^ index);
    ChaCha8Rng::seed_from_u64(s)
}

/// A crop box in source pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub top: usize,
    pub left: usize,
    pub h: usize,
    pub w: usize,
}

/// torchvision `RandomResizedCrop.get_params` for an image of `width x height`.
pub fn rrc_params(
    width: usize,
    height: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut ChaCha8Rng,
) -> CropBox {
    let area = (width * height) as f64;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.random_range(scale.0..=scale.1);
        let aspect = rng.random_range(lr0..=lr1).exp();
        let w = (target_area * aspect).sqrt().round_ties_even() as i64;
        let h = (target_area / aspect).sqrt().round_ties_even() as i64;
        if 0 < w && w as usize <= width && 0 < h && h as usize <= height {
            let (w, h) = (w as usize, h as usize);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return CropBox { top, left, h, w };
        }
    }
    centre_fallback(width, height, ratio)
}

/// The fallback of `get_params` after 10 failed tries.
pub fn centre_fallback(width: usize, height: usize, ratio: (f64, f64)) -> CropBox {
    let in_ratio = width as f64 / height as f64;
    let (rmin, rmax) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < rmin {
        (
            width,
            ((width as f64 / rmin).round_ties_even() as usize).max(1),
        )
    } else if in_ratio > rmax {
        (
            ((height as f64 * rmax).round_ties_even() as usize).max(1),
            height,
        )
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h.min(height)) / 2,
        left: (width - w.min(width)) / 2,
        h: h.min(height),
        w: w.min(width),
    }
}

/// Bicubic resize of the `crop` region of `img` to `ow x oh`, as Pillow does it: Catmull-Rom
/// (a = -0.5) convolution, support scaled when shrinking, horizontal pass first with the
/// intermediate rounded to u8, then the vertical pass. (`fast_image_resize` runs the vertical
/// pass first on u8 images, which changes the intermediate rounding and clipping: up to 5 grey
/// levels apart from Pillow; two single-axis calls restore Pillow's order.)
pub fn resize_bicubic(img: &RgbImage, crop: CropBox, ow: usize, oh: usize) -> Result<RgbImage> {
    let err = |e: &dyn std::fmt::Display| Error::Msg(format!("resize: {e}"));
    let alg = fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom);
    let (iw, ih) = (img.width(), img.height());
    let src = fr::images::ImageRef::new(iw, ih, img.as_raw(), fr::PixelType::U8x3)
        .map_err(|e| err(&e))?;
    let mut resizer = fr::Resizer::new();
    // Horizontal: crop columns, all rows kept (no vertical work is done when heights match).
    let mut tmp = fr::images::Image::new(ow as u32, ih, fr::PixelType::U8x3);
    let opts = fr::ResizeOptions::new().resize_alg(alg).crop(
        crop.left as f64,
        0.0,
        crop.w as f64,
        ih as f64,
    );
    resizer.resize(&src, &mut tmp, &opts).map_err(|e| err(&e))?;
    // Vertical: crop rows.
    let mut dst = fr::images::Image::new(ow as u32, oh as u32, fr::PixelType::U8x3);
    let opts = fr::ResizeOptions::new().resize_alg(alg).crop(
        0.0,
        crop.top as f64,
        ow as f64,
        crop.h as f64,
    );
    resizer.resize(&tmp, &mut dst, &opts).map_err(|e| err(&e))?;
    RgbImage::from_raw(ow as u32, oh as u32, dst.into_vec())
        .ok_or_else(|| Error::Msg("resize: buffer size".into()))
}

/// Pillow NEAREST resize of the `crop` region of a label map to `ow x oh`.
pub fn resize_nearest(m: &LabelMap, crop: CropBox, ow: usize, oh: usize) -> LabelMap {
    let (sx, sy) = (crop.w as f64 / ow as f64, crop.h as f64 / oh as f64);
    let xs: Vec<usize> = (0..ow)
        .map(|x| crop.left + (((x as f64 + 0.5) * sx) as usize).min(crop.w - 1))
        .collect();
    let mut data = Vec::with_capacity(ow * oh);
    for y in 0..oh {
        let yy = crop.top + (((y as f64 + 0.5) * sy) as usize).min(crop.h - 1);
        data.extend(xs.iter().map(|&xx| m.data[yy * m.w + xx]));
    }
    LabelMap { h: oh, w: ow, data }
}

fn gray(p: &[f32]) -> f32 {
    0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// torchvision tensor `ColorJitter`: draws the op order and factors, then applies them.
/// `px` is `(H, W, 3)` in [0, 1].
pub fn color_jitter(px: &mut [f32], aug: &TrainAug, rng: &mut ChaCha8Rng) {
    let mut order = [0usize, 1, 2, 3];
    for i in (1..4).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    let mut factor = |v: f32, centre: f32| -> Option<f32> {
        (v > 0.0).then(|| rng.random_range((centre - v).max(0.0)..=centre + v))
    };
    let b = factor(aug.brightness, 1.0);
    let c = factor(aug.contrast, 1.0);
    let s = factor(aug.saturation, 1.0);
    let h = factor(aug.hue, 0.0);
    let blend = |x: f32, y: f32, r: f32| (r * x + (1.0 - r) * y).clamp(0.0, 1.0);
    for op in order {
        match (op, b, c, s, h) {
            (0, Some(b), ..) => px.iter_mut().for_each(|v| *v = blend(*v, 0.0, b)),
            (1, _, Some(c), ..) => {
                let n = px.len() / 3;
                let mean = px.chunks(3).map(gray).sum::<f32>() / n as f32;
                px.iter_mut().for_each(|v| *v = blend(*v, mean, c));
            }
            (2, _, _, Some(s), _) => {
                for p in px.chunks_mut(3) {
                    let g = gray(p);
                    p.iter_mut().for_each(|v| *v = blend(*v, g, s));
                }
            }
            (3, _, _, _, Some(h)) => px.chunks_mut(3).for_each(|p| adjust_hue(p, h)),
            _ => {}
        }
    }
}

/// torchvision `_rgb2hsv` -> shift hue -> `_hsv2rgb`, one pixel.
fn adjust_hue(p: &mut [f32], hue: f32) {
    let (r, g, b) = (p[0], p[1], p[2]);
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let cr = maxc - minc;
    let s = cr / if eqc { 1.0 } else { maxc };
    let d = if eqc { 1.0 } else { cr };
    let (rc, gc, bc) = ((maxc - r) / d, (maxc - g) / d, (maxc - b) / d);
    let hh = if maxc == r {
        bc - gc
    } else if maxc == g {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    let h = ((hh / 6.0 + 1.0) % 1.0 + hue).rem_euclid(1.0);
    let v = maxc;
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let pp = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    let (nr, ng, nb) = match (i as i32).rem_euclid(6) {
        0 => (v, t, pp),
        1 => (q, v, pp),
        2 => (pp, v, t),
        3 => (pp, q, v),
        4 => (t, pp, v),
        _ => (v, pp, q),
    };
    p[0] = nr;
    p[1] = ng;
    p[2] = nb;
}

/// One transformed sample: `(H, W, 3)` f32 in [0, 1] and the aligned label map.
pub struct Augmented {
    pub pixels: Vec<f32>,
    pub map: Option<LabelMap>,
}

/// Applies `t` to an image and (optionally) its label map of the same size.
pub fn apply(
    img: &RgbImage,
    map: Option<&LabelMap>,
    t: &Transform,
    rng: &mut ChaCha8Rng,
) -> Result<Augmented> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(Error::Msg("empty image".into()));
    }
    if let Some(m) = map {
        if (m.w, m.h) != (w, h) {
            return Err(Error::Msg(format!(
                "label map is {}x{}, image is {w}x{h}",
                m.w, m.h
            )));
        }
    }
    let (rgb, mut lab) = match t {
        Transform::Train(a) => {
            let cb = rrc_params(w, h, a.scale, a.ratio, rng);
            let rgb = resize_bicubic(img, cb, a.size, a.size)?;
            let lab = map.map(|m| resize_nearest(m, cb, a.size, a.size));
            (rgb, lab)
        }
        Transform::Eval { resize, crop } => {
            let (ow, oh) = if w <= h {
                (*resize, (*resize as f64 * h as f64 / w as f64) as usize)
            } else {
                ((*resize as f64 * w as f64 / h as f64) as usize, *resize)
            };
            if ow < *crop || oh < *crop {
                return Err(Error::flag("--crop", "crop larger than the resized image"));
            }
            let full = CropBox {
                top: 0,
                left: 0,
                h,
                w,
            };
            let big = resize_bicubic(img, full, ow, oh)?;
            let top = ((oh - crop) as f64 / 2.0).round_ties_even() as usize;
            let left = ((ow - crop) as f64 / 2.0).round_ties_even() as usize;
            let rgb = image::imageops::crop_imm(
                &big,
                left as u32,
                top as u32,
                *crop as u32,
                *crop as u32,
            )
            .to_image();
            let lab = map.map(|m| {
                let big = resize_nearest(m, full, ow, oh);
                resize_nearest(
                    &big,
                    CropBox {
                        top,
                        left,
                        h: *crop,
                        w: *crop,
                    },
                    *crop,
                    *crop,
                )
            });
            (rgb, lab)
        }
    };
    let (ow, oh) = (rgb.width() as usize, rgb.height() as usize);
    let mut px: Vec<f32> = rgb.as_raw().iter().map(|&v| v as f32 / 255.0).collect();
    if let Transform::Train(a) = t {
        if a.flip && rng.random_bool(0.5) {
            for y in 0..oh {
                let row = &mut px[y * ow * 3..(y + 1) * ow * 3];
                for x in 0..ow / 2 {
                    for c in 0..3 {
                        row.swap(x * 3 + c, (ow - 1 - x) * 3 + c);
                    }
                }
            }
            if let Some(m) = lab.as_mut() {
                for row in m.data.chunks_mut(ow) {
                    row.reverse();
                }
            }
        }
        color_jitter(&mut px, a, rng);
    }
    Ok(Augmented {
        pixels: px,
        map: lab,
    })
}

/// timm's `RandomErasing(probability, mode='pixel', max_count=1)` on one image, NHWC f32 in
/// [0, 1] (`h * w * 3` values): with probability `p`, up to 10 tries of a rectangle of area
/// `U(0.02, 1/3)` of the image and aspect ratio `exp(U(ln 0.3, ln 1/0.3))` (sides rounded);
/// the first that fits is filled with per-pixel, per-channel normal noise. timm draws N(0, 1)
/// on the normalised tensor; the model here normalises inside, so the noise is
/// `mean_c + std_c * N(0, 1)` (not clamped), which normalises to the same N(0, 1). The label
/// map is not erased (the reference's aligned transforms do not include erasing). Returns the
/// erased box, if any. Uses its own generator (the caller derives it from the sample's).
pub fn random_erase_pixel(
    img: &mut [f32],
    h: usize,
    w: usize,
    p: f64,
    rng: &mut ChaCha8Rng,
) -> Option<CropBox> {
    use crate::ops::basic::{IMAGENET_MEAN, IMAGENET_STD};
    if p <= 0.0 || rng.random_range(0.0..1.0) >= p {
        return None;
    }
    let area = (h * w) as f64;
    let (lo, hi) = (0.3f64.ln(), (1.0f64 / 0.3).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(0.02..1.0 / 3.0);
        let aspect = rng.random_range(lo..hi).exp();
        let eh = (target * aspect).sqrt().round() as usize;
        let ew = (target / aspect).sqrt().round() as usize;
        if eh == 0 || ew == 0 || eh >= h || ew >= w {
            continue;
        }
        let top = rng.random_range(0..=h - eh);
        let left = rng.random_range(0..=w - ew);
        for y in top..top + eh {
            for x in left..left + ew {
                for c in 0..3 {
                    // Box-Muller: one standard normal per value.
                    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
                    let u2: f64 = rng.random_range(0.0..1.0);
                    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                    img[(y * w + x) * 3 + c] = IMAGENET_MEAN[c] + IMAGENET_STD[c] * z as f32;
                }
            }
        }
        return Some(CropBox {
            top,
            left,
            h: eh,
            w: ew,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_is_centre_crop_with_ratio_limits() {
        // 1000x10: every try fails (h would exceed 10); ratio 1000 > 4/3 -> h = 10, w = 13.
        let mut rng = sample_rng(0, 0, 0);
        let cb = rrc_params(1000, 10, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        assert_eq!(
            cb,
            CropBox {
                top: 0,
                left: 493,
                h: 10,
                w: 13
            }
        );
        assert_eq!(
            centre_fallback(10, 1000, (0.75, 4.0 / 3.0)),
            CropBox {
                top: 493,
                left: 0,
                h: 13,
                w: 10
            }
        );
        assert_eq!(
            centre_fallback(100, 90, (0.75, 4.0 / 3.0)),
            CropBox {
                top: 0,
                left: 0,
                h: 90,
                w: 100
            }
        );
    }

    #[test]
    fn rrc_boxes_are_inside_and_within_limits() {
        for i in 0..500 {
            let mut rng = sample_rng(1, 2, i);
            let (w, h) = (50 + (i as usize * 7) % 300, 40 + (i as usize * 13) % 200);
            let cb = rrc_params(w, h, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(cb.left + cb.w <= w && cb.top + cb.h <= h && cb.w > 0 && cb.h > 0);
        }
    }

    #[test]
    fn nearest_keeps_alignment_under_flip_and_crop() {
        // An image whose red channel encodes the column, a map equal to the column index: after
        // any train transform, the map column ordering must follow the image's.
        let (w, h) = (60usize, 40usize);
        let img = RgbImage::from_fn(w as u32, h as u32, |x, _| image::Rgb([(x * 4) as u8, 0, 0]));
        let map = LabelMap {
            h,
            w,
            data: (0..h * w).map(|i| (i % w) as u16).collect(),
        };
        let aug = TrainAug {
            size: 32,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            ..Default::default()
        };
        for i in 0..20 {
            let mut rng = sample_rng(5, 0, i);
            let out = apply(&img, Some(&map), &Transform::Train(aug.clone()), &mut rng).unwrap();
            let m = out.map.unwrap();
            let row = &m.data[16 * 32..17 * 32];
            let red: Vec<f32> = (0..32).map(|x| out.pixels[(16 * 32 + x) * 3]).collect();
            let map_increasing = row.first() <= row.last();
            let img_increasing = red[0] <= red[31];
            assert_eq!(map_increasing, img_increasing, "sample {i}");
            // Nearest map value vs the column encoded in the (bicubic) image: within 2 columns.
            for x in [3usize, 16, 28] {
                let col = out.pixels[(16 * 32 + x) * 3] * 255.0 / 4.0;
                assert!(
                    (col - row[x] as f32).abs() <= 2.5,
                    "sample {i} x {x}: {col} vs {}",
                    row[x]
                );
            }
        }
    }

    #[test]
    fn hue_roundtrip_is_identity_at_zero_shift() {
        let mut p = [0.2f32, 0.7, 0.4];
        adjust_hue(&mut p, 0.0);
        assert!(
            (p[0] - 0.2).abs() < 1e-6 && (p[1] - 0.7).abs() < 1e-6 && (p[2] - 0.4).abs() < 1e-6
        );
    }

    #[test]
    fn random_erasing_fills_one_box_with_normalised_noise() {
        use crate::ops::basic::{IMAGENET_MEAN, IMAGENET_STD};
        let (h, w) = (64, 48);
        let mut erased = 0;
        let mut pooled = (0f64, 0f64, 0f64);
        for i in 0..200u64 {
            let mut img = vec![0.5f32; h * w * 3];
            let mut rng = sample_rng(1, 2, i);
            match random_erase_pixel(&mut img, h, w, 0.25, &mut rng) {
                None => assert!(img.iter().all(|&v| v == 0.5)),
                Some(b) => {
                    erased += 1;
                    let frac = (b.h * b.w) as f64 / (h * w) as f64;
                    assert!((0.015..0.36).contains(&frac), "{b:?}");
                    let ar = b.h as f64 / b.w as f64;
                    assert!((0.25..4.0).contains(&ar), "{b:?}");
                    let mut sums = [0f64; 3];
                    let mut sq = [0f64; 3];
                    for y in 0..h {
                        for x in 0..w {
                            let inside = (b.top..b.top + b.h).contains(&y)
                                && (b.left..b.left + b.w).contains(&x);
                            for c in 0..3 {
                                let v = img[(y * w + x) * 3 + c];
                                if inside {
                                    let z = ((v - IMAGENET_MEAN[c]) / IMAGENET_STD[c]) as f64;
                                    sums[c] += z;
                                    sq[c] += z * z;
                                } else {
                                    assert_eq!(v, 0.5, "outside the box at {y},{x}");
                                }
                            }
                        }
                    }
                    for c in 0..3 {
                        pooled.0 += sums[c];
                        pooled.1 += sq[c];
                        pooled.2 += (b.h * b.w) as f64;
                    }
                }
            }
        }
        // Pooled over every erased value: N(0, 1) after normalisation.
        let mean = pooled.0 / pooled.2;
        let var = pooled.1 / pooled.2 - mean * mean;
        assert!(pooled.2 > 10_000.0, "{pooled:?}");
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
        // p = 0.25 over 200 images: 50 expected (binomial sd ~6).
        assert!((25..=75).contains(&erased), "{erased}");
        let mut img = vec![0.5f32; 16 * 16 * 3];
        assert!(random_erase_pixel(&mut img, 16, 16, 0.0, &mut sample_rng(0, 0, 0)).is_none());
    }
}
