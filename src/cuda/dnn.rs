//! Plain convolutions through cuDNN 9 (cudarc's `cudnn` bindings, loaded at run time):
//! forward, backward-data and backward-filter, grouped and depthwise included. NHWC
//! activations; OHWI weights are cuDNN's NHWC filter format (K, R, S, C/groups).
//! f32 storage uses CUDNN_FMA_MATH (no TF32: the parity mode), or CUDNN_DEFAULT_MATH (TF32
//! tensor cores allowed) under `--precision tf32`; bf16 storage allows tensor cores with f32
//! accumulation. The algorithm is chosen per shape by `cudnnFind*` (see `algo_choice!`).

use super::context::Gpu;
use super::storage::{CudaStorage, DType};
use crate::cpu::conv::ConvGeom;
use crate::{Error, Result};
use cudarc::cudnn::{result as nr, sys as ns};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

fn err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device {
        device: "cuda".into(),
        msg: format!("cuDNN {what}: {e:?}"),
    }
}

fn handle(g: &Gpu) -> Result<ns::cudnnHandle_t> {
    let mut h = g
        .dnn
        .lock()
        .map_err(|_| Error::Msg("cuDNN handle lock poisoned".into()))?;
    if let Some(p) = *h {
        return Ok(p as ns::cudnnHandle_t);
    }
    // SAFETY: only tries to open libcudnn.
    if !unsafe { ns::is_culib_present() } {
        return Err(err(
            "",
            "libcudnn.so.9 not found (pip nvidia-cudnn-cu13, or LD_LIBRARY_PATH)",
        ));
    }
    g.bind()?;
    let hd = nr::create_handle().map_err(|e| err("create", e))?;
    // SAFETY: fresh handle; the stream belongs to this GPU's context.
    unsafe { nr::set_stream(hd, g.stream() as ns::cudaStream_t) }
        .map_err(|e| err("set stream", e))?;
    *h = Some(hd as usize);
    Ok(hd)
}

/// Descriptors of one convolution; destroyed on drop.
struct Descs {
    x: ns::cudnnTensorDescriptor_t,
    y: ns::cudnnTensorDescriptor_t,
    w: ns::cudnnFilterDescriptor_t,
    conv: ns::cudnnConvolutionDescriptor_t,
}

impl Drop for Descs {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created in `Descs::new` and is destroyed once.
        unsafe {
            let _ = nr::destroy_tensor_descriptor(self.x);
            let _ = nr::destroy_tensor_descriptor(self.y);
            let _ = nr::destroy_filter_descriptor(self.w);
            let _ = nr::destroy_convolution_descriptor(self.conv);
        }
    }
}

impl Descs {
    fn new(g: &ConvGeom, dtype: DType) -> Result<Descs> {
        let dt = match dtype {
            DType::F32 => ns::cudnnDataType_t::CUDNN_DATA_FLOAT,
            DType::Bf16 => ns::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        };
        let nhwc = ns::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC;
        let i = |v: usize| v as i32;
        let d = Descs {
            x: nr::create_tensor_descriptor().map_err(|e| err("tensor descriptor", e))?,
            y: nr::create_tensor_descriptor().map_err(|e| err("tensor descriptor", e))?,
            w: nr::create_filter_descriptor().map_err(|e| err("filter descriptor", e))?,
            conv: nr::create_convolution_descriptor().map_err(|e| err("conv descriptor", e))?,
        };
        // SAFETY: descriptors created above, set once each with valid enum values.
        unsafe {
            nr::set_tensor4d_descriptor(d.x, nhwc, dt, [i(g.n), i(g.c), i(g.h), i(g.w)])
                .map_err(|e| err("x", e))?;
            nr::set_tensor4d_descriptor(d.y, nhwc, dt, [i(g.n), i(g.o), i(g.oh), i(g.ow)])
                .map_err(|e| err("y", e))?;
            nr::set_filter4d_descriptor(d.w, dt, nhwc, [i(g.o), i(g.cg()), i(g.kh), i(g.kw)])
                .map_err(|e| err("w", e))?;
            nr::set_convolution2d_descriptor(
                d.conv,
                i(g.pad),
                i(g.pad),
                i(g.stride),
                i(g.stride),
                i(g.dilation),
                i(g.dilation),
                ns::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                ns::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )
            .map_err(|e| err("conv", e))?;
            nr::set_convolution_group_count(d.conv, i(g.groups)).map_err(|e| err("groups", e))?;
            // f32: FMA only (the parity mode), or DEFAULT_MATH under `--precision tf32`, which
            // lets cuDNN pick TF32 tensor-core kernels (what PyTorch sets for allow_tf32).
            let math = match dtype {
                DType::F32 if super::tf32_for(dtype) => ns::cudnnMathType_t::CUDNN_DEFAULT_MATH,
                DType::F32 => ns::cudnnMathType_t::CUDNN_FMA_MATH,
                DType::Bf16 => ns::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
            };
            nr::set_convolution_math_type(d.conv, math).map_err(|e| err("math type", e))?;
        }
        Ok(d)
    }
}

/// Which pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// y = conv(x, w)
    Forward,
    /// dx = conv^T(dy, w)
    BackwardData,
    /// dw = corr(x, dy)
    BackwardFilter,
}

/// Runs one cuDNN convolution pass. `a`, `b` are the pass's inputs in the order
/// (x, w) / (dy, w) / (x, dy); `out` is written (=).
pub fn conv(
    gpu: &Arc<Gpu>,
    geom: &ConvGeom,
    pass: Pass,
    a: &CudaStorage,
    b: &CudaStorage,
    out: &CudaStorage,
) -> Result<()> {
    if is_pointwise(geom) {
        return pointwise(gpu, geom, pass, a, b, out);
    }
    let h = handle(gpu)?;
    let d = Descs::new(geom, out.dtype)?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let ap = &alpha as *const f32 as *const std::ffi::c_void;
    let bp = &beta as *const f32 as *const std::ffi::c_void;
    gpu.bind()?;
    // SAFETY: descriptors match the buffers' shapes (from `geom`, checked by ops::conv);
    // the workspace is sized by cuDNN's own query; everything runs on the GPU's stream.
    unsafe {
        match pass {
            Pass::Forward => {
                let algo = pick(&ALGOS.fwd, key(gpu, geom, out.dtype), || fwd_algo(h, &d))?;
                let ws = nr::get_convolution_forward_workspace_size(h, d.x, d.w, d.conv, d.y, algo)
                    .map_err(|e| err("fwd workspace", e))?;
                let wbuf = gpu.alloc(ws.max(1))?;
                nr::convolution_forward(
                    h,
                    ap,
                    d.x,
                    a.ptr() as *const _,
                    d.w,
                    b.ptr() as *const _,
                    d.conv,
                    algo,
                    wbuf.ptr() as *mut _,
                    ws,
                    bp,
                    d.y,
                    out.ptr() as *mut _,
                )
                .map_err(|e| err("forward", e))
            }
            Pass::BackwardData => {
                let algo = pick(&ALGOS.bwd_data, key(gpu, geom, out.dtype), || {
                    bwd_data_algo(h, &d)
                })?;
                let ws = nr::get_convolution_backward_data_workspace_size(
                    h, d.w, d.y, d.conv, d.x, algo,
                )
                .map_err(|e| err("bwd-data workspace", e))?;
                let wbuf = gpu.alloc(ws.max(1))?;
                nr::convolution_backward_data(
                    h,
                    ap,
                    d.w,
                    b.ptr() as *const _,
                    d.y,
                    a.ptr() as *const _,
                    d.conv,
                    algo,
                    wbuf.ptr() as *mut _,
                    ws,
                    bp,
                    d.x,
                    out.ptr() as *mut _,
                )
                .map_err(|e| err("backward data", e))
            }
            Pass::BackwardFilter => {
                let algo = pick(&ALGOS.bwd_filter, key(gpu, geom, a.dtype), || {
                    bwd_filter_algo(h, &d)
                })?;
                let ws = nr::get_convolution_backward_filter_workspace_size(
                    h, d.x, d.y, d.conv, d.w, algo,
                )
                .map_err(|e| err("bwd-filter workspace", e))?;
                let wbuf = gpu.alloc(ws.max(1))?;
                nr::convolution_backward_filter(
                    h,
                    ap,
                    d.x,
                    a.ptr() as *const _,
                    d.y,
                    b.ptr() as *const _,
                    d.conv,
                    algo,
                    wbuf.ptr() as *mut _,
                    ws,
                    bp,
                    d.w,
                    out.ptr() as *mut _,
                )
                .map_err(|e| err("backward filter", e))
            }
        }
    }
}

/// A 1x1, stride-1, unpadded, ungrouped convolution over NHWC is a plain GEMM over the
/// M = N*H*W pixels.
fn is_pointwise(g: &ConvGeom) -> bool {
    g.kh == 1 && g.kw == 1 && g.stride == 1 && g.pad == 0 && g.groups == 1
}

/// The three passes of a pointwise convolution as cuBLAS GEMMs (x: M x C, w: O x C in the
/// engine's OHWI layout, y: M x O). cuBLAS handles any channel count on tensor cores, while
/// cuDNN's bf16 NHWC kernels want channel counts that are multiples of 8 (S = 3,311 is not).
/// Each pass reads its two operands and writes its output once.
fn pointwise(
    gpu: &Arc<Gpu>,
    g: &ConvGeom,
    pass: Pass,
    a: &CudaStorage,
    b: &CudaStorage,
    out: &CudaStorage,
) -> Result<()> {
    use super::blas::{gemm, Mat};
    let m = g.n * g.h * g.w;
    let (c, o) = (g.c, g.o);
    let mat = |s, rows, cols, t| Mat { s, rows, cols, t };
    match pass {
        // y[M, O] = x[M, C] w[O, C]^T
        Pass::Forward => gemm(gpu, mat(a, m, c, false), mat(b, c, o, true), out, false),
        // dx[M, C] = dy[M, O] w[O, C]
        Pass::BackwardData => gemm(gpu, mat(a, m, o, false), mat(b, o, c, false), out, false),
        // dw[O, C] = dy[M, O]^T x[M, C]  (a = x, b = dy)
        Pass::BackwardFilter => gemm(gpu, mat(b, o, m, true), mat(a, m, c, false), out, false),
    }
}

/// Algorithm choice per GPU, geometry and element type, made once per shape and pass.
/// cuDNN's heuristic first choice was measured (H200, 2026-11-28) to pick slow bf16 NHWC
/// kernels, so the choice is `cudnnFind*` (cuDNN times every algorithm once, fastest first)
/// under a workspace limit, with the heuristic as the fallback.
/// GPU, geometry, storage type, TF32 allowed.
type AlgoKey = (usize, [usize; 11], DType, bool);

struct AlgoCache {
    fwd: Mutex<HashMap<AlgoKey, ns::cudnnConvolutionFwdAlgo_t>>,
    bwd_data: Mutex<HashMap<AlgoKey, ns::cudnnConvolutionBwdDataAlgo_t>>,
    bwd_filter: Mutex<HashMap<AlgoKey, ns::cudnnConvolutionBwdFilterAlgo_t>>,
}

static ALGOS: LazyLock<AlgoCache> = LazyLock::new(|| AlgoCache {
    fwd: Mutex::new(HashMap::new()),
    bwd_data: Mutex::new(HashMap::new()),
    bwd_filter: Mutex::new(HashMap::new()),
});

/// Largest workspace an algorithm may ask for.
const WORKSPACE_LIMIT: usize = 1 << 30;

fn key(gpu: &Gpu, g: &ConvGeom, dtype: DType) -> AlgoKey {
    (
        gpu.ordinal,
        [
            g.n, g.h, g.w, g.c, g.o, g.kh, g.kw, g.stride, g.pad, g.dilation, g.groups,
        ],
        dtype,
        super::tf32_for(dtype),
    )
}

fn pick<A: Copy>(
    cache: &Mutex<HashMap<AlgoKey, A>>,
    k: AlgoKey,
    choose: impl FnOnce() -> Result<A>,
) -> Result<A> {
    let lock = || {
        cache
            .lock()
            .map_err(|_| Error::Msg("cuDNN algorithm cache lock poisoned".into()))
    };
    if let Some(a) = lock()?.get(&k) {
        return Ok(*a);
    }
    let a = choose()?;
    lock()?.insert(k, a);
    Ok(a)
}

/// The first usable entry of a perf list (found, or heuristic: both come sorted best first).
macro_rules! first_ok {
    ($perf:expr, $cnt:expr, $limit:expr) => {
        $perf[..$cnt as usize]
            .iter()
            .find(|p| p.status == ns::cudnnStatus_t::CUDNN_STATUS_SUCCESS && p.memory <= $limit)
            .map(|p| p.algo)
    };
}

/// `$name(h, d)`: the fastest algorithm by `$find` (cuDNN runs each once) within the
/// workspace limit, else cuDNN's heuristic first choice. `$a, $b, $c` are the descriptors in
/// the order the pass's cuDNN calls take them around the convolution descriptor.
macro_rules! algo_choice {
    ($name:ident, $algo:ty, $perf:ty, $find:path, $heur:path, $what:literal, $a:ident, $b:ident, $c:ident) => {
        fn $name(h: ns::cudnnHandle_t, d: &Descs) -> Result<$algo> {
            // SAFETY: valid handle and descriptors; perf has room for the 8 results asked for.
            unsafe {
                let mut perf = [std::mem::zeroed::<$perf>(); 8];
                let mut cnt = 0;
                let st = $find(h, d.$a, d.$b, d.conv, d.$c, 8, &mut cnt, perf.as_mut_ptr());
                if st == ns::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
                    if let Some(a) = first_ok!(perf, cnt, WORKSPACE_LIMIT) {
                        return Ok(a);
                    }
                }
                $heur(h, d.$a, d.$b, d.conv, d.$c, 8, &mut cnt, perf.as_mut_ptr())
                    .map_err(|e| err($what, e))?;
                first_ok!(perf, cnt, usize::MAX).ok_or_else(|| err($what, "none supported"))
            }
        }
    };
}

algo_choice!(
    fwd_algo,
    ns::cudnnConvolutionFwdAlgo_t,
    ns::cudnnConvolutionFwdAlgoPerf_t,
    ns::cudnnFindConvolutionForwardAlgorithm,
    nr::get_convolution_forward_algorithm,
    "fwd algo",
    x,
    w,
    y
);
algo_choice!(
    bwd_data_algo,
    ns::cudnnConvolutionBwdDataAlgo_t,
    ns::cudnnConvolutionBwdDataAlgoPerf_t,
    ns::cudnnFindConvolutionBackwardDataAlgorithm,
    nr::get_convolution_backward_data_algorithm,
    "bwd-data algo",
    w,
    y,
    x
);
algo_choice!(
    bwd_filter_algo,
    ns::cudnnConvolutionBwdFilterAlgo_t,
    ns::cudnnConvolutionBwdFilterAlgoPerf_t,
    ns::cudnnFindConvolutionBackwardFilterAlgorithm,
    nr::get_convolution_backward_filter_algorithm,
    "bwd-filter algo",
    x,
    y,
    w
);
