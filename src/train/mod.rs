//! `mpm-train`: the paper's adversarial-training recipe (DESIGN.md §1) for vanilla, MPM and
//! two-stage models. See docs/training.md.
//!
//! - [`config`]: the configuration (keys mirror the reference YAML; every key is a flag).
//! - [`schedule`]: timm cosine schedule with warm-up, lr scaling, the attack-step ramp.
//! - [`optim`]: PyTorch/timm SGD (momentum, Nesterov, decay on conv/linear weights only).
//! - [`ema`]: timm ModelEmaV2 over weights and BN buffers.
//! - [`pgd`]: the PGD of training (best iterate) and of evaluation.
//! - [`source`]: batch sources (pure functions of epoch and index), soft targets.
//! - [`trainer`]: one training step and the resumable state.
//! - [`ghost_bn`], [`sampler`]: batch-norm groups as the reference's DDP ranks (`bn_group`).
//! - [`checkpoint`]: atomic checkpoints, exact resume, inference export.
//! - [`init`]: what `init_checkpoint` may name (checkpoint, export, torchvision/timm `.pth`).
//! - [`eval`]: clean / PGD accuracy, part pixel accuracy and mIoU.
//! - [`run`]: the loop, run directory, logs, metrics.
//! - [`plot`]: PNG curves and part overlays.
//! - [`sweep`]: `mpm-train sweep`, one key over a list of values (Figure S3).
pub mod checkpoint;
pub mod config;
pub mod demo;
pub mod ema;
pub mod eval;
pub mod folder;
pub mod ghost_bn;
pub mod init;
pub mod optim;
pub mod part_metrics;
pub mod pgd;
pub mod plot;
pub mod run;
pub mod sampler;
pub mod schedule;
pub mod source;
pub mod sweep;
pub mod trainer;
pub mod validate;

pub use config::TrainConfig;
pub use run::{run, RunOptions, RunSummary};
pub use source::{Batch, BatchSource, MemorySource};
pub use trainer::Trainer;
