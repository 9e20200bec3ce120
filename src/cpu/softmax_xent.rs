//! Row-wise (last axis) softmax / log-softmax and cross-entropy against soft targets.
//! Rows are the contiguous channel vectors of NHWC tensors or `[N, classes]` logits.

use rayon::prelude::*;

/// log-softmax of one row into `out`, max-subtracted, log-sum-exp in f64.
#[inline]
pub fn log_softmax_row(z: &[f32], out: &mut [f32]) {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let s: f64 = z.iter().map(|&v| ((v - m) as f64).exp()).sum();
    let lse = m + s.ln() as f32;
    for (o, &v) in out.iter_mut().zip(z) {
        *o = v - lse;
    }
}

pub fn log_softmax(z: &[f32], cols: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; z.len()];
    y.par_chunks_mut(cols)
        .zip(z.par_chunks(cols))
        .for_each(|(o, r)| log_softmax_row(r, o));
    y
}

pub fn softmax(z: &[f32], cols: usize) -> Vec<f32> {
    let mut y = log_softmax(z, cols);
    y.par_iter_mut().for_each(|v| *v = v.exp());
    y
}

/// `dz = y * (dy - sum(dy * y))` per row, for `y = softmax(z)`.
pub fn softmax_backward(y: &[f32], dy: &[f32], cols: usize) -> Vec<f32> {
    let mut dz = vec![0.0f32; y.len()];
    dz.par_chunks_mut(cols)
        .zip(y.par_chunks(cols).zip(dy.par_chunks(cols)))
        .for_each(|(o, (yr, dr))| {
            let dot: f64 = yr.iter().zip(dr).map(|(a, b)| (*a * *b) as f64).sum();
            for ((o, a), b) in o.iter_mut().zip(yr).zip(dr) {
                *o = *a * (*b - dot as f32);
            }
        });
    dz
}

/// `dz = dy - softmax(z) * sum(dy)` per row, for `y = log_softmax(z)`.
pub fn log_softmax_backward(y: &[f32], dy: &[f32], cols: usize) -> Vec<f32> {
    let mut dz = vec![0.0f32; y.len()];
    dz.par_chunks_mut(cols)
        .zip(y.par_chunks(cols).zip(dy.par_chunks(cols)))
        .for_each(|(o, (yr, dr))| {
            let s: f64 = dr.iter().map(|v| *v as f64).sum();
            for ((o, a), b) in o.iter_mut().zip(yr).zip(dr) {
                *o = *b - a.exp() * s as f32;
            }
        });
    dz
}

/// Mean over rows of `-sum_c t_c log softmax(z)_c` and its gradient
/// `dz = (softmax(z) * sum(t) - t) / rows`.
pub fn soft_cross_entropy(z: &[f32], t: &[f32], cols: usize) -> (f32, Vec<f32>) {
    let rows = z.len() / cols;
    let mut dz = vec![0.0f32; z.len()];
    let total: f64 = dz
        .par_chunks_mut(cols)
        .zip(z.par_chunks(cols).zip(t.par_chunks(cols)))
        .map(|(d, (zr, tr))| {
            log_softmax_row(zr, d);
            let mut loss = 0.0f64;
            let mut tsum = 0.0f32;
            for (lp, tt) in d.iter().zip(tr) {
                loss -= (*tt * *lp) as f64;
                tsum += *tt;
            }
            for (dd, tt) in d.iter_mut().zip(tr) {
                *dd = (dd.exp() * tsum - *tt) / rows as f32;
            }
            loss
        })
        .sum();
    ((total / rows as f64) as f32, dz)
}

/// Smoothed one-hot targets (timm): `off = s / C`, `on = 1 - s + s / C`.
pub fn smoothed_one_hot(labels: &[usize], classes: usize, smoothing: f32) -> Vec<f32> {
    let off = smoothing / classes as f32;
    let on = 1.0 - smoothing + off;
    let mut t = vec![off; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        t[i * classes + l] = on;
    }
    t
}
