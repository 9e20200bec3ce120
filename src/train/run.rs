//! The training loop around `Trainer`: the run directory, progress bar, metrics, checkpoints,
//! evaluation every K epochs, the final export and plots.
//!
//! Run directory:
//! ```text
//! RUN/config.toml                  the resolved configuration
//! RUN/train.log                    one line per epoch, evaluation and checkpoint
//! RUN/metrics.jsonl                {"kind":"train",...} per epoch, {"kind":"eval",...}
//! RUN/checkpoints/last.safetensors every epoch and every `checkpoint_every` steps
//! RUN/checkpoints/epoch-NNN.safetensors  the last `keep_checkpoints` epochs
//! RUN/checkpoints/best.safetensors       the epoch whose EMA scored best (`eval_metric`: PGD
//!                                        or clean accuracy, on eval_dir or on select_dir),
//!                                        with best.json
//! RUN/export/model.{safetensors,pth}     inference model of `best` (else of the last epoch;
//!                                        EMA, bypass dropped)
//! RUN/plots/curves.png             loss / accuracy curves
//! ```

use super::checkpoint;
use super::config::TrainConfig;
use super::eval::{evaluate, EvalOptions, EvalResult};
use super::source::{Batch, BatchSource};
use super::trainer::{effective_maps, Trainer};
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Above this share of an epoch spent waiting for batches, the log warns that the loader is the
/// bottleneck.
pub const LOADER_WARN_FRACTION: f64 = 0.10;

/// Where an epoch's time went: producing batches (the loader's busy time, on its thread when
/// prefetching), the step (PGD + forward/backward + update), and the step waiting for data.
#[derive(Clone, Copy, Debug, Default)]
pub struct Throughput {
    pub images: usize,
    pub load_s: f64,
    pub step_s: f64,
    pub wait_s: f64,
}

impl Throughput {
    /// Images per second one loader thread produces.
    pub fn loader_rate(&self) -> f64 {
        self.images as f64 / self.load_s.max(1e-9)
    }
    /// Images per second of the training step alone.
    pub fn step_rate(&self) -> f64 {
        self.images as f64 / self.step_s.max(1e-9)
    }
    /// Share of `wall` seconds the step loop spent waiting for a batch.
    pub fn wait_fraction(&self, wall: f64) -> f64 {
        (self.wait_s / wall.max(1e-9)).min(1.0)
    }
}

pub struct RunOptions {
    pub run_dir: PathBuf,
    /// Stop (after checkpointing) once the global step reaches this (tests, job limits).
    pub stop_after_steps: Option<u64>,
    /// Continue from this checkpoint (a file or a run directory).
    pub resume: Option<PathBuf>,
    pub progress: bool,
    /// Write the PNG curves at the end.
    pub plots: bool,
    /// Eval batch size (0 = the training micro-batch, `batch_size / accum_steps`: what is
    /// known to fit in memory).
    pub eval_batch_size: usize,
}

#[derive(Debug)]
pub struct RunSummary {
    pub trainer: Trainer,
    pub finished: bool,
    pub last_eval: Option<EvalResult>,
    pub checkpoint: PathBuf,
    pub seconds: f64,
}

pub fn last_checkpoint(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints").join("last.safetensors")
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trainer({}, {:?})", self.spec.describe(), self.pos)
    }
}

/// The run's log and metrics files; muted (writes nothing) on the ranks other than 0 of a
/// data-parallel run.
struct Log {
    file: Option<std::fs::File>,
    metrics: Option<std::fs::File>,
    path: PathBuf,
    /// Lines held back until the epoch's checkpoint is written (`Some` while deferring).
    held: Option<Vec<(bool, String)>>,
}

impl Log {
    fn open(dir: &Path) -> Result<Log> {
        let open = |p: PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| Error::io(&p, e))
        };
        Ok(Log {
            file: Some(open(dir.join("train.log"))?),
            metrics: Some(open(dir.join("metrics.jsonl"))?),
            path: dir.to_path_buf(),
            held: None,
        })
    }
    fn muted(dir: &Path) -> Log {
        Log {
            file: None,
            metrics: None,
            path: dir.to_path_buf(),
            held: None,
        }
    }
    fn line(&mut self, s: &str) -> Result<()> {
        if let Some(h) = &mut self.held {
            h.push((false, s.to_string()));
            return Ok(());
        }
        self.write(false, s)
    }
    fn metric(&mut self, v: serde_json::Value) -> Result<()> {
        if let Some(h) = &mut self.held {
            h.push((true, v.to_string()));
            return Ok(());
        }
        self.write(true, &v.to_string())
    }
    /// Appends one line to the log (or the metrics file); nothing on a muted log.
    fn write(&mut self, is_metric: bool, text: &str) -> Result<()> {
        let (file, name) = if is_metric {
            (&mut self.metrics, "metrics.jsonl")
        } else {
            (&mut self.file, "train.log")
        };
        let Some(f) = file else {
            return Ok(());
        };
        writeln!(f, "{text}").map_err(|e| Error::io(self.path.join(name), e))
    }
    /// Holds the following lines back until [`Log::release`]: an epoch's records are written
    /// only once its checkpoint is, so a crash in between (after which the resumed run
    /// redoes the epoch's end) does not leave them twice.
    fn hold(&mut self) {
        self.held = Some(Vec::new());
    }
    fn release(&mut self) -> Result<()> {
        for (is_metric, text) in self.held.take().unwrap_or_default() {
            self.write(is_metric, &text)?;
        }
        Ok(())
    }
}

/// The epoch whose EMA scored highest on the selection metric (`eval_metric`): the evaluation
/// set's PGD accuracy at `attack_eps` ("advtop1"; clean accuracy when there is no attack) or its
/// clean accuracy ("top1"), or the same on `select_dir`. Kept as `checkpoints/best.safetensors`
/// with `checkpoints/best.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Best {
    pub epoch: usize,
    /// The measured quantity: `pgd<steps>_acc_eps<eps>` or `clean_acc`.
    pub metric: String,
    pub value: f64,
    /// `eval_dir` or `select_dir`: the set the metric was measured on.
    pub selected_on: String,
    /// The configuration's `eval_metric` (advtop1 | top1). Records written before the key
    /// existed were chosen by advtop1.
    #[serde(default = "advtop1")]
    pub eval_metric: String,
}

fn advtop1() -> String {
    "advtop1".into()
}

pub fn best_checkpoint(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints").join("best.safetensors")
}

fn best_record(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints").join("best.json")
}

/// The best epoch recorded in a run directory, if any.
pub fn read_best(run_dir: &Path) -> Result<Option<Best>> {
    let p = best_record(run_dir);
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(&p, format!("best record: {e}")))
}

/// The selection metric of an evaluation under `eval_metric`: (name, value). "top1" is the
/// clean accuracy; "advtop1" the first PGD accuracy (the clean one when nothing was attacked).
pub fn selection_metric(r: &EvalResult, eval_metric: &str) -> (String, f64) {
    match r.pgd_acc.first() {
        Some((eps, acc)) if eval_metric != "top1" => {
            (format!("pgd{}_acc_eps{eps:.5}", r.pgd_steps), *acc)
        }
        _ => ("clean_acc".to_string(), r.clean_acc),
    }
}

/// Everything the loop carries from epoch to epoch besides the trainer.
struct Loop<'a> {
    cfg: &'a TrainConfig,
    opts: &'a RunOptions,
    dir: &'a Path,
    train: &'a dyn BatchSource,
    eval: Option<&'a dyn BatchSource>,
    select: Option<Box<dyn BatchSource>>,
    nb: usize,
    log: Log,
    bar: ProgressBar,
    last: PathBuf,
    last_good: Option<String>,
    last_eval: Option<EvalResult>,
    best: Option<Best>,
    eval_bs: usize,
    start: Instant,
    /// This process's place in a data-parallel run (`Dist::single()`: one process).
    dist: &'a crate::dist::Dist,
}

/// Trains (or resumes) a run to the end of `cfg.epochs` or `stop_after_steps`.
pub fn run(
    cfg: &TrainConfig,
    train: &dyn BatchSource,
    eval: Option<&dyn BatchSource>,
    opts: &RunOptions,
) -> Result<RunSummary> {
    run_distributed(cfg, train, eval, opts, &crate::dist::Dist::single())
}

/// `run` as one rank of a data-parallel run (`dist`; docs/distributed.md): this rank's share
/// of every batch and of the evaluation, and only rank 0 writes the run directory.
pub fn run_distributed(
    cfg: &TrainConfig,
    train: &dyn BatchSource,
    eval: Option<&dyn BatchSource>,
    opts: &RunOptions,
    dist: &crate::dist::Dist,
) -> Result<RunSummary> {
    let start = Instant::now();
    check_data(cfg, train, "train_dir")?;
    if let Some(e) = eval {
        check_data(cfg, e, "eval_dir")?;
    }
    let select = if cfg.select_dir.is_empty() {
        None
    } else {
        let s = super::folder::open(cfg, &cfg.select_dir, "select_dir", false)?;
        check_data(cfg, s.as_ref(), "select_dir")?;
        Some(s)
    };
    // With batch-norm groups the training order is DistributedSampler's (`sampler`).
    let grouped = dist.train_source(cfg, train)?;
    let train: &dyn BatchSource = grouped.as_ref().map_or(train, |g| g as &dyn BatchSource);
    let nb = train.num_batches(cfg.batch_size, true);
    if nb == 0 {
        return Err(Error::flag(
            "--batch-size",
            format!(
                "{} is larger than the training set ({} images): no full batch",
                cfg.batch_size,
                train.len()
            ),
        ));
    }
    let dir = &opts.run_dir;
    // Only rank 0 of a data-parallel run touches the run directory.
    let root = dist.is_root();
    let _run_lock = if root {
        std::fs::create_dir_all(dir.join("checkpoints")).map_err(|e| Error::io(dir, e))?;
        // One run per directory; then temp files of killed writers are cleared (reliability).
        let run_lock = crate::io::RunLock::run_dir(dir, "--output-dir")?;
        if let Some(note) = run_lock.takeover_note() {
            eprintln!("{note}");
        }
        let stale = crate::io::remove_stale_temps(dir)?
            + crate::io::remove_stale_temps(&dir.join("checkpoints"))?;
        if stale > 0 {
            eprintln!("removed {stale} temp file(s) left by interrupted writes");
        }
        Some(run_lock)
    } else {
        None
    };
    let (mut trainer, layout_note) = open_trainer(cfg, opts, nb, dist)?;
    let (device, why) = trainer
        .cfg
        .device
        .parse::<crate::device::DeviceRequest>()?
        .resolve()?;
    trainer.to_device(device)?;
    let config_path = dir.join("config.toml");
    let mut log = if root {
        crate::io::write_bytes_atomic(
            &config_path,
            trainer.cfg.to_toml().as_bytes(),
            crate::io::Durability::Fsync,
        )?;
        if dist.world() > 1 {
            crate::dist::train::write_world(dir, dist)?;
        }
        Log::open(dir)?
    } else {
        Log::muted(dir)
    };
    log.line(&format!(
        "{} {}: {} | {} train images, {nb} updates/epoch, batch {} (micro-batch {} x {} \
         accumulated), peak lr {:.4}, {} batches prefetched",
        if opts.resume.is_some() {
            "resume"
        } else {
            "start"
        },
        dir.display(),
        trainer.spec.describe(),
        train.len(),
        cfg.batch_size,
        trainer.cfg.micro_batch(),
        trainer.cfg.accum_steps,
        trainer.cfg.peak_lr(),
        trainer.cfg.prefetch_batches,
    ))?;
    log.line(&format!("device: {why}"))?;
    if dist.world() > 1 {
        let l = dist.layout(cfg)?;
        log.line(&format!(
            "distributed: {} ranks over {}, {} images per rank and step, {} batch-norm groups \
             of {} (per rank {})",
            dist.world(),
            dist.comm().map_or("none", |c| c.backend()),
            l.per_rank_batch,
            l.total,
            l.per_group,
            l.local
        ))?;
    }
    if let Some(note) = layout_note {
        eprintln!("note: {note}");
        log.line(&format!("note: {note}"))?;
    }
    let last = last_checkpoint(dir);
    let total_steps = (trainer.cfg.epochs * nb) as u64;
    let bar = progress_bar(opts.progress && root, total_steps, trainer.pos.global_step);
    let mut l = Loop {
        cfg,
        opts,
        dir,
        train,
        eval,
        select,
        nb,
        log,
        bar,
        last_good: last.exists().then(|| last.display().to_string()),
        last,
        last_eval: None,
        // A fresh run in a used folder must not inherit (or later export) an old best.
        best: if !root {
            None
        } else if opts.resume.is_some() {
            read_best(dir)?
        } else {
            let _ = std::fs::remove_file(best_record(dir));
            let _ = std::fs::remove_file(best_checkpoint(dir));
            None
        },
        eval_bs: if opts.eval_batch_size > 0 {
            opts.eval_batch_size
        } else if dist.world() > 1 {
            dist.layout(cfg)?.per_rank_batch
        } else {
            cfg.micro_batch()
        },
        start,
        dist,
    };
    while trainer.pos.epoch < trainer.cfg.epochs {
        let epoch = trainer.pos.epoch;
        let t0 = Instant::now();
        let (stopped, io) = l.train_epoch(&mut trainer)?;
        if stopped {
            return Ok(l.stopped(trainer));
        }
        l.end_of_epoch(&mut trainer, epoch, t0.elapsed().as_secs_f64(), io)?;
        if opts
            .stop_after_steps
            .is_some_and(|s| trainer.pos.global_step >= s)
            && trainer.pos.epoch < trainer.cfg.epochs
        {
            return Ok(l.stopped(trainer));
        }
    }
    l.finish(trainer)
}

/// A fresh trainer, or the one a `--resume` checkpoint holds (with its batch-norm group layout
/// set for this process and a note when it changed).
fn open_trainer(
    cfg: &TrainConfig,
    opts: &RunOptions,
    nb: usize,
    dist: &crate::dist::Dist,
) -> Result<(Trainer, Option<String>)> {
    let Some(p) = &opts.resume else {
        let mut t = Trainer::new(cfg.clone(), nb)?;
        dist.lay_out_groups(&mut t, false, dist.world())?;
        return Ok((t, None));
    };
    let file = if p.is_dir() {
        last_checkpoint(p)
    } else {
        p.clone()
    };
    if !file.exists() {
        return Err(Error::flag(
            "--resume",
            format!("{}: no checkpoint there", file.display()),
        ));
    }
    let mut t = checkpoint::load(&file, Some(cfg))?;
    let saved_world = crate::dist::train::saved_world(&opts.run_dir);
    let note = dist.lay_out_groups(&mut t, true, saved_world)?;
    if t.updates_per_epoch != nb {
        return Err(Error::flag(
            "--resume",
            format!(
                "the checkpoint ran {} steps per epoch, this data gives {nb}",
                t.updates_per_epoch
            ),
        ));
    }
    Ok((t, note))
}

fn progress_bar(show: bool, total_steps: u64, position: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(total_steps);
    b.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_position(position);
    b
}

/// A non-finite loss names the last checkpoint that is still good.
fn with_last_good(e: Error, last_good: &Option<String>) -> Error {
    match e {
        Error::NonFinite(m) => Error::NonFinite(format!(
            "{m}; stopped without saving. Last good checkpoint: {}",
            last_good.as_deref().unwrap_or("none written yet")
        )),
        other => other,
    }
}

impl Loop<'_> {
    /// The steps of one epoch from the trainer's position. The loader runs on its own thread
    /// `prefetch_batches` batches ahead (a batch is a pure function of its position, so results
    /// do not change); 0 loads in line. Returns whether `stop_after_steps` stopped it.
    fn train_epoch(&mut self, trainer: &mut Trainer) -> Result<(bool, Throughput)> {
        let epoch = trainer.pos.epoch;
        let epochs = trainer.cfg.epochs;
        self.bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
        let t0 = Instant::now();
        let mut io = Throughput::default();
        let prefetch = trainer.cfg.prefetch_batches;
        let (bs, nb, train) = (self.cfg.batch_size, self.nb, self.train);
        let first = trainer.pos.step;
        let stopped = std::thread::scope(|scope| -> Result<bool> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(Result<Batch>, f64)>(prefetch.max(1));
            if prefetch > 0 {
                scope.spawn(move || {
                    for i in first..nb {
                        let t = Instant::now();
                        let b = train.batch(epoch, i, bs, true);
                        let failed = b.is_err();
                        if tx.send((b, t.elapsed().as_secs_f64())).is_err() || failed {
                            break;
                        }
                    }
                });
            } else {
                drop(tx);
            }
            while trainer.pos.step < nb {
                let tw = Instant::now();
                let (batch, busy) = if prefetch > 0 {
                    rx.recv()
                        .map_err(|_| Error::Msg("the data loader thread stopped".into()))?
                } else {
                    let b = train.batch(epoch, trainer.pos.step, bs, true);
                    (b, tw.elapsed().as_secs_f64())
                };
                let batch = batch?;
                let ts = Instant::now();
                io.wait_s += (ts - tw).as_secs_f64();
                io.load_s += busy;
                let st = self
                    .dist
                    .step(trainer, &batch)
                    .map_err(|e| with_last_good(e, &self.last_good))?;
                io.step_s += ts.elapsed().as_secs_f64();
                io.images += st.n;
                self.bar.inc(1);
                self.bar.set_message(format!(
                    "loss {:.3} acc {:.1}% lr {:.2e} {:.0} img/s (loader {:.0}, step {:.0}, waited {:.0}%)",
                    st.loss,
                    100.0 * trainer.sums.accuracy(),
                    st.lr,
                    io.images as f64 / t0.elapsed().as_secs_f64().max(1e-9),
                    io.loader_rate(),
                    io.step_rate(),
                    100.0 * io.wait_fraction(t0.elapsed().as_secs_f64()),
                ));
                let g = trainer.pos.global_step;
                let stop = self.opts.stop_after_steps.is_some_and(|s| g >= s);
                let every = trainer.cfg.checkpoint_every;
                if trainer.pos.step < nb && (stop || (every > 0 && g % every as u64 == 0)) {
                    self.save_last(trainer)?;
                    self.log.line(&format!(
                        "checkpoint {} at global step {g}",
                        self.last.display()
                    ))?;
                }
                if stop && trainer.pos.step < nb {
                    return Ok(true);
                }
            }
            Ok(false)
        })?;
        Ok((stopped, io))
    }

    fn save_last(&mut self, trainer: &mut Trainer) -> Result<()> {
        let last = &self.last;
        self.dist
            .write_on_root(trainer, |t| checkpoint::save(t, last))
            .map_err(|e| with_last_good(e, &self.last_good))?;
        self.last_good = Some(self.last.display().to_string());
        Ok(())
    }

    /// The epoch's metrics and log line, the evaluation when due, the checkpoint (`last`, the
    /// kept epoch file, `best` when this epoch is the best so far).
    fn end_of_epoch(
        &mut self,
        trainer: &mut Trainer,
        epoch: usize,
        secs: f64,
        io: Throughput,
    ) -> Result<()> {
        self.log.hold();
        if let Err(e) = self.end_of_epoch_held(trainer, epoch, secs, io) {
            // Written only once the checkpoint is: on an error the held lines are dropped.
            self.log.held = None;
            return Err(e);
        }
        self.log.release()
    }

    fn end_of_epoch_held(
        &mut self,
        trainer: &mut Trainer,
        epoch: usize,
        secs: f64,
        io: Throughput,
    ) -> Result<()> {
        self.log_epoch(trainer, epoch, secs, &io)?;
        let epochs = trainer.cfg.epochs;
        let k = trainer.cfg.eval_every;
        let due = epoch + 1 == epochs || (k > 0 && (epoch + 1) % k == 0);
        let mut improved = None;
        if let (true, Some(src)) = (due, self.eval) {
            self.bar.set_message("evaluating");
            let eps = [trainer.cfg.attack_eps as f32];
            let r = self.dist.evaluate(trainer, src, self.eval_bs, &eps)?;
            self.log
                .metric(eval_json(epoch + 1, trainer.pos.global_step, &r))?;
            self.log
                .line(&format!("eval epoch {}: {}", epoch + 1, describe_eval(&r)))?;
            let by = trainer.cfg.eval_metric.clone();
            let scored = match &self.select {
                None => Some((selection_metric(&r, &by), "eval_dir")),
                Some(sel) => {
                    let s = self.dist.evaluate(
                        trainer,
                        sel.as_ref(),
                        self.eval_bs,
                        &[trainer.cfg.attack_eps as f32],
                    )?;
                    let mut j = eval_json(epoch + 1, trainer.pos.global_step, &s);
                    j["kind"] = json!("select");
                    self.log.metric(j)?;
                    self.log.line(&format!(
                        "select epoch {}: {}",
                        epoch + 1,
                        describe_eval(&s)
                    ))?;
                    Some((selection_metric(&s, &by), "select_dir"))
                }
            };
            if let Some(((metric, value), on)) = scored {
                if self.best.as_ref().is_none_or(|b| value > b.value) {
                    improved = Some(Best {
                        epoch: epoch + 1,
                        metric,
                        value,
                        selected_on: on.to_string(),
                        eval_metric: by,
                    });
                }
            }
            self.last_eval = Some(r);
        }
        trainer.next_epoch();
        self.save_last(trainer)?;
        if !self.dist.is_root() {
            self.best = improved.or(self.best.take());
            return Ok(());
        }
        let kept = self
            .dir
            .join("checkpoints")
            .join(format!("epoch-{:03}.safetensors", epoch + 1));
        copy_atomic(&self.last, &kept)?;
        prune(self.dir, trainer.cfg.keep_checkpoints, epoch + 1);
        if let Some(b) = improved {
            copy_atomic(&self.last, &best_checkpoint(self.dir))?;
            let text = serde_json::to_string_pretty(&b).map_err(|e| Error::Msg(e.to_string()))?;
            let rec = best_record(self.dir);
            crate::io::write_atomic(&rec, |f| {
                f.write_all(text.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| Error::io(&rec, e))
            })?;
            self.log.metric(json!({
                "kind": "best", "epoch": b.epoch, "metric": b.metric, "value": b.value,
                "selected_on": b.selected_on, "eval_metric": b.eval_metric,
            }))?;
            self.log.line(&format!(
                "best so far: epoch {} ({} {:.4} on {}, eval_metric {})",
                b.epoch, b.metric, b.value, b.selected_on, b.eval_metric
            ))?;
            self.best = Some(b);
        }
        Ok(())
    }

    fn log_epoch(
        &mut self,
        trainer: &Trainer,
        epoch: usize,
        secs: f64,
        io: &Throughput,
    ) -> Result<()> {
        let sums = trainer.sums;
        let wait = io.wait_fraction(secs);
        self.log.metric(json!({
            "kind": "train", "epoch": epoch + 1, "step": trainer.pos.global_step,
            "updates": sums.steps, "images": sums.seen,
            "accum_steps": trainer.cfg.accum_steps, "micro_batch": trainer.cfg.micro_batch(),
            "loss": sums.mean_loss(), "ce": sums.ce / sums.steps.max(1) as f64,
            "acc": sums.accuracy(), "lr": trainer.sched.lr(epoch, 0),
            "images_per_s": sums.seen as f64 / secs.max(1e-9),
            "loader_images_per_s": io.loader_rate(),
            "step_images_per_s": io.step_rate(),
            "data_wait_fraction": wait,
        }))?;
        self.log.line(&format!(
            "epoch {}/{}: loss {:.4} adv-train acc {:.2}% ({:.1} img/s; loader {:.1} img/s, \
             step {:.1} img/s, waited for data {:.1}% of the epoch)",
            epoch + 1,
            trainer.cfg.epochs,
            sums.mean_loss(),
            100.0 * sums.accuracy(),
            sums.seen as f64 / secs.max(1e-9),
            io.loader_rate(),
            io.step_rate(),
            100.0 * wait
        ))?;
        if wait > LOADER_WARN_FRACTION {
            let msg = format!(
                "warning: epoch {}: the step waited for data {:.0}% of the time: the loader \
                 ({:.1} img/s of one loader thread, {} batches prefetched) is the bottleneck, \
                 not the step ({:.1} img/s). More CPU cores (decoding is parallel over the \
                 batch), a faster disk, smaller JPEGs, or --prefetch-batches help.",
                epoch + 1,
                100.0 * wait,
                io.loader_rate(),
                trainer.cfg.prefetch_batches,
                io.step_rate()
            );
            self.log.line(&msg)?;
            if self.opts.progress {
                self.bar.println(&msg);
            }
        }
        Ok(())
    }

    fn stopped(self, trainer: Trainer) -> RunSummary {
        let g = trainer.pos.global_step;
        self.bar
            .abandon_with_message(format!("stopped after {g} steps"));
        RunSummary {
            trainer,
            finished: false,
            last_eval: self.last_eval,
            checkpoint: self.last,
            seconds: self.start.elapsed().as_secs_f64(),
        }
    }

    /// The end of the run: the export (the best epoch's EMA when one was chosen, else the last)
    /// and the plots.
    fn finish(mut self, trainer: Trainer) -> Result<RunSummary> {
        self.bar.finish_and_clear();
        if !self.dist.is_root() {
            return Ok(RunSummary {
                trainer,
                finished: true,
                last_eval: self.last_eval,
                checkpoint: self.last,
                seconds: self.start.elapsed().as_secs_f64(),
            });
        }
        let out = self.dir.join("export");
        let files = match &self.best {
            Some(b) if b.epoch != trainer.pos.epoch => {
                let t = checkpoint::load(&best_checkpoint(self.dir), None)?;
                checkpoint::export_inference_as(&t, &out, "best", Some(b.epoch))?
            }
            Some(_) => {
                checkpoint::export_inference_as(&trainer, &out, "best", Some(trainer.pos.epoch))?
            }
            None => {
                checkpoint::export_inference_as(&trainer, &out, "last", Some(trainer.pos.epoch))?
            }
        };
        self.log.line(&format!(
            "exported {} ({})",
            files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            match &self.best {
                Some(b) => format!("best: epoch {}", b.epoch),
                None => "last epoch: no evaluation set to choose a best one".into(),
            }
        ))?;
        if self.opts.plots {
            super::plot::curves_from_metrics(
                &self.dir.join("metrics.jsonl"),
                &self.dir.join("plots"),
            )?;
        }
        Ok(RunSummary {
            trainer,
            finished: true,
            last_eval: self.last_eval,
            checkpoint: self.last,
            seconds: self.start.elapsed().as_secs_f64(),
        })
    }
}

/// Copies `from` to `to` through a temp file and a rename: a failed copy (disk full) never
/// leaves a truncated file.
fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let part = to.with_extension("safetensors.part");
    std::fs::copy(from, &part)
        .and_then(|_| std::fs::rename(&part, to))
        .map_err(|e| {
            let _ = std::fs::remove_file(&part);
            Error::io(to, e)
        })
}

/// Evaluates the trainer's EMA (or model) at the given radii.
pub fn eval_trainer(
    trainer: &Trainer,
    src: &dyn BatchSource,
    batch_size: usize,
    eps: &[f32],
) -> Result<EvalResult> {
    let cfg = trainer.cfg.clone();
    let maps = move |b: &super::source::Batch| effective_maps(&cfg, b);
    let eps: Vec<f32> = if trainer.cfg.advtrain || !eps.is_empty() {
        eps.to_vec()
    } else {
        Vec::new()
    };
    evaluate(
        &trainer.spec,
        trainer.eval_model(),
        src,
        &EvalOptions {
            eps: &eps,
            steps: trainer.cfg.eval_attack_it,
            batch_size,
            max_images: trainer.cfg.eval_images,
            seed: trainer.cfg.seed,
            maps: &maps,
            device: trainer.device,
        },
        |_, _| {},
    )
}

pub fn eval_json(epoch: usize, step: u64, r: &EvalResult) -> serde_json::Value {
    json!({
        "kind": "eval", "epoch": epoch, "step": step, "images": r.images,
        "clean_acc": r.clean_acc,
        "pgd": r.pgd_acc.iter().map(|(e, a)| json!({"eps": e, "steps": r.pgd_steps, "acc": a})).collect::<Vec<_>>(),
        "pixel_acc": r.pixel_acc, "miou": r.miou,
    })
}

pub fn describe_eval(r: &EvalResult) -> String {
    let mut s = format!("clean {:.2}%", 100.0 * r.clean_acc);
    for (e, a) in &r.pgd_acc {
        s += &format!(", PGD-{} eps {:.4} {:.2}%", r.pgd_steps, e, 100.0 * a);
    }
    if let (Some(p), Some(m)) = (r.pixel_acc, r.miou) {
        s += &format!(", part pixel acc {:.2}%, mIoU {:.2}%", 100.0 * p, 100.0 * m);
    }
    s += &format!(" ({} images)", r.images);
    s
}

fn check_data(cfg: &TrainConfig, src: &dyn BatchSource, key: &str) -> Result<()> {
    if src.is_empty() {
        return Err(Error::flag(
            format!("--{}", key.replace('_', "-")),
            "no images found",
        ));
    }
    if src.num_classes() != cfg.num_classes {
        return Err(Error::flag(
            "--num-classes",
            format!(
                "{} but the {key} data has {} classes",
                cfg.num_classes,
                src.num_classes()
            ),
        ));
    }
    if cfg.partmodel_type != "vanilla" && !cfg.use_object_seg {
        if let Some(s) = src.seg_classes() {
            if s > cfg.seg_classes {
                return Err(Error::flag(
                    "--seg-classes",
                    format!(
                        "{} but the {key} data has part ids up to {} (needs S >= {s})",
                        cfg.seg_classes,
                        s - 1
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn prune(dir: &Path, keep: usize, newest: usize) {
    if keep == 0 || newest <= keep {
        return;
    }
    let old = dir
        .join("checkpoints")
        .join(format!("epoch-{:03}.safetensors", newest - keep));
    let _ = std::fs::remove_file(old);
}
