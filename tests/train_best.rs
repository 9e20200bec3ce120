//! `best`: the epoch whose EMA has the highest PGD accuracy on the evaluation set is kept next to
//! `last`, recorded in `best.json` and `metrics.jsonl`, exported by default; a resumed run keeps
//! the record; `select_dir` chooses on another set; `eval_metric = "top1"` (the reference's
//! non-AT YAMLs) chooses by clean accuracy instead.

use mpm::train::run::{best_checkpoint, read_best};
use mpm::train::{checkpoint, run, MemorySource, RunOptions, TrainConfig};
use std::path::Path;

fn tiny() -> TrainConfig {
    let mut c = TrainConfig::default();
    for (k, v) in [
        ("model", "resnet18"),
        ("width", "4"),
        ("num_classes", "3"),
        ("seg_classes", "7"),
        ("epochs", "4"),
        ("warmup_epochs", "1"),
        ("batch_size", "6"),
        ("input_size", "32"),
        ("lr", "0.2"),
        ("model_ema_decay", "0.5"),
        ("eval_every", "1"),
        ("device", "cpu"),
    ] {
        c.set(k, v).unwrap();
    }
    c
}

fn opts(dir: &Path, stop: Option<u64>, resume: bool) -> RunOptions {
    RunOptions {
        run_dir: dir.to_path_buf(),
        stop_after_steps: stop,
        resume: resume.then(|| dir.to_path_buf()),
        progress: false,
        plots: false,
        eval_batch_size: 6,
    }
}

/// (epoch, PGD accuracy) of every eval line.
fn evals(dir: &Path) -> Vec<(usize, f64)> {
    eval_lines(dir)
        .into_iter()
        .map(|(e, _, p)| (e, p))
        .collect()
}

/// (epoch, clean accuracy, PGD accuracy) of every eval line.
fn eval_lines(dir: &Path) -> Vec<(usize, f64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "eval")
        .map(|v| {
            (
                v["epoch"].as_u64().unwrap() as usize,
                v["clean_acc"].as_f64().unwrap(),
                v["pgd"][0]["acc"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The first epoch with the highest value (a later tie does not replace it), and that value.
fn first_argmax(v: &[(usize, f64)]) -> (usize, f64) {
    let mut best = v[0];
    for &x in &v[1..] {
        if x.1 > best.1 {
            best = x;
        }
    }
    best
}

#[test]
fn best_is_the_epoch_with_the_highest_ema_pgd_accuracy_and_is_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let train = MemorySource::new(3, 4, 32, 5);
    let eval = MemorySource::new(3, 3, 32, 9);
    let c = tiny();
    // Stop after epoch 2 and resume: the record survives the resume.
    let s = run(&c, &train, Some(&eval), &opts(&dir, Some(4), false)).unwrap();
    assert!(!s.finished);
    let s = run(&c, &train, Some(&eval), &opts(&dir, None, true)).unwrap();
    assert!(s.finished);
    let e = evals(&dir);
    assert_eq!(e.len(), 4, "{e:?}");
    eprintln!("eval PGD accuracy per epoch: {e:?}");
    // The first epoch with the highest accuracy (a later tie does not replace it).
    let mut want = e[0];
    for &x in &e[1..] {
        if x.1 > want.1 {
            want = x;
        }
    }
    let best = read_best(&dir).unwrap().expect("best.json");
    assert_eq!((best.epoch, best.value), want, "{e:?}");
    assert_eq!(best.selected_on, "eval_dir");
    assert!(best.metric.starts_with("pgd10_acc"), "{}", best.metric);
    assert_eq!(best.eval_metric, "advtop1");
    let t = checkpoint::load(&best_checkpoint(&dir), None).unwrap();
    assert_eq!(t.pos.epoch, best.epoch);
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let last_best = metrics
        .lines()
        .rfind(|l| l.contains("\"kind\":\"best\""))
        .unwrap()
        .to_string();
    assert!(
        last_best.contains(&format!("\"epoch\":{}", best.epoch)),
        "{last_best}"
    );
    // The run's export is the best epoch, and says so.
    let (_, meta) = mpm::io::load_safetensors(&dir.join("export/model.safetensors")).unwrap();
    let what = &meta[mpm::train::init::EXPORT_META];
    assert!(
        what.contains("\"which\":\"best\"") && what.contains(&format!("\"epoch\":{}", best.epoch)),
        "{what}"
    );
}

#[test]
fn select_dir_chooses_on_its_own_set_and_a_fresh_run_forgets_an_old_best() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let train = MemorySource::new(3, 4, 32, 5);
    let eval = MemorySource::new(3, 3, 32, 9);
    let mut c = tiny();
    c.set("epochs", "1").unwrap();
    run(&c, &train, Some(&eval), &opts(&dir, None, false)).unwrap();
    assert!(read_best(&dir).unwrap().is_some());
    // A fresh run in the same folder without an evaluation set: no best, the export is `last`.
    run(&c, &train, None, &opts(&dir, None, false)).unwrap();
    assert!(read_best(&dir).unwrap().is_none());
    assert!(!best_checkpoint(&dir).exists());
    let (_, meta) = mpm::io::load_safetensors(&dir.join("export/model.safetensors")).unwrap();
    assert!(meta[mpm::train::init::EXPORT_META].contains("\"which\":\"last\""));
    // select_dir: an image folder of its own (synthetic PIN++ images, 3 classes).
    let syn = tmp.path().join("syn");
    mpm::data::synth::run_synth(&mpm::data::synth::SynthConfig {
        out: syn.clone(),
        classes: 3,
        images_per_class: 2,
        min_size: 40,
        max_size: 48,
        ..Default::default()
    })
    .unwrap();
    c.set("select_dir", syn.join("images").to_str().unwrap())
        .unwrap();
    run(&c, &train, Some(&eval), &opts(&dir, None, false)).unwrap();
    let best = read_best(&dir).unwrap().expect("best.json");
    assert_eq!((best.epoch, best.selected_on.as_str()), (1, "select_dir"));
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"kind\":\"select\""), "{metrics}");
    // select_dir that does not exist is named.
    c.set("select_dir", "/no/such/select").unwrap();
    let e = run(&c, &train, Some(&eval), &opts(&dir, None, false))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("--select-dir") && e.contains("/no/such/select"),
        "{e}"
    );
}

/// `eval_metric = "top1"`, as the reference's non-AT YAMLs set it (`resnet50_part_pp_init`,
/// `resnet50_part_pp_ori`, `resnet50_sgd_ori`): `best` is the epoch of the highest EMA clean
/// accuracy, even where the PGD accuracy peaks elsewhere, and best.json, the metrics' best line
/// and the export say so. The evaluation still measures PGD accuracy (one run gives both).
#[test]
fn eval_metric_top1_keeps_the_epoch_of_the_best_clean_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let train = MemorySource::new(3, 4, 32, 5);
    let eval = MemorySource::new(3, 3, 32, 9);
    let mut c = tiny();
    c.set("advtrain", "false").unwrap();
    c.set("eval_metric", "top1").unwrap();
    let s = run(&c, &train, Some(&eval), &opts(&dir, None, false)).unwrap();
    assert!(s.finished);
    let e = eval_lines(&dir);
    assert_eq!(e.len(), 4, "{e:?}");
    eprintln!("eval (epoch, clean, PGD) per epoch: {e:?}");
    let clean: Vec<(usize, f64)> = e.iter().map(|&(ep, c, _)| (ep, c)).collect();
    let pgd: Vec<(usize, f64)> = e.iter().map(|&(ep, _, p)| (ep, p)).collect();
    let want = first_argmax(&clean);
    let best = read_best(&dir).unwrap().expect("best.json");
    assert_eq!((best.epoch, best.value), want, "{e:?}");
    assert_eq!(
        (best.metric.as_str(), best.eval_metric.as_str()),
        ("clean_acc", "top1")
    );
    // This toy run separates the two metrics: advtop1 would have kept another epoch.
    let by_pgd = first_argmax(&pgd);
    assert_ne!(
        by_pgd.0, best.epoch,
        "the toy run no longer separates clean and PGD accuracy: {e:?}"
    );
    let json = std::fs::read_to_string(dir.join("checkpoints/best.json")).unwrap();
    assert!(json.contains("\"eval_metric\": \"top1\""), "{json}");
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let last_best = metrics
        .lines()
        .rfind(|l| l.contains("\"kind\":\"best\""))
        .unwrap();
    assert!(
        last_best.contains("\"eval_metric\":\"top1\"")
            && last_best.contains(&format!("\"epoch\":{}", best.epoch)),
        "{last_best}"
    );
    let t = checkpoint::load(&best_checkpoint(&dir), None).unwrap();
    assert_eq!(t.pos.epoch, best.epoch);
    // A value the reference does not know is refused before training, by its key.
    c.set("eval_metric", "loss").unwrap();
    let err = run(
        &c,
        &train,
        Some(&eval),
        &opts(&tmp.path().join("bad"), None, false),
    )
    .expect_err("eval_metric = loss must be refused")
    .to_string();
    assert!(
        err.contains("--eval-metric") && err.contains("advtop1"),
        "{err}"
    );
}
