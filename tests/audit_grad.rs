//! `mpm-audit grad --per-layer`: every layer output of sane models (plain ResNet-18, MPM with
//! its heads) passes, and a deliberately broken gradient at a known layer is found there: the
//! deepest failing output is the one that feeds the broken layer, everything after passes.

use mpm::attack::model::argmax;
use mpm::attack::{Classifier, Dims, EngineClassifier};
use mpm::audit::grad_layers::{layer_audit, Fault, LayerAudit, LayerAuditConfig, LayerSelect};
use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec};
use rand::{RngExt, SeedableRng};

const DIMS: Dims = Dims { c: 3, h: 32, w: 32 };

fn model(head: Head) -> EngineClassifier {
    let spec = ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet18,
            width: 4,
            act: Act::Gelu,
        },
        num_classes: 10,
        seg_classes: 5,
        head,
    };
    let store = spec.init(21).unwrap();
    EngineClassifier::new(spec, store)
}

fn data(m: &mut dyn Classifier, n: usize) -> (Vec<f32>, Vec<usize>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let x: Vec<f32> = (0..n * DIMS.len())
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let z = m.logits(&x, DIMS).unwrap();
    (x, z.chunks(10).map(argmax).collect())
}

fn audit(m: &mut EngineClassifier, cfg: &LayerAuditConfig) -> LayerAudit {
    let (x, y) = data(m, 4);
    layer_audit(m, &x, &y, DIMS, cfg, &mut |_, _, _| {}).unwrap()
}

fn cfg() -> LayerAuditConfig {
    LayerAuditConfig {
        directions: 4,
        ..LayerAuditConfig::default()
    }
}

fn names(a: &LayerAudit) -> Vec<&str> {
    a.rows.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn every_layer_of_a_sane_resnet18_passes() {
    let mut m = model(Head::None);
    let a = audit(&mut m, &cfg());
    eprint!("{}", a.table());
    let n = names(&a);
    for want in [
        "input",
        "conv1",
        "bn1",
        "maxpool",
        "layer1.0.conv1",
        "layer2.0.downsample.1",
        "layer3.0",
        "layer4.1.bn2",
        "fc",
    ] {
        assert!(n.contains(&want), "{want} not audited: {n:?}");
    }
    // input + stem (conv1, bn1, maxpool) + 8 blocks x 5 + 3 downsamples x 2 + fc
    assert_eq!(n.len(), 1 + 3 + 40 + 6 + 1, "{n:?}");
    assert!(a.pass, "{}\n{}", a.table(), a.summary());
    assert!(a.localisation.is_none());
}

#[test]
fn every_layer_of_a_sane_mpm_passes_heads_included() {
    let mut m = model(Head::Mpm {
        levels: 3,
        top_down: true,
    });
    // A larger finite-difference step than the default 1e-3: the heads start at PyTorch's
    // default init (as the authors' new layers), and the gradient at up_layer1's output is then
    // so small that f32 rounding in the loss difference crosses the 1e-2 p95 bound at 1e-3.
    let a = audit(
        &mut m,
        &LayerAuditConfig {
            step: 1e-2,
            ..cfg()
        },
    );
    eprint!("{}", a.table());
    let n = names(&a);
    for want in [
        "segmenter.layer2.1",
        "cp3.1",
        "up_layer2.1.pointwise",
        "segmenter_head3.1.pointwise",
        "classifer.2",
    ] {
        assert!(n.contains(&want), "{want} not audited: {n:?}");
    }
    assert!(a.heads);
    assert!(a.pass, "{}\n{}", a.table(), a.summary());
}

#[test]
fn a_wrong_backward_rule_is_localised() {
    let mut m = model(Head::None);
    let mut c = cfg();
    c.fault = Some("scale-grad=0.5@layer2.1.conv2".parse::<Fault>().unwrap());
    let a = audit(&mut m, &c);
    eprint!("{}", a.table());
    eprintln!("{}", a.summary());
    assert!(!a.pass);
    let l = a.localisation.as_ref().unwrap();
    // The fault sits on conv2's output, before its probe: conv2's output gradient is right,
    // the gradient reaching bn1's output (which conv2 reads) is half what it should be.
    assert_eq!(l.deepest_failing, "layer2.1.bn1", "{}", a.summary());
    assert_eq!(l.next_passing[0], "layer2.1.conv2");
    let bad = a.rows.iter().find(|r| r.name == "layer2.1.bn1").unwrap();
    assert!((bad.median() - 0.5).abs() < 0.05, "{}", bad.median());
    // Everything upstream fails too, everything downstream passes.
    let k = a
        .rows
        .iter()
        .position(|r| r.name == "layer2.1.bn1")
        .unwrap();
    assert!(a.rows[..=k].iter().all(|r| !r.pass), "{}", a.table());
    assert!(a.rows[k + 1..].iter().all(|r| r.pass), "{}", a.table());
}

#[test]
fn a_non_differentiable_step_is_localised() {
    let mut m = model(Head::Mpm {
        levels: 3,
        top_down: true,
    });
    let mut c = cfg();
    c.fault = Some("quantize=0.25@layer3.0.bn1".parse::<Fault>().unwrap());
    let a = audit(&mut m, &c);
    eprintln!("{}", a.summary());
    let l = a.localisation.as_ref().unwrap();
    assert_eq!(
        l.deepest_failing,
        "segmenter.layer3.0.conv1",
        "{}",
        a.table()
    );
    assert_eq!(l.next_passing[0], "segmenter.layer3.0.bn1");
    assert!(!a.pass);
}

#[test]
fn layers_are_chosen_by_glob_and_unknown_names_are_errors() {
    let mut m = model(Head::None);
    let mut c = cfg();
    c.select = LayerSelect::parse("layer4.1.*,fc").unwrap();
    let a = audit(&mut m, &c);
    assert_eq!(
        names(&a),
        [
            "input",
            "layer4.1.conv1",
            "layer4.1.bn1",
            "layer4.1.conv2",
            "layer4.1.bn2",
            "fc"
        ]
    );
    assert!(a.pass, "{}", a.table());

    let (x, y) = data(&mut m, 2);
    c.select = LayerSelect::parse("layer9.*").unwrap();
    let e = layer_audit(&mut m, &x, &y, DIMS, &c, &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("matches no output") && e.contains("layer2.0.bn1"),
        "{e}"
    );
    c.select = LayerSelect::all();
    c.fault = Some("scale-grad@nope".parse().unwrap());
    let e = layer_audit(&mut m, &x, &y, DIMS, &c, &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("no output named 'nope'"), "{e}");
}

#[test]
fn a_relu_resnet_passes_despite_its_kinks() {
    let spec = ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet18,
            width: 4,
            act: Act::Relu,
        },
        num_classes: 10,
        seg_classes: 0,
        head: Head::None,
    };
    let store = spec.init(5).unwrap();
    let mut m = EngineClassifier::new(spec, store);
    let a = audit(&mut m, &cfg());
    eprint!("{}", a.table());
    assert!(a.pass, "{}\n{}", a.table(), a.summary());
}
