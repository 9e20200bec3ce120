//! MPM engine: part-supervised adversarial training and robustness evaluation of ResNets.
//!
//! Where things live:
//! - `tensor`   : `Tensor` (shape + storage + device tag), NHWC activations inside the engine.
//! - `device`   : `Device::{Cpu, Cuda(n)}`.
//! - `autograd` : the tape (record forward, replay backward), grad modes, finite-difference checks.
//! - `ops`      : one differentiable op per file (CPU reference kernels live next to the op).
//! - `nn`       : named parameter store, ResNet-18/34/50, MPM heads, two-stage part model, losses.
//! - `io`       : safetensors and PyTorch `.pth` (restricted unpickler) checkpoints.
//! - `data`     : PIN++ annotations, label maps, synthetic data, loader and augmentation.
//!
//! Shape glossary: N batch, H/W spatial, C channels, K part classes, S = K + 1 segmentation
//! channels (background 0), O output channels. Gradients are prefixed `d` (`dx`, `dw`).

pub mod data;
pub mod error;
pub mod io;

pub use error::{Error, Result};
