//! The kernel table built by `build.rs` and run-time compilation of its sources with NVRTC.
//!
//! Each `kernels/<name>.cu` is one entry: its self-contained source (includes pasted in), the
//! FNV-1a hash of that source and, when the build found nvcc, a fatbin (sm_XX + PTX). Without
//! a binary, the runtime compiles the source once with NVRTC for the GPU's architecture and
//! caches the CUBIN on disk under `(name, source hash, arch, NVRTC version)`, so later runs
//! load it without compiling.

use std::path::PathBuf;

/// One kernel file of `kernels/`.
#[derive(Debug)]
pub struct KernelSource {
    pub name: &'static str,
    pub source: &'static str,
    pub hash: u64,
    pub binary: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/kernels_gen.rs"));

/// The table entry of `kernels/<name>.cu`.
pub fn kernel_source(name: &str) -> Option<&'static KernelSource> {
    KERNELS.iter().find(|k| k.name == name)
}

/// Which file defines the `extern "C"` kernel `symbol` (by scanning the sources once).
pub fn file_of(symbol: &str) -> Option<&'static KernelSource> {
    let pat = format!(" {symbol}(");
    KERNELS.iter().find(|k| {
        k.source
            .lines()
            .any(|l| l.contains("__global__") && l.contains(&pat))
    })
}

/// What NVRTC should produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Virtual-architecture PTX (`compute_XX`): what `ptxas` checks.
    Ptx,
    /// Machine code for `sm_XX`: loaded directly, no driver JIT.
    Cubin,
}

/// NVRTC options used everywhere (tests, runtime), so what CI checks is what runs.
pub fn nvrtc_options(arch: &str, out: Output) -> Vec<String> {
    let target = match out {
        Output::Ptx => format!("--gpu-architecture=compute_{arch}"),
        Output::Cubin => format!("--gpu-architecture=sm_{arch}"),
    };
    // No --use_fast_math: erff/expf must match the CPU reference to f32 rounding.
    vec![target, "--std=c++17".into(), "-default-device".into()]
}

/// NVRTC's version, e.g. (13, 0). Errors when NVRTC cannot be loaded.
pub fn nvrtc_version() -> Result<(i32, i32), String> {
    crate::cuda::libs::preload_nvrtc();
    // SAFETY: is_culib_present only tries to open the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("NVRTC (libnvrtc.so.13) not found: install the `nvidia-cuda-nvrtc` wheel or set MPM_CUDA_LIB_DIRS".into());
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above); the out-pointers are valid.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcVersion failed: {r:?}"));
    }
    Ok((major, minor))
}

/// Compiles one kernel file with NVRTC. Errors carry NVRTC's log.
pub fn compile(k: &KernelSource, arch: &str, out: Output) -> Result<Vec<u8>, String> {
    use cudarc::nvrtc::{result, sys};
    nvrtc_version()?;
    let src = std::ffi::CString::new(k.source).map_err(|e| format!("{}.cu: {e}", k.name))?;
    let name = std::ffi::CString::new(format!("{}.cu", k.name)).map_err(|e| e.to_string())?;
    let prog =
        result::create_program(&src, Some(&name)).map_err(|e| format!("{}.cu: {e:?}", k.name))?;
    let opts = nvrtc_options(arch, out);
    // SAFETY: `prog` was created above and is destroyed once, below, on every path.
    let res = unsafe {
        let compiled = result::compile_program(prog, &opts);
        let log = result::get_program_log(prog)
            .map(|l| {
                let bytes: Vec<u8> = l.iter().map(|c| *c as u8).take_while(|c| *c != 0).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        let r = match compiled {
            Err(e) => Err(format!(
                "NVRTC failed on kernels/{}.cu ({e:?}), options {opts:?}:\n{log}",
                k.name
            )),
            Ok(()) => match out {
                Output::Ptx => result::get_ptx(prog)
                    .map(|p| p.iter().map(|c| *c as u8).take_while(|c| *c != 0).collect())
                    .map_err(|e| format!("{}.cu: nvrtcGetPTX: {e:?}", k.name)),
                Output::Cubin => {
                    let mut size = 0usize;
                    let r1 = sys::nvrtcGetCUBINSize(prog, &mut size);
                    let mut buf = vec![0u8; size];
                    let r2 = sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut std::ffi::c_char);
                    if r1 != sys::nvrtcResult::NVRTC_SUCCESS
                        || r2 != sys::nvrtcResult::NVRTC_SUCCESS
                    {
                        Err(format!("{}.cu: nvrtcGetCUBIN: {r1:?} {r2:?}", k.name))
                    } else {
                        Ok(buf)
                    }
                }
            },
        };
        let _ = result::destroy_program(prog);
        r
    };
    res
}

/// Folder of the on-disk CUBIN cache: `MPM_KERNEL_CACHE`, else `$XDG_CACHE_HOME/mpm/kernels`,
/// else `$HOME/.cache/mpm/kernels`, else the temp dir.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("MPM_KERNEL_CACHE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("mpm").join("kernels")
}

/// The module image for `k` on a GPU of architecture `arch` (e.g. "90"): the embedded binary
/// when its arch matches, else a cached or freshly compiled NVRTC CUBIN (written atomically).
pub fn image(k: &KernelSource, arch: &str) -> Result<Vec<u8>, String> {
    if let Some(bin) = k.binary {
        if arch == BUILD_ARCH {
            return Ok(bin.to_vec());
        }
    }
    let (maj, min) = nvrtc_version()?;
    let dir = cache_dir();
    let file = dir.join(format!(
        "{}-{:016x}-sm_{arch}-nvrtc{maj}.{min}.cubin",
        k.name, k.hash
    ));
    if let Ok(bytes) = std::fs::read(&file) {
        if !bytes.is_empty() {
            return Ok(bytes);
        }
    }
    let bin = compile(k, arch, Output::Cubin)?;
    // The cache only saves compile time: a failure to store it is said, not fatal.
    if let Err(e) = store_cubin(&dir, &file, &bin) {
        eprintln!(
            "note: kernel cache not written ({e}); {} will be compiled again next run",
            k.name
        );
    }
    Ok(bin)
}

/// Stores a compiled module in the cache through the project's atomic writer (a reader never
/// sees a partial CUBIN; a full disk is an error, not a truncated file), after removing temp
/// files that killed processes left there. Rename-only durability: a cache entry lost to a
/// power cut is compiled again.
fn store_cubin(dir: &std::path::Path, file: &std::path::Path, bin: &[u8]) -> crate::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    crate::io::remove_stale_temps(dir)?;
    crate::io::write_bytes_atomic(file, bin, crate::io::Durability::Bulk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache goes through the atomic writer: the entry is whole, no temp file stays, a
    /// stale temp of a dead process is cleared, and an unwritable cache is an error (that
    /// `image` reports) rather than a silently missing or partial entry.
    #[test]
    fn cubins_are_cached_atomically_and_failures_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("kernels");
        std::fs::create_dir_all(&dir).unwrap();
        // pid 0x7fff_fff0 is never alive (pid_max is at most 2^22).
        let stale = dir.join(".k-0-sm_90-nvrtc13.0.cubin.tmp.2147483632.7");
        std::fs::write(&stale, b"partial").unwrap();
        let file = dir.join("k-0-sm_90-nvrtc13.0.cubin");
        store_cubin(&dir, &file, b"\x7fELF cubin").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"\x7fELF cubin");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["k-0-sm_90-nvrtc13.0.cubin"], "temp files left");
        // A cache path under a regular file cannot be created: an error, nothing written.
        let blocked = d.path().join("not_a_dir");
        std::fs::write(&blocked, b"x").unwrap();
        let e = store_cubin(&blocked.join("k"), &blocked.join("k").join("a.cubin"), b"x");
        assert!(e.is_err());
    }
}
