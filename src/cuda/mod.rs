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

/// Why `cuda:N` cannot be used, or `None` when it can (driver present, GPU opens).
pub fn unavailable_reason(ordinal: usize) -> Option<String> {
    let r = std::panic::catch_unwind(|| match context::gpu(ordinal) {
        Ok(_) => None,
        Err(crate::Error::Device { msg, .. }) => Some(msg),
        Err(e) => Some(e.to_string()),
    });
    r.unwrap_or_else(|_| Some("the CUDA libraries failed to load (panic while loading)".into()))
}
