//! Adversarial attacks and robustness evaluation (issue 6, DESIGN.md contract B).
//!
//! Where things live:
//! - `model`      : the [`Classifier`] an attack talks to (logits, input gradient of a loss on
//!   the logits), [`EngineClassifier`] on any model of the engine, and the losses attacks
//!   differentiate (CE, DLR, targeted DLR, margin), computed on the logits directly.
//! - `norms`      : l-inf / l2 / l1 norms, eps validation, the l1-ball + box projection.
//! - `rng`        : per-sample random streams: results do not depend on batch composition.
//! - `pgd`        : PGD (random start, restarts) and FGSM, l-inf / l2 / l1.
//! - `apgd`       : APGD-CE, APGD-DLR and APGD-T (targeted DLR), l1 sparse steps and the
//!   decreasing-eps schedule of AutoAttack's l1 version.
//! - `radix`      : stable radix argsort of floats (FAB's and the l1 projection's sorts).
//! - `fab`        : FAB-T (targeted Fast Adaptive Boundary).
//! - `boundary`   : FAB's minimum-norm projections onto a hyperplane within the box.
//! - `row_steps`  : the per-sample step arithmetic (APGD l-inf / l2 / l1, FAB, Square's mass
//!   move) that each host loop and its resident CPU twin share.
//! - `resident`   : the same steps on batches that stay in the model's input tensors (GPU
//!   kernels, CPU twins through `row_steps`).
//! - `square`     : Square attack (l-inf, l2, l1), 5000 queries, AutoAttack's p schedule.
//! - `autoattack` : the "standard" sequence on the points still robust, every example verified.
//! - `report`     : R.json, the resumable journal, confidence intervals, the paper's table.
//! - `imagefolder`: ImageFolder / list-file datasets with the eval transform.
//! - `shard`      : `--shard I/N` (contiguous blocks of the sample list) and the merge checks.
//! - `subset`     : `--class-subset` / `--super-classes`: the model's logits regrouped, so
//!   that every attack runs on the masked model.
//!
//! Images are NCHW `f32` in [0, 1] here (as in the files and the reference implementation);
//! [`EngineClassifier`] converts to the engine's NHWC at its edge.

pub mod apgd;
pub mod autoattack;
pub mod boundary;
pub mod fab;
pub mod imagefolder;
pub mod model;
pub mod norms;
pub mod pgd;
pub mod radix;
pub mod report;
pub mod resident;
pub mod rng;
pub mod row_steps;
pub mod run;
pub mod schedule;
pub mod shard;
pub mod square;
pub mod subset;

pub use autoattack::{AttackKind, AutoAttack, AutoAttackConfig, SampleResult};
pub use model::{Classifier, Dims, EngineClassifier, LossKind};
pub use norms::Norm;
