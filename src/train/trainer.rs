//! One adversarial-training step and the state that a checkpoint must hold to continue a run
//! exactly: model, EMA, momentum buffers, position (epoch, step in epoch, global step) and
//! the running sums of the epoch's metrics. Random numbers (the PGD start) are drawn from a
//! generator seeded by `(seed, global step)`, so the RNG state is a function of the position.

use super::config::TrainConfig;
use super::ema;
use super::ghost_bn::{self, BnGroups};
use super::optim::{Sgd, SgdConfig};
use super::pgd::{pgd_linf, PgdConfig};
// Re-exported: the step generator lives with the PGD it seeds, so `ghost_bn` needs no
// arrow back to the trainer.
pub use super::pgd::step_rng;
use super::schedule::{attack_step, CosineSchedule};
use super::source::{soft_targets, Batch};
use crate::autograd::{GradMode, Var};
use crate::device::Device;
use crate::nn::{Ctx, Head, ModelSpec, ParamStore, StateValue};
use crate::tensor::Tensor;
use crate::{Error, Result};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
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

/// What `Trainer::gradients` computes for one update.
#[derive(Clone, Debug)]
pub struct Gradients {
    /// Mean over the micro-batches of the full loss and of the smoothed CE.
    pub loss: f32,
    pub ce: f32,
    /// Correct predictions (clean-model logits on the adversarial images) over the batch.
    pub correct: usize,
    /// Engine layout, by parameter name; on the training device.
    pub grads: BTreeMap<String, Tensor>,
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
    /// Ghost batch norm (`bn_group`): the batch-norm groups this process runs, with their
    /// running-statistics chains (`ghost_bn`). None: one group, the whole batch.
    pub groups: Option<BnGroups>,
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
        let groups = single_process_groups(&cfg, &model, ema.as_ref());
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
            groups,
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

    /// Moves the training state (model, EMA, momentum buffers) to `device` and runs there
    /// from now on. On a GPU the optimiser and EMA updates then run on the device too; a
    /// checkpoint downloads what it writes.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        self.device = device;
        if device == Device::Cpu {
            return Ok(());
        }
        self.model.to_device(device)?;
        if let Some(e) = &mut self.ema {
            e.to_device(device)?;
        }
        if let Some(g) = &mut self.groups {
            g.to_device(device)?;
        }
        self.opt.to_device(device)
    }

    /// One update: the batch (`batch_size` images) is split into `accum_steps` micro-batches
    /// (or, with `bn_group`, into batch-norm groups: `ghost_bn`); each runs PGD (eval mode),
    /// then the full loss on its adversarial images in train mode (BN statistics of that
    /// micro-batch or group) and a backward pass; the gradients of `loss / accum_steps` are
    /// summed (`gradients`). Then one Nesterov SGD step and one EMA update. Advances the
    /// position by one step (= one update); after the last step of an epoch the groups'
    /// running-statistics chains are averaged (timm `distribute_bn`).
    pub fn step(&mut self, batch: &Batch) -> Result<StepStats> {
        let g = self.gradients(batch)?;
        let stats = self.apply_update(&g, batch.len())?;
        if self.pos.step == self.updates_per_epoch {
            self.average_bn_chains(&mut |_| Ok(()))?;
        }
        Ok(stats)
    }

    /// The update part of `step`: SGD with `g`'s gradients at this step's learning rate, the
    /// EMA (weights once; with batch-norm groups each EMA chain from its model chain), the
    /// epoch sums (`n` images) and the position.
    pub fn apply_update(&mut self, g: &Gradients, n: usize) -> Result<StepStats> {
        let lr = self.lr();
        let micro = n / self.cfg.accum_steps.max(1);
        self.opt
            .step(&mut self.model, &g.grads, lr)
            .map_err(|e| self.explain_oom(e, micro))?;
        if let Some(e) = &mut self.ema {
            let decay = self.cfg.model_ema_decay;
            match &mut self.groups {
                None => ema::update(e, &self.model, decay)?,
                Some(gr) => {
                    ghost_bn::put_chain(&mut self.model, &gr.model[0])?;
                    ghost_bn::put_chain(e, &gr.ema[0])?;
                    ema::update(e, &self.model, decay)?;
                    gr.ema[0] = ghost_bn::take_chain(e);
                    for l in 1..gr.local() {
                        let (m, em) = (&gr.model[l], &mut gr.ema[l]);
                        ghost_bn::ema_update_chain(em, m, decay)?;
                    }
                }
            }
        }
        self.sums.loss += g.loss as f64;
        self.sums.ce += g.ce as f64;
        self.sums.correct += g.correct as u64;
        self.sums.seen += n as u64;
        self.sums.steps += 1;
        self.pos.step += 1;
        self.pos.global_step += 1;
        Ok(StepStats {
            loss: g.loss,
            lr,
            correct: g.correct,
            n,
        })
    }

    /// End of an epoch with batch-norm groups: every model and EMA chain, and the running
    /// statistics of the model and EMA stores, become the average over all groups. `reduce`
    /// adds the per-process sums over the other processes in place (an all-reduce; a no-op
    /// for one process). Without groups, nothing to do.
    pub fn average_bn_chains(
        &mut self,
        reduce: &mut dyn FnMut(&mut Vec<f32>) -> Result<()>,
    ) -> Result<()> {
        let Some(gr) = &mut self.groups else {
            return Ok(());
        };
        let mut sums = gr.sum_local();
        reduce(&mut sums)?;
        gr.set_average(&sums, &mut self.model, self.ema.as_mut())
    }

    /// The gradient part of `step` (PGD, forward, backward over the `accum_steps`
    /// micro-batches; BN running statistics advance, the weights do not): the gradients of
    /// the mean over micro-batches of the loss, checked finite.
    pub fn gradients(&mut self, batch: &Batch) -> Result<Gradients> {
        self.gradients_into(batch, None)
    }

    /// `gradients`, with the last backward pass of the update streamed: each parameter's
    /// final gradient (summed over the micro-batches or groups, scaled as in `gradients`) goes
    /// to `sink` as soon as the backward pass has finished it (`Tape::backward_hooked`), so a
    /// data-parallel run can start summing it over the ranks while backward continues
    /// (`dist::train`). Earlier micro-batches or groups accumulate locally, as DDP's
    /// `no_sync`. Gradients are handed over in the order they become final (fixed by the
    /// graph); those the last pass did not touch follow in name order. The returned
    /// `Gradients` then holds no gradients, and their finiteness is the sink's to check.
    pub fn gradients_into(
        &mut self,
        batch: &Batch,
        mut sink: Option<GradSink<'_>>,
    ) -> Result<Gradients> {
        let n = batch.len();
        if n == 0 {
            return Err(Error::Msg("empty batch".into()));
        }
        if let Some(mut gr) = self.groups.take() {
            let r = self.group_gradients(batch, &mut gr, sink);
            self.groups = Some(gr);
            return r;
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
        let k = self.cfg.accum_steps.max(1);
        if n % k != 0 {
            return Err(Error::flag(
                "--accum-steps",
                format!("a batch of {n} images does not split into {k} equal micro-batches"),
            ));
        }
        let micro = n / k;
        if self.device != Device::Cpu {
            crate::cuda::set_batch_hint(micro);
        }
        let where_ = format!(
            "epoch {} step {} (global step {})",
            self.pos.epoch,
            self.pos.step,
            self.pos.global_step + 1
        );
        // One generator per update, drawn micro-batch after micro-batch (with k = 1 exactly
        // the draws of a single-batch step).
        let mut rng = step_rng(self.cfg.seed, self.pos.global_step);
        let inv_k = 1.0 / k as f32;
        let (mut loss_sum, mut ce_sum, mut correct) = (0f64, 0f64, 0usize);
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        for j in 0..k {
            let mb;
            let part = if k == 1 {
                batch
            } else {
                mb = batch.slice(j * micro, (j + 1) * micro)?;
                &mb
            };
            let last: Option<GradSink<'_>> = match &mut sink {
                Some(f) if j + 1 == k => Some(&mut **f),
                _ => None,
            };
            let streamed = last.is_some();
            let mut combine = last.map(|f| accumulate_then(&mut grads, f, k, inv_k));
            let ready = combine.as_mut().map(|c| c as GradSink<'_>);
            let r = self.micro_step(part, &mut rng, &where_, ready);
            // The streaming sink borrows `grads` and `sink`: release them now.
            drop(combine);
            let (loss, ce, c, g) = r.map_err(|e| self.explain_oom(e, micro))?;
            loss_sum += loss as f64;
            ce_sum += ce as f64;
            correct += c;
            if streamed {
                if let Some(f) = &mut sink {
                    flush(&mut grads, &mut **f)?;
                }
                continue;
            }
            if k == 1 {
                grads = g;
                continue;
            }
            for (name, t) in g {
                let acc = match grads.remove(&name) {
                    None => scaled(&t, inv_k)?,
                    Some(a) => add_scaled(a, &t, inv_k)?,
                };
                grads.insert(name, acc);
            }
        }
        for (name, t) in &grads {
            if !finite(t)? {
                return Err(Error::NonFinite(format!(
                    "gradient of '{name}' at {where_}"
                )));
            }
        }
        // The update's loss is the mean of the micro-batch losses (k = 1: the loss itself).
        Ok(Gradients {
            loss: (loss_sum / k as f64) as f32,
            ce: (ce_sum / k as f64) as f32,
            correct,
            grads,
        })
    }

    /// `gradients` with batch-norm groups (`ghost_bn`): each of this process's groups is one
    /// pass with its own model chain and PGD generator; the gradients are summed group after
    /// group, each scaled by 1 / (groups in the whole batch), so that adding the sums of all
    /// processes gives DDP's average. The BN counters advance once (as on one rank).
    fn group_gradients(
        &mut self,
        batch: &Batch,
        gr: &mut BnGroups,
        mut sink: Option<GradSink<'_>>,
    ) -> Result<Gradients> {
        let (b, local) = (gr.per_group, gr.local());
        if batch.len() != b * local {
            return Err(Error::flag(
                "--bn-group",
                format!(
                    "a batch of {} images for {local} batch-norm group(s) of {b}",
                    batch.len()
                ),
            ));
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
        if self.device != Device::Cpu {
            crate::cuda::set_batch_hint(b);
        }
        gr.start_step();
        let inv = 1.0 / gr.total as f32;
        let (mut loss_sum, mut ce_sum, mut correct) = (0f64, 0f64, 0usize);
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut counters = None;
        for l in 0..local {
            let g_index = gr.first + l;
            let where_ = format!(
                "epoch {} step {} (global step {}), batch-norm group {g_index}",
                self.pos.epoch,
                self.pos.step,
                self.pos.global_step + 1
            );
            let part = if local == 1 {
                batch.clone()
            } else {
                batch.slice(l * b, (l + 1) * b)?
            };
            ghost_bn::put_chain(&mut self.model, &gr.model[l])?;
            let mut rng = ghost_bn::group_rng(self.cfg.seed, self.pos.global_step, g_index);
            let last: Option<GradSink<'_>> = match &mut sink {
                Some(f) if l + 1 == local => Some(&mut **f),
                _ => None,
            };
            let streamed = last.is_some();
            let mut combine = last.map(|f| accumulate_then(&mut grads, f, gr.total, inv));
            let ready = combine.as_mut().map(|c| c as GradSink<'_>);
            let r = self.micro_step(&part, &mut rng, &where_, ready);
            drop(combine);
            let (loss, ce, c, g) = r.map_err(|e| self.explain_oom(e, b))?;
            if streamed {
                if let Some(f) = &mut sink {
                    flush(&mut grads, &mut **f)?;
                }
            }
            gr.model[l] = ghost_bn::take_chain(&self.model);
            if l == 0 {
                counters = Some(self.model.counters().clone());
            }
            loss_sum += loss as f64;
            ce_sum += ce as f64;
            correct += c;
            for (name, t) in g {
                let acc = match grads.remove(&name) {
                    None if gr.total == 1 => t,
                    None => scaled(&t, inv)?,
                    Some(a) => add_scaled(a, &t, inv)?,
                };
                grads.insert(name, acc);
            }
        }
        if let Some(c) = counters {
            for (p, v) in c {
                self.model.add_counter(&p, v);
            }
        }
        ghost_bn::put_chain(&mut self.model, &gr.model[0])?;
        for (name, t) in &grads {
            if !finite(t)? {
                return Err(Error::NonFinite(format!(
                    "gradient of '{name}' at epoch {} step {} (global step {})",
                    self.pos.epoch,
                    self.pos.step,
                    self.pos.global_step + 1
                )));
            }
        }
        Ok(Gradients {
            loss: (loss_sum / local as f64) as f32,
            ce: (ce_sum / local as f64) as f32,
            correct,
            grads,
        })
    }

    /// PGD, forward and backward of one micro-batch: (loss, ce, correct, parameter gradients
    /// of the unscaled loss).
    fn micro_step(
        &mut self,
        batch: &Batch,
        rng: &mut ChaCha8Rng,
        where_: &str,
        ready: Option<GradSink<'_>>,
    ) -> Result<(f32, f32, usize, BTreeMap<String, Tensor>)> {
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
            pgd_linf(
                &self.spec,
                &mut self.model,
                &batch.images,
                &batch.labels,
                &pgd,
                rng,
            )
            .map_err(|e| match e {
                Error::NonFinite(m) => Error::NonFinite(format!("{m} at {where_}")),
                other => other,
            })?
        } else {
            batch.images.clone()
        };
        let targets = self.targets(batch)?;
        let weights = seg_weights(&self.cfg, batch);
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
        let mut grads = BTreeMap::new();
        if let Some(f) = ready {
            // Streamed: each parameter's gradient leaves as soon as it is final.
            let names: HashMap<Var, &String> =
                ctx.used_params().iter().map(|(n, v)| (*v, n)).collect();
            ctx.tape
                .backward_hooked(loss_var, &mut |v, t, left| match names.get(&v) {
                    Some(name) => f(name, t, left),
                    None => Ok(()),
                })?;
            return Ok((loss, ce, count_correct(&logits, &batch.labels), grads));
        }
        let mut g = ctx.tape.backward(loss_var)?;
        for (name, var) in ctx.used_params() {
            if let Some(t) = g.take(*var) {
                grads.insert(name.clone(), t);
            }
        }
        Ok((loss, ce, count_correct(&logits, &batch.labels), grads))
    }

    /// A GPU out-of-memory error, with the micro-batch that hit it and what to try.
    fn explain_oom(&self, e: Error, micro: usize) -> Error {
        match e {
            Error::Device { device, msg } if msg.contains("out of memory") => {
                let k = self.cfg.accum_steps.max(1);
                let hint = if micro > 1 {
                    let k2 = (k + 1..=self.cfg.batch_size)
                        .find(|d| self.cfg.batch_size % d == 0)
                        .unwrap_or(self.cfg.batch_size);
                    format!(
                        "; try --accum-steps {k2} (micro-batch {} images, same global batch \
                         {} and learning rate)",
                        self.cfg.batch_size / k2,
                        self.cfg.batch_size
                    )
                } else {
                    String::new()
                };
                Error::Device {
                    device,
                    msg: format!(
                        "{msg} [training micro-batch of {micro} images = --batch-size {} / \
                         --accum-steps {k}{hint}]",
                        self.cfg.batch_size
                    ),
                }
            }
            other => other,
        }
    }

    /// Soft targets at the sizes the heads use (`TrainConfig::target_sizes`: SV3 input/8, /16,
    /// /32; SV2 /16, /32; SV1 and two-stage /32 directly), highest resolution first: nearest
    /// resize to the first, bilinear to the others, as the reference. For a CUDA run they are
    /// built on the GPU from the u16 label maps (`cuda::ops::mask_targets`, the same rule),
    /// so only the maps cross the bus (2 bytes per pixel instead of ~13.6 MB of f32 targets
    /// per image at S = 3,311 and 224 px).
    pub fn targets(&self, batch: &Batch) -> Result<Vec<Tensor>> {
        if self.spec.head == Head::None {
            return Ok(Vec::new());
        }
        let maps = self.effective_maps(batch);
        let sizes = self.cfg.target_sizes();
        if let Device::Cuda(ordinal) = self.device {
            let gpu = crate::cuda::gpu(ordinal)?;
            return crate::cuda::ops::mask_targets(
                &gpu,
                &maps,
                batch.len(),
                batch.side(),
                batch.side(),
                self.cfg.seg_classes,
                sizes[0],
                &sizes[1..],
                self.cfg.smoothing as f32,
                crate::cuda::DType::F32,
            );
        }
        soft_targets(
            &maps,
            batch.len(),
            batch.side(),
            self.cfg.seg_classes,
            self.cfg.smoothing as f32,
            &sizes,
        )
    }

    /// Moves to the start of the next epoch (the caller has logged the epoch's sums).
    pub fn next_epoch(&mut self) {
        self.pos.epoch += 1;
        self.pos.step = 0;
        self.sums = EpochSums::default();
    }

    /// The model and EMA as a checkpoint stores them: with batch-norm groups, their running
    /// statistics are the average of the chains (what the epoch's end would make them).
    pub fn stores_for_save(
        &self,
    ) -> Result<(
        std::borrow::Cow<'_, ParamStore>,
        Option<std::borrow::Cow<'_, ParamStore>>,
    )> {
        use std::borrow::Cow;
        let Some(gr) = &self.groups else {
            return Ok((
                Cow::Borrowed(&self.model),
                self.ema.as_ref().map(Cow::Borrowed),
            ));
        };
        let (m, e) = gr.local_average()?;
        let mut model = self.model.clone();
        ghost_bn::put_chain(&mut model, &m)?;
        let ema = match (&self.ema, e) {
            (Some(store), Some(c)) => {
                let mut s = store.clone();
                ghost_bn::put_chain(&mut s, &c)?;
                Some(Cow::Owned(s))
            }
            (Some(store), None) => Some(Cow::Borrowed(store)),
            (None, _) => None,
        };
        Ok((Cow::Owned(model), ema))
    }

    /// Lays the batch-norm groups out as `total` groups of which this process runs
    /// `first .. first + local` (one process: `0, total, total`). Keeping the number of groups
    /// keeps every chain (exact); changing it (another `bn_group`, or another world size with
    /// `bn_group = 0`) restarts every chain from the average of the old ones, and the returned
    /// note says the run is then not bit-exact.
    pub fn set_group_layout(
        &mut self,
        total: usize,
        first: usize,
        local: usize,
    ) -> Result<Option<String>> {
        let old_total = self.groups.as_ref().map_or(1, |g| g.total);
        if first + local > total || local == 0 {
            return Err(Error::Msg(format!(
                "batch-norm groups {first}..{} of {total}",
                first + local
            )));
        }
        if old_total == total {
            if let Some(g) = &mut self.groups {
                if g.first != 0 || g.local() != total {
                    return Err(Error::Msg(
                        "batch-norm groups can be laid out only once, from all of them".into(),
                    ));
                }
                g.model = g.model.drain(first..first + local).collect();
                if !g.ema.is_empty() {
                    g.ema = g.ema.drain(first..first + local).collect();
                }
                g.first = first;
            }
            return Ok(None);
        }
        if let Some(g) = self.groups.take() {
            let (m, e) = g.local_average()?;
            ghost_bn::put_chain(&mut self.model, &m)?;
            if let (Some(store), Some(c)) = (&mut self.ema, e) {
                ghost_bn::put_chain(store, &c)?;
            }
        }
        if total > 1 {
            let mut g = BnGroups::new(
                total,
                self.cfg.batch_size / total,
                first,
                local,
                self.cfg.broadcast_buffers,
                &self.model,
                self.ema.as_ref(),
            );
            g.to_device(self.device)?;
            self.groups = Some(g);
        }
        Ok(Some(format!(
            "batch-norm groups changed from {old_total} to {total}: every running-statistics \
             chain restarts from the average of the saved ones, and the images of the rest of \
             the epoch are assigned to the new groups; the continued run is not bit-exact"
        )))
    }

    /// Every model and EMA value (batch-norm chains included) is finite.
    pub fn all_finite(&self) -> std::result::Result<(), String> {
        if let Some(what) = self.groups.as_ref().and_then(BnGroups::first_non_finite) {
            return Err(what);
        }
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

/// The batch-norm groups of a one-process run: `batch_size / bn_group` of them when that is
/// more than one, each chain starting from the store's running statistics.
pub fn single_process_groups(
    cfg: &TrainConfig,
    model: &ParamStore,
    ema: Option<&ParamStore>,
) -> Option<BnGroups> {
    let g = cfg.bn_groups(1);
    (g > 1).then(|| {
        BnGroups::new(
            g,
            cfg.batch_size / g,
            0,
            g,
            cfg.broadcast_buffers,
            model,
            ema,
        )
    })
}

/// Where `Trainer::gradients_into` streams the final gradients: (parameter name, gradient,
/// backward rules still to run when it became final: 0 once the backward pass is over).
pub type GradSink<'a> = &'a mut dyn FnMut(&str, Tensor, usize) -> Result<()>;

/// The sink of a step's last backward pass: each streamed gradient is scaled by `inv` (not
/// when the step has one pass, `parts == 1`) and added to what the earlier passes accumulated
/// in `acc`, exactly as the unstreamed sum does, then handed on to `f`.
fn accumulate_then<'a>(
    acc: &'a mut BTreeMap<String, Tensor>,
    f: GradSink<'a>,
    parts: usize,
    inv: f32,
) -> impl FnMut(&str, Tensor, usize) -> Result<()> + 'a {
    move |name: &str, t: Tensor, left: usize| {
        let g = match acc.remove(name) {
            None if parts == 1 => t,
            None => scaled(&t, inv)?,
            Some(a) => add_scaled(a, &t, inv)?,
        };
        f(name, g, left)
    }
}

/// Hands the accumulated gradients the last backward pass did not touch to `sink`, in name
/// order.
fn flush(grads: &mut BTreeMap<String, Tensor>, sink: GradSink<'_>) -> Result<()> {
    for (name, t) in std::mem::take(grads) {
        sink(&name, t, 0)?;
    }
    Ok(())
}

/// `t * k` (on the device of `t`; f32).
fn scaled(t: &Tensor, k: f32) -> Result<Tensor> {
    if t.is_cuda() {
        let t32 = crate::cuda::ops::cast(t, crate::cuda::DType::F32)?;
        return crate::cuda::ops::scale(&t32, k);
    }
    Ok(t.map(|v| v * k))
}

/// `acc + t * k` (on the device of `acc`; f32).
fn add_scaled(mut acc: Tensor, t: &Tensor, k: f32) -> Result<Tensor> {
    if acc.is_cuda() {
        return crate::cuda::ops::axpby(&acc, t, 1.0, k);
    }
    let td = t.data();
    for (a, b) in acc.data_mut().iter_mut().zip(td) {
        *a += *b * k;
    }
    Ok(acc)
}

/// Every value of `t` is finite. A GPU tensor is checked by one reduction on the device (the
/// sum is NaN/Inf when any value is): one scalar crosses the bus, not the tensor.
pub(crate) fn finite(t: &Tensor) -> Result<bool> {
    if t.is_cuda() {
        return Ok(crate::cuda::ops::sum_all(t, 1.0)?.is_finite());
    }
    Ok(t.all_finite())
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

/// Per-image weights of the segmentation loss, as the reference's loader sets them: 0 for an
/// image without a usable, non-blank map when `ignore_blank` or `use_whether_pseudo` is on;
/// `pseudo_weight` for a pseudo-labelled image (flag 1) with `use_whether_pseudo`; else 1.
pub fn seg_weights(cfg: &TrainConfig, batch: &Batch) -> Vec<f32> {
    let blank_is_ignored = cfg.ignore_blank || cfg.use_whether_pseudo;
    (0..batch.len())
        .map(|i| {
            if !batch.has_parts[i] && blank_is_ignored {
                0.0
            } else if batch.has_parts[i] && cfg.use_whether_pseudo && batch.is_pseudo(i) {
                cfg.pseudo_weight as f32
            } else {
                1.0
            }
        })
        .collect()
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

/// The starting weights: from scratch (the authors' rules, `nn::init`) or from `init_checkpoint`
/// (any kind `init::read` accepts; the kind found is printed on stderr).
fn init_model(cfg: &TrainConfig, spec: &ModelSpec) -> Result<ParamStore> {
    if cfg.init_checkpoint.is_empty() {
        return spec.init_from_scratch(cfg.seed);
    }
    let path = Path::new(&cfg.init_checkpoint);
    let weights = super::init::read(path)?;
    let found = weights.describe(path);
    eprintln!("{found}");
    let state = super::init::check_expected(weights, cfg, spec, path)?;
    let wrap = |e: Error| {
        Error::Msg(format!(
            "--init-checkpoint {found}\ncannot initialise {}{}: {e}",
            if cfg.full_pretrain {
                "the whole model "
            } else {
                "the backbone of "
            },
            spec.describe()
        ))
    };
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
