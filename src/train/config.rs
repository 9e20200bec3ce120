//! The training configuration: keys mirror the reference's YAML files (`train_configs/*.yaml`
//! of the paper's code) where one exists; every key is also a command-line flag
//! (`--key value`, `_` or `-` alike). Defaults are the paper's MPM AT run (DESIGN.md §1).

use crate::nn::{Act, Arch, Backbone, Head, LossConfig, ModelSpec};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    // -- model
    /// resnet18 | resnet34 | resnet50 | resnext50_32x4d.
    pub model: String,
    /// Backbone activation: gelu (the paper's ResNet-50-GELU) or relu.
    pub act: String,
    /// Stem width of the backbone (64 = torchvision; smaller for tests and the demo).
    pub width: usize,
    pub num_classes: usize,
    /// S = part classes + 1 (background). With `use_object_seg`: num_classes + 1.
    pub seg_classes: usize,
    /// vanilla (plain ResNet) | mpm | twostage.
    pub partmodel_type: String,
    /// MPM supervision levels: 1 = SV1 (7x7), 2 = SV2 (+14x14), 3 = SV3 (+28x28).
    pub levels: usize,
    /// MPM top-down path.
    pub top_down: bool,
    /// Two-stage model widths (conv 4x4 -> hidden, linear hidden -> fc_hidden).
    pub twostage_hidden: usize,
    pub twostage_fc_hidden: usize,
    /// Ablation "object mask": the part map becomes one object class per image (class + 1).
    pub use_object_seg: bool,
    /// Images whose label map is all background get segmentation weight 0.
    pub ignore_blank: bool,
    /// The reference loader's `use_whether_pseudo`: read `whether_pseudo/<wnid>.txt` next to
    /// `img/` (`<name> 0|1` per image, 1 = pseudo label) and give the segmentation loss of a
    /// pseudo-labelled image the weight `pseudo_weight` (blank maps still get 0, as with
    /// `ignore_blank`). `pseudo_weight = 0` trains the parts on real annotations only (Table 5).
    pub use_whether_pseudo: bool,
    /// Segmentation-loss weight of a pseudo-labelled image (the reference's `pseudo_weight`,
    /// default 0.5 there too); used only with `use_whether_pseudo`.
    pub pseudo_weight: f64,
    // -- loss
    /// Weight of the segmentation loss (the reference's `lambdas`).
    pub lambdas: f64,
    /// Focal loss exponent.
    pub gamma: f64,
    /// Label smoothing of the class targets and of the part soft targets.
    pub smoothing: f64,
    // -- optimiser
    /// Only "sgd" (timm's: momentum + Nesterov).
    pub opt: String,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    // -- schedule
    pub epochs: usize,
    /// Only "cosine" (timm CosineLRScheduler).
    pub sched: String,
    /// Step the schedule per optimiser update (the reference's default) or per epoch.
    pub sched_on_updates: bool,
    /// Base learning rate: lr = lrb * batch_size / 512.
    pub lrb: f64,
    /// Explicit learning rate (overrides lrb when > 0).
    pub lr: f64,
    pub warmup_epochs: usize,
    pub warmup_lr: f64,
    pub min_lr: f64,
    // -- data
    /// Global batch size: the images of one optimiser update (the lr rule uses it).
    pub batch_size: usize,
    /// Gradient accumulation: each update runs `batch_size / accum_steps` images at a time
    /// (PGD, forward/backward with per-micro-batch BN statistics, gradients of the loss / accum_steps
    /// summed), then one optimiser, EMA and scheduler step. 1 = no accumulation.
    pub accum_steps: usize,
    /// Ghost batch norm: images per batch-norm group, each with its own batch statistics and
    /// running-statistics chain, as one GPU of the reference's DDP run (8 x 64, no SyncBN;
    /// chains averaged at the end of every epoch). 0 = one group: the whole batch (in a
    /// data-parallel run, each rank's batch). Must divide the batch (per rank).
    pub bn_group: usize,
    /// With batch-norm groups: DDP's `broadcast_buffers` (PyTorch's default, and the authors'
    /// run): every step starts from group 0's running statistics, as DDP copies rank 0's
    /// buffers to all ranks before each forward pass. false: each group keeps its own chain
    /// all epoch and attacks with it.
    pub broadcast_buffers: bool,
    /// Data-parallel runs: sum gradient buckets over the ranks while the backward pass is
    /// still running (as DDP does); false: after it (same results; docs/distributed.md).
    pub ddp_overlap: bool,
    /// Square input side (a multiple of 32).
    pub input_size: usize,
    /// `root/img/<wnid>/*` and `root/seg/<wnid>/*.png` (the reference layout).
    pub train_dir: String,
    pub eval_dir: String,
    /// Use at most this many evaluation images (0 = all).
    pub eval_images: usize,
    /// Where `best` is chosen: "" = on `eval_dir` by EMA PGD accuracy, as the reference's saver
    /// does (`model_best` by `advtop1` on the same 10K images its Table 2 reports, which favours
    /// that set); a folder or list disjoint from `eval_dir` chooses on it instead, so the
    /// reported numbers are not also the selection criterion (docs/training.md).
    pub select_dir: String,
    /// What `best` is chosen by, the reference's `eval_metric`: "advtop1" = the EMA's PGD
    /// accuracy at `attack_eps` (`eval_attack_it` steps), as its AT YAMLs set; "top1" = the
    /// EMA's clean accuracy, as its non-AT YAMLs set (`resnet50_part_pp_init`,
    /// `resnet50_part_pp_ori`, `resnet50_sgd_ori`). Recorded in `best.json`.
    pub eval_metric: String,
    pub color_jitter: f64,
    pub hflip: f64,
    /// Random erasing probability (timm `reprob`; the reference's head warm-up sets 0.25).
    pub reprob: f64,
    /// Random erasing mode: only "pixel" (timm's default: per-pixel normal noise).
    pub remode: String,
    // -- EMA
    pub model_ema: bool,
    pub model_ema_decay: f64,
    // -- adversarial training
    pub advtrain: bool,
    /// l-inf radius (a decimal number, e.g. 0.0156862745 = 4/255).
    pub attack_eps: f64,
    /// PGD iterations of training (the reference's `attack_it`).
    pub attack_it: usize,
    /// PGD iterations of the evaluation attack (step eps/4, random start).
    pub eval_attack_it: usize,
    // -- initialisation
    /// Checkpoint to start from ("" = random init, torchvision rules).
    pub init_checkpoint: String,
    /// true: the checkpoint is a whole model of this configuration (the reference's
    /// `full_pretrain`); false: a plain ResNet whose backbone is loaded (fc dropped).
    pub full_pretrain: bool,
    /// Train only the heads and classifier (the reference's `warmup`: frozen `segmenter`).
    pub freeze_backbone: bool,
    // -- run
    pub seed: u64,
    pub output_dir: String,
    /// Evaluate the EMA model every this many epochs (0 = only at the end).
    pub eval_every: usize,
    /// Also checkpoint every this many steps (0 = only at the end of each epoch).
    pub checkpoint_every: usize,
    /// Keep this many per-epoch checkpoints besides `last.safetensors` (0 = all).
    pub keep_checkpoints: usize,
    /// auto | cpu | cuda[:N].
    pub device: String,
    /// GPU arithmetic: bf16 (mixed precision: bf16 activations, f32 master weights and
    /// accumulation, the paper's setting) or f32. Ignored on the CPU (always f32).
    pub precision: String,
    /// Batches the loader prepares ahead of the step, on a background thread (0 = load each
    /// batch when the step needs it). Does not change results: a batch is a pure function of
    /// its position.
    pub prefetch_batches: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "resnet50".into(),
            act: "gelu".into(),
            width: 64,
            num_classes: 1000,
            seg_classes: 3311,
            partmodel_type: "mpm".into(),
            levels: 3,
            top_down: true,
            twostage_hidden: 512,
            twostage_fc_hidden: 2048,
            use_object_seg: false,
            ignore_blank: true,
            use_whether_pseudo: false,
            pseudo_weight: 0.5,
            lambdas: 1.0,
            gamma: 2.0,
            smoothing: 0.1,
            opt: "sgd".into(),
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
            epochs: 80,
            sched: "cosine".into(),
            sched_on_updates: true,
            lrb: 0.2,
            lr: 0.0,
            warmup_epochs: 2,
            warmup_lr: 1e-3,
            min_lr: 1e-2,
            batch_size: 512,
            accum_steps: 1,
            bn_group: 0,
            broadcast_buffers: true,
            ddp_overlap: true,
            input_size: 224,
            train_dir: String::new(),
            eval_dir: String::new(),
            eval_images: 0,
            select_dir: String::new(),
            eval_metric: "advtop1".into(),
            color_jitter: 0.1,
            hflip: 0.5,
            reprob: 0.0,
            remode: "pixel".into(),
            model_ema: true,
            model_ema_decay: 0.9998,
            advtrain: true,
            attack_eps: 4.0 / 255.0,
            attack_it: 2,
            eval_attack_it: 10,
            init_checkpoint: String::new(),
            full_pretrain: true,
            freeze_backbone: false,
            seed: 0,
            output_dir: "runs/train".into(),
            eval_every: 1,
            checkpoint_every: 0,
            keep_checkpoints: 3,
            device: "auto".into(),
            precision: "bf16".into(),
            prefetch_batches: 2,
        }
    }
}

/// Keys that describe how a run executes rather than what it computes: a resumed run may
/// change them.
pub const RUNTIME_KEYS: &[&str] = &[
    "output_dir",
    "device",
    "precision",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "prefetch_batches",
];

impl TrainConfig {
    /// Parses TOML text (unknown keys are an error naming the key).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<TrainConfig> {
        toml::from_str(text).map_err(|e| Error::format(origin, format!("config: {e}")))
    }

    pub fn from_file(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# could not serialise: {e}\n"))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Result<TrainConfig> {
        serde_json::from_str(s).map_err(|e| Error::Msg(format!("config JSON: {e}")))
    }

    /// Every key with its default value as TOML (the flag table is built from it).
    pub fn keys() -> Vec<(String, toml::Value)> {
        match toml::Value::try_from(TrainConfig::default()) {
            Ok(toml::Value::Table(t)) => t.into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// Sets `key` from a command-line string, parsed as the key's type.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let key = key.replace('-', "_");
        let flag = format!("--{}", key.replace('_', "-"));
        let mut table = match toml::Value::try_from(&*self) {
            Ok(toml::Value::Table(t)) => t,
            _ => return Err(Error::Msg("config: cannot serialise".into())),
        };
        let Some(old) = table.get(&key) else {
            return Err(Error::flag(flag, "no such configuration key"));
        };
        let bad = |what: &str| Error::flag(&flag, format!("'{value}' is not {what}"));
        let new = match old {
            toml::Value::Boolean(_) => match value {
                "true" | "1" | "yes" | "True" => toml::Value::Boolean(true),
                "false" | "0" | "no" | "False" => toml::Value::Boolean(false),
                _ => return Err(bad("a boolean (true/false)")),
            },
            toml::Value::Integer(_) => {
                toml::Value::Integer(value.parse().map_err(|_| bad("an integer"))?)
            }
            toml::Value::Float(_) => {
                toml::Value::Float(value.parse().map_err(|_| bad("a number"))?)
            }
            _ => toml::Value::String(value.to_string()),
        };
        table.insert(key, new);
        *self = toml::Value::Table(table)
            .try_into()
            .map_err(|e| Error::flag(&flag, format!("{e}")))?;
        Ok(())
    }

    /// Checks values that do not depend on the data.
    pub fn validate(&self) -> Result<()> {
        super::validate::check(self)?;
        let f = |k: &str, m: String| Err(Error::flag(format!("--{}", k.replace('_', "-")), m));
        self.arch()?
            .check_width(self.width)
            .map_err(|e| Error::flag("--width", e))?;
        self.activation()?;
        self.head()?;
        if self.opt != "sgd" {
            return f(
                "opt",
                format!("'{}': only sgd (timm's, Nesterov) is supported", self.opt),
            );
        }
        if self.sched != "cosine" {
            return f(
                "sched",
                format!("'{}': only cosine is supported", self.sched),
            );
        }
        if self.input_size == 0 || self.input_size % 32 != 0 {
            return f(
                "input_size",
                format!("{} must be a positive multiple of 32", self.input_size),
            );
        }
        if self.batch_size == 0 {
            return f("batch_size", "must be at least 1".into());
        }
        if self.accum_steps == 0 || self.batch_size % self.accum_steps != 0 {
            return f(
                "accum_steps",
                format!(
                    "--batch-size {} is not divisible by --accum-steps {}: each update splits the \
                     batch into accum_steps equal micro-batches",
                    self.batch_size, self.accum_steps
                ),
            );
        }
        if self.bn_group > 0 && self.batch_size % self.bn_group != 0 {
            return f(
                "bn_group",
                format!(
                    "{} does not divide --batch-size {}: the batch is cut into equal batch-norm \
                     groups (0 = one group, the whole batch)",
                    self.bn_group, self.batch_size
                ),
            );
        }
        if self.bn_groups(1) > 1 && self.accum_steps != 1 {
            return f(
                "bn_group",
                format!(
                    "{} with --accum-steps {}: batch-norm groups already run one group of \
                     bn_group images per pass; set accum_steps = 1",
                    self.bn_group, self.accum_steps
                ),
            );
        }
        if self.width == 0 || self.width % 4 != 0 {
            return f(
                "width",
                format!("{} must be a positive multiple of 4", self.width),
            );
        }
        if self.num_classes < 2 {
            return f(
                "num_classes",
                format!("{}: need at least 2 classes", self.num_classes),
            );
        }
        if self.partmodel_type != "vanilla" && self.seg_classes < 2 {
            return f(
                "seg_classes",
                format!(
                    "{}: need at least 2 (background + a part)",
                    self.seg_classes
                ),
            );
        }
        if self.use_object_seg && self.seg_classes != self.num_classes + 1 {
            return f(
                "seg_classes",
                format!(
                    "{} with use_object_seg: must be num_classes + 1 = {}",
                    self.seg_classes,
                    self.num_classes + 1
                ),
            );
        }
        if self.advtrain && !(self.attack_eps > 0.0 && self.attack_eps <= 1.0) {
            return f(
                "attack_eps",
                format!("{} must be in (0, 1]", self.attack_eps),
            );
        }
        if !(0.0..1.0).contains(&self.model_ema_decay) {
            return f(
                "model_ema_decay",
                format!("{} must be in [0, 1)", self.model_ema_decay),
            );
        }
        if !(0.0..1.0).contains(&self.smoothing) {
            return f("smoothing", format!("{} must be in [0, 1)", self.smoothing));
        }
        if self.epochs == 0 {
            return f("epochs", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.reprob) {
            return f("reprob", format!("{} must be in [0, 1]", self.reprob));
        }
        if self.remode != "pixel" {
            return f(
                "remode",
                format!(
                    "'{}': only pixel (timm's per-pixel noise) is supported",
                    self.remode
                ),
            );
        }
        if !(self.pseudo_weight >= 0.0 && self.pseudo_weight.is_finite()) {
            return f(
                "pseudo_weight",
                format!("{} must be a finite number >= 0", self.pseudo_weight),
            );
        }
        Ok(())
    }

    pub fn arch(&self) -> Result<Arch> {
        self.model
            .parse()
            .map_err(|e: String| Error::flag("--model", e))
    }

    pub fn activation(&self) -> Result<Act> {
        self.act
            .parse()
            .map_err(|e: String| Error::flag("--act", e))
    }

    pub fn head(&self) -> Result<Head> {
        match self.partmodel_type.to_ascii_lowercase().as_str() {
            "vanilla" | "none" => Ok(Head::None),
            "mpm" => {
                if !(1..=3).contains(&self.levels) {
                    return Err(Error::flag(
                        "--levels",
                        format!("{} must be 1, 2 or 3", self.levels),
                    ));
                }
                Ok(Head::Mpm {
                    levels: self.levels,
                    top_down: self.top_down,
                })
            }
            "twostage" => Ok(Head::TwoStage {
                hidden: self.twostage_hidden,
                fc_hidden: self.twostage_fc_hidden,
            }),
            other => Err(Error::flag(
                "--partmodel-type",
                format!("'{other}': expected vanilla, mpm or twostage"),
            )),
        }
    }

    pub fn spec(&self) -> Result<ModelSpec> {
        let head = self.head()?;
        Ok(ModelSpec {
            backbone: Backbone {
                arch: self.arch()?,
                width: self.width,
                act: self.activation()?,
            },
            num_classes: self.num_classes,
            seg_classes: if head == Head::None {
                0
            } else {
                self.seg_classes
            },
            head,
        })
    }

    pub fn loss(&self) -> LossConfig {
        LossConfig {
            lambda: self.lambdas as f32,
            gamma: self.gamma as f32,
            smoothing: self.smoothing as f32,
        }
    }

    /// The peak learning rate: `lr` if set, else `lrb * batch_size / 512`.
    pub fn peak_lr(&self) -> f64 {
        if self.lr > 0.0 {
            self.lr
        } else {
            super::schedule::scaled_lr(self.lrb, self.batch_size)
        }
    }

    /// Images per forward/backward pass: `batch_size / accum_steps`, or `bn_group`.
    pub fn micro_batch(&self) -> usize {
        if self.bn_groups(1) > 1 {
            return self.bn_group;
        }
        self.batch_size / self.accum_steps.max(1)
    }

    /// Batch-norm groups in the whole batch of a run over `world` processes: one per
    /// `bn_group` images, or one per process when `bn_group` is 0 (each rank's batch).
    pub fn bn_groups(&self, world: usize) -> usize {
        self.batch_size
            .checked_div(self.bn_group)
            .unwrap_or(world.max(1))
    }

    /// Sizes of the soft targets the part heads use, highest resolution first, made as the
    /// reference makes them: nearest resize of the label map to the first size, bilinear from
    /// there to the others. SV3: input / 8, 16, 32 (28, 14, 7 at 224); SV2: 14, 7; SV1 and the
    /// two-stage model: 7 directly (not via 28, which would average the one-hot maps); none
    /// for a plain model.
    pub fn target_sizes(&self) -> Vec<usize> {
        let all = [
            self.input_size / 8,
            self.input_size / 16,
            self.input_size / 32,
        ];
        match self.head() {
            Ok(Head::Mpm { levels, .. }) => all[3 - levels.clamp(1, 3)..].to_vec(),
            Ok(Head::TwoStage { .. }) => vec![all[2]],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_paper_recipe() {
        let c = TrainConfig::default();
        assert_eq!(c.peak_lr(), 0.2);
        assert_eq!(c.attack_it, 2);
        assert!((c.attack_eps - 4.0 / 255.0).abs() < 1e-9);
        assert_eq!(c.model_ema_decay, 0.9998);
        c.validate().unwrap();
    }

    #[test]
    fn every_key_is_settable() {
        let keys = TrainConfig::keys();
        assert!(keys.len() > 40, "{} keys", keys.len());
        let mut c = TrainConfig::default();
        c.set("lrb", "0.1").unwrap();
        c.set("batch-size", "64").unwrap();
        c.set("model_ema", "false").unwrap();
        c.set("partmodel_type", "vanilla").unwrap();
        assert_eq!(c.lrb, 0.1);
        assert_eq!(c.batch_size, 64);
        assert!(!c.model_ema);
        assert!((c.peak_lr() - 0.0125).abs() < 1e-12);
        assert!(c.set("nope", "1").is_err());
        let e = c.set("epochs", "ten").unwrap_err().to_string();
        assert!(e.contains("--epochs") && e.contains("integer"), "{e}");
    }

    #[test]
    fn toml_round_trip_and_unknown_keys() {
        let c = TrainConfig::default();
        let back = TrainConfig::from_toml_str(&c.to_toml(), "x").unwrap();
        assert_eq!(c, back);
        let e = TrainConfig::from_toml_str("lbr = 0.1", "x.toml").unwrap_err();
        assert!(e.to_string().contains("lbr"), "{e}");
    }

    #[test]
    fn accum_steps_must_divide_the_batch() {
        let mut c = TrainConfig::default();
        c.set("accum-steps", "4").unwrap();
        c.validate().unwrap();
        assert_eq!(c.micro_batch(), 128);
        // The lr rule uses the global batch, not the micro-batch.
        assert_eq!(c.peak_lr(), 0.2);
        c.set("accum_steps", "3").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("--accum-steps") && e.contains("512") && e.contains("3"),
            "{e}"
        );
        c.set("accum_steps", "0").unwrap();
        assert!(c.validate().is_err());
        // Older checkpoints' configs have no accum_steps: it defaults to 1.
        let old = TrainConfig::from_json(r#"{"batch_size": 8}"#).unwrap();
        assert_eq!(old.accum_steps, 1);
    }

    #[test]
    fn pseudo_keys_are_the_reference_loader_s() {
        let c = TrainConfig::default();
        // The reference's argparse defaults: off, weight 0.5.
        assert!(!c.use_whether_pseudo);
        assert_eq!(c.pseudo_weight, 0.5);
        let mut c = TrainConfig::default();
        c.set("use-whether-pseudo", "true").unwrap();
        c.set("pseudo_weight", "0").unwrap();
        c.validate().unwrap();
        c.set("pseudo_weight", "-1").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--pseudo-weight") && e.contains("-1"), "{e}");
    }
}
