//! `init_checkpoint`: each kind of file is recognised and read as the reference reads it (raw
//! weights, not the EMA), a file of the wrong kind or model is refused with both named, a
//! missing file names what produces it; the reference loader's `whether_pseudo` flags and
//! `pseudo_weight`.

use mpm::data::index::Sample;
use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec};
use mpm::tensor::Tensor;
use mpm::train::init::{read_tensors, InitKind};
use mpm::train::trainer::seg_weights;
use mpm::train::{checkpoint, Batch, BatchSource, MemorySource, TrainConfig, Trainer};
use std::path::{Path, PathBuf};

fn tiny(partmodel: &str, seg_classes: usize) -> TrainConfig {
    let mut c = TrainConfig::default();
    for (k, v) in [
        ("model", "resnet18"),
        ("width", "4"),
        ("num_classes", "3"),
        ("partmodel_type", partmodel),
        ("seg_classes", &seg_classes.to_string()),
        ("input_size", "32"),
        ("batch_size", "4"),
        ("model_ema_decay", "0.5"),
        ("device", "cpu"),
    ] {
        c.set(k, v).unwrap();
    }
    c
}

fn f32s(path: &Path, name: &str) -> Vec<f32> {
    let (t, _) = mpm::io::load_safetensors(path).unwrap();
    t[name].as_f32().unwrap().to_vec()
}

/// A one-step MPM checkpoint whose EMA differs from its model (decay 0.5).
fn trained_checkpoint(dir: &Path) -> PathBuf {
    let c = tiny("mpm", 7);
    let src = MemorySource::new(3, 4, 32, 1);
    let mut t = Trainer::new(c, 3).unwrap();
    t.step(&src.batch(0, 0, 4, true).unwrap()).unwrap();
    let p = dir.join("ck.safetensors");
    checkpoint::save(&t, &p).unwrap();
    p
}

#[test]
fn a_training_checkpoint_gives_its_raw_model_not_the_ema() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = trained_checkpoint(tmp.path());
    let (kind, t) = read_tensors(&ck).unwrap();
    assert!(
        matches!(&kind, InitKind::TrainCheckpoint { model } if model.contains("MPM")),
        "{kind:?}"
    );
    assert!(kind.to_string().contains("not the EMA"), "{kind}");
    let name = "segmenter.layer1.0.conv1.weight";
    let model = f32s(&ck, &format!("model.{name}"));
    let ema = f32s(&ck, &format!("ema.{name}"));
    assert_ne!(model, ema, "the fixture needs an EMA that differs");
    assert_eq!(t[name].as_f32().unwrap(), &model[..]);
    assert!(!t
        .keys()
        .any(|k| k.starts_with("ema.") || k.starts_with("momentum.")));
    // It initialises an AT run of another level count (the checkpoint holds every head).
    let mut next = tiny("mpm", 7);
    next.set("levels", "1").unwrap();
    next.set("init_checkpoint", ck.to_str().unwrap()).unwrap();
    let t2 = Trainer::new(next, 3).unwrap();
    let got = t2.spec.state_dict(&t2.model).unwrap();
    match &got[name] {
        mpm::nn::StateValue::Float(x) => assert_eq!(x.data, model),
        _ => panic!("{name} is not a float tensor"),
    }
}

#[test]
fn a_timm_checkpoint_gives_state_dict_not_state_dict_ema() {
    // A real torch.save'd timm-style checkpoint (scripts/make_io_fixtures.py): `state_dict` and
    // `state_dict_ema` (= 0.5 x the weights), `module.` prefixes, an optimizer, args.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/io");
    let (kind, t) = read_tensors(&dir.join("timm.pth")).unwrap();
    assert_eq!(kind, InitKind::TimmCheckpoint { has_ema: true });
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("timm.json")).unwrap()).unwrap();
    let want: Vec<f32> = json["state_dict.module.0.weight"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(t["0.weight"].as_f32().unwrap(), &want[..]);
    assert!(!t
        .keys()
        .any(|k| k.contains("optimizer") || k.contains("ema")));
    // It is not a ResNet: the error says what the file is and what was expected.
    let e = mpm::train::init::read(&dir.join("timm.pth"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("timm training checkpoint") && e.contains("expected 'conv1.weight'"),
        "{e}"
    );
}

fn plain_pth(dir: &Path) -> PathBuf {
    let spec = ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet18,
            width: 4,
            act: Act::Gelu,
        },
        num_classes: 3,
        seg_classes: 0,
        head: Head::None,
    };
    let p = dir.join("resnet.pth");
    let store = spec.init(3).unwrap();
    mpm::nn::checkpoint::save_state(&p, &spec.state_dict(&store).unwrap(), &Default::default())
        .unwrap();
    p
}

#[test]
fn wrong_kind_or_model_names_both() {
    let tmp = tempfile::tempdir().unwrap();
    let pth = plain_pth(tmp.path());
    // A plain ResNet given as a whole MPM.
    let mut c = tiny("mpm", 7);
    c.set("init_checkpoint", pth.to_str().unwrap()).unwrap();
    let e = Trainer::new(c.clone(), 3).err().unwrap().to_string();
    assert!(
        e.contains("a PyTorch state dict")
            && e.contains("a plain ResNet (resnet18 width 4, 3 classes)")
            && e.contains("expects the whole of an MPM")
            && e.contains("full_pretrain = false"),
        "{e}"
    );
    // ... which is right as a backbone.
    c.set("full_pretrain", "false").unwrap();
    Trainer::new(c, 3).unwrap();
    // An MPM with S = 7 given to an MPM with S = 9: the shapes are named, with both models.
    let ck = trained_checkpoint(tmp.path());
    let mut c = tiny("mpm", 9);
    c.set("init_checkpoint", ck.to_str().unwrap()).unwrap();
    let e = Trainer::new(c, 3).err().unwrap().to_string();
    assert!(
        e.contains("an mpm-train checkpoint")
            && e.contains("S = 7")
            && e.contains("S = 9")
            && e.contains("mis-shaped"),
        "{e}"
    );
    // A two-stage config from an MPM checkpoint.
    let mut c = tiny("twostage", 7);
    c.set("twostage_hidden", "8").unwrap();
    c.set("twostage_fc_hidden", "8").unwrap();
    c.set("init_checkpoint", ck.to_str().unwrap()).unwrap();
    let e = Trainer::new(c, 3).err().unwrap().to_string();
    assert!(
        e.contains("holding an MPM") && e.contains("expects the whole of a two-stage"),
        "{e}"
    );
}

#[test]
fn an_export_is_recognised_and_starts_a_vanilla_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = trained_checkpoint(tmp.path());
    let t = checkpoint::load(&ck, None).unwrap();
    let out = tmp.path().join("export");
    checkpoint::export_inference_as(&t, &out, "best", Some(1)).unwrap();
    let (kind, _) = read_tensors(&out.join("model.safetensors")).unwrap();
    match &kind {
        InitKind::Export { what } => {
            assert!(
                what.contains("\"which\":\"best\"") && what.contains("\"epoch\":1"),
                "{what}"
            )
        }
        other => panic!("{other:?}"),
    }
    let (kind, _) = read_tensors(&out.join("model.pth")).unwrap();
    assert_eq!(kind, InitKind::PthStateDict);
    let mut c = tiny("vanilla", 7);
    c.set(
        "init_checkpoint",
        out.join("model.safetensors").to_str().unwrap(),
    )
    .unwrap();
    let v = Trainer::new(c, 3).unwrap();
    assert_eq!(v.spec.head, Head::None);
}

#[test]
fn a_missing_checkpoint_names_what_produces_it() {
    let mut c = tiny("mpm", 7);
    c.set(
        "init_checkpoint",
        "no-such-dir/runs/mpm_init_in1k/checkpoints/last.safetensors",
    )
    .unwrap();
    let e = Trainer::new(c.clone(), 3).err().unwrap().to_string();
    assert!(
        e.contains("--init-checkpoint")
            && e.contains("no such file")
            && e.contains("mpm-train --config configs/mpm_init_in1k.toml"),
        "{e}"
    );
    c.set("init_checkpoint", "no-such-dir/resnet50-11ad3fa6.pth")
        .unwrap();
    let e = Trainer::new(c, 3).err().unwrap().to_string();
    assert!(
        e.contains("https://download.pytorch.org/models/resnet50-11ad3fa6.pth"),
        "{e}"
    );
}

fn sample(root: &Path, wnid: &str, name: &str) -> Sample {
    Sample {
        image: root.join("img").join(wnid).join(name),
        label: 0,
        seg: None,
    }
}

#[test]
fn whether_pseudo_flags_are_read_by_class_and_name_and_errors_name_the_file() {
    use mpm::train::folder::read_whether_pseudo;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let flags = root.join("whether_pseudo");
    std::fs::create_dir_all(&flags).unwrap();
    std::fs::write(flags.join("n1.txt"), "n1/a.JPEG 1\nb.JPEG 0\n\n").unwrap();
    std::fs::write(flags.join("n2.txt"), "c.JPEG 1\n").unwrap();
    let s = [
        sample(root, "n1", "a.JPEG"),
        sample(root, "n2", "c.JPEG"),
        sample(root, "n1", "b.JPEG"),
    ];
    assert_eq!(
        read_whether_pseudo(&flags, &s).unwrap(),
        vec![true, true, false]
    );
    let e = read_whether_pseudo(&flags, &[sample(root, "n1", "z.JPEG")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("n1.txt") && e.contains("z.JPEG"), "{e}");
    let e = read_whether_pseudo(&flags, &[sample(root, "n3", "a.JPEG")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("n3.txt") && e.contains("whether_pseudo"), "{e}");
    std::fs::write(flags.join("n1.txt"), "a.JPEG 2\n").unwrap();
    let e = read_whether_pseudo(&flags, &s[..1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("n1.txt") && e.contains("line 1"), "{e}");
}

#[test]
fn pseudo_weight_scales_pseudo_labelled_images_as_the_reference_loader() {
    let batch = Batch {
        images: Tensor::zeros(&[4, 1, 1, 3]),
        labels: vec![0, 1, 2, 0],
        label_maps: vec![1, 0, 2, 3],
        // image 1 has a blank map
        has_parts: vec![true, false, true, true],
        pseudo: vec![false, true, true, true],
    };
    let mut c = TrainConfig::default();
    assert_eq!(seg_weights(&c, &batch), vec![1.0, 0.0, 1.0, 1.0]);
    c.ignore_blank = false;
    assert_eq!(seg_weights(&c, &batch), vec![1.0, 1.0, 1.0, 1.0]);
    // use_whether_pseudo ignores blank maps even without ignore_blank, as the reference does.
    c.use_whether_pseudo = true;
    c.pseudo_weight = 0.25;
    assert_eq!(seg_weights(&c, &batch), vec![1.0, 0.0, 0.25, 0.25]);
    c.pseudo_weight = 0.0;
    assert_eq!(seg_weights(&c, &batch), vec![1.0, 0.0, 0.0, 0.0]);
}
