//! ResNeXt-50 (issue #21, Table S7's backbone): torchvision structure and names, PyTorch parity
//! at contract A's tolerances on committed reduced-width fixtures (`tests/fixtures/resnext/`,
//! made by `scripts/make_resnext_fixtures.py`), the input gradient against finite differences,
//! and the arch name accepted where configurations and flags take one.

use mpm::autograd::grad_check::check_gradient;
use mpm::autograd::Tape;
use mpm::nn::{Act, Arch, Backbone, Ctx, Head, ModelSpec};
use mpm::tensor::Tensor;
use rand::{RngExt, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::Command;

fn spec(arch: Arch, width: usize, head: Head) -> ModelSpec {
    ModelSpec {
        backbone: Backbone {
            arch,
            width,
            act: Act::Relu,
        },
        num_classes: 1000,
        seg_classes: if head == Head::None { 0 } else { 11 },
        head,
    }
}

#[test]
fn names_parse_and_print_back() {
    let a: Arch = "resnext50_32x4d".parse().unwrap();
    assert_eq!(a, Arch::RESNEXT50_32X4D);
    assert_eq!(a.to_string(), "resnext50_32x4d");
    assert_eq!(a.groups(), 32);
    // torchvision: int(planes * 4 / 64) * 32 = 2 * planes.
    assert_eq!(
        [64, 128, 256, 512].map(|p| a.inner_width(p)),
        [128, 256, 512, 1024]
    );
    let b: Arch = "resnext50_4x32d".parse().unwrap();
    assert_eq!(b.to_string(), "resnext50_4x32d");
    for bad in [
        "resnext50",
        "resnext50_32x4",
        "resnext50_0x4d",
        "resnext101_32x8d",
        "resnet",
    ] {
        let e = bad.parse::<Arch>().unwrap_err();
        assert!(e.contains(bad) && e.contains("resnext50_32x4d"), "{e}");
    }
    // Too narrow a stem for the groups: named, not a zero-width layer later.
    let e = a.check_width(8).unwrap_err();
    assert!(e.contains("width 8"), "{e}");
    a.check_width(64).unwrap();
}

#[test]
fn full_width_model_has_torchvision_shapes_and_parameter_count() {
    let d = spec(Arch::RESNEXT50_32X4D, 64, Head::None).declare();
    let shape = |n: &str| {
        d.entries
            .iter()
            .find(|e| e.0 == n)
            .map(|e| e.1.clone())
            .unwrap_or_else(|| panic!("{n} not declared"))
    };
    assert_eq!(shape("layer1.0.conv1.weight"), [128, 64, 1, 1]);
    assert_eq!(shape("layer1.0.conv2.weight"), [128, 4, 3, 3]);
    assert_eq!(shape("layer1.0.conv3.weight"), [256, 128, 1, 1]);
    assert_eq!(shape("layer4.2.conv2.weight"), [1024, 32, 3, 3]);
    assert_eq!(shape("layer4.0.downsample.0.weight"), [2048, 1024, 1, 1]);
    assert_eq!(shape("fc.weight"), [1000, 2048]);
    let params: usize = d
        .entries
        .iter()
        .filter(|e| e.2 == mpm::nn::Kind::Param)
        .map(|e| e.1.iter().product::<usize>())
        .sum();
    // torchvision.models.resnext50_32x4d(): sum(p.numel()) (printed by
    // scripts/make_resnext_fixtures.py --full).
    assert_eq!(params, 25_028_904);
    // 161 parameter/buffer tensors + 53 num_batches_tracked, as torchvision's state dict.
    assert_eq!(d.state_dict_names().len(), 320);
}

#[test]
fn a_resnet50_checkpoint_is_not_silently_a_resnext() {
    let r50 = spec(Arch::ResNet50, 8, Head::None);
    let state = r50.state_dict(&r50.init(1).unwrap()).unwrap();
    let rx = spec("resnext50_4x32d".parse().unwrap(), 8, Head::None);
    let e = rx.load(&state).unwrap_err().to_string();
    assert!(
        e.contains("mis-shaped: layer1.0.conv2.weight") && e.contains("resnext50_4x32d"),
        "{e}"
    );
}

#[test]
fn input_gradient_matches_finite_differences() {
    // The whole grouped network (4 groups, one channel per group in stage 1) with the MPM
    // heads, eval mode: the gradient attacks use, against central differences.
    let spec = ModelSpec {
        backbone: Backbone {
            arch: "resnext50_4x32d".parse().unwrap(),
            width: 2,
            act: Act::Gelu,
        },
        num_classes: 3,
        seg_classes: 4,
        head: Head::Mpm {
            levels: 3,
            top_down: true,
        },
    };
    let store = spec.init(7).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(70);
    let x = Tensor::from_vec(
        &[1, 16, 16, 3],
        (0..16 * 16 * 3)
            .map(|_| rng.random_range(0.2f32..0.8))
            .collect(),
    )
    .unwrap();
    // Step and bound as tests/grad_check.rs's whole-model check (f32 round-off over ~50
    // layers dominates below h = 3e-3).
    let r = check_gradient(
        &x,
        move |t, x| {
            let mut s = store.clone();
            let tape = std::mem::replace(t, Tape::new(t.mode()));
            let mut ctx = Ctx::from_tape(&mut s, tape, false);
            let out = spec.forward_logits(&mut ctx, x);
            *t = ctx.into_tape();
            out
        },
        3e-3,
        7,
    )
    .unwrap();
    println!("resnext50_4x32d input gradient: {r}");
    assert!(r.rel_l2 < 5e-3, "{r}");
    assert!(r.numeric.iter().any(|v| v.abs() > 1e-4), "zero gradient");
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resnext");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/fixtures/resnext")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("case.json").exists())
        .collect();
    v.sort();
    v
}

#[test]
fn pytorch_parity_of_the_committed_cases() {
    // Contract A's tolerances (relative L2 1e-4 outputs, losses and running statistics; 1e-3
    // gradients), through the real binary.
    let cases = cases();
    assert_eq!(cases.len(), 2, "expected the 2 committed ResNeXt cases");
    let out = Command::new(env!("CARGO_BIN_EXE_mpm-audit"))
        .arg("check")
        .args(&cases)
        .output()
        .expect("run mpm-audit");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ResNeXt parity failed:\n{text}");
    assert_eq!(text.matches("PASS").count(), cases.len(), "{text}");
}

#[test]
fn training_configs_accept_the_arch() {
    let mut c = mpm::train::TrainConfig::default();
    c.set("model", "resnext50_32x4d").unwrap();
    c.validate().unwrap();
    assert_eq!(c.spec().unwrap().backbone.arch, Arch::RESNEXT50_32X4D);
    c.set("width", "8").unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("--width"), "{e}");
    c.set("model", "resnext").unwrap();
    assert!(c.validate().unwrap_err().to_string().contains("--model"));
}

#[test]
fn an_mpm_resnext_exports_to_a_plain_resnext() {
    // `mpm-train export` of an MPM ResNeXt: the bypass layers dropped, torchvision names; the
    // result loads as the plain model of the same arch (what mpm-attack / mpm-eval then read).
    let arch: Arch = "resnext50_4x32d".parse().unwrap();
    let mpm = spec(
        arch,
        4,
        Head::Mpm {
            levels: 3,
            top_down: true,
        },
    );
    let exported = mpm.inference_export(&mpm.init(3).unwrap()).unwrap();
    assert!(exported
        .keys()
        .all(|k| !k.starts_with("segmenter") && !k.starts_with("cp")));
    let plain = spec(arch, 4, Head::None).load(&exported).unwrap();
    assert_eq!(
        plain.tensor("layer2.0.conv2.weight").unwrap().shape(),
        mpm.init(3)
            .unwrap()
            .tensor("segmenter.layer2.0.conv2.weight")
            .unwrap()
            .shape()
    );
}
