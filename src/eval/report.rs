//! Output of the `mpm-eval` commands: the JSON report (through the attack's atomic JSON
//! writer), a Markdown copy of its table beside it (`<report>.md`), and table helpers.

use crate::attack::report::write_json_atomic;
use crate::data::imageio::write_atomic;
use crate::{Error, Result};
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

/// Fails at once, naming `flag`, when a file cannot be written at `path`: the path is a
/// directory, or its folder does not exist (the check `mpm-attack --report` makes). Commands
/// call it for every file they write before loading a model, so a typo costs a second, not
/// the whole evaluation.
pub fn check_output_file(flag: &str, path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::flag(flag, "empty path"));
    }
    if path.is_dir() {
        return Err(Error::flag(
            flag,
            format!("{} is a directory; give a file path", path.display()),
        ));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(Error::flag(
                flag,
                format!(
                    "{}: no such directory (to write {})",
                    parent.display(),
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Fails at once, naming `flag`, when `path` cannot become a folder the command creates
/// (with its parents) and writes into: it, or the nearest of its ancestors that exists, is
/// not a directory.
pub fn check_output_dir(flag: &str, path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(Error::flag(flag, "empty path"));
    }
    let mut p = path;
    loop {
        if p.exists() {
            if p.is_dir() {
                return Ok(());
            }
            return Err(Error::flag(
                flag,
                format!(
                    "{} is not a directory (to write into {})",
                    p.display(),
                    path.display()
                ),
            ));
        }
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q,
            _ => return Ok(()),
        }
    }
}

/// Fraction `k / n` (0 when `n` is 0).
pub fn frac(k: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        k as f64 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_are_checked_naming_the_flag() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f.txt");
        std::fs::write(&file, "x").unwrap();
        check_output_file("--json", &tmp.path().join("r.json")).unwrap();
        check_output_file("--json", &file).unwrap();
        let e = check_output_file("--json", &tmp.path().join("no/r.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--json") && e.contains("no such directory"),
            "{e}"
        );
        let e = check_output_file("--json", tmp.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--json") && e.contains("is a directory"), "{e}");
        check_output_dir("--out", &tmp.path().join("a/b/c")).unwrap();
        check_output_dir("--out", tmp.path()).unwrap();
        let e = check_output_dir("--out", &file.join("csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--out") && e.contains("not a directory"), "{e}");
    }
}
