//! `mpm-eval human`: the model on the 17 model-vs-human datasets, its decisions written as the
//! benchmark's own session files, so the benchmark's plotting toolkit (and `mpm-eval
//! human-metrics`) read them unchanged.
//!
//! Stimuli: the benchmark's dataset archives unpacked as `<data>/<dataset>/dnn/session-1/*.png`
//! (224-px images, fed as they are). Image names follow the benchmark's pattern
//! `<trial>_<exp>_<subject>_<condition>_<category>_...`: the condition is the 4th
//! `_`-separated field and the true category the 5th. Decision: softmax over the 1,000 classes,
//! each of the 16 categories scored by the MEAN probability of its ImageNet classes
//! (`sixteen_class_indices.tsv`), the best category answers.
//! Output: `<out>/<dataset>_<model>_session-1.csv` (model name with `_` replaced by `-`, as the
//! benchmark names its files), columns `subj,session,trial,rt,object_response,category,
//! condition,imagename`, trials numbered in the order of the sorted file names, `rt` = NaN.

use super::assets::{sixteen_classes, HUMAN_DATASETS};
use super::human_metrics::ood_accuracy_of_file;
use super::predict::{tally, Head, Outcome};
use super::report::{frac, markdown_table, pct};
use super::runs::Runner;
use super::sets::{EvalTransform, Images};
use crate::data::imageio::{mkdirs, write_atomic};
use crate::{Error, Result};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// Condition and category of a stimulus file name, or why it does not follow the pattern.
pub fn parse_stimulus_name(name: &str) -> std::result::Result<(String, String), String> {
    let f: Vec<&str> = name.split('_').collect();
    if f.len() < 5 {
        return Err(format!(
            "'{name}' does not follow <trial>_<exp>_<subject>_<condition>_<category>_..."
        ));
    }
    Ok((f[3].to_string(), f[4].to_string()))
}

/// The stimuli folder of one dataset under `data` (`<data>/<dataset>/dnn/session-1`, also
/// accepted under `<data>/datasets/`).
pub fn stimuli_dir(data: &Path, dataset: &str) -> Option<PathBuf> {
    [data.to_path_buf(), data.join("datasets")]
        .into_iter()
        .map(|r| r.join(dataset).join("dnn").join("session-1"))
        .find(|p| p.is_dir())
}

/// A dataset's set, each item's (condition, file name), and the names skipped (why).
type Stimuli = (Images, Vec<(String, String)>, Vec<String>);

/// One dataset's stimuli as an evaluation set (labels = category positions); names that do not
/// follow the pattern or name no known category are returned as skips.
fn stimuli(dir: &Path, dataset: &str, categories: &[String], crop: u32) -> Result<Stimuli> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
                })
        })
        .collect();
    files.sort();
    let mut items = Vec::new();
    let mut info = Vec::new();
    let mut skipped = Vec::new();
    for p in files {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match parse_stimulus_name(&name) {
            Ok((cond, cat)) => match categories.iter().position(|c| *c == cat) {
                Some(ci) => {
                    items.push((p, ci));
                    info.push((cond, name));
                }
                None => skipped.push(format!("{name}: category '{cat}' is not one of the 16")),
            },
            Err(e) => skipped.push(e),
        }
    }
    if items.is_empty() {
        return Err(Error::format(
            dir,
            format!("{dataset}: no stimuli found (expected <dataset>/dnn/session-1/*.png)"),
        ));
    }
    let set = Images {
        root: dir.to_path_buf(),
        classes: categories.to_vec(),
        items,
        transform: EvalTransform::AsIs { crop },
        corruption: None,
        what: dataset.to_string(),
    };
    Ok((set, info, skipped))
}

/// The benchmark's file name for a model's decisions on a dataset.
pub fn csv_name(dataset: &str, model: &str) -> String {
    format!("{dataset}_{}_session-1.csv", model.replace('_', "-"))
}

/// Runs the datasets and writes one CSV per dataset into `out`; returns the JSON report.
pub fn run(
    r: &mut Runner,
    data: &Path,
    out: &Path,
    datasets: &[String],
    crop: u32,
) -> Result<Value> {
    let cats = sixteen_classes()?;
    let names: Vec<String> = cats.iter().map(|c| c.0.clone()).collect();
    let head = Head::Categories(cats.iter().map(|c| c.1.clone()).collect());
    let dirs: Vec<(String, PathBuf)> = datasets
        .iter()
        .map(|d| {
            stimuli_dir(data, d).map(|p| (d.clone(), p)).ok_or_else(|| {
                Error::format(
                    data,
                    format!(
                        "missing model-vs-human dataset '{d}': expected {}/{d}/dnn/session-1/ \
                         (unpack the benchmark's {d}.tar.gz there, or pass --datasets)",
                        data.display()
                    ),
                )
            })
        })
        .collect::<Result<_>>()?;
    mkdirs(out)?;
    let mut per = Map::new();
    let mut rows = Vec::new();
    let (mut all_right, mut all_n) = (0usize, 0usize);
    let mut ood = Vec::new();
    for (d, dir) in &dirs {
        let (set, info, name_skips) = stimuli(dir, d, &names, crop)?;
        for s in &name_skips {
            eprintln!("human {d}: skipping {s}");
        }
        let subset = HUMAN_DATASETS.iter().position(|x| x == d).unwrap_or(99) as u32;
        let outcomes = r.run(&set, std::slice::from_ref(&head), subset, d)?;
        let mut csv =
            String::from("subj,session,trial,rt,object_response,category,condition,imagename\n");
        let mut trial = 0usize;
        // A shard's outcomes are its block of the images (`--shard`).
        for (o, (cond, img)) in outcomes.iter().zip(&info[r.indices(info.len())]) {
            if let Outcome::Done { label, answers } = o {
                trial += 1;
                csv.push_str(&format!(
                    "{},1,{trial},NaN,{},{},{cond},{img}\n",
                    r.name, names[answers[0] as usize], names[*label]
                ));
            }
        }
        let path = out.join(csv_name(d, &r.name));
        write_atomic(&path, csv.as_bytes())?;
        let (right, n, skipped) = tally(&outcomes, 0);
        all_right += right;
        all_n += n;
        let (ood_acc, ood_n) = ood_accuracy_of_file(d, &path)?;
        ood.push(ood_acc);
        rows.push(vec![
            d.clone(),
            pct(Some(frac(right, n))),
            pct(Some(ood_acc)),
        ]);
        per.insert(
            d.clone(),
            json!({"accuracy": frac(right, n), "n": n, "skipped": skipped + name_skips.len(),
                   "ood_accuracy": ood_acc, "ood_trials": ood_n, "csv": path.display().to_string()}),
        );
    }
    let ood_mean = ood.iter().sum::<f64>() / ood.len().max(1) as f64;
    rows.push(vec![
        "mean".into(),
        pct(Some(frac(all_right, all_n))),
        pct(Some(ood_mean)),
    ]);
    let table = markdown_table(
        &[
            "Dataset".into(),
            "16-class accuracy (all images)".into(),
            "OOD accuracy (benchmark)".into(),
        ],
        &rows,
    );
    println!("{table}");
    Ok(json!({
        "kind": "human", "model": r.name, "data": data.display().to_string(),
        "out": out.display().to_string(),
        "decision": "mean softmax probability over each category's ImageNet classes",
        "datasets": per,
        "ood_accuracy": ood_mean,
        "ood_accuracy_note": "model-vs-human's OOD accuracy: per dataset, 16-class accuracy over the trials of the kept conditions (excluded_conditions.tsv), then the mean over datasets",
        "pooled_accuracy": frac(all_right, all_n), "pooled_n": all_n,
        "table": table,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stimulus_names_give_condition_and_category() {
        assert_eq!(
            parse_stimulus_name("0002_nse_s01_0.90_knife_10_n03041632_82878.png").unwrap(),
            ("0.90".to_string(), "knife".to_string())
        );
        assert!(parse_stimulus_name("knife.png").is_err());
        assert_eq!(csv_name("edge", "my_model"), "edge_my-model_session-1.csv");
    }
}
