//! Exclusive use of a run directory (or of one output, such as an attack journal): a lock
//! file holding the owner's PID and host. A second run refuses with a message naming the
//! owner; a lock left by a process that no longer runs on this host (`kill -9`, a crash) is
//! taken over, and the takeover is said. Lock files of other hosts are never taken over
//! (their processes cannot be checked): the message says to delete the file.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Name of the lock file inside a run directory.
pub const RUN_LOCK_NAME: &str = ".mpm-run.lock";

/// Held while the value lives; the lock file is removed on drop.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    /// Set when a stale lock was taken over: `(pid, host)` of the dead owner.
    pub took_over: Option<(u32, String)>,
}

/// This machine's host name (for lock files).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// `pid <N>\nhost <name>\n` -> (pid, host).
fn parse_owner(text: &str) -> Option<(u32, String)> {
    let mut pid = None;
    let mut host = None;
    for line in text.lines() {
        if let Some(p) = line.strip_prefix("pid ") {
            pid = p.trim().parse().ok();
        } else if let Some(h) = line.strip_prefix("host ") {
            host = Some(h.trim().to_string());
        }
    }
    Some((pid?, host?))
}

impl RunLock {
    /// Locks the run directory `dir` (created if missing); `what` names the job for messages
    /// (`--output-dir`, `--report`).
    pub fn run_dir(dir: &Path, what: &str) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Self::acquire(&dir.join(RUN_LOCK_NAME), what)
    }

    /// Takes the lock file at `path`.
    pub fn acquire(path: &Path, what: &str) -> Result<RunLock> {
        let me = host_name();
        let mut took_over = None;
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    let body = format!("pid {}\nhost {me}\n", std::process::id());
                    f.write_all(body.as_bytes())
                        .and_then(|()| f.sync_all())
                        .map_err(|e| Error::io(path, e))?;
                    return Ok(RunLock {
                        path: path.to_path_buf(),
                        took_over,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(path, e)),
            }
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let Some((pid, host)) = parse_owner(&text) else {
                // Unreadable or half-written (a crash between create and write): a lock with
                // no owner cannot be checked; refuse rather than guess.
                return Err(Error::format(
                    path,
                    format!(
                        "{what}: locked by a lock file with no owner; if no run uses it, \
                         delete the file"
                    ),
                ));
            };
            if host != me {
                return Err(Error::format(
                    path,
                    format!(
                        "{what}: in use by process {pid} on host {host}; if that run is gone, \
                         delete the lock file"
                    ),
                ));
            }
            if super::process_alive(pid) {
                return Err(Error::format(
                    path,
                    format!(
                        "{what}: in use by another run (process {pid} on this host); wait for \
                         it to finish or choose another location"
                    ),
                ));
            }
            // The owner is dead: take the lock over.
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
            took_over = Some((pid, host));
        }
        Err(Error::format(
            path,
            format!("{what}: another run took the lock while a stale one was being replaced"),
        ))
    }

    /// A line for the log when a stale lock was taken over.
    pub fn takeover_note(&self) -> Option<String> {
        self.took_over.as_ref().map(|(pid, host)| {
            format!(
                "took over the stale lock {} of process {pid} on {host}, which no longer runs",
                self.path.display()
            )
        })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_refused_stale_taken_over_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let a = RunLock::run_dir(dir.path(), "--output-dir").unwrap();
        assert!(a.took_over.is_none());
        let e = RunLock::run_dir(dir.path(), "--output-dir")
            .unwrap_err()
            .to_string();
        assert!(e.contains("in use by another run"), "{e}");
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        drop(a);
        assert!(!dir.path().join(RUN_LOCK_NAME).exists());
        // A lock left by a dead process of this host.
        std::fs::write(
            dir.path().join(RUN_LOCK_NAME),
            format!("pid 2147483632\nhost {}\n", host_name()),
        )
        .unwrap();
        let b = RunLock::run_dir(dir.path(), "--output-dir").unwrap();
        assert_eq!(b.took_over.as_ref().map(|o| o.0), Some(2147483632));
        assert!(b.takeover_note().unwrap().contains("no longer runs"));
        drop(b);
        // Another host's lock is never taken over.
        std::fs::write(
            dir.path().join(RUN_LOCK_NAME),
            "pid 1\nhost some-other-machine\n",
        )
        .unwrap();
        let e = RunLock::run_dir(dir.path(), "--output-dir")
            .unwrap_err()
            .to_string();
        assert!(e.contains("on host some-other-machine"), "{e}");
    }
}
