//! Gradient accumulation (`accum_steps`): the accumulated gradient is the mean of the
//! micro-batch gradients computed separately; an accumulating run resumes bit-exactly; the
//! metrics count updates and images (CPU).

use mpm::train::{run, BatchSource, MemorySource, RunOptions, TrainConfig, Trainer};
use std::path::{Path, PathBuf};

fn tiny(batch: usize, accum: usize) -> TrainConfig {
    let mut c = TrainConfig::default();
    for (k, v) in [
        ("model", "resnet18"),
        ("width", "4"),
        ("num_classes", "3"),
        ("seg_classes", "7"),
        ("partmodel_type", "mpm"),
        ("epochs", "1"),
        ("warmup_epochs", "1"),
        ("input_size", "32"),
        ("model_ema_decay", "0.9"),
        ("eval_every", "1"),
        ("checkpoint_every", "0"),
    ] {
        c.set(k, v).unwrap();
    }
    c.set("batch_size", &batch.to_string()).unwrap();
    c.set("accum_steps", &accum.to_string()).unwrap();
    c
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mpm-accum-test-{}-{name}", std::process::id()));
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

#[test]
fn accumulated_gradient_is_the_mean_of_the_micro_batch_gradients() {
    // Clean training (no PGD random start to share between the two trainers).
    let mut ca = tiny(6, 2);
    ca.set("advtrain", "false").unwrap();
    let mut cb = tiny(3, 1);
    cb.set("advtrain", "false").unwrap();
    let src = MemorySource::new(3, 4, 32, 5);
    let batch = src.batch(0, 0, 6, true).unwrap();
    let mut a = Trainer::new(ca, 2).unwrap();
    let mut b = Trainer::new(cb, 4).unwrap();
    let ga = a.gradients(&batch).unwrap();
    let g0 = b.gradients(&batch.slice(0, 3).unwrap()).unwrap();
    let g1 = b.gradients(&batch.slice(3, 6).unwrap()).unwrap();
    assert_eq!(ga.grads.len(), g0.grads.len());
    assert!(ga.grads.len() > 20, "{} gradients", ga.grads.len());
    for (name, t) in &ga.grads {
        let (x, y) = (g0.grads[name].data(), g1.grads[name].data());
        for (i, &v) in t.data().iter().enumerate() {
            // With k = 2 the 1/k scaling is exact, so the two orders agree to the bit.
            let want = (x[i] + y[i]) * 0.5;
            assert_eq!(
                v, want,
                "{name}[{i}]: accumulated {v}, mean of micro-batches {want}"
            );
        }
    }
    let mean = ((g0.loss as f64 + g1.loss as f64) / 2.0) as f32;
    assert_eq!(ga.loss, mean);
    assert_eq!(ga.correct, g0.correct + g1.correct);
    // BN statistics: one train-mode update per micro-batch, as PyTorch does with accumulation.
    assert_eq!(a.model.counters(), b.model.counters());
    assert!(a.model.counters().values().all(|&c| c == 2));
    for (name, e) in a.model.iter() {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            let other = b.model.tensor(name).unwrap();
            assert_eq!(e.tensor.data(), other.data(), "{name}");
        }
    }
    // A batch that does not split is refused, naming the flag.
    let e = a
        .gradients(&batch.slice(0, 5).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--accum-steps"), "{e}");
}

fn bits(t: &Trainer) -> Vec<(String, Vec<u32>)> {
    let mut v = Vec::new();
    let stores = [("model", Some(&t.model)), ("ema", t.ema.as_ref())];
    for (which, s) in stores {
        for (n, e) in s.unwrap().iter() {
            v.push((
                format!("{which}.{n}"),
                e.tensor.data().iter().map(|x| x.to_bits()).collect(),
            ));
        }
    }
    for (n, b) in &t.opt.buffers {
        v.push((
            format!("momentum.{n}"),
            b.data().iter().map(|x| x.to_bits()).collect(),
        ));
    }
    v
}

fn train_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .collect()
}

#[test]
fn two_updates_with_accumulation_resume_bit_exactly_and_count_updates() {
    // 12 images, batch 6 in 2 micro-batches of 3: 2 updates (4 forward/backward passes).
    let cfg = tiny(6, 2);
    let train = MemorySource::new(3, 4, 32, 1);
    let val = MemorySource::new(3, 2, 32, 2);
    let a_dir = tmp("a");
    let a = run(&cfg, &train, Some(&val), &opts(&a_dir, None, None)).unwrap();
    assert!(a.finished);
    assert_eq!(a.trainer.pos.global_step, 2);
    // BN counters advance once per micro-batch: 2 updates x 2 micro-batches.
    assert!(a.trainer.model.counters().values().all(|&c| c == 4));

    let b_dir = tmp("b");
    let b = run(&cfg, &train, Some(&val), &opts(&b_dir, Some(1), None)).unwrap();
    assert!(!b.finished);
    assert_eq!(b.trainer.pos.step, 1);
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

    for dir in [&a_dir, &b_dir] {
        let lines = train_lines(dir);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let m = &lines[0];
        assert_eq!(m["step"], 2, "{m}");
        assert_eq!(m["updates"], 2, "{m}");
        assert_eq!(m["images"], 12, "{m}");
        assert_eq!(m["accum_steps"], 2, "{m}");
        assert_eq!(m["micro_batch"], 3, "{m}");
        for k in [
            "loader_images_per_s",
            "step_images_per_s",
            "data_wait_fraction",
        ] {
            assert!(m[k].as_f64().is_some_and(|v| v >= 0.0), "{k}: {m}");
        }
        let log = std::fs::read_to_string(dir.join("train.log")).unwrap();
        assert!(log.contains("2 updates/epoch"), "{log}");
        assert!(log.contains("micro-batch 3 x 2 accumulated"), "{log}");
        assert!(
            log.contains("loader") && log.contains("waited for data"),
            "{log}"
        );
    }
    let _ = std::fs::remove_dir_all(&a_dir);
    let _ = std::fs::remove_dir_all(&b_dir);
}

#[test]
fn prefetching_does_not_change_the_result() {
    let mut c0 = tiny(6, 1);
    c0.set("prefetch_batches", "0").unwrap();
    let c3 = {
        let mut c = c0.clone();
        c.set("prefetch_batches", "3").unwrap();
        c
    };
    let train = MemorySource::new(3, 4, 32, 1);
    let (d0, d3) = (tmp("p0"), tmp("p3"));
    let r0 = run(&c0, &train, None, &opts(&d0, None, None)).unwrap();
    let r3 = run(&c3, &train, None, &opts(&d3, None, None)).unwrap();
    assert!(bits(&r0.trainer) == bits(&r3.trainer));
    let _ = std::fs::remove_dir_all(&d0);
    let _ = std::fs::remove_dir_all(&d3);
}

#[test]
fn batch_not_divisible_by_accum_steps_is_refused_naming_both() {
    let cfg = tiny(6, 4);
    let train = MemorySource::new(3, 4, 32, 1);
    let dir = tmp("bad");
    let e = run(&cfg, &train, None, &opts(&dir, None, None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--accum-steps") && e.contains("--batch-size 6") && e.contains("4"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
