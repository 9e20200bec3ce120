//! Batch normalisation over the channel (last) axis: BatchNorm2d on NHWC `[N,H,W,C]` and
//! BatchNorm1d on `[N, C]` are the same op here.

use super::Act;
use crate::autograd::{Tape, Var};
use crate::cpu::batch_norm as k;
use crate::tensor::Tensor;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BatchNormMode {
    /// Batch statistics; running statistics updated with `momentum` (unbiased variance).
    Train { momentum: f32 },
    /// Running statistics.
    Eval,
}

/// `y = (x - mean) / sqrt(var + eps) * gamma + beta`. In `Train` mode `running_mean` and
/// `running_var` are updated in place, as PyTorch does during the forward pass. On the GPU the
/// running statistics become GPU tensors (updated there; their host view stays readable).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    t: &mut Tape,
    x: Var,
    gamma: Var,
    beta: Var,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    mode: BatchNormMode,
    eps: f32,
) -> Result<Var> {
    batch_norm_act(
        t,
        x,
        gamma,
        beta,
        running_mean,
        running_var,
        mode,
        eps,
        None,
    )
}

/// `act(batch_norm(x))`. On the GPU one fused apply pass forward and one fused backward
/// (kernels/bn_gelu.cu: the pre-activation is recomputed from x, never stored); on the CPU
/// exactly the composition `batch_norm` then `gelu`/`relu` (the spec, bit for bit).
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_act(
    t: &mut Tape,
    x: Var,
    gamma: Var,
    beta: Var,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    mode: BatchNormMode,
    eps: f32,
    act: Option<Act>,
) -> Result<Var> {
    if !t.value(x).is_cuda() {
        let y = batch_norm_cpu(t, x, gamma, beta, running_mean, running_var, mode, eps)?;
        return match act {
            None => Ok(y),
            Some(Act::Gelu) => super::gelu(t, y),
            Some(Act::Relu) => super::relu(t, y),
        };
    }
    let code = match act {
        None => 0,
        Some(Act::Gelu) => 1,
        Some(Act::Relu) => 2,
    };
    batch_norm_checked(
        t,
        x,
        gamma,
        beta,
        running_mean,
        running_var,
        mode,
        eps,
        code,
    )
}

#[allow(clippy::too_many_arguments)]
fn batch_norm_cpu(
    t: &mut Tape,
    x: Var,
    gamma: Var,
    beta: Var,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    mode: BatchNormMode,
    eps: f32,
) -> Result<Var> {
    batch_norm_checked(t, x, gamma, beta, running_mean, running_var, mode, eps, 0)
}

/// Shape checks, then the device's kernel; `act` (0 none, 1 GELU, 2 ReLU) is fused on the
/// GPU only (the CPU caller passes 0).
#[allow(clippy::too_many_arguments)]
fn batch_norm_checked(
    t: &mut Tape,
    x: Var,
    gamma: Var,
    beta: Var,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    mode: BatchNormMode,
    eps: f32,
    act: u32,
) -> Result<Var> {
    let xs = t.shape(x).to_vec();
    let c = match xs.last() {
        Some(&c) if xs.len() >= 2 => c,
        _ => {
            return Err(Error::shape(
                "batch_norm",
                format!("input must be [N, ..., C], got {xs:?}"),
            ))
        }
    };
    let m = t.value(x).numel() / c.max(1);
    for (what, v) in [
        ("weight", t.value(gamma).shape()),
        ("bias", t.value(beta).shape()),
        ("running_mean", running_mean.shape()),
        ("running_var", running_var.shape()),
    ] {
        if v != [c] {
            return Err(Error::shape(
                "batch_norm",
                format!("{what} has shape {v:?}, expected [{c}] for input {xs:?}"),
            ));
        }
    }
    if t.value(x).is_cuda() {
        let r = batch_norm_cuda(
            t,
            x,
            gamma,
            beta,
            running_mean,
            running_var,
            mode,
            eps,
            m,
            c,
            act,
        );
        return super::gpu_ctx("batch_norm", &xs, r);
    }
    let xv = t.value(x).data();
    let (mean, invstd, train) = match mode {
        BatchNormMode::Train { momentum } => {
            if m < 2 {
                return Err(Error::shape(
                    "batch_norm",
                    format!("training needs more than 1 value per channel, got input {xs:?}"),
                ));
            }
            let (mean, var) = k::batch_stats(xv, m, c);
            let unbias = m as f32 / (m as f32 - 1.0);
            for (r, v) in running_mean.data_mut().iter_mut().zip(&mean) {
                *r = (1.0 - momentum) * *r + momentum * v;
            }
            for (r, v) in running_var.data_mut().iter_mut().zip(&var) {
                *r = (1.0 - momentum) * *r + momentum * v * unbias;
            }
            let invstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
            (mean, invstd, true)
        }
        BatchNormMode::Eval => {
            let invstd: Vec<f32> = running_var
                .data()
                .iter()
                .map(|v| 1.0 / (v + eps).sqrt())
                .collect();
            (running_mean.data().to_vec(), invstd, false)
        }
    };
    let y = k::normalize(
        xv,
        c,
        &mean,
        &invstd,
        t.value(gamma).data(),
        t.value(beta).data(),
    );
    let y = Tensor::new_unchecked(&xs, y);
    Ok(t.record(y, &[x, gamma, beta], move |ctx| {
        let (xv, dy, gv) = (ctx.inputs[0].data(), ctx.dout.data(), ctx.inputs[1].data());
        let (sum_dy, sum_dy_xhat) = k::backward_sums(xv, dy, m, c, &mean, &invstd);
        let dx = ctx.needs[0].then(|| {
            let dx = if train {
                k::backward_input_train(xv, dy, m, c, &mean, &invstd, gv, &sum_dy, &sum_dy_xhat)
            } else {
                k::backward_input_eval(dy, c, &invstd, gv)
            };
            Tensor::new_unchecked(ctx.inputs[0].shape(), dx)
        });
        let dgamma = ctx.needs[1].then(|| Tensor::new_unchecked(&[c], sum_dy_xhat.clone()));
        let dbeta = ctx.needs[2].then(|| Tensor::new_unchecked(&[c], sum_dy.clone()));
        Ok(vec![dx, dgamma, dbeta])
    }))
}

/// `batch_norm` on the GPU: f64 two-pass batch statistics (reduce.cu), running-stat update and
/// invstd (bn_finalize), the apply pass and the fused backward (bn_gelu.cu, act = none).
#[allow(clippy::too_many_arguments)]
fn batch_norm_cuda(
    t: &mut Tape,
    x: Var,
    gamma: Var,
    beta: Var,
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    mode: BatchNormMode,
    eps: f32,
    m: usize,
    c: usize,
    act: u32,
) -> Result<Var> {
    use crate::cuda::ops as cu;
    use crate::cuda::DType;
    let xv = t.value(x).clone();
    let xs = cu::st("batch_norm", &xv)?;
    let f32_on = |v: &Tensor| cu::on_gpu_as(v, xs, DType::F32);
    // Fresh device copies: updated in place by bn_finalize, then swapped in.
    let rm = cu::st("batch_norm", &f32_on(running_mean)?)?.try_clone()?;
    let rv = cu::st("batch_norm", &f32_on(running_var)?)?.try_clone()?;
    let (gv, bv) = (f32_on(t.value(gamma))?, f32_on(t.value(beta))?);
    let (mean, invstd, train) = match mode {
        BatchNormMode::Train { momentum } => {
            if m < 2 {
                return Err(Error::shape(
                    "batch_norm",
                    format!(
                        "training needs more than 1 value per channel, got input {:?}",
                        xv.shape()
                    ),
                ));
            }
            let (mean, var) = cu::bn_stats(xs, m, c)?;
            let unbias = m as f32 / (m as f32 - 1.0);
            let invstd =
                cu::bn_finalize(Some(&mean), Some(&var), &rm, &rv, c, momentum, unbias, eps)?;
            (mean, invstd, true)
        }
        BatchNormMode::Eval => {
            let invstd = cu::bn_finalize(None, None, &rm, &rv, c, 0.0, 1.0, eps)?;
            (rm.try_clone()?, invstd, false)
        }
    };
    *running_mean = Tensor::from_cuda(&[c], rm);
    *running_var = Tensor::from_cuda(&[c], rv);
    let (gs, bs) = (cu::st("batch_norm", &gv)?, cu::st("batch_norm", &bv)?);
    let y = cu::bn_apply(&xv, &mean, &invstd, gs, bs, c, act)?;
    let (mean, invstd) = (std::sync::Arc::new(mean), std::sync::Arc::new(invstd));
    Ok(t.record(y, &[x, gamma, beta], move |ctx| {
        let xs = cu::st("batch_norm backward", ctx.inputs[0])?;
        let gv = cu::on_gpu_as(ctx.inputs[1], xs, DType::F32)?;
        let bv = cu::on_gpu_as(ctx.inputs[2], xs, DType::F32)?;
        let (dx, sum_dy, sum_dy_xhat) = cu::bn_backward(
            ctx.inputs[0],
            ctx.dout,
            &mean,
            &invstd,
            cu::st("batch_norm", &gv)?,
            cu::st("batch_norm", &bv)?,
            c,
            train,
            act,
            ctx.needs[0],
        )?;
        Ok(vec![
            dx,
            ctx.needs[1].then_some(sum_dy_xhat),
            ctx.needs[2].then_some(sum_dy),
        ])
    }))
}
