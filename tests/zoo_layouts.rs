//! Checkpoint layouts of the published adversarially trained ResNet-50s (`nn::zoo`): each
//! committed fixture (`tests/fixtures/zoo/`, written by `scripts/make_zoo_fixtures.py`: a
//! width-1 ResNet-50 with random weights saved the way each project saves its checkpoints)
//! must be detected as its layout, take its own input normalisation, and give PyTorch's
//! logits (relative L2 error <= 1e-4, as contract A's outputs). Then the bad inputs: a file
//! that does not record its normalisation, flags that contradict one that does, an unknown
//! layout; and the command line: `mpm-attack zoo`, `--zoo NAME` checks, the report's
//! `preprocessing`, `mpm-eval table --published`.

use mpm::attack::{Classifier, Dims, EngineClassifier};
use mpm::audit::files::ModelArgs;
use mpm::io::{self, HostData, HostTensor, NamedTensors};
use mpm::nn::zoo::{self, InputNorm, NormArgs};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/zoo")
        .join(name)
}

/// The model flags as the command line gives them (so flags added later keep their defaults).
#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    model: ModelArgs,
}

fn args_with(act: &str, extra: &[&str]) -> ModelArgs {
    use clap::Parser;
    let mut argv = vec![
        "t",
        "--arch",
        "resnet50",
        "--num-classes",
        "10",
        "--act",
        act,
    ];
    argv.extend_from_slice(extra);
    Flags::parse_from(argv).model
}

fn args(act: &str) -> ModelArgs {
    args_with(act, &[])
}

fn f32s(t: &HostTensor) -> Vec<f32> {
    match &t.data {
        HostData::F32(d) => d.clone(),
        other => panic!("expected f32, got {other:?}"),
    }
}

/// (input [2, 3, 32, 32], PyTorch logits [2, 10]) of a case.
fn expected(case: &str) -> (Vec<f32>, Vec<f32>) {
    let (t, _) = io::load_safetensors(&fixture(&format!("{case}.expected.safetensors"))).unwrap();
    (f32s(&t["input"]), f32s(&t["logits"]))
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Loads `file` with the flags, checks the layout and normalisation found, and compares the
/// engine's logits with PyTorch's.
fn check(case: &str, file: &str, a: ModelArgs, norm: NormArgs, layout: &str, want: InputNorm) {
    let m = zoo::load_for_eval(&fixture(file), &a, &norm).unwrap_or_else(|e| panic!("{case}: {e}"));
    let p = &m.preprocessing;
    assert_eq!(p.layout.name(), layout, "{case}: {}", p.describe());
    assert!(p.norm.same(&want), "{case}: {}", p.describe());
    let (x, z_ref) = expected(case);
    let mut clf = EngineClassifier::new(m.spec, m.store).with_input_norm(p.norm);
    let z = clf.logits(&x, Dims { c: 3, h: 32, w: 32 }).unwrap();
    let err = rel_l2(&z, &z_ref);
    assert!(
        err <= 1e-4,
        "{case}: relative L2 error {err:e} of the logits"
    );
    // The normalisation matters: ImageNet's instead of the model's own must miss (so this test
    // can fail when a layout's normalisation is ignored).
    if !want.same(&InputNorm::IMAGENET) {
        let m = zoo::load_for_eval(&fixture(file), &a, &norm).unwrap();
        let mut wrong = EngineClassifier::new(m.spec, m.store);
        let z = wrong.logits(&x, Dims { c: 3, h: 32, w: 32 }).unwrap();
        assert!(
            rel_l2(&z, &z_ref) > 1e-2,
            "{case}: insensitive to normalisation"
        );
    }
}

fn no_flags() -> NormArgs {
    NormArgs::default()
}

fn flags(n: InputNorm) -> NormArgs {
    NormArgs {
        mean: Some(n.mean.to_vec()),
        std: Some(n.std.to_vec()),
    }
}

#[test]
fn robustness_library_checkpoint_reads_its_normaliser() {
    let own = InputNorm {
        mean: [0.45, 0.40, 0.50],
        std: [0.20, 0.30, 0.25],
    };
    check(
        "robustness_lib",
        "robustness_lib.pt",
        args("relu"),
        no_flags(),
        "robustness-library",
        own,
    );
    // The same values as flags are accepted; others are refused, naming both.
    check(
        "robustness_lib",
        "robustness_lib.pt",
        args("relu"),
        flags(own),
        "robustness-library",
        own,
    );
    let e = zoo::load_for_eval(
        &fixture("robustness_lib.pt"),
        &args("relu"),
        &flags(InputNorm::IMAGENET),
    )
    .err()
    .expect("contradicting flags must fail")
    .to_string();
    assert!(
        e.contains("robustness-library") && e.contains("0.485"),
        "{e}"
    );
}

#[test]
fn robustbench_wrapper_reads_its_normaliser() {
    check(
        "robustbench_seq",
        "robustbench_seq.pt",
        args("relu"),
        no_flags(),
        "robustbench",
        InputNorm {
            mean: [0.5, 0.45, 0.4],
            std: [0.25, 0.2, 0.3],
        },
    );
}

#[test]
fn robustbench_model_only_needs_the_flags() {
    let e = zoo::load_for_eval(&fixture("robustbench_bare.pt"), &args("relu"), &no_flags())
        .err()
        .expect("no normalisation anywhere must fail")
        .to_string();
    assert!(
        e.contains("robustbench-model-only") && e.contains("--mean") && e.contains("not guess"),
        "{e}"
    );
    check(
        "robustbench_bare",
        "robustbench_bare.pt",
        args("relu"),
        flags(InputNorm::IMAGENET),
        "robustbench-model-only",
        InputNorm::IMAGENET,
    );
}

#[test]
fn timm_and_ares_files_use_the_imagenet_convention() {
    check(
        "ares_resnet50_gelu",
        "ares_resnet50_gelu.pth",
        args("gelu"),
        no_flags(),
        "torchvision/timm",
        InputNorm::IMAGENET,
    );
    // A timm training checkpoint: the EMA weights are the evaluated ones.
    check(
        "timm_train_relu",
        "timm_train_relu.pth",
        args("relu"),
        no_flags(),
        "torchvision/timm",
        InputNorm::IMAGENET,
    );
}

#[test]
fn bai2021_ghost_bn_folds_to_plain_bn_with_half_normalisation() {
    check(
        "bai2021_gelu_gbn",
        "bai2021_gelu_gbn.pth",
        args("gelu"),
        no_flags(),
        "bai2021-ghost-bn",
        InputNorm {
            mean: [0.5; 3],
            std: [0.5; 3],
        },
    );
}

#[test]
fn the_papers_mpm_release_still_loads() {
    let a = args_with("gelu", &["--head", "mpm", "--seg-classes", "5"]);
    check(
        "mpm_release",
        "mpm_release.pth",
        a,
        no_flags(),
        "mpm",
        InputNorm::IMAGENET,
    );
}

#[test]
fn unknown_layout_lists_names_and_closest_layout() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("odd.pth");
    let mut t = NamedTensors::new();
    for k in [
        "net.normalizer.new_mean",
        "net.model.conv1.weight",
        "net.model.fc.bias",
    ] {
        t.insert(k.into(), HostTensor::f32(vec![3], vec![0.5; 3]));
    }
    io::save_pth(&p, &t).unwrap();
    let e = zoo::load_for_eval(&p, &args("relu"), &no_flags())
        .err()
        .expect("an unknown layout must fail")
        .to_string();
    assert!(e.contains("unknown checkpoint layout"), "{e}");
    assert!(e.contains("net.* (3)"), "{e}");
    assert!(
        e.contains("closest known layout: robustness-library"),
        "{e}"
    );
}

// ---------------------------------------------------------------- command line

fn attack_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mpm-attack"))
}

/// Contract-B data: the fixture's two images, labels 0 and 1.
fn data(d: &Path, case: &str) -> PathBuf {
    let (x, _) = expected(case);
    let mut t = NamedTensors::new();
    t.insert("input".into(), HostTensor::f32(vec![2, 3, 32, 32], x));
    t.insert("target".into(), HostTensor::i64(vec![2], vec![0, 1]));
    let p = d.join(format!("{case}.data.safetensors"));
    io::save_safetensors(&p, &t, &io::no_metadata()).unwrap();
    p
}

fn attack(weights: &str, data: &Path, report: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = attack_bin();
    c.arg("--weights")
        .arg(fixture(weights))
        .args([
            "--arch",
            "resnet50",
            "--num-classes",
            "10",
            "--device",
            "cpu",
        ])
        .arg("--data")
        .arg(data)
        .args([
            "--norm",
            "Linf",
            "--eps",
            "0.01568627",
            "--version",
            "custom",
        ])
        .args(["--attacks", "apgd-ce", "--n-iter", "2"])
        .arg("--report")
        .arg(report)
        .args(extra);
    c.output().unwrap()
}

#[test]
fn zoo_command_lists_the_table2_models() {
    let out = attack_bin().arg("zoo").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    for want in [
        "Salman2020Do_R50",
        "resnet50_linf_eps4.0.ckpt",
        "robustness-library",
        "Bai2021Are_R50_GELU",
        "bai2021-ghost-bn",
        "MPM_R50_GELU",
        "Linf 4/255 39.1",
        "not identified",
        "Crop288",
    ] {
        assert!(s.contains(want), "missing {want:?} in:\n{s}");
    }
    let out = attack_bin().args(["zoo", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("known: MPM_R50_GELU"));
}

#[test]
fn attack_reports_preprocessing_and_table_shows_published_rows() {
    let d = tempfile::tempdir().unwrap();
    // Layout and normalisation in the report.
    let x = data(d.path(), "robustness_lib");
    let r = d.path().join("rl.json");
    let out = attack("robustness_lib.pt", &x, &r, &["--act", "relu"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("model: robustness-library layout"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&r).unwrap()).unwrap();
    let p = &v["preprocessing"];
    assert_eq!(p["layout"], "robustness-library", "{v}");
    assert!((p["mean"][0].as_f64().unwrap() - 0.45).abs() < 1e-6, "{p}");
    assert!((p["std"][1].as_f64().unwrap() - 0.30).abs() < 1e-6, "{p}");
    // --zoo refuses a checkpoint whose normalisation is not the listed model's.
    let out = attack(
        "robustness_lib.pt",
        &x,
        &d.path().join("no.json"),
        &["--act", "relu", "--zoo", "Salman2020Do_R50"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Salman2020Do_R50 was trained with"), "{err}");
    // ... and a wrong activation.
    let y = data(d.path(), "timm_train_relu");
    let out = attack(
        "timm_train_relu.pth",
        &y,
        &d.path().join("no2.json"),
        &["--act", "gelu", "--zoo", "ARES_ResNet50_AT"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("relu activations"));
    // A matching one names the report's row; the table puts the paper's rows beside it.
    let r2 = d.path().join("ares.json");
    let out = attack(
        "timm_train_relu.pth",
        &y,
        &r2,
        &["--act", "relu", "--zoo", "ARES_ResNet50_AT"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&r2).unwrap()).unwrap();
    assert_eq!(v["model"], "ARES_ResNet50_AT");
    let out_dir = d.path().join("tables");
    let out = Command::new(env!("CARGO_BIN_EXE_mpm-eval"))
        .args(["table", "--published", "--runs"])
        .arg(&r2)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(out_dir.join("table2.md")).unwrap();
    assert!(md.contains("| ARES_ResNet50_AT |"), "{md}");
    assert!(
        md.contains("| MPM_R50_GELU (paper) | 67.8 | 39.1 | 13.6 | 6.2 | 24.3 | 30.2 |"),
        "{md}"
    );
    assert!(
        md.contains("| Vanilla_R50_GELU (paper) | 67.1 | 38.1 | 12.6 | 5.0 | 21.6 |"),
        "{md}"
    );
}

// ---------------------------------------------------------------- eval transforms

fn png(name: &str) -> image::RgbImage {
    mpm::data::imageio::read_rgb(&fixture(name)).unwrap()
}

/// CHW values in [0, 1] vs an 8-bit HWC picture: the largest difference in grey levels.
fn max_grey_diff(chw: &[f32], want: &image::RgbImage) -> f32 {
    let (w, h) = (want.width() as usize, want.height() as usize);
    assert_eq!(chw.len(), 3 * w * h);
    let mut worst = 0f32;
    for (p, px) in want.pixels().enumerate() {
        for c in 0..3 {
            let d = (chw[c * w * h + p] * 255.0 - px[c] as f32).abs();
            worst = worst.max(d);
        }
    }
    worst
}

#[test]
fn res256crop224_and_crop288_transforms_match_torchvision() {
    use mpm::attack::imagefolder::{eval_transform, eval_transform_bilinear};
    let src = png("transform_src.png");
    // Resize(64) (Pillow bilinear, antialiased) + CenterCrop(56).
    let got = eval_transform_bilinear(&src, 64, 56).unwrap();
    let d = max_grey_diff(&got, &png("transform_bilinear_64_56.png"));
    assert!(
        d <= 1.0 + 1e-3,
        "bilinear resize + crop: {d} grey levels off torchvision"
    );
    // The bicubic transform is another transform: it must not pass as the bilinear one.
    let bicubic = eval_transform(&src, 64, 56).unwrap();
    assert!(max_grey_diff(&bicubic, &png("transform_bilinear_64_56.png")) > 2.0);
    // CenterCrop(48) alone (--resize 0): exact.
    let got = eval_transform(&src, 0, 48).unwrap();
    assert_eq!(max_grey_diff(&got, &png("transform_crop_48.png")), 0.0);
}
