//! Sharded evaluation (`--shard I/N` in `mpm-attack` and `mpm-eval`, then `merge`).
//!
//! Rule: the ordered sample list of length n is cut into N contiguous blocks; shard I
//! (0-based, I < N) evaluates indices `floor(I*n/N) .. floor((I+1)*n/N)`. Concatenating the
//! shards in index order gives the single run's order back, and each sample keeps its global
//! index (which seeds its random streams, `attack::rng`), so a merged report holds exactly
//! the single run's per-sample results. `--shard env` reads the launcher's rank and world
//! size (`RANK`/`WORLD_SIZE` as torchrun sets them, or `SLURM_PROCID`/`SLURM_NTASKS`).
//!
//! A shard's report carries a `shard` block: its index and count, the run's fingerprint
//! without the shard (the same for every shard of one run), its per-sample results and its
//! throughput. `merge` checks the blocks ([`check_shards`]) before combining them.

use super::report::fingerprint_changes;
use crate::{Error, Result};
use serde_json::{json, Value};
use std::ops::Range;
use std::path::PathBuf;

/// Shard `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `I/N` (0 <= I < N), or `env` for the launcher's rank and world size.
    pub fn parse(s: &str) -> Result<Shard> {
        if s == "env" {
            return Self::from_env();
        }
        let bad = || {
            Error::flag(
                "--shard",
                format!("'{s}': expected I/N with 0 <= I < N (e.g. 0/4), or env"),
            )
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    fn from_env() -> Result<Shard> {
        let get = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
        };
        let (index, count) =
            match (get("RANK"), get("WORLD_SIZE")) {
                (Some(r), Some(w)) => (r, w),
                _ => match (get("SLURM_PROCID"), get("SLURM_NTASKS")) {
                    (Some(r), Some(w)) => (r, w),
                    _ => return Err(Error::flag(
                        "--shard",
                        "env: neither RANK/WORLD_SIZE (torchrun) nor SLURM_PROCID/SLURM_NTASKS \
                         (srun) is set",
                    )),
                },
            };
        if count == 0 || index >= count {
            return Err(Error::flag(
                "--shard",
                format!("env: rank {index} is not below world size {count}"),
            ));
        }
        Ok(Shard { index, count })
    }

    /// This shard's indices of an ordered list of `n` samples.
    pub fn range(&self, n: usize) -> Range<usize> {
        let at = |i: usize| (n as u128 * i as u128 / self.count as u128) as usize;
        at(self.index)..at(self.index + 1)
    }

    /// `I/N`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.index, self.count)
    }
}

/// The indices a run evaluates: all of `0..n`, or its shard's block.
pub fn indices(shard: Option<Shard>, n: usize) -> Range<usize> {
    shard.map_or(0..n, |s| s.range(n))
}

/// Checks the `shard` blocks of reports given to `merge`: every report is a shard, all have
/// the same count and fingerprint, and each index appears exactly once. Returns the reports'
/// positions sorted by shard index.
pub fn check_shards(blocks: &[(PathBuf, Value)]) -> Result<Vec<usize>> {
    if blocks.is_empty() {
        return Err(Error::Msg(
            "merge: give the shard reports to combine".into(),
        ));
    }
    let mut parsed = Vec::with_capacity(blocks.len());
    for (path, b) in blocks {
        let get = |k: &str| b.get(k).and_then(Value::as_u64).map(|v| v as usize);
        let (Some(index), Some(count), Some(fp)) =
            (get("index"), get("count"), b.get("fingerprint"))
        else {
            return Err(Error::format(
                path,
                "not a shard report (no `shard` block with index, count and fingerprint: was \
                 it written by a run with --shard?)",
            ));
        };
        parsed.push((path, index, count, fp));
    }
    let (p0, _, n0, fp0) = parsed[0];
    for &(p, i, n, fp) in &parsed[1..] {
        if n != n0 {
            return Err(Error::format(
                p,
                format!(
                    "is shard {i}/{n} but {} is one of {n0} shards: shards of one run share N",
                    p0.display()
                ),
            ));
        }
        if fp != fp0 {
            return Err(Error::format(
                p,
                format!(
                    "comes from another run than {}: {}",
                    p0.display(),
                    fingerprint_changes(fp0, fp)
                ),
            ));
        }
    }
    let mut by_index: Vec<Option<usize>> = vec![None; n0];
    for (k, &(p, i, _, _)) in parsed.iter().enumerate() {
        if i >= n0 {
            return Err(Error::format(
                p,
                format!("shard index {i} is not below {n0}"),
            ));
        }
        if let Some(prev) = by_index[i] {
            return Err(Error::format(
                p,
                format!(
                    "shard {i}/{n0} is given twice (also {})",
                    parsed[prev].0.display()
                ),
            ));
        }
        by_index[i] = Some(k);
    }
    let missing: Vec<String> = (0..n0)
        .filter(|&i| by_index[i].is_none())
        .map(|i| format!("{i}/{n0}"))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Msg(format!(
            "merge: shard{} {} missing: a merged report needs all {n0}",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", ")
        )));
    }
    Ok(by_index.into_iter().flatten().collect())
}

/// The merged report's `timing`: each shard's throughput and the N-device estimate (all
/// shards at once on N devices end when the slowest does).
pub fn merged_timing(per_shard: &[(usize, usize, f64)]) -> Value {
    let sum: f64 = per_shard.iter().map(|s| s.2).sum();
    let max = per_shard.iter().map(|s| s.2).fold(0.0f64, f64::max);
    let images: usize = per_shard.iter().map(|s| s.1).sum();
    json!({
        "per_shard": per_shard.iter().map(|&(i, n, s)| json!({
            "shard": i, "images": n, "seconds": s,
            "images_per_s": if s > 0.0 { n as f64 / s } else { 0.0 },
        })).collect::<Vec<_>>(),
        "images": images,
        "seconds_one_device": sum,
        "seconds_all_shards_at_once": max,
        "estimated_speedup": if max > 0.0 { sum / max } else { 0.0 },
        "note": "estimate: shard seconds were measured one process each; with N devices \
                 running the shards at once the wall time is the slowest shard's, if the \
                 devices and the data storage do not slow each other down",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_list_in_order() {
        for n in [0usize, 1, 5, 7, 10, 1000] {
            for count in 1..=6 {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard { index, count }.range(n);
                    assert_eq!(r.start, next, "n {n} shard {index}/{count}");
                    assert!(r.len() <= n / count + 1);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
        assert_eq!(Shard::parse("1/3").unwrap(), Shard { index: 1, count: 3 });
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn merge_refuses_foreign_missing_and_duplicate_shards() {
        let b = |i: u64, n: u64, fp: u64| json!({"index": i, "count": n, "fingerprint": {"data_hash": fp}});
        let p = |s: &str| PathBuf::from(s);
        let ok = vec![(p("b"), b(1, 2, 7)), (p("a"), b(0, 2, 7))];
        assert_eq!(check_shards(&ok).unwrap(), vec![1, 0]);
        let e = check_shards(&[(p("a"), b(0, 2, 7)), (p("b"), b(1, 2, 8))])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("another run") && e.contains("data_hash changed"),
            "{e}"
        );
        let e = check_shards(&[(p("a"), b(0, 3, 7)), (p("b"), b(2, 3, 7))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("1/3 missing"), "{e}");
        let e = check_shards(&[(p("a"), b(0, 2, 7)), (p("b"), b(0, 2, 7))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("given twice"), "{e}");
        let e = check_shards(&[(p("a"), b(0, 2, 7)), (p("b"), b(1, 3, 7))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("share N"), "{e}");
        let e = check_shards(&[(p("a"), json!({}))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a shard report"), "{e}");
    }
}
