//! `mpm-eval table`: JSON reports of several models side by side in the paper's tables.
//!
//! - Table 2 (adversarial robustness) from `mpm-attack` reports (`--threats paper`, or single
//!   threat reports, one column each): Clean, each threat, Avg.
//! - Table 3 (ImageNet-C) from `mpm-eval corruptions`: the 15 corruptions, Avg, mCE.
//! - Table 4 (OOD) from `mpm-eval ood` (one column per dataset) and the DIN column = the
//!   model-vs-human OOD accuracy (`mpm-eval human`, or `human-metrics`' mean).
//! - Table S4 from `mpm-eval human-metrics` (every model of each report, plus the humans as a
//!   reference row, never marked best).
//! - Table 5's part AP from `mpm-data part-ap` (AP, AP50, AP75 of the pseudo-labelling
//!   segmenter, one row per report: without and with the Category Filter).
//!
//! `--table 5` / `--table 6` ([`Layout`]) title and name the robustness table as one of the
//! ablation tables instead of Table 2 (docs/reproduce.md: Table 5 = the part-label ablations,
//! Table 6 = MPM's design ablations; a numbering inferred from the reference's config folders
//! and the issue, not read from the paper).
//!
//! Rows are models (reports of one model merge into one row); the best value of each column is
//! in bold (the lowest for mCE and accuracy difference). Written as `tableN.md`, `tableN.csv`
//! and `tableN.png` (a grouped bar chart, `charts::grouped_bar_chart`), plus `tables.md`.

use super::report::{csv_table, markdown_table};
use super::runs::corruption_label;
use crate::charts::{grouped_bar_chart, BarGroup};
use crate::data::corrupt::Corruption;
use crate::data::imageio::{mkdirs, write_atomic};
use crate::{Error, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One table: columns, and per model a value per column (None = not measured).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    /// Columns where lower is better.
    pub lower_better: Vec<String>,
    pub rows: Vec<(String, Vec<Option<f64>>)>,
    /// Values are fractions shown as percentages (else three decimals).
    pub percent: bool,
    /// Rows shown for reference but never marked best (the human observers in Table S4, as
    /// the benchmark's own tables leave them out of the ranking).
    pub reference_rows: Vec<String>,
    /// The chart's y axis ("" = accuracy (%) or value).
    pub y_label: String,
}

impl Table {
    fn new(title: &str, percent: bool) -> Table {
        Table {
            title: title.into(),
            percent,
            ..Default::default()
        }
    }

    /// Sets `model`'s value of `column` (adding either when new).
    pub fn set(&mut self, model: &str, column: &str, v: f64) {
        let c = match self.columns.iter().position(|x| x == column) {
            Some(c) => c,
            None => {
                self.columns.push(column.to_string());
                for r in &mut self.rows {
                    r.1.push(None);
                }
                self.columns.len() - 1
            }
        };
        let n = self.columns.len();
        let row = match self.rows.iter().position(|r| r.0 == model) {
            Some(r) => r,
            None => {
                self.rows.push((model.to_string(), vec![None; n]));
                self.rows.len() - 1
            }
        };
        self.rows[row].1[c] = Some(v);
    }

    fn fmt(&self, v: f64) -> String {
        if self.percent {
            format!("{:.1}", 100.0 * v)
        } else {
            format!("{v:.3}")
        }
    }

    /// The best row index of each column (None when the column has no value).
    pub fn best(&self) -> Vec<Option<usize>> {
        (0..self.columns.len())
            .map(|c| {
                let lower = self.lower_better.contains(&self.columns[c]);
                let mut best: Option<(usize, f64)> = None;
                for (r, row) in self.rows.iter().enumerate() {
                    if self.reference_rows.contains(&row.0) {
                        continue;
                    }
                    if let Some(v) = row.1[c] {
                        // Compare at the printed precision: equal printed values are all best.
                        let better = match best {
                            None => true,
                            Some((_, b)) => (lower && v < b) || (!lower && v > b),
                        };
                        if better {
                            best = Some((r, v));
                        }
                    }
                }
                best.map(|b| b.0)
            })
            .collect()
    }

    fn cells(&self, bold: bool) -> (Vec<String>, Vec<Vec<String>>) {
        let best = self.best();
        let mut header = vec!["Model".to_string()];
        header.extend(self.columns.iter().map(|c| {
            if self.lower_better.contains(c) {
                format!("{c} ↓")
            } else {
                c.clone()
            }
        }));
        let rows = self
            .rows
            .iter()
            .map(|(m, vals)| {
                let mut r = vec![m.clone()];
                for (c, v) in vals.iter().enumerate() {
                    r.push(match v {
                        None => "-".into(),
                        Some(v) => {
                            let s = self.fmt(*v);
                            let top = !self.reference_rows.contains(m)
                                && best[c].is_some_and(|b| {
                                    self.rows[b].1[c].map(|x| self.fmt(x)) == Some(s.clone())
                                });
                            if bold && top {
                                format!("**{s}**")
                            } else {
                                s
                            }
                        }
                    });
                }
                r
            })
            .collect();
        (header, rows)
    }

    pub fn markdown(&self) -> String {
        let (h, r) = self.cells(true);
        format!(
            "### {}\n\n{}\n\nBest per column in bold.",
            self.title,
            markdown_table(&h, &r)
        )
    }

    /// CSV: plain numbers, plus a `best` column naming the columns each row wins.
    pub fn csv(&self) -> String {
        let (mut h, mut r) = self.cells(false);
        let best = self.best();
        h.push("best_in".into());
        for (i, row) in r.iter_mut().enumerate() {
            let wins: Vec<&str> = best
                .iter()
                .enumerate()
                .filter(|_| !self.reference_rows.contains(&self.rows[i].0))
                .filter(|(c, b)| {
                    b.is_some_and(|b| {
                        self.rows[b].1[*c].map(|x| self.fmt(x))
                            == self.rows[i].1[*c].map(|x| self.fmt(x))
                    })
                })
                .map(|(c, _)| self.columns[c].as_str())
                .collect();
            row.push(wins.join(";"));
        }
        csv_table(&h, &r)
    }

    fn chart(&self, path: &Path) -> Result<()> {
        let series: Vec<String> = self.rows.iter().map(|r| r.0.clone()).collect();
        let scale = if self.percent { 100.0 } else { 1.0 };
        let groups: Vec<BarGroup> = self
            .columns
            .iter()
            .enumerate()
            .map(|(c, name)| BarGroup {
                label: name.clone(),
                values: self
                    .rows
                    .iter()
                    .map(|r| r.1[c].map(|v| v * scale).unwrap_or(f64::NAN))
                    .collect(),
            })
            .collect();
        let y = if !self.y_label.is_empty() {
            self.y_label.as_str()
        } else if self.percent {
            "accuracy (%)"
        } else {
            "value"
        };
        grouped_bar_chart(path, &self.title, y, &series, &groups)
    }
}

fn name_of(v: &Value, path: &Path) -> String {
    v.get("model")
        .and_then(|m| m.as_str())
        .filter(|m| !m.is_empty())
        .map(String::from)
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// Reports named by `--runs`: files, or folders (every `*.json` in them).
pub fn report_files(runs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for r in runs {
        if r.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(r)
                .map_err(|e| Error::io(r, e))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            v.sort();
            out.extend(v);
        } else if r.is_file() {
            out.push(r.clone());
        } else {
            return Err(Error::format(r, "--runs: no such report file or folder"));
        }
    }
    Ok(out)
}

fn threat_column(r: &Value) -> String {
    match (
        r.get("norm").and_then(|n| n.as_str()),
        r.get("eps").and_then(|e| e.as_f64()),
    ) {
        (Some("Linf"), Some(e)) if (e * 255.0 - (e * 255.0).round()).abs() < 1e-3 => {
            format!("Linf {}/255", (e * 255.0).round())
        }
        (Some(n), Some(e)) => format!("{n} {e}"),
        _ => "robust".into(),
    }
}

/// Builds the four tables from the reports (`names`: optional model names, one per file).
pub fn build(files: &[PathBuf], names: Option<&[String]>) -> Result<Vec<(&'static str, Table)>> {
    let mut t2 = Table::new(
        "Table 2: adversarial robustness (AutoAttack accuracy, %)",
        true,
    );
    let mut t3 = Table::new(
        "Table 3: ImageNet-C accuracy (%, mean over severities)",
        true,
    );
    t3.lower_better.push("mCE".into());
    let mut t4 = Table::new("Table 4: OOD accuracy (%)", true);
    let mut s4 = Table::new("Table S4: model-vs-human consistency", false);
    s4.lower_better.push("Accuracy difference".into());
    let mut ap = Table::new(TABLE5_AP_TITLE, true);
    ap.y_label = "AP (%)".into();
    if let Some(n) = names {
        if n.len() != files.len() {
            return Err(Error::flag(
                "--names",
                format!("{} names for {} report files", n.len(), files.len()),
            ));
        }
    }
    for (k, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(f, format!("not a JSON report: {e}")))?;
        let model = names
            .map(|n| n[k].clone())
            .unwrap_or_else(|| name_of(&v, f));
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let num = |x: &Value| x.as_f64();
        match kind {
            "clean" => {
                if let Some(a) = num(&v["clean_accuracy"]) {
                    t2.set(&model, "Clean", a);
                }
            }
            "corruptions" => {
                for c in Corruption::ALL {
                    if let Some(a) = num(&v["corruptions"][c.name()]["accuracy"]) {
                        t3.set(&model, corruption_label(c), a);
                    }
                }
                if let Some(a) = num(&v["average_accuracy"]) {
                    t3.set(&model, "Avg", a);
                }
                if let Some(a) = num(&v["mce"]) {
                    t3.set(&model, "mCE", a);
                }
            }
            "ood" => {
                let col = v["column"].as_str().unwrap_or("OOD").to_string();
                if let Some(a) = num(&v["accuracy"]) {
                    t4.set(&model, &col, a);
                }
            }
            "human" => {
                if let Some(a) = num(&v["ood_accuracy"]) {
                    t4.set(&model, "DIN (model-vs-human OOD accuracy)", a);
                }
            }
            _ if v.get("models").is_some_and(|m| m.is_object()) => {
                // human-metrics (contract E): every model it holds, by its own name.
                let humans = v.get("humans").map(|h| ("humans".to_string(), h.clone()));
                if humans.is_some() && !s4.reference_rows.iter().any(|r| r == "humans") {
                    s4.reference_rows.push("humans".into());
                }
                let models = v["models"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(m, r)| (m.clone(), r.clone()));
                for (m, r) in models.chain(humans) {
                    let m = &m;
                    let mean = &r["mean"];
                    for (key, col) in [
                        ("ood_accuracy", "OOD accuracy"),
                        ("accuracy_difference", "Accuracy difference"),
                        ("observed_consistency", "Observed consistency"),
                        ("error_consistency", "Error consistency"),
                    ] {
                        if let Some(a) = num(&mean[key]) {
                            s4.set(m, col, a);
                        }
                    }
                }
            }
            _ if v.get("iou_type").and_then(|t| t.as_str()) == Some("segm")
                && v.get("AP").is_some() =>
            {
                // mpm-data part-ap: pycocotools' stats by name; -1 = nothing to score.
                for key in ["AP", "AP50", "AP75"] {
                    if let Some(a) = num(&v[key]).filter(|a| *a >= 0.0) {
                        ap.set(&model, key, a);
                    }
                }
            }
            _ if v.get("threats").is_some_and(|t| t.is_object()) => {
                // mpm-attack --threats paper
                if let Some(a) = num(&v["clean_accuracy"]) {
                    t2.set(&model, "Clean", a);
                }
                for (_, r) in v["threats"].as_object().into_iter().flatten() {
                    if let Some(a) = num(&r["robust_accuracy"]) {
                        t2.set(&model, &threat_column(r), a);
                    }
                }
            }
            _ if v.get("robust_accuracy").is_some() => {
                if let Some(a) = num(&v["clean_accuracy"]) {
                    t2.set(&model, "Clean", a);
                }
                if let Some(a) = num(&v["robust_accuracy"]) {
                    t2.set(&model, &threat_column(&v), a);
                }
            }
            _ => {
                return Err(Error::format(
                    f,
                    "not a report of mpm-eval, mpm-attack or mpm-data part-ap (no 'kind', \
                     'models', 'threats', 'robust_accuracy' or segm 'AP')",
                ))
            }
        }
    }
    // Table 2's Avg: the paper's mean over the clean and robust columns of each row.
    let t2_cols = t2.columns.clone();
    let avgs: Vec<(String, f64)> = t2
        .rows
        .iter()
        .filter(|r| r.1.iter().all(|v| v.is_some()) && t2_cols.len() > 1)
        .map(|r| {
            (
                r.0.clone(),
                r.1.iter().flatten().sum::<f64>() / r.1.len() as f64,
            )
        })
        .collect();
    for (m, a) in avgs {
        t2.set(&m, "Avg", a);
    }
    Ok([
        ("table2", t2),
        ("table5_ap", ap),
        ("table3", t3),
        ("table4", t4),
        ("tableS4", s4),
    ]
    .into_iter()
    .filter(|(_, t)| !t.rows.is_empty())
    .collect())
}

const TABLE5_AP_TITLE: &str =
    "Table 5: part AP of the pseudo-labelling segmenter, without and with the Category Filter \
     (COCO segm, %)";

/// Which of the paper's tables the reports are laid out as (`mpm-eval table --table`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Tables 2, 3, 4 and S4 (and Table 5's part AP), each from the reports of its kind.
    Main,
    /// Table 5, the part-label ablations: MPM on real annotations only, on pseudo labels
    /// without and with the Category Filter (robustness, `mpm-attack` reports), and the
    /// pseudo-labelling segmenter's part AP without and with the filter (`mpm-data part-ap`).
    Table5,
    /// Table 6, MPM's design ablations: SV1 / SV2 / SV3, without top-down, object masks instead
    /// of parts, the two-stage model (robustness, `mpm-attack` reports).
    Table6,
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Layout, String> {
        match s.to_ascii_lowercase().trim_start_matches("table") {
            "main" | "2" => Ok(Layout::Main),
            "5" => Ok(Layout::Table5),
            "6" => Ok(Layout::Table6),
            _ => Err(format!(
                "'{s}': expected main (Tables 2, 3, 4, S4), 5 (part-label ablations) or 6 \
                 (MPM design ablations)"
            )),
        }
    }
}

/// Lays the tables [`build`] made out as `layout`: for Tables 5 and 6 the robustness table
/// (Table 2's columns: Clean, each threat, Avg; rows in `--runs` order) is renamed and retitled,
/// and Table 5 keeps the part-AP table beside it. Reports of other kinds (corruptions, OOD,
/// human) have no place in the ablation tables: an error naming the table they would make.
pub fn lay_out(
    tables: Vec<(&'static str, Table)>,
    layout: Layout,
) -> Result<Vec<(&'static str, Table)>> {
    let (name, title) = match layout {
        Layout::Main => return Ok(tables),
        Layout::Table5 => (
            "table5",
            "Table 5: part-label ablations, MPM trained on real annotations only or on pseudo \
             labels without / with the Category Filter (AutoAttack accuracy, %)",
        ),
        Layout::Table6 => (
            "table6",
            "Table 6: MPM design ablations, supervision levels SV1 / SV2 / SV3, top-down, object \
             masks, two-stage (AutoAttack accuracy, %)",
        ),
    };
    let mut out = Vec::new();
    for (n, mut t) in tables {
        match n {
            "table2" => {
                t.title = title.to_string();
                paper_column_order(&mut t);
                out.push((name, t));
            }
            "table5_ap" if layout == Layout::Table5 => out.push((n, t)),
            other => {
                let also = if layout == Layout::Table5 {
                    " and mpm-data part-ap reports"
                } else {
                    ""
                };
                let msg = format!(
                    "{name} is made of mpm-attack reports{also}; the reports given also make \
                     {other} ({}): leave them out, or lay them out with --table main",
                    t.title
                );
                return Err(Error::flag("--table", msg));
            }
        }
    }
    if out.is_empty() {
        return Err(Error::flag(
            "--runs",
            format!("no report held a value of {name}"),
        ));
    }
    Ok(out)
}

/// Puts a robustness table's columns in the paper's order (Clean, Linf 4/255, Linf 8/255, L1 75,
/// L2 2; `--threats paper` reports list them alphabetically), other columns after them, Avg last.
fn paper_column_order(t: &mut Table) {
    use crate::nn::zoo_list::TABLE2_COLUMNS;
    let mut order: Vec<usize> = TABLE2_COLUMNS
        .iter()
        .filter_map(|(_, c)| t.columns.iter().position(|x| x == c))
        .collect();
    let avg = t.columns.iter().position(|c| c == "Avg");
    let rest: Vec<usize> = (0..t.columns.len())
        .filter(|i| !order.contains(i) && Some(*i) != avg)
        .collect();
    order.extend(rest);
    order.extend(avg);
    t.columns = order.iter().map(|&i| t.columns[i].clone()).collect();
    for r in &mut t.rows {
        r.1 = order.iter().map(|&i| r.1[i]).collect();
    }
}

/// Table 2 with the published numbers (`assets/zoo/table2.toml`) beside the measured ones:
/// a row `NAME (paper)` for every listed model that has Table 2 numbers, right under the
/// measured row of the same name (`mpm-attack --zoo NAME` names its report's row so, or
/// `--names`), else at the end. Published rows are reference rows (never marked best); the
/// columns are put in the paper's order and Avg recomputed for every complete row.
pub fn add_published(
    tables: &mut Vec<(&'static str, Table)>,
    list: &[crate::nn::zoo_list::ZooEntry],
) {
    use crate::nn::zoo_list::TABLE2_COLUMNS;
    let t2 = match tables.iter().position(|(n, _)| *n == "table2") {
        Some(i) => &mut tables[i].1,
        None => {
            tables.insert(
                0,
                (
                    "table2",
                    Table::new(
                        "Table 2: adversarial robustness (AutoAttack accuracy, %)",
                        true,
                    ),
                ),
            );
            &mut tables[0].1
        }
    };
    // Avg is recomputed below over the final columns.
    if let Some(a) = t2.columns.iter().position(|c| c == "Avg") {
        t2.columns.remove(a);
        for r in &mut t2.rows {
            r.1.remove(a);
        }
    }
    for e in list.iter().filter(|e| !e.table2.is_empty()) {
        let row = format!("{} (paper)", e.name);
        for (key, col) in TABLE2_COLUMNS {
            if let Some(v) = e.table2.get(key) {
                t2.set(&row, col, v / 100.0);
            }
        }
        if !t2.reference_rows.contains(&row) {
            t2.reference_rows.push(row.clone());
        }
        // Move the published row under its measured twin.
        let from = t2.rows.iter().position(|r| r.0 == row);
        let twin = t2
            .rows
            .iter()
            .position(|r| r.0.eq_ignore_ascii_case(&e.name));
        if let (Some(f), Some(t)) = (from, twin) {
            let r = t2.rows.remove(f);
            let at = if t < f { t + 1 } else { t };
            t2.rows.insert(at, r);
        }
    }
    // The paper's column order, then any other measured column.
    let mut order: Vec<usize> = TABLE2_COLUMNS
        .iter()
        .filter_map(|(_, c)| t2.columns.iter().position(|x| x == c))
        .collect();
    let rest: Vec<usize> = (0..t2.columns.len())
        .filter(|i| !order.contains(i))
        .collect();
    order.extend(rest);
    t2.columns = order.iter().map(|&i| t2.columns[i].clone()).collect();
    for r in &mut t2.rows {
        r.1 = order.iter().map(|&i| r.1[i]).collect();
    }
    let cols = t2.columns.len();
    let avgs: Vec<(String, f64)> = t2
        .rows
        .iter()
        .filter(|r| cols > 1 && r.1.iter().all(|v| v.is_some()))
        .map(|r| (r.0.clone(), r.1.iter().flatten().sum::<f64>() / cols as f64))
        .collect();
    for (m, a) in avgs {
        t2.set(&m, "Avg", a);
    }
}

/// Writes `tableN.{md,csv,png}` and `tables.md` into `out`; returns the Markdown.
pub fn write(out: &Path, tables: &[(&'static str, Table)]) -> Result<String> {
    if tables.is_empty() {
        return Err(Error::flag("--runs", "no report held a table's values"));
    }
    mkdirs(out)?;
    let mut all = Vec::new();
    for (name, t) in tables {
        let md = t.markdown();
        write_atomic(
            &out.join(format!("{name}.md")),
            format!("{md}\n").as_bytes(),
        )?;
        write_atomic(&out.join(format!("{name}.csv")), t.csv().as_bytes())?;
        t.chart(&out.join(format!("{name}.png")))?;
        all.push(md);
    }
    let text = all.join("\n\n");
    write_atomic(&out.join("tables.md"), format!("{text}\n").as_bytes())?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_marks_follow_the_direction() {
        let mut t = Table::new("t", true);
        t.lower_better.push("mCE".into());
        t.set("a", "Avg", 0.5);
        t.set("b", "Avg", 0.6);
        t.set("a", "mCE", 0.7);
        t.set("b", "mCE", 0.8);
        t.set("c", "mCE", 0.9);
        assert_eq!(t.best(), vec![Some(1), Some(0)]);
        let md = t.markdown();
        assert!(md.contains("| b | **60.0** | 80.0 |"), "{md}");
        assert!(md.contains("| a | 50.0 | **70.0** |"), "{md}");
        assert!(md.contains("| c | - | 90.0 |"), "{md}");
        assert!(md.contains("mCE ↓"));
        assert!(t.csv().contains("b,60.0,80.0,Avg"), "{}", t.csv());
    }

    /// Writes `value` as `dir/name.json`.
    fn report(dir: &Path, name: &str, value: serde_json::Value) -> PathBuf {
        let p = dir.join(format!("{name}.json"));
        std::fs::write(&p, value.to_string()).unwrap();
        p
    }

    fn attack(clean: f64, linf4: f64) -> serde_json::Value {
        serde_json::json!({
            "clean_accuracy": clean,
            "threats": {
                "linf4": {"norm": "Linf", "eps": 4.0 / 255.0, "robust_accuracy": linf4},
                "l2_2": {"norm": "L2", "eps": 2.0, "robust_accuracy": linf4 / 2.0},
            }
        })
    }

    #[test]
    fn ablation_layouts_title_and_name_tables_5_and_6() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mpm = report(d, "mpm_at_in1k", attack(0.70, 0.40));
        let real = report(d, "mpm_real_only_at_in1k", attack(0.68, 0.38));
        // mpm-data part-ap reports (stats by name; -1 where nothing counts).
        let ap =
            |a: f64| serde_json::json!({"iou_type": "segm", "AP": a, "AP50": 0.6, "AP75": -1.0});
        let nocf = report(d, "ap_nocf", ap(0.372));
        let cf = report(d, "ap_cf", ap(0.407));

        let files = [real.clone(), mpm.clone(), nocf.clone(), cf.clone()];
        let names: Vec<String> = ["real only", "pseudo + CF", "without CF", "with CF"]
            .map(String::from)
            .to_vec();
        let t5 = lay_out(
            build(&files, Some(names.as_slice())).unwrap(),
            Layout::Table5,
        )
        .unwrap();
        let n: Vec<&str> = t5.iter().map(|t| t.0).collect();
        assert_eq!(n, ["table5", "table5_ap"]);
        assert!(t5[0].1.title.starts_with("Table 5: part-label ablations"));
        let md = t5[0].1.markdown();
        // Rows in --runs order, Table 2's columns in the paper's order (the report lists L2
        // first) and Avg, the mean of clean and the threats.
        assert!(
            md.contains("| Model | Clean | Linf 4/255 | L2 2 | Avg |")
                && md.contains("| real only | 68.0 | 38.0 | 19.0 | 41.7 |")
                && md.contains("| pseudo + CF | **70.0** | **40.0** | **20.0** | **43.3** |"),
            "{md}"
        );
        let ap_md = t5[1].1.markdown();
        assert!(t5[1].1.title.starts_with("Table 5: part AP"), "{ap_md}");
        assert!(
            ap_md.contains("| without CF | 37.2 | **60.0** |")
                && ap_md.contains("| with CF | **40.7** | **60.0** |")
                && !ap_md.contains("AP75"),
            "{ap_md}"
        );
        let out = d.join("t5");
        write(&out, &t5).unwrap();
        assert!(out.join("table5.md").exists() && out.join("table5_ap.csv").exists());
        assert!(!out.join("table2.md").exists());

        // Table 6: robustness reports only; a part-AP report is named as out of place.
        let t6 = lay_out(build(&[mpm.clone(), real], None).unwrap(), Layout::Table6).unwrap();
        assert_eq!(t6.len(), 1);
        assert_eq!(t6[0].0, "table6");
        assert!(t6[0].1.title.starts_with("Table 6: MPM design ablations"));
        assert_eq!(t6[0].1.rows[0].0, "mpm_at_in1k");
        let e = lay_out(build(&[mpm.clone(), cf], None).unwrap(), Layout::Table6)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--table") && e.contains("table5_ap"), "{e}");
        // The main layout is what build gives.
        let main = lay_out(build(&[mpm], None).unwrap(), Layout::Main).unwrap();
        assert_eq!(main[0].0, "table2");
        assert_eq!("6".parse::<Layout>(), Ok(Layout::Table6));
        assert_eq!("table5".parse::<Layout>(), Ok(Layout::Table5));
        assert!("7".parse::<Layout>().unwrap_err().contains("expected main"));
    }

    #[test]
    fn published_rows_sit_under_their_measured_twin() {
        let mut t = Table::new("Table 2", true);
        t.set("other", "Clean", 0.5);
        t.set("MPM_R50_GELU", "Linf 4/255", 0.4);
        t.set("MPM_R50_GELU", "Clean", 0.7);
        let mut tables = vec![("table2", t)];
        let list = crate::nn::zoo_list::table2().unwrap();
        add_published(&mut tables, &list);
        let t2 = &tables[0].1;
        let names: Vec<&str> = t2.rows.iter().map(|r| r.0.as_str()).collect();
        let i = names.iter().position(|n| *n == "MPM_R50_GELU").unwrap();
        assert_eq!(names[i + 1], "MPM_R50_GELU (paper)", "{names:?}");
        assert_eq!(
            &t2.columns[..5],
            ["Clean", "Linf 4/255", "Linf 8/255", "L1 75", "L2 2"]
        );
        let md = t2.markdown();
        // The paper's row: 67.8 / 39.1 / 13.6 / 6.2 / 24.3, Avg 30.2; never bold.
        assert!(
            md.contains("| MPM_R50_GELU (paper) | 67.8 | 39.1 | 13.6 | 6.2 | 24.3 | 30.2 |"),
            "{md}"
        );
        assert!(
            md.contains("| MPM_R50_GELU | **70.0** | **40.0** | - | - | - | - |"),
            "{md}"
        );
    }
}
