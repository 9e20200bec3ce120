//! CUDA backend: cudarc (driver, NVRTC, cuBLAS, cuDNN) loaded at run time, hand-written kernels
//! from `kernels/*.cu` (see `kernels/README.md` for the file -> kernel -> launcher -> test map).
//!
//! - `libs`    : finds CUDA libraries (pip wheels included) before cudarc opens them by name.
//! - `modules` : the build.rs kernel table, NVRTC compilation and its on-disk CUBIN cache.
//! - `context` : one GPU: context, stream, module cache, caching allocator (`DevBuf`).
//! - `storage` : device storage of a `Tensor` (f32 or bf16) with a lazily downloaded host view.
//! - `ops`     : tensor-level launchers, one per kernel family of `kernels/*.cu`.
//! - `blas`, `dnn`: GEMMs (cuBLAS) and plain convolutions (cuDNN) through cudarc.
//! - `launch`  : kernel argument packing.
//! - `fused`   : conv + folded BN + GELU for the eval/attack path: the BN fold cache and the
//!   per-shape choice between the fused kernel and cuDNN + a separate epilogue.
//!
//! One build runs everywhere: nothing here links against CUDA, and every entry point first
//! checks that the libraries load, so a machine without CUDA gets an error (or, for
//! `--device auto`, the CPU) with the reason, never a crash.

pub mod blas;
pub mod context;
pub mod dnn;
pub mod fused;
pub mod launch;
pub mod libs;
pub mod modules;
pub mod ops;
pub mod storage;

pub use context::{
    gpu, is_out_of_memory, malloc_count, set_batch_hint, weight_epoch, weights_changed, with_batch,
    DevBuf, Gpu,
};
pub use storage::DType;

static TF32: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets cuBLAS GEMMs and cuDNN convolutions on f32 tensors use TF32 tensor cores (process-wide,
/// like PyTorch's `allow_tf32` flags; `--precision tf32`). Off: strict f32 (the parity mode).
pub fn set_tf32(on: bool) {
    TF32.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// Whether f32 GEMMs and convolutions of `dtype` may use TF32 now (never for bf16, which
/// always runs on tensor cores).
pub fn tf32_for(dtype: DType) -> bool {
    dtype == DType::F32 && TF32.load(std::sync::atomic::Ordering::SeqCst)
}

/// Why `cuda:N` cannot be used, or `None` when it can (driver present, GPU opens).
pub fn unavailable_reason(ordinal: usize) -> Option<String> {
    let r = std::panic::catch_unwind(|| match context::gpu(ordinal) {
        Ok(_) => None,
        Err(crate::Error::Device { msg, .. }) => Some(msg),
        Err(e) => Some(e.to_string()),
    });
    r.unwrap_or_else(|_| Some("the CUDA libraries failed to load (panic while loading)".into()))
}
