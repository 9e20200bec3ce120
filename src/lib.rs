//! MPM engine: part-supervised adversarial training and robustness evaluation of ResNets.
//!
//! Where things live:
//! - `tensor`   : `Tensor` (shape + storage + device tag), NHWC activations inside the engine.
//! - `device`   : `Device::{Cpu, Cuda(n)}` and `--device auto|cpu|cuda[:N]` resolution.
//! - `autograd` : the tape (record forward, replay backward), grad modes, finite-difference checks.
//! - `cpu`      : reference kernels, one file per concern (plain loops, rayon on outer loops).
//! - `ops`      : differentiable ops: shape checks, dispatch, backward rules.
//! - `nn`       : named parameter store, ResNet-18/34/50, MPM heads, two-stage part model, losses.
//! - `io`       : safetensors and PyTorch `.pth` (restricted unpickler) checkpoints.
//! - `data`     : PIN++ annotations, label maps, synthetic data, loader and augmentation.
//!
//! Shape glossary: N batch, H/W spatial, C channels, K part classes, S = K + 1 segmentation
//! channels (background 0), O output channels. Gradients are prefixed `d` (`dx`, `dw`).

pub mod attack;
pub mod audit;
pub mod autograd;
pub mod cpu;
pub mod data;
pub mod device;
pub mod error;
pub mod io;
pub mod nn;
pub mod ops;
pub mod tensor;

pub use error::{Error, Result};
