//! One adversarial-training step and the state that a checkpoint must hold to continue a run
//! exactly: model, EMA, momentum buffers, position (epoch, step in epoch, global step) and
//! the running sums of the epoch's metrics. Random numbers (the PGD start) are drawn from a
//! generator seeded by `(seed, global step)`, so the RNG state is a function of the position.

use super::config::TrainConfig;
use super::ema;
use super::optim::{Sgd, SgdConfig};
use super::pgd::{pgd_linf, PgdConfig};
use super::schedule::{attack_step, CosineSchedule};
use super::source::{soft_targets, Batch};
use crate::autograd::GradMode;
use crate::device::Device;
use crate::io::{self, StateDictPick};
use crate::nn::{Ctx, Head, ModelSpec, ParamStore, StateValue};
use crate::tensor::Tensor;
use crate::{Error, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Where a run is: the next step to run is step `step` of epoch `epoch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: usize,
    pub step: usize,
    pub global_step: u64,
}

/// Running sums over the current epoch (restored on resume so the epoch's logged means are the
/// same as without the interruption).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    pub loss: f64,
    pub ce: f64,
    pub correct: u64,
    pub seen: u64,
    pub steps: u64,
}

impl EpochSums {
    pub fn mean_loss(&self) -> f64 {
        self.loss / self.steps.max(1) as f64
    }
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.seen.max(1) as f64
    }
}

#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    pub loss: f32,
    pub lr: f64,
    pub correct: usize,
    pub n: usize,
}

pub struct Trainer {
    pub cfg: TrainConfig,
    pub spec: ModelSpec,
    pub model: ParamStore,
    pub ema: Option<ParamStore>,
    pub opt: Sgd,
    pub sched: CosineSchedule,
    pub pos: Position,
    pub sums: EpochSums,
    pub updates_per_epoch: usize,
    /// Where the forward and backward passes run (not saved: a run may resume elsewhere).
    pub device: Device,
}

/// Prefixes of the parameters a frozen-backbone run keeps constant.
pub fn backbone_prefixes(spec: &ModelSpec) -> Vec<String> {
    match spec.head {
        Head::None => vec!["conv1.".into(), "bn1.".into(), "layer".into()],
        _ => vec!["segmenter.".into()],
    }
}

impl Trainer {
    /// A fresh run: random init (or `init_checkpoint`), EMA = copy of the model.
    pub fn new(cfg: TrainConfig, updates_per_epoch: usize) -> Result<Trainer> {
        cfg.validate()?;
        let spec = cfg.spec()?;
        let model = init_model(&cfg, &spec)?;
        let ema = cfg.model_ema.then(|| model.clone());
        let opt = Sgd::new(SgdConfig {
            momentum: cfg.momentum as f32,
            weight_decay: cfg.weight_decay as f32,
            nesterov: cfg.nesterov,
        });
        let sched = schedule(&cfg, updates_per_epoch);
        Ok(Trainer {
            cfg,
            spec,
            model,
            ema,
            opt,
            sched,
            pos: Position::default(),
            sums: EpochSums::default(),
            updates_per_epoch,
            device: Device::Cpu,
        })
    }

    pub fn lr(&self) -> f64 {
        self.sched.lr(self.pos.epoch, self.pos.step)
    }

    /// The model that is evaluated and exported: the EMA when there is one.
    pub fn eval_model(&self) -> &ParamStore {
        self.ema.as_ref().unwrap_or(&self.model)
    }

    /// The label maps the loss sees (object-mask ablation: part -> class + 1).
    pub fn effective_maps(&self, batch: &Batch) -> Vec<u16> {
        effective_maps(&self.cfg, batch)
    }

    /// One step: PGD on the batch (eval mode), then the full loss on the adversarial batch in
    /// train mode, Nesterov SGD, EMA. Advances the position by one step.
    pub fn step(&mut self, batch: &Batch) -> Result<StepStats> {
        let n = batch.len();
        if n == 0 {
            return Err(Error::Msg("empty batch".into()));
        }
        if let Some(&bad) = batch.labels.iter().find(|&&l| l >= self.cfg.num_classes) {
            return Err(Error::flag(
                "--num-classes",
                format!(
                    "the data has label {bad} but the model has {} classes",
                    self.cfg.num_classes
                ),
            ));
        }
        let lr = self.lr();
        let where_ = format!(
            "epoch {} step {} (global step {})",
            self.pos.epoch,
            self.pos.step,
            self.pos.global_step + 1
        );
        let x = if self.cfg.advtrain {
            let step = attack_step(
                self.cfg.attack_eps,
                self.cfg.attack_it,
                self.pos.epoch,
                self.cfg.warmup_epochs,
            ) as f32;
            let pgd = PgdConfig {
                eps: self.cfg.attack_eps as f32,
                step,
                steps: self.cfg.attack_it,
                smoothing: self.cfg.smoothing as f32,
                keep_best: true,
                device: self.device,
            };
            let mut rng = step_rng(self.cfg.seed, self.pos.global_step);
            pgd_linf(
                &self.spec,
                &mut self.model,
                &batch.images,
                &batch.labels,
                &pgd,
                &mut rng,
            )
            .map_err(|e| Error::NonFinite(format!("{e} at {where_}")))?
        } else {
            batch.images.clone()
        };
        let targets = self.targets(batch)?;
        let weights: Vec<f32> = batch
            .has_parts
            .iter()
            .map(|&h| {
                if h || !self.cfg.ignore_blank {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let (loss, ce, correct, grads) = {
            let mut ctx = Ctx::new(&mut self.model, GradMode::Full, true);
            if self.cfg.freeze_backbone {
                for p in backbone_prefixes(&self.spec) {
                    ctx.freeze(&p);
                }
            }
            let xv = ctx.tape.input(x.to_device(self.device)?, false);
            let out = self.spec.forward(&mut ctx, xv)?;
            let logits = ctx.tape.value(out.logits).clone();
            let ce_var = crate::ops::cross_entropy_smooth(
                &mut ctx.tape,
                out.logits,
                &batch.labels,
                self.cfg.smoothing as f32,
            )?;
            let ce = ctx.tape.value(ce_var).item();
            let used_targets: Vec<Tensor> = if out.segs.is_empty() {
                Vec::new()
            } else {
                targets[targets.len() - out.segs.len()..].to_vec()
            };
            let loss_var = self.spec.loss(
                &mut ctx,
                &out,
                &batch.labels,
                &used_targets,
                &weights,
                self.cfg.loss(),
            )?;
            let loss = ctx.tape.value(loss_var).item();
            if !loss.is_finite() {
                return Err(Error::NonFinite(format!(
                    "training loss {loss} at {where_}"
                )));
            }
            let mut g = ctx.tape.backward(loss_var)?;
            let mut grads = BTreeMap::new();
            for (name, var) in ctx.used_params() {
                if let Some(t) = g.take(*var) {
                    if !t.all_finite() {
                        return Err(Error::NonFinite(format!(
                            "gradient of '{name}' at {where_}"
                        )));
                    }
                    grads.insert(name.clone(), t);
                }
            }
            (loss, ce, count_correct(&logits, &batch.labels), grads)
        };
        self.opt.step(&mut self.model, &grads, lr)?;
        if let Some(e) = &mut self.ema {
            ema::update(e, &self.model, self.cfg.model_ema_decay)?;
        }
        self.sums.loss += loss as f64;
        self.sums.ce += ce as f64;
        self.sums.correct += correct as u64;
        self.sums.seen += n as u64;
        self.sums.steps += 1;
        self.pos.step += 1;
        self.pos.global_step += 1;
        Ok(StepStats {
            loss,
            lr,
            correct,
            n,
        })
    }

    /// Soft targets at input/8, /16, /32 (highest resolution first).
    fn targets(&self, batch: &Batch) -> Result<Vec<Tensor>> {
        if self.spec.head == Head::None {
            return Ok(Vec::new());
        }
        let maps = self.effective_maps(batch);
        soft_targets(
            &maps,
            batch.len(),
            batch.side(),
            self.cfg.seg_classes,
            self.cfg.smoothing as f32,
            &self.cfg.target_sizes(),
        )
    }

    /// Moves to the start of the next epoch (the caller has logged the epoch's sums).
    pub fn next_epoch(&mut self) {
        self.pos.epoch += 1;
        self.pos.step = 0;
        self.sums = EpochSums::default();
    }

    /// Every model and EMA value is finite.
    pub fn all_finite(&self) -> std::result::Result<(), String> {
        for (which, store) in [("model", Some(&self.model)), ("EMA", self.ema.as_ref())] {
            let Some(store) = store else { continue };
            for (name, e) in store.iter() {
                if !e.tensor.all_finite() {
                    return Err(format!("{which} tensor '{name}'"));
                }
            }
        }
        Ok(())
    }
}

pub fn effective_maps(cfg: &TrainConfig, batch: &Batch) -> Vec<u16> {
    if !cfg.use_object_seg {
        return batch.label_maps.clone();
    }
    let hw = batch.side() * batch.side();
    let mut m = batch.label_maps.clone();
    for (i, chunk) in m.chunks_mut(hw.max(1)).enumerate() {
        let obj = (batch.labels[i] + 1) as u16;
        for v in chunk.iter_mut() {
            if *v > 0 {
                *v = obj;
            }
        }
    }
    m
}

pub fn schedule(cfg: &TrainConfig, updates_per_epoch: usize) -> CosineSchedule {
    CosineSchedule {
        base_lr: cfg.peak_lr(),
        warmup_lr: cfg.warmup_lr,
        min_lr: cfg.min_lr,
        epochs: cfg.epochs,
        warmup_epochs: cfg.warmup_epochs,
        on_updates: cfg.sched_on_updates,
        updates_per_epoch,
    }
}

/// The generator of step `global_step` (PGD random start).
pub fn step_rng(seed: u64, global_step: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0xA77A_C4ED);
    r.set_stream(global_step);
    r
}

pub fn count_correct(logits: &Tensor, labels: &[usize]) -> usize {
    let c = logits.shape().last().copied().unwrap_or(1).max(1);
    logits
        .data()
        .chunks(c)
        .zip(labels)
        .filter(|(row, &l)| argmax(row) == l)
        .count()
}

pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// The starting weights: random (torchvision init rules) or from `init_checkpoint`.
fn init_model(cfg: &TrainConfig, spec: &ModelSpec) -> Result<ParamStore> {
    if cfg.init_checkpoint.is_empty() {
        return spec.init(cfg.seed);
    }
    let path = Path::new(&cfg.init_checkpoint);
    if !path.exists() {
        return Err(Error::flag(
            "--init-checkpoint",
            format!("{}: no such file", path.display()),
        ));
    }
    let state = crate::audit::files::to_state(io::load_state_dict(path, StateDictPick::Auto)?);
    let wrap = |e: Error| Error::Msg(format!("--init-checkpoint {}: {e}", path.display()));
    if cfg.full_pretrain {
        return spec.load(&state).map_err(wrap);
    }
    load_backbone(spec, cfg.seed, &state).map_err(wrap)
}

/// Loads a plain ResNet checkpoint (torchvision names; `fc.*` dropped, as the reference drops
/// keys holding `head` or `fc.`) into the backbone of `spec`; the rest keeps its fresh init.
pub fn load_backbone(
    spec: &ModelSpec,
    seed: u64,
    state: &BTreeMap<String, StateValue>,
) -> Result<ParamStore> {
    let mut store = spec.init(seed)?;
    let prefix = spec.prefix();
    let plain = ModelSpec {
        head: Head::None,
        seg_classes: 0,
        ..*spec
    };
    let wanted = plain.declare();
    let mut problems = Vec::new();
    let mut known = std::collections::HashSet::new();
    for (name, shape, _) in &wanted.entries {
        if name.starts_with("fc.") {
            continue;
        }
        known.insert(name.clone());
        match state.get(name) {
            Some(StateValue::Float(t)) if &t.shape == shape => {
                let e = store.get_mut(&format!("{prefix}{name}"))?;
                let kind = e.kind;
                let mut tmp = ParamStore::new();
                tmp.insert(name, kind, t.clone())?;
                e.tensor = tmp.tensor(name)?.clone();
            }
            Some(StateValue::Float(t)) => problems.push(format!(
                "  mis-shaped: {name}: checkpoint {:?}, model {shape:?}",
                t.shape
            )),
            _ => problems.push(format!("  missing: {name} (expected shape {shape:?})")),
        }
    }
    for p in &wanted.bn_prefixes {
        let name = format!("{p}.num_batches_tracked");
        known.insert(name.clone());
        if let Some(StateValue::Int(v)) = state.get(&name) {
            store.add_counter(&format!("{prefix}{p}"), *v);
        }
    }
    for name in state.keys() {
        if !known.contains(name) && !name.starts_with("fc.") && !name.contains("head") {
            problems.push(format!("  unexpected: {name}"));
        }
    }
    if !problems.is_empty() {
        return Err(Error::Checkpoint(format!(
            "{} problem(s) loading a plain {} backbone:\n{}",
            problems.len(),
            spec.backbone.arch,
            problems.join("\n")
        )));
    }
    Ok(store)
}
