//! R.json (contract B), the resumable per-sample journal, and confidence intervals.
//!
//! Journal: `R.json.journal` (JSON lines). The first line is a header with the run's
//! fingerprint (threat model, attack list and budgets, seed, data, weights, shapes); every
//! later line is one finished sample. Adversarial examples go to `<journal>.adv` (raw
//! little-endian f32, one image per record, written and flushed before the line that points
//! at it). A restarted run with the same fingerprint skips the samples it finds; a torn last
//! line (a crash mid-write) is ignored and that sample is redone.

use super::autoattack::{AttackKind, SampleResult};
use crate::{Error, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Wilson score interval for `k` successes out of `n` at 95%.
pub fn wilson95(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let n_f = n as f64;
    let p = k as f64 / n_f;
    let den = 1.0 + z * z / n_f;
    let centre = (p + z * z / (2.0 * n_f)) / den;
    let half = z * ((p * (1.0 - p) / n_f + z * z / (4.0 * n_f * n_f)).sqrt()) / den;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Builds R.json from per-sample results sorted by index. `class_names[c]` names class `c`.
pub fn build_report(
    results: &[SampleResult],
    attacks: &[AttackKind],
    class_names: &[String],
    extra: Value,
) -> Value {
    let n = results.len();
    let clean = results.iter().filter(|r| r.clean_correct).count();
    let robust = results.iter().filter(|r| r.robust()).count();
    let frac = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    let mut per_attack = serde_json::Map::new();
    for (a, kind) in attacks.iter().enumerate() {
        let k = results
            .iter()
            .filter(|r| r.clean_correct && r.robust_after.get(a).copied().unwrap_or(false))
            .count();
        per_attack.insert(kind.name().to_string(), json!(frac(k)));
    }
    let mut per_class: BTreeMap<usize, (usize, usize, usize)> = BTreeMap::new();
    for r in results {
        let e = per_class.entry(r.label).or_default();
        e.0 += 1;
        e.1 += r.clean_correct as usize;
        e.2 += r.robust() as usize;
    }
    let per_class: serde_json::Map<String, Value> = per_class
        .into_iter()
        .map(|(c, (m, cl, ro))| {
            let name = class_names.get(c).cloned().unwrap_or_else(|| c.to_string());
            (
                name,
                json!({"class": c, "n": m, "clean_accuracy": cl as f64 / m as f64,
                       "robust_accuracy": ro as f64 / m as f64}),
            )
        })
        .collect();
    let rejected: usize = results.iter().map(|r| r.rejected.len()).sum();
    let (cl_lo, cl_hi) = wilson95(clean, n);
    let (ro_lo, ro_hi) = wilson95(robust, n);
    let mut v = json!({
        "clean_accuracy": frac(clean),
        "robust_accuracy": frac(robust),
        "n": n,
        "per_attack": per_attack,
        "robust": results.iter().map(|r| r.robust()).collect::<Vec<_>>(),
        "attacks": attacks.iter().map(|a| a.name()).collect::<Vec<_>>(),
        "clean": results.iter().map(|r| r.clean_correct).collect::<Vec<_>>(),
        "fooled_by": results.iter().map(|r| r.fooled_by.map(|a| a.name())).collect::<Vec<_>>(),
        "rejected_claims": rejected,
        "ci95": {"clean_accuracy": [cl_lo, cl_hi], "robust_accuracy": [ro_lo, ro_hi]},
        "per_class": per_class,
    });
    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
        for (k, x) in e {
            m.insert(k, x);
        }
    }
    v
}

/// Writes `v` as pretty JSON through the atomic writer (temp file, checked write, fsync,
/// rename).
pub fn write_json_atomic(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Msg(e.to_string()))?;
    crate::io::write_bytes_atomic(path, (text + "\n").as_bytes(), crate::io::Durability::Fsync)
}

/// What differs between two fingerprints, for the journal's refusal: `weights_hash changed
/// (0123.. -> 4567..), data_hash changed (...)`.
pub fn fingerprint_changes(old: &Value, new: &Value) -> String {
    let (Value::Object(a), Value::Object(b)) = (old, new) else {
        return "its header has no fingerprint".into();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&Value>| match v {
        None => "absent".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let changes: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k} changed ({} -> {})", show(a.get(k)), show(b.get(k))))
        .collect();
    if changes.is_empty() {
        "its fingerprint differs".into()
    } else {
        changes.join(", ")
    }
}

/// Opens a journal written by this engine (the attack's or `mpm-eval`'s), reads its header
/// line and checks that it belongs to the run with `fingerprint` (journals are keyed by
/// content: the refusal names each fingerprint entry that changed). Returns the reader,
/// positioned on the first entry, and the header's length in bytes.
pub fn read_journal_header(path: &Path, fingerprint: &Value) -> Result<(BufReader<File>, u64)> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut rd = BufReader::new(f);
    let mut header = String::new();
    rd.read_line(&mut header).map_err(|e| Error::io(path, e))?;
    let h: Value = serde_json::from_str(header.trim_end()).map_err(|e| {
        Error::format(
            path,
            format!("journal header is not JSON ({e}); delete the file to start afresh"),
        )
    })?;
    if h.get("fingerprint") != Some(fingerprint) {
        let old = h.get("fingerprint").cloned().unwrap_or(Value::Null);
        return Err(Error::format(
            path,
            format!(
                "this journal belongs to another run: {}; delete it, pass --journal \
                 elsewhere, or --no-resume to start afresh",
                fingerprint_changes(&old, fingerprint)
            ),
        ));
    }
    Ok((rd, header.len() as u64))
}

/// One finished sample as a JSON object (a journal line, or an entry of a shard report's
/// `samples`); `adv` is the record number of its adversarial example, if any.
pub fn sample_json(r: &SampleResult, adv: Option<u64>) -> Value {
    json!({
        "i": r.index,
        "y": r.label,
        "clean": r.clean_correct,
        "robust_after": r.robust_after,
        "fooled_by": r.fooled_by.map(|a| a.name()),
        "rejected": r.rejected.iter().map(|a| a.name()).collect::<Vec<_>>(),
        "adv": adv,
    })
}

/// A sample back from [`sample_json`] (without its adversarial example); `None` when the
/// entry does not fit `attacks`.
pub fn parse_sample(v: &Value, attacks: &[AttackKind]) -> Option<SampleResult> {
    parse_entry(v, attacks, 0, None)
}

/// The keys [`build_report`] writes (a merge recomputes them; the rest is carried over).
pub const COMPUTED_KEYS: [&str; 11] = [
    "clean_accuracy",
    "robust_accuracy",
    "n",
    "per_attack",
    "robust",
    "attacks",
    "clean",
    "fooled_by",
    "rejected_claims",
    "ci95",
    "per_class",
];

/// Append-only journal of finished samples.
pub struct Journal {
    path: PathBuf,
    lines: File,
    adv: File,
    adv_records: u64,
    d: usize,
}

impl Journal {
    /// Opens (or creates) the journal at `path` for a run with `fingerprint`; returns it with
    /// the samples already done. `resume = false` starts afresh.
    pub fn open(
        path: &Path,
        fingerprint: &Value,
        d: usize,
        attacks: &[AttackKind],
        resume: bool,
    ) -> Result<(Journal, HashMap<u64, SampleResult>)> {
        let adv_path = {
            let mut s = path.as_os_str().to_owned();
            s.push(".adv");
            PathBuf::from(s)
        };
        let mut done = HashMap::new();
        let mut valid_len = 0u64;
        let exists = path.exists();
        if resume && exists {
            let (mut rd, header_len) = read_journal_header(path, fingerprint)?;
            valid_len = header_len;
            let mut adv_file = File::open(&adv_path).ok();
            loop {
                let mut line = String::new();
                let got = rd.read_line(&mut line).map_err(|e| Error::io(path, e))?;
                if got == 0 || !line.ends_with('\n') {
                    break; // end, or a torn last line: redo that sample
                }
                let Ok(v) = serde_json::from_str::<Value>(line.trim_end()) else {
                    break;
                };
                let Some(r) = parse_entry(&v, attacks, d, adv_file.as_mut()) else {
                    break;
                };
                valid_len += got as u64;
                done.insert(r.index, r);
            }
        }
        let mut lines = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        if !resume || !exists {
            lines.set_len(0).map_err(|e| Error::io(path, e))?;
            let h = json!({"journal": 1, "fingerprint": fingerprint});
            writeln!(lines, "{h}").map_err(|e| Error::io(path, e))?;
            let _ = std::fs::remove_file(&adv_path);
        } else {
            lines.set_len(valid_len).map_err(|e| Error::io(path, e))?;
            lines
                .seek(SeekFrom::End(0))
                .map_err(|e| Error::io(path, e))?;
        }
        let adv = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&adv_path)
            .map_err(|e| Error::io(&adv_path, e))?;
        let rec = 4 * d.max(1) as u64;
        let adv_bytes = adv.metadata().map_err(|e| Error::io(&adv_path, e))?.len();
        // Drop a torn trailing record so that appends stay aligned.
        adv.set_len(adv_bytes / rec * rec)
            .map_err(|e| Error::io(&adv_path, e))?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                lines,
                adv,
                adv_records: adv_bytes / rec,
                d,
            },
            done,
        ))
    }

    /// Appends finished samples (adversarial examples first, then the lines), flushed.
    pub fn append(&mut self, results: &[SampleResult]) -> Result<()> {
        let mut text = String::new();
        for r in results {
            let adv_rec = match &r.adv {
                Some(a) if a.len() == self.d => {
                    // Records are fixed-size: a torn record from a crash is overwritten.
                    // Little-endian f32s: the cast is that layout (io::elements builds only
                    // for little-endian hosts).
                    self.adv
                        .write_all(crate::io::elements::le_bytes(a))
                        .map_err(|e| Error::io(&self.path, e))?;
                    self.adv_records += 1;
                    Some(self.adv_records - 1)
                }
                _ => None,
            };
            let v = sample_json(r, adv_rec);
            text.push_str(&v.to_string());
            text.push('\n');
        }
        self.adv.sync_data().map_err(|e| Error::io(&self.path, e))?;
        self.lines
            .write_all(text.as_bytes())
            .map_err(|e| Error::io(&self.path, e))?;
        self.lines.sync_data().map_err(|e| Error::io(&self.path, e))
    }
}

fn parse_entry(
    v: &Value,
    attacks: &[AttackKind],
    d: usize,
    adv: Option<&mut File>,
) -> Option<SampleResult> {
    let index = v.get("i")?.as_u64()?;
    let label = v.get("y")?.as_u64()? as usize;
    let clean_correct = v.get("clean")?.as_bool()?;
    let robust_after: Vec<bool> = v
        .get("robust_after")?
        .as_array()?
        .iter()
        .map(|b| b.as_bool())
        .collect::<Option<_>>()?;
    if robust_after.len() != attacks.len() {
        return None;
    }
    let by_name = |s: &str| attacks.iter().copied().find(|a| a.name() == s);
    let fooled_by = match v.get("fooled_by")? {
        Value::Null => None,
        Value::String(s) => Some(by_name(s)?),
        _ => return None,
    };
    let rejected = v
        .get("rejected")?
        .as_array()?
        .iter()
        .map(|s| s.as_str().and_then(by_name))
        .collect::<Option<Vec<_>>>()?;
    let adv = match (v.get("adv")?, adv) {
        (Value::Null, _) => None,
        (Value::Number(k), Some(f)) => {
            let k = k.as_u64()?;
            let mut rec = vec![0f32; d];
            f.seek(SeekFrom::Start(k * 4 * d as u64)).ok()?;
            f.read_exact(bytemuck::cast_slice_mut(&mut rec)).ok()?;
            Some(rec)
        }
        _ => return None,
    };
    Some(SampleResult {
        index,
        label,
        clean_correct,
        robust_after,
        fooled_by,
        rejected,
        adv,
    })
}

/// The paper's Table 2 layout: clean, each threat, and the average, with 95% intervals.
pub fn paper_table(rows: &[(String, usize, usize)]) -> String {
    // rows: (column name, correct, n)
    let mut head = String::from("|");
    let mut sep = String::from("|");
    let mut vals = String::from("|");
    let mut sum = 0.0;
    for (name, k, n) in rows {
        let p = if *n == 0 { 0.0 } else { *k as f64 / *n as f64 };
        let (lo, hi) = wilson95(*k, *n);
        let cell = format!(" {:.1} [{:.1}, {:.1}] ", 100.0 * p, 100.0 * lo, 100.0 * hi);
        let w = cell.len().max(name.len() + 2);
        head.push_str(&format!(" {:<w$}|", name, w = w - 1));
        sep.push_str(&format!("{}|", "-".repeat(w)));
        vals.push_str(&format!("{:<w$}|", cell, w = w));
        sum += p;
    }
    let avg = if rows.is_empty() {
        0.0
    } else {
        100.0 * sum / rows.len() as f64
    };
    head.push_str(" avg  |");
    sep.push_str("------|");
    vals.push_str(&format!(" {avg:.1} |"));
    format!("{head}\n{sep}\n{vals}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_is_sane() {
        let (lo, hi) = wilson95(50, 100);
        assert!(
            (lo - 0.4038).abs() < 1e-3 && (hi - 0.5962).abs() < 1e-3,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson95(0, 10);
        assert_eq!(lo, 0.0);
        assert!(hi > 0.2 && hi < 0.35);
    }
}
