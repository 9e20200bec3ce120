//! `mpm-audit parity` (DESIGN.md contract A): one eval-mode pass (logits, seg logits, plain CE
//! and its input gradient) and one train-mode pass (full loss, every parameter gradient,
//! running statistics after the forward), all returned in PyTorch names and layouts.

use crate::autograd::GradMode;
use crate::nn::layout::{nchw_to_nhwc, nhwc_to_nchw};
use crate::nn::{Ctx, LossConfig, ModelSpec, ParamStore, TorchTensor};
use crate::ops;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::collections::BTreeMap;

/// The X file of contract A, in PyTorch layouts.
pub struct ParityInput {
    /// `[N, 3, H, W]` in [0, 1].
    pub input: TorchTensor,
    pub target: Vec<usize>,
    /// `seg_target.{i}`: `[N, S, h_i, w_i]`, highest resolution first.
    pub seg_targets: Vec<TorchTensor>,
    /// `[N]`
    pub seg_weight: Vec<f32>,
}

fn scalar(v: f32) -> TorchTensor {
    TorchTensor {
        shape: vec![],
        data: vec![v],
    }
}

fn nchw_dims(what: &str, t: &TorchTensor) -> Result<[usize; 4]> {
    match t.shape.as_slice() {
        [n, c, h, w] => Ok([*n, *c, *h, *w]),
        s => Err(Error::shape(
            "parity",
            format!("{what} must be [N, C, H, W], got {s:?}"),
        )),
    }
}

fn to_engine(what: &str, t: &TorchTensor) -> Result<Tensor> {
    let [n, c, h, w] = nchw_dims(what, t)?;
    Tensor::from_vec(&[n, h, w, c], nchw_to_nhwc(&t.data, n, c, h, w))
}

fn to_torch(t: &Tensor) -> TorchTensor {
    let s = t.shape();
    TorchTensor {
        shape: vec![s[0], s[3], s[1], s[2]],
        data: nhwc_to_nchw(t.data(), s[0], s[1], s[2], s[3]),
    }
}

/// Runs both passes; returns the Y tensors keyed by contract-A names.
pub fn run(
    spec: &ModelSpec,
    store: &ParamStore,
    x: &ParityInput,
    cfg: LossConfig,
) -> Result<BTreeMap<String, TorchTensor>> {
    let images = to_engine("input", &x.input)?;
    let n = images.shape()[0];
    if x.target.len() != n {
        return Err(Error::shape(
            "parity",
            format!("target has {} entries for a batch of {n}", x.target.len()),
        ));
    }
    let mut out = BTreeMap::new();

    // Eval mode: running statistics, plain CE, input gradient only.
    let mut eval_store = store.clone();
    let mut ctx = Ctx::new(&mut eval_store, GradMode::InputGradOnly, false);
    let xin = ctx.tape.input(images.clone(), true);
    let o = spec.forward(&mut ctx, xin)?;
    let ce = ops::cross_entropy_smooth(&mut ctx.tape, o.logits, &x.target, 0.0)?;
    let grads = ctx.tape.backward(ce)?;
    let logits = ctx.tape.value(o.logits);
    out.insert(
        "eval.logits".into(),
        TorchTensor {
            shape: logits.shape().to_vec(),
            data: logits.data().to_vec(),
        },
    );
    for (i, s) in o.segs.iter().enumerate() {
        out.insert(format!("eval.seg.{i}"), to_torch(ctx.tape.value(*s)));
    }
    out.insert("eval.loss_ce".into(), scalar(ctx.tape.value(ce).item()));
    let gin = grads
        .get(xin)
        .cloned()
        .unwrap_or_else(|| Tensor::zeros(images.shape()));
    out.insert("eval.grad_input".into(), to_torch(&gin));
    drop(ctx);

    // Train mode: batch statistics, full loss, every parameter gradient.
    let seg_targets: Vec<Tensor> = x
        .seg_targets
        .iter()
        .enumerate()
        .map(|(i, t)| to_engine(&format!("seg_target.{i}"), t))
        .collect::<Result<_>>()?;
    let mut train_store = store.clone();
    let mut ctx = Ctx::new(&mut train_store, GradMode::Full, true);
    let xin = ctx.tape.input(images, false);
    let o = spec.forward(&mut ctx, xin)?;
    for (i, (s, t)) in o.segs.iter().zip(&seg_targets).enumerate() {
        if ctx.tape.shape(*s) != t.shape() {
            return Err(Error::shape(
                "parity",
                format!(
                    "seg_target.{i} is {:?} (NCHW {:?}) but the model's seg output {i} is NHWC {:?}",
                    t.shape(),
                    x.seg_targets[i].shape,
                    ctx.tape.shape(*s)
                ),
            ));
        }
    }
    let loss = spec.loss(&mut ctx, &o, &x.target, &seg_targets, &x.seg_weight, cfg)?;
    let mut grads = ctx.tape.backward(loss)?;
    out.insert("train.loss".into(), scalar(ctx.tape.value(loss).item()));
    let used = ctx.used_params().clone();
    drop(ctx);
    for name in spec.param_names() {
        let g = match used.get(&name).and_then(|v| grads.take(*v)) {
            Some(g) => train_store.export_like(&name, &g)?,
            None => {
                let e = train_store.export(&name)?;
                TorchTensor {
                    data: vec![0.0; e.data.len()],
                    shape: e.shape,
                }
            }
        };
        out.insert(format!("train.grad.{name}"), g);
    }
    for name in train_store.names() {
        if name.ends_with(".running_mean") || name.ends_with(".running_var") {
            out.insert(format!("train.state.{name}"), train_store.export(name)?);
        }
    }
    Ok(out)
}
