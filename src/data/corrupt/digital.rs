//! Brightness, contrast, elastic transform and pixelate.

use image::RgbImage;
use rayon::prelude::*;

use super::draws::{stream, uniform_in, Draws};
use super::filters::{gaussian_filter_f32, pil_nearest_index, pil_resize, reflect_half, PilFilter};
use super::{par_rows, to_u8, to_u8_f32};

const BRIGHTNESS_SHIFT: [f64; 5] = [0.1, 0.2, 0.3, 0.4, 0.5];
const CONTRAST_FACTOR: [f64; 5] = [0.4, 0.3, 0.2, 0.1, 0.05];
const ELASTIC_ALPHA: [f64; 5] = [0.05, 0.065, 0.085, 0.1, 0.12];
const PIXELATE_FACTOR: [f64; 5] = [0.6, 0.5, 0.4, 0.3, 0.25];

/// scikit-image's `rgb2hsv` for one pixel, in its float64 operations (later maxima win ties).
fn rgb2hsv(r: f64, g: f64, b: f64) -> (f64, f64, f64) {
    let v = r.max(g).max(b);
    let delta = v - r.min(g).min(b);
    if delta == 0.0 {
        return (0.0, 0.0, v);
    }
    let s = delta / v;
    let mut h = 0.0;
    if r == v {
        h = (g - b) / delta;
    }
    if g == v {
        h = 2.0 + (b - r) / delta;
    }
    if b == v {
        h = 4.0 + (r - g) / delta;
    }
    // NumPy's `% 1.`: fmod, then shifted into [0, 1) for negative remainders.
    let mut h = (h / 6.0) % 1.0;
    if h < 0.0 {
        h += 1.0;
    }
    (h, s, v)
}

/// scikit-image's `hsv2rgb` for one pixel.
fn hsv2rgb(h: f64, s: f64, v: f64) -> (f64, f64, f64) {
    let hi = (h * 6.0).floor();
    let f = h * 6.0 - hi;
    let p = v * (1.0 - s);
    let q = v * (1.0 - f * s);
    let t = v * (1.0 - (1.0 - f) * s);
    match (hi as u8) % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// HSV value channel + c (clipped), back to RGB.
pub fn brightness(img: &RgbImage, s: usize) -> RgbImage {
    let c = BRIGHTNESS_SHIFT[s];
    let (w, h) = img.dimensions();
    let src = img.as_raw();
    let row = w as usize * 3;
    par_rows(w, h, |y, out| {
        let sr = &src[y * row..(y + 1) * row];
        for (o, p) in out.chunks_exact_mut(3).zip(sr.chunks_exact(3)) {
            let (hh, ss, vv) = rgb2hsv(
                p[0] as f64 / 255.0,
                p[1] as f64 / 255.0,
                p[2] as f64 / 255.0,
            );
            let (r, g, b) = hsv2rgb(hh, ss, (vv + c).clamp(0.0, 1.0));
            o[0] = to_u8(r.clamp(0.0, 1.0) * 255.0);
            o[1] = to_u8(g.clamp(0.0, 1.0) * 255.0);
            o[2] = to_u8(b.clamp(0.0, 1.0) * 255.0);
        }
    })
}

/// Blend towards each channel's mean: `(x - mean) * c + mean`.
pub fn contrast(img: &RgbImage, s: usize) -> RgbImage {
    let c = CONTRAST_FACTOR[s];
    let (w, h) = img.dimensions();
    let src = img.as_raw();
    let n = (w * h) as f64;
    let mut means = [0.0f64; 3];
    for p in src.chunks_exact(3) {
        for k in 0..3 {
            means[k] += p[k] as f64 / 255.0;
        }
    }
    means.iter_mut().for_each(|m| *m /= n);
    let row = w as usize * 3;
    par_rows(w, h, |y, out| {
        let sr = &src[y * row..(y + 1) * row];
        for (i, (o, &v)) in out.iter_mut().zip(sr).enumerate() {
            let m = means[i % 3];
            *o = to_u8(((v as f64 / 255.0 - m) * c + m).clamp(0.0, 1.0) * 255.0);
        }
    })
}

/// The package's elastic transform (its own variant, not Hendrycks' affine + elastic one):
/// displacement fields of uniform noise in `±0.005 H`, Gaussian-smoothed (sigma = 1% of each
/// side, truncated at 3 sigma, 'reflect' border) and scaled by alpha; bilinear resampling with
/// SciPy's 'reflect' border.
pub fn elastic_transform(img: &RgbImage, s: usize, draws: &Draws) -> RgbImage {
    let (w, h) = img.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let sigma = (hu as f64 * 0.01, wu as f64 * 0.01);
    let alpha = 250.0 * ELASTIC_ALPHA[s];
    let max_d = hu as f64 * 0.005;
    let field = |base: u64| -> Vec<f32> {
        let mut noise = vec![0.0f32; hu * wu];
        noise.par_chunks_mut(wu).enumerate().for_each(|(y, r)| {
            let mut g = draws.stream(base + y as u64);
            r.iter_mut()
                .for_each(|v| *v = (uniform_in(&mut g, -max_d, max_d) * alpha) as f32);
        });
        // Scaling before the (linear) filter instead of after: same field up to rounding.
        gaussian_filter_f32(&noise, hu, wu, sigma, 3.0, reflect_half)
    };
    let dx = field(stream::ELASTIC_DX);
    let dy = field(stream::ELASTIC_DY);
    // The package resamples the float32 image x / 255.
    let src: Vec<f32> = img.as_raw().iter().map(|&v| v as f32 / 255.0).collect();
    let row = wu * 3;
    par_rows(w, h, |y, out| {
        for x in 0..wu {
            let i = y * wu + x;
            let cy = y as f32 + dy[i];
            let cx = x as f32 + dx[i];
            let (fy, fx) = (cy.floor(), cx.floor());
            let (ty, tx) = (cy - fy, cx - fx);
            let y0 = reflect_half(fy as isize, hu) * row;
            let y1 = reflect_half(fy as isize + 1, hu) * row;
            let x0 = reflect_half(fx as isize, wu) * 3;
            let x1 = reflect_half(fx as isize + 1, wu) * 3;
            for c in 0..3 {
                let top = src[y0 + x0 + c] + tx * (src[y0 + x1 + c] - src[y0 + x0 + c]);
                let bot = src[y1 + x0 + c] + tx * (src[y1 + x1 + c] - src[y1 + x0 + c]);
                let v = top + ty * (bot - top);
                out[x * 3 + c] = to_u8_f32(v.clamp(0.0, 1.0) * 255.0);
            }
        }
    })
}

/// Box downscale by the severity's factor, then nearest-neighbour upscale (the package's
/// variant; Hendrycks' original upscaled with the box filter too).
pub fn pixelate(img: &RgbImage, s: usize) -> RgbImage {
    let c = PIXELATE_FACTOR[s];
    let (w, h) = img.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let (nw, nh) = (((wu as f64) * c) as usize, ((hu as f64) * c) as usize);
    let small = pil_resize(img.as_raw(), hu, wu, nh.max(1), nw.max(1), PilFilter::Box);
    let (nw, nh) = (nw.max(1), nh.max(1));
    let xi = pil_nearest_index(nw, wu);
    let yi = pil_nearest_index(nh, hu);
    // Each small row enlarged once; output rows are copies of them (rows repeat ~1/c times).
    let row = wu * 3;
    let mut wide = vec![0u8; nh * row];
    for (wr, sr) in wide.chunks_exact_mut(row).zip(small.chunks_exact(nw * 3)) {
        for (o, &i) in wr.chunks_exact_mut(3).zip(&xi) {
            o.copy_from_slice(&sr[i * 3..i * 3 + 3]);
        }
    }
    let mut out = Vec::with_capacity(hu * row);
    for &i in &yi {
        out.extend_from_slice(&wide[i * row..(i + 1) * row]);
    }
    // The buffer has exactly w * h * 3 bytes.
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_round_trip_is_identity() {
        for &(r, g, b) in &[
            (0.2, 0.5, 0.9),
            (1.0, 0.0, 0.0),
            (0.3, 0.3, 0.3),
            (0.9, 0.1, 0.6),
        ] {
            let (h, s, v) = rgb2hsv(r, g, b);
            let (r2, g2, b2) = hsv2rgb(h, s, v);
            assert!((r - r2).abs() < 1e-12 && (g - g2).abs() < 1e-12 && (b - b2).abs() < 1e-12);
        }
    }
}
