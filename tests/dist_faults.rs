//! Data-parallel runs through the whole training loop (`run_distributed`), ranks as threads
//! on the thread stand-in communicator:
//! - two ranks train the model the one-process ghost-BN run trains (bit for bit: one group per
//!   rank, see tests/dist_equivalence.rs for why), with the same training metrics and clean
//!   accuracy (sharded evaluation, counts all-reduced), and only rank 0 writes the run folder;
//! - issue #19 item 6: a rank that dies makes the other stop at once naming it; a rank that
//!   hangs makes the other stop after the timeout (2 s here) naming it; the restarted job
//!   resumes from the last checkpoint and ends with the uninterrupted run's model, bit for bit.

use mpm::dist::local::{self, LocalComm};
use mpm::dist::{Communicator, Dist};
use mpm::tensor::Tensor;
use mpm::train::run::run_distributed;
use mpm::train::{checkpoint, run, MemorySource, RunOptions, RunSummary, TrainConfig};
use mpm::Result;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod common;
use common::tiny_mpm_config;

fn tiny() -> TrainConfig {
    let mut c = tiny_mpm_config(&[
        ("eval_every", "1"),
        ("checkpoint_every", "1"),
        ("seed", "9"),
    ]);
    // Global batch 4 in 2 batch-norm groups of 2: one process, or 2 ranks of 2 images.
    c.batch_size = 4;
    c.bn_group = 2;
    c
}

fn tmp(name: &str) -> PathBuf {
    common::tmp("dist", name)
}

fn opts(dir: &Path, resume: bool) -> RunOptions {
    RunOptions {
        run_dir: dir.to_path_buf(),
        stop_after_steps: None,
        resume: resume.then(|| dir.to_path_buf()),
        progress: false,
        plots: false,
        eval_batch_size: 0,
    }
}

/// What a rank does wrong at its `at`-th collective.
#[derive(Clone, Copy)]
enum Fault {
    None,
    Die { at: usize },
    Hang { at: usize, for_: Duration },
}

/// A thread communicator that fails as told (a killed or hung rank).
struct Faulty {
    inner: LocalComm,
    fault: Fault,
    calls: AtomicUsize,
    struck: Mutex<Option<Instant>>,
}

impl Faulty {
    fn tick(&self) -> Result<()> {
        let k = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        match self.fault {
            Fault::Die { at } if k == at => {
                *self.struck.lock().unwrap() = Some(Instant::now());
                self.inner.leave("killed by the test");
                Err(mpm::Error::Msg("this rank was killed by the test".into()))
            }
            Fault::Hang { at, for_ } if k == at => {
                *self.struck.lock().unwrap() = Some(Instant::now());
                std::thread::sleep(for_);
                Err(mpm::Error::Msg("this rank hung".into()))
            }
            _ => Ok(()),
        }
    }
}

impl Communicator for Faulty {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world(&self) -> usize {
        self.inner.world()
    }
    fn backend(&self) -> &'static str {
        "threads"
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.tick()?;
        self.inner.all_reduce_sum_f32(buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.tick()?;
        self.inner.all_reduce_sum_f64(buf)
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        self.tick()?;
        self.inner.broadcast_f32(buf, root)
    }
    fn all_gather_f32(&self, mine: &[f32]) -> Result<Vec<f32>> {
        self.tick()?;
        self.inner.all_gather_f32(mine)
    }
    fn barrier(&self) -> Result<()> {
        self.tick()?;
        self.inner.barrier()
    }
}

/// Two ranks (rank 1 with `fault`) over `dir`; each rank's result, the time rank 1's fault
/// struck and when each rank returned.
fn two_ranks(
    dir: &Path,
    resume: bool,
    fault: Fault,
    timeout: Duration,
) -> (Vec<Result<RunSummary>>, Option<Instant>, Vec<Instant>) {
    let cfg = tiny();
    let train = MemorySource::new(3, 4, 32, 1);
    let val = MemorySource::new(3, 2, 32, 2);
    let comms = local::group(2, timeout);
    let struck = std::sync::Arc::new(Mutex::new(None));
    let out: Vec<(Result<RunSummary>, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| {
                let f = if c.rank() == 1 { fault } else { Fault::None };
                let (cfg, train, val, struck) = (&cfg, &train, &val, struck.clone());
                s.spawn(move || {
                    let faulty = std::sync::Arc::new(Faulty {
                        inner: c,
                        fault: f,
                        calls: AtomicUsize::new(0),
                        struck: Mutex::new(None),
                    });
                    let dist = Dist::new(Box::new(ArcComm(faulty.clone())));
                    let r = run_distributed(cfg, train, Some(val), &opts(dir, resume), &dist);
                    drop(dist);
                    if let Some(t) = *faulty.struck.lock().unwrap() {
                        *struck.lock().unwrap() = Some(t);
                    }
                    (r, Instant::now())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let t = *struck.lock().unwrap();
    let (results, times) = out.into_iter().unzip();
    (results, t, times)
}

/// A shared `Faulty` as a boxed communicator (so the test can read when it struck).
struct ArcComm(std::sync::Arc<Faulty>);

impl Communicator for ArcComm {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world(&self) -> usize {
        self.0.world()
    }
    fn backend(&self) -> &'static str {
        "threads"
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.0.all_reduce_sum_f32(buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.0.all_reduce_sum_f64(buf)
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        self.0.broadcast_f32(buf, root)
    }
    fn all_gather_f32(&self, mine: &[f32]) -> Result<Vec<f32>> {
        self.0.all_gather_f32(mine)
    }
    fn barrier(&self) -> Result<()> {
        self.0.barrier()
    }
}

impl Drop for ArcComm {
    fn drop(&mut self) {
        // The rank is over: the others must not wait for it.
        self.0.inner.leave("exited");
    }
}

/// Every value of a checkpoint's state (model, EMA, momentum, chains), as bits.
fn state_bits(file: &Path) -> Vec<(String, Vec<u32>)> {
    let t = checkpoint::load(file, None).unwrap();
    let mut v = Vec::new();
    let bits = |x: &Tensor| x.data().iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for (which, s) in [("model", Some(&t.model)), ("ema", t.ema.as_ref())] {
        for (n, e) in s.unwrap().iter() {
            v.push((format!("{which}.{n}"), bits(&e.tensor)));
        }
    }
    for (n, b) in &t.opt.buffers {
        v.push((format!("momentum.{n}"), bits(b)));
    }
    let g = t.groups.as_ref().expect("chains in the checkpoint");
    for (i, c) in g.model.iter().chain(g.ema.iter()).enumerate() {
        for (n, x) in c {
            v.push((format!("chain{i}.{n}"), bits(x)));
        }
    }
    assert!(t.pos.epoch == 2, "the run finished");
    v
}

/// The metrics lines without the timing fields, and PGD accuracies (random starts per shard).
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.retain(|k, _| !k.contains("per_s") && k != "data_wait_fraction" && k != "pgd");
            }
            v
        })
        .filter(|v| v["kind"] != "best")
        .collect()
}

#[test]
fn two_ranks_train_the_ghost_bn_model_and_only_rank_0_writes() {
    let one = tmp("one");
    let train = MemorySource::new(3, 4, 32, 1);
    let val = MemorySource::new(3, 2, 32, 2);
    let single = run(&tiny(), &train, Some(&val), &opts(&one, false)).unwrap();
    assert!(single.finished);
    let two = tmp("two");
    let (rs, _, _) = two_ranks(&two, false, Fault::None, Duration::from_secs(60));
    for r in &rs {
        assert!(r.as_ref().unwrap().finished);
    }
    assert_eq!(
        state_bits(&two.join("checkpoints/last.safetensors")),
        state_bits(&one.join("checkpoints/last.safetensors"))
    );
    assert_eq!(metrics(&two), metrics(&one));
    let log = std::fs::read_to_string(two.join("train.log")).unwrap();
    assert_eq!(log.matches("start ").count(), 1, "{log}");
    assert!(log.contains("distributed: 2 ranks over threads"), "{log}");
    assert!(two.join("export").is_dir());
    assert_eq!(mpm::dist::train::saved_world(&two), 2);
}

#[test]
fn a_dead_rank_stops_the_other_at_once_and_the_restart_resumes_exactly() {
    let reference = tmp("uninterrupted");
    let (rs, _, _) = two_ranks(&reference, false, Fault::None, Duration::from_secs(60));
    assert!(rs.iter().all(|r| r.as_ref().unwrap().finished));
    let dir = tmp("killed");
    // A step is 3 collectives (rank 0's buffers, gradients, metrics), a mid-epoch checkpoint
    // 1 more, an epoch's end 3 more (BN average, evaluation counts, checkpoint): 3 steps make
    // 14, and rank 1 dies at the third collective of step 4.
    let (rs, struck, times) =
        two_ranks(&dir, false, Fault::Die { at: 17 }, Duration::from_secs(60));
    let e = rs[0].as_ref().unwrap_err().to_string();
    assert!(e.contains("rank 1 is gone (killed by the test)"), "{e}");
    let after = times[0].duration_since(struck.unwrap());
    assert!(
        after < Duration::from_secs(5),
        "rank 0 stopped {after:?} after rank 1 died"
    );
    let done = checkpoint::load(&dir.join("checkpoints/last.safetensors"), None).unwrap();
    assert!(
        (2..=4).contains(&done.pos.global_step),
        "last checkpoint at step {}",
        done.pos.global_step
    );
    // The restarted job (same command with --resume) ends where the uninterrupted one did.
    let (rs, _, _) = two_ranks(&dir, true, Fault::None, Duration::from_secs(60));
    assert!(rs.iter().all(|r| r.as_ref().unwrap().finished));
    assert_eq!(
        state_bits(&dir.join("checkpoints/last.safetensors")),
        state_bits(&reference.join("checkpoints/last.safetensors"))
    );
    let log = std::fs::read_to_string(dir.join("train.log")).unwrap();
    assert!(log.contains("resume "), "{log}");
}

#[test]
fn a_hung_rank_stops_the_other_after_the_timeout_naming_it() {
    let dir = tmp("hung");
    let timeout = Duration::from_secs(2);
    let (rs, struck, times) = two_ranks(
        &dir,
        false,
        Fault::Hang {
            at: 5,
            for_: Duration::from_secs(8),
        },
        timeout,
    );
    let e = rs[0].as_ref().unwrap_err().to_string();
    assert!(e.contains("rank(s) [1] did not join within"), "{e}");
    let after = times[0].duration_since(struck.unwrap());
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(6),
        "rank 0 stopped {after:?} after rank 1 hung (timeout {timeout:?})"
    );
}
