//! Element-wise activations and arithmetic.

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// erf(x) to about 1.5e-7 absolute error (Abramowitz & Stegun 7.1.26 form:
/// `1 - (a1 t + ... + a5 t^5) exp(-x^2)`, `t = 1 / (1 + p |x|)`), returned together with
/// `exp(-x^2)` because GELU's derivative needs that factor too. libm's `erff` is as accurate
/// but about twice as slow here, and GELU runs over every activation twice per step.
#[inline]
fn erf_and_gauss(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let g = (-ax * ax).exp();
    let e = 1.0 - poly * g;
    (if x < 0.0 { -e } else { e }, g)
}

/// Exact (erf) GELU: `x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`.
#[inline]
pub fn gelu_scalar(x: f32) -> f32 {
    let (e, _) = erf_and_gauss(x * FRAC_1_SQRT_2);
    0.5 * x * (1.0 + e)
}

/// d GELU / dx = Phi(x) + x phi(x), with phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
#[inline]
pub fn gelu_grad_scalar(x: f32) -> f32 {
    let (e, g) = erf_and_gauss(x * FRAC_1_SQRT_2);
    0.5 * (1.0 + e) + x * INV_SQRT_2PI * g
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
