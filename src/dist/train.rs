//! The authors' DDP semantics on top of `Trainer` (docs/distributed.md): what a rank of a
//! data-parallel run does besides what a one-process run does. `Dist::single()` is the no-op
//! handle of a one-process run: every method then does exactly what the one-process code did.
//!
//! With `W` ranks (world size > 1):
//! - per-rank batch = `batch_size / W` (an error if it does not divide); batch norm per rank
//!   (no SyncBN), `bn_group` within each rank's batch (0: the rank's whole batch), so the run
//!   has `G = cfg.bn_groups(W)` groups and rank `r` runs groups `r*G/W ..`; each group is what a
//!   `ghost_bn` group is (its own running-statistics chains, PGD generator, best iterate);
//! - with `broadcast_buffers`, rank 0's chain 0 is broadcast at the start of every step (DDP
//!   copies rank 0's buffers before each forward pass);
//! - gradients (already scaled by `1/G` per group) are summed by all-reduce in buckets of
//!   `BUCKET_BYTES`, filled in the order the last backward pass of the step finishes them
//!   (`Tape::backward_hooked`; earlier micro-batches and groups accumulate locally, DDP's
//!   `no_sync`) and handed to a communication worker thread while backward continues (NCCL:
//!   on a stream of its own); every bucket is waited for before every rank applies the same
//!   SGD and EMA update. `ddp_overlap = false` sums them after the backward pass instead, in
//!   name order (same sums, bit for bit, with the host communicators);
//! - after the last step of an epoch the running statistics of model and EMA are summed over
//!   all groups of all ranks and divided by `G` (timm `distribute_bn`, "reduce");
//! - data: `sampler::GroupedSource` with this rank's groups (DistributedSampler's padded,
//!   strided split of the per-epoch seeded permutation);
//! - evaluation: each rank scores every `W`-th image; counts are all-reduced;
//! - checkpoints: every rank's chains are gathered and rank 0 alone writes.

use super::{Bucket, Communicator};
use crate::tensor::Tensor;
use crate::train::eval::EvalResult;
use crate::train::ghost_bn::{BnGroups, Chain};
use crate::train::part_metrics::PartScores;
use crate::train::sampler::{GroupLayout, GroupedSource};
use crate::train::source::{Batch, BatchSource};
use crate::train::trainer::{StepStats, Trainer};
use crate::train::TrainConfig;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{mpsc, Mutex};
use std::time::Instant;

/// Gradient bucket size: PyTorch DDP's default `bucket_cap_mb = 25`.
pub const BUCKET_BYTES: usize = 25 << 20;

/// This process's place in a data-parallel run (a no-op for one process).
pub struct Dist {
    comm: Option<Box<dyn Communicator>>,
    /// The gradient bucket cap in bytes (`BUCKET_BYTES` unless set).
    bucket_bytes: usize,
    /// How the last step's buckets overlapped its backward pass.
    overlap: Mutex<OverlapStats>,
}

/// How the gradient buckets of the last overlapped step went (empty without overlap).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverlapStats {
    /// For each bucket, in the order it was handed to the communication worker: the backward
    /// rules still to run at that moment (0: handed over after the backward pass).
    pub nodes_left: Vec<usize>,
    /// Gradients per bucket, in the same order.
    pub tensors: Vec<usize>,
    /// Buckets whose reduction the worker had started before the backward pass returned (a
    /// timing, for logs; `nodes_left` is the deterministic record).
    pub started_during_backward: usize,
}

/// How the batch-norm groups of a run are spread over the ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RankLayout {
    /// Groups in the global batch.
    pub total: usize,
    /// Images per group.
    pub per_group: usize,
    /// This rank's first group and its number of groups.
    pub first: usize,
    pub local: usize,
    /// Images per rank and step.
    pub per_rank_batch: usize,
}

impl Default for Dist {
    fn default() -> Self {
        Dist::single()
    }
}

impl Dist {
    /// One process: world size 1, nothing to communicate.
    pub fn single() -> Dist {
        Dist {
            comm: None,
            bucket_bytes: BUCKET_BYTES,
            overlap: Mutex::default(),
        }
    }

    /// A rank of the group `comm` belongs to. A communicator of world size 1 still runs the
    /// distributed step (its collectives are identities): that is what the NCCL overhead
    /// benchmark measures.
    pub fn new(comm: Box<dyn Communicator>) -> Dist {
        Dist {
            comm: Some(comm),
            ..Dist::single()
        }
    }

    /// Another gradient bucket cap (bytes; at least one gradient goes in every bucket). The
    /// sums do not depend on it (each element is summed over the ranks on its own).
    pub fn with_bucket_bytes(mut self, bytes: usize) -> Dist {
        self.bucket_bytes = bytes;
        self
    }

    /// How the buckets of the last step overlapped its backward pass.
    pub fn last_overlap(&self) -> OverlapStats {
        self.overlap
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn rank(&self) -> usize {
        self.comm.as_ref().map_or(0, |c| c.rank())
    }
    pub fn world(&self) -> usize {
        self.comm.as_ref().map_or(1, |c| c.world())
    }
    /// Rank 0 (or the only process): the one that writes files.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }
    pub fn comm(&self) -> Option<&dyn Communicator> {
        self.comm.as_deref()
    }

    /// "rank 0 of 4 (threads)" or "one process".
    pub fn describe(&self) -> String {
        match &self.comm {
            None => "one process".into(),
            Some(c) => format!("rank {} of {} ({})", c.rank(), c.world(), c.backend()),
        }
    }

    /// The group layout of this rank, with the configuration's checks for a data-parallel run.
    pub fn layout(&self, cfg: &TrainConfig) -> Result<RankLayout> {
        let (w, r) = (self.world(), self.rank());
        if w == 1 {
            let total = cfg.bn_groups(1);
            return Ok(RankLayout {
                total,
                per_group: cfg.batch_size / total.max(1),
                first: 0,
                local: total,
                per_rank_batch: cfg.batch_size,
            });
        }
        if cfg.batch_size % w != 0 {
            return Err(Error::flag(
                "--batch-size",
                format!(
                    "the global batch of {} images does not split over {w} ranks (per-rank \
                     batch = batch_size / WORLD_SIZE must be a whole number)",
                    cfg.batch_size
                ),
            ));
        }
        let per_rank = cfg.batch_size / w;
        if cfg.accum_steps != 1 {
            return Err(Error::flag(
                "--accum-steps",
                format!(
                    "{} with {w} ranks: a data-parallel rank runs its batch of {per_rank} images \
                     as batch-norm group passes (bn_group); set accum_steps = 1",
                    cfg.accum_steps
                ),
            ));
        }
        if cfg.bn_group > 0 && per_rank % cfg.bn_group != 0 {
            return Err(Error::flag(
                "--bn-group",
                format!(
                    "{} does not divide the per-rank batch of {per_rank} images (batch_size {} \
                     / {w} ranks)",
                    cfg.bn_group, cfg.batch_size
                ),
            ));
        }
        let total = cfg.bn_groups(w);
        let local = total / w;
        Ok(RankLayout {
            total,
            per_group: cfg.batch_size / total,
            first: r * local,
            local,
            per_rank_batch: per_rank,
        })
    }

    /// The training order of this rank: its groups of the DistributedSampler split (None: the
    /// plain order of a one-process run without groups).
    pub fn train_source<'a>(
        &self,
        cfg: &TrainConfig,
        train: &'a dyn BatchSource,
    ) -> Result<Option<GroupedSource<'a>>> {
        if self.world() == 1 {
            return Ok(crate::train::sampler::single_process(cfg, train));
        }
        let l = self.layout(cfg)?;
        Ok(Some(GroupedSource {
            inner: train,
            layout: GroupLayout {
                groups: l.total,
                per_group: l.per_group,
            },
            first: l.first,
            local: l.local,
        }))
    }

    /// Lays out the trainer's batch-norm groups for this rank (`Trainer::set_group_layout`).
    /// A fresh run gets no note (every chain starts from the model's statistics anyway); a
    /// resumed one says when it is not bit-exact: another number of groups, or another world
    /// size (`saved_world`: the reduction order of the sums changes).
    pub fn lay_out_groups(
        &self,
        t: &mut Trainer,
        resumed: bool,
        saved_world: usize,
    ) -> Result<Option<String>> {
        let l = self.layout(&t.cfg)?;
        if self.world() == 1 && !resumed {
            return Ok(None);
        }
        let note = t.set_group_layout(l.total, l.first, l.local)?;
        if !resumed {
            return Ok(None);
        }
        let w = self.world();
        if saved_world != w {
            let world_note = format!(
                "resumed on {w} rank(s), the checkpoint was written by a run of {saved_world}: \
                 the global batch ({} images) and the learning rate are kept, the per-rank batch \
                 is now {}; the continued run is not bit-exact (the sums over ranks are added \
                 in another order{})",
                t.cfg.batch_size,
                l.per_rank_batch,
                if note.is_some() {
                    ", and the batch-norm groups change"
                } else {
                    ""
                }
            );
            return Ok(Some(match note {
                Some(n) => format!("{world_note}; {n}"),
                None => world_note,
            }));
        }
        Ok(note)
    }

    /// One training step of this rank (`Trainer::step` for one process).
    pub fn step(&self, t: &mut Trainer, batch: &Batch) -> Result<StepStats> {
        let Some(comm) = self.comm.as_deref() else {
            return t.step(batch);
        };
        let world = comm.world();
        if let Some(gr) = t.groups.as_mut() {
            if gr.broadcast && world > 1 {
                let mut flat = flatten(&gr.model[0]);
                comm.broadcast_f32(&mut flat, 0)?;
                if comm.rank() != 0 {
                    gr.model[0] = unflatten(&gr.model[0], &flat)?;
                }
            }
        }
        // World size 1 on the host has nothing to sum (NCCL still runs its collectives: the
        // overhead benchmark measures them).
        let communicates = world > 1 || comm.backend() == "nccl";
        let mut g = if t.cfg.ddp_overlap && communicates {
            let (g, stats) = overlapped_gradients(comm, t, batch, self.bucket_bytes)?;
            *self.overlap.lock().unwrap_or_else(|p| p.into_inner()) = stats;
            g
        } else {
            let mut g = t.gradients(batch)?;
            reduce_in_buckets(comm, &mut g.grads, self.bucket_bytes)?;
            g
        };
        let (local, total) = t
            .groups
            .as_ref()
            .map_or((1, world), |gr| (gr.local(), gr.total));
        // Per-rank losses are means over the rank's groups: the global mean is their sum
        // weighted by the groups, over all groups.
        let mut s = [
            g.loss as f64 * local as f64,
            g.ce as f64 * local as f64,
            g.correct as f64,
        ];
        comm.all_reduce_sum_f64(&mut s)?;
        g.loss = (s[0] / total as f64) as f32;
        g.ce = (s[1] / total as f64) as f32;
        g.correct = s[2] as usize;
        let stats = t.apply_update(&g, batch.len() * world)?;
        if t.pos.step == t.updates_per_epoch {
            t.average_bn_chains(&mut |sums| comm.all_reduce_sum_f32(sums))?;
        }
        Ok(stats)
    }

    /// Every rank's batch-norm chains, as the groups of one process running all of them: a
    /// collective (every rank calls it); Some on rank 0 only. None for one process.
    pub fn gather_groups(&self, t: &Trainer) -> Result<Option<BnGroups>> {
        let (Some(comm), Some(gr)) = (self.comm.as_deref(), t.groups.as_ref()) else {
            return Ok(None);
        };
        let mut mine = Vec::new();
        for c in gr.model.iter().chain(gr.ema.iter()) {
            mine.extend(flatten(c));
        }
        let all = comm.all_gather_f32(&mine)?;
        if comm.rank() != 0 {
            return Ok(None);
        }
        let per_chain = flatten(&gr.model[0]).len();
        let per_ema = gr.ema.first().map_or(0, |c| flatten(c).len());
        let (local, w) = (gr.local(), comm.world());
        let chunk = mine.len();
        let mut model = Vec::with_capacity(local * w);
        let mut ema = Vec::new();
        for r in 0..w {
            let part = &all[r * chunk..(r + 1) * chunk];
            for l in 0..local {
                let v = &part[l * per_chain..(l + 1) * per_chain];
                model.push(unflatten_host(&gr.model[0], v)?);
            }
            let off = local * per_chain;
            for l in 0..gr.ema.len() {
                let v = &part[off + l * per_ema..off + (l + 1) * per_ema];
                ema.push(unflatten_host(&gr.ema[0], v)?);
            }
        }
        Ok(Some(BnGroups {
            total: gr.total,
            per_group: gr.per_group,
            first: 0,
            model,
            ema,
            broadcast: gr.broadcast,
        }))
    }

    /// Runs `write` (a checkpoint save) on rank 0 with every rank's chains in the trainer, so
    /// the file holds the whole run's state; the other ranks only take part in the gather.
    pub fn write_on_root(
        &self,
        t: &mut Trainer,
        write: impl FnOnce(&Trainer) -> Result<()>,
    ) -> Result<()> {
        if self.comm.is_none() {
            return write(t);
        }
        let full = self.gather_groups(t)?;
        if !self.is_root() {
            return Ok(());
        }
        let local = match full {
            Some(f) => t.groups.replace(f),
            None => t.groups.take(),
        };
        let r = write(t);
        t.groups = local;
        r
    }

    /// Evaluation sharded over the ranks: rank `r` scores images `r, r + W, ..` of the first
    /// `eval_images`; the counts are all-reduced, so every rank returns the same result. The
    /// PGD random starts are drawn per batch of each shard, so the numbers are not those of a
    /// one-process evaluation bit for bit (the counts are exact sums over the shards).
    pub fn evaluate(
        &self,
        t: &Trainer,
        src: &dyn BatchSource,
        batch_size: usize,
        eps: &[f32],
    ) -> Result<EvalResult> {
        let Some(comm) = self.comm.as_deref().filter(|c| c.world() > 1) else {
            return crate::train::run::eval_trainer(t, src, batch_size, eps);
        };
        let total = match t.cfg.eval_images {
            0 => src.len(),
            m => src.len().min(m),
        };
        let shard = Shard {
            inner: src,
            rank: comm.rank(),
            world: comm.world(),
            total,
        };
        let r = crate::train::run::eval_trainer(t, &shard, batch_size, eps)?;
        let n = r.images as f64;
        let mut v = vec![n, (r.clean_acc * n).round()];
        v.extend(r.pgd_acc.iter().map(|(_, a)| (a * n).round()));
        let parts = r
            .parts
            .clone()
            .unwrap_or_else(|| PartScores::new(t.spec.seg_classes.max(1)));
        let classes = parts.inter.len();
        v.extend(parts.inter.iter().map(|&x| x as f64));
        v.extend(parts.union.iter().map(|&x| x as f64));
        v.push(parts.correct as f64);
        v.push(parts.pixels as f64);
        comm.all_reduce_sum_f64(&mut v)?;
        let images = v[0] as usize;
        let frac = |k: f64| k / (images.max(1) as f64);
        let k = r.pgd_acc.len();
        let mut sum = PartScores::new(classes);
        let base = 2 + k;
        for c in 0..classes {
            sum.inter[c] = v[base + c] as u64;
            sum.union[c] = v[base + classes + c] as u64;
        }
        sum.correct = v[base + 2 * classes] as u64;
        sum.pixels = v[base + 2 * classes + 1] as u64;
        Ok(EvalResult {
            images,
            clean_acc: frac(v[1]),
            pgd_acc: r
                .pgd_acc
                .iter()
                .enumerate()
                .map(|(i, (e, _))| (*e, frac(v[2 + i])))
                .collect(),
            pgd_steps: r.pgd_steps,
            pixel_acc: sum.pixel_acc(),
            miou: sum.miou(),
            parts: Some(sum),
        })
    }

    /// Waits for every rank (a no-op for one process).
    pub fn barrier(&self) -> Result<()> {
        match &self.comm {
            Some(c) => c.barrier(),
            None => Ok(()),
        }
    }
}

/// Sums the gradients over the ranks in buckets of at most `BUCKET_BYTES` (a larger tensor is
/// a bucket of its own), in name order, the same on every rank.
pub fn reduce_gradients(
    comm: &dyn Communicator,
    grads: &mut BTreeMap<String, Tensor>,
) -> Result<()> {
    reduce_in_buckets(comm, grads, BUCKET_BYTES)
}

/// `reduce_gradients` with buckets of at most `cap` bytes.
fn reduce_in_buckets(
    comm: &dyn Communicator,
    grads: &mut BTreeMap<String, Tensor>,
    cap: usize,
) -> Result<()> {
    if comm.world() == 1 && comm.backend() != "nccl" {
        return Ok(());
    }
    let names: Vec<String> = grads.keys().cloned().collect();
    let mut i = 0;
    while i < names.len() {
        let mut bucket_names = Vec::new();
        let mut bytes = 0;
        while i < names.len() {
            let b = grads[&names[i]].numel() * 4;
            if !bucket_names.is_empty() && bytes + b > cap {
                break;
            }
            bytes += b;
            bucket_names.push(names[i].clone());
            i += 1;
        }
        let mut bucket: Vec<Tensor> = bucket_names
            .iter()
            .filter_map(|n| grads.remove(n))
            .collect();
        comm.all_reduce_sum_tensors(&mut bucket)?;
        for (n, t) in bucket_names.into_iter().zip(bucket) {
            grads.insert(n, t);
        }
    }
    Ok(())
}

/// The gradient part of an overlapped step: the trainer's last backward pass streams each
/// final gradient into buckets of at most `cap` bytes, in the order they become final (the
/// graph's, the same on every rank); each bucket goes to a communication worker thread as
/// soon as it is full (the last one when backward returns), which sums it over the ranks
/// while backward continues. Every bucket is waited for before this returns. The sums are
/// then checked finite: a non-finite gradient on any rank makes every rank stop with the same
/// error.
fn overlapped_gradients(
    comm: &dyn Communicator,
    t: &mut Trainer,
    batch: &Batch,
    cap: usize,
) -> Result<(crate::train::trainer::Gradients, OverlapStats)> {
    let (tx, rx) = mpsc::channel::<(Vec<String>, Bucket)>();
    let (g, buckets, mut stats, backward_end, starts) = std::thread::scope(|s| -> Result<_> {
        let worker = s.spawn(move || {
            let mut done = Vec::new();
            let mut starts = Vec::new();
            for (names, mut bucket) in rx {
                starts.push(Instant::now());
                if let Err(e) = comm.reduce_bucket(&mut bucket) {
                    return (done, starts, Err(e));
                }
                done.push((names, bucket));
            }
            (done, starts, Ok(()))
        });
        let mut filler = Filler {
            comm,
            tx,
            cap,
            names: Vec::new(),
            tensors: Vec::new(),
            bytes: 0,
            stats: OverlapStats::default(),
        };
        let mut sink = |name: &str, g: Tensor, left: usize| filler.push(name, g, left);
        let r = t.gradients_into(batch, Some(&mut sink));
        let r = r.and_then(|g| filler.submit(0).map(|_| g));
        let backward_end = Instant::now();
        let Filler { stats, tx, .. } = filler;
        drop(tx);
        let (done, starts, worker_result) = worker.join().unwrap_or_else(|_| {
            (
                Vec::new(),
                Vec::new(),
                Err(Error::Msg(
                    "the gradient communication worker panicked".into(),
                )),
            )
        });
        // The worker's error names the rank that failed; a local error of the backward
        // pass (or a hand-over the stopped worker refused) comes second.
        worker_result?;
        let g = r?;
        Ok((g, done, stats, backward_end, starts))
    })?;
    stats.started_during_backward = starts.iter().filter(|&&s| s < backward_end).count();
    let mut g = g;
    for (names, bucket) in buckets {
        for (n, t) in names.into_iter().zip(bucket.tensors) {
            g.grads.insert(n, t);
        }
    }
    for (name, v) in &g.grads {
        if !crate::train::trainer::finite(v)? {
            return Err(Error::NonFinite(format!(
                "gradient of '{name}' (summed over the {} ranks) at epoch {} step {} (global \
                 step {})",
                comm.world(),
                t.pos.epoch,
                t.pos.step,
                t.pos.global_step + 1
            )));
        }
    }
    Ok((g, stats))
}

/// Fills the buckets of an overlapped step on the trainer's thread.
struct Filler<'a> {
    comm: &'a dyn Communicator,
    tx: mpsc::Sender<(Vec<String>, Bucket)>,
    cap: usize,
    names: Vec<String>,
    tensors: Vec<Tensor>,
    bytes: usize,
    stats: OverlapStats,
}

impl Filler<'_> {
    /// Adds a final gradient; a bucket that the gradient does not fit in goes first, and a
    /// bucket that reaches the cap goes at once.
    fn push(&mut self, name: &str, g: Tensor, left: usize) -> Result<()> {
        let b = g.numel() * 4;
        if !self.names.is_empty() && self.bytes + b > self.cap {
            self.submit(left)?;
        }
        self.names.push(name.to_string());
        self.tensors.push(g);
        self.bytes += b;
        if self.bytes >= self.cap {
            self.submit(left)?;
        }
        Ok(())
    }

    /// Hands the current bucket (if any) to the worker; `left`: backward rules still to run.
    fn submit(&mut self, left: usize) -> Result<()> {
        if self.names.is_empty() {
            return Ok(());
        }
        let names = std::mem::take(&mut self.names);
        let bucket = self.comm.bucket_ready(std::mem::take(&mut self.tensors))?;
        self.bytes = 0;
        self.stats.nodes_left.push(left);
        self.stats.tensors.push(names.len());
        self.tx.send((names, bucket)).map_err(|_| {
            Error::Msg("the gradient communication worker stopped (see its error)".into())
        })
    }
}

/// A chain's values in name order (host f32).
fn flatten(c: &Chain) -> Vec<f32> {
    c.values().flat_map(|t| t.data().iter().copied()).collect()
}

/// A chain shaped like `template` (and on its devices) holding `vals`.
fn unflatten(template: &Chain, vals: &[f32]) -> Result<Chain> {
    let mut out = unflatten_host(template, vals)?;
    for (n, t) in out.iter_mut() {
        *t = t.to_device(template[n].device())?;
    }
    Ok(out)
}

/// A chain shaped like `template` holding `vals`, on the host.
fn unflatten_host(template: &Chain, vals: &[f32]) -> Result<Chain> {
    let mut out = Chain::new();
    let mut k = 0;
    for (n, t) in template {
        let len = t.numel();
        let v = vals.get(k..k + len).ok_or_else(|| {
            Error::shape(
                "bn chain",
                format!("{} values for a chain of more", vals.len()),
            )
        })?;
        out.insert(n.clone(), Tensor::from_vec(t.shape(), v.to_vec())?);
        k += len;
    }
    Ok(out)
}

/// Images `rank, rank + world, ..` of the first `total` images of `inner`'s evaluation order.
struct Shard<'a> {
    inner: &'a dyn BatchSource,
    rank: usize,
    world: usize,
    total: usize,
}

impl BatchSource for Shard<'_> {
    fn len(&self) -> usize {
        self.total.saturating_sub(self.rank).div_ceil(self.world)
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn seg_classes(&self) -> Option<usize> {
        self.inner.seg_classes()
    }
    /// Positions in `inner` of this shard's images.
    fn order(&self, epoch: usize, train: bool) -> Vec<usize> {
        let order = self.inner.order(epoch, train);
        (self.rank..self.total.min(order.len()))
            .step_by(self.world)
            .map(|i| order[i])
            .collect()
    }
    fn load(&self, epoch: usize, indices: &[usize], train: bool) -> Result<Batch> {
        self.inner.load(epoch, indices, train)
    }
}

/// The world size a run directory was last run with (`dist.json`, written by rank 0 at the
/// start of every run); 1 when there is none (a run from before, or of one process).
pub fn saved_world(run_dir: &Path) -> usize {
    std::fs::read_to_string(run_dir.join("dist.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["world_size"].as_u64())
        .map_or(1, |w| w as usize)
}

/// Records the world size of this run in `run_dir/dist.json` (rank 0; atomic).
pub fn write_world(run_dir: &Path, dist: &Dist) -> Result<()> {
    let text = serde_json::json!({
        "world_size": dist.world(),
        "backend": dist.comm().map_or("none", |c| c.backend()),
    })
    .to_string();
    crate::io::write_bytes_atomic(
        &run_dir.join("dist.json"),
        text.as_bytes(),
        crate::io::Durability::Fsync,
    )
}

/// A fingerprint of a configuration for the rendezvous (ranks started with different settings
/// refuse to train together). FNV-1a over the TOML text.
pub fn config_token(cfg: &TrainConfig) -> Vec<u8> {
    let mut c = cfg.clone();
    c.device = String::new();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in c.to_toml().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.to_le_bytes().to_vec()
}

/// The communicator of this process from its environment (`RankEnv`): None for one process;
/// NCCL when the configuration's device is a GPU, else the TCP star (CPU ranks). Also returns
/// the device this rank must use (`cuda:LOCAL_RANK` for a GPU job).
pub fn from_env(cfg: &TrainConfig, timeout: std::time::Duration) -> Result<(Dist, Option<String>)> {
    let env = super::RankEnv::from_env()?;
    if !env.is_distributed() {
        return Ok((Dist::single(), None));
    }
    let token = config_token(cfg);
    let (device, _) = cfg
        .device
        .parse::<crate::device::DeviceRequest>()?
        .resolve()?;
    match device {
        crate::device::Device::Cuda(_) => {
            if let Some(why) = super::nccl::unavailable_reason() {
                return Err(Error::Msg(format!(
                    "{}: multi-GPU training needs NCCL, which is unavailable: {why}",
                    env.describe()
                )));
            }
            let comm = super::nccl::NcclComm::init(&env, env.local_rank, &token, timeout)?;
            Ok((
                Dist::new(Box::new(comm)),
                Some(format!("cuda:{}", env.local_rank)),
            ))
        }
        crate::device::Device::Cpu => {
            let comm = super::tcp::rendezvous(&env, &token, &[], timeout)?;
            Ok((Dist::new(Box::new(comm)), Some("cpu".into())))
        }
    }
}
