//! Element-wise activations and arithmetic.

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// Exact GELU: `x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`.
#[inline]
pub fn gelu_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * FRAC_1_SQRT_2))
}

/// d GELU / dx = Phi(x) + x phi(x).
#[inline]
pub fn gelu_grad_scalar(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + libm::erff(x * FRAC_1_SQRT_2));
    let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
    cdf + x * pdf
}

pub fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(yc, xc)| {
            for (a, b) in yc.iter_mut().zip(xc) {
                *a = f(*b);
            }
        });
    y
}

/// `f(a_i, b_i)` element-wise.
pub fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = vec![0.0f32; a.len()];
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(yc, (ac, bc))| {
            for ((o, x), z) in yc.iter_mut().zip(ac).zip(bc) {
                *o = f(*x, *z);
            }
        });
    y
}

pub fn gelu_forward(x: &[f32]) -> Vec<f32> {
    map(x, gelu_scalar)
}

pub fn gelu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    zip_map(x, dy, |x, d| d * gelu_grad_scalar(x))
}

pub fn relu_forward(x: &[f32]) -> Vec<f32> {
    map(x, |v| v.max(0.0))
}

pub fn relu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    zip_map(x, dy, |x, d| if x > 0.0 { d } else { 0.0 })
}
