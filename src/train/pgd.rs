//! The l-inf PGD of adversarial training and of the evaluation during training, as the
//! reference's `adv_generator` does it:
//! - start: `x = clamp(x0 + U(-eps, eps), 0, 1)`;
//! - each of `steps` iterations: loss and input gradient of the classifier only (the inference
//!   path: for an MPM the bypass layers do not run) in eval mode (BN running statistics, no
//!   weight gradients); remember `x` if its batch-mean loss beats the best so far (strictly);
//!   `x = clamp(clamp(x + step * sign(grad), x0 - eps, x0 + eps), 0, 1)`, sign(0) = 0
//!   (`attack::norms::linf_step`, the one copy of the step that the GPU kernel also does; the
//!   reference's `x0 + clamp(x + step * sign(grad) - x0, -eps, eps)` is the same point up to
//!   one rounding);
//! - with `keep_best`, the last iterate is scored too and the best of all is returned;
//!   without it (the evaluation attack), the last iterate.
//!
//! Training uses the smoothed-label CE (`smoothing` = the training smoothing); evaluation uses
//! plain CE, 10 steps of `eps / 4` (the reference's `validate`).

use crate::attack::norms::linf_step_slice;
use crate::autograd::GradMode;
use crate::device::Device;
use crate::nn::{Ctx, ModelSpec, ParamStore};
use crate::ops;
use crate::tensor::Tensor;
use crate::{Error, Result};
use rand::RngExt;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PgdConfig {
    pub eps: f32,
    pub step: f32,
    pub steps: usize,
    /// Label smoothing of the attack's CE loss.
    pub smoothing: f32,
    /// Return the iterate with the largest batch-mean loss (the last one included).
    pub keep_best: bool,
    /// Where the model runs (the iterate is uploaded there for each pass).
    pub device: Device,
}

/// Batch-mean loss and input gradient of the classifier at `x` (eval mode).
pub fn loss_and_grad(
    spec: &ModelSpec,
    store: &mut ParamStore,
    x: &Tensor,
    labels: &[usize],
    smoothing: f32,
    device: Device,
) -> Result<(f32, Tensor)> {
    let mut ctx = Ctx::new(store, GradMode::InputGradOnly, false);
    let xv = ctx.tape.input(x.to_device(device)?, true);
    let logits = spec.forward_logits(&mut ctx, xv)?;
    let loss = ops::cross_entropy_smooth(&mut ctx.tape, logits, labels, smoothing)?;
    let value = ctx.tape.value(loss).item();
    let mut g = ctx.tape.backward(loss)?;
    let grad = g
        .take(xv)
        .ok_or_else(|| Error::Msg("attack: no gradient reached the input".into()))?;
    Ok((value, grad))
}

/// Batch-mean loss of the classifier at `x` (eval mode, no tape).
pub fn loss_only(
    spec: &ModelSpec,
    store: &mut ParamStore,
    x: &Tensor,
    labels: &[usize],
    smoothing: f32,
    device: Device,
) -> Result<f32> {
    let mut ctx = Ctx::new(store, GradMode::NoGrad, false);
    let xv = ctx.tape.input(x.to_device(device)?, false);
    let logits = spec.forward_logits(&mut ctx, xv)?;
    let loss = ops::cross_entropy_smooth(&mut ctx.tape, logits, labels, smoothing)?;
    Ok(ctx.tape.value(loss).item())
}

/// Runs PGD from the clean batch `x0` (NHWC in [0, 1]); `rng` draws the random start.
pub fn pgd_linf(
    spec: &ModelSpec,
    store: &mut ParamStore,
    x0: &Tensor,
    labels: &[usize],
    cfg: &PgdConfig,
    rng: &mut impl rand::Rng,
) -> Result<Tensor> {
    if cfg.device != Device::Cpu {
        return pgd_linf_device(spec, store, x0, labels, cfg, rng);
    }
    let eps = cfg.eps;
    let orig = x0.data();
    let mut x = x0.clone();
    for (xi, &oi) in x.data_mut().iter_mut().zip(orig) {
        let noise: f32 = if eps > 0.0 {
            rng.random_range(-eps..eps)
        } else {
            0.0
        };
        *xi = (oi + noise).clamp(0.0, 1.0);
    }
    let mut best: Option<(f32, Tensor)> = None;
    for it in 0..cfg.steps {
        let (loss, grad) = loss_and_grad(spec, store, &x, labels, cfg.smoothing, cfg.device)?;
        if !loss.is_finite() || !grad.all_finite() {
            return Err(Error::NonFinite(format!(
                "attack loss or input gradient at PGD iteration {} (loss {loss})",
                it + 1
            )));
        }
        if cfg.keep_best && best.as_ref().is_none_or(|(b, _)| *b < loss) {
            best = Some((loss, x.clone()));
        }
        linf_step_slice(x.data_mut(), orig, grad.data(), cfg.step, eps);
    }
    if !cfg.keep_best {
        return Ok(x);
    }
    let last = loss_only(spec, store, &x, labels, cfg.smoothing, cfg.device)?;
    match best {
        Some((b, bx)) if b >= last || last.is_nan() => Ok(bx),
        _ => Ok(x),
    }
}

/// `pgd_linf` with the iterate on the GPU: the random start is drawn on the host (the same
/// draws as the CPU path) and uploaded once; each step is `cuda::ops::pgd_step` (the same
/// projection, `clamp(clamp(x + s*sign(g), x0 - eps, x0 + eps), 0, 1)`, rounded on the device),
/// and the finiteness check of the input gradient is one device reduction, so neither the
/// gradient nor the iterate crosses the bus between steps.
fn pgd_linf_device(
    spec: &ModelSpec,
    store: &mut ParamStore,
    x0: &Tensor,
    labels: &[usize],
    cfg: &PgdConfig,
    rng: &mut impl rand::Rng,
) -> Result<Tensor> {
    use crate::cuda::ops as cu;
    let eps = cfg.eps;
    let start: Vec<f32> = x0
        .data()
        .iter()
        .map(|&oi| {
            let noise: f32 = if eps > 0.0 {
                rng.random_range(-eps..eps)
            } else {
                0.0
            };
            (oi + noise).clamp(0.0, 1.0)
        })
        .collect();
    let x0d = x0.to_device(cfg.device)?;
    let mut x = Tensor::from_vec(x0.shape(), start)?.to_device(cfg.device)?;
    let n = labels.len();
    let (ev, sv) = (vec![eps; n], vec![cfg.step; n]);
    let mut best: Option<(f32, Tensor)> = None;
    for it in 0..cfg.steps {
        let (loss, grad) = loss_and_grad(spec, store, &x, labels, cfg.smoothing, cfg.device)?;
        let grad_ok = if grad.is_cuda() {
            cu::sum_all(&grad, 1.0)?.is_finite()
        } else {
            grad.all_finite()
        };
        if !loss.is_finite() || !grad_ok {
            return Err(Error::NonFinite(format!(
                "attack loss or input gradient at PGD iteration {} (loss {loss})",
                it + 1
            )));
        }
        if cfg.keep_best && best.as_ref().is_none_or(|(b, _)| *b < loss) {
            best = Some((loss, x.clone()));
        }
        // pgd_step writes a fresh buffer: the iterate kept as `best` stays valid.
        x = cu::pgd_step(&x, &x0d, &grad, &ev, &sv, cu::Norm::Linf)?;
    }
    if !cfg.keep_best {
        return Ok(x);
    }
    let last = loss_only(spec, store, &x, labels, cfg.smoothing, cfg.device)?;
    match best {
        Some((b, bx)) if b >= last || last.is_nan() => Ok(bx),
        _ => Ok(x),
    }
}

/// The generator of step `global_step` (PGD random start). One stream per step of one seed,
/// so a resumed run draws what the uninterrupted run drew.
pub fn step_rng(seed: u64, global_step: u64) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xA77A_C4ED);
    r.set_stream(global_step);
    r
}
