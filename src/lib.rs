//! MPM engine: part-supervised adversarial training and robustness evaluation of ResNets.
//!
//! Where things live:
//! - `tensor`   : `Tensor` (shape + storage + device tag), NHWC activations inside the engine.
//! - `device`   : `Device::{Cpu, Cuda(n)}` and `--device auto|cpu|cuda[:N]` resolution.
//! - `autograd` : the tape (record forward, replay backward), grad modes, finite-difference checks.
//! - `cpu`      : reference kernels, one file per concern (plain loops, rayon on outer loops).
//! - `cuda`     : the GPU backend (cudarc, `kernels/*.cu` via build.rs, cuBLAS/cuDNN), docs/cuda.md.
//! - `ops`      : differentiable ops: shape checks, dispatch, backward rules.
//! - `nn`       : named parameter store, ResNet-18/34/50, MPM heads, two-stage part model, losses.
//! - `io`       : safetensors and PyTorch `.pth` (restricted unpickler) checkpoints.
//! - `data`     : PIN++ annotations, label maps, synthetic data, loader and augmentation.
//! - `dist`     : data-parallel ranks (DDP semantics): communicators, NCCL, rendezvous, launcher.
//! - `train`    : `mpm-train`: the AT recipe (schedule, SGD, EMA, PGD), checkpoints, eval, demo.
//!
//! Shape glossary: N batch, H/W spatial, C channels, K part classes, S = K + 1 segmentation
//! channels (background 0), O output channels. Gradients are prefixed `d` (`dx`, `dw`).

// Kernels and ops take their shapes and buffers as plain arguments.
#![allow(clippy::too_many_arguments)]

pub mod attack;
pub mod audit;
pub mod autograd;
pub mod charts;
pub mod cpu;
pub mod cuda;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod eval;
pub mod io;
pub mod nn;
pub mod ops;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};

/// A caching allocator for every program built on the engine: a training or attack step
/// allocates many large activation buffers, and reusing them instead of taking fresh zeroed
/// pages from the OS on every op made the CPU step about 3x faster (benches/cpu_step.rs).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps freed memory mapped for reuse instead of returning it to the OS after 10 ms
/// (mimalloc's default): every step frees and reallocates the same large activation
/// buffers, and re-faulting them cost a third of the CPU step's time in the kernel's page
/// zeroing. Called once, from the first tape.
pub(crate) fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // mimalloc's `mi_option_purge_delay` (index 15 in v2 and v3 of its option enum).
        const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: sets a process-wide allocator option; mimalloc reads it atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    });
}
