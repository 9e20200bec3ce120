//! Soft-target focal loss over the channel axis of NHWC logits `z[N, h, w, S]`.
//!
//! Per pixel: `l = -sum_c t_c log softmax(z)_c`, `p = exp(-l)`, `f = (1 - p)^gamma * l`.
//! Loss = `sum_pixels weight_n * f / (N*h*w)` (zero-weight images count in the mean).
//! The gradient flows through p too (no detach):
//! `df/dl = (1-p)^gamma + gamma * (1-p)^(gamma-1) * p * l`,
//! `dl/dz_c = softmax_c * sum(t) - t_c`.
//! One pass per pixel computes both; probabilities are never stored.

use super::softmax_xent::log_softmax_row;
use rayon::prelude::*;

/// Returns `(loss, dz)` with `dz` already scaled by `1/(N*h*w)` and the image weights.
pub fn focal_loss(
    z: &[f32],
    t: &[f32],
    weights: &[f32],
    pixels_per_image: usize,
    s: usize,
    gamma: f32,
) -> (f32, Vec<f32>) {
    let n = weights.len();
    let total_pixels = (n * pixels_per_image) as f32;
    let mut dz = vec![0.0f32; z.len()];
    let sum: f64 = dz
        .par_chunks_mut(s)
        .zip(z.par_chunks(s).zip(t.par_chunks(s)))
        .enumerate()
        .map(|(pix, (d, (zr, tr)))| {
            let wn = weights[pix / pixels_per_image];
            log_softmax_row(zr, d);
            let mut l = 0.0f64;
            let mut tsum = 0.0f32;
            for (lp, tt) in d.iter().zip(tr) {
                l -= (*tt * *lp) as f64;
                tsum += *tt;
            }
            let l = l as f32;
            let p = (-l).exp();
            let q = 1.0 - p;
            let f = q.powf(gamma) * l;
            let dfdl = q.powf(gamma) + gamma * q.powf(gamma - 1.0) * p * l;
            let scale = wn * dfdl / total_pixels;
            for (dd, tt) in d.iter_mut().zip(tr) {
                *dd = scale * (dd.exp() * tsum - *tt);
            }
            (wn * f) as f64
        })
        .sum();
    ((sum / total_pixels as f64) as f32, dz)
}
