//! The prediction loop every `mpm-eval` command shares: batches of the images not yet in the
//! journal, decoded and transformed in parallel (the loader), one forward pass per batch on the
//! model's device, the answers of each [`Head`] per image, journal appends, a progress bar
//! (accuracy so far, loader and model images/s, ETA).
//!
//! Journal (`<report>.journal`, JSON lines): a header with the run's fingerprint (weights, model,
//! data, heads, subsets); then one line per finished image `{"s": subset, "i": index, "y":
//! label, "a": [answer per head]}`, or `{"s", "i", "skip": reason}` for an image that could not
//! be read (counted, not retried). A rerun with the same fingerprint skips every finished image;
//! a torn last line (a crash mid-write) is dropped and that image redone. Lines are flushed per
//! batch, so a stop loses at most the batch in flight.

use crate::attack::imagefolder::EvalSet;
use crate::attack::model::{argmax, Classifier};
use crate::attack::report::read_journal_header;
use crate::attack::run::fmt_secs;
use crate::attack::shard::Shard;
use crate::{Error, Result};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, IsTerminal, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What is read off one image's logits.
#[derive(Clone, Debug, PartialEq)]
pub enum Head {
    /// Top-1 class over all logits.
    Top1,
    /// Top-1 among these logit columns (ImageNet-A/-R's 200 classes); the answer is the
    /// position in the list.
    Restricted(Vec<usize>),
    /// model-vs-human's decision: softmax over all classes, the mean probability of each
    /// category's classes, the best category (position in the list).
    Categories(Vec<Vec<usize>>),
    /// `--class-subset` / `--super-classes` (`attack::subset`): the group holding the largest
    /// logit among the groups' columns (position in the list).
    Groups(Vec<Vec<usize>>),
}

impl Head {
    /// The largest logit column the head reads.
    fn max_column(&self) -> usize {
        match self {
            Head::Top1 => 0,
            Head::Restricted(c) => c.iter().copied().max().unwrap_or(0),
            Head::Categories(c) | Head::Groups(c) => c.iter().flatten().copied().max().unwrap_or(0),
        }
    }

    /// The answer for one row of logits.
    pub fn answer(&self, z: &[f32]) -> u32 {
        match self {
            Head::Top1 => argmax(z) as u32,
            Head::Restricted(cols) => {
                let sub: Vec<f32> = cols.iter().map(|&c| z[c]).collect();
                argmax(&sub) as u32
            }
            Head::Categories(cats) => {
                let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let p: Vec<f64> = z.iter().map(|&v| (v as f64 - m).exp()).collect();
                let s: f64 = p.iter().sum();
                let scores: Vec<f32> = cats
                    .iter()
                    .map(|idx| {
                        (idx.iter().map(|&i| p[i]).sum::<f64>() / (idx.len().max(1) as f64 * s))
                            as f32
                    })
                    .collect();
                argmax(&scores) as u32
            }
            Head::Groups(groups) => {
                let pooled: Vec<f32> = groups
                    .iter()
                    .map(|g| g.iter().map(|&c| z[c]).fold(f32::NEG_INFINITY, f32::max))
                    .collect();
                argmax(&pooled) as u32
            }
        }
    }
}

/// One image's outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Label and one answer per head.
    Done { label: usize, answers: Vec<u32> },
    /// The image could not be read or transformed (the reason), counted and logged.
    Skipped(String),
}

/// Where the time of one prediction run went (this process only, resumed images excluded).
#[derive(Clone, Debug, Default)]
pub struct Throughput {
    pub images: usize,
    pub seconds: f64,
    /// Wall seconds spent decoding and transforming (parallel, all cores).
    pub loader_seconds: f64,
    /// Wall seconds in the model's forward passes (transfers included).
    pub model_seconds: f64,
}

impl Throughput {
    pub fn add(&mut self, o: &Throughput) {
        self.images += o.images;
        self.seconds += o.seconds;
        self.loader_seconds += o.loader_seconds;
        self.model_seconds += o.model_seconds;
    }
    fn rate(n: usize, s: f64) -> f64 {
        if s > 0.0 {
            n as f64 / s
        } else {
            0.0
        }
    }
    pub fn images_per_s(&self) -> f64 {
        Self::rate(self.images, self.seconds)
    }
    pub fn loader_images_per_s(&self) -> f64 {
        Self::rate(self.images, self.loader_seconds)
    }
    pub fn model_images_per_s(&self) -> f64 {
        Self::rate(self.images, self.model_seconds)
    }
    pub fn to_json(&self) -> Value {
        json!({"images_this_run": self.images, "seconds": self.seconds,
               "images_per_s": self.images_per_s(),
               "loader_seconds": self.loader_seconds, "loader_images_per_s": self.loader_images_per_s(),
               "model_seconds": self.model_seconds, "model_images_per_s": self.model_images_per_s()})
    }
    /// One line for the log.
    pub fn line(&self) -> String {
        format!(
            "{} images in {:.1} s ({:.1} images/s): loader {:.1} images/s, model {:.1} images/s",
            self.images,
            self.seconds,
            self.images_per_s(),
            self.loader_images_per_s(),
            self.model_images_per_s()
        )
    }
}

/// Append-only journal of finished images, keyed by (subset, index).
pub struct PredictionJournal {
    path: PathBuf,
    file: File,
    done: HashMap<(u32, u64), Outcome>,
    heads: usize,
}

impl PredictionJournal {
    /// Opens (or creates) the journal for a run with `fingerprint`; `resume = false` starts
    /// afresh. `heads`: answers per image (a line with another count ends the valid part).
    pub fn open(
        path: &Path,
        fingerprint: &Value,
        heads: usize,
        resume: bool,
    ) -> Result<PredictionJournal> {
        let mut done = HashMap::new();
        let mut valid_len = 0u64;
        let exists = path.exists();
        if resume && exists {
            // The attack's journal reader: one header format, one content-keyed refusal.
            let (mut rd, header_len) = read_journal_header(path, fingerprint)?;
            valid_len = header_len;
            loop {
                let mut line = String::new();
                let got = rd.read_line(&mut line).map_err(|e| Error::io(path, e))?;
                if got == 0 || !line.ends_with('\n') {
                    break; // end, or a torn last line: redo that image
                }
                let Some((key, o)) = serde_json::from_str::<Value>(line.trim_end())
                    .ok()
                    .and_then(|v| parse_line(&v, heads))
                else {
                    break;
                };
                valid_len += got as u64;
                done.insert(key, o);
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        if !resume || !exists {
            file.set_len(0).map_err(|e| Error::io(path, e))?;
            let h =
                json!({"journal": 1, "kind": "mpm-eval predictions", "fingerprint": fingerprint});
            writeln!(file, "{h}").map_err(|e| Error::io(path, e))?;
        } else {
            file.set_len(valid_len).map_err(|e| Error::io(path, e))?;
            file.seek(SeekFrom::End(0))
                .map_err(|e| Error::io(path, e))?;
        }
        Ok(PredictionJournal {
            path: path.to_path_buf(),
            file,
            done,
            heads,
        })
    }

    /// Finished images of one subset.
    pub fn done_in(&self, subset: u32) -> usize {
        self.done.keys().filter(|k| k.0 == subset).count()
    }

    pub fn get(&self, subset: u32, i: u64) -> Option<&Outcome> {
        self.done.get(&(subset, i))
    }

    /// Every finished image as its journal line, in (subset, index) order (a shard report
    /// carries these for `mpm-eval merge`).
    pub fn entries(&self) -> Vec<Value> {
        let mut keys: Vec<&(u32, u64)> = self.done.keys().collect();
        keys.sort();
        keys.into_iter()
            .map(|&(s, i)| line_json(s, i, &self.done[&(s, i)]))
            .collect()
    }

    /// Appends journal lines written by [`entries`](Self::entries) (another process's
    /// shard); an image already present is an error (two shards overlap).
    pub fn append_lines(&mut self, lines: &[Value], what: &Path) -> Result<()> {
        let mut by_subset: std::collections::BTreeMap<u32, Vec<(u64, Outcome)>> =
            Default::default();
        for (k, v) in lines.iter().enumerate() {
            let ((s, i), o) = parse_line(v, self.heads).ok_or_else(|| {
                Error::format(what, format!("entry {k} of its shard block is not valid"))
            })?;
            if self.done.contains_key(&(s, i)) {
                return Err(Error::format(
                    what,
                    format!("image {i} of set {s} is also in another shard: overlapping shards"),
                ));
            }
            by_subset.entry(s).or_default().push((i, o));
        }
        for (s, items) in by_subset {
            self.append(s, &items)?;
        }
        Ok(())
    }

    /// Appends finished images (one flushed write per batch).
    pub fn append(&mut self, subset: u32, items: &[(u64, Outcome)]) -> Result<()> {
        let mut text = String::new();
        for (i, o) in items {
            if let Outcome::Done { answers, .. } = o {
                debug_assert_eq!(answers.len(), self.heads);
            }
            let v = line_json(subset, *i, o);
            text.push_str(&v.to_string());
            text.push('\n');
        }
        self.file
            .write_all(text.as_bytes())
            .map_err(|e| Error::io(&self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| Error::io(&self.path, e))?;
        for (i, o) in items {
            self.done.insert((subset, *i), o.clone());
        }
        Ok(())
    }
}

fn line_json(subset: u32, i: u64, o: &Outcome) -> Value {
    match o {
        Outcome::Done { label, answers } => json!({"s": subset, "i": i, "y": label, "a": answers}),
        Outcome::Skipped(why) => json!({"s": subset, "i": i, "skip": why}),
    }
}

fn parse_line(v: &Value, heads: usize) -> Option<((u32, u64), Outcome)> {
    let s = u32::try_from(v.get("s")?.as_u64()?).ok()?;
    let i = v.get("i")?.as_u64()?;
    if let Some(why) = v.get("skip") {
        return Some(((s, i), Outcome::Skipped(why.as_str()?.to_string())));
    }
    let label = v.get("y")?.as_u64()? as usize;
    let answers: Vec<u32> = v
        .get("a")?
        .as_array()?
        .iter()
        .map(|a| a.as_u64().and_then(|a| u32::try_from(a).ok()))
        .collect::<Option<_>>()?;
    (answers.len() == heads).then_some(((s, i), Outcome::Done { label, answers }))
}

/// Checks that the model has the logit columns the heads read.
pub fn check_heads(model: &dyn Classifier, heads: &[Head], what: &str) -> Result<()> {
    let k = model.num_classes();
    for h in heads {
        if h.max_column() >= k {
            return Err(Error::flag(
                "--num-classes",
                format!(
                    "{what} reads ImageNet-1K logit {} but the model has {k} classes: it needs \
                     a 1,000-class ImageNet model",
                    h.max_column()
                ),
            ));
        }
    }
    Ok(())
}

/// Runs the model over one subset (`subset` numbers it in the journal) and returns every
/// image's outcome, in index order, with this run's throughput; with a `shard`, only the
/// shard's block of the subset's images (`attack::shard`), indices kept.
#[allow(clippy::too_many_arguments)]
pub fn predict(
    model: &mut dyn Classifier,
    set: &(dyn EvalSet + Sync),
    heads: &[Head],
    subset: u32,
    batch_size: usize,
    journal: &mut PredictionJournal,
    label: &str,
    shard: Option<Shard>,
) -> Result<(Vec<Outcome>, Throughput)> {
    let range = crate::attack::shard::indices(shard, set.len());
    let n = range.len();
    let dims = set.dims();
    let k = model.num_classes();
    let todo: Vec<usize> = range
        .clone()
        .filter(|&i| journal.get(subset, i as u64).is_none())
        .collect();
    let already = n - todo.len();
    if already > 0 && !todo.is_empty() {
        eprintln!("{label}: resuming: {already} of {n} images already in the journal");
    }
    let bar = (std::io::stderr().is_terminal() && !todo.is_empty()).then(|| {
        let pb = indicatif::ProgressBar::new(n as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_prefix(label.to_string());
        pb.set_position(already as u64);
        pb
    });
    let mut tp = Throughput::default();
    let start = Instant::now();
    let mut last_line = Instant::now();
    let (mut right, mut seen) = (0usize, 0usize);
    let mut finished = already;
    for chunk in todo.chunks(batch_size.max(1)) {
        let t0 = Instant::now();
        let images: Vec<Result<Vec<f32>>> = chunk.par_iter().map(|&i| set.image(i)).collect();
        tp.loader_seconds += t0.elapsed().as_secs_f64();
        let mut x = Vec::with_capacity(chunk.len() * dims.len());
        let mut ok = Vec::with_capacity(chunk.len());
        let mut out: Vec<(u64, Outcome)> = Vec::with_capacity(chunk.len());
        for (&i, img) in chunk.iter().zip(images) {
            match img {
                Ok(v) if v.len() == dims.len() => {
                    x.extend(v);
                    ok.push(i);
                }
                Ok(v) => out.push((
                    i as u64,
                    Outcome::Skipped(format!(
                        "transform gave {} values, expected {}",
                        v.len(),
                        dims.len()
                    )),
                )),
                Err(e) => {
                    eprintln!("{label}: skipping image {i}: {e}");
                    out.push((i as u64, Outcome::Skipped(e.to_string())));
                }
            }
        }
        if !ok.is_empty() {
            let t1 = Instant::now();
            let z = model.logits(&x, dims)?;
            tp.model_seconds += t1.elapsed().as_secs_f64();
            for (r, &i) in ok.iter().enumerate() {
                let row = &z[r * k..(r + 1) * k];
                let answers: Vec<u32> = heads.iter().map(|h| h.answer(row)).collect();
                let y = set.label(i);
                seen += 1;
                right += (answers.first().copied() == Some(y as u32)) as usize;
                out.push((i as u64, Outcome::Done { label: y, answers }));
            }
        }
        out.sort_by_key(|o| o.0);
        journal.append(subset, &out)?;
        tp.images += ok.len();
        finished += chunk.len();
        let done = finished;
        let el = start.elapsed().as_secs_f64();
        let rate = (tp.images as f64 / el.max(1e-9)).max(1e-9);
        let msg = format!(
            "acc {:.1}% | {rate:.1} img/s (loader {:.0}, model {:.0})",
            100.0 * right as f64 / seen.max(1) as f64,
            Throughput::rate(tp.images, tp.loader_seconds),
            Throughput::rate(tp.images, tp.model_seconds),
        );
        match &bar {
            Some(pb) => {
                pb.set_position(done as u64);
                pb.set_message(msg);
            }
            None if last_line.elapsed().as_secs_f64() > 10.0 || done == n => {
                last_line = Instant::now();
                let left = (n - done) as f64 / rate;
                eprintln!("{label}: {done}/{n} {msg} | ETA {}", fmt_secs(left));
            }
            None => {}
        }
    }
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    tp.seconds = start.elapsed().as_secs_f64();
    let outcomes = range
        .map(|i| {
            journal
                .get(subset, i as u64)
                .cloned()
                .ok_or_else(|| Error::Msg(format!("{label}: image {i} missing after the run")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((outcomes, tp))
}

/// Correct / scored / skipped counts of head `h` over outcomes.
pub fn tally(outcomes: &[Outcome], h: usize) -> (usize, usize, usize) {
    let (mut right, mut n, mut skipped) = (0, 0, 0);
    for o in outcomes {
        match o {
            Outcome::Done { label, answers } => {
                n += 1;
                right += (answers.get(h).copied() == Some(*label as u32)) as usize;
            }
            Outcome::Skipped(_) => skipped += 1,
        }
    }
    (right, n, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_read_the_right_columns() {
        let z = [0.0f32, 5.0, 1.0, 4.0, 3.0];
        assert_eq!(Head::Top1.answer(&z), 1);
        assert_eq!(Head::Restricted(vec![0, 3, 4]).answer(&z), 1);
        // Category means: {1, 2} -> (e^5 + e^1)/2 < {3} -> e^4? (148.4+2.7)/2 = 75.6 > 54.6.
        assert_eq!(Head::Categories(vec![vec![3], vec![1, 2]]).answer(&z), 1);
        // The mean, not the sum: {0, 2, 4} sums past {3} but its mean does not.
        let z2 = [3.9f32, 0.0, 3.9, 4.0, 3.9];
        assert_eq!(
            Head::Categories(vec![vec![0, 2, 4], vec![3]]).answer(&z2),
            1
        );
    }

    #[test]
    fn journal_resumes_and_drops_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let fp = json!({"a": 1});
        let mut j = PredictionJournal::open(&p, &fp, 2, true).unwrap();
        j.append(
            0,
            &[
                (
                    0,
                    Outcome::Done {
                        label: 3,
                        answers: vec![3, 1],
                    },
                ),
                (1, Outcome::Skipped("bad".into())),
            ],
        )
        .unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        write!(f, "{{\"s\":0,\"i\":2,\"y\":1,\"a\":[1").unwrap();
        drop(f);
        let j = PredictionJournal::open(&p, &fp, 2, true).unwrap();
        assert_eq!(j.done_in(0), 2);
        assert_eq!(j.get(0, 1), Some(&Outcome::Skipped("bad".into())));
        assert!(j.get(0, 2).is_none());
        let e = PredictionJournal::open(&p, &json!({"a": 2}), 2, true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("another run"), "{e}");
    }
}
