//! The `mpm-train` binary end to end on a tiny synthetic set written by the data pipeline:
//! train with flags, stop, resume, export; the demo at toy size; bad paths.

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mpm-train"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mpm-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn out(c: &mut Command) -> (bool, String) {
    let o = c.output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn demo_at_toy_size_prints_the_table_and_writes_pictures() {
    let dir = tmp("demo");
    let (ok, text) = out(bin().args([
        "demo",
        "--out",
        dir.to_str().unwrap(),
        "--classes",
        "3",
        "--per-class",
        "10",
        "--epochs",
        "2",
        "--size",
        "32",
        "--width",
        "4",
        "--batch-size",
        "8",
        "--aa-images",
        "4",
        "--no-progress",
    ]));
    assert!(ok, "{text}");
    assert!(
        text.contains("| vanilla |") && text.contains("| MPM |"),
        "{text}"
    );
    for f in [
        "curves.png",
        "parts.png",
        "results.md",
        "mpm/export/model.pth",
    ] {
        assert!(dir.join(f).exists(), "{f} missing\n{text}");
    }
    // The demo's data are in the training layout; train on them through flags, stop, resume.
    let data = dir.join("data/pin");
    let run = tmp("run");
    let common = |c: &mut Command| {
        c.args([
            "--model",
            "resnet18",
            "--width",
            "4",
            "--num-classes",
            "3",
            "--partmodel-type",
            "mpm",
            "--input-size",
            "32",
            "--batch-size",
            "4",
            "--epochs",
            "2",
            "--no-progress",
            "--train-dir",
            data.join("train.txt").to_str().unwrap(),
            "--eval-dir",
            data.join("val.txt").to_str().unwrap(),
            "--output-dir",
            run.to_str().unwrap(),
        ]);
    };
    let parts = std::fs::read_to_string(data.join("parts.tsv")).unwrap();
    let s = (parts.lines().count() + 1).to_string();
    let mut c = bin();
    common(&mut c);
    c.args(["--seg-classes", &s, "--stop-after-steps", "3"]);
    let (ok, text) = out(&mut c);
    assert!(ok && text.contains("resume with"), "{text}");
    let (ok, text) = out(bin().args(["--resume", run.to_str().unwrap(), "--no-progress"]));
    assert!(ok && text.contains("done"), "{text}");
    assert!(run.join("export/model.safetensors").exists());
    assert!(run.join("plots/curves.png").exists());
    let m = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(m.contains("\"kind\":\"eval\"") && m.contains("miou"), "{m}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&run);
}

#[test]
fn bad_paths_and_values_are_one_clear_line() {
    let (ok, text) = out(bin().args(["--train-dir", "/no/such/dir", "--no-progress"]));
    assert!(
        !ok && text.contains("--train-dir") && text.contains("no such"),
        "{text}"
    );
    let (ok, text) = out(bin().args(["--epochs", "ten"]));
    assert!(!ok && text.contains("--epochs"), "{text}");
    let (ok, text) = out(bin().args(["--config", "/no/such.toml"]));
    assert!(!ok && text.contains("/no/such.toml"), "{text}");
    let (ok, text) = out(bin().args(["--partmodel-type", "mmp"]));
    assert!(!ok && text.contains("--partmodel-type"), "{text}");
    let (ok, text) = out(bin().args(["--resume", "/no/run"]));
    assert!(!ok && text.contains("/no/run"), "{text}");
}
