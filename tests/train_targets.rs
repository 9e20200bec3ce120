//! Part targets at the reference's output sizes: SV3 nearest to input/8 then bilinear to /16 and
//! /32; SV2 nearest to /16 then bilinear to /32; SV1 and the two-stage model nearest to /32
//! directly. Going through /8 for SV1 would average the one-hot maps instead (a different
//! target), which the last assertion shows.

use mpm::train::source::soft_targets;
use mpm::train::{BatchSource, MemorySource, TrainConfig, Trainer};

fn cfg(partmodel: &str, levels: usize) -> TrainConfig {
    let mut c = TrainConfig::default();
    for (k, v) in [
        ("model", "resnet18"),
        ("width", "4"),
        ("num_classes", "3"),
        ("seg_classes", "7"),
        ("partmodel_type", partmodel),
        ("levels", &levels.to_string()),
        ("twostage_hidden", "8"),
        ("twostage_fc_hidden", "8"),
        ("input_size", "64"),
        ("batch_size", "4"),
        ("device", "cpu"),
    ] {
        c.set(k, v).unwrap();
    }
    c
}

#[test]
fn targets_are_made_at_the_heads_sizes_directly() {
    let src = MemorySource::new(3, 2, 64, 3);
    let b = src.batch(0, 0, 4, true).unwrap();
    let direct = |sizes: &[usize]| {
        soft_targets(&b.label_maps, b.len(), 64, 7, 0.1, sizes)
            .unwrap()
            .into_iter()
            .map(|t| (t.shape().to_vec(), t.data().to_vec()))
            .collect::<Vec<_>>()
    };
    for (partmodel, levels, sizes) in [
        ("mpm", 3, vec![8, 4, 2]),
        ("mpm", 2, vec![4, 2]),
        ("mpm", 1, vec![2]),
        ("twostage", 3, vec![2]),
    ] {
        let c = cfg(partmodel, levels);
        assert_eq!(c.target_sizes(), sizes, "{partmodel} levels {levels}");
        let t = Trainer::new(c, 1).unwrap();
        let got: Vec<_> = t
            .targets(&b)
            .unwrap()
            .into_iter()
            .map(|t| (t.shape().to_vec(), t.data().to_vec()))
            .collect();
        assert_eq!(got, direct(&sizes), "{partmodel} levels {levels}");
    }
    assert!(cfg("vanilla", 3).target_sizes().is_empty());
    // The old route for SV1 (nearest to /8, bilinear to /32) gives another target.
    let via = direct(&[8, 4, 2]).pop().unwrap();
    assert_ne!(via, direct(&[2]).pop().unwrap());
}
