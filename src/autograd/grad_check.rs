//! Finite-difference gradient checks, shared by the test suite and `mpm-audit grad`.
//!
//! The function under test maps one input tensor to any tensor `y`; the check reduces it with
//! a non-linear probe `L = sum(r * y^2) / 2 + sum(q * y)` (r, q fixed random), so the upstream
//! gradient `r * y + q` is not uniform and a wrong backward cannot hide behind symmetry.
//! The probe sum is accumulated in f64; central differences with step `h`.

use crate::autograd::{GradMode, Tape, Var};
use crate::tensor::Tensor;
use crate::Result;
use rand::{RngExt, SeedableRng};

#[derive(Debug, Clone)]
pub struct GradCheckReport {
    pub analytic: Vec<f32>,
    pub numeric: Vec<f32>,
    /// ||analytic - numeric|| / max(||numeric||, tiny)
    pub rel_l2: f64,
    pub max_abs: f64,
}

impl std::fmt::Display for GradCheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "relative L2 error {:.3e}, max abs diff {:.3e} over {} elements",
            self.rel_l2,
            self.max_abs,
            self.analytic.len()
        )
    }
}

fn probe(t: &mut Tape, y: Var, r: &[f32], q: &[f32]) -> Var {
    let yv = t.value(y).data();
    let loss: f64 = yv
        .iter()
        .zip(r.iter().zip(q))
        .map(|(&v, (&a, &b))| 0.5 * a as f64 * (v as f64) * (v as f64) + b as f64 * v as f64)
        .sum();
    let (r, q) = (r.to_vec(), q.to_vec());
    t.record(Tensor::scalar(loss as f32), &[y], move |c| {
        let g = c.dout.item();
        let d: Vec<f32> = c.inputs[0]
            .data()
            .iter()
            .zip(r.iter().zip(&q))
            .map(|(&v, (&a, &b))| g * (a * v + b))
            .collect();
        Ok(vec![Some(Tensor::new_unchecked(c.inputs[0].shape(), d))])
    })
}

fn probe_value(y: &Tensor, r: &[f32], q: &[f32]) -> f64 {
    y.data()
        .iter()
        .zip(r.iter().zip(q))
        .map(|(&v, (&a, &b))| 0.5 * a as f64 * (v as f64) * (v as f64) + b as f64 * v as f64)
        .sum()
}

/// Compares the tape's gradient of `probe(f(x))` w.r.t. `x` with central differences of
/// step `h`, each divided by the step actually taken: `x + h` rounds to f32, so the realised
/// span `(x + h) - (x - h)` differs from `2h` by up to an ulp of `x`, a relative error of
/// about `6e-8 |x| / h` that dividing by `2h` added to every quotient (it was the whole error
/// of the exactly linear ops: ReLU, max pool, reshape, add).
///
/// What limits the check otherwise (measured on tests/grad_check.rs, 2026-12-02): round-off
/// in `L`, not truncation. `f` runs in f32, so `L(x +- h)` carries a relative error of order
/// 1e-7 and the quotient an error of order `1e-7 |L| / h`; the probe's f64 sum does not remove
/// the f32 rounding of `f`'s outputs. Making `h` 3x larger lowered the error of most ops
/// about 3x, 3x smaller raised it about 3x, and a fourth-order stencil (Richardson on `h`
/// and `2h`, which removes the `h^2` truncation term) did not help at the same `h`.
pub fn check_gradient<F>(x: &Tensor, f: F, h: f32, seed: u64) -> Result<GradCheckReport>
where
    F: Fn(&mut Tape, Var) -> Result<Var>,
{
    // Output size, then probe weights.
    let mut t0 = Tape::new(GradMode::NoGrad);
    let xi = t0.input(x.clone(), false);
    let y0 = f(&mut t0, xi)?;
    let ny = t0.value(y0).numel();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let r: Vec<f32> = (0..ny).map(|_| rng.random_range(0.5..1.5)).collect();
    let q: Vec<f32> = (0..ny).map(|_| rng.random_range(-1.0..1.0)).collect();

    let mut t = Tape::new(GradMode::Full);
    let xv = t.input(x.clone(), true);
    let y = f(&mut t, xv)?;
    let l = probe(&mut t, y, &r, &q);
    let grads = t.backward(l)?;
    let analytic = grads
        .get(xv)
        .map(|g| g.data().to_vec())
        .unwrap_or_else(|| vec![0.0; x.numel()]);

    let mut numeric = vec![0.0f32; x.numel()];
    for (i, slot) in numeric.iter_mut().enumerate() {
        let x0 = x.data()[i];
        // L at x0 + k h (as rounded to f32) and the offset realised (exact in f64).
        let eval = |k: f32| -> Result<(f64, f64)> {
            let mut xp = x.clone();
            let xk = x0 + k * h;
            xp.data_mut()[i] = xk;
            let mut tp = Tape::new(GradMode::NoGrad);
            let v = tp.input(xp, false);
            let yp = f(&mut tp, v)?;
            Ok((probe_value(tp.value(yp), &r, &q), xk as f64 - x0 as f64))
        };
        let ((lp, dp), (lm, dm)) = (eval(1.0)?, eval(-1.0)?);
        *slot = ((lp - lm) / (dp - dm)) as f32;
    }
    let diff: f64 = analytic
        .iter()
        .zip(&numeric)
        .map(|(a, n)| ((*a - *n) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = numeric
        .iter()
        .map(|n| (*n as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let max_abs = analytic
        .iter()
        .zip(&numeric)
        .map(|(a, n)| (*a - *n).abs() as f64)
        .fold(0.0, f64::max);
    Ok(GradCheckReport {
        analytic,
        numeric,
        rel_l2: diff / norm.max(1e-12),
        max_abs,
    })
}
