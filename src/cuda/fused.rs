//! Conv + folded BN + activation on the evaluation / attack path (kernels/conv_gelu.cu).
//!
//! - Folding: with running statistics, BN is a per-channel affine map, folded into the conv
//!   weights once per weight version: `wf = w * scale`, `shift = beta - mean * scale`. The
//!   result is cached per layer (keyed by the layer's name and validated against the identity
//!   of the five source tensors and the weight epoch, `context::weight_epoch`), so an attack
//!   running hundreds of passes on fixed weights folds each layer once.
//! - Choice: two implementations of `act(conv(x, wf) + shift)`: the fused implicit-GEMM kernel
//!   (`conv_bn_act`, one pass) and cuDNN's convolution followed by the `shift_act` epilogue.
//!   On the first use of a layer shape both are timed (1 warm-up + 3 runs each, synchronised)
//!   and the faster is kept for that shape for the life of the process. `MPM_CONV_GELU=fused`
//!   or `=cudnn` (or `set_conv_gelu_impl`) forces one (tests use it to check both).
//!   `conv_gelu_table` lists the measured shapes (mpm-bench prints it).

use super::dnn::{conv, Pass};
use super::ops as cu;
use super::storage::{CudaStorage, DType};
use crate::cpu::conv::ConvGeom;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Which implementation of conv + folded BN + activation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvGeluImpl {
    /// kernels/conv_gelu.cu `conv_bn_act_*`: one kernel.
    Fused,
    /// cuDNN convolution, then `shift_act_*`.
    Cudnn,
}

static FORCED: Mutex<Option<ConvGeluImpl>> = Mutex::new(None);

/// Forces one implementation for every shape (`None`: back to the env var / timing).
pub fn set_conv_gelu_impl(i: Option<ConvGeluImpl>) {
    if let Ok(mut f) = FORCED.lock() {
        *f = i;
    }
}

/// The forced implementation: `set_conv_gelu_impl`, else `MPM_CONV_GELU=fused|cudnn`.
pub fn forced_impl() -> Option<ConvGeluImpl> {
    if let Some(i) = FORCED.lock().ok().and_then(|f| *f) {
        return Some(i);
    }
    match std::env::var("MPM_CONV_GELU").ok().as_deref() {
        Some("fused") => Some(ConvGeluImpl::Fused),
        Some("cudnn") => Some(ConvGeluImpl::Cudnn),
        _ => None,
    }
}

/// A layer's folded weights: `wf` f32 (O, KH, KW, C) for the fused kernel, `w_act` the same in
/// the activation dtype (cuDNN forward and backward-data), `shift` (O) f32.
pub struct Folded {
    uids: [u64; 5],
    epoch: u64,
    pub wf: Tensor,
    pub w_act: Tensor,
    pub shift: CudaStorage,
}

type FoldMap = HashMap<(usize, String), Arc<Folded>>;

fn folds() -> &'static Mutex<FoldMap> {
    static F: OnceLock<Mutex<FoldMap>> = OnceLock::new();
    F.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock_err(what: &str) -> Error {
    Error::Msg(format!("{what} lock poisoned by an earlier panic"))
}

/// The folded weights of layer `key` for conv weight `w` (O, KH, KW, C) and BN tensors
/// (gamma, beta, running mean, running var), made on `like`'s GPU in `dtype`; cached.
#[allow(clippy::too_many_arguments)]
pub fn folded(
    key: &str,
    like: &CudaStorage,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    rmean: &Tensor,
    rvar: &Tensor,
    eps: f32,
    dtype: DType,
) -> Result<Arc<Folded>> {
    let f32s: Vec<Tensor> = [w, gamma, beta, rmean, rvar]
        .iter()
        .map(|t| cu::on_gpu_as(t, like, DType::F32))
        .collect::<Result<_>>()?;
    let sts: Vec<&CudaStorage> = f32s
        .iter()
        .map(|t| cu::st("conv_bn_act fold", t))
        .collect::<Result<_>>()?;
    let uids = [sts[0].uid, sts[1].uid, sts[2].uid, sts[3].uid, sts[4].uid];
    let epoch = super::context::weight_epoch();
    let k = (like.gpu().ordinal, key.to_string());
    if let Some(f) = folds().lock().map_err(|_| lock_err("fold cache"))?.get(&k) {
        if f.uids == uids && f.epoch == epoch && cu::dtype_of(&f.w_act) == dtype {
            return Ok(f.clone());
        }
    }
    let o = w.shape()[0];
    let (wf, shift) = cu::bn_fold(sts[0], sts[1], sts[2], sts[3], sts[4], o, eps)?;
    let wf = Tensor::from_cuda(w.shape(), wf);
    let w_act = cu::to_dtype(wf.clone(), dtype)?;
    let f = Arc::new(Folded {
        uids,
        epoch,
        wf,
        w_act,
        shift,
    });
    folds()
        .lock()
        .map_err(|_| lock_err("fold cache"))?
        .insert(k, f.clone());
    Ok(f)
}

/// Runs `imp`: `y = act(conv(x, wf) + shift)`, and `pre = conv + shift` when `want_pre`.
pub fn run_impl(
    imp: ConvGeluImpl,
    x: &CudaStorage,
    f: &Folded,
    g: &ConvGeom,
    act: u32,
    want_pre: bool,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    let wf = cu::st("conv_bn_act", &f.wf)?;
    match imp {
        ConvGeluImpl::Fused => cu::conv_bn_act(x, wf, &f.shift, g, act, want_pre),
        ConvGeluImpl::Cudnn => {
            let gpu = x.gpu().clone();
            let z = cu::empty(&gpu, g.n * g.oh * g.ow * g.o, x.dtype)?;
            conv(
                &gpu,
                g,
                Pass::Forward,
                x,
                cu::st("conv_bn_act", &f.w_act)?,
                &z,
            )?;
            cu::shift_act(&z, &f.shift, g.o, act, want_pre)
        }
    }
}

/// Geometry, storage type, activation, TF32 allowed (changes cuDNN's side of the timing).
type ShapeKey = ([usize; 11], DType, u32, bool);

/// One measured shape: seconds per forward of each implementation and the one kept.
#[derive(Clone, Debug)]
pub struct ConvGeluTiming {
    pub geom: ConvGeom,
    pub dtype: DType,
    pub act: u32,
    pub fused_s: f64,
    pub cudnn_s: f64,
    pub pick: ConvGeluImpl,
}

fn choices() -> &'static Mutex<HashMap<ShapeKey, ConvGeluTiming>> {
    static C: OnceLock<Mutex<HashMap<ShapeKey, ConvGeluTiming>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

fn shape_key(g: &ConvGeom, dtype: DType, act: u32) -> ShapeKey {
    (
        [
            g.n, g.h, g.w, g.c, g.o, g.kh, g.kw, g.stride, g.pad, g.dilation, g.groups,
        ],
        dtype,
        act,
        super::tf32_for(dtype),
    )
}

/// The implementation for this shape: forced, cached, or timed now (first use).
pub fn choose(x: &CudaStorage, f: &Folded, g: &ConvGeom, act: u32) -> Result<ConvGeluImpl> {
    if g.groups != 1 {
        return Ok(ConvGeluImpl::Cudnn);
    }
    if let Some(i) = forced_impl() {
        return Ok(i);
    }
    let key = shape_key(g, x.dtype, act);
    if let Some(t) = choices()
        .lock()
        .map_err(|_| lock_err("conv-GELU"))?
        .get(&key)
    {
        return Ok(t.pick);
    }
    let gpu = x.gpu().clone();
    let time = |imp: ConvGeluImpl| -> Result<f64> {
        run_impl(imp, x, f, g, act, false)?;
        gpu.synchronize()?;
        let t0 = Instant::now();
        for _ in 0..3 {
            run_impl(imp, x, f, g, act, false)?;
        }
        gpu.synchronize()?;
        Ok(t0.elapsed().as_secs_f64() / 3.0)
    };
    let cudnn_s = time(ConvGeluImpl::Cudnn)?;
    // A fused launch that fails (e.g. resources on some GPU) just loses the comparison.
    let fused_s = time(ConvGeluImpl::Fused).unwrap_or(f64::INFINITY);
    let pick = if fused_s < cudnn_s {
        ConvGeluImpl::Fused
    } else {
        ConvGeluImpl::Cudnn
    };
    choices().lock().map_err(|_| lock_err("conv-GELU"))?.insert(
        key,
        ConvGeluTiming {
            geom: *g,
            dtype: x.dtype,
            act,
            fused_s,
            cudnn_s,
            pick,
        },
    );
    Ok(pick)
}

/// Every shape timed so far in this process.
pub fn conv_gelu_table() -> Vec<ConvGeluTiming> {
    let mut v: Vec<ConvGeluTiming> = choices()
        .lock()
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    v.sort_by_key(|t| (t.geom.h, t.geom.c, t.geom.o, t.geom.kh, t.geom.stride));
    v
}
