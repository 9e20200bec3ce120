//! The evaluation loop behind `mpm-attack`: batches of the samples not yet in the journal,
//! AutoAttack on each, journal appends, progress (robust accuracy so far, images/s, ETA).

use super::autoattack::{AttackTime, AutoAttack, AutoAttackConfig, SampleResult};
use super::imagefolder::EvalSet;
use super::model::Classifier;
use super::report::Journal;
use crate::Result;
use serde_json::Value;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

/// Makes the calling thread worker 0 of rayon's global pool (sized as usual: all cores, or
/// `RAYON_NUM_THREADS`). The engine's per-op parallel loops then start on this thread
/// instead of being handed to a pool thread and waited for: one futex wake-up and two
/// context switches per loop, about 30% of an attack's CPU time on a small model. Call it
/// first thing in `main`, before anything uses rayon; returns false (and changes nothing)
/// when the global pool already exists.
pub fn join_global_pool() -> bool {
    rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global()
        .is_ok()
}

/// Content key of the first `set.len()` samples, in order (see [`EvalSet::item_key`]).
pub fn data_digest(set: &dyn EvalSet) -> Result<String> {
    let mut h = crate::io::ContentHasher::new();
    h.update_u64(set.len() as u64);
    for i in 0..set.len() {
        set.item_key(i, &mut h)?;
    }
    Ok(h.hex())
}

/// What a run's results depend on besides the attack settings, keyed by content: the
/// weights file's hash, the ordered data list's hash, the model flags (which include the
/// input normalisation), the eval transform and the precision. Two runs with equal keys
/// compute the same numbers; the journal refuses to mix runs whose keys differ.
pub fn content_key(
    weights: &Path,
    set: &dyn EvalSet,
    model: &str,
    transform: &str,
    precision: &str,
) -> Result<serde_json::Map<String, Value>> {
    let mut m = serde_json::Map::new();
    m.insert(
        "weights_hash".into(),
        Value::from(crate::io::hash_file(weights)?),
    );
    m.insert("data_hash".into(), Value::from(data_digest(set)?));
    m.insert("model".into(), Value::from(model));
    m.insert("transform".into(), Value::from(transform));
    m.insert("precision".into(), Value::from(precision));
    Ok(m)
}

/// Timing of one evaluation (this process only; resumed samples excluded).
#[derive(Clone, Debug, Default)]
pub struct Timing {
    pub attacked: usize,
    pub seconds: f64,
    /// Per attack of the list, summed over batches: images attacked, wall seconds, and the
    /// seconds of those spent in the model's passes.
    pub per_attack: Vec<AttackTime>,
}

impl Timing {
    fn add(&mut self, t: AttackTime) {
        match self.per_attack.iter_mut().find(|p| p.kind == t.kind) {
            Some(p) => {
                p.images += t.images;
                p.seconds += t.seconds;
                p.model_seconds += t.model_seconds;
            }
            None => self.per_attack.push(t),
        }
    }

    /// Attacked images per second over the whole run.
    pub fn images_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.attacked as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Runs `cfg` over the samples `range` of `set` (all of it, or a shard's block), resuming
/// from / appending to the journal at `journal`. Returns those samples' results, sorted by
/// index (indices are the set's, so a shard's samples keep their random streams).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &mut dyn Classifier,
    set: &dyn EvalSet,
    cfg: &AutoAttackConfig,
    batch_size: usize,
    range: std::ops::Range<usize>,
    journal: &Path,
    fingerprint: &Value,
    resume: bool,
    label: &str,
) -> Result<(Vec<SampleResult>, Timing)> {
    if set.is_empty() {
        return Err(crate::Error::Msg(format!(
            "{label}: the data holds no sample to attack (an accuracy over 0 images means \
             nothing)"
        )));
    }
    let dims = set.dims();
    let d = dims.len();
    // One run per journal: two processes appending to it would interleave their samples.
    let lock = crate::io::RunLock::acquire(&with_suffix(journal, ".lock"), "journal")?;
    if let Some(note) = lock.takeover_note() {
        eprintln!("{label}: {note}");
    }
    let (mut jr, done) = Journal::open(journal, fingerprint, d, &cfg.attacks, resume)?;
    if range.end > set.len() {
        return Err(crate::Error::Msg(format!(
            "{label}: samples {range:?} asked of a set of {}",
            set.len()
        )));
    }
    let n = range.len();
    let todo: Vec<usize> = range
        .clone()
        .filter(|&i| !done.contains_key(&(i as u64)))
        .collect();
    let mut results: Vec<SampleResult> = done
        .into_values()
        .filter(|r| range.contains(&(r.index as usize)))
        .collect();
    if !results.is_empty() {
        eprintln!(
            "{label}: resuming: {} of {n} samples already in {}",
            results.len(),
            journal.display()
        );
    }
    let bar = if std::io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new(n as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_prefix(label.to_string());
        pb.set_position(results.len() as u64);
        Some(pb)
    } else {
        None
    };
    let start = Instant::now();
    let mut timing = Timing::default();
    let mut attacked = 0usize;
    let bs = batch_size.max(1);
    for chunk in todo.chunks(bs) {
        let mut x = Vec::with_capacity(chunk.len() * d);
        for &i in chunk {
            x.extend(set.image(i)?);
        }
        let y: Vec<usize> = chunk.iter().map(|&i| set.label(i)).collect();
        let ids: Vec<u64> = chunk.iter().map(|&i| i as u64).collect();
        let (out, times) = AutoAttack {
            cfg: cfg.clone(),
            model: &mut *model,
        }
        .run_batch_timed(&x, &y, &ids, dims)?;
        times.into_iter().for_each(|t| timing.add(t));
        jr.append(&out)?;
        results.extend(out);
        attacked += chunk.len();
        let el = start.elapsed().as_secs_f64();
        let rate = attacked as f64 / el.max(1e-9);
        let robust = results.iter().filter(|r| r.robust()).count();
        let msg = format!(
            "robust {robust}/{} ({:.1}%) | {rate:.2} img/s",
            results.len(),
            100.0 * robust as f64 / results.len() as f64
        );
        match &bar {
            Some(pb) => {
                pb.set_position(results.len() as u64);
                pb.set_message(msg);
            }
            None => {
                let left = (n - results.len()) as f64 / rate.max(1e-9);
                eprintln!(
                    "{label}: {}/{n} {msg} | ETA {}",
                    results.len(),
                    fmt_secs(left)
                );
            }
        }
    }
    if let Some(pb) = bar {
        pb.finish();
    }
    results.sort_by_key(|r| r.index);
    timing.attacked = attacked;
    timing.seconds = start.elapsed().as_secs_f64();
    Ok((results, timing))
}

fn with_suffix(p: &Path, suffix: &str) -> std::path::PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

pub fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}
