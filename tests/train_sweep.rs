//! `mpm-train sweep` (Figure S3, issue #21) at toy scale: the shipped Figure S3 config with
//! size overrides, two lambda values on the synthetic set (ResNet-18 width 4, 32 px, one
//! epoch): each variant trained in its own folder with its value, evaluated (clean, PGD,
//! AutoAttack APGD-CE + APGD-T, which with 3 classes is APGD-CE + APGD-DLR), the table and the
//! plot written; the same sweep with `--jobs 2` (variants as parallel child processes) gives
//! the same numbers; a second run skips the finished variants; a removed result is
//! re-evaluated from the finished run; bad values fail before any training.

use std::path::Path;
use std::process::{Command, Output};

use mpm::data::labels::{run_labels, ImageMode, LabelsConfig};
use mpm::data::synth::{run_synth, SynthConfig};

/// Synthetic PIN++ -> training layout; returns (train list, val list, S).
fn data(root: &Path) -> (String, String, usize) {
    let raw = root.join("syn");
    run_synth(&SynthConfig {
        out: raw.clone(),
        classes: 3,
        images_per_class: 8,
        min_size: 32,
        max_size: 44,
        ..Default::default()
    })
    .unwrap();
    let pin = root.join("pin");
    let s = run_labels(&LabelsConfig {
        json_dir: raw.join("json"),
        including: Some(raw.join("including")),
        discarded: Some(raw.join("discarded_data.json")),
        category_names: None,
        images: raw.join("images"),
        out: pin.clone(),
        image_mode: ImageMode::Symlink,
        val_fraction: 0.25,
        split_seed: 0,
        progress: false,
    })
    .unwrap();
    (
        pin.join("train.txt").display().to_string(),
        pin.join("val.txt").display().to_string(),
        s.parts + 1,
    )
}

fn sweep(out: &Path, train: &str, val: &str, seg: usize, values: &str) -> Output {
    sweep_with(out, train, val, seg, values, &[])
}

fn sweep_with(
    out: &Path,
    train: &str,
    val: &str,
    seg: usize,
    values: &str,
    extra: &[&str],
) -> Output {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tpinpp_mpm_resnet50.toml");
    let mut c = Command::new(env!("CARGO_BIN_EXE_mpm-train"));
    c.arg("sweep")
        .arg("--config")
        .arg(&config)
        .args(["--key", "lambdas", "--values", values])
        .arg("--out")
        .arg(out);
    for kv in [
        "model=resnet18".to_string(),
        "width=4".into(),
        "num_classes=3".into(),
        format!("seg_classes={seg}"),
        "input_size=32".into(),
        "batch_size=4".into(),
        "bn_group=2".into(),
        "epochs=1".into(),
        "warmup_epochs=0".into(),
        "eval_attack_it=2".into(),
        format!("train_dir={train}"),
        format!("eval_dir={val}"),
        "device=cpu".into(),
        "prefetch_batches=0".into(),
    ] {
        c.arg("--set").arg(kv);
    }
    c.args(["--aa-images", "4", "--aa-version", "apgd", "--no-progress"]);
    c.args(extra);
    c.output().expect("run mpm-train sweep")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn sweep_trains_evaluates_tabulates_plots_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, val, seg) = data(tmp.path());
    let out = tmp.path().join("sweep");

    // A value the key cannot take fails before anything is trained.
    let o = sweep(&out, &train, &val, seg, "0,heavy");
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("--lambdas") && t.contains("heavy"), "{t}");
    assert!(
        !out.join("lambdas_0").exists(),
        "nothing may run before every value is checked"
    );

    let o = sweep(&out, &train, &val, seg, "0,1");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, value) in rows.iter().zip(["0", "1"]) {
        assert_eq!(row["value"], value);
        // Each variant trained with its own value.
        let cfg =
            std::fs::read_to_string(out.join(format!("lambdas_{value}/config.toml"))).unwrap();
        assert!(
            cfg.contains(&format!("lambdas = {value}.0")),
            "lambdas_{value}: {cfg}"
        );
        assert!(out
            .join(format!("lambdas_{value}/checkpoints/last.safetensors"))
            .exists());
        for k in ["clean_accuracy", "pgd_accuracy", "autoattack_accuracy"] {
            let a = row[k].as_f64().unwrap_or_else(|| panic!("{k}: {row}"));
            assert!((0.0..=1.0).contains(&a), "{k} = {a}");
        }
        assert_eq!(row["autoattack_images"], 4);
        assert_eq!(row["pgd_steps"], 2);
        assert!(row["images"].as_u64().unwrap() > 0);
    }
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(md.contains("| lambdas | clean acc %"), "{md}");
    assert!(md.contains("| 0 |") && md.contains("| 1 |"), "{md}");
    assert!(
        md.contains("AutoAttack (APGD-CE + APGD-DLR) acc % (4 images)"),
        "{md}"
    );
    let png = std::fs::read(out.join("sweep.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 2000);
    let img = image::load_from_memory(&png).unwrap();
    assert!(img.width() >= 400 && img.height() >= 300);

    // The same sweep with both variants side by side, each its own process (`--jobs 2`):
    // the same numbers (training and evaluation are deterministic), the same table rows.
    let par = tmp.path().join("sweep_par");
    let o = sweep_with(&par, &train, &val, seg, "0,1", &["--jobs", "2"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for value in ["0", "1"] {
        assert!(
            t.contains(&format!("lambdas = {value}: training on cpu")),
            "{t}"
        );
        let log = std::fs::read_to_string(par.join(format!("lambdas_{value}.log"))).unwrap();
        assert!(log.contains("--variant"), "{log}");
    }
    let prow: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(par.join("sweep.json")).unwrap()).unwrap();
    let prow = prow.as_array().unwrap();
    assert_eq!(prow.len(), 2);
    for (a, b) in rows.iter().zip(prow) {
        for k in [
            "value",
            "evaluated",
            "images",
            "clean_accuracy",
            "pgd_steps",
            "eps",
            "pgd_accuracy",
            "autoattack",
            "autoattack_images",
            "autoattack_accuracy",
        ] {
            assert_eq!(a[k], b[k], "{k}: serial {a} vs --jobs 2 {b}");
        }
    }
    let strip_seconds = |md: &str| -> Vec<String> {
        md.lines()
            .map(|l| l.rsplit_once(" | ").map_or(l, |x| x.0).to_string())
            .collect()
    };
    assert_eq!(
        strip_seconds(&std::fs::read_to_string(par.join("sweep.md")).unwrap()),
        strip_seconds(&md)
    );

    // Run again: both variants finished, nothing is retrained or re-evaluated.
    let before = std::fs::read_to_string(out.join("sweep.json")).unwrap();
    let o = sweep(&out, &train, &val, seg, "0,1");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert_eq!(t.matches("done before").count(), 2, "{t}");
    assert_eq!(
        std::fs::read_to_string(out.join("sweep.json")).unwrap(),
        before
    );

    // A variant whose result is gone is resumed from its finished run and evaluated again,
    // with the same clean accuracy (the evaluation is deterministic).
    std::fs::remove_file(out.join("lambdas_1/sweep_result.json")).unwrap();
    let o = sweep(&out, &train, &val, seg, "0,1");
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("lambdas = 1: resuming"), "{t}");
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    assert_eq!(again[1]["clean_accuracy"], rows[1]["clean_accuracy"]);
    assert_eq!(again[1]["pgd_accuracy"], rows[1]["pgd_accuracy"]);
}
