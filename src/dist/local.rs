//! Ranks as threads of one process: the stand-in communicator of the CPU tests (and of any
//! caller that wants N ranks without sockets). Every collective is a round in which each rank
//! deposits its buffer; once all have, each rank reads every deposit and computes the result
//! itself, in rank order, so every rank gets the same bits (a sum is `((r0 + r1) + r2) ..`).
//!
//! Faults: a rank that has not deposited within the timeout is named in the error of those
//! waiting for it; a rank whose communicator is dropped (its thread returned or panicked) is
//! marked gone, and every collective that still needs it fails at once, naming it.

use super::{check_lengths, Communicator};
use crate::{Error, Result};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One rank's buffer in a round.
#[derive(Clone, Debug)]
pub(crate) enum Deposit {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Deposit {
    pub(crate) fn len(&self) -> usize {
        match self {
            Deposit::F32(v) => v.len(),
            Deposit::F64(v) => v.len(),
        }
    }
}

struct State {
    /// Rounds completed so far.
    round: u64,
    /// This round's deposits, by rank.
    slots: Vec<Option<Deposit>>,
    /// The last completed round's deposits, while some ranks still have to read them.
    results: Option<Arc<Vec<Deposit>>>,
    readers_left: usize,
    /// Why a rank left (its communicator was dropped), by rank.
    gone: Vec<Option<String>>,
    /// The ranks that left, in the order they left: an error names the first (the cause), not
    /// a rank that stopped because of it.
    left_in_order: Vec<usize>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    timeout: Duration,
}

/// One rank's end of a thread group.
pub struct LocalComm {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

/// `world` communicators, one per rank (move each into its rank's thread).
pub fn group(world: usize, timeout: Duration) -> Vec<LocalComm> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            round: 0,
            slots: vec![None; world],
            results: None,
            readers_left: 0,
            gone: vec![None; world],
            left_in_order: Vec::new(),
        }),
        changed: Condvar::new(),
        timeout,
    });
    (0..world)
        .map(|rank| LocalComm {
            rank,
            world,
            shared: shared.clone(),
        })
        .collect()
}

impl LocalComm {
    /// Marks this rank as gone with `why` (what `Drop` does with "exited"); the others'
    /// collectives fail at once, naming it. Used by fault tests to kill a rank mid-run.
    pub fn leave(&self, why: &str) {
        let mut s = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.gone[self.rank].is_none() {
            s.gone[self.rank] = Some(why.to_string());
            s.left_in_order.push(self.rank);
        }
        self.shared.changed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The error for a round that `missing` ranks have not joined.
    fn failure(&self, s: &State, what: &str, missing: &[usize], waited: Duration) -> Error {
        for &r in s.left_in_order.iter().filter(|r| missing.contains(r)) {
            if let Some(why) = &s.gone[r] {
                return Error::Msg(format!(
                    "distributed {what} (collective #{}): rank {r} is gone ({why}); rank {} \
                     stops too",
                    s.round + 1,
                    self.rank
                ));
            }
        }
        Error::Msg(format!(
            "distributed {what} (collective #{}): rank(s) {missing:?} did not join within \
             {:.1} s (hung or dead; the timeout is {TIMEOUT_HELP}); rank {} stops",
            s.round + 1,
            waited.as_secs_f64(),
            self.rank
        ))
    }

    /// One round: deposits `mine`, returns every rank's deposit in rank order.
    pub(crate) fn exchange(&self, what: &str, mine: Deposit) -> Result<Arc<Vec<Deposit>>> {
        let start = Instant::now();
        let deadline = start + self.shared.timeout;
        let mut s = self.lock();
        // Wait until every rank has read the previous round.
        while s.readers_left > 0 {
            let missing: Vec<usize> = Vec::new();
            s = self.wait(s, deadline, what, &missing, start)?;
        }
        if s.gone[self.rank].is_some() {
            return Err(Error::Msg(format!(
                "distributed {what}: rank {} has already left the group",
                self.rank
            )));
        }
        let my_round = s.round;
        s.slots[self.rank] = Some(mine);
        if s.slots.iter().all(Option::is_some) {
            let all: Vec<Deposit> = s.slots.iter_mut().filter_map(Option::take).collect();
            s.results = Some(Arc::new(all));
            s.readers_left = self.world;
            s.round += 1;
            self.shared.changed.notify_all();
        }
        while s.round == my_round {
            let missing: Vec<usize> = (0..self.world).filter(|&r| s.slots[r].is_none()).collect();
            match self.wait(s, deadline, what, &missing, start) {
                Ok(g) => s = g,
                Err(e) => {
                    // Take the deposit back so a later round does not see it.
                    let mut s = self.lock();
                    if s.round == my_round {
                        s.slots[self.rank] = None;
                    }
                    return Err(e);
                }
            }
        }
        let out = s
            .results
            .clone()
            .ok_or_else(|| Error::Msg(format!("distributed {what}: the round's result is lost")))?;
        s.readers_left -= 1;
        if s.readers_left == 0 {
            s.results = None;
            self.shared.changed.notify_all();
        }
        Ok(out)
    }

    /// Waits for a change; fails when a `missing` rank is gone or the deadline passed.
    fn wait<'a>(
        &self,
        s: std::sync::MutexGuard<'a, State>,
        deadline: Instant,
        what: &str,
        missing: &[usize],
        start: Instant,
    ) -> Result<std::sync::MutexGuard<'a, State>> {
        if missing.iter().any(|&r| s.gone[r].is_some()) {
            return Err(self.failure(&s, what, missing, start.elapsed()));
        }
        let now = Instant::now();
        if now >= deadline {
            let missing = if missing.is_empty() {
                // Stuck before depositing: the ranks that have not read the last round.
                (0..self.world).filter(|&r| r != self.rank).collect()
            } else {
                missing.to_vec()
            };
            return Err(self.failure(&s, what, &missing, start.elapsed()));
        }
        let (g, _) = self
            .shared
            .changed
            .wait_timeout(s, (deadline - now).min(Duration::from_millis(200)))
            .unwrap_or_else(|p| p.into_inner());
        Ok(g)
    }
}

/// How the timeout is set, for error messages.
pub(crate) const TIMEOUT_HELP: &str = "--dist-timeout / MPM_DIST_TIMEOUT_S";

impl Drop for LocalComm {
    fn drop(&mut self) {
        let why = if std::thread::panicking() {
            "its thread panicked"
        } else {
            "exited: its communicator was dropped"
        };
        self.leave(why);
    }
}

/// Element-wise sum of the f32 deposits, rank after rank.
pub(crate) fn sum_f32(what: &str, all: &[Deposit]) -> Result<Vec<f32>> {
    check_lengths(what, &all.iter().map(Deposit::len).collect::<Vec<_>>())?;
    let mut out: Option<Vec<f32>> = None;
    for d in all {
        let Deposit::F32(v) = d else {
            return Err(Error::Msg(format!(
                "distributed {what}: mixed element types"
            )));
        };
        match &mut out {
            None => out = Some(v.clone()),
            Some(o) => o.iter_mut().zip(v).for_each(|(a, b)| *a += *b),
        }
    }
    Ok(out.unwrap_or_default())
}

/// Element-wise sum of the f64 deposits, rank after rank.
pub(crate) fn sum_f64(what: &str, all: &[Deposit]) -> Result<Vec<f64>> {
    check_lengths(what, &all.iter().map(Deposit::len).collect::<Vec<_>>())?;
    let mut out: Option<Vec<f64>> = None;
    for d in all {
        let Deposit::F64(v) = d else {
            return Err(Error::Msg(format!(
                "distributed {what}: mixed element types"
            )));
        };
        match &mut out {
            None => out = Some(v.clone()),
            Some(o) => o.iter_mut().zip(v).for_each(|(a, b)| *a += *b),
        }
    }
    Ok(out.unwrap_or_default())
}

/// Rank `root`'s f32 deposit.
pub(crate) fn pick_f32(what: &str, all: &[Deposit], root: usize, len: usize) -> Result<Vec<f32>> {
    match all.get(root) {
        Some(Deposit::F32(v)) if v.len() == len => Ok(v.clone()),
        Some(d) => Err(Error::Msg(format!(
            "distributed {what}: rank {root} sent {} values, this rank expects {len}",
            d.len()
        ))),
        None => Err(Error::Msg(format!(
            "distributed {what}: root rank {root} is outside the world of {}",
            all.len()
        ))),
    }
}

/// The f32 deposits concatenated in rank order.
pub(crate) fn concat_f32(what: &str, all: &[Deposit]) -> Result<Vec<f32>> {
    check_lengths(what, &all.iter().map(Deposit::len).collect::<Vec<_>>())?;
    let mut out = Vec::new();
    for d in all {
        match d {
            Deposit::F32(v) => out.extend_from_slice(v),
            Deposit::F64(_) => {
                return Err(Error::Msg(format!(
                    "distributed {what}: mixed element types"
                )))
            }
        }
    }
    Ok(out)
}

/// The host collectives of a communicator built on `exchange` (every rank's deposit, in rank
/// order): the thread stand-in and the TCP communicator share them.
macro_rules! exchange_collectives {
    () => {
        fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
            let all = self.exchange("all-reduce", Deposit::F32(buf.to_vec()))?;
            buf.copy_from_slice(&sum_f32("all-reduce", &all)?);
            Ok(())
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            let all = self.exchange("all-reduce", Deposit::F64(buf.to_vec()))?;
            buf.copy_from_slice(&sum_f64("all-reduce", &all)?);
            Ok(())
        }
        fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
            let mine = if self.rank == root {
                buf.to_vec()
            } else {
                Vec::new()
            };
            let all = self.exchange("broadcast", Deposit::F32(mine))?;
            buf.copy_from_slice(&pick_f32("broadcast", &all, root, buf.len())?);
            Ok(())
        }
        fn all_gather_f32(&self, mine: &[f32]) -> Result<Vec<f32>> {
            let all = self.exchange("all-gather", Deposit::F32(mine.to_vec()))?;
            concat_f32("all-gather", &all)
        }
        fn barrier(&self) -> Result<()> {
            self.exchange("barrier", Deposit::F32(Vec::new()))
                .map(|_| ())
        }
    };
}
pub(crate) use exchange_collectives;

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn backend(&self) -> &'static str {
        "threads"
    }
    exchange_collectives!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T: Send + 'static>(
        world: usize,
        timeout: Duration,
        f: impl Fn(LocalComm) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = group(world, timeout)
            .into_iter()
            .map(|c| {
                let f = f.clone();
                std::thread::spawn(move || f(c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn collectives_agree_on_every_rank_in_rank_order() {
        let out = run(3, Duration::from_secs(10), |c| {
            let r = c.rank() as f32;
            let mut a = vec![r + 0.1, 2.0 * r];
            c.all_reduce_sum_f32(&mut a).unwrap();
            let mut m = vec![r];
            c.all_reduce_mean_f32(&mut m).unwrap();
            let mut d = vec![1e15 + c.rank() as f64];
            c.all_reduce_sum_f64(&mut d).unwrap();
            let mut b = vec![r; 2];
            c.broadcast_f32(&mut b, 2).unwrap();
            let g = c.all_gather_f32(&[r, -r]).unwrap();
            c.barrier().unwrap();
            (a, m, d, b, g)
        });
        let want_a = vec![(0.1f32 + 1.1) + 2.1, (0.0f32 + 2.0) + 4.0];
        for (a, m, d, b, g) in out {
            assert_eq!(a, want_a);
            assert_eq!(m, vec![1.0]);
            assert_eq!(d, vec![3e15 + 3.0]);
            assert_eq!(b, vec![2.0, 2.0]);
            assert_eq!(g, vec![0.0, -0.0, 1.0, -1.0, 2.0, -2.0]);
        }
    }

    #[test]
    fn a_dropped_rank_stops_the_others_at_once_naming_it() {
        let t0 = Instant::now();
        let out = run(3, Duration::from_secs(30), |c| {
            if c.rank() == 1 {
                return Ok(());
            }
            let mut a = vec![1.0f32];
            c.all_reduce_sum_f32(&mut a)
        });
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        for r in [0, 2] {
            let e = out[r].as_ref().unwrap_err().to_string();
            assert!(e.contains("rank 1 is gone"), "{e}");
        }
    }

    #[test]
    fn a_hung_rank_times_the_others_out_naming_it() {
        let t0 = Instant::now();
        let out = run(2, Duration::from_millis(300), |c| {
            if c.rank() == 1 {
                std::thread::sleep(Duration::from_millis(1500));
                return Ok(());
            }
            c.barrier()
        });
        let waited = t0.elapsed();
        let e = out[0].as_ref().unwrap_err().to_string();
        assert!(e.contains("rank(s) [1] did not join within"), "{e}");
        assert!(waited >= Duration::from_millis(300));
    }

    #[test]
    fn mismatched_buffers_are_an_error() {
        let out = run(2, Duration::from_secs(10), |c| {
            let mut a = vec![0.0f32; 1 + c.rank()];
            c.all_reduce_sum_f32(&mut a)
        });
        for r in out {
            assert!(r.unwrap_err().to_string().contains("rank 1 sent 2 values"));
        }
    }
}
