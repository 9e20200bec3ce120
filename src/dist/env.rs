//! The rank environment of a process, as `torchrun` / `torch.distributed` set it (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) or as Slurm's `srun` sets it
//! (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`; the master address and port still come
//! from `MASTER_ADDR` / `MASTER_PORT`, which a batch script exports). The torchrun variables
//! win when both are set. No variable at all: one process, world size 1.

use crate::{Error, Result};

/// Where this process stands in a data-parallel job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankEnv {
    pub rank: usize,
    pub world: usize,
    /// Rank among the processes of this node: the GPU it drives.
    pub local_rank: usize,
    /// Rendezvous address and port (rank 0 listens there). Empty / 0 for world size 1.
    pub master_addr: String,
    pub master_port: u16,
    /// Which launcher's variables were read ("torchrun", "slurm", "none").
    pub source: &'static str,
}

impl RankEnv {
    /// One process.
    pub fn single() -> RankEnv {
        RankEnv {
            rank: 0,
            world: 1,
            local_rank: 0,
            master_addr: String::new(),
            master_port: 0,
            source: "none",
        }
    }

    pub fn is_distributed(&self) -> bool {
        self.world > 1
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<RankEnv> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<RankEnv> {
        let torchrun = get("RANK").is_some() || get("WORLD_SIZE").is_some();
        let slurm = get("SLURM_PROCID").is_some() || get("SLURM_NTASKS").is_some();
        let (rank_k, world_k, local_k, source) = if torchrun {
            ("RANK", "WORLD_SIZE", "LOCAL_RANK", "torchrun")
        } else if slurm {
            ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "slurm")
        } else {
            return Ok(RankEnv::single());
        };
        let num =
            |k: &str| -> Result<Option<usize>> {
                match get(k) {
                    None => Ok(None),
                    Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                        Error::flag(k, format!("'{v}' is not a non-negative integer"))
                    }),
                }
            };
        let need = |k: &str, other: &str| -> Result<usize> {
            num(k)?.ok_or_else(|| {
                Error::flag(k, format!("not set, but {other} is: set both (or neither)"))
            })
        };
        let rank = need(rank_k, world_k)?;
        let world = need(world_k, rank_k)?;
        if world == 0 {
            return Err(Error::flag(world_k, "must be at least 1"));
        }
        if rank >= world {
            return Err(Error::flag(
                rank_k,
                format!("{rank} is not below {world_k} = {world}"),
            ));
        }
        // One node by default: the local rank is the rank.
        let local_rank = num(local_k)?.unwrap_or(rank);
        if world == 1 {
            return Ok(RankEnv {
                local_rank,
                source,
                ..RankEnv::single()
            });
        }
        let master_addr = get("MASTER_ADDR")
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                Error::flag(
                    "MASTER_ADDR",
                    format!(
                        "not set: a job of {world} ranks needs the address of rank 0's host \
                     (torchrun sets it; under srun export it from the batch script, e.g. the \
                     first host of $SLURM_JOB_NODELIST)"
                    ),
                )
            })?;
        let port = get("MASTER_PORT").ok_or_else(|| {
            Error::flag(
                "MASTER_PORT",
                format!("not set: a job of {world} ranks needs a free TCP port on rank 0's host"),
            )
        })?;
        let master_port = match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(Error::flag(
                    "MASTER_PORT",
                    format!("'{port}' is not a TCP port (1-65535)"),
                ))
            }
        };
        Ok(RankEnv {
            rank,
            world,
            local_rank,
            master_addr: master_addr.trim().to_string(),
            master_port,
            source,
        })
    }

    /// "rank 2 of 8 (local rank 2, torchrun, rendezvous host:port)".
    pub fn describe(&self) -> String {
        if !self.is_distributed() {
            return "one process (world size 1)".into();
        }
        format!(
            "rank {} of {} (local rank {}, {} variables, rendezvous {}:{})",
            self.rank, self.world, self.local_rank, self.source, self.master_addr, self.master_port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<RankEnv> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RankEnv::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_slurm_and_none() {
        assert_eq!(env(&[]).unwrap(), RankEnv::single());
        let t = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("SLURM_PROCID", "5"),
        ])
        .unwrap();
        assert_eq!(
            (t.rank, t.world, t.local_rank, t.source),
            (3, 8, 1, "torchrun")
        );
        assert_eq!((t.master_addr.as_str(), t.master_port), ("node0", 29500));
        let s = env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap();
        assert_eq!(
            (s.rank, s.world, s.local_rank, s.source),
            (5, 16, 1, "slurm")
        );
        let one = env(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap();
        assert!(!one.is_distributed());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = |p: &[(&str, &str)]| env(p).unwrap_err().to_string();
        assert!(e(&[("RANK", "x"), ("WORLD_SIZE", "2")]).starts_with("RANK:"));
        assert!(e(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("not below WORLD_SIZE"));
        assert!(e(&[("RANK", "0")]).starts_with("WORLD_SIZE: not set"));
        assert!(e(&[("RANK", "0"), ("WORLD_SIZE", "2")]).starts_with("MASTER_ADDR"));
        let p = e(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "99999"),
        ]);
        assert!(p.starts_with("MASTER_PORT: '99999'"), "{p}");
        assert!(e(&[("SLURM_PROCID", "0")]).starts_with("SLURM_NTASKS"));
    }
}
