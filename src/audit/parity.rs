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

/// The outputs holding a NaN or an infinity, as "name (k of n values)": contract A's outputs
/// are all finite for a sound model and input, so any is a failure of the run (exit 1), not a
/// result to compare.
pub fn non_finite_outputs(y: &BTreeMap<String, TorchTensor>) -> Vec<String> {
    y.iter()
        .filter_map(|(name, t)| {
            let bad = t.data.iter().filter(|v| !v.is_finite()).count();
            (bad > 0).then(|| format!("{name} ({bad} of {} values)", t.data.len()))
        })
        .collect()
}

/// How one output compares with its reference.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub name: String,
    /// Relative L2 error, or the absolute L2 error when the reference is (near) zero.
    pub error: f64,
    pub absolute: bool,
    pub tolerance: f64,
}

impl Comparison {
    pub fn ok(&self) -> bool {
        self.error <= self.tolerance
    }
}

/// Contract-A tolerances: relative L2 1e-4 for outputs, losses and running statistics,
/// 1e-3 for gradients.
pub fn tolerance(name: &str) -> f64 {
    if name.contains(".grad") {
        1e-3
    } else {
        1e-4
    }
}

/// Below this reference norm a tensor is compared by absolute L2 error (`NEAR_ZERO_ABS`):
/// e.g. the gradient of a bias feeding a train-mode BN is exactly zero, and f32 rounding
/// noise has unbounded relative size.
pub const NEAR_ZERO_NORM: f64 = 1e-6;
pub const NEAR_ZERO_ABS: f64 = 1e-5;

/// Compares every expected tensor with the computed one. Missing outputs and shape
/// differences are reported as errors of infinity.
pub fn compare(
    expected: &BTreeMap<String, TorchTensor>,
    got: &BTreeMap<String, TorchTensor>,
) -> Vec<Comparison> {
    let mut rows = Vec::new();
    for (name, e) in expected {
        let tol = tolerance(name);
        let Some(g) = got.get(name) else {
            rows.push(Comparison {
                name: format!("{name} (missing)"),
                error: f64::INFINITY,
                absolute: false,
                tolerance: tol,
            });
            continue;
        };
        if g.shape != e.shape {
            rows.push(Comparison {
                name: format!("{name} (shape {:?} vs expected {:?})", g.shape, e.shape),
                error: f64::INFINITY,
                absolute: false,
                tolerance: tol,
            });
            continue;
        }
        let diff: f64 = e
            .data
            .iter()
            .zip(&g.data)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = e
            .data
            .iter()
            .map(|a| (*a as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let (error, absolute, tolerance) = if norm < NEAR_ZERO_NORM {
            (diff, true, NEAR_ZERO_ABS)
        } else {
            (diff / norm, false, tol)
        };
        rows.push(Comparison {
            name: name.clone(),
            error: if error.is_nan() { f64::INFINITY } else { error },
            absolute,
            tolerance,
        });
    }
    for name in got.keys() {
        if !expected.contains_key(name) {
            rows.push(Comparison {
                name: format!("{name} (not in the reference)"),
                error: f64::INFINITY,
                absolute: false,
                tolerance: 0.0,
            });
        }
    }
    rows
}
