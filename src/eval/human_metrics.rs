//! `mpm-eval human-metrics` (DESIGN.md contract E): the model-vs-human benchmark's metrics
//! (Geirhos et al., NeurIPS 2021) of model decisions against the human observers' raw data.
//!
//! What the benchmark's analysis does, and so what this does:
//! - A dataset's trials are all CSV files of its folder, read together; column names are
//!   lower-cased (`Session` -> `session`). The `condition` column is compared as pandas turns it
//!   into text after reading: each file's column gets a type (integers, floats, booleans or
//!   text), the files' types are combined (integers and floats make floats; anything else with
//!   text or booleans stays per value), then every value is printed as Python prints it. So
//!   `0.90` is condition `0.9`, `true` is `True`, and `0` next to a float file is `0.0`.
//! - An image's id is the last two `_`-separated parts of its name when the first of them
//!   starts with `n0` (an ImageNet file name), else the last part.
//! - A dataset's conditions are its experiment's (`data_conditions.tsv`) minus the excluded
//!   ones (`excluded_conditions.tsv`: undistorted images and conditions where humans are below
//!   20% accuracy); datasets without conditions are scored as one block. Every listed
//!   condition must occur in the data.
//! - OOD accuracy: a model's 16-class accuracy over all its trials in the kept conditions
//!   (pooled, not per condition), then the mean over datasets.
//! - Per model, human observer and kept condition: accuracy difference = the SQUARED
//!   difference of the two accuracies; observed consistency = the fraction of images (matched
//!   by image id, same images required) that both get right or both get wrong; error
//!   consistency = Cohen's kappa `(observed - expected) / (1 - expected)` with expected =
//!   `p1 p2 + (1 - p1)(1 - p2)` (1 when observed is 1). Averaged over conditions, then over
//!   human observers, then over datasets.
//! - Humans are the subjects named `subject-*`; every other subject of the model files is a
//!   model. The human row ("humans") pairs every two observers the same way.

use super::assets::{data_conditions, excluded_conditions, HUMAN_DATASETS};
use super::report::markdown_table;
use crate::{Error, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The benchmark's CSV columns (any case).
pub const COLUMNS: [&str; 8] = [
    "subj",
    "session",
    "trial",
    "rt",
    "object_response",
    "category",
    "condition",
    "imagename",
];

/// One decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    pub subj: String,
    pub condition: String,
    pub correct: bool,
    pub image_id: String,
}

/// Splits one CSV line into fields (RFC 4180 quotes; the benchmark's files are plain).
pub fn split_csv_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// pandas' default missing-value markers.
fn is_na(s: &str) -> bool {
    matches!(
        s,
        "" | "#N/A"
            | "#N/A N/A"
            | "#NA"
            | "-1.#IND"
            | "-1.#QNAN"
            | "-NaN"
            | "-nan"
            | "1.#IND"
            | "1.#QNAN"
            | "<NA>"
            | "N/A"
            | "NA"
            | "NULL"
            | "NaN"
            | "None"
            | "n/a"
            | "nan"
            | "null"
    )
}

fn parse_int(s: &str) -> Option<i64> {
    let t = s.trim();
    let d = t.strip_prefix(['+', '-']).unwrap_or(t);
    (!d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .then(|| t.parse().ok())
        .flatten()
}

fn parse_float(s: &str) -> Option<f64> {
    let t = s.trim();
    let l = t.to_ascii_lowercase();
    let body = l.strip_prefix(['+', '-']).unwrap_or(&l);
    if matches!(body, "inf" | "infinity") {
        return Some(if l.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    // Digits, one point, an exponent: nothing Rust accepts beyond pandas' parser ("inf" done).
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_digit() || b".e+-".contains(&b))
    {
        return None;
    }
    t.parse().ok()
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "True" | "TRUE" | "true" => Some(true),
        "False" | "FALSE" | "false" => Some(false),
        _ => None,
    }
}

/// Python's `repr(float)`: shortest round-trip digits, `.0` on whole numbers, exponent form
/// below 1e-4 and from 1e16 (`1e-05`, `1e+16`).
pub fn python_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let e = format!("{v:e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{v}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        format!("{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// The type pandas gives one file's `condition` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ColType {
    Int,
    Float,
    Bool,
    Text,
}

fn column_type(values: &[String]) -> ColType {
    let vals: Vec<&str> = values.iter().map(String::as_str).collect();
    let has_na = vals.iter().any(|v| is_na(v));
    let present: Vec<&str> = vals.iter().copied().filter(|v| !is_na(v)).collect();
    if present.is_empty() {
        return ColType::Float; // all missing: float NaN
    }
    if present.iter().all(|v| parse_int(v).is_some()) {
        return if has_na { ColType::Float } else { ColType::Int };
    }
    if present.iter().all(|v| parse_float(v).is_some()) {
        return ColType::Float;
    }
    if !has_na && present.iter().all(|v| parse_bool(v).is_some()) {
        return ColType::Bool;
    }
    ColType::Text
}

/// How pandas prints one raw value of a column of type `t` (after concatenation to `joint`).
fn as_pandas_text(raw: &str, t: ColType, joint: ColType) -> String {
    if is_na(raw) {
        return "nan".into();
    }
    match (t, joint) {
        (ColType::Int, ColType::Float) | (ColType::Float, _) => {
            python_float(parse_float(raw).unwrap_or(f64::NAN))
        }
        (ColType::Int, _) => parse_int(raw).map(|v| v.to_string()).unwrap_or_default(),
        (ColType::Bool, _) => match parse_bool(raw) {
            Some(true) => "True".into(),
            _ => "False".into(),
        },
        (ColType::Text, _) => raw.to_string(),
    }
}

/// The combined type of concatenated columns.
fn joint_type(types: &[ColType]) -> ColType {
    let all = |t: ColType| types.iter().all(|&x| x == t);
    if all(ColType::Int) {
        ColType::Int
    } else if types
        .iter()
        .all(|&x| x == ColType::Int || x == ColType::Float)
    {
        ColType::Float
    } else if all(ColType::Bool) {
        ColType::Bool
    } else {
        ColType::Text
    }
}

/// The benchmark's image id (`get_short_imagename`).
pub fn short_image_name(imagename: &str) -> String {
    let parts: Vec<&str> = imagename.split('_').collect();
    if parts.len() > 1 {
        let a = parts[parts.len() - 2];
        let b = parts[parts.len() - 1];
        if a.starts_with("n0") {
            format!("{a}_{b}")
        } else {
            b.to_string()
        }
    } else {
        imagename.to_string()
    }
}

/// One CSV file's rows (raw strings, columns in `COLUMNS` order).
struct RawFile {
    path: PathBuf,
    rows: Vec<[String; 8]>,
}

fn read_raw(path: &Path) -> Result<RawFile> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .ok_or_else(|| Error::format(path, "empty CSV file (no header)"))?;
    let names: Vec<String> = split_csv_line(header)
        .iter()
        .map(|s| s.trim().to_lowercase())
        .collect();
    let missing: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .filter(|c| !names.iter().any(|n| n == c))
        .collect();
    if !missing.is_empty() {
        return Err(Error::format(
            path,
            format!(
                "not a model-vs-human CSV: missing column(s) {} (expected {}; found {})",
                missing.join(", "),
                COLUMNS.join(","),
                names.join(",")
            ),
        ));
    }
    let pos: Vec<usize> = COLUMNS
        .iter()
        .map(|c| names.iter().position(|n| n == c).unwrap_or(0))
        .collect();
    let mut rows = Vec::new();
    for (ln, line) in lines.enumerate() {
        let f = split_csv_line(line);
        if f.len() != names.len() {
            return Err(Error::format(
                path,
                format!(
                    "row {}: {} fields, the header has {}",
                    ln + 2,
                    f.len(),
                    names.len()
                ),
            ));
        }
        rows.push(std::array::from_fn(|k| f[pos[k]].clone()));
    }
    if rows.is_empty() {
        return Err(Error::format(path, "CSV file has a header but no trials"));
    }
    Ok(RawFile {
        path: path.to_path_buf(),
        rows,
    })
}

/// All trials of one dataset: the files read together, conditions as pandas prints them.
/// Returns the trials and the source file of each.
fn trials_of(files: &[PathBuf]) -> Result<Vec<(Trial, usize)>> {
    let raw: Vec<RawFile> = files.iter().map(|p| read_raw(p)).collect::<Result<_>>()?;
    let types: Vec<ColType> = raw
        .iter()
        .map(|f| column_type(&f.rows.iter().map(|r| r[6].clone()).collect::<Vec<_>>()))
        .collect();
    let joint = joint_type(&types);
    let mut out = Vec::new();
    for (k, (f, &t)) in raw.iter().zip(&types).enumerate() {
        for (ln, r) in f.rows.iter().enumerate() {
            if r[7].is_empty() {
                return Err(Error::format(
                    &f.path,
                    format!("row {}: empty imagename", ln + 2),
                ));
            }
            let resp = &r[4];
            out.push((
                Trial {
                    subj: r[0].clone(),
                    condition: as_pandas_text(&r[6], t, joint),
                    // pandas reads empty cells as NaN, which equals nothing.
                    correct: !is_na(resp) && resp == &r[5],
                    image_id: short_image_name(&r[7]),
                },
                k,
            ));
        }
    }
    Ok(out)
}

fn is_human(subj: &str) -> bool {
    subj.starts_with("subject-")
}

/// The four metrics of one decision maker on one dataset (or averaged).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Metrics {
    pub ood_accuracy: f64,
    pub accuracy_difference: f64,
    pub observed_consistency: f64,
    pub error_consistency: f64,
}

impl Metrics {
    pub fn to_json(&self) -> Value {
        json!({"ood_accuracy": self.ood_accuracy, "accuracy_difference": self.accuracy_difference,
               "observed_consistency": self.observed_consistency, "error_consistency": self.error_consistency})
    }
    fn mean(all: &[Metrics]) -> Metrics {
        let n = all.len().max(1) as f64;
        Metrics {
            ood_accuracy: all.iter().map(|m| m.ood_accuracy).sum::<f64>() / n,
            accuracy_difference: all.iter().map(|m| m.accuracy_difference).sum::<f64>() / n,
            observed_consistency: all.iter().map(|m| m.observed_consistency).sum::<f64>() / n,
            error_consistency: all.iter().map(|m| m.error_consistency).sum::<f64>() / n,
        }
    }
}

fn accuracy(t: &[&Trial]) -> f64 {
    t.iter().filter(|t| t.correct).count() as f64 / t.len() as f64
}

/// (squared accuracy difference, observed consistency, error consistency) of two decision
/// makers on the same images.
fn pair_metrics(a: &[&Trial], b: &[&Trial], what: &dyn Fn() -> String) -> Result<(f64, f64, f64)> {
    if a.is_empty() || b.is_empty() {
        return Err(Error::Msg(format!("{}: no trials", what())));
    }
    if a.len() != b.len() {
        return Err(Error::Msg(format!(
            "{}: {} trials against {}: error consistency needs the same images",
            what(),
            a.len(),
            b.len()
        )));
    }
    let (p1, p2) = (accuracy(a), accuracy(b));
    let mut a: Vec<&&Trial> = a.iter().collect();
    let mut b: Vec<&&Trial> = b.iter().collect();
    a.sort_by(|x, y| x.image_id.cmp(&y.image_id));
    b.sort_by(|x, y| x.image_id.cmp(&y.image_id));
    if let Some((x, y)) = a.iter().zip(&b).find(|(x, y)| x.image_id != y.image_id) {
        return Err(Error::Msg(format!(
            "{}: the two saw different images (e.g. '{}' against '{}'); trials are matched by image id",
            what(),
            x.image_id,
            y.image_id
        )));
    }
    let observed = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.correct == y.correct)
        .count() as f64
        / a.len() as f64;
    let expected = p1 * p2 + (1.0 - p1) * (1.0 - p2);
    let kappa = if observed == 1.0 {
        1.0
    } else {
        (observed - expected) / (1.0 - expected)
    };
    Ok(((p1 - p2).powi(2), observed, kappa))
}

/// One dataset's trials, grouped by decision maker and condition.
struct DatasetTrials {
    name: String,
    /// `None`: the dataset is scored as one block.
    conditions: Vec<Option<String>>,
    trials: Vec<Trial>,
}

impl DatasetTrials {
    fn of<'a>(&'a self, subj: &str, cond: &Option<String>) -> Vec<&'a Trial> {
        self.trials
            .iter()
            .filter(|t| t.subj == subj && cond.as_ref().is_none_or(|c| &t.condition == c))
            .collect()
    }

    /// Metrics of `who` against each of `others` (pairs with itself skipped), averaged over
    /// conditions, then over the others. `ood`: pooled accuracy of `who` in the kept conditions.
    fn against(&self, who: &[String], others: &[String]) -> Result<Metrics> {
        let kept: Vec<&Trial> = self
            .trials
            .iter()
            .filter(|t| who.contains(&t.subj))
            .filter(|t| {
                self.conditions
                    .iter()
                    .any(|c| c.as_ref().is_none_or(|c| &t.condition == c))
            })
            .collect();
        if kept.is_empty() {
            return Err(Error::Msg(format!(
                "dataset {}: no trials of {} in the kept conditions",
                self.name,
                who.join(",")
            )));
        }
        let ood_accuracy = accuracy(&kept);
        let mut per_other = Vec::new();
        for m in who {
            for h in others.iter().filter(|h| *h != m) {
                let mut per_cond = Vec::new();
                for c in &self.conditions {
                    let what = || {
                        format!(
                            "dataset {}, condition {}, {m} vs {h}",
                            self.name,
                            c.as_deref().unwrap_or("(all)")
                        )
                    };
                    per_cond.push(pair_metrics(&self.of(m, c), &self.of(h, c), &what)?);
                }
                let n = per_cond.len() as f64;
                per_other.push((
                    per_cond.iter().map(|v| v.0).sum::<f64>() / n,
                    per_cond.iter().map(|v| v.1).sum::<f64>() / n,
                    per_cond.iter().map(|v| v.2).sum::<f64>() / n,
                ));
            }
        }
        let n = per_other.len().max(1) as f64;
        Ok(Metrics {
            ood_accuracy,
            accuracy_difference: per_other.iter().map(|v| v.0).sum::<f64>() / n,
            observed_consistency: per_other.iter().map(|v| v.1).sum::<f64>() / n,
            error_consistency: per_other.iter().map(|v| v.2).sum::<f64>() / n,
        })
    }
}

fn csv_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "csv"))
        .collect();
    v.sort();
    Ok(v)
}

/// The dataset a model CSV belongs to: the longest known name that prefixes `<name>_`.
pub fn dataset_of_file(file_name: &str) -> Option<&'static str> {
    HUMAN_DATASETS
        .iter()
        .copied()
        .filter(|d| file_name.starts_with(&format!("{d}_")))
        .max_by_key(|d| d.len())
}

/// Model CSVs under `dir` (flat, or in `<dataset>/` folders), by dataset.
pub fn model_files(dir: &Path) -> Result<BTreeMap<&'static str, Vec<PathBuf>>> {
    let mut out: BTreeMap<&'static str, Vec<PathBuf>> = BTreeMap::new();
    let mut files = csv_files(dir)?;
    for d in HUMAN_DATASETS {
        let sub = dir.join(d);
        if sub.is_dir() {
            files.extend(csv_files(&sub)?);
        }
    }
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match dataset_of_file(&name) {
            Some(d) => out.entry(d).or_default().push(f),
            None => eprintln!(
                "human-metrics: ignoring {}: its name does not start with one of the 17 \
                 datasets (<dataset>_<model>_session-1.csv)",
                f.display()
            ),
        }
    }
    if out.is_empty() {
        return Err(Error::format(
            dir,
            "no model CSV files (<dataset>_<model>_session-1.csv) found",
        ));
    }
    Ok(out)
}

/// The human raw-data folder: `DIR/raw-data` when present, else `DIR`.
pub fn human_root(dir: &Path) -> PathBuf {
    let r = dir.join("raw-data");
    if r.is_dir() {
        r
    } else {
        dir.to_path_buf()
    }
}

/// The result: per model, per dataset and mean; the same for the human observers.
pub struct HumanMetrics {
    pub datasets: Vec<String>,
    /// Model -> (dataset -> metrics, mean).
    pub models: Vec<(String, BTreeMap<String, Metrics>, Metrics)>,
    pub humans: (BTreeMap<String, Metrics>, Metrics),
}

impl HumanMetrics {
    /// Contract E's JSON (plus a `humans` entry and the Table S4 text).
    pub fn to_json(&self) -> Value {
        let mut models = Map::new();
        for (m, per, mean) in &self.models {
            let ds: Map<String, Value> =
                per.iter().map(|(d, v)| (d.clone(), v.to_json())).collect();
            models.insert(m.clone(), json!({"datasets": ds, "mean": mean.to_json()}));
        }
        let hd: Map<String, Value> = self
            .humans
            .0
            .iter()
            .map(|(d, v)| (d.clone(), v.to_json()))
            .collect();
        json!({
            "models": models,
            "humans": {"datasets": hd, "mean": self.humans.1.to_json()},
            "datasets": self.datasets,
            "table": self.table(),
        })
    }

    /// Table S4's layout: one row per model and the human observers, three decimals.
    pub fn table(&self) -> String {
        let header: Vec<String> = [
            "Model",
            "OOD accuracy ↑",
            "Accuracy difference ↓",
            "Observed consistency ↑",
            "Error consistency ↑",
        ]
        .map(String::from)
        .to_vec();
        let row = |name: &str, m: &Metrics| {
            vec![
                name.to_string(),
                format!("{:.3}", m.ood_accuracy),
                format!("{:.3}", m.accuracy_difference),
                format!("{:.3}", m.observed_consistency),
                format!("{:.3}", m.error_consistency),
            ]
        };
        let mut rows: Vec<Vec<String>> = self.models.iter().map(|(m, _, v)| row(m, v)).collect();
        rows.push(row("humans", &self.humans.1));
        markdown_table(&header, &rows)
    }
}

/// Computes contract E's metrics. `datasets`: `None` = every dataset with model CSVs.
pub fn compute(
    model_dir: &Path,
    human_dir: &Path,
    datasets: Option<&[String]>,
) -> Result<HumanMetrics> {
    let by_dataset = model_files(model_dir)?;
    let hroot = human_root(human_dir);
    let names: Vec<String> = match datasets {
        None => HUMAN_DATASETS
            .iter()
            .filter(|d| by_dataset.contains_key(*d))
            .map(|d| d.to_string())
            .collect(),
        Some(list) => {
            for d in list {
                if !HUMAN_DATASETS.contains(&d.as_str()) {
                    return Err(Error::flag(
                        "--datasets",
                        format!(
                            "unknown dataset '{d}'; one of {}",
                            HUMAN_DATASETS.join(", ")
                        ),
                    ));
                }
                if !by_dataset.contains_key(d.as_str()) {
                    return Err(Error::format(
                        model_dir,
                        format!("no model CSV for dataset '{d}' ({d}_<model>_session-1.csv)"),
                    ));
                }
            }
            list.to_vec()
        }
    };
    let all_conditions = data_conditions();
    let excluded = excluded_conditions();
    let mut per_model: BTreeMap<String, BTreeMap<String, Metrics>> = BTreeMap::new();
    let mut model_order: Vec<String> = Vec::new();
    let mut humans_per: BTreeMap<String, Metrics> = BTreeMap::new();
    for d in &names {
        let hdir = hroot.join(d);
        if !hdir.is_dir() {
            return Err(Error::format(
                &hdir,
                format!("no human data for dataset '{d}' (expected <human-data>/{d}/*.csv, the benchmark's raw-data)"),
            ));
        }
        let hfiles = csv_files(&hdir)?;
        if hfiles.is_empty() {
            return Err(Error::format(&hdir, "no CSV files"));
        }
        let mfiles = &by_dataset[d.as_str()];
        let n_human_files = hfiles.len();
        let files: Vec<PathBuf> = hfiles.into_iter().chain(mfiles.iter().cloned()).collect();
        let tagged = trials_of(&files)?;
        // Humans come from the human folder, models from the model files.
        let trials: Vec<Trial> = tagged
            .into_iter()
            .filter(|(t, k)| (*k < n_human_files) == is_human(&t.subj))
            .map(|(t, _)| t)
            .collect();
        let full = all_conditions.get(d).cloned().unwrap_or_default();
        let present: std::collections::HashSet<&str> =
            trials.iter().map(|t| t.condition.as_str()).collect();
        if let Some(c) = full.iter().find(|c| !present.contains(c.as_str())) {
            return Err(Error::format(
                hroot.join(d),
                format!(
                    "dataset {d}: condition '{c}' of the benchmark's experiment is not in the data \
                     (found: {})",
                    {
                        let mut v: Vec<&&str> = present.iter().collect();
                        v.sort();
                        v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
                    }
                ),
            ));
        }
        let ex = excluded.get(d).cloned().unwrap_or_default();
        let conditions: Vec<Option<String>> = if full.is_empty() {
            vec![None]
        } else {
            full.into_iter()
                .filter(|c| !ex.contains(c))
                .map(Some)
                .collect()
        };
        let mut humans: Vec<String> = Vec::new();
        let mut models: Vec<String> = Vec::new();
        for t in &trials {
            let list = if is_human(&t.subj) {
                &mut humans
            } else {
                &mut models
            };
            if !list.contains(&t.subj) {
                list.push(t.subj.clone());
            }
        }
        if humans.is_empty() {
            return Err(Error::format(
                hroot.join(d),
                "no human observers (subj subject-*)",
            ));
        }
        if models.is_empty() {
            return Err(Error::format(
                model_dir,
                format!("dataset {d}: the model files hold no model trials (subj not subject-*)"),
            ));
        }
        humans.sort();
        let ds = DatasetTrials {
            name: d.clone(),
            conditions,
            trials,
        };
        for m in &models {
            let v = ds.against(std::slice::from_ref(m), &humans)?;
            per_model.entry(m.clone()).or_default().insert(d.clone(), v);
            if !model_order.contains(m) {
                model_order.push(m.clone());
            }
        }
        // Human observers: every pair once; OOD accuracy pooled over all of them.
        let mut hv = Vec::new();
        for (i, a) in humans.iter().enumerate() {
            let later: Vec<String> = humans[i + 1..].to_vec();
            if !later.is_empty() {
                hv.push(ds.against(std::slice::from_ref(a), &later)?);
            }
        }
        let pooled = ds.against(&humans, &[])?.ood_accuracy;
        // The benchmark averages human pairs over conditions, then all pairs together.
        let mut hm = weighted_pairs(&hv, &humans);
        hm.ood_accuracy = pooled;
        humans_per.insert(d.clone(), hm);
    }
    let mut models = Vec::new();
    for m in model_order {
        let per = per_model.remove(&m).unwrap_or_default();
        let missing: Vec<&String> = names.iter().filter(|d| !per.contains_key(*d)).collect();
        if !missing.is_empty() {
            eprintln!(
                "human-metrics: model {m} has no CSV for {:?}: its mean is over its other datasets",
                missing
            );
        }
        let mean = Metrics::mean(&per.values().copied().collect::<Vec<_>>());
        models.push((m, per, mean));
    }
    let hmean = Metrics::mean(&humans_per.values().copied().collect::<Vec<_>>());
    Ok(HumanMetrics {
        datasets: names,
        models,
        humans: (humans_per, hmean),
    })
}

fn pair_count(h: &[String]) -> usize {
    h.len() * h.len().saturating_sub(1) / 2
}

/// `against(a, later)` averages over the later observers; the benchmark's human figure is
/// the plain mean over all pairs, so each observer's mean is weighted by its pair count.
fn weighted_pairs(per_first: &[Metrics], humans: &[String]) -> Metrics {
    let n = humans.len();
    let total = pair_count(humans).max(1) as f64;
    let mut acc = Metrics::default();
    for (i, m) in per_first.iter().enumerate() {
        let w = (n - 1 - i) as f64 / total;
        acc.accuracy_difference += w * m.accuracy_difference;
        acc.observed_consistency += w * m.observed_consistency;
        acc.error_consistency += w * m.error_consistency;
    }
    acc
}

/// A model's OOD accuracy on one dataset from its CSV alone (trials in the kept conditions,
/// conditions read as the benchmark reads them): (accuracy, trials counted).
pub fn ood_accuracy_of_file(dataset: &str, csv: &Path) -> Result<(f64, usize)> {
    let trials: Vec<Trial> = trials_of(&[csv.to_path_buf()])?
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let full = data_conditions().get(dataset).cloned().unwrap_or_default();
    let ex = excluded_conditions()
        .get(dataset)
        .cloned()
        .unwrap_or_default();
    let kept: Vec<&Trial> = trials
        .iter()
        .filter(|t| full.is_empty() || (full.contains(&t.condition) && !ex.contains(&t.condition)))
        .collect();
    if kept.is_empty() {
        return Ok((0.0, 0));
    }
    Ok((accuracy(&kept), kept.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_print_as_pandas_does() {
        assert_eq!(python_float(0.9), "0.9");
        assert_eq!(python_float(3.0), "3.0");
        assert_eq!(python_float(0.55), "0.55");
        assert_eq!(python_float(1e-5), "1e-05");
        assert_eq!(python_float(1e16), "1e+16");
        assert_eq!(python_float(f64::INFINITY), "inf");
        let col = |v: &[&str]| column_type(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(col(&["0.90", "0.0"]), ColType::Float);
        assert_eq!(col(&["inf", "3.0"]), ColType::Float);
        assert_eq!(col(&["0", "40"]), ColType::Int);
        assert_eq!(col(&["true", "false"]), ColType::Bool);
        assert_eq!(col(&["0", "pow"]), ColType::Text);
        assert_eq!(
            as_pandas_text("0.90", ColType::Float, ColType::Float),
            "0.9"
        );
        assert_eq!(as_pandas_text("true", ColType::Bool, ColType::Bool), "True");
        assert_eq!(as_pandas_text("0", ColType::Int, ColType::Float), "0.0");
        assert_eq!(as_pandas_text("0", ColType::Int, ColType::Text), "0");
        assert_eq!(joint_type(&[ColType::Int, ColType::Float]), ColType::Float);
        assert_eq!(joint_type(&[ColType::Bool, ColType::Int]), ColType::Text);
    }

    #[test]
    fn image_ids_and_csv_fields() {
        assert_eq!(
            short_image_name("0000_cl_s01_bw_boat_40_n02951358_5952.JPEG"),
            "n02951358_5952.JPEG"
        );
        assert_eq!(
            short_image_name("airplane1-bicycle2.png"),
            "airplane1-bicycle2.png"
        );
        assert_eq!(
            short_image_name("0001_s5n_s01_0_bird_00_bird3-bird2.png"),
            "bird3-bird2.png"
        );
        assert_eq!(
            split_csv_line("a,\"b,c\",\"d\"\"e\","),
            vec!["a", "b,c", "d\"e", ""]
        );
        assert_eq!(
            dataset_of_file("eidolonII_my_model_session-1.csv"),
            Some("eidolonII")
        );
        assert_eq!(
            dataset_of_file("eidolonI_m_session-1.csv"),
            Some("eidolonI")
        );
        assert_eq!(dataset_of_file("foo_m_session-1.csv"), None);
    }
}
