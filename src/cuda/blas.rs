//! GEMMs through cuBLAS (cudarc's `cublas` bindings, loaded at run time), on row-major views:
//! `c[m x n] = op(a)[m x k] * op(b)[k x n] (+ c when accumulating)`. Row-major C is the
//! column-major C^T = op(b)^T op(a)^T, so cuBLAS is called with the operands swapped.
//! f32 storage computes with CUBLAS_COMPUTE_32F (no TF32: the parity mode), or
//! CUBLAS_COMPUTE_32F_FAST_TF32 under `--precision tf32`; bf16 storage uses bf16 tensor cores
//! with f32 accumulation.

use super::context::Gpu;
use super::storage::{CudaStorage, DType};
use crate::{Error, Result};
use cudarc::cublas::{result as br, sys as bs};

fn err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device {
        device: "cuda".into(),
        msg: format!("cuBLAS {what}: {e:?}"),
    }
}

fn handle(g: &Gpu) -> Result<bs::cublasHandle_t> {
    let mut h = g
        .blas
        .lock()
        .map_err(|_| Error::Msg("cuBLAS handle lock poisoned".into()))?;
    if let Some(p) = *h {
        return Ok(p as bs::cublasHandle_t);
    }
    // SAFETY: only tries to open libcublas.
    if !unsafe { bs::is_culib_present() } {
        return Err(err(
            "",
            "libcublas.so.13 not found (pip nvidia-cublas, or LD_LIBRARY_PATH)",
        ));
    }
    g.bind()?;
    let hd = br::create_handle().map_err(|e| err("create", e))?;
    // SAFETY: the handle was just created; the stream belongs to this GPU's context.
    unsafe { br::set_stream(hd, g.stream() as bs::cudaStream_t) }
        .map_err(|e| err("set stream", e))?;
    *h = Some(hd as usize);
    Ok(hd)
}

/// A row-major operand: device storage, rows x cols as seen by the product, transposed flag
/// (storage holds cols x rows).
pub struct Mat<'a> {
    pub s: &'a CudaStorage,
    pub rows: usize,
    pub cols: usize,
    pub t: bool,
}

/// `c = op(a) op(b)` (or `c += ...`); all operands share one dtype; c has m*n elements.
pub fn gemm(g: &Gpu, a: Mat, b: Mat, c: &CudaStorage, accumulate: bool) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || c.len < m * n || a.s.len < m * k || b.s.len < k * n {
        return Err(Error::shape(
            "gemm",
            format!("{m}x{k} * {}x{n} into {} elements", b.rows, c.len),
        ));
    }
    if a.s.dtype != b.s.dtype || a.s.dtype != c.dtype {
        return Err(Error::shape("gemm", "operands differ in element type"));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let h = handle(g)?;
    g.bind()?;
    let op = |t: bool| {
        if t {
            bs::cublasOperation_t::CUBLAS_OP_T
        } else {
            bs::cublasOperation_t::CUBLAS_OP_N
        }
    };
    // cuBLAS operand 1 = b: not transposed -> stored k x n row-major -> OP_N, ld = n.
    let (op1, ld1) = (op(b.t), if b.t { k } else { n });
    let (op2, ld2) = (op(a.t), if a.t { m } else { k });
    let ty = match c.dtype {
        DType::F32 => bs::cudaDataType::CUDA_R_32F,
        DType::Bf16 => bs::cudaDataType::CUDA_R_16BF,
    };
    let alpha = 1.0f32;
    let beta = if accumulate { 1.0f32 } else { 0.0f32 };
    // SAFETY: sizes checked above; the pointers are live device buffers of this GPU; alpha
    // and beta are host f32 as CUBLAS_COMPUTE_32F expects (default host pointer mode).
    unsafe {
        br::gemm_ex(
            h,
            op1,
            op2,
            n as i32,
            m as i32,
            k as i32,
            &alpha as *const f32 as *const _,
            b.s.ptr() as *const _,
            ty,
            ld1 as i32,
            a.s.ptr() as *const _,
            ty,
            ld2 as i32,
            &beta as *const f32 as *const _,
            c.ptr() as *mut _,
            ty,
            n as i32,
            if super::tf32_for(c.dtype) {
                bs::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
            } else {
                bs::cublasComputeType_t::CUBLAS_COMPUTE_32F
            },
            bs::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| err("gemm_ex", e))
}
