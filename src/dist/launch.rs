//! `mpm-train --nproc-per-node N ...`: starts N rank processes of the same command on this
//! node, as `torchrun --nproc-per-node N` does: each gets `RANK = LOCAL_RANK = i`,
//! `WORLD_SIZE = N`, `MASTER_ADDR = 127.0.0.1` and a `MASTER_PORT` (the caller's, or a free
//! one). SIGINT / SIGTERM / SIGHUP sent to the launcher are forwarded to every rank. The first
//! rank that fails stops the job: the others get SIGTERM (then SIGKILL after a grace period)
//! and the launcher exits with that rank's code (128 + signal for a rank killed by a signal).
//! Multi-node jobs use the cluster's launcher instead (srun, torchrun), one process per rank.

use crate::{Error, Result};
use std::ffi::OsString;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The last stop signal this process received (0: none pending). One per process: the
/// launcher and `mpm-train sweep`'s parallel mode (the two supervisors of child processes)
/// never run in the same process.
static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    PENDING.store(sig, Ordering::SeqCst);
}

/// Catches SIGINT, SIGTERM and SIGHUP from now on (the handler only records the signal, for
/// [`take_stop_signal`]), so that a supervisor can forward them to its children; forgets any
/// recorded one.
pub(crate) fn catch_stop_signals() {
    PENDING.store(0, Ordering::SeqCst);
    // SAFETY: installs a handler that only stores into an atomic (async-signal-safe).
    unsafe {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// The stop signal received since the last call (0: none).
pub(crate) fn take_stop_signal() -> i32 {
    PENDING.swap(0, Ordering::SeqCst)
}

/// Records `sig` as if it had been received (a supervisor's stop request without a signal).
pub(crate) fn request_stop(sig: i32) {
    PENDING.store(sig, Ordering::SeqCst);
}

/// How long stopping ranks get after SIGTERM before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(30);

/// Removes `--nproc-per-node N` / `--nproc-per-node=N` from `args` and returns N.
pub fn take_nproc_flag(args: &mut Vec<OsString>) -> Result<Option<usize>> {
    let flag = "--nproc-per-node";
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        let value = if a == flag {
            let v = args
                .get(i + 1)
                .map(|v| v.to_string_lossy().into_owned())
                .ok_or_else(|| Error::flag(flag, "needs a number of processes"))?;
            args.drain(i..i + 2);
            v
        } else if let Some(v) = a.strip_prefix("--nproc-per-node=") {
            let v = v.to_string();
            args.remove(i);
            v
        } else {
            i += 1;
            continue;
        };
        let n: usize = value.parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
            Error::flag(flag, format!("'{value}' is not a number of processes >= 1"))
        })?;
        found = Some(n);
    }
    Ok(found)
}

/// A free TCP port on the loopback interface (the OS picks one).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| Error::Msg(format!("no free TCP port for the rendezvous: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Msg(format!("no free TCP port for the rendezvous: {e}")))
}

/// Exit code of a finished rank: its code, or 128 + the signal that killed it.
fn code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Sends `sig` to a child process (of the launcher or of a parallel sweep).
pub(crate) fn send(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: sends a signal to a child process this process started and has not reaped.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Runs `program args` as `n` local ranks; returns the job's exit code.
pub fn launch(program: &std::path::Path, args: &[OsString], n: usize) -> Result<i32> {
    if std::env::var_os("WORLD_SIZE").is_some() || std::env::var_os("SLURM_NTASKS").is_some() {
        // Under srun each task would start n more ranks: almost surely not what was meant.
        if std::env::var_os("MPM_NPROC_UNDER_LAUNCHER").is_none() {
            return Err(Error::flag(
                "--nproc-per-node",
                "WORLD_SIZE or SLURM_NTASKS is already set: under a cluster launcher (srun, \
                 torchrun) start one mpm-train per rank without --nproc-per-node (set \
                 MPM_NPROC_UNDER_LAUNCHER=1 to start local ranks anyway)",
            ));
        }
    }
    let addr = "127.0.0.1".to_string();
    let port = match std::env::var("MASTER_PORT") {
        Ok(p) => p,
        Err(_) => free_port()?.to_string(),
    };
    catch_stop_signals();
    let mut children: Vec<Option<Child>> = Vec::with_capacity(n);
    for rank in 0..n {
        let child = Command::new(program)
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", &addr)
            .env("MASTER_PORT", &port)
            .env_remove("SLURM_PROCID")
            .env_remove("SLURM_NTASKS")
            .env_remove("SLURM_LOCALID")
            .spawn();
        match child {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                for c in children.iter().flatten() {
                    send(c, libc::SIGTERM);
                }
                return Err(Error::Msg(format!(
                    "cannot start rank {rank} ({}): {e}",
                    program.display()
                )));
            }
        }
    }
    eprintln!("started {n} ranks (rendezvous {addr}:{port})");
    let mut job_code = 0;
    let mut stopping_since: Option<Instant> = None;
    loop {
        let sig = take_stop_signal();
        if sig != 0 {
            for c in children.iter().flatten() {
                send(c, sig);
            }
        }
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            match c.try_wait() {
                Ok(Some(status)) => {
                    let code = code_of(status);
                    *slot = None;
                    if code != 0 && job_code == 0 {
                        job_code = code;
                        eprintln!("rank {rank} exited with code {code}; stopping the other ranks");
                        stopping_since = Some(Instant::now());
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("rank {rank}: cannot wait for it: {e}");
                    *slot = None;
                    job_code = job_code.max(1);
                }
            }
        }
        if children.iter().all(Option::is_none) {
            return Ok(job_code);
        }
        if let Some(t) = stopping_since {
            let sig = if t.elapsed() < GRACE {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            for c in children.iter().flatten() {
                send(c, sig);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_taken_out_of_the_arguments() {
        let mut a: Vec<OsString> = ["--config", "c.toml", "--nproc-per-node", "4", "--x", "1"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(take_nproc_flag(&mut a).unwrap(), Some(4));
        assert_eq!(a, ["--config", "c.toml", "--x", "1"].map(OsString::from));
        let mut b = vec![OsString::from("--nproc-per-node=2")];
        assert_eq!(take_nproc_flag(&mut b).unwrap(), Some(2));
        assert!(b.is_empty());
        let mut c = vec![OsString::from("--nproc-per-node"), OsString::from("0")];
        assert!(take_nproc_flag(&mut c).is_err());
        let mut d = vec![OsString::from("--epochs"), OsString::from("3")];
        assert_eq!(take_nproc_flag(&mut d).unwrap(), None);
    }

    #[test]
    fn a_failing_rank_stops_the_job_with_its_code() {
        // Rank 1 fails at once; rank 0 would sleep for a minute: the launcher stops it.
        let t0 = Instant::now();
        let code = launch(
            std::path::Path::new("/bin/sh"),
            &[
                OsString::from("-c"),
                OsString::from("if [ \"$RANK\" = 1 ]; then exit 7; fi; sleep 60"),
            ],
            2,
        )
        .unwrap();
        assert_eq!(code, 7);
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    }
}
