//! `mpm-audit grad` and `mpm-audit masking` on a sane model and on a deliberately masked one
//! (the same model behind an input quantisation step whose gradient is zero): the sane
//! model passes every check, the masked one is flagged.

use mpm::attack::model::argmax;
use mpm::attack::{Classifier, Dims, EngineClassifier, Norm};
use mpm::audit::grad::{grad_audit, GradAuditConfig};
use mpm::audit::masking::{masking_audit, MaskingConfig, QuantizedInput};
use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec};
use rand::{RngExt, SeedableRng};

const DIMS: Dims = Dims { c: 3, h: 32, w: 32 };

fn tiny() -> EngineClassifier {
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

fn cfg() -> MaskingConfig {
    let mut c = MaskingConfig::new(Norm::Linf, 4.0 / 255.0);
    c.n_iter = 12;
    c.square_queries = 100;
    c
}

#[test]
fn sane_model_passes_the_gradient_and_masking_audits() {
    let mut m = tiny();
    let (x, y) = data(&mut m, 8);
    let g = grad_audit(&mut m, &x, &y, DIMS, &GradAuditConfig::default()).unwrap();
    assert!(g.pass, "{}", g.summary());
    let checks = masking_audit(&mut m, &x, &y, DIMS, &cfg()).unwrap();
    for c in &checks {
        assert!(c.pass, "{}: {}", c.name, c.summary);
    }
}

#[test]
fn quantised_input_model_is_flagged() {
    let mut inner = tiny();
    let (x, y) = data(&mut inner, 8);
    let mut m = QuantizedInput {
        inner: &mut inner,
        levels: 16.0,
    };
    let g = grad_audit(&mut m, &x, &y, DIMS, &GradAuditConfig::default()).unwrap();
    assert!(!g.pass && g.zero_grads == 8, "{}", g.summary());
    let checks = masking_audit(&mut m, &x, &y, DIMS, &cfg()).unwrap();
    let failed: Vec<&str> = checks.iter().filter(|c| !c.pass).map(|c| c.name).collect();
    assert!(failed.contains(&"gradients"), "{failed:?}");
    assert!(failed.contains(&"smooth_loss"), "{failed:?}");
    for c in &checks {
        eprintln!(
            "{:<20} {} {}",
            c.name,
            if c.pass { "PASS" } else { "FAIL" },
            c.summary
        );
    }
}
