//! The recipe's rules that need a model: the PGD of training (eps ball, [0,1] box, best
//! iterate, eval mode leaves BN statistics alone), frozen backbone, segmentation weight 0 for
//! images without parts, smoothed part targets.

use mpm::train::pgd::{loss_only, pgd_linf, PgdConfig};
use mpm::train::source::soft_targets;
use mpm::train::trainer::step_rng;
use mpm::train::{BatchSource, MemorySource, TrainConfig, Trainer};

fn tiny(kind: &str) -> TrainConfig {
    let mut c = TrainConfig::default();
    for (k, v) in [
        ("model", "resnet18"),
        ("width", "4"),
        ("num_classes", "3"),
        ("seg_classes", "7"),
        ("partmodel_type", kind),
        ("input_size", "32"),
        ("batch_size", "6"),
        ("epochs", "4"),
        ("lr", "0.05"),
    ] {
        c.set(k, v).unwrap();
    }
    c
}

#[test]
fn pgd_stays_in_the_ball_keeps_the_best_iterate_and_leaves_bn_alone() {
    let cfg = tiny("mpm");
    let mut t = Trainer::new(cfg, 4).unwrap();
    let src = MemorySource::new(3, 4, 32, 3);
    let b = src.batch(0, 0, 6, true).unwrap();
    let before = t.model.clone();
    let eps = 8.0 / 255.0;
    let pgd = PgdConfig {
        eps,
        step: eps,
        steps: 3,
        smoothing: 0.1,
        keep_best: true,
        device: mpm::device::Device::Cpu,
    };
    let xa = pgd_linf(
        &t.spec,
        &mut t.model,
        &b.images,
        &b.labels,
        &pgd,
        &mut step_rng(0, 0),
    )
    .unwrap();
    for (a, x) in xa.data().iter().zip(b.images.data()) {
        assert!((a - x).abs() <= eps + 1e-6 && (0.0..=1.0).contains(a));
    }
    // Eval mode: running statistics and counters are untouched.
    for (n, e) in before.iter() {
        assert_eq!(
            e.tensor.data(),
            t.model.tensor(n).unwrap().data(),
            "{n} changed"
        );
    }
    assert_eq!(before.counters(), t.model.counters());
    // Best iterate: at least as bad for the model as the random start (the first iterate)
    // and as the plain last iterate.
    let start = pgd_linf(
        &t.spec,
        &mut t.model,
        &b.images,
        &b.labels,
        &PgdConfig {
            steps: 0,
            keep_best: false,
            ..pgd
        },
        &mut step_rng(0, 0),
    )
    .unwrap();
    let last = pgd_linf(
        &t.spec,
        &mut t.model,
        &b.images,
        &b.labels,
        &PgdConfig {
            keep_best: false,
            ..pgd
        },
        &mut step_rng(0, 0),
    )
    .unwrap();
    let l = |x: &mpm::tensor::Tensor, t: &mut Trainer| {
        loss_only(
            &t.spec,
            &mut t.model,
            x,
            &b.labels,
            0.1,
            mpm::device::Device::Cpu,
        )
        .unwrap()
    };
    let (lb, ls, ll) = (l(&xa, &mut t), l(&start, &mut t), l(&last, &mut t));
    assert!(lb >= ls && lb >= ll, "best {lb} start {ls} last {ll}");
}

#[test]
fn epoch_zero_attack_is_the_random_start_only() {
    // Step 0 in epoch 0 (ramp): every perturbation is the uniform start, inside the ball.
    let cfg = tiny("vanilla");
    let t = Trainer::new(cfg.clone(), 4).unwrap();
    assert_eq!(
        mpm::train::schedule::attack_step(cfg.attack_eps, cfg.attack_it, 0, cfg.warmup_epochs),
        0.0
    );
    assert_eq!(t.lr(), cfg.warmup_lr);
}

#[test]
fn frozen_backbone_trains_only_the_heads() {
    let mut cfg = tiny("mpm");
    cfg.set("freeze_backbone", "true").unwrap();
    cfg.set("advtrain", "false").unwrap();
    let mut t = Trainer::new(cfg, 4).unwrap();
    let before = t.model.clone();
    let src = MemorySource::new(3, 4, 32, 3);
    t.step(&src.batch(0, 0, 6, true).unwrap()).unwrap();
    t.step(&src.batch(0, 1, 6, true).unwrap()).unwrap();
    for (n, e) in before.iter() {
        let same = e.tensor.data() == t.model.tensor(n).unwrap().data();
        let stat = n.ends_with("running_mean") || n.ends_with("running_var");
        if n.starts_with("segmenter.") && !stat {
            assert!(same, "frozen {n} changed");
        } else if n.starts_with("segmenter_head3.1.pointwise") || n.starts_with("classifer.2") {
            assert!(!same, "{n} did not train");
        }
    }
    // BN statistics of the frozen backbone still update (train mode), as in PyTorch.
    assert_ne!(
        before.tensor("segmenter.bn1.running_mean").unwrap().data(),
        t.model.tensor("segmenter.bn1.running_mean").unwrap().data()
    );
}

#[test]
fn images_without_parts_get_segmentation_weight_zero() {
    let src = MemorySource::new(3, 4, 32, 3);
    let mut b = src.batch(0, 0, 6, true).unwrap();
    b.has_parts = vec![false; b.len()];
    let mut with_lambda = tiny("mpm");
    with_lambda.set("advtrain", "false").unwrap();
    let mut no_lambda = with_lambda.clone();
    no_lambda.set("lambdas", "0").unwrap();
    let la = Trainer::new(with_lambda, 4).unwrap().step(&b).unwrap().loss;
    let lb = Trainer::new(no_lambda, 4).unwrap().step(&b).unwrap().loss;
    assert_eq!(la, lb, "blank images must not contribute to the part loss");
    // With parts, the part loss counts.
    let b = src.batch(0, 0, 6, true).unwrap();
    assert!(b.has_parts.iter().any(|&h| h));
    let mut c = tiny("mpm");
    c.set("advtrain", "false").unwrap();
    let mut c0 = c.clone();
    c0.set("lambdas", "0").unwrap();
    let la = Trainer::new(c, 4).unwrap().step(&b).unwrap().loss;
    let lb = Trainer::new(c0, 4).unwrap().step(&b).unwrap().loss;
    assert!(la > lb);
}

#[test]
fn part_targets_are_smoothed_one_hot_then_bilinear() {
    // One 4x4 map: left half part 1, right half part 2; S = 3, smoothing 0.1.
    let map: Vec<u16> = (0..16).map(|p| if p % 4 < 2 { 1 } else { 2 }).collect();
    let t = soft_targets(&map, 1, 4, 3, 0.1, &[4, 2, 1]).unwrap();
    let (on, off) = (0.9 + 0.1 / 3.0, 0.1 / 3.0);
    let l0 = t[0].data();
    assert!((l0[1] - on).abs() < 1e-6 && (l0[0] - off).abs() < 1e-6);
    // 2x2: each output pixel averages a 2x2 block of one part.
    assert!((t[1].data()[1] - on).abs() < 1e-6);
    // 1x1: half part 1, half part 2.
    let l2 = t[2].data();
    assert!((l2[1] - (on + off) / 2.0).abs() < 1e-6 && (l2[2] - l2[1]).abs() < 1e-6);
    assert!((l2.iter().sum::<f32>() - 1.0).abs() < 1e-5);
}
