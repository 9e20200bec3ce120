//! PyTorch parity at contract-A tolerances, from the committed fixtures in
//! `tests/fixtures/parity/` (made by `tests/fixtures/make_fixtures.py` with PyTorch 2.15 from
//! `scripts/mpm_reference.py`; see `tests/fixtures/README.md`). No PyTorch needed here.
//! Every case runs through the real `mpm-audit` binary: `check` for all of them, and
//! `parity` (the file-level contract) for one, whose Y file is then compared here.

use std::path::{Path, PathBuf};
use std::process::Command;

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("fixtures directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("case.json").exists())
        .collect();
    v.sort();
    v
}

#[test]
fn every_fixture_case_passes_check() {
    let cases = cases();
    assert!(
        cases.len() >= 9,
        "expected the 9 committed cases, found {}",
        cases.len()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_mpm-audit"))
        .arg("check")
        .args(&cases)
        .output()
        .expect("run mpm-audit");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "parity check failed:\n{text}");
    assert_eq!(text.matches("PASS").count(), cases.len());
}

#[test]
fn parity_command_writes_contract_a_file() {
    let case =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/r18_gelu_mpm_l3_td");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("case.json")).unwrap()).unwrap();
    let args: Vec<String> = json["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let dir = std::env::temp_dir().join(format!("mpm-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let y = dir.join("y.safetensors");
    let status = Command::new(env!("CARGO_BIN_EXE_mpm-audit"))
        .args(["parity", "--device", "cpu", "--weights"])
        .arg(case.join("weights.safetensors"))
        .arg("--input")
        .arg(case.join("input.safetensors"))
        .arg("--out")
        .arg(&y)
        .args(&args)
        .status()
        .unwrap();
    assert!(status.success());
    let got = mpm::audit::files::read_output(&y).unwrap();
    let expected = mpm::audit::files::read_output(&case.join("expected.safetensors")).unwrap();
    let rows = mpm::audit::parity::compare(&expected, &got);
    assert_eq!(
        rows.len(),
        expected.len(),
        "Y must hold exactly the reference's tensors"
    );
    for r in &rows {
        assert!(
            r.ok(),
            "{} error {:.2e} > {:.0e}",
            r.name,
            r.error,
            r.tolerance
        );
    }
    for k in [
        "eval.logits",
        "eval.seg.0",
        "eval.seg.2",
        "eval.loss_ce",
        "eval.grad_input",
        "train.loss",
    ] {
        assert!(got.contains_key(k), "missing {k}");
    }
    assert_eq!(
        got["eval.loss_ce"].shape,
        Vec::<usize>::new(),
        "scalars have shape []"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_flags_and_files_are_clear_errors() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/r18_gelu_plain");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mpm-audit"))
            .args(["parity", "--weights"])
            .arg(case.join("weights.safetensors"))
            .arg("--input")
            .arg(case.join("input.safetensors"))
            .args(["--out", "/dev/null"])
            .args(extra)
            .output()
            .unwrap()
    };
    // Wrong architecture for the weights: every offending tensor is listed.
    let o = run(&["--arch", "resnet50", "--num-classes", "10"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("unexpected:") || err.contains("missing:"),
        "{err}"
    );
    // Wrong class count: mis-shaped fc.
    let o = run(&["--arch", "resnet18", "--num-classes", "11"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("mis-shaped: fc.weight"), "{err}");
    // Unknown flag: clap error.
    let o = run(&["--arch", "resnet18", "--num-classes", "10", "--bogus"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--bogus"));
    // A head needs --seg-classes.
    let o = run(&["--arch", "resnet18", "--num-classes", "10", "--head", "mpm"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--seg-classes"));
}
