//! Sharded evaluation (issue 19 item 5): `mpm-attack --shard I/N` + `mpm-attack merge`, and
//! `mpm-eval clean --shard I/N` + `mpm-eval merge`, each on a tiny model. The merged report
//! must equal the single run's, sample for sample; merges of shards of another run, of a
//! missing or a duplicated shard are refused.

use mpm::io::{self, HostTensor, NamedTensors};
use mpm::nn::ModelSpec;
use rand::{RngExt, SeedableRng};
use std::path::Path;
use std::process::Output;

mod common;
use common::{classifier_spec as spec, image, json, ok, run_in as run, save_model, strings};

/// X: `n` random 32-px images, labels = the model's own predictions except every third
/// (so that clean-wrong samples are merged too).
fn data(path: &Path, spec: &ModelSpec, seed: u64, n: usize) {
    let store = spec.init(seed).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let x: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let mut m = mpm::attack::EngineClassifier::new(*spec, store);
    use mpm::attack::Classifier;
    let k = spec.num_classes;
    let z = m
        .logits(&x, mpm::attack::Dims { c: 3, h: 32, w: 32 })
        .unwrap();
    let y: Vec<i64> = z
        .chunks(k)
        .enumerate()
        .map(|(i, r)| {
            let p = mpm::attack::model::argmax(r) as i64;
            if i % 3 == 2 {
                (p + 1) % k as i64
            } else {
                p
            }
        })
        .collect();
    let mut t = NamedTensors::new();
    t.insert("input".into(), HostTensor::f32(vec![n, 3, 32, 32], x));
    t.insert("target".into(), HostTensor::i64(vec![n], y));
    io::save_safetensors(path, &t, &io::no_metadata()).unwrap();
}

fn fails(o: Output) -> String {
    assert_eq!(o.status.code(), Some(2), "expected a refusal");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The per-sample and summary fields a merge must reproduce exactly.
const SAME: [&str; 10] = [
    "n",
    "clean_accuracy",
    "robust_accuracy",
    "per_attack",
    "robust",
    "clean",
    "fooled_by",
    "rejected_claims",
    "per_class",
    "attacks",
];

#[test]
fn attack_shards_merge_into_the_single_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sp = spec(10, 4);
    save_model(&d.join("w.safetensors"), &sp, 11);
    data(&d.join("x.safetensors"), &sp, 11, 7);
    let bin = env!("CARGO_BIN_EXE_mpm-attack");
    let common = strings(&[
        "--weights",
        "w.safetensors",
        "--arch",
        "resnet18",
        "--num-classes",
        "10",
        "--data",
        "x.safetensors",
        "--version",
        "custom",
        "--attacks",
        "apgd-ce,apgd-t,fab-t,square",
        "--n-iter",
        "4",
        "--square-queries",
        "15",
        "--seed",
        "3",
        "--norm",
        "Linf",
        "--eps",
        "0.03137255",
        "--device",
        "cpu",
    ]);
    let with = |extra: &[&str]| [common.clone(), strings(extra)].concat();
    // The single run, in batches of 2: the shards' batches are cut elsewhere.
    ok(run(
        bin,
        d,
        &with(&["--batch-size", "2", "--report", "full.json"]),
    ));
    let full = json(&d.join("full.json"));
    assert_eq!(full["n"], 7);
    assert!(
        full.get("shard").is_none(),
        "a plain run has no shard block"
    );
    // Three shards (blocks 0..2, 2..4, 4..7), batches of 3.
    let mut parts = Vec::new();
    for i in 0..3 {
        let r = format!("s{i}.json");
        let log = ok(run(
            bin,
            d,
            &with(&[
                "--batch-size",
                "3",
                "--shard",
                &format!("{i}/3"),
                "--report",
                &r,
            ]),
        ));
        assert!(log.contains(&format!("shard {i}/3")), "{log}");
        let rep = json(&d.join(&r));
        assert_eq!(rep["shard"]["index"], i);
        assert!(rep["shard"]["images_per_s"].as_f64().unwrap() > 0.0);
        parts.push(r);
    }
    assert_eq!(json(&d.join("s2.json"))["n"], 3);
    // Any order.
    let mut m = strings(&[
        "merge",
        "s2.json",
        "s0.json",
        "s1.json",
        "--report",
        "merged.json",
    ]);
    ok(run(bin, d, &m));
    let merged = json(&d.join("merged.json"));
    for k in SAME {
        assert_eq!(merged[k], full[k], "{k} differs after the merge");
    }
    for k in ["norm", "eps", "seed", "model", "data", "version"] {
        assert_eq!(merged[k], full[k], "{k}");
    }
    let t = &merged["timing"];
    assert_eq!(t["per_shard"].as_array().unwrap().len(), 3);
    assert!(t["estimated_speedup"].as_f64().unwrap() > 1.0);

    // Refusals: a missing shard, a duplicate, a shard of another run.
    m = strings(&["merge", "s0.json", "s2.json", "--report", "bad.json"]);
    let e = fails(run(bin, d, &m));
    assert!(e.contains("1/3 missing"), "{e}");
    m = strings(&[
        "merge", "s0.json", "s1.json", "s1.json", "s2.json", "--report", "bad.json",
    ]);
    let e = fails(run(bin, d, &m));
    assert!(e.contains("given twice"), "{e}");
    let mut other = with(&["--batch-size", "3", "--shard", "1/3", "--report", "o1.json"]);
    other[17] = "4".into(); // --seed 4
    ok(run(bin, d, &other));
    m = strings(&[
        "merge", "s0.json", "o1.json", "s2.json", "--report", "bad.json",
    ]);
    let e = fails(run(bin, d, &m));
    assert!(
        e.contains("another run") && e.contains("seed changed (3 -> 4)"),
        "{e}"
    );
    m = strings(&["merge", "full.json", "--report", "bad.json"]);
    let e = fails(run(bin, d, &m));
    assert!(e.contains("not a shard report"), "{e}");
    // An edited shard (a sample removed): the range reads as JSON, not as Rust debug output.
    let mut edited = json(&d.join("s1.json"));
    edited["shard"]["samples"].as_array_mut().unwrap().pop();
    std::fs::write(d.join("e1.json"), edited.to_string()).unwrap();
    m = strings(&[
        "merge", "s0.json", "e1.json", "s2.json", "--report", "bad.json",
    ]);
    let e = fails(run(bin, d, &m));
    assert!(
        e.contains("it holds 1 for the range [2,4] (an interrupted"),
        "{e}"
    );
    assert!(!e.contains("Array") && !e.contains("Number("), "{e}");
    assert!(!d.join("bad.json").exists());

    // --threats paper: every threat merged, the table rebuilt.
    let paper = |extra: &[&str]| {
        let mut a = common[..16].to_vec(); // up to the attack budget, no --norm/--eps
        a.extend(strings(&[
            "--seed",
            "3",
            "--device",
            "cpu",
            "--threats",
            "paper",
        ]));
        a[11] = "apgd-ce".into();
        a.extend(strings(extra));
        a
    };
    ok(run(
        bin,
        d,
        &paper(&["--limit", "4", "--report", "pfull.json"]),
    ));
    for i in 0..2 {
        let r = format!("p{i}.json");
        ok(run(
            bin,
            d,
            &paper(&["--limit", "4", "--shard", &format!("{i}/2"), "--report", &r]),
        ));
    }
    m = strings(&["merge", "p0.json", "p1.json", "--report", "pmerged.json"]);
    ok(run(bin, d, &m));
    let (pf, pm) = (json(&d.join("pfull.json")), json(&d.join("pmerged.json")));
    assert_eq!(pm["n"], 4);
    assert_eq!(pm["table"], pf["table"]);
    assert_eq!(pm["clean_accuracy"], pf["clean_accuracy"]);
    for slug in ["linf4", "linf8", "l1_75", "l2_2"] {
        for k in SAME {
            assert_eq!(pm["threats"][slug][k], pf["threats"][slug][k], "{slug}.{k}");
        }
    }
}

#[test]
fn eval_shards_merge_into_the_single_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sp = spec(3, 8);
    save_model(&d.join("m3.safetensors"), &sp, 2);
    for (c, class) in ["a", "b", "c"].iter().enumerate() {
        for k in 0..3 {
            image(&d.join(format!("val/{class}/{k}.png")), (3 * c + k) as u32);
        }
    }
    std::fs::write(d.join("val/b/broken.png"), b"not a png").unwrap();
    let bin = env!("CARGO_BIN_EXE_mpm-eval");
    let base = strings(&[
        "clean",
        "--weights",
        "m3.safetensors",
        "--arch",
        "resnet18",
        "--num-classes",
        "3",
        "--data",
        "val",
        "--crop",
        "32",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]);
    let with = |extra: &[&str]| [base.clone(), strings(extra)].concat();
    ok(run(bin, d, &with(&["--json", "full.json"])));
    for i in 0..3 {
        ok(run(
            bin,
            d,
            &with(&[
                "--shard",
                &format!("{i}/3"),
                "--json",
                &format!("s{i}.json"),
            ]),
        ));
    }
    let s0 = json(&d.join("s0.json"));
    assert!(s0["shard"]["entries"].as_array().unwrap().len() < 10);
    let m = strings(&[
        "merge",
        "s1.json",
        "s0.json",
        "s2.json",
        "--json",
        "merged.json",
    ]);
    let log = ok(run(bin, d, &m));
    assert!(log.contains("merge: no model pass"), "{log}");
    let (full, merged) = (json(&d.join("full.json")), json(&d.join("merged.json")));
    assert_eq!(merged["result"], full["result"]);
    assert_eq!(merged["result"]["n"], 9);
    assert_eq!(merged["result"]["skipped"], 1);
    assert_eq!(merged["table"], full["table"]);
    assert_eq!(merged["timing"]["per_shard"].as_array().unwrap().len(), 3);
    // Per image: the merged journal holds the single run's answers.
    let lines = |p: &str| {
        let mut v: Vec<String> = std::fs::read_to_string(d.join(p))
            .unwrap()
            .lines()
            .skip(1)
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    assert_eq!(lines("merged.json.journal"), lines("full.json.journal"));
    // Refusals.
    let e = fails(run(
        bin,
        d,
        &strings(&["merge", "s0.json", "s1.json", "--json", "b.json"]),
    ));
    assert!(e.contains("2/3 missing"), "{e}");
    let mut other = with(&["--shard", "2/3", "--json", "o2.json"]);
    other[10] = "36".into(); // --crop
    ok(run(bin, d, &other));
    let e = fails(run(
        bin,
        d,
        &strings(&["merge", "s0.json", "s1.json", "o2.json", "--json", "b.json"]),
    ));
    assert!(e.contains("another run") && e.contains("crop"), "{e}");
}
