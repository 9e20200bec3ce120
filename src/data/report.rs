//! Skipped items: every bad input is skipped, counted and logged with its path and reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One skipped (or suspicious) item.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Skip {
    pub path: PathBuf,
    pub reason: String,
}

impl Skip {
    pub fn new(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Skip {
            path: path.as_ref().to_path_buf(),
            reason: reason.into().trim().replace('\n', " "),
        }
    }
    /// From an error whose message may already start with the path: keeps only the reason.
    pub fn from_error(path: impl AsRef<Path>, e: &crate::Error) -> Self {
        let msg = e.to_string();
        let prefix = format!("{}: ", path.as_ref().display());
        let reason = msg.strip_prefix(&prefix).map(str::to_string).unwrap_or(msg);
        Skip::new(path, reason)
    }
    /// The reason with numbers and quoted names stripped, to group similar skips.
    pub fn kind(&self) -> String {
        let r = self.reason.split(':').next_back().unwrap_or(&self.reason);
        r.chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect::<String>()
            .trim()
            .chars()
            .take(70)
            .collect()
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// Counts of skips grouped by [`Skip::kind`], most frequent first.
pub fn summarise(skips: &[Skip]) -> Vec<(String, usize)> {
    let mut m: BTreeMap<String, usize> = BTreeMap::new();
    for s in skips {
        *m.entry(s.kind()).or_default() += 1;
    }
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}
