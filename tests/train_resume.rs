//! Exact resume: a run interrupted mid-epoch and resumed from its checkpoint ends with the
//! same model, EMA and optimiser state, bit for bit, as an uninterrupted run (CPU). Also: a
//! diverging run stops with the step and the last good checkpoint, and never writes a NaN.

use mpm::train::{checkpoint, run, MemorySource, RunOptions, TrainConfig};
use std::path::{Path, PathBuf};

fn tiny(partmodel: &str) -> TrainConfig {
    let mut c = TrainConfig::default();
    for (k, v) in [
        ("model", "resnet18"),
        ("width", "4"),
        ("num_classes", "3"),
        ("seg_classes", "7"),
        ("partmodel_type", partmodel),
        ("epochs", "3"),
        ("warmup_epochs", "1"),
        ("batch_size", "6"),
        ("input_size", "32"),
        ("model_ema_decay", "0.9"),
        ("eval_every", "1"),
        ("checkpoint_every", "2"),
    ] {
        c.set(k, v).unwrap();
    }
    c
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mpm-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn opts(dir: &Path, stop: Option<u64>, resume: Option<PathBuf>) -> RunOptions {
    RunOptions {
        run_dir: dir.to_path_buf(),
        stop_after_steps: stop,
        resume,
        progress: false,
        plots: false,
        eval_batch_size: 6,
    }
}

fn bits(t: &mpm::train::Trainer) -> Vec<(String, Vec<u32>)> {
    let mut v = Vec::new();
    for (n, e) in t.model.iter() {
        v.push((
            format!("model.{n}"),
            e.tensor.data().iter().map(|x| x.to_bits()).collect(),
        ));
    }
    for (n, e) in t.ema.as_ref().unwrap().iter() {
        v.push((
            format!("ema.{n}"),
            e.tensor.data().iter().map(|x| x.to_bits()).collect(),
        ));
    }
    for (n, b) in &t.opt.buffers {
        v.push((
            format!("momentum.{n}"),
            b.data().iter().map(|x| x.to_bits()).collect(),
        ));
    }
    v
}

#[test]
fn interrupted_and_resumed_run_is_bit_exact() {
    let cfg = tiny("mpm");
    let train = MemorySource::new(3, 8, 32, 1);
    let val = MemorySource::new(3, 2, 32, 2);
    let a_dir = tmp("a");
    let a = run(&cfg, &train, Some(&val), &opts(&a_dir, None, None)).unwrap();
    assert!(a.finished);
    assert_eq!(a.trainer.pos.global_step, 12);

    // Stop at global step 6 (mid epoch 2 of 3: 4 steps per epoch), then resume.
    let b_dir = tmp("b");
    let b = run(&cfg, &train, Some(&val), &opts(&b_dir, Some(6), None)).unwrap();
    assert!(!b.finished);
    assert_eq!(b.trainer.pos.epoch, 1);
    assert_eq!(b.trainer.pos.step, 2);
    drop(b);
    let b = run(
        &cfg,
        &train,
        Some(&val),
        &opts(&b_dir, None, Some(b_dir.clone())),
    )
    .unwrap();
    assert!(b.finished);
    let (ba, bb) = (bits(&a.trainer), bits(&b.trainer));
    assert_eq!(ba.len(), bb.len());
    for ((na, va), (nb, vb)) in ba.iter().zip(&bb) {
        assert_eq!(na, nb);
        assert!(va == vb, "{na} differs after resume");
    }
    assert_eq!(a.trainer.model.counters(), b.trainer.model.counters());
    // Metrics of the completed epochs agree too (the epoch sums were restored).
    let m = |d: &Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
    let strip = |s: String| -> Vec<String> {
        s.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                for k in [
                    "images_per_s",
                    "loader_images_per_s",
                    "step_images_per_s",
                    "data_wait_fraction",
                ] {
                    o.remove(k);
                }
                v.to_string()
            })
            .collect()
    };
    assert_eq!(strip(m(&a_dir)), strip(m(&b_dir)));
    // The export exists and is a plain ResNet (torchvision names).
    let exp = mpm::io::load_state_dict(
        &a_dir.join("export/model.safetensors"),
        mpm::io::StateDictPick::Auto,
    )
    .unwrap();
    assert!(exp.contains_key("fc.weight") && exp.contains_key("layer4.1.bn2.running_var"));
    assert!(!exp
        .keys()
        .any(|k| k.starts_with("segmenter") || k.starts_with("cp")));
    // The .pth holds the same tensors (read back through the restricted unpickler).
    let pth = mpm::io::load_state_dict(
        &a_dir.join("export/model.pth"),
        mpm::io::StateDictPick::Auto,
    )
    .unwrap();
    assert_eq!(pth, exp);
    // The exported weights are the best epoch's EMA, renamed (segmenter.X -> X, classifer.2
    // -> fc); the resumed run chose the same epoch.
    let best = mpm::train::run::read_best(&a_dir).unwrap().unwrap();
    assert_eq!(
        Some(&best),
        mpm::train::run::read_best(&b_dir).unwrap().as_ref()
    );
    let t = checkpoint::load(&mpm::train::run::best_checkpoint(&a_dir), None).unwrap();
    assert_eq!(t.pos.epoch, best.epoch);
    let ema = t.ema.as_ref().unwrap();
    let w = ema.export("classifer.2.weight").unwrap();
    assert_eq!(exp["fc.weight"].as_f32().unwrap(), &w.data[..]);
    let _ = std::fs::remove_dir_all(&a_dir);
    let _ = std::fs::remove_dir_all(&b_dir);
}

#[test]
fn diverging_run_names_the_step_and_the_last_good_checkpoint() {
    let mut cfg = tiny("vanilla");
    cfg.set("lr", "1e30").unwrap();
    cfg.set("warmup_epochs", "0").unwrap();
    cfg.set("advtrain", "false").unwrap();
    let train = MemorySource::new(3, 8, 32, 1);
    let dir = tmp("nan");
    let err = run(&cfg, &train, None, &opts(&dir, None, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-finite"), "{err}");
    assert!(err.contains("step"), "{err}");
    assert!(err.contains("Last good checkpoint"), "{err}");
    // Any checkpoint on disk is finite.
    let last = dir.join("checkpoints/last.safetensors");
    if last.exists() {
        let t = checkpoint::load(&last, None).unwrap();
        assert!(t.all_finite().is_ok());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refused_write_leaves_the_previous_checkpoint_intact() {
    let cfg = tiny("vanilla");
    let train = MemorySource::new(3, 8, 32, 1);
    let dir = tmp("intact");
    let s = run(&cfg, &train, None, &opts(&dir, Some(2), None)).unwrap();
    let last = dir.join("checkpoints/last.safetensors");
    let before = std::fs::read(&last).unwrap();
    let mut t = s.trainer;
    t.model.get_mut("fc.weight").unwrap().tensor.data_mut()[0] = f32::NAN;
    let e = checkpoint::save(&t, &last).unwrap_err().to_string();
    assert!(e.contains("fc.weight") && e.contains("not written"), "{e}");
    assert_eq!(std::fs::read(&last).unwrap(), before);
    // A write into a directory that cannot hold it fails without touching `last`.
    let bad = dir.join("checkpoints/last.safetensors/inside");
    assert!(checkpoint::save(&s_clean(&dir), &bad).is_err());
    assert_eq!(std::fs::read(&last).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}

fn s_clean(dir: &Path) -> mpm::train::Trainer {
    checkpoint::load(&dir.join("checkpoints/last.safetensors"), None).unwrap()
}
