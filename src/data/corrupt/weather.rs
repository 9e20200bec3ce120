//! Snow, frost and fog.

use std::sync::{Arc, Mutex, OnceLock};

use image::RgbImage;
use rayon::prelude::*;

use super::blur::shift_blur;
use super::draws::{below, fill_normal, stream, uniform, uniform_in, Draws};
use super::filters::{clipped_zoom_taps, resize_cubic_u8, Tap};
use super::{par_rows, to_u8, to_u8_f32};
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Snow

/// (mean, std, zoom, threshold, blur radius, blur sigma, blend) per severity.
const SNOW: [(f64, f64, f64, f64, usize, f64, f32); 5] = [
    (0.1, 0.3, 3.0, 0.5, 10, 4.0, 0.8),
    (0.2, 0.3, 2.0, 0.5, 12, 4.0, 0.7),
    (0.55, 0.3, 4.0, 0.9, 12, 8.0, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8.0, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12.0, 0.55),
];

/// A layer of normal noise, zoomed (SciPy order 1, centre crop), thresholded, motion-blurred
/// along a random angle in [-135, -45] degrees, rounded to 8 bits; added to the whitened image
/// twice (as is and rotated by 180 degrees). The layer keeps its zoomed size (which may exceed
/// the image) until after the blur, as in the package.
pub fn snow(img: &RgbImage, s: usize, draws: &Draws) -> RgbImage {
    let (mean, std, zoom, thr, radius, sigma, blend) = SNOW[s];
    let (w, h) = img.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let (ty, tx) = clipped_zoom_taps(hu, wu, zoom);
    let (zh, zw) = (ty.len(), tx.len());
    // The zoom reads only the layer's centre crop (rows y0..=y1, columns x0..=x1): only that
    // part is drawn, row by row from streams keyed by the image row.
    let span = |t: &[Tap]| {
        let lo = t.iter().map(|t| t.i0).min().unwrap_or(0);
        let hi = t.iter().map(|t| t.i1).max().unwrap_or(0);
        (lo, hi + 1 - lo)
    };
    let ((y0, lh), (x0, lw)) = (span(&ty), span(&tx));
    let mut layer = vec![0f64; lh * lw];
    layer.par_chunks_mut(lw).enumerate().for_each(|(i, r)| {
        let mut g = draws.stream(stream::SNOW_LAYER + (y0 + i) as u64);
        fill_normal(&mut g, r);
        r.iter_mut().for_each(|v| *v = mean + std * *v);
    });
    let tx: Vec<Tap> = tx
        .iter()
        .map(|t| Tap {
            i0: t.i0 - x0,
            i1: t.i1 - x0,
            t: t.t,
        })
        .collect();
    let mut zoomed = vec![0f32; zh * zw];
    zoomed.par_chunks_mut(zw).enumerate().for_each(|(y, o)| {
        let t = ty[y];
        let (r0, r1) = (
            &layer[(t.i0 - y0) * lw..(t.i0 - y0 + 1) * lw],
            &layer[(t.i1 - y0) * lw..(t.i1 - y0 + 1) * lw],
        );
        for (ov, tap) in o.iter_mut().zip(&tx) {
            let top = r0[tap.i0] + (r0[tap.i1] - r0[tap.i0]) * tap.t;
            let bot = r1[tap.i0] + (r1[tap.i1] - r1[tap.i0]) * tap.t;
            let v = top + (bot - top) * t.t;
            *ov = if v < thr {
                0.0
            } else {
                v.clamp(0.0, 1.0) as f32
            };
        }
    });
    let angle = uniform_in(&mut draws.stream(stream::ANGLE), -135.0, -45.0);
    let blurred = shift_blur(&zoomed, zh, zw, 1, radius, sigma, angle);
    // np.round(layer * 255).astype(np.uint8) / 255, cropped to the image. The blur's values
    // are >= 0, and adding then subtracting 2^23 rounds such f32 values half to even (as
    // `round_ties_even`, without the library call).
    const ROUND: f32 = 8_388_608.0;
    let mut flakes = vec![0f32; hu * wu];
    flakes.par_chunks_mut(wu).enumerate().for_each(|(y, o)| {
        for (ov, &b) in o.iter_mut().zip(&blurred[y * zw..y * zw + wu]) {
            let r = ((b * 255.0).max(0.0) + ROUND) - ROUND;
            *ov = r.min(255.0) / 255.0;
        }
    });
    let src = img.as_raw();
    let row = wu * 3;
    par_rows(w, h, |y, out| {
        let sr = &src[y * row..(y + 1) * row];
        let fr = &flakes[y * wu..(y + 1) * wu];
        // The flakes rotated by 180 degrees: row h - 1 - y read backwards.
        let rot = &flakes[(hu - 1 - y) * wu..(hu - y) * wu];
        for (((o, p), &f), &fb) in out
            .chunks_exact_mut(3)
            .zip(sr.chunks_exact(3))
            .zip(fr)
            .zip(rot.iter().rev())
        {
            let v = [
                p[0] as f32 / 255.0,
                p[1] as f32 / 255.0,
                p[2] as f32 / 255.0,
            ];
            // cv2.cvtColor(float32 RGB -> GRAY)
            let gray = 0.299f32 * v[0] + 0.587f32 * v[1] + 0.114f32 * v[2];
            let lift = gray * 1.5 + 0.5;
            let snowflakes = f as f64 + fb as f64;
            for (oc, &vc) in o.iter_mut().zip(&v) {
                let base = blend * vc + (1.0 - blend) * vc.max(lift);
                *oc = to_u8((base as f64 + snowflakes).clamp(0.0, 1.0) * 255.0);
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Frost

/// (image weight, frost weight) per severity.
const FROST: [(f64, f64); 5] = [(1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)];

/// The frost pictures the package draws from (`randint(5)`: frost1-5; frost6 ships with it but
/// is never used). They ship with this project under `assets/imagenet-c/frost/` (Apache-2.0,
/// licence beside them) and are compiled into the library.
const FROST_FILES: [&[u8]; 5] = [
    include_bytes!("../../../assets/imagenet-c/frost/frost1.png"),
    include_bytes!("../../../assets/imagenet-c/frost/frost2.png"),
    include_bytes!("../../../assets/imagenet-c/frost/frost3.png"),
    include_bytes!("../../../assets/imagenet-c/frost/frost4.jpg"),
    include_bytes!("../../../assets/imagenet-c/frost/frost5.jpg"),
];

/// Decoded frost picture `i` (RGB; the alpha channel of the PNGs is dropped, as `cv2.imread`).
fn frost_picture(i: usize) -> Result<&'static RgbImage> {
    static PICTURES: [OnceLock<std::result::Result<RgbImage, String>>; 5] =
        [const { OnceLock::new() }; 5];
    PICTURES[i]
        .get_or_init(|| {
            image::load_from_memory(FROST_FILES[i])
                .map(|im| im.into_rgb8())
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Msg(format!("embedded frost picture {}: {e}", i + 1)))
}

/// The package's frost scale for an image of `(h, w)`: 1 if the picture covers the image, else
/// the factor that makes it cover; then times 1.1. Returns the rescaled picture's (h, w).
fn frost_size(fh: usize, fw: usize, h: usize, w: usize) -> (usize, usize) {
    let (fhf, fwf, hf, wf) = (fh as f64, fw as f64, h as f64, w as f64);
    let mut sf = if fh >= h && fw >= w {
        1.0
    } else if fh < h && fw >= w {
        hf / fhf
    } else if fh >= h && fw < w {
        wf / fwf
    } else {
        (hf / fhf).max(wf / fwf)
    };
    sf *= 1.1;
    ((fhf * sf).ceil() as usize, (fwf * sf).ceil() as usize)
}

/// Rescaled frost pictures by (picture, h, w): every image smaller than the pictures shares
/// one size, so a few entries serve a whole dataset.
fn rescaled_frost(i: usize, nh: usize, nw: usize) -> Result<Arc<Vec<u8>>> {
    type Entry = ((usize, usize, usize), Arc<Vec<u8>>);
    static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
    let key = (i, nh, nw);
    if let Ok(c) = CACHE.lock() {
        if let Some((_, v)) = c.iter().find(|(k, _)| *k == key) {
            return Ok(v.clone());
        }
    }
    let pic = frost_picture(i)?;
    let (fw, fh) = pic.dimensions();
    let v = Arc::new(resize_cubic_u8(
        pic.as_raw(),
        fh as usize,
        fw as usize,
        nh,
        nw,
    ));
    if let Ok(mut c) = CACHE.lock() {
        if c.len() >= 16 {
            c.remove(0);
        }
        c.push((key, v.clone()));
    }
    Ok(v)
}

/// Blend with a random crop of one of five frost pictures, bicubically enlarged by 1.1 (and
/// more if the image is larger than the picture), as the package does.
pub fn frost(img: &RgbImage, s: usize, draws: &Draws) -> Result<RgbImage> {
    let mut r = draws.stream(stream::FROST_PICK);
    let i = below(&mut r, 5) as usize;
    let pic = frost_picture(i)?;
    let (w, h) = img.dimensions();
    let (nh, nw) = frost_size(
        pic.height() as usize,
        pic.width() as usize,
        h as usize,
        w as usize,
    );
    let y0 = below(&mut r, (nh - h as usize) as u64) as usize;
    let x0 = below(&mut r, (nw - w as usize) as u64) as usize;
    frost_at(img, s, i, y0, x0)
}

/// Frost at severity index `s` (0..5) with picture `picture` (0..5) and the crop's top-left
/// corner `(y0, x0)` in the rescaled picture (the package's three random draws); for tests
/// that pin them.
pub fn frost_at(
    img: &RgbImage,
    s: usize,
    picture: usize,
    y0: usize,
    x0: usize,
) -> Result<RgbImage> {
    let (ca, cf) = FROST[s];
    let pic = frost_picture(picture)?;
    let (w, h) = img.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let (nh, nw) = frost_size(pic.height() as usize, pic.width() as usize, hu, wu);
    if y0 + hu > nh || x0 + wu > nw {
        return Err(Error::shape(
            "frost",
            format!("crop at ({y0}, {x0}) of {wu}x{hu} leaves the {nw}x{nh} frost picture"),
        ));
    }
    let fr = rescaled_frost(picture, nh, nw)?;
    let src = img.as_raw();
    let row = wu * 3;
    Ok(par_rows(w, h, |y, out| {
        let sr = &src[y * row..(y + 1) * row];
        let fr_row = &fr[((y0 + y) * nw + x0) * 3..((y0 + y) * nw + x0 + wu) * 3];
        for ((o, &v), &f) in out.iter_mut().zip(sr).zip(fr_row) {
            *o = to_u8(ca * v as f64 + cf * f as f64);
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Fog

/// (fog strength, plasma wibble decay) per severity.
const FOG: [(f64, f64); 5] = [(1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)];

/// The package's diamond-square plasma fractal on a toroidal `size x size` grid (size a power
/// of two), normalised to [0, 1]. Its noise at each level is `wibble * U(-wibble, wibble)`,
/// i.e. of scale wibble squared, with wibble starting at 100 and divided by `decay` per level.
pub fn plasma_fractal(size: usize, decay: f64, draws: &Draws) -> Vec<f64> {
    let mut m = plasma_raw(size, decay, draws);
    let (lo, hi) = plasma_range(&m);
    m.iter_mut().for_each(|v| *v -= lo);
    if hi > 0.0 {
        m.iter_mut().for_each(|v| *v /= hi);
    }
    m
}

/// The unnormalised map. Each level writes its new points in place (a level reads only
/// points of earlier levels), one row of cells at a time, each row's noise from its own
/// stream keyed by (level, sub-grid, row), consumed left to right.
fn plasma_raw(size: usize, decay: f64, draws: &Draws) -> Vec<f64> {
    plasma_raw_into(Vec::new(), size, decay, draws)
}

thread_local! {
    /// The plasma map of the last fog call on this thread, reused (a fresh 0.5 MB map costs
    /// page faults on every image). A nested call finds the slot empty and allocates.
    static PLASMA_SCRATCH: std::cell::Cell<Option<Vec<f64>>> = const { std::cell::Cell::new(None) };
}

/// `plasma_raw` into a reused buffer (every point is overwritten, the corner first).
fn plasma_raw_into(mut m: Vec<f64>, size: usize, decay: f64, draws: &Draws) -> Vec<f64> {
    if m.len() == size * size {
        m[0] = 0.0; // the only point read before it is written
    } else {
        m.clear();
        m.resize(size * size, 0.0);
    }
    let mut step = size;
    let mut wibble = 100.0f64;
    let mut level = 0u64;
    let rng = |kind: u64, level: u64, i: usize| {
        draws.stream(stream::PLASMA | (level << 24) | (kind << 22) | i as u64)
    };
    while step >= 2 {
        let half = step / 2;
        let n = size / step;
        let mask = n - 1; // n is a power of two: wrap-around by masking
        let noise =
            |g: &mut rand_chacha::ChaCha8Rng| wibble * (-wibble + 2.0 * wibble * uniform(g));
        // Squares: centre = mean of the four corners.
        for i in 0..n {
            let mut g = rng(0, level, i);
            let (r0, r1) = (i * step * size, ((i + 1) & mask) * step * size);
            let rc = (half + i * step) * size + half;
            for j in 0..n {
                let (c0, c1) = (j * step, ((j + 1) & mask) * step);
                let sum = (m[r0 + c0] + m[r1 + c0]) + (m[r0 + c1] + m[r1 + c1]);
                m[rc + j * step] = sum / 4.0 + noise(&mut g);
            }
        }
        // Diamonds: the two edge midpoints of each cell, from the adjacent centres and corners
        // (neither reads the other's points, so both are written in place).
        for i in 0..n {
            let (im, i1) = ((i + mask) & mask, (i + 1) & mask);
            let corner = i * step * size; // row of the cell's top corners
            let centre = (half + i * step) * size + half; // row of its centre (+ half)
            let centre_up = (half + im * step) * size + half;
            let corner_down = i1 * step * size;
            // Top edge midpoints: centres of this cell and the one above, top corners.
            let mut g = rng(1, level, i);
            for j in 0..n {
                let j1 = (j + 1) & mask;
                let sum = (m[centre + j * step] + m[centre_up + j * step])
                    + (m[corner + j * step] + m[corner + j1 * step]);
                m[corner + half + j * step] = sum / 4.0 + noise(&mut g);
            }
            // Left edge midpoints: centres of this cell and the one to the left, left corners.
            let mut g = rng(2, level, i);
            let left_row = (half + i * step) * size;
            for j in 0..n {
                let jm = (j + mask) & mask;
                let sum = (m[centre + j * step] + m[centre + jm * step])
                    + (m[corner + j * step] + m[corner_down + j * step]);
                m[left_row + j * step] = sum / 4.0 + noise(&mut g);
            }
        }
        step /= 2;
        wibble /= decay;
        level += 1;
    }
    m
}

/// The normalisation's offset and scale: `lo = min`, `hi = max(v - lo)` (= `max - lo`:
/// subtracting a constant keeps the order, rounding included).
fn plasma_range(m: &[f64]) -> (f64, f64) {
    let (lo, max) = m
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    (lo, max - lo)
}

/// Add a plasma fractal (cropped from a power-of-two map covering the image), then rescale by
/// `max / (max + strength)`.
pub fn fog(img: &RgbImage, s: usize, draws: &Draws) -> RgbImage {
    let (strength, decay) = FOG[s];
    let (w, h) = img.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let size = hu.max(wu).max(3).next_power_of_two();
    let plasma = PLASMA_SCRATCH.with(|c| c.take()).unwrap_or_default();
    let plasma = plasma_raw_into(plasma, size, decay, draws);
    // Normalised only where the image reads it: `(v - lo) / hi` as plasma_fractal.
    let (lo, hi) = plasma_range(&plasma);
    let src = img.as_raw();
    let max_val = src.iter().copied().max().unwrap_or(0) as f64 / 255.0;
    let row = wu * 3;
    // (x * max) / (max + strength), as one factor (a last-bit difference on a random field).
    let k = (max_val / (max_val + strength)) as f32;
    let inv = 1.0f32 / 255.0;
    let out = par_rows(w, h, |y, out| {
        let sr = &src[y * row..(y + 1) * row];
        let pr = &plasma[y * size..y * size + wu];
        // The plasma term per pixel, then per value (plain loops that vectorise).
        let mut pf3 = vec![0f32; row];
        for (t, &pv) in pf3.chunks_exact_mut(3).zip(pr) {
            let v = pv - lo;
            let v = if hi > 0.0 { v / hi } else { v };
            t.fill((strength * v) as f32);
        }
        for ((o, &p), &t) in out.iter_mut().zip(sr).zip(&pf3) {
            let x = p as f32 * inv + t;
            *o = to_u8_f32((x * k).clamp(0.0, 1.0) * 255.0);
        }
    });
    PLASMA_SCRATCH.with(|c| c.set(Some(plasma)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frost_is_enlarged_by_a_tenth_even_when_it_covers_the_image() {
        // 1.1 in float64: 900 * 1.1 = 990.0000000000001, hence 991; 600 * 1.1 = 660.0 exactly.
        assert_eq!(frost_size(600, 900, 224, 224), (660, 991));
        // An image taller than the picture scales it up to cover, then 1.1 more.
        let (nh, nw) = frost_size(315, 560, 400, 300);
        assert!(nh > 400 && nw > 300);
    }

    #[test]
    fn embedded_frost_pictures_decode() {
        for i in 0..5 {
            let p = frost_picture(i).unwrap();
            assert!(p.width() >= 480 && p.height() >= 300);
        }
    }

    #[test]
    fn plasma_is_normalised_and_seeded() {
        let d = Draws::new(5, 9, 2);
        let a = plasma_fractal(64, 2.0, &d);
        let b = plasma_fractal(64, 2.0, &d);
        assert_eq!(a, b);
        let (lo, hi) = a
            .iter()
            .fold((1.0f64, 0.0f64), |(l, h), &v| (l.min(v), h.max(v)));
        assert_eq!((lo, hi), (0.0, 1.0));
        assert_ne!(a, plasma_fractal(64, 2.0, &Draws::new(6, 9, 2)));
    }
}
