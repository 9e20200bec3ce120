//! The resampling and filtering rules the package's corruptions are built from, each as the
//! library it calls defines it: SciPy's `gaussian_filter` / `zoom` / `map_coordinates`
//! (border modes included), OpenCV's bicubic `resize` (11-bit fixed point) and border rule.
//! Buffers are row-major, interleaved over `ch` channels.

use rayon::prelude::*;

/// SciPy `ndimage` 'reflect' (half-sample symmetric: d c b a | a b c d | d c b a).
#[inline(always)]
pub fn reflect_half(i: isize, n: usize) -> usize {
    if i >= 0 && (i as usize) < n {
        return i as usize;
    }
    let n = n as isize;
    let period = 2 * n;
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - 1 - m;
    }
    m as usize
}

/// OpenCV `BORDER_REFLECT_101` (whole-sample symmetric: d c b | a b c d | c b a), the default
/// border of `filter2D` and `GaussianBlur`.
#[inline(always)]
pub fn reflect101(i: isize, n: usize) -> usize {
    if i >= 0 && (i as usize) < n {
        return i as usize;
    }
    if n == 1 {
        return 0;
    }
    let n = n as isize;
    let period = 2 * n - 2;
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - m;
    }
    m as usize
}

/// SciPy / OpenCV 'nearest' / `BORDER_REPLICATE`.
#[inline(always)]
pub fn clamp_index(i: isize, n: usize) -> usize {
    i.clamp(0, n as isize - 1) as usize
}

/// SciPy's 1-D Gaussian kernel (`_gaussian_kernel1d`): radius `int(truncate * sigma + 0.5)`,
/// `exp(-x^2 / (2 sigma^2))` normalised to sum 1.
pub fn gaussian_kernel(sigma: f64, truncate: f64) -> Vec<f64> {
    let radius = (truncate * sigma + 0.5) as isize;
    let s2 = sigma * sigma;
    let mut k: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 / s2 * (x * x) as f64).exp())
        .collect();
    let sum: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    k
}

/// Correlates a `(h, w, ch)` f64 image with `k` (odd length, centred) along the rows axis
/// (axis 0), borders by `border(index, len)`.
pub fn filter_axis0(
    src: &[f64],
    h: usize,
    w: usize,
    ch: usize,
    k: &[f64],
    border: fn(isize, usize) -> usize,
) -> Vec<f64> {
    let row = w * ch;
    let r = (k.len() / 2) as isize;
    let mut out = vec![0.0; src.len()];
    out.par_chunks_mut(row).enumerate().for_each(|(y, o)| {
        for (j, &kj) in k.iter().enumerate() {
            let sy = border(y as isize + j as isize - r, h);
            let s = &src[sy * row..(sy + 1) * row];
            for (ov, sv) in o.iter_mut().zip(s) {
                *ov += kj * sv;
            }
        }
    });
    out
}

/// Same along the columns axis (axis 1).
pub fn filter_axis1(
    src: &[f64],
    h: usize,
    w: usize,
    ch: usize,
    k: &[f64],
    border: fn(isize, usize) -> usize,
) -> Vec<f64> {
    let row = w * ch;
    let r = (k.len() / 2) as isize;
    let mut out = vec![0.0; src.len()];
    out.par_chunks_mut(row).enumerate().for_each(|(y, o)| {
        let s = &src[y * row..(y + 1) * row];
        // Padded copy of the row so the inner loop is a plain dot product.
        let pad = r as usize;
        let mut p = vec![0.0; (w + 2 * pad) * ch];
        for x in 0..w + 2 * pad {
            let sx = border(x as isize - r, w);
            p[x * ch..(x + 1) * ch].copy_from_slice(&s[sx * ch..(sx + 1) * ch]);
        }
        for (j, &kj) in k.iter().enumerate() {
            let pj = &p[j * ch..j * ch + row];
            for (ov, pv) in o.iter_mut().zip(pj) {
                *ov += kj * pv;
            }
        }
    });
    let _ = h;
    out
}

/// `scipy.ndimage.gaussian_filter` of a `(h, w, ch)` image with per-axis sigmas (channels are
/// not filtered, as skimage's `channel_axis=-1`); axis 0 first, as SciPy.
pub fn gaussian_filter(
    src: &[f64],
    h: usize,
    w: usize,
    ch: usize,
    sigma: (f64, f64),
    truncate: f64,
    border: fn(isize, usize) -> usize,
) -> Vec<f64> {
    let ky = gaussian_kernel(sigma.0, truncate);
    let kx = gaussian_kernel(sigma.1, truncate);
    let a = filter_axis0(src, h, w, ch, &ky, border);
    filter_axis1(&a, h, w, ch, &kx, border)
}

/// `gaussian_filter` of a single-channel `(h, w)` float32 field (used for random displacement
/// fields, where float32 is ample): same kernel and border rule, vector-friendly row passes.
pub fn gaussian_filter_f32(
    src: &[f32],
    h: usize,
    w: usize,
    sigma: (f64, f64),
    truncate: f64,
    border: fn(isize, usize) -> usize,
) -> Vec<f32> {
    let ky: Vec<f32> = gaussian_kernel(sigma.0, truncate)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let kx: Vec<f32> = gaussian_kernel(sigma.1, truncate)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let (ry, rx) = ((ky.len() / 2) as isize, kx.len() / 2);
    let mut a = vec![0f32; h * w];
    a.par_chunks_mut(w).enumerate().for_each(|(y, o)| {
        for (j, &kj) in ky.iter().enumerate() {
            let sy = border(y as isize + j as isize - ry, h);
            simd::axpy(o, &src[sy * w..(sy + 1) * w], kj);
        }
    });
    let mut out = vec![0f32; h * w];
    out.par_chunks_mut(w).enumerate().for_each(|(y, o)| {
        let row = &a[y * w..(y + 1) * w];
        let p: Vec<f32> = (0..w + 2 * rx)
            .map(|x| row[border(x as isize - rx as isize, w)])
            .collect();
        for (j, &kj) in kx.iter().enumerate() {
            simd::axpy(o, &p[j..j + w], kj);
        }
    });
    out
}

/// Python's `round` (half to even), as SciPy rounds zoomed output shapes.
pub fn round_half_even(v: f64) -> usize {
    let r = v.round();
    let r = if (v - v.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
        r - v.signum()
    } else {
        r
    };
    r.max(0.0) as usize
}

/// One output coordinate of an order-1 `scipy.ndimage.zoom` along an axis: the two input
/// indices and the weight of the second. SciPy maps output `o` to input `o * (n_in - 1) /
/// (n_out - 1)` (`grid_mode=False`) and interpolates linearly.
#[derive(Clone, Copy, Debug)]
pub struct Tap {
    pub i0: usize,
    pub i1: usize,
    pub t: f64,
}

pub fn zoom_taps(n_in: usize, n_out: usize) -> Vec<Tap> {
    let scale = if n_out > 1 {
        (n_in as f64 - 1.0) / (n_out as f64 - 1.0)
    } else {
        0.0
    };
    (0..n_out)
        .map(|o| {
            let pos = o as f64 * scale;
            let i0 = (pos.floor() as usize).min(n_in - 1);
            let t = pos - i0 as f64;
            let i1 = (i0 + 1).min(n_in - 1);
            Tap { i0, i1, t }
        })
        .collect()
}

/// `clipped_zoom` of the package: the centre crop of side `ceil(n / z)` (per axis), zoomed by
/// `z` with SciPy's order-1 `zoom`; returns the zoomed size and the taps per axis (into the
/// full image, the crop offset included).
pub fn clipped_zoom_taps(h: usize, w: usize, z: f64) -> (Vec<Tap>, Vec<Tap>) {
    let axis = |n: usize| {
        let c = (n as f64 / z).ceil() as usize;
        let top = (n - c) / 2;
        let out = round_half_even(c as f64 * z);
        let mut t = zoom_taps(c, out);
        for tap in t.iter_mut() {
            tap.i0 += top;
            tap.i1 += top;
        }
        t
    };
    (axis(h), axis(w))
}

/// OpenCV's bicubic kernel (A = -0.75), in f32 as `interpolateCubic`.
fn cubic_coeffs(x: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let c0 = ((A * (x + 1.0) - 5.0 * A) * (x + 1.0) + 8.0 * A) * (x + 1.0) - 4.0 * A;
    let c1 = ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = ((A + 2.0) * (1.0 - x) - (A + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0;
    [c0, c1, c2, 1.0 - c0 - c1 - c2]
}

/// Per output index: the first of 4 source indices (before clamping) and the 11-bit weights.
fn cubic_taps(n_in: usize, n_out: usize) -> Vec<(isize, [i32; 4])> {
    let scale = 1.0 / (n_out as f64 / n_in as f64);
    (0..n_out)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let s = f.floor();
            let c = cubic_coeffs(f - s);
            // saturate_cast<short>(v * 2048): round half to even.
            let w = c.map(|v| (v * 2048.0).round_ties_even() as i32);
            (s as isize - 1, w)
        })
        .collect()
}

/// `cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_CUBIC)` for 8-bit 3-channel
/// images: 11-bit fixed-point weights, horizontal pass into integers, vertical pass with
/// rounding (22 bits) and saturation; borders replicate.
pub fn resize_cubic_u8(src: &[u8], h: usize, w: usize, new_h: usize, new_w: usize) -> Vec<u8> {
    let xt = cubic_taps(w, new_w);
    let yt = cubic_taps(h, new_h);
    let row_out = new_w * 3;
    // Horizontal pass over every source row.
    let horiz: Vec<i32> = (0..h)
        .into_par_iter()
        .flat_map_iter(|y| {
            let s = &src[y * w * 3..(y + 1) * w * 3];
            let mut o = vec![0i32; row_out];
            for (x, (x0, wt)) in xt.iter().enumerate() {
                for c in 0..3 {
                    let mut acc = 0i32;
                    for (k, &wk) in wt.iter().enumerate() {
                        let sx = clamp_index(x0 + k as isize, w);
                        acc += s[sx * 3 + c] as i32 * wk;
                    }
                    o[x * 3 + c] = acc;
                }
            }
            o
        })
        .collect();
    let mut out = vec![0u8; new_h * row_out];
    out.par_chunks_mut(row_out).enumerate().for_each(|(y, o)| {
        let (y0, wt) = yt[y];
        let rows: [&[i32]; 4] = std::array::from_fn(|k| {
            let sy = clamp_index(y0 + k as isize, h);
            &horiz[sy * row_out..(sy + 1) * row_out]
        });
        for (i, ov) in o.iter_mut().enumerate() {
            let acc: i64 = (0..4).map(|k| rows[k][i] as i64 * wt[k] as i64).sum();
            *ov = ((acc + (1 << 21)) >> 22).clamp(0, 255) as u8;
        }
    });
    out
}

/// Pillow's resampling filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PilFilter {
    Box,
    Bilinear,
}

impl PilFilter {
    fn support(self) -> f64 {
        match self {
            PilFilter::Box => 0.5,
            PilFilter::Bilinear => 1.0,
        }
    }
    fn weight(self, x: f64) -> f64 {
        match self {
            PilFilter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            PilFilter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
        }
    }
}

/// Pillow's resampling coefficients (`precompute_coeffs`), normalised to 22-bit fixed point:
/// per output index the first input index and `taps` weights (zero-padded past each window's
/// length), flat so the passes read them without indirection. Downscaling widens the filter
/// by the scale (Pillow's antialiasing).
struct PilCoeffs {
    first: Vec<usize>,
    len: Vec<usize>,
    taps: usize,
    weights: Vec<i32>,
}

fn pil_coeffs(n_in: usize, n_out: usize, filter: PilFilter) -> PilCoeffs {
    const PRECISION_BITS: u32 = 32 - 8 - 2;
    let scale = n_in as f64 / n_out as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    let windows: Vec<(usize, usize, f64)> = (0..n_out)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as isize).max(0) as usize;
            let xmax = (((center + support + 0.5) as isize).min(n_in as isize) as usize) - xmin;
            (xmin, xmax, center)
        })
        .collect();
    let taps = windows.iter().map(|w| w.1).max().unwrap_or(0).max(1);
    let mut weights = vec![0i32; n_out * taps];
    let mut w = vec![0.0f64; taps];
    for (k, &(xmin, xmax, center)) in weights.chunks_exact_mut(taps).zip(&windows) {
        for (x, wv) in w.iter_mut().take(xmax).enumerate() {
            *wv = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
        }
        let ww: f64 = w[..xmax].iter().sum();
        for (kv, &v) in k.iter_mut().zip(&w[..xmax]) {
            let v = if ww != 0.0 { v / ww } else { v };
            let scaled = v * (1u32 << PRECISION_BITS) as f64;
            *kv = if v < 0.0 {
                (scaled - 0.5) as i32
            } else {
                (scaled + 0.5) as i32
            };
        }
    }
    PilCoeffs {
        first: windows.iter().map(|w| w.0).collect(),
        len: windows.iter().map(|w| w.1).collect(),
        taps,
        weights,
    }
}

#[inline(always)]
fn pil_clip8(ss: i32) -> u8 {
    (ss >> 22).clamp(0, 255) as u8
}

/// `Image.resize((nw, nh), filter)` for RGB: horizontal pass, then vertical, both through
/// 8-bit intermediates, as Pillow (a pass whose size does not change is skipped). Sums are
/// exact integers, so the order in which they are accumulated does not matter.
pub fn pil_resize(
    src: &[u8],
    h: usize,
    w: usize,
    nh: usize,
    nw: usize,
    filter: PilFilter,
) -> Vec<u8> {
    if nw == w && nh == h {
        return src.to_vec();
    }
    if nw == w {
        return pil_vertical(src, h, w, nh, filter);
    }
    let xc = pil_coeffs(w, nw, filter);
    let mut tmp = vec![0u8; h * nw * 3];
    tmp.par_chunks_mut(nw * 3).enumerate().for_each(|(y, o)| {
        let s = &src[y * w * 3..(y + 1) * w * 3];
        for (xx, px) in o.chunks_exact_mut(3).enumerate() {
            let (x0, n) = (xc.first[xx], xc.len[xx]);
            let k = &xc.weights[xx * xc.taps..xx * xc.taps + n];
            let (mut s0, mut s1, mut s2) = (1i32 << 21, 1i32 << 21, 1i32 << 21);
            for (p, &kx) in s[x0 * 3..(x0 + n) * 3].chunks_exact(3).zip(k) {
                s0 += p[0] as i32 * kx;
                s1 += p[1] as i32 * kx;
                s2 += p[2] as i32 * kx;
            }
            px[0] = pil_clip8(s0);
            px[1] = pil_clip8(s1);
            px[2] = pil_clip8(s2);
        }
    });
    if nh == h {
        return tmp;
    }
    pil_vertical(&tmp, h, nw, nh, filter)
}

fn pil_vertical(src: &[u8], h: usize, w: usize, nh: usize, filter: PilFilter) -> Vec<u8> {
    let yc = pil_coeffs(h, nh, filter);
    let row = w * 3;
    let mut out = vec![0u8; nh * row];
    out.par_chunks_mut(row).enumerate().for_each_init(
        || vec![0i32; row],
        |acc, (yy, o)| {
            let (y0, n) = (yc.first[yy], yc.len[yy]);
            let k = &yc.weights[yy * yc.taps..yy * yc.taps + n];
            acc.fill(1 << 21);
            for (j, &ky) in k.iter().enumerate() {
                let s = &src[(y0 + j) * row..(y0 + j + 1) * row];
                for (a, &v) in acc.iter_mut().zip(s) {
                    *a += v as i32 * ky;
                }
            }
            for (ov, &a) in o.iter_mut().zip(acc.iter()) {
                *ov = pil_clip8(a);
            }
        },
    );
    out
}

/// Pillow's nearest-neighbour resize (`ImagingScaleAffine`): source index = truncation of a
/// position that starts at half a step and is advanced by repeated addition.
pub fn pil_nearest_index(n_in: usize, n_out: usize) -> Vec<usize> {
    let step = n_in as f64 / n_out as f64;
    let mut pos = step * 0.5;
    (0..n_out)
        .map(|_| {
            let i = (pos as usize).min(n_in - 1);
            pos += step;
            i
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borders_follow_their_libraries() {
        // reflect (SciPy): d c b a | a b c d | d c b a
        let r: Vec<usize> = (-5..9).map(|i| reflect_half(i, 4)).collect();
        assert_eq!(r, [3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0]);
        // reflect 101 (OpenCV): d c b | a b c d | c b a
        let r: Vec<usize> = (-3..7).map(|i| reflect101(i, 4)).collect();
        assert_eq!(r, [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
    }

    #[test]
    fn scipy_kernel_radius_and_sum() {
        let k = gaussian_kernel(1.1, 4.0);
        assert_eq!(k.len(), 9); // int(4.4 + 0.5) = 4
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(gaussian_kernel(2.24, 3.0).len(), 15);
    }

    #[test]
    fn python_rounding_is_half_to_even() {
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(3.4999), 3);
    }

    #[test]
    fn cubic_weights_sum_to_2048() {
        for (_, w) in cubic_taps(600, 661) {
            let s: i32 = w.iter().sum();
            assert!((s - 2048).abs() <= 1, "{w:?}");
        }
    }
}

/// Row primitives of the blurs, compiled for the build's baseline and, chosen at run time, for
/// AVX2 (same IEEE operations, no FMA contraction: identical results, wider vectors).
// Fixed-size lane arrays are indexed in plain loops on purpose (they vectorise).
#[allow(clippy::needless_range_loop)]
pub mod simd {
    #[inline(always)]
    fn axpy_body(out: &mut [f32], src: &[f32], k: f32) {
        for (o, s) in out.iter_mut().zip(src) {
            *o += k * s;
        }
    }

    #[inline(always)]
    fn box_acc_body(acc: &mut [i32], lo: &[i32], hi: &[i32]) {
        for ((a, l), h) in acc.iter_mut().zip(lo).zip(hi) {
            *a += h - l;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn axpy_avx2(out: &mut [f32], src: &[f32], k: f32) {
        axpy_body(out, src, k)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn box_acc_avx2(acc: &mut [i32], lo: &[i32], hi: &[i32]) {
        box_acc_body(acc, lo, hi)
    }

    fn avx2() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            *HAS.get_or_init(|| std::is_x86_feature_detected!("avx2"))
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// Defocus blur's last stage for one output row (interleaved values): per value
    /// `v = sum_a g[a] * rows[a][i]` (in order), `v *= d`, then `v += e * padded[off + i]` per
    /// correction tap in order, truncated to u8. 32 values at a time stay in registers.
    #[inline(always)]
    fn defocus_finish_body(
        out: &mut [u8],
        rows: &[&[f32]],
        g: &[f32],
        d: f32,
        padded: &[f32],
        taps: &[(usize, f32)],
    ) {
        // 32 values per block: four independent 8-lane chains, so the long chain of tap
        // additions overlaps instead of waiting on one add's latency per tap.
        const B: usize = 32;
        let n = out.len();
        let full = n / B * B;
        for x0 in (0..full).step_by(B) {
            let mut acc = [0f32; B];
            for (r, &ga) in rows.iter().zip(g) {
                let s = &r[x0..x0 + B];
                for i in 0..B {
                    acc[i] += ga * s[i];
                }
            }
            for v in acc.iter_mut() {
                *v *= d;
            }
            for &(off, e) in taps {
                let p = &padded[off + x0..off + x0 + B];
                for i in 0..B {
                    acc[i] += e * p[i];
                }
            }
            // `to_u8_f32` through i32 (same values for 0..=255 and NaN; it vectorises).
            for (o, &v) in out[x0..x0 + B].iter_mut().zip(&acc) {
                *o = v.clamp(0.0, 255.0) as i32 as u8;
            }
        }
        for x in full..n {
            let mut v = 0f32;
            for (r, &ga) in rows.iter().zip(g) {
                v += ga * r[x];
            }
            v *= d;
            for &(off, e) in taps {
                v += e * padded[off + x];
            }
            out[x] = super::super::to_u8_f32(v);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn defocus_finish_avx2(
        out: &mut [u8],
        rows: &[&[f32]],
        g: &[f32],
        d: f32,
        padded: &[f32],
        taps: &[(usize, f32)],
    ) {
        defocus_finish_body(out, rows, g, d, padded, taps)
    }

    pub fn defocus_finish(
        out: &mut [u8],
        rows: &[&[f32]],
        g: &[f32],
        d: f32,
        padded: &[f32],
        taps: &[(usize, f32)],
    ) {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 was detected on this CPU.
            return unsafe { defocus_finish_avx2(out, rows, g, d, padded, taps) };
        }
        defocus_finish_body(out, rows, g, d, padded, taps)
    }

    /// `out[i] += k * src[i]`.
    pub fn axpy(out: &mut [f32], src: &[f32], k: f32) {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 was detected on this CPU.
            return unsafe { axpy_avx2(out, src, k) };
        }
        axpy_body(out, src, k)
    }

    /// `acc[i] += hi[i] - lo[i]` (box sums from prefix sums).
    pub fn box_acc(acc: &mut [i32], lo: &[i32], hi: &[i32]) {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 was detected on this CPU.
            return unsafe { box_acc_avx2(acc, lo, hi) };
        }
        box_acc_body(acc, lo, hi)
    }
}
