//! `mpm-attack` on an ImageFolder tree, through the data pipeline's decoder and eval
//! transform.

use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec};
use std::path::Path;
use std::process::Command;

fn data_bin(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mpm-data"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run mpm-data")
}

#[test]
fn mpm_attack_reads_an_image_folder_through_the_data_pipeline() {
    // An ImageFolder (the synthetic set's images/<wnid>/*.JPEG) with the eval transform at a
    // small size, a few APGD-CE iterations: the report covers every image of the list.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(data_bin(
        &[
            "synth",
            "--out",
            "syn",
            "--classes",
            "3",
            "--images-per-class",
            "3"
        ],
        d
    )
    .status
    .success());
    let spec = ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet18,
            width: 4,
            act: Act::Gelu,
        },
        num_classes: 3,
        seg_classes: 0,
        head: Head::None,
    };
    let store = spec.init(2).unwrap();
    mpm::nn::checkpoint::save_state(
        &d.join("w.safetensors"),
        &spec.state_dict(&store).unwrap(),
        &Default::default(),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mpm-attack"))
        .current_dir(d)
        .args([
            "--weights",
            "w.safetensors",
            "--arch",
            "resnet18",
            "--num-classes",
            "3",
            "--data",
            "syn/images",
            "--per-class",
            "2",
            "--resize",
            "40",
            "--crop",
            "32",
            "--norm",
            "Linf",
            "--eps",
            "0.03137255",
            "--version",
            "custom",
            "--attacks",
            "apgd-ce",
            "--n-iter",
            "3",
            "--report",
            "r.json",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("r.json")).unwrap()).unwrap();
    assert_eq!(r["n"], 6);
    assert_eq!(r["robust"].as_array().unwrap().len(), 6);
    let clean = r["clean_accuracy"].as_f64().unwrap();
    let robust = r["robust_accuracy"].as_f64().unwrap();
    assert!(robust <= clean);
}
