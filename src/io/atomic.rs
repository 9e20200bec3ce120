//! The one way the project writes files: a temp file in the target's directory, written with
//! checked writes, flushed, optionally fsynced, then renamed over the target. A reader never
//! sees a half-written file, and every write error (a full disk included) reaches the caller;
//! nothing is dropped by a buffered writer's destructor.
//!
//! Temp names are `.<file name>.tmp.<pid>.<nonce>`; [`remove_stale_temps`] deletes those left
//! by processes that no longer run (a `kill -9` mid-write).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Whether a write must survive a power loss once it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file and its directory: checkpoints, reports, journals, configs.
    Fsync,
    /// Rename only: bulk outputs (label maps, corrupted images), whose directories the job
    /// syncs once at the end with [`sync_dir`].
    Bulk,
}

const TMP_TAG: &str = ".tmp.";

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_path(path: &Path) -> Result<PathBuf> {
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::format(path, "not a file path"))?
        .to_string_lossy();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
        .wrapping_add(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed) << 32);
    Ok(parent_dir(path).join(format!(
        ".{file_name}{TMP_TAG}{}.{nonce}",
        std::process::id()
    )))
}

/// Writes a file atomically: `write` fills a fresh temp file next to `path` (write errors
/// must be returned, not ignored), which is then flushed, fsynced when `durability` says so,
/// and renamed over `path`. On error the temp file is removed and `path` is untouched.
pub fn write_atomic_with(
    path: &Path,
    durability: Durability,
    write: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
    let tmp = temp_path(path)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    let res = write(&mut f)
        .and_then(|()| f.flush().map_err(|e| Error::io(&tmp, e)))
        .and_then(|()| match durability {
            Durability::Fsync => f.sync_all().map_err(|e| Error::io(&tmp, e)),
            Durability::Bulk => Ok(()),
        })
        .and_then(|()| {
            drop(f);
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
        });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return res;
    }
    if durability == Durability::Fsync {
        sync_dir(&parent_dir(path))?;
    }
    Ok(())
}

/// [`write_atomic_with`] with fsync: for checkpoints, reports, journals and configs.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    write_atomic_with(path, Durability::Fsync, write)
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8], durability: Durability) -> Result<()> {
    write_atomic_with(path, durability, |f| {
        f.write_all(bytes).map_err(|e| Error::io(path, e))
    })
}

/// fsyncs a directory, persisting the renames into it. Filesystems that refuse fsync on a
/// directory (some network mounts) are tolerated; other errors are returned.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = File::open(dir).map_err(|e| Error::io(dir, e))?;
        match d.sync_all() {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(code) if code == 22 /* EINVAL */ || code == 95 /* EOPNOTSUPP */
                ) => {}
            Err(e) => return Err(Error::io(dir, e)),
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The directories a bulk job wrote into (files written with [`Durability::Bulk`]: label
/// maps, probability maps, images, symlinks), synced once at the end with
/// [`BulkDirs::sync`]: the one durability point of a bulk output. Shared by every
/// `mpm-data` command that writes one file per image; safe to fill from parallel workers.
#[derive(Debug)]
pub struct BulkDirs {
    root: PathBuf,
    dirs: std::sync::Mutex<std::collections::BTreeSet<PathBuf>>,
}

impl BulkDirs {
    /// Outputs under `root` (the job's output folder).
    pub fn new(root: &Path) -> Self {
        BulkDirs {
            root: root.to_path_buf(),
            dirs: Default::default(),
        }
    }

    /// Records that `file` was written (or linked): its directory gets synced.
    pub fn wrote(&self, file: &Path) {
        self.add_dir(&parent_dir(file));
    }

    /// Records a directory that received new entries.
    pub fn add_dir(&self, dir: &Path) {
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        dirs.insert(dir.to_path_buf());
    }

    /// fsyncs every recorded directory and the directories above it up to the root (their
    /// new entries), each once, deepest first. Returns how many directories were synced;
    /// the first error stops and is returned.
    pub fn sync(self) -> Result<usize> {
        let dirs = self.dirs.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut all = std::collections::BTreeSet::new();
        for d in dirs {
            for a in d.ancestors() {
                if !all.insert(a.to_path_buf()) || a == self.root || !a.starts_with(&self.root) {
                    break;
                }
            }
        }
        for d in all.iter().rev() {
            sync_dir(d)?;
        }
        Ok(all.len())
    }
}

/// [`remove_stale_temps`] in `root` and in the real directories below it, down to `depth`
/// levels (0: `root` only); symlinks are not followed. For bulk outputs, whose temp files
/// lie in per-class folders. Returns how many were removed.
pub fn remove_stale_temps_tree(root: &Path, depth: usize) -> Result<usize> {
    let mut removed = remove_stale_temps(root)?;
    if depth == 0 {
        return Ok(removed);
    }
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(Error::io(root, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            removed += remove_stale_temps_tree(&entry.path(), depth - 1)?;
        }
    }
    Ok(removed)
}

/// Is process `pid` running? Linux: `/proc/<pid>` exists; elsewhere assume it is.
pub(crate) fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc_root = Path::new("/proc/self");
    if proc_root.exists() {
        return Path::new(&format!("/proc/{pid}")).exists();
    }
    true
}

/// The pid in a temp name of ours (`.<name>.tmp.<pid>.<nonce>`), if it is one.
fn temp_owner(file_name: &str) -> Option<u32> {
    if !file_name.starts_with('.') {
        return None;
    }
    let at = file_name.rfind(TMP_TAG)?;
    let mut parts = file_name[at + TMP_TAG.len()..].split('.');
    let pid = parts.next()?.parse().ok()?;
    let nonce = parts.next()?;
    if parts.next().is_some() || nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(pid)
}

/// Removes temp files of the project's naming in `dir` (not recursive) whose writing process
/// is gone. Returns how many were removed. A missing directory is not an error.
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = temp_owner(&name.to_string_lossy()) else {
            continue;
        };
        if process_alive(pid) {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_file())
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_round_trip_and_others_are_left_alone() {
        let t = temp_path(Path::new("/x/last.safetensors")).unwrap();
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(temp_owner(&name), Some(std::process::id()));
        assert_eq!(temp_owner(".a.tmp.123.456"), Some(123));
        assert_eq!(temp_owner("a.tmp.123.456"), None);
        assert_eq!(temp_owner(".a.tmp.x.456"), None);
        assert_eq!(temp_owner(".a.tmp.123"), None);
        assert_eq!(temp_owner(".notes.txt"), None);
    }

    #[test]
    fn stale_temps_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // pid 0x7fff_fff0 is never a live process on Linux (pid_max is at most 2^22).
        let stale = dir.path().join(".last.safetensors.tmp.2147483632.17");
        let live = dir.path().join(format!(".a.tmp.{}.5", std::process::id()));
        let other = dir.path().join("keep.tmp");
        for p in [&stale, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 1);
        assert!(!stale.exists());
        assert!(live.exists() && other.exists());
    }

    #[test]
    fn bulk_dirs_sync_each_written_folder_and_its_parents_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("out");
        for sub in ["seg/a", "seg/b", "img/a"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let bulk = BulkDirs::new(&root);
        bulk.wrote(&root.join("seg/a/1.png"));
        bulk.wrote(&root.join("seg/a/2.png"));
        bulk.wrote(&root.join("seg/b/1.png"));
        bulk.wrote(&root.join("img/a/1.JPEG"));
        // seg/a, seg/b, seg, img/a, img, out.
        assert_eq!(bulk.sync().unwrap(), 6);
        assert_eq!(BulkDirs::new(&root).sync().unwrap(), 0);
        // A folder that vanished is an error, not a silent skip.
        let gone = BulkDirs::new(&root);
        gone.add_dir(&root.join("missing"));
        assert!(gone.sync().is_err());
    }

    #[test]
    fn stale_temps_are_removed_below_the_root_to_the_given_depth() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("seg/n01");
        std::fs::create_dir_all(&deep).unwrap();
        let a = dir.path().join(".x.json.tmp.2147483632.1");
        let b = deep.join(".1.png.tmp.2147483632.2");
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(&b, b"x").unwrap();
        assert_eq!(remove_stale_temps_tree(dir.path(), 1).unwrap(), 1);
        assert!(b.exists());
        assert_eq!(remove_stale_temps_tree(dir.path(), 2).unwrap(), 1);
        assert!(!a.exists() && !b.exists());
    }

    #[test]
    fn failed_writes_leave_the_target_untouched_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        write_bytes_atomic(&p, b"old", Durability::Fsync).unwrap();
        let e = write_atomic(&p, |_| Err(Error::Msg("disk full".into()))).unwrap_err();
        assert!(e.to_string().contains("disk full"));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
