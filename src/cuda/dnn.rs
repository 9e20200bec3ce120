//! Plain convolutions through cuDNN 9 (cudarc's `cudnn` bindings, loaded at run time):
//! forward, backward-data and backward-filter, grouped and depthwise included. NHWC
//! activations; OHWI weights are cuDNN's NHWC filter format (K, R, S, C/groups).
//! f32 storage uses CUDNN_FMA_MATH (no TF32: the parity mode); bf16 storage allows tensor
//! cores with f32 accumulation. The algorithm is cuDNN's heuristic first choice.

use super::context::Gpu;
use super::storage::{CudaStorage, DType};
use crate::cpu::conv::ConvGeom;
use crate::{Error, Result};
use cudarc::cudnn::{result as nr, sys as ns};
use std::sync::Arc;

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
            let math = match dtype {
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
                let mut perf = [std::mem::zeroed::<ns::cudnnConvolutionFwdAlgoPerf_t>(); 8];
                let mut cnt = 0;
                nr::get_convolution_forward_algorithm(
                    h,
                    d.x,
                    d.w,
                    d.conv,
                    d.y,
                    8,
                    &mut cnt,
                    perf.as_mut_ptr(),
                )
                .map_err(|e| err("fwd algo", e))?;
                let algo = perf[..cnt as usize]
                    .iter()
                    .find(|p| p.status == ns::cudnnStatus_t::CUDNN_STATUS_SUCCESS)
                    .map(|p| p.algo)
                    .ok_or_else(|| err("fwd algo", "none supported"))?;
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
                let mut perf = [std::mem::zeroed::<ns::cudnnConvolutionBwdDataAlgoPerf_t>(); 8];
                let mut cnt = 0;
                nr::get_convolution_backward_data_algorithm(
                    h,
                    d.w,
                    d.y,
                    d.conv,
                    d.x,
                    8,
                    &mut cnt,
                    perf.as_mut_ptr(),
                )
                .map_err(|e| err("bwd-data algo", e))?;
                let algo = perf[..cnt as usize]
                    .iter()
                    .find(|p| p.status == ns::cudnnStatus_t::CUDNN_STATUS_SUCCESS)
                    .map(|p| p.algo)
                    .ok_or_else(|| err("bwd-data algo", "none supported"))?;
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
                let mut perf = [std::mem::zeroed::<ns::cudnnConvolutionBwdFilterAlgoPerf_t>(); 8];
                let mut cnt = 0;
                nr::get_convolution_backward_filter_algorithm(
                    h,
                    d.x,
                    d.y,
                    d.conv,
                    d.w,
                    8,
                    &mut cnt,
                    perf.as_mut_ptr(),
                )
                .map_err(|e| err("bwd-filter algo", e))?;
                let algo = perf[..cnt as usize]
                    .iter()
                    .find(|p| p.status == ns::cudnnStatus_t::CUDNN_STATUS_SUCCESS)
                    .map(|p| p.algo)
                    .ok_or_else(|| err("bwd-filter algo", "none supported"))?;
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
