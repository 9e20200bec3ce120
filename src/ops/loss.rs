//! Losses. Targets and weights are constants (no gradient flows to them).

use crate::autograd::{Tape, Var};
use crate::cpu::{focal_loss as fk, softmax_xent as sk};
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::sync::Arc;

fn logits_2d(op: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
    match shape {
        [n, c] => Ok((*n, *c)),
        _ => Err(Error::shape(
            op,
            format!("logits must be [N, classes], got {shape:?}"),
        )),
    }
}

/// Mean cross-entropy of `logits[N, C]` against soft targets `targets[N, C]`.
pub fn soft_cross_entropy(t: &mut Tape, logits: Var, targets: &Tensor) -> Result<Var> {
    let (_, c) = logits_2d("soft_cross_entropy", t.shape(logits))?;
    if targets.shape() != t.shape(logits) {
        return Err(Error::shape(
            "soft_cross_entropy",
            format!(
                "targets {:?} do not match logits {:?}",
                targets.shape(),
                t.shape(logits)
            ),
        ));
    }
    if t.value(logits).is_cuda() {
        let (loss, dz) = super::gpu_ctx(
            "soft_cross_entropy",
            t.shape(logits),
            crate::cuda::ops::soft_cross_entropy(t.value(logits), targets, c),
        )?;
        return Ok(t.record(Tensor::scalar(loss), &[logits], move |ctx| {
            Ok(vec![Some(crate::cuda::ops::scale(&dz, ctx.dout.item())?)])
        }));
    }
    let (loss, dz) = sk::soft_cross_entropy(t.value(logits).data(), targets.data(), c);
    let dz = Arc::new(Tensor::new_unchecked(t.shape(logits), dz));
    Ok(t.record(Tensor::scalar(loss), &[logits], move |ctx| {
        let g = ctx.dout.item();
        Ok(vec![Some(dz.map(|v| v * g))])
    }))
}

/// Cross-entropy with label smoothing `s` (timm `LabelSmoothingCrossEntropy`; `s = 0` is
/// plain CE): targets `1 - s + s/C` on the label, `s/C` elsewhere.
pub fn cross_entropy_smooth(
    t: &mut Tape,
    logits: Var,
    labels: &[usize],
    smoothing: f32,
) -> Result<Var> {
    let (n, c) = logits_2d("cross_entropy", t.shape(logits))?;
    if labels.len() != n {
        return Err(Error::shape(
            "cross_entropy",
            format!("{} labels for {n} rows of logits", labels.len()),
        ));
    }
    if let Some(bad) = labels.iter().find(|&&l| l >= c) {
        return Err(Error::shape(
            "cross_entropy",
            format!("label {bad} out of range for {c} classes"),
        ));
    }
    let targets = Tensor::new_unchecked(&[n, c], sk::smoothed_one_hot(labels, c, smoothing));
    soft_cross_entropy(t, logits, &targets)
}

/// Soft-target focal loss over the channels of NHWC logits `z[N,h,w,S]` with targets of the
/// same shape and per-image `weights[N]`; mean over N*h*w (see `cpu::focal_loss`).
pub fn focal_loss(
    t: &mut Tape,
    z: Var,
    targets: &Tensor,
    weights: &[f32],
    gamma: f32,
) -> Result<Var> {
    let zs = t.shape(z).to_vec();
    let [n, h, w, s] = super::nhwc("focal_loss", &zs)?;
    if targets.shape() != zs.as_slice() {
        return Err(Error::shape(
            "focal_loss",
            format!("targets {:?} do not match logits {zs:?}", targets.shape()),
        ));
    }
    if weights.len() != n {
        return Err(Error::shape(
            "focal_loss",
            format!("{} image weights for a batch of {n}", weights.len()),
        ));
    }
    if t.value(z).is_cuda() {
        let (loss, dz) = super::gpu_ctx(
            "focal_loss",
            &zs,
            crate::cuda::ops::focal_loss(t.value(z), targets, weights, h * w, s, gamma),
        )?;
        return Ok(t.record(Tensor::scalar(loss), &[z], move |ctx| {
            Ok(vec![Some(crate::cuda::ops::scale(&dz, ctx.dout.item())?)])
        }));
    }
    let (loss, dz) = fk::focal_loss(t.value(z).data(), targets.data(), weights, h * w, s, gamma);
    let dz = Arc::new(Tensor::new_unchecked(&zs, dz));
    Ok(t.record(Tensor::scalar(loss), &[z], move |ctx| {
        let g = ctx.dout.item();
        Ok(vec![Some(dz.map(|v| v * g))])
    }))
}
