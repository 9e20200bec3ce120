//! Output of the `mpm-eval` commands: the JSON report (through the attack's atomic JSON
//! writer), a Markdown copy of its table beside it (`<report>.md`), and table helpers.

use crate::attack::report::write_json_atomic;
use crate::data::imageio::write_atomic;
use crate::Result;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A Markdown table: header row, separator, rows (cells as given).
pub fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let line = |cells: &[String]| format!("| {} |", cells.join(" | "));
    let mut out = vec![
        line(header),
        format!("|{}|", vec!["---"; header.len()].join("|")),
    ];
    out.extend(rows.iter().map(|r| line(r)));
    out.join("\n")
}

/// A CSV table (cells quoted when they hold a comma or a quote).
pub fn csv_table(header: &[String], rows: &[Vec<String>]) -> String {
    let cell = |s: &String| {
        if s.contains(',') || s.contains('"') || s.contains('\n') {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.clone()
        }
    };
    let line = |r: &[String]| r.iter().map(cell).collect::<Vec<_>>().join(",");
    let mut out = vec![line(header)];
    out.extend(rows.iter().map(|r| line(r)));
    out.join("\n") + "\n"
}

/// A fraction as a percentage with one decimal (the paper's tables), "-" when absent.
pub fn pct(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{:.1}", 100.0 * v),
        _ => "-".into(),
    }
}

/// `<path>.md` beside a report.
pub fn markdown_path(json: &Path) -> PathBuf {
    json.with_extension("md")
}

/// Writes the report and its Markdown table (atomically, both).
pub fn write_report(json: &Path, report: &Value, markdown: &str) -> Result<()> {
    write_json_atomic(json, report)?;
    write_atomic(&markdown_path(json), format!("{markdown}\n").as_bytes())
}

/// Fraction `k / n` (0 when `n` is 0).
pub fn frac(k: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        k as f64 / n as f64
    }
}
