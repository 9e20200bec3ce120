//! Defocus, glass, motion and zoom blur.

use std::sync::OnceLock;

use image::RgbImage;
use rand::Rng;
use rayon::prelude::*;

use super::draws::{stream, uniform_in, Draws};
use super::filters::{clamp_index, clipped_zoom_taps, gaussian_filter, reflect101, simd};
use super::{par_rows, to_u8, to_u8_f32};

// ---------------------------------------------------------------------------------------------
// Defocus blur

/// (disk radius, anti-alias sigma) per severity.
const DEFOCUS: [(usize, f64); 5] = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)];

/// The package's defocus kernel `K = GaussianBlur(disk)` split for speed into
/// `d * (g g^T) * binary disk` (computed with box sums over prefix sums: exact integers) plus
/// sparse corrections `taps` where the blur of the disk array met its edge (OpenCV blurs the
/// kernel array with a reflect-101 border, which folds mass back inside for radii 8 and 10).
struct DefocusPlan {
    r: usize,
    /// Half-width of the disk row at each dy in -r..=r.
    half: Vec<usize>,
    /// Normalised value of the disk's cells (float32 `1 / count`).
    d: f32,
    /// OpenCV's float32 Gaussian weights (3 or 5 taps).
    g: Vec<f32>,
    /// (dy, dx, weight) corrections, in grey-level units per input grey level.
    taps: Vec<(isize, isize, f32)>,
    /// Border margin the plan reads beyond the image.
    margin: usize,
}

/// OpenCV's `getGaussianKernel(n, sigma, CV_32F)`: exp in double, rounded to float, normalised
/// by the double sum of the floats.
fn opencv_gaussian(n: usize, sigma: f64) -> Vec<f32> {
    let scale = -0.5 / (sigma * sigma);
    let c = (n as f64 - 1.0) * 0.5;
    let raw: Vec<f32> = (0..n)
        .map(|i| {
            let x = i as f64 - c;
            (scale * x * x).exp() as f32
        })
        .collect();
    let sum: f64 = raw.iter().map(|&v| v as f64).sum();
    raw.iter()
        .map(|&v| (v as f64 * (1.0 / sum)) as f32)
        .collect()
}

fn defocus_plan(s: usize) -> &'static DefocusPlan {
    static PLANS: [OnceLock<DefocusPlan>; 5] = [const { OnceLock::new() }; 5];
    PLANS[s].get_or_init(|| {
        let (r, alias_sigma) = DEFOCUS[s];
        let (big_r, ks) = if r <= 8 { (8usize, 3usize) } else { (r, 5) };
        let n = 2 * big_r + 1;
        let kr = ks / 2;
        let inside = |y: isize, x: isize| (x * x + y * y) as usize <= r * r;
        let count = (0..n * n)
            .filter(|&i| {
                inside(
                    (i / n) as isize - big_r as isize,
                    (i % n) as isize - big_r as isize,
                )
            })
            .count();
        let d = 1.0f32 / count as f32;
        let g = opencv_gaussian(ks, alias_sigma);
        // K exactly: the disk array blurred with a reflect-101 border inside the n x n window.
        let a = |i: usize, j: usize| {
            if inside(i as isize - big_r as isize, j as isize - big_r as isize) {
                d as f64
            } else {
                0.0
            }
        };
        let mut rowblur = vec![0.0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                rowblur[i * n + j] = (0..ks)
                    .map(|b| {
                        g[b] as f64 * a(i, reflect101(j as isize + b as isize - kr as isize, n))
                    })
                    .sum();
            }
        }
        let k_exact = |i: isize, j: isize| -> f64 {
            if i < 0 || j < 0 || i >= n as isize || j >= n as isize {
                return 0.0;
            }
            (0..ks)
                .map(|a_| {
                    let ii = reflect101(i + a_ as isize - kr as isize, n);
                    g[a_] as f64 * rowblur[ii * n + j as usize]
                })
                .sum()
        };
        // The smooth part: (g g^T) convolved with the disk extended by zeros.
        let smooth = |i: isize, j: isize| -> f64 {
            let mut v = 0.0;
            for (a_, &ga) in g.iter().enumerate() {
                for (b, &gb) in g.iter().enumerate() {
                    let y = i + a_ as isize - kr as isize - big_r as isize;
                    let x = j + b as isize - kr as isize - big_r as isize;
                    if inside(y, x) {
                        v += ga as f64 * gb as f64 * d as f64;
                    }
                }
            }
            v
        };
        let m = (big_r + kr) as isize;
        let mut taps: Vec<(isize, isize, f64)> = Vec::new();
        for i in -(kr as isize)..(n + kr) as isize {
            for j in -(kr as isize)..(n + kr) as isize {
                let e = k_exact(i, j) - smooth(i, j);
                if e.abs() > 1e-12 {
                    taps.push((i - big_r as isize, j - big_r as isize, e));
                }
            }
        }
        // Drop the smallest corrections while their total stays below 1e-3 grey levels on a
        // saturated image (the bound on what dropping them can change).
        taps.sort_by(|p, q| q.2.abs().total_cmp(&p.2.abs()));
        let mut dropped = 0.0;
        while let Some(&(_, _, e)) = taps.last() {
            if (dropped + e.abs()) * 255.0 > 1e-3 {
                break;
            }
            dropped += e.abs();
            taps.pop();
        }
        let half = (-(r as isize)..=r as isize)
            .map(|dy| ((r * r - (dy * dy) as usize) as f64).sqrt().floor() as usize)
            .collect();
        DefocusPlan {
            r,
            half,
            d,
            g,
            taps: taps.into_iter().map(|(y, x, e)| (y, x, e as f32)).collect(),
            margin: m as usize,
        }
    })
}

/// Scratch buffers of one defocus call, kept per thread between calls: the blur's planes
/// are large enough that fresh allocations cost page faults on every image. A nested call
/// (rayon can run another image's task on this thread while it waits) finds the slot empty
/// and allocates its own.
#[derive(Default)]
struct DefocusScratch {
    padded: Vec<f32>,
    prefix: Vec<i32>,
    sums: Vec<f32>,
}

thread_local! {
    static DEFOCUS_SCRATCH: std::cell::Cell<Option<DefocusScratch>> =
        const { std::cell::Cell::new(None) };
}

/// `cv2.filter2D(x / 255, -1, disk(radius, alias_blur))` per channel, reflect-101 border.
/// The three channels run interleaved (rows three times longer, one pass per stage); every
/// output value sees the same operations in the same order as a per-channel computation.
#[allow(clippy::needless_range_loop)]
pub fn defocus_blur(img: &RgbImage, s: usize) -> RgbImage {
    let plan = defocus_plan(s);
    let (w, h) = img.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let m = plan.margin;
    let (pw, ph) = (wu + 2 * m, hu + 2 * m);
    let kr = plan.g.len() / 2;
    let src = img.as_raw();
    let cols: Vec<usize> = (0..pw)
        .map(|px| reflect101(px as isize - m as isize, wu))
        .collect();
    let prow = pw * 3; // padded row (values)
    let qrow = (pw + 1) * 3; // prefix-sum row
    let row3 = wu * 3;
    let sw = wu + 2 * kr; // S columns: image columns -kr..w+kr
    let rows_s = hu + 2 * kr;
    let mut scratch = DEFOCUS_SCRATCH.with(|c| c.take()).unwrap_or_default();
    scratch.padded.resize(ph * prow, 0.0);
    scratch.prefix.resize(ph * qrow, 0);
    scratch.sums.resize(rows_s * row3, 0.0);
    let DefocusScratch {
        padded,
        prefix,
        sums,
    } = &mut scratch;
    // Padded image (f32, for the correction taps) and per-row prefix sums (exact integers).
    padded[..ph * prow]
        .par_chunks_mut(prow)
        .zip(prefix[..ph * qrow].par_chunks_mut(qrow))
        .enumerate()
        .for_each(|(py, (prow_, pre))| {
            let sy = reflect101(py as isize - m as isize, hu);
            let sr = &src[sy * row3..(sy + 1) * row3];
            let mut acc = [0i32; 3];
            for ((o, q), &sx) in prow_
                .chunks_exact_mut(3)
                .zip(pre.chunks_exact_mut(3))
                .zip(&cols)
            {
                let p = &sr[sx * 3..sx * 3 + 3];
                for c in 0..3 {
                    o[c] = p[c] as f32;
                    q[c] = acc[c];
                    acc[c] += p[c] as i32;
                }
            }
            pre[pw * 3..].copy_from_slice(&acc);
        });
    let (padded, prefix) = (&padded[..ph * prow], &prefix[..ph * qrow]);
    // Disk sums S over rows -kr..h+kr, columns -kr..w+kr, then the horizontal Gaussian.
    sums[..rows_s * row3]
        .par_chunks_mut(row3)
        .enumerate()
        .for_each_init(
            || (vec![0i32; sw * 3], vec![0f32; sw * 3]),
            |(acc, accf), (ys, out)| {
                let y = ys as isize - kr as isize; // image row of this S row
                acc.fill(0);
                for (k, &hw) in plan.half.iter().enumerate() {
                    let dy = k as isize - plan.r as isize;
                    let py = (y + dy + m as isize) as usize;
                    let pre = &prefix[py * qrow..(py + 1) * qrow];
                    // Column xs of S is image column xs - kr; its box spans [x - hw, x + hw].
                    let lo0 = (m - kr - hw) * 3;
                    let hi0 = (m - kr + hw + 1) * 3;
                    simd::box_acc(acc, &pre[lo0..lo0 + sw * 3], &pre[hi0..hi0 + sw * 3]);
                }
                for (f, &a) in accf.iter_mut().zip(acc.iter()) {
                    *f = a as f32;
                }
                out.fill(0.0);
                for (b, &gb) in plan.g.iter().enumerate() {
                    simd::axpy(out, &accf[b * 3..b * 3 + row3], gb);
                }
            },
        );
    let sums = &sums[..rows_s * row3];
    // Vertical Gaussian, the disk value, then the corrections, per 32 values held in
    // registers (one pass over the output instead of one per tap).
    let taps: Vec<(usize, f32)> = plan
        .taps
        .iter()
        .map(|&(ty, tx, e)| {
            let py = (ty + m as isize) as usize;
            let px = (tx + m as isize) as usize;
            (py * prow + px * 3, e)
        })
        .collect();
    let out = par_rows(w, h, |y, o| {
        let rows: Vec<&[f32]> = (0..plan.g.len())
            .map(|a| &sums[(y + a) * row3..(y + a + 1) * row3])
            .collect();
        simd::defocus_finish(o, &rows, &plan.g, plan.d, &padded[y * prow..], &taps);
    });
    DEFOCUS_SCRATCH.with(|c| c.set(Some(scratch)));
    out
}

// ---------------------------------------------------------------------------------------------
// Glass blur

/// (sigma, max displacement, iterations) per severity.
const GLASS: [(f64, usize, usize); 5] = [
    (0.7, 1, 2),
    (0.9, 2, 1),
    (1.0, 2, 3),
    (1.1, 3, 2),
    (1.5, 4, 2),
];

/// skimage `gaussian(x / 255, sigma, channel_axis=-1)` (truncate 4, 'nearest' border).
fn skimage_gaussian_rgb(x: &[f64], h: usize, w: usize, sigma: f64) -> Vec<f64> {
    gaussian_filter(x, h, w, 3, (sigma, sigma), 4.0, clamp_index)
}

/// Gaussian blur, local pixel "swaps", Gaussian blur. The package's swap
/// `x[h, w], x[h', w'] = x[h', w'], x[h, w]` acts on NumPy views, so it copies `x[h', w']`
/// into `x[h, w]` and leaves `x[h', w']` unchanged; we do the same. The walk runs from the
/// bottom-right corner up, as the package's loops.
pub fn glass_blur(img: &RgbImage, s: usize, draws: &Draws) -> RgbImage {
    let (sigma, delta, iterations) = GLASS[s];
    let (w, h) = img.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let x: Vec<f64> = img.as_raw().iter().map(|&v| v as f64 / 255.0).collect();
    let mut px: Vec<u8> = skimage_gaussian_rgb(&x, hu, wu, sigma)
        .into_iter()
        .map(|v| to_u8(v * 255.0))
        .collect();
    let mut r = draws.stream(stream::GLASS_SHUFFLE);
    let span = 2 * delta as u64; // randint(-delta, delta): 2 * delta values
    for _ in 0..iterations {
        for hh in (delta + 1..=hu.saturating_sub(delta)).rev() {
            for ww in (delta + 1..=wu.saturating_sub(delta)).rev() {
                let u = r.next_u64();
                let dx = (((u & 0xFFFF_FFFF) * span) >> 32) as isize - delta as isize;
                let dy = (((u >> 32) * span) >> 32) as isize - delta as isize;
                let (h2, w2) = ((hh as isize + dy) as usize, (ww as isize + dx) as usize);
                let (to, from) = ((hh * wu + ww) * 3, (h2 * wu + w2) * 3);
                px.copy_within(from..from + 3, to);
            }
        }
    }
    let x2: Vec<f64> = px.iter().map(|&v| v as f64 / 255.0).collect();
    let b = skimage_gaussian_rgb(&x2, hu, wu, sigma);
    let row = wu * 3;
    par_rows(w, h, |y, out| {
        for (o, v) in out.iter_mut().zip(&b[y * row..(y + 1) * row]) {
            *o = to_u8(v.clamp(0.0, 1.0) * 255.0);
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Motion blur (the package's NumPy version of ImageMagick's motion blur; also used by snow)

/// (radius, sigma) per severity.
const MOTION: [(usize, f64); 5] = [(10, 3.0), (15, 5.0), (15, 8.0), (15, 12.0), (20, 15.0)];

/// The package's `_motion_blur`: a one-sided Gaussian of `2 * radius + 1` taps along the
/// direction `angle` (degrees), each tap the image shifted by a rounded offset with edge
/// replication; stops early if an offset leaves the image. `src` is `(h, w, ch)`.
pub fn shift_blur(
    src: &[f32],
    h: usize,
    w: usize,
    ch: usize,
    radius: usize,
    sigma: f64,
    angle: f64,
) -> Vec<f32> {
    let width = 2 * radius + 1;
    let raw: Vec<f64> = (0..width)
        .map(|i| {
            let x = i as f64;
            (-x * x / (2.0 * sigma * sigma)).exp() / ((2.0 * std::f64::consts::PI).sqrt() * sigma)
        })
        .collect();
    let z: f64 = raw.iter().sum();
    let rad = angle * (std::f64::consts::PI / 180.0);
    let point = (width as f64 * rad.sin(), width as f64 * rad.cos());
    let hyp = point.0.hypot(point.1);
    let mut shifts: Vec<(isize, isize, f32)> = Vec::new();
    for (i, k) in raw.iter().enumerate() {
        let dy = -(((i as f64 * point.0) / hyp) - 0.5).ceil() as isize;
        let dx = -(((i as f64 * point.1) / hyp) - 0.5).ceil() as isize;
        if dy.unsigned_abs() >= h || dx.unsigned_abs() >= w {
            break;
        }
        shifts.push((dy, dx, (k / z) as f32));
    }
    let row = w * ch;
    let mut out = vec![0f32; h * row];
    out.par_chunks_mut(row).enumerate().for_each(|(y, o)| {
        for &(dy, dx, k) in &shifts {
            let sy = clamp_index(y as isize - dy, h);
            let s = &src[sy * row..(sy + 1) * row];
            // out[x] += k * s[clamp(x - dx)]: the interior is one contiguous slice.
            let (x0, x1) = if dx >= 0 {
                (dx as usize, w)
            } else {
                (0, (w as isize + dx) as usize)
            };
            let sx0 = (x0 as isize - dx) as usize;
            simd::axpy(
                &mut o[x0 * ch..x1 * ch],
                &s[sx0 * ch..(sx0 + x1 - x0) * ch],
                k,
            );
            for x in (0..x0).chain(x1..w) {
                let sx = clamp_index(x as isize - dx, w);
                for c in 0..ch {
                    o[x * ch + c] += k * s[sx * ch + c];
                }
            }
        }
    });
    out
}

pub fn motion_blur(img: &RgbImage, s: usize, draws: &Draws) -> RgbImage {
    let angle = uniform_in(&mut draws.stream(stream::ANGLE), -45.0, 45.0);
    motion_blur_at(img, s, angle)
}

/// Motion blur at severity index `s` (0..5) along a given angle in degrees (the package draws
/// it from U(-45, 45)); for tests that pin the random draw.
pub fn motion_blur_at(img: &RgbImage, s: usize, angle: f64) -> RgbImage {
    let (radius, sigma) = MOTION[s];
    let (w, h) = img.dimensions();
    let src: Vec<f32> = img.as_raw().iter().map(|&v| v as f32).collect();
    let b = shift_blur(&src, h as usize, w as usize, 3, radius, sigma, angle);
    let row = w as usize * 3;
    par_rows(w, h, |y, out| {
        for (o, &v) in out.iter_mut().zip(&b[y * row..(y + 1) * row]) {
            *o = to_u8_f32(v);
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Zoom blur

/// `np.arange(start, stop, step)` per severity.
const ZOOM: [(f64, f64, f64); 5] = [
    (1.0, 1.11, 0.01),
    (1.0, 1.16, 0.01),
    (1.0, 1.21, 0.02),
    (1.0, 1.26, 0.02),
    (1.0, 1.31, 0.03),
];

/// NumPy's `arange` for floats: `ceil((stop - start) / step)` values `start + i * delta`,
/// where `delta = (start + step) - start` as NumPy's fill computes it.
pub fn numpy_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let n = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..n)
        .map(|i| {
            if i == 0 {
                start
            } else {
                start + i as f64 * delta
            }
        })
        .collect()
}

/// Average of the image and its centre crops zoomed back to full size (SciPy order-1 zoom).
pub fn zoom_blur(img: &RgbImage, s: usize) -> RgbImage {
    let (a, b, st) = ZOOM[s];
    let factors = numpy_arange(a, b, st);
    let (w, h) = img.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let row = wu * 3;
    // The package works on float32 x / 255 and accumulates the zoomed layers in float32.
    let x: Vec<f32> = img
        .as_raw()
        .iter()
        .map(|&v| (v as f64 / 255.0) as f32)
        .collect();
    let mut acc = vec![0f32; hu * row];
    for &z in &factors {
        let (ty, tx) = clipped_zoom_taps(hu, wu, z);
        acc.par_chunks_mut(row).enumerate().for_each(|(y, o)| {
            let t = ty[y];
            let r0 = &x[t.i0 * row..(t.i0 + 1) * row];
            let r1 = &x[t.i1 * row..(t.i1 + 1) * row];
            for (xo, tap) in tx.iter().take(wu).enumerate() {
                for c in 0..3 {
                    let (a0, a1) = (r0[tap.i0 * 3 + c] as f64, r0[tap.i1 * 3 + c] as f64);
                    let (b0, b1) = (r1[tap.i0 * 3 + c] as f64, r1[tap.i1 * 3 + c] as f64);
                    let top = a0 + (a1 - a0) * tap.t;
                    let bot = b0 + (b1 - b0) * tap.t;
                    o[xo * 3 + c] += (top + (bot - top) * t.t) as f32;
                }
            }
        });
    }
    let n = (factors.len() + 1) as f32;
    par_rows(w, h, |y, out| {
        let xs = &x[y * row..(y + 1) * row];
        let a = &acc[y * row..(y + 1) * row];
        for ((o, &xv), &av) in out.iter_mut().zip(xs).zip(a) {
            *o = to_u8_f32(((xv + av) / n).clamp(0.0, 1.0) * 255.0);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_matches_numpy_lengths() {
        // np.arange lengths for the five severities (1.11 is included by rounding).
        let lens: Vec<usize> = ZOOM
            .iter()
            .map(|&(a, b, s)| numpy_arange(a, b, s).len())
            .collect();
        assert_eq!(lens, [12, 16, 11, 13, 11]);
    }

    #[test]
    fn defocus_kernels_sum_like_opencv() {
        // Radii 3-6 sit inside their 17x17 window: no corrections, total mass 1. Radii 8 and 10
        // touch the window edge, where the reflect-101 blur folds mass back in.
        for s in 0..3 {
            assert!(defocus_plan(s).taps.is_empty(), "severity {}", s + 1);
        }
        for s in 3..5 {
            let p = defocus_plan(s);
            assert!(!p.taps.is_empty());
            let extra: f64 = p.taps.iter().map(|t| t.2 as f64).sum();
            assert!(extra > 0.0, "severity {}: folded mass {extra}", s + 1);
        }
    }

    #[test]
    fn shift_blur_of_a_constant_is_the_constant() {
        let src = vec![100f32; 40 * 50];
        let b = shift_blur(&src, 40, 50, 1, 15, 5.0, 30.0);
        assert!(b.iter().all(|&v| (v - 100.0).abs() < 1e-3));
    }
}
