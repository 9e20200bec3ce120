//! Set-up shared by the integration tests: toy models and data, fresh temp folders, and
//! helpers to run the binaries and read what they wrote. Each test binary that says
//! `mod common;` compiles its own copy and uses a part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use mpm::io::{self, HostTensor, NamedTensors};
use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec, StateValue};
use mpm::train::TrainConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A ResNet-18 classifier of stem width `width` with GELU and no part head.
pub fn classifier_spec(classes: usize, width: usize) -> ModelSpec {
    ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet18,
            width,
            act: Act::Gelu,
        },
        num_classes: classes,
        seg_classes: 0,
        head: Head::None,
    }
}

/// Writes `spec`'s weights, initialised from `seed`, as a safetensors file.
pub fn save_model(path: &Path, spec: &ModelSpec, seed: u64) {
    let store = spec.init(seed).unwrap();
    let mut w = NamedTensors::new();
    for (k, v) in spec.state_dict(&store).unwrap() {
        let t = match v {
            StateValue::Float(t) => HostTensor::f32(t.shape, t.data),
            StateValue::Int(i) => HostTensor::i64(Vec::<usize>::new(), vec![i]),
        };
        w.insert(k, t);
    }
    io::save_safetensors(path, &w, &io::no_metadata()).unwrap();
}

/// A deterministic 40x40 RGB image at `path` (its folder is created); `seed` varies it.
pub fn image(path: &Path, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(40, 40, |x, y| {
        let v = |k: u32| ((x * (3 + seed + k) + y * (5 + 2 * seed + k) + seed * 31) % 256) as u8;
        image::Rgb([v(0), v(7), v(13)])
    });
    img.save(path).unwrap();
}

/// The tiny MPM training configuration the trainer tests share (ResNet-18 of width 4, 3
/// classes, 7 part labels, 32-px inputs, 2 epochs with 1 of warm-up, EMA 0.9), then
/// `overrides` (key, value) in the config file's names.
pub fn tiny_mpm_config(overrides: &[(&str, &str)]) -> TrainConfig {
    let mut c = TrainConfig::default();
    for (k, v) in [
        ("model", "resnet18"),
        ("width", "4"),
        ("num_classes", "3"),
        ("seg_classes", "7"),
        ("partmodel_type", "mpm"),
        ("epochs", "2"),
        ("warmup_epochs", "1"),
        ("input_size", "32"),
        ("model_ema_decay", "0.9"),
    ]
    .iter()
    .chain(overrides)
    {
        c.set(k, v).unwrap();
    }
    c
}

/// A fresh (emptied) folder `<temp>/mpm-<what>-test-<pid>-<name>`; not created.
pub fn tmp(what: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mpm-{what}-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Runs `bin` in `dir` with `args`.
pub fn run_in(bin: &str, dir: &Path, args: &[String]) -> Output {
    Command::new(bin)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// Asserts success; returns stderr (the binaries' log).
pub fn ok(o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "failed: {err}");
    err
}

/// stdout then stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Exit status 1 or 2 (the binaries' error codes), not a signal or success.
pub fn failed_cleanly(o: &Output) -> bool {
    matches!(o.status.code(), Some(1) | Some(2))
}

/// Reads a JSON file.
pub fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// (index, answer) of every image in an evaluation journal (`mpm-attack`, `mpm-eval`), in
/// index order; the header line is skipped.
pub fn journal_answers(journal: &Path) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = std::fs::read_to_string(journal)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["i"].as_u64().unwrap(), v["a"][0].as_u64().unwrap())
        })
        .collect();
    v.sort();
    v
}

/// Owned copies of `v`, for argument lists.
pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
