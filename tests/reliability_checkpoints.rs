//! Each hostile checkpoint of the corpus is refused in-process with an error naming the
//! limit or rule it breaks (tests/hostile_inputs.rs checks the binaries' exit statuses).

use mpm::io::{
    load_pth, load_state_dict, no_metadata, save_safetensors, HostTensor, NamedTensors,
    StateDictPick,
};
use std::path::{Path, PathBuf};

fn item(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hostile")
        .join(name)
}

#[test]
fn each_attack_is_refused_by_name() {
    for (name, want) in [
        ("deep_rebuild_chain.pth", "nesting depth limit"),
        ("deep_lists.pth", "nesting depth limit"),
        ("memo_flood.pth", "memo size limit"),
        ("pickle_bomb.pth", "pickle size limit"),
        ("broadcast_bomb.pth", "materialised size limit"),
        ("storage_bomb.pth", "decompression ratio limit"),
        ("huge_numel.pth", "expected"),
        ("view_out_of_bounds.pth", "too short"),
        ("evil_system.pth", "refusing global 'posix.system'"),
        ("evil_exec.pth", "refusing global 'builtins.exec'"),
        (
            "evil_in_state_dict.pth",
            "refusing global 'subprocess.Popen'",
        ),
        ("evil_legacy.pth", "refusing global 'posix.system'"),
    ] {
        for (how, r) in [
            (
                "load_state_dict",
                load_state_dict(&item(name), StateDictPick::Auto).map(|_| ()),
            ),
            ("load_pth", load_pth(&item(name)).map(|_| ())),
        ] {
            let e = r.expect_err(name).to_string();
            assert!(e.contains(want), "{how}({name}): {e}");
            assert!(e.contains(name), "{how}({name}) names the file: {e}");
        }
    }
}

/// The flags of a ResNet-18 with 10 classes (its width is read from `conv1.weight`).
fn resnet18_args() -> mpm::audit::files::ModelArgs {
    mpm::audit::files::ModelArgs {
        arch: "resnet18".into(),
        act: "gelu".into(),
        num_classes: 10,
        head: "none".into(),
        seg_classes: None,
        levels: 3,
        no_top_down: false,
    }
}

/// A valid ResNet-18 (width 4, 10 classes) state dict.
fn tiny_state() -> NamedTensors {
    use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec, StateValue};
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
    let store = spec.init(5).unwrap();
    spec.state_dict(&store)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let t = match v {
                StateValue::Float(t) => HostTensor::f32(t.shape, t.data),
                StateValue::Int(i) => HostTensor::i64(Vec::<usize>::new(), vec![i]),
            };
            (k, t)
        })
        .collect()
}

/// Names and shapes are checked against the model before any storage is opened: a state
/// dict that does not fit, whose misfit tensor is a decompression bomb, is refused as a misfit
/// (the bomb never reached), while a load without a model meets the bomb's limit.
#[test]
fn the_model_is_checked_before_any_storage_is_read() {
    let item = item("misfit_bomb.pth");
    let e = mpm::audit::files::load_model(&item, &resnet18_args())
        .expect_err("a misfit is refused")
        .to_string();
    assert!(
        e.contains("mis-shaped: fc.weight") && e.contains("missing: layer1.0.conv1.weight"),
        "{e}"
    );
    assert!(!e.contains("decompression"), "a storage was opened: {e}");
    assert!(e.contains("misfit_bomb.pth"), "names the file: {e}");
    let e = load_state_dict(&item, StateDictPick::Auto)
        .expect_err("the bomb")
        .to_string();
    assert!(e.contains("decompression ratio limit"), "{e}");
}

/// The same for safetensors: the header alone is checked, so a file whose data is cut short
/// but whose names do not fit is reported as a misfit; a fitting file loads.
#[test]
fn safetensors_names_and_shapes_are_checked_from_the_header() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good.safetensors");
    save_safetensors(&good, &tiny_state(), &no_metadata()).unwrap();
    mpm::audit::files::load_model(&good, &resnet18_args()).expect("a fitting file loads");

    let mut extra = tiny_state();
    extra.insert(
        "head.extra".into(),
        HostTensor::f32(vec![64], vec![0.0; 64]),
    );
    let cut = d.path().join("cut.safetensors");
    save_safetensors(&cut, &extra, &no_metadata()).unwrap();
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 16]).unwrap();
    let e = mpm::audit::files::load_model(&cut, &resnet18_args())
        .expect_err("refused")
        .to_string();
    assert!(e.contains("unexpected: head.extra"), "{e}");
}

/// An integer tensor where the model has a float weight is refused by name, by the model
/// check and by the state conversion (no int32 weights read as floats: logits of 1e10).
#[test]
fn integer_tensors_for_float_weights_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut state = tiny_state();
    let n: usize = state["conv1.weight"].numel();
    state.insert(
        "conv1.weight".into(),
        HostTensor::i64(vec![4, 3, 7, 7], vec![3; n]),
    );
    let p = d.path().join("int.safetensors");
    save_safetensors(&p, &state, &no_metadata()).unwrap();
    let e = mpm::audit::files::load_model(&p, &resnet18_args())
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("conv1.weight: expected a float tensor") && e.contains("int64"),
        "{e}"
    );
    let e = mpm::nn::checkpoint::load_state(&p, StateDictPick::Auto)
        .expect_err("refused")
        .to_string();
    assert!(
        e.contains("'conv1.weight' holds integers") && e.contains("int.safetensors"),
        "{e}"
    );
}

/// `--init-checkpoint` on a training checkpoint reads its 'state_dict' only: an optimiser
/// state that is a storage bomb is neither opened nor counted.
#[test]
fn optimiser_state_is_skipped_not_budgeted() {
    let item = item("optimizer_bomb.pth");
    let (kind, tensors) = mpm::train::init::read_tensors(&item).expect("state_dict only");
    assert_eq!(tensors.keys().collect::<Vec<_>>(), ["fc.bias"]);
    assert_eq!(tensors["fc.bias"].as_f32(), Some(&[0.5f32, -0.5][..]));
    assert!(kind.to_string().contains("timm"), "{kind}");
    let e = load_pth(&item).expect_err("everything").to_string();
    assert!(e.contains("decompression ratio limit"), "{e}");
}
