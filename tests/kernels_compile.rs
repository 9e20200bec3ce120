//! Every kernel file of `kernels/` compiles with NVRTC for sm_90 and its PTX passes
//! `ptxas -arch=sm_90`. No GPU needed: this runs in CI.
//!
//! Tools: the pinned CUDA 13.0 wheels that `.ci/run` installs into `.ci/cuda-tools`
//! (`nvidia-cuda-nvrtc`, `nvidia-cuda-runtime`, `nvidia-cuda-nvcc`), else python's
//! site-packages, else `MPM_CUDA_LIB_DIRS` / `PTXAS`. When they are missing the test fails
//! under CI (`CI=true`, or `MPM_REQUIRE_CUDA_TOOLS=1` as `.ci/run` sets) and prints `skipped: <reason>` otherwise.

use mpm::cuda::{libs, modules};
use std::process::Command;

const ARCH: &str = "90";

fn skip_or_fail(reason: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if ci || std::env::var("MPM_REQUIRE_CUDA_TOOLS").is_ok_and(|v| v == "1") {
        panic!("CI needs the CUDA tools: {reason} (see .ci/run)");
    }
    println!("skipped: {reason}");
}

#[test]
fn every_kernel_compiles_with_nvrtc_and_passes_ptxas_sm90() {
    let (maj, min) = match modules::nvrtc_version() {
        Ok(v) => v,
        Err(e) => return skip_or_fail(&e),
    };
    let Some(ptxas) = libs::find_ptxas() else {
        return skip_or_fail("ptxas not found (nvidia-cuda-nvcc wheel, PTXAS or PATH)");
    };
    println!(
        "NVRTC {maj}.{min} from {:?}; ptxas {}",
        libs::find("libnvrtc.so.13"),
        ptxas.display()
    );
    // The 13.0 driver of the target machine loads PTX/CUBIN from NVRTC <= 13.0; a newer one
    // (e.g. torch's 13.2 wheels in site-packages) would check the wrong compiler.
    if (maj, min) > (13, 0) {
        return skip_or_fail(&format!(
            "found NVRTC {maj}.{min}, newer than the target driver (CUDA 13.0) accepts; install the pinned 13.0 wheels into .ci/cuda-tools (see .ci/run)"
        ));
    }
    assert!(!modules::KERNELS.is_empty(), "build.rs found no kernels");
    let dir = std::env::temp_dir().join(format!("mpm-kernels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut failures = Vec::new();
    for k in modules::KERNELS {
        let ptx = match modules::compile(k, ARCH, modules::Output::Ptx) {
            Ok(p) => p,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        let ptx_text = String::from_utf8_lossy(&ptx).into_owned();
        let entries = ptx_text.matches(".entry").count();
        // The runtime finds a kernel's file by its name on a `__global__` line
        // (`modules::file_of`): every entry point must be findable, or its launch fails.
        for name in ptx_text
            .lines()
            .filter_map(|l| l.split(".entry").nth(1))
            .map(|rest| rest.trim().trim_end_matches('(').trim())
        {
            match modules::file_of(name) {
                Some(f) if f.name == k.name => {}
                other => failures.push(format!(
                    "kernel {name} of {}.cu: modules::file_of finds {:?} (declare it on its \
                     `extern \"C\" __global__` line)",
                    k.name,
                    other.map(|f| f.name)
                )),
            }
        }
        let path = dir.join(format!("{}.ptx", k.name));
        std::fs::write(&path, &ptx).expect("write ptx");
        let out = Command::new(&ptxas)
            .args(["-arch=sm_90", "-v", "-o"])
            .arg(dir.join(format!("{}.cubin", k.name)))
            .arg(&path)
            .output()
            .expect("run ptxas");
        let log = String::from_utf8_lossy(&out.stderr);
        let spills = log
            .lines()
            .filter(|l| {
                l.contains("bytes spill")
                    && !l.contains(" 0 bytes spill stores, 0 bytes spill loads")
            })
            .count();
        println!(
            "{:>14}.cu: {entries:>2} kernels, ptxas {}{}",
            k.name,
            if out.status.success() { "ok" } else { "FAILED" },
            if spills > 0 {
                format!(", {spills} kernel(s) spill")
            } else {
                String::new()
            }
        );
        if !out.status.success() {
            failures.push(format!("ptxas -arch=sm_90 failed on {}.cu:\n{log}", k.name));
        }
        // The runtime's CUBIN path (what a GPU without nvcc-built binaries loads) too.
        if let Err(e) = modules::compile(k, ARCH, modules::Output::Cubin) {
            failures.push(e);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn kernel_table_hashes_are_stable_and_sources_self_contained() {
    for k in modules::KERNELS {
        assert!(
            !k.source
                .lines()
                .any(|l| l.trim_start().starts_with("#include")),
            "{}.cu: includes must be pasted in by build.rs (NVRTC has no include path at run time)",
            k.name
        );
        assert!(
            k.source.contains("extern \"C\" __global__"),
            "{}.cu has no kernels",
            k.name
        );
    }
    let names: Vec<&str> = modules::KERNELS.iter().map(|k| k.name).collect();
    for want in [
        "elementwise",
        "bn_gelu",
        "conv_gelu",
        "focal_loss",
        "pgd_step",
        "mask_targets",
        "pool",
        "resize",
        "softmax_xent",
        "optim",
        "reduce",
        "square_rows",
    ] {
        assert!(
            names.contains(&want),
            "kernels/{want}.cu missing from the table: {names:?}"
        );
    }
}
