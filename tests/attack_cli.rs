//! `mpm-attack` end to end (contract B) on a tiny ResNet-18 written as a PyTorch-named
//! safetensors checkpoint: report fields, `adv` file, resume from the journal, `--threats
//! paper`, and clear errors for bad input (eps out of range, class-count mismatch,
//! checkpoint of another architecture).

use mpm::io::{self, HostTensor, NamedTensors};
use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec, StateValue};
use rand::{RngExt, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("mpm_attack_cli_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes W (ResNet-18 width 4, 10 classes) and X (`n` images, labels = predictions of the
/// engine, so that all start correct, except the last one).
fn fixtures(d: &Path, n: usize, bad_label: Option<i64>) -> (PathBuf, PathBuf) {
    let spec = ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet18,
            width: 4,
            act: Act::Gelu,
        },
        num_classes: 10,
        seg_classes: 0,
        head: Head::None,
    };
    let store = spec.init(11).unwrap();
    let mut w = NamedTensors::new();
    for (k, v) in spec.state_dict(&store).unwrap() {
        let t = match v {
            StateValue::Float(t) => HostTensor::f32(t.shape, t.data),
            StateValue::Int(i) => HostTensor::i64(Vec::<usize>::new(), vec![i]),
        };
        w.insert(k, t);
    }
    let wp = d.join("w.safetensors");
    io::save_safetensors(&wp, &w, &io::no_metadata()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let x: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let mut m = mpm::attack::EngineClassifier::new(spec, store);
    use mpm::attack::Classifier;
    let z = m
        .logits(&x, mpm::attack::Dims { c: 3, h: 32, w: 32 })
        .unwrap();
    let mut y: Vec<i64> = z
        .chunks(10)
        .map(|r| mpm::attack::model::argmax(r) as i64)
        .collect();
    y[n - 1] = (y[n - 1] + 1) % 10;
    if let Some(b) = bad_label {
        y[0] = b;
    }
    let mut t = NamedTensors::new();
    t.insert("input".into(), HostTensor::f32(vec![n, 3, 32, 32], x));
    t.insert("target".into(), HostTensor::i64(vec![n], y));
    let xp = d.join(if bad_label.is_some() {
        "xbad.safetensors"
    } else {
        "x.safetensors"
    });
    io::save_safetensors(&xp, &t, &io::no_metadata()).unwrap();
    (wp, xp)
}

fn attack(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mpm-attack"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn contract_b_report_adv_resume_and_errors() {
    // Its own folder: removing it at the end must not pull the files from under the other
    // test of this file, which runs in parallel under dir().
    let d = dir().join("contract_b");
    std::fs::create_dir_all(&d).unwrap();
    let (w, x) = fixtures(&d, 4, None);
    let r = d.join("r.json");
    let a = d.join("a.safetensors");
    let (ws, xs, rs, as_) = (
        w.to_str().unwrap(),
        x.to_str().unwrap(),
        r.to_str().unwrap(),
        a.to_str().unwrap(),
    );
    let common = [
        "--weights",
        ws,
        "--arch",
        "resnet18",
        "--num-classes",
        "10",
        "--data",
        xs,
        "--version",
        "custom",
        "--n-iter",
        "5",
        "--square-queries",
        "20",
        "--seed",
        "1",
        "--batch-size",
        "3",
    ];
    let mut args: Vec<&str> = common.to_vec();
    args.extend([
        "--norm",
        "Linf",
        "--eps",
        "0.00392157",
        "--report",
        rs,
        "--adv-out",
        as_,
    ]);
    let out = attack(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&r).unwrap()).unwrap();
    assert_eq!(rep["n"], 4);
    assert_eq!(rep["clean_accuracy"], 0.75);
    let robust = rep["robust_accuracy"].as_f64().unwrap();
    assert!(robust <= 0.75);
    let flags = rep["robust"].as_array().unwrap();
    assert_eq!(flags.len(), 4);
    assert_eq!(flags[3], false, "a misclassified sample is not robust");
    let k = flags.iter().filter(|v| v.as_bool().unwrap()).count();
    assert_eq!(k as f64 / 4.0, robust);
    for name in ["apgd-ce", "apgd-t", "fab-t", "square"] {
        assert!(rep["per_attack"][name].is_number(), "per_attack.{name}");
    }
    assert_eq!(rep["per_attack"]["square"].as_f64().unwrap(), robust);
    let (t, _) = io::load_safetensors(&a).unwrap();
    assert_eq!(t["adv"].shape, vec![4, 3, 32, 32]);

    // Rerun: everything comes from the journal, same report.
    let again = attack(&args);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("resuming: 4 of 4"));
    let rep2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&r).unwrap()).unwrap();
    assert_eq!(rep2["robust"], rep["robust"]);
    assert_eq!(rep2["per_attack"], rep["per_attack"]);

    // eps out of range: pixel units by mistake.
    let mut bad: Vec<&str> = common.to_vec();
    let r2 = d.join("r2.json");
    bad.extend([
        "--norm",
        "Linf",
        "--eps",
        "4",
        "--report",
        r2.to_str().unwrap(),
    ]);
    let out = attack(&bad);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--eps") && err.contains("4/255"), "{err}");

    // A checkpoint for another architecture.
    let mut bad: Vec<&str> = common.to_vec();
    bad[3] = "resnet50";
    bad.extend([
        "--norm",
        "Linf",
        "--eps",
        "0.01",
        "--report",
        r2.to_str().unwrap(),
    ]);
    let out = attack(&bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checkpoint does not fit"));

    // Labels the model cannot produce.
    let (_, xb) = fixtures(&d, 4, Some(12));
    let mut bad: Vec<&str> = common.to_vec();
    bad[7] = xb.to_str().unwrap();
    bad.extend([
        "--norm",
        "L2",
        "--eps",
        "0.5",
        "--report",
        r2.to_str().unwrap(),
    ]);
    let out = attack(&bad);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn threats_paper_prints_the_table() {
    let d = dir().join("paper");
    std::fs::create_dir_all(&d).unwrap();
    let (w, x) = fixtures(&d, 3, None);
    let r = d.join("p.json");
    let out = attack(&[
        "--weights",
        w.to_str().unwrap(),
        "--arch",
        "resnet18",
        "--num-classes",
        "10",
        "--data",
        x.to_str().unwrap(),
        "--version",
        "custom",
        "--n-iter",
        "3",
        "--square-queries",
        "10",
        "--threats",
        "paper",
        "--report",
        r.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for col in ["clean", "Linf 4/255", "Linf 8/255", "L1 75", "L2 2", "avg"] {
        assert!(table.contains(col), "missing column {col}:\n{table}");
    }
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&r).unwrap()).unwrap();
    for t in ["linf4", "linf8", "l1_75", "l2_2"] {
        assert!(rep["threats"][t]["robust_accuracy"].is_number(), "{t}");
        assert!(rep["threats"][t]["per_class"].is_object(), "{t}");
    }
    std::fs::remove_dir_all(&d).ok();
}
