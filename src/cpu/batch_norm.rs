//! Batch normalisation over the last (channel) axis of a channels-last tensor viewed as
//! `[M, C]` (M = N*H*W for 2-d, N for 1-d). PyTorch semantics: training normalises with the
//! biased batch variance and updates running stats with the unbiased one; eval uses the
//! running statistics. Sums are accumulated in f64.

use rayon::prelude::*;

const ROWS_PER_TASK: usize = 512;
/// Rows summed in f32 before the partial sum is added to the f64 accumulator: short enough
/// that f32 rounding stays far below the f64 total's, long enough to vectorise.
const ROWS_PER_F32_BLOCK: usize = 16;

/// Per-channel sums over all rows of `f(row, acc)` (which adds one row's contribution to the
/// f32 block accumulator `acc`), accumulated per block in f32 and across blocks in f64.
fn channel_sums(m: usize, c: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f64> {
    let tasks = m.div_ceil(ROWS_PER_TASK);
    (0..tasks)
        .into_par_iter()
        .map(|t| {
            let mut s = vec![0.0f64; c];
            let mut block = vec![0.0f32; c];
            let end = ((t + 1) * ROWS_PER_TASK).min(m);
            let mut r = t * ROWS_PER_TASK;
            while r < end {
                block.fill(0.0);
                let stop = (r + ROWS_PER_F32_BLOCK).min(end);
                for row in r..stop {
                    f(row, &mut block);
                }
                for (a, b) in s.iter_mut().zip(&block) {
                    *a += *b as f64;
                }
                r = stop;
            }
            s
        })
        .reduce(
            || vec![0.0f64; c],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        )
}

/// Batch mean and biased variance per channel.
pub fn batch_stats(x: &[f32], m: usize, c: usize) -> (Vec<f32>, Vec<f32>) {
    let sum = channel_sums(m, c, |r, s| {
        for (a, b) in s.iter_mut().zip(&x[r * c..(r + 1) * c]) {
            *a += *b;
        }
    });
    let mean: Vec<f64> = sum.iter().map(|s| s / m as f64).collect();
    let mean32: Vec<f32> = mean.iter().map(|v| *v as f32).collect();
    // Two-pass variance (sum of squared deviations from the mean) for stability.
    let sq = channel_sums(m, c, |r, s| {
        for ((a, b), mu) in s.iter_mut().zip(&x[r * c..(r + 1) * c]).zip(&mean32) {
            let d = *b - mu;
            *a += d * d;
        }
    });
    (
        mean.iter().map(|v| *v as f32).collect(),
        sq.iter().map(|v| (*v / m as f64) as f32).collect(),
    )
}

/// `y = (x - mean) * invstd * gamma + beta`; also returns `xhat`'s per-channel scale inputs.
pub fn normalize(
    x: &[f32],
    c: usize,
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
) -> Vec<f32> {
    let scale: Vec<f32> = invstd.iter().zip(gamma).map(|(a, b)| a * b).collect();
    let shift: Vec<f32> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
    debug_assert_eq!(scale.len(), c);
    crate::cpu::elementwise::channel_affine(x, &scale, Some(&shift))
}

/// Sums needed by the backward pass: `(sum dy, sum dy * xhat)` per channel.
pub fn backward_sums(
    x: &[f32],
    dy: &[f32],
    m: usize,
    c: usize,
    mean: &[f32],
    invstd: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let both = channel_sums(m, 2 * c, |r, s| {
        let (s1, s2) = s.split_at_mut(c);
        let xr = &x[r * c..(r + 1) * c];
        let dr = &dy[r * c..(r + 1) * c];
        for i in 0..c {
            let xhat = (xr[i] - mean[i]) * invstd[i];
            s1[i] += dr[i];
            s2[i] += dr[i] * xhat;
        }
    });
    (
        both[..c].iter().map(|v| *v as f32).collect(),
        both[c..].iter().map(|v| *v as f32).collect(),
    )
}

/// Training-mode input gradient:
/// `dx = gamma * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))`.
#[allow(clippy::too_many_arguments)]
pub fn backward_input_train(
    x: &[f32],
    dy: &[f32],
    m: usize,
    c: usize,
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    sum_dy: &[f32],
    sum_dy_xhat: &[f32],
) -> Vec<f32> {
    let mf = m as f32;
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(c * 64).enumerate().for_each(|(t, dxc)| {
        let r0 = t * 64;
        for (k, dr) in dxc.chunks_mut(c).enumerate() {
            let r = r0 + k;
            for i in 0..c {
                let xhat = (x[r * c + i] - mean[i]) * invstd[i];
                dr[i] = gamma[i] * invstd[i] / mf
                    * (mf * dy[r * c + i] - sum_dy[i] - xhat * sum_dy_xhat[i]);
            }
        }
    });
    dx
}

/// Eval-mode input gradient: `dx = dy * gamma * invstd`.
pub fn backward_input_eval(dy: &[f32], c: usize, invstd: &[f32], gamma: &[f32]) -> Vec<f32> {
    let scale: Vec<f32> = invstd.iter().zip(gamma).map(|(a, b)| a * b).collect();
    debug_assert_eq!(scale.len(), c);
    crate::cpu::elementwise::channel_affine(dy, &scale, None)
}
