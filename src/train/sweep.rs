//! `mpm-train sweep`: one configuration key varied over a list of values (Figure S3: lambda,
//! the weight of the part loss, for MPM ResNet-50 on Tiny-PartImageNet++).
//!
//! The variants run one after another (or, with `--jobs N` / `--devices LIST`, side by side as
//! child processes: [`sweep_parallel`]), each a whole `mpm-train` run in its own folder
//! `OUT/<key>_<value>/` (config, log, metrics, checkpoints as usual). After training, each is
//! evaluated on `eval_dir` with the EMA model the run exports (its best epoch by EMA PGD
//! accuracy, else the last): clean accuracy, PGD accuracy (the config's
//! `eval_attack_it` steps at `attack_eps`, as the training run's own evaluations) and
//! AutoAttack at `attack_eps` (l-inf, the attack library's AutoAttack; `standard` = APGD-CE,
//! APGD-T, FAB-T, Square, each on the points the previous left robust) on `aa_images` evenly
//! spaced evaluation images. The result is written to `OUT/<key>_<value>/sweep_result.json`.
//!
//! Resumable: a variant with a result file is not run again; a variant interrupted in training
//! resumes from its last checkpoint (`--resume` semantics: same configuration required). At the
//! end, and after every variant, `OUT/sweep.json`, `OUT/sweep.md` (the table) and
//! `OUT/sweep.png` (accuracy against the value, Figure S3's plot) are rewritten atomically.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::run::{best_checkpoint, eval_trainer, last_checkpoint, read_best, run, RunOptions};
use super::source::BatchSource;
use super::trainer::Trainer;
use crate::charts::{self, Panel, Series};
use crate::dist::launch;
use crate::{Error, Result};

/// Which AutoAttack runs on each variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AaVersion {
    /// APGD-CE, APGD-T, FAB-T, Square (Croce & Hein's "standard", the paper's).
    Standard,
    /// APGD-CE and APGD-T only (minutes instead of hours; an upper bound on the standard one).
    Apgd,
}

impl std::str::FromStr for AaVersion {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "standard" => Ok(AaVersion::Standard),
            "apgd" => Ok(AaVersion::Apgd),
            _ => Err(format!("'{s}': expected standard or apgd")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// The configuration key varied (any key of `TrainConfig`, e.g. `lambdas`).
    pub key: String,
    pub values: Vec<String>,
    /// Output folder; the variants' runs are its sub-folders.
    pub out: PathBuf,
    /// Evaluation images attacked with AutoAttack (0 = no AutoAttack).
    pub aa_images: usize,
    pub aa_version: AaVersion,
    /// Images per evaluation pass (0: the config's micro-batch).
    pub eval_batch_size: usize,
    pub progress: bool,
}

/// One variant's evaluation (accuracies are fractions).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SweepRow {
    pub key: String,
    pub value: String,
    pub run_dir: String,
    /// Which checkpoint of the run was evaluated: "best (epoch E)" or "last (epoch E)".
    pub evaluated: String,
    pub images: usize,
    pub clean_accuracy: f64,
    pub pgd_steps: usize,
    pub eps: f64,
    pub pgd_accuracy: f64,
    pub autoattack: Option<String>,
    pub autoattack_images: usize,
    pub autoattack_accuracy: Option<f64>,
    pub train_seconds: f64,
    pub eval_seconds: f64,
}

/// The folder of one variant: `<key>_<value>` with characters other than `[A-Za-z0-9._-]`
/// replaced, so any value makes a valid name.
pub fn variant_dir(out: &Path, key: &str, value: &str) -> PathBuf {
    let clean: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.join(format!("{key}_{clean}"))
}

/// Parses `--values`: comma-separated, at least one, no duplicates.
pub fn parse_values(s: &str) -> Result<Vec<String>> {
    let v: Vec<String> = s
        .split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect();
    if v.is_empty() {
        return Err(Error::flag("--values", "no value given"));
    }
    for (i, a) in v.iter().enumerate() {
        if v[..i].contains(a) {
            return Err(Error::flag("--values", format!("'{a}' listed twice")));
        }
    }
    Ok(v)
}

/// The configuration of the variant `key = value`, in its own folder.
pub fn variant_config(base: &TrainConfig, o: &SweepOptions, value: &str) -> Result<TrainConfig> {
    if super::config::RUNTIME_KEYS.contains(&o.key.replace('-', "_").as_str()) {
        return Err(Error::flag(
            "--key",
            format!(
                "'{}' changes how a run executes, not what it computes: nothing to sweep",
                o.key
            ),
        ));
    }
    let mut c = base.clone();
    c.set(&o.key, value)?;
    c.output_dir = variant_dir(&o.out, &o.key, value).display().to_string();
    c.validate()?;
    Ok(c)
}

const RESULT: &str = "sweep_result.json";

fn read_result(dir: &Path, key: &str, value: &str) -> Option<SweepRow> {
    let text = std::fs::read_to_string(dir.join(RESULT)).ok()?;
    let r: SweepRow = serde_json::from_str(&text).ok()?;
    (r.key == key && r.value == value).then_some(r)
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Msg(e.to_string()))?;
    crate::io::write_bytes_atomic(path, text.as_bytes(), crate::io::Durability::Fsync)
}

/// Runs (or resumes) every variant, evaluates it, and writes the table and the plot.
pub fn sweep(
    base: &TrainConfig,
    train: &dyn BatchSource,
    eval: &dyn BatchSource,
    o: &SweepOptions,
) -> Result<Vec<SweepRow>> {
    // Every variant's configuration first: a bad value fails before hours of training.
    let cfgs = variant_configs(base, o)?;
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let mut rows: Vec<SweepRow> = Vec::new();
    for (i, (value, cfg)) in o.values.iter().zip(&cfgs).enumerate() {
        let tag = format!("[{}/{}] {} = {value}", i + 1, o.values.len(), o.key);
        let dir = PathBuf::from(&cfg.output_dir);
        let done = read_result(&dir, &o.key, value).is_some();
        rows.push(run_variant(cfg, train, eval, o, value, &tag)?);
        if !done {
            write_outputs(&rows, o)?;
        }
    }
    write_outputs(&rows, o)?;
    Ok(rows)
}

/// Every variant's configuration, checked.
fn variant_configs(base: &TrainConfig, o: &SweepOptions) -> Result<Vec<TrainConfig>> {
    o.values
        .iter()
        .map(|v| variant_config(base, o, v))
        .collect()
}

/// One variant (`cfg` from [`variant_config`]): its result when it has one, else trains (or
/// resumes) it, evaluates it and writes `sweep_result.json` in its folder. What a serial sweep
/// does per value, and what each child process of a parallel sweep runs (`--variant`).
pub fn run_variant(
    cfg: &TrainConfig,
    train: &dyn BatchSource,
    eval: &dyn BatchSource,
    o: &SweepOptions,
    value: &str,
    tag: &str,
) -> Result<SweepRow> {
    let dir = PathBuf::from(&cfg.output_dir);
    if let Some(r) = read_result(&dir, &o.key, value) {
        eprintln!(
            "{tag}: done before ({}), skipped",
            dir.join(RESULT).display()
        );
        return Ok(r);
    }
    let resume = last_checkpoint(&dir).exists().then(|| dir.clone());
    eprintln!(
        "{tag}: {} {}",
        if resume.is_some() {
            "resuming"
        } else {
            "training"
        },
        dir.display()
    );
    let t = Instant::now();
    let s = run(
        cfg,
        train,
        Some(eval),
        &RunOptions {
            run_dir: dir.clone(),
            stop_after_steps: None,
            resume,
            progress: o.progress,
            plots: true,
            eval_batch_size: o.eval_batch_size,
        },
    )?;
    let train_seconds = t.elapsed().as_secs_f64();
    // The model the run exports, as the paper reports it: the best epoch by EMA PGD
    // accuracy on eval_dir (the reference's model_best), else the last.
    let last_epoch = s.trainer.pos.epoch;
    let (trainer, evaluated) = match read_best(&dir)? {
        Some(b) if b.epoch != last_epoch => {
            let mut t = super::checkpoint::load(&best_checkpoint(&dir), None)?;
            t.to_device(s.trainer.device)?;
            (t, format!("best (epoch {})", b.epoch))
        }
        Some(b) => (s.trainer, format!("best (epoch {})", b.epoch)),
        None => (s.trainer, format!("last (epoch {last_epoch})")),
    };
    let mut row = evaluate_variant(&trainer, eval, o, value, &dir, train_seconds)?;
    row.evaluated = evaluated;
    eprintln!("{tag}: {}", describe(&row));
    write_json(&dir.join(RESULT), &row)?;
    Ok(row)
}

// ---- Parallel sweeps: one child process per variant (`--jobs N`, `--devices LIST`). ----

/// How [`sweep_parallel`] starts its variants.
#[derive(Clone, Debug)]
pub struct Parallel {
    /// One slot per variant that may run at a time, with the device it trains on (`cpu`
    /// for `--jobs N`; a device listed twice holds two variants at a time).
    pub slots: Vec<String>,
    /// The program of a variant (the running `mpm-train`) ...
    pub program: PathBuf,
    /// ... and its arguments: the sweep's own command line, to which each child appends
    /// `--set device=<slot> --variant <value>`.
    pub args: Vec<OsString>,
    /// Seconds between the console's status lines of the running variants (0: none).
    pub status_every: u64,
}

/// Asks a running [`sweep_parallel`] to stop as a signal would (what SIGINT/SIGTERM/SIGHUP
/// do; also for tests).
pub fn request_stop(sig: i32) {
    launch::request_stop(sig);
}

/// The log of one variant's child process: `OUT/<key>_<value>.log`, beside its run folder.
pub fn variant_log(out: &Path, key: &str, value: &str) -> PathBuf {
    let mut s = variant_dir(out, key, value).into_os_string();
    s.push(".log");
    PathBuf::from(s)
}

/// The last non-empty line of a log (progress bars' carriage returns split lines too).
fn last_line(path: &Path) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    let text = String::from_utf8_lossy(tail);
    let line = text
        .split(['\n', '\r'])
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("");
    let mut l: String = line.chars().take(120).collect();
    if line.chars().count() > 120 {
        l.push_str("...");
    }
    l
}

struct Running {
    index: usize,
    slot: usize,
    child: Child,
    started: Instant,
    log: PathBuf,
}

/// A sweep whose variants run side by side, each as its own `mpm-train` child process
/// (`p.program p.args --set device=D --variant V`) in its own run folder, exactly as the
/// serial [`sweep`] would run it, its output in [`variant_log`]. At most one variant per
/// slot at a time, in the order of the values. Finished variants are skipped and interrupted
/// ones resume (the child does both). A failing variant does not stop the others: the sweep
/// then ends with an error naming each failed value and its log. SIGINT, SIGTERM and SIGHUP
/// are forwarded to the children (SIGKILL after [`crate::dist::launch::GRACE`]) and no new
/// variant starts. The table, JSON and plot are the serial sweep's: rows in value order,
/// rewritten as variants finish.
pub fn sweep_parallel(base: &TrainConfig, o: &SweepOptions, p: &Parallel) -> Result<Vec<SweepRow>> {
    if p.slots.is_empty() {
        return Err(Error::flag(
            "--jobs/--devices",
            "no slot to run a variant in",
        ));
    }
    let cfgs = variant_configs(base, o)?;
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let n = o.values.len();
    let tag = |i: usize| format!("[{}/{n}] {} = {}", i + 1, o.key, o.values[i]);
    let mut results: Vec<Option<SweepRow>> = vec![None; n];
    let mut queue: std::collections::VecDeque<usize> = Default::default();
    for (i, cfg) in cfgs.iter().enumerate() {
        let dir = PathBuf::from(&cfg.output_dir);
        match read_result(&dir, &o.key, &o.values[i]) {
            Some(r) => {
                eprintln!(
                    "{}: done before ({}), skipped",
                    tag(i),
                    dir.join(RESULT).display()
                );
                results[i] = Some(r);
            }
            None => queue.push_back(i),
        }
    }
    launch::catch_stop_signals();
    if !queue.is_empty() {
        eprintln!(
            "sweep: {} variant(s) to run, {} at a time ({})",
            queue.len(),
            p.slots.len().min(queue.len()),
            p.slots.join(", ")
        );
    }
    let mut running: Vec<Running> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut stopping: Option<(i32, Instant)> = None;
    let mut last_status = Instant::now();
    loop {
        let sig = launch::take_stop_signal();
        if sig != 0 {
            if stopping.is_none() {
                eprintln!(
                    "sweep: signal {sig}: stopping {} running variant(s); rerun to resume",
                    running.len()
                );
                stopping = Some((sig, Instant::now()));
            }
            for r in &running {
                launch::send(&r.child, sig);
            }
        }
        if let Some((_, t)) = stopping {
            if t.elapsed() > crate::dist::launch::GRACE {
                for r in &running {
                    launch::send(&r.child, libc::SIGKILL);
                }
            }
        }
        // Start variants in free slots.
        while stopping.is_none() && !queue.is_empty() {
            let busy: Vec<usize> = running.iter().map(|r| r.slot).collect();
            let Some(slot) = (0..p.slots.len()).find(|s| !busy.contains(s)) else {
                break;
            };
            let Some(i) = queue.pop_front() else { break };
            let value = &o.values[i];
            let dir = PathBuf::from(&cfgs[i].output_dir);
            let log = variant_log(&o.out, &o.key, value);
            let resuming = last_checkpoint(&dir).exists();
            match start_variant(p, slot, value, &log) {
                Ok(child) => {
                    eprintln!(
                        "{}: {} on {} (log {})",
                        tag(i),
                        if resuming { "resuming" } else { "training" },
                        p.slots[slot],
                        log.display()
                    );
                    running.push(Running {
                        index: i,
                        slot,
                        child,
                        started: Instant::now(),
                        log,
                    });
                }
                Err(e) => {
                    eprintln!("{}: FAILED to start: {e}", tag(i));
                    failed.push(format!("{} = {value} (could not start: {e})", o.key));
                }
            }
        }
        // Collect the finished ones.
        let mut k = 0;
        while k < running.len() {
            let status = match running[k].child.try_wait() {
                Ok(None) => {
                    k += 1;
                    continue;
                }
                Ok(Some(s)) => Ok(s),
                Err(e) => Err(e),
            };
            let r = running.swap_remove(k);
            let (i, value) = (r.index, &o.values[r.index]);
            let secs = r.started.elapsed().as_secs_f64();
            let dir = PathBuf::from(&cfgs[i].output_dir);
            let why = match status {
                Ok(s) if s.success() => match read_result(&dir, &o.key, value) {
                    Some(row) => {
                        eprintln!("{}: {} ({secs:.0} s)", tag(i), describe(&row));
                        results[i] = Some(row);
                        let rows: Vec<SweepRow> = results.iter().flatten().cloned().collect();
                        write_outputs(&rows, o)?;
                        None
                    }
                    None => Some(format!(
                        "exited without writing {}",
                        dir.join(RESULT).display()
                    )),
                },
                Ok(s) => Some(
                    match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                        (Some(c), _) => format!("exit code {c}"),
                        (None, Some(sig)) => format!("killed by signal {sig}"),
                        _ => "failed".to_string(),
                    },
                ),
                Err(e) => Some(format!("cannot wait for it: {e}")),
            };
            if let Some(why) = why {
                eprintln!(
                    "{}: FAILED ({why}) after {secs:.0} s; log {}",
                    tag(i),
                    r.log.display()
                );
                failed.push(format!(
                    "{} = {value} ({why}; log {})",
                    o.key,
                    r.log.display()
                ));
            }
        }
        if running.is_empty() && (queue.is_empty() || stopping.is_some()) {
            break;
        }
        if p.status_every > 0 && last_status.elapsed().as_secs() >= p.status_every {
            last_status = Instant::now();
            let mut by_index: Vec<&Running> = running.iter().collect();
            by_index.sort_by_key(|r| r.index);
            for r in by_index {
                eprintln!(
                    "{}: running on {} for {:.0} s: {}",
                    tag(r.index),
                    p.slots[r.slot],
                    r.started.elapsed().as_secs_f64(),
                    last_line(&r.log)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let rows: Vec<SweepRow> = results.iter().flatten().cloned().collect();
    write_outputs(&rows, o)?;
    if let Some((sig, _)) = stopping {
        return Err(Error::Msg(format!(
            "sweep stopped by signal {sig}: {} of {n} variants finished (sweep.json has them); \
             rerun the same command to resume the others",
            rows.len()
        )));
    }
    if !failed.is_empty() {
        return Err(Error::Msg(format!(
            "{} of {n} variants failed: {}; the others' results are in {}",
            failed.len(),
            failed.join("; "),
            o.out.join("sweep.json").display()
        )));
    }
    Ok(rows)
}

/// Starts one variant's child, its stdout and stderr appended to `log`.
fn start_variant(p: &Parallel, slot: usize, value: &str, log: &Path) -> Result<Child> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(log, e))?;
    let mut args = p.args.clone();
    args.extend(
        [
            "--set".into(),
            format!("device={}", p.slots[slot]),
            "--variant".into(),
            value.into(),
        ]
        .map(OsString::from),
    );
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    writeln!(
        f,
        "== mpm-train sweep variant on {}: {} {}",
        p.slots[slot],
        p.program.display(),
        shown.join(" ")
    )
    .map_err(|e| Error::io(log, e))?;
    let err = f.try_clone().map_err(|e| Error::io(log, e))?;
    let mut cmd = Command::new(&p.program);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(f))
        .stderr(Stdio::from(err));
    // CPU variants share the cores instead of each taking all of them (rayon's default),
    // unless the user chose a thread count. Training and evaluation give the same bits
    // whatever the thread count (tests/train_sweep.rs compares `--jobs 2` with the serial
    // sweep, whose one process has every core), so this changes only the speed.
    if p.slots[slot] == "cpu" && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cpu_slots = p.slots.iter().filter(|s| *s == "cpu").count();
        cmd.env(
            "RAYON_NUM_THREADS",
            threads_per_cpu_variant(cores, cpu_slots).to_string(),
        );
    }
    cmd.spawn()
        .map_err(|e| Error::Msg(format!("{}: {e}", p.program.display())))
}

/// Rayon threads for each of `cpu_slots` CPU variants running side by side on `cores` cores:
/// an equal share, at least one.
pub fn threads_per_cpu_variant(cores: usize, cpu_slots: usize) -> usize {
    (cores / cpu_slots.max(1)).max(1)
}

fn describe(r: &SweepRow) -> String {
    let mut s = format!(
        "clean {:.2}%, PGD-{} {:.2}%",
        100.0 * r.clean_accuracy,
        r.pgd_steps,
        100.0 * r.pgd_accuracy
    );
    if let (Some(name), Some(a)) = (&r.autoattack, r.autoattack_accuracy) {
        s += &format!(
            ", {name} {:.2}% ({} images)",
            100.0 * a,
            r.autoattack_images
        );
    }
    s
}

fn evaluate_variant(
    trainer: &Trainer,
    eval: &dyn BatchSource,
    o: &SweepOptions,
    value: &str,
    dir: &Path,
    train_seconds: f64,
) -> Result<SweepRow> {
    let t = Instant::now();
    let eps = trainer.cfg.attack_eps as f32;
    let bs = if o.eval_batch_size > 0 {
        o.eval_batch_size
    } else {
        trainer.cfg.micro_batch()
    };
    let r = eval_trainer(trainer, eval, bs, &[eps])?;
    let pgd = r.pgd_acc.first().map(|p| p.1).unwrap_or(f64::NAN);
    let (aa_name, aa_n, aa_acc) = if o.aa_images > 0 {
        let (n, acc, attacks) = autoattack(trainer, eval, o.aa_images, eps, o.aa_version)?;
        let name = match o.aa_version {
            AaVersion::Standard if attacks == crate::attack::AttackKind::STANDARD => {
                "AutoAttack".to_string()
            }
            _ => format!(
                "AutoAttack ({})",
                attacks
                    .iter()
                    .map(|a| a.name().to_uppercase())
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
        };
        (Some(name), n, Some(acc))
    } else {
        (None, 0, None)
    };
    Ok(SweepRow {
        key: o.key.clone(),
        value: value.to_string(),
        run_dir: dir.display().to_string(),
        evaluated: String::new(),
        images: r.images,
        clean_accuracy: r.clean_acc,
        pgd_steps: r.pgd_steps,
        eps: f64::from(eps),
        pgd_accuracy: pgd,
        autoattack: aa_name,
        autoattack_images: aa_n,
        autoattack_accuracy: aa_acc,
        train_seconds,
        eval_seconds: t.elapsed().as_secs_f64(),
    })
}

/// Robust accuracy under AutoAttack (l-inf, `eps`) of the EMA model on `n` evenly spaced
/// evaluation images (so every class of a class-ordered set is represented); only those images
/// are loaded.
fn autoattack(
    trainer: &Trainer,
    src: &dyn BatchSource,
    n: usize,
    eps: f32,
    version: AaVersion,
) -> Result<(usize, f64, Vec<crate::attack::AttackKind>)> {
    use crate::attack::{AttackKind, AutoAttack, AutoAttackConfig, Dims, EngineClassifier, Norm};
    let total = src.len();
    let n = n.min(total);
    let attacks = AttackKind::fit_to_classes(
        match version {
            AaVersion::Standard => &AttackKind::STANDARD,
            AaVersion::Apgd => &[AttackKind::ApgdCe, AttackKind::ApgdT],
        },
        trainer.spec.num_classes,
    );
    if n == 0 {
        return Ok((0, f64::NAN, attacks));
    }
    let pick: Vec<usize> = (0..n).map(|i| i * total / n).collect();
    let b = src.load(0, &pick, false)?;
    let side = b.side();
    let x = crate::nn::layout::nhwc_to_nchw(b.images.data(), n, side, side, 3);
    let ids: Vec<u64> = pick.iter().map(|&i| i as u64).collect();
    let mut clf = EngineClassifier::new(trainer.spec, trainer.eval_model().clone());
    let mut cfg = AutoAttackConfig::standard(Norm::Linf, eps, trainer.cfg.seed);
    cfg.attacks = attacks.clone();
    let mut aa = AutoAttack {
        cfg,
        model: &mut clf,
    };
    let dims = Dims {
        c: 3,
        h: side,
        w: side,
    };
    let res = aa.run_batch(&x, &b.labels, &ids, dims)?;
    let robust = res.iter().filter(|r| r.robust()).count();
    Ok((res.len(), robust as f64 / res.len().max(1) as f64, attacks))
}

/// The Markdown table of the rows (accuracies in %).
pub fn table(rows: &[SweepRow]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let aa = rows
        .iter()
        .find_map(|r| r.autoattack.clone().map(|n| (n, r.autoattack_images)));
    let mut s = format!(
        "| {} | clean acc % | PGD-{} acc % (l-inf {:.4}) |",
        first.key, first.pgd_steps, first.eps
    );
    if let Some((name, n)) = &aa {
        s += &format!(" {name} acc % ({n} images) |");
    }
    s += " images | evaluated | train s |\n|---|---|---|";
    if aa.is_some() {
        s += "---|";
    }
    s += "---|---|---|\n";
    for r in rows {
        s += &format!(
            "| {} | {:.2} | {:.2} |",
            r.value,
            100.0 * r.clean_accuracy,
            100.0 * r.pgd_accuracy
        );
        if aa.is_some() {
            s += &match r.autoattack_accuracy {
                Some(a) => format!(" {:.2} |", 100.0 * a),
                None => " - |".to_string(),
            };
        }
        s += &format!(
            " {} | {} | {:.0} |\n",
            r.images, r.evaluated, r.train_seconds
        );
    }
    s
}

fn write_outputs(rows: &[SweepRow], o: &SweepOptions) -> Result<()> {
    write_json(&o.out.join("sweep.json"), &rows)?;
    let md = format!(
        "# Sweep over `{}`\n\nEvaluated on the EMA model of each run (sweep_result.json in each \
         run folder).\n\n{}",
        o.key,
        table(rows)
    );
    crate::io::write_bytes_atomic(
        &o.out.join("sweep.md"),
        md.as_bytes(),
        crate::io::Durability::Fsync,
    )?;
    plot(rows, o)
}

/// Figure S3's plot: accuracy (%) against the value; x is the value itself when every value is
/// a number, else its position in the list.
fn plot(rows: &[SweepRow], o: &SweepOptions) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let numeric: Option<Vec<f64>> = rows.iter().map(|r| r.value.parse::<f64>().ok()).collect();
    let xs: Vec<f64> = numeric.unwrap_or_else(|| (0..rows.len()).map(|i| i as f64).collect());
    let line = |name: String, f: &dyn Fn(&SweepRow) -> Option<f64>| Series {
        name,
        points: xs
            .iter()
            .zip(rows)
            .filter_map(|(&x, r)| f(r).map(|y| (x, 100.0 * y)))
            .collect(),
    };
    let first = &rows[0];
    let mut lines = vec![
        line("clean".into(), &|r| Some(r.clean_accuracy)),
        line(
            format!("PGD-{} (l-inf {:.4})", first.pgd_steps, first.eps),
            &|r| Some(r.pgd_accuracy),
        ),
    ];
    if let Some(name) = rows.iter().find_map(|r| r.autoattack.clone()) {
        lines.push(line(name, &|r| r.autoattack_accuracy));
    }
    let x_label = if o.key == "lambdas" {
        "lambda (weight of the part loss)".to_string()
    } else {
        o.key.clone()
    };
    charts::figure(
        &o.out.join("sweep.png"),
        &[Panel {
            title: format!("Accuracy against {}", o.key),
            x_label,
            y_label: "accuracy (%)".into(),
            lines,
            markers: Vec::new(),
            y_range: None,
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_variants_share_the_cores() {
        assert_eq!(threads_per_cpu_variant(16, 4), 4);
        assert_eq!(threads_per_cpu_variant(2, 2), 1);
        assert_eq!(threads_per_cpu_variant(2, 3), 1);
        assert_eq!(threads_per_cpu_variant(8, 0), 8);
    }

    #[test]
    fn values_and_folders() {
        assert_eq!(parse_values("0, 0.25,1").unwrap(), ["0", "0.25", "1"]);
        assert!(parse_values(" , ").is_err());
        assert!(parse_values("1,1")
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert_eq!(
            variant_dir(Path::new("o"), "lambdas", "0.25"),
            Path::new("o/lambdas_0.25")
        );
        assert_eq!(
            variant_dir(Path::new("o"), "act", "a/b c"),
            Path::new("o/act_a_b_c")
        );
    }

    #[test]
    fn variants_are_checked_before_anything_runs() {
        let o = SweepOptions {
            key: "lambdas".into(),
            values: vec!["0.5".into()],
            out: PathBuf::from("sw"),
            aa_images: 0,
            aa_version: AaVersion::Apgd,
            eval_batch_size: 0,
            progress: false,
        };
        let c = variant_config(&TrainConfig::default(), &o, "0.5").unwrap();
        assert_eq!(c.lambdas, 0.5);
        assert_eq!(
            c.output_dir,
            Path::new("sw/lambdas_0.5").display().to_string()
        );
        let e = variant_config(&TrainConfig::default(), &o, "heavy")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--lambdas") && e.contains("heavy"), "{e}");
        let o2 = SweepOptions {
            key: "device".into(),
            ..o
        };
        assert!(variant_config(&TrainConfig::default(), &o2, "cpu").is_err());
    }

    fn opts(out: &Path, values: &[&str]) -> SweepOptions {
        SweepOptions {
            key: "lambdas".into(),
            values: values.iter().map(|v| v.to_string()).collect(),
            out: out.to_path_buf(),
            aa_images: 0,
            aa_version: AaVersion::Apgd,
            eval_batch_size: 0,
            progress: false,
        }
    }

    /// Children are `sh -c SCRIPT sh --set device=D --variant V` ($2 = device=D, $4 = V).
    fn shell(script: String, slots: &[&str]) -> Parallel {
        Parallel {
            slots: slots.iter().map(|s| s.to_string()).collect(),
            program: PathBuf::from("/bin/sh"),
            args: ["-c".to_string(), script, "sh".into()]
                .map(OsString::from)
                .to_vec(),
            status_every: 0,
        }
    }

    // One test: the stop request is process-wide.
    #[test]
    fn parallel_variants_fail_alone_and_stop_on_a_signal() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("sw");
        // Value 1 fails; the others write the result a finished child writes, with the
        // device they were given in `evaluated`.
        let script = format!(
            "if [ \"$4\" = 1 ]; then echo boom; exit 3; fi; d='{}/lambdas_'\"$4\"; \
             mkdir -p \"$d\" && printf '{{\"key\":\"lambdas\",\"value\":\"%s\",\
             \"run_dir\":\"x\",\"evaluated\":\"%s\",\"images\":4,\"clean_accuracy\":0.5,\
             \"pgd_steps\":2,\"eps\":0.01,\"pgd_accuracy\":0.25,\"autoattack\":null,\
             \"autoattack_images\":0,\"autoattack_accuracy\":null,\"train_seconds\":1,\
             \"eval_seconds\":1}}' \"$4\" \"$2\" > \"$d/sweep_result.json\"",
            out.display()
        );
        let o = opts(&out, &["0.5", "1", "2"]);
        let e = sweep_parallel(&TrainConfig::default(), &o, &shell(script, &["cpu", "cpu"]))
            .unwrap_err()
            .to_string();
        let log = variant_log(&out, "lambdas", "1");
        assert!(
            e.contains("1 of 3 variants failed")
                && e.contains("lambdas = 1 (exit code 3")
                && e.contains(&log.display().to_string()),
            "{e}"
        );
        assert!(std::fs::read_to_string(&log).unwrap().contains("boom"));
        let rows: Vec<SweepRow> =
            serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap())
                .unwrap();
        let values: Vec<&str> = rows.iter().map(|r| r.value.as_str()).collect();
        assert_eq!(values, ["0.5", "2"]);
        assert!(rows.iter().all(|r| r.evaluated == "device=cpu"), "{rows:?}");
        assert!(std::fs::read_to_string(out.join("sweep.md"))
            .unwrap()
            .contains("| 2 |"));

        // A rerun skips the finished ones and runs only the failed one again.
        let again = format!("echo ran \"$4\" >> '{}/ran'; exit 0", tmp.path().display());
        let e = sweep_parallel(&TrainConfig::default(), &o, &shell(again, &["cuda:0"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lambdas = 1 (exited without writing"), "{e}");
        let ran = std::fs::read_to_string(tmp.path().join("ran")).unwrap();
        assert_eq!(ran, "ran 1\n");

        // A stop request (what SIGINT/SIGTERM do) reaches the running children at once.
        let t0 = Instant::now();
        let waiter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            request_stop(libc::SIGTERM);
        });
        let e = sweep_parallel(
            &TrainConfig::default(),
            &opts(&tmp.path().join("sw2"), &["0", "1", "2"]),
            &shell("exec sleep 60".into(), &["cpu", "cpu"]),
        )
        .unwrap_err()
        .to_string();
        waiter.join().unwrap();
        assert!(
            e.contains("stopped by signal") && e.contains("0 of 3"),
            "{e}"
        );
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
        // The third variant never started.
        assert!(!variant_log(&tmp.path().join("sw2"), "lambdas", "2").exists());
    }
}
