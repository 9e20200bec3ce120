//! Bad input gives clear errors: class-count mismatch, init checkpoints that do not fit,
//! resuming with a changed recipe, unknown config keys. And a good plain-ResNet checkpoint
//! initialises an MPM backbone.

use mpm::io::{save_safetensors, HostTensor, NamedTensors};
use mpm::nn::StateValue;
use mpm::train::{run, MemorySource, RunOptions, TrainConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn tiny(kind: &str) -> TrainConfig {
    let mut c = TrainConfig::default();
    for (k, v) in [
        ("model", "resnet18"),
        ("width", "4"),
        ("num_classes", "3"),
        ("seg_classes", "7"),
        ("partmodel_type", kind),
        ("input_size", "32"),
        ("batch_size", "4"),
        ("epochs", "1"),
    ] {
        c.set(k, v).unwrap();
    }
    c
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mpm-bad-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(dir: &Path) -> RunOptions {
    RunOptions {
        run_dir: dir.to_path_buf(),
        stop_after_steps: Some(1),
        resume: None,
        progress: false,
        plots: false,
        eval_batch_size: 4,
    }
}

fn write_state(path: &Path, state: BTreeMap<String, StateValue>) {
    let mut t = NamedTensors::new();
    for (k, v) in state {
        let h = match v {
            StateValue::Float(t) => HostTensor::f32(t.shape, t.data),
            StateValue::Int(i) => HostTensor::i64(Vec::<usize>::new(), vec![i]),
        };
        t.insert(k, h);
    }
    save_safetensors(path, &t, &BTreeMap::new()).unwrap();
}

#[test]
fn class_count_mismatch_is_named() {
    let dir = tmp("classes");
    let mut c = tiny("mpm");
    c.set("num_classes", "5").unwrap();
    c.set("seg_classes", "11").unwrap();
    let e = run(&c, &MemorySource::new(3, 4, 32, 1), None, &opts(&dir))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--num-classes") && e.contains("3 classes"),
        "{e}"
    );
    let mut c = tiny("mpm");
    c.set("seg_classes", "5").unwrap();
    let e = run(&c, &MemorySource::new(3, 4, 32, 1), None, &opts(&dir))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--seg-classes"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plain_resnet_checkpoint_initialises_the_mpm_backbone() {
    let dir = tmp("init");
    // A "torchvision" checkpoint: a plain ResNet-18 (width 4) with another class count.
    let mut plain_cfg = tiny("vanilla");
    plain_cfg.set("num_classes", "10").unwrap();
    let plain = plain_cfg.spec().unwrap();
    let store = plain.init(42).unwrap();
    let ck = dir.join("tv.safetensors");
    write_state(&ck, plain.state_dict(&store).unwrap());

    let mut c = tiny("mpm");
    c.set("init_checkpoint", ck.to_str().unwrap()).unwrap();
    c.set("full_pretrain", "false").unwrap();
    let t = mpm::train::Trainer::new(c.clone(), 3).unwrap();
    let a = store.tensor("layer3.1.conv2.weight").unwrap().data();
    let b = t
        .model
        .tensor("segmenter.layer3.1.conv2.weight")
        .unwrap()
        .data();
    assert_eq!(a, b);

    // The same file as a whole MPM model does not fit: the error says what the file is and
    // what the configuration expects (init::check_expected).
    c.set("full_pretrain", "true").unwrap();
    let e = mpm::train::Trainer::new(c.clone(), 3)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--init-checkpoint")
            && e.contains("a safetensors state dict holding a plain ResNet")
            && e.contains("expects the whole of an MPM"),
        "{e}"
    );

    // A ResNet-34 backbone does not fit a ResNet-18.
    let mut r34 = tiny("vanilla");
    r34.set("model", "resnet34").unwrap();
    let s34 = r34.spec().unwrap();
    let ck34 = dir.join("r34.safetensors");
    write_state(&ck34, s34.state_dict(&s34.init(0).unwrap()).unwrap());
    c.set("init_checkpoint", ck34.to_str().unwrap()).unwrap();
    c.set("full_pretrain", "false").unwrap();
    let e = mpm::train::Trainer::new(c.clone(), 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unexpected: layer1.2.conv1.weight"), "{e}");

    c.set("init_checkpoint", "/no/such/file.pth").unwrap();
    let e = mpm::train::Trainer::new(c, 3).unwrap_err().to_string();
    assert!(
        e.contains("--init-checkpoint") && e.contains("no such file"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_refuses_a_changed_recipe() {
    let dir = tmp("resume");
    let c = tiny("vanilla");
    let src = MemorySource::new(3, 4, 32, 1);
    run(&c, &src, None, &opts(&dir)).unwrap();
    let mut changed = c.clone();
    changed.set("lrb", "0.5").unwrap();
    let mut o = opts(&dir);
    o.resume = Some(dir.clone());
    o.stop_after_steps = None;
    let e = run(&changed, &src, None, &o).unwrap_err().to_string();
    assert!(e.contains("--lrb") && e.contains("cannot"), "{e}");
    let mut o2 = opts(&dir);
    o2.resume = Some(dir.join("nope"));
    let e = run(&c, &src, None, &o2).unwrap_err().to_string();
    assert!(e.contains("--resume"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn batch_larger_than_the_data_is_named() {
    let dir = tmp("batch");
    let mut c = tiny("vanilla");
    c.set("batch_size", "100").unwrap();
    let e = run(&c, &MemorySource::new(3, 4, 32, 1), None, &opts(&dir))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--batch-size"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
