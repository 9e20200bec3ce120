//! Finding CUDA's shared libraries before cudarc looks them up by name.
//!
//! cudarc (feature `dynamic-loading`) opens `libcuda.so`, `libnvrtc.so.13`, `libcublas.so.13`,
//! `libcudnn.so.9`... by name, so they must be on the loader's path. pip wheels (`nvidia-*`)
//! put them in `site-packages/nvidia/**/lib`, which is not. This module preloads them by full
//! path from, in order: `MPM_CUDA_LIB_DIRS` (colon-separated), the pinned CI tools folder
//! `.ci/cuda-tools` of this checkout, and python's site-packages (`nvidia/*/lib`,
//! `nvidia/cu13/lib`). A library preloaded by path satisfies the later lookup by soname.
//! Libraries are leaked on purpose: they stay loaded for the life of the process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Directories that may hold CUDA libraries, most specific first.
pub fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(v) = std::env::var_os("MPM_CUDA_LIB_DIRS") {
        dirs.extend(std::env::split_paths(&v));
    }
    let ci = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/cuda-tools/nvidia");
    for base in [ci].into_iter().chain(site_packages_nvidia()) {
        if let Ok(rd) = std::fs::read_dir(&base) {
            let mut subs: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            subs.sort();
            for s in subs {
                let lib = s.join("lib");
                if lib.is_dir() {
                    dirs.push(lib);
                }
            }
        }
    }
    dirs
}

/// `site-packages/nvidia` folders of the `python3` on PATH (empty if there is none). Asked
/// once per process; the answer is cached.
pub fn site_packages_nvidia() -> Vec<PathBuf> {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import site,sys;print('\\n'.join(site.getsitepackages()+[site.getusersitepackages()]))",
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| Path::new(l.trim()).join("nvidia"))
                .filter(|p| p.is_dir())
                .collect(),
            _ => Vec::new(),
        }
    })
    .clone()
}

/// Finds the first file named `name` (exact) in the candidate directories.
pub fn find(name: &str) -> Option<PathBuf> {
    candidate_dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Preloads `names` (in order: dependencies first) from the candidate directories. Names not
/// found are skipped: the system loader may still find them. Returns what was loaded.
pub fn preload(names: &[&str]) -> Vec<PathBuf> {
    let mut loaded = Vec::new();
    for name in names {
        if let Some(p) = find(name) {
            // SAFETY: loading a CUDA library runs its initialisers, which have no
            // preconditions; the handle is leaked so the code stays mapped.
            if let Ok(lib) = unsafe { libloading::Library::new(&p) } {
                std::mem::forget(lib);
                loaded.push(p);
            }
        }
    }
    loaded
}

/// Preloads NVRTC (and its builtins, which NVRTC opens by soname at compile time).
pub fn preload_nvrtc() -> Vec<PathBuf> {
    static ONCE: OnceLock<Vec<PathBuf>> = OnceLock::new();
    ONCE.get_or_init(|| preload(&["libnvrtc-builtins.so.13.0", "libnvrtc.so.13"]))
        .clone()
}

/// Preloads cuBLAS(Lt) and cuDNN from pip wheels when present.
pub fn preload_math() -> Vec<PathBuf> {
    static ONCE: OnceLock<Vec<PathBuf>> = OnceLock::new();
    ONCE.get_or_init(|| {
        let mut loaded = preload(&["libcublasLt.so.13", "libcublas.so.13"]);
        // cuDNN 9 refuses sub-libraries of another version
        // (CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH), so all of them come from the folder that
        // holds the first `libcudnn.so.9` found, never from several installs.
        // cudarc opens `libcudnn.so` first: when the system loader finds one (a system cuDNN),
        // that one is used with its own sub-libraries, and the wheel's are left alone.
        // SAFETY: as in `preload`; only probes whether the name resolves.
        let system_cudnn = unsafe { libloading::Library::new("libcudnn.so") }.is_ok();
        if system_cudnn {
            return loaded;
        }
        if let Some(dir) = find("libcudnn.so.9").and_then(|p| p.parent().map(Path::to_path_buf)) {
            for name in [
                "libcudnn_graph.so.9",
                "libcudnn_engines_precompiled.so.9",
                "libcudnn_engines_runtime_compiled.so.9",
                "libcudnn_heuristic.so.9",
                "libcudnn_ops.so.9",
                "libcudnn_cnn.so.9",
                "libcudnn_adv.so.9",
                "libcudnn.so.9",
            ] {
                let p = dir.join(name);
                if !p.is_file() {
                    continue;
                }
                // SAFETY: as in `preload`.
                if let Ok(lib) = unsafe { libloading::Library::new(&p) } {
                    std::mem::forget(lib);
                    loaded.push(p);
                }
            }
        }
        loaded
    })
    .clone()
}

/// `ptxas` from `PTXAS`, the candidate folders' `../bin`, or PATH.
pub fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PTXAS") {
        return Some(PathBuf::from(p));
    }
    for d in candidate_dirs() {
        if let Some(parent) = d.parent() {
            let p = parent.join("bin").join("ptxas");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("ptxas"))
            .find(|p| p.is_file())
    })
}
