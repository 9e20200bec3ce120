//! Model structure: parameter counts, names, output shapes, inference export.

use mpm::autograd::GradMode;
use mpm::nn::{Act, Arch, Backbone, Ctx, Head, Kind, ModelSpec, StateValue};
use mpm::tensor::Tensor;

fn spec(arch: Arch, width: usize, head: Head, s: usize) -> ModelSpec {
    ModelSpec {
        backbone: Backbone {
            arch,
            width,
            act: Act::Gelu,
        },
        num_classes: 1000,
        seg_classes: s,
        head,
    }
}

fn count(spec: &ModelSpec) -> usize {
    spec.declare()
        .entries
        .iter()
        .filter(|e| e.2 == Kind::Param)
        .map(|e| e.1.iter().product::<usize>())
        .sum()
}

#[test]
fn resnet_parameter_counts_match_torchvision() {
    // torchvision: resnet18 11,689,512; resnet34 21,797,672; resnet50 25,557,032.
    assert_eq!(count(&spec(Arch::ResNet18, 64, Head::None, 0)), 11_689_512);
    assert_eq!(count(&spec(Arch::ResNet34, 64, Head::None, 0)), 21_797_672);
    assert_eq!(count(&spec(Arch::ResNet50, 64, Head::None, 0)), 25_557_032);
}

#[test]
fn mpm_resnet50_bypass_and_inference_export() {
    let mpm = spec(
        Arch::ResNet50,
        64,
        Head::Mpm {
            levels: 3,
            top_down: true,
        },
        3311,
    );
    let total = count(&mpm);
    let bypass = total - 25_557_032;
    // DESIGN.md: ~4.5M bypass parameters at S = 3,311.
    assert!(
        (4_000_000..5_000_000).contains(&bypass),
        "bypass has {bypass} parameters"
    );
    let store = mpm.init(0).unwrap();
    let export = mpm.inference_export(&store).unwrap();
    let plain = spec(Arch::ResNet50, 64, Head::None, 0);
    let plain_names: Vec<String> = plain.declare().state_dict_names();
    let mut got: Vec<&String> = export.keys().collect();
    got.sort();
    let mut want: Vec<&String> = plain_names.iter().collect();
    want.sort();
    assert_eq!(
        got, want,
        "inference export must hold exactly torchvision's names"
    );
    let params: usize = export
        .iter()
        .filter(|(k, _)| !k.contains("running_") && !k.ends_with("num_batches_tracked"))
        .map(|(_, v)| match v {
            StateValue::Float(t) => t.data.len(),
            StateValue::Int(_) => 0,
        })
        .sum();
    assert_eq!(params, 25_557_032);
    // And it loads as a plain ResNet-50.
    plain.load(&export).unwrap();
}

#[test]
fn forward_shapes_for_every_head() {
    let cases = [
        (Head::None, 0usize),
        (
            Head::Mpm {
                levels: 3,
                top_down: true,
            },
            3,
        ),
        (
            Head::Mpm {
                levels: 2,
                top_down: false,
            },
            2,
        ),
        (
            Head::Mpm {
                levels: 1,
                top_down: true,
            },
            1,
        ),
        (
            Head::TwoStage {
                hidden: 16,
                fc_hidden: 32,
            },
            1,
        ),
    ];
    for (head, nseg) in cases {
        let mut m = spec(Arch::ResNet18, 8, head, 5);
        m.num_classes = 7;
        let mut store = m.init(1).unwrap();
        let mut ctx = Ctx::new(&mut store, GradMode::NoGrad, false);
        let x = ctx.tape.input(Tensor::full(&[2, 64, 64, 3], 0.5), false);
        let out = m.forward(&mut ctx, x).unwrap();
        assert_eq!(ctx.tape.shape(out.logits), &[2, 7]);
        assert_eq!(out.segs.len(), nseg, "{head:?}");
        let sizes: Vec<usize> = out.segs.iter().map(|s| ctx.tape.shape(*s)[1]).collect();
        match head {
            Head::Mpm { levels: 3, .. } => assert_eq!(sizes, vec![8, 4, 2]),
            Head::Mpm { levels: 2, .. } => assert_eq!(sizes, vec![4, 2]),
            Head::Mpm { levels: 1, .. } | Head::TwoStage { .. } => assert_eq!(sizes, vec![2]),
            _ => {}
        }
        for s in &out.segs {
            assert_eq!(ctx.tape.shape(*s)[3], 5);
        }
    }
}

#[test]
fn checkpoint_mismatch_lists_every_problem() {
    let m = spec(Arch::ResNet18, 8, Head::None, 0);
    let store = m.init(2).unwrap();
    let mut sd = m.state_dict(&store).unwrap();
    sd.remove("layer1.0.conv1.weight");
    sd.remove("fc.bias");
    sd.insert(
        "extra.weight".into(),
        StateValue::Float(mpm::nn::TorchTensor {
            shape: vec![1],
            data: vec![0.0],
        }),
    );
    if let Some(StateValue::Float(t)) = sd.get_mut("bn1.weight") {
        t.shape = vec![4, 2];
    }
    let err = m.load(&sd).unwrap_err().to_string();
    for needle in [
        "missing: layer1.0.conv1.weight",
        "missing: fc.bias",
        "unexpected: extra.weight",
        "mis-shaped: bn1.weight",
    ] {
        assert!(err.contains(needle), "error lacks '{needle}':\n{err}");
    }
}

#[test]
fn checkpoints_round_trip_through_safetensors_and_pth() {
    let m = spec(
        Arch::ResNet18,
        4,
        Head::Mpm {
            levels: 3,
            top_down: true,
        },
        5,
    );
    let store = m.init(3).unwrap();
    let sd = m.state_dict(&store).unwrap();
    let dir = std::env::temp_dir().join(format!("mpm-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["m.safetensors", "m.pth"] {
        let p = dir.join(name);
        mpm::nn::checkpoint::save_state(&p, &sd, &Default::default()).unwrap();
        let back = mpm::nn::checkpoint::load_state(&p, mpm::io::StateDictPick::Auto).unwrap();
        let store2 = m.load(&back).unwrap();
        for (k, e) in store.iter() {
            assert_eq!(
                e.tensor.data(),
                store2.tensor(k).unwrap().data(),
                "{name}: {k}"
            );
        }
        assert_eq!(store.counters(), store2.counters());
    }
    let bad = mpm::nn::checkpoint::save_state(&dir.join("m.bin"), &sd, &Default::default());
    assert!(bad.unwrap_err().to_string().contains(".safetensors"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mpm_forward_logits_equals_full_forward_logits() {
    let m = spec(
        Arch::ResNet18,
        4,
        Head::Mpm {
            levels: 2,
            top_down: true,
        },
        5,
    );
    let mut store = m.init(4).unwrap();
    let x = Tensor::from_vec(
        &[2, 32, 32, 3],
        (0..2 * 32 * 32 * 3)
            .map(|i| (i % 97) as f32 / 97.0)
            .collect(),
    )
    .unwrap();
    let mut ctx = Ctx::new(&mut store, GradMode::NoGrad, false);
    let xi = ctx.tape.input(x.clone(), false);
    let full = m.forward(&mut ctx, xi).unwrap().logits;
    let full = ctx.tape.value(full).data().to_vec();
    let xi = ctx.tape.input(x, false);
    let fast = m.forward_logits(&mut ctx, xi).unwrap();
    assert_eq!(ctx.tape.value(fast).data(), full.as_slice());
}
