//! Every shipped configuration parses, validates, and runs 2 training steps on tiny in-memory
//! data (sizes overridden through the same `set` path as the command-line flags).

use mpm::train::{run, MemorySource, RunOptions, TrainConfig};
use std::path::PathBuf;

fn configs() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn shipped_configs_are_all_there_and_parse() {
    let names: Vec<String> = configs()
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "mpm_at_in1k",
        "vanilla_at_in1k",
        "mpm_init_in1k",
        "twostage_at_in1k",
        "mpm_sv1_at_in1k",
        "mpm_sv2_at_in1k",
        "mpm_notd_at_in1k",
        "mpm_object_at_in1k",
        "standard_in1k",
        "mpm_ori_in1k",
        "mpm_at_eps8_in1k",
        "vanilla_at_eps8_in1k",
        "mpm_real_only_at_in1k",
        "mpm_nocf_at_in1k",
        "mpm_object_init_in1k",
        "tpinpp_vanilla_resnext50",
        "tpinpp_mpm_resnext50",
        "tpinpp_mpm_resnet50",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "missing configs/{want}.toml"
        );
    }
    for p in configs() {
        let c = TrainConfig::from_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        c.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(c.batch_size, 512, "{}", p.display());
        // Tiny-PartImageNet++ (issue #21) has Tiny-ImageNet's 200 classes.
        let tiny = p
            .file_stem()
            .is_some_and(|n| n.to_string_lossy().starts_with("tpinpp_"));
        assert_eq!(
            c.num_classes,
            if tiny { 200 } else { 1000 },
            "{}",
            p.display()
        );
        // Batch norm as one GPU of the reference's 8 x 64 DDP run (ghost batch norm).
        assert_eq!(c.bn_group, 64, "{}", p.display());
        assert!(c.broadcast_buffers, "{}", p.display());
    }
    // `best` is chosen as the reference's YAMLs choose it: `eval_metric: top1` in its non-AT
    // runs (resnet50_part_pp_init, resnet50_part_pp_ori, resnet50_sgd_ori), advtop1 in the AT
    // ones.
    for p in configs() {
        let c = TrainConfig::from_file(&p).unwrap();
        let want = if c.advtrain { "advtop1" } else { "top1" };
        assert_eq!(c.eval_metric, want, "{}", p.display());
    }
    for name in [
        "mpm_init_in1k",
        "mpm_object_init_in1k",
        "mpm_ori_in1k",
        "standard_in1k",
    ] {
        let c =
            TrainConfig::from_file(&configs()[0].with_file_name(format!("{name}.toml"))).unwrap();
        assert_eq!(c.eval_metric, "top1", "{name}");
    }
    let mpm = TrainConfig::from_file(&configs()[0].with_file_name("mpm_at_in1k.toml")).unwrap();
    assert_eq!(mpm.peak_lr(), 0.2);
    assert_eq!(mpm.attack_it, 2);
    assert_eq!(mpm.model_ema_decay, 0.9998);
    assert_eq!(mpm.levels, 3);
    // Batch 512 per update, as 8 batch-norm groups of 64, each its own pass.
    assert_eq!(mpm.accum_steps, 1);
    assert_eq!(mpm.bn_groups(1), 8);
    assert_eq!(mpm.micro_batch(), 64);
    assert_eq!(mpm.precision, "bf16");
    assert_eq!(mpm.reprob, 0.0);
    // The head warm-ups erase as the reference YAML does (timm reprob 0.25, pixel mode).
    for name in ["mpm_init_in1k.toml", "mpm_object_init_in1k.toml"] {
        let c = TrainConfig::from_file(&configs()[0].with_file_name(name)).unwrap();
        assert_eq!((c.reprob, c.remode.as_str()), (0.25, "pixel"), "{name}");
    }
}

#[test]
fn two_step_smoke_run_of_every_config() {
    let train = MemorySource::new(3, 4, 32, 5);
    for p in configs() {
        let mut c = TrainConfig::from_file(&p).unwrap();
        let object = c.use_object_seg;
        let dir = std::env::temp_dir().join(format!(
            "mpm-smoke-{}-{}",
            std::process::id(),
            p.file_stem().unwrap().to_string_lossy()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for (k, v) in [
            ("model", "resnet18"),
            ("width", "4"),
            ("num_classes", "3"),
            ("seg_classes", if object { "4" } else { "7" }),
            ("twostage_hidden", "8"),
            ("twostage_fc_hidden", "16"),
            ("input_size", "32"),
            ("batch_size", "4"),
            // Two batch-norm groups of 2: the shipped configs' ghost batch norm, at toy size.
            ("bn_group", "2"),
            ("init_checkpoint", ""),
            ("output_dir", dir.to_str().unwrap()),
        ] {
            c.set(k, v).unwrap();
        }
        let s = run(
            &c,
            &train,
            None,
            &RunOptions {
                run_dir: dir.clone(),
                stop_after_steps: Some(2),
                resume: None,
                progress: false,
                plots: false,
                eval_batch_size: 4,
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(s.trainer.pos.global_step, 2, "{}", p.display());
        assert!(dir.join("checkpoints/last.safetensors").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// No config may start from a file that nothing produces: `init_checkpoint` is torchvision's
/// documented download or the checkpoint of another shipped config's run, of a model the
/// consumer can load; every data folder a config reads is named in docs/reproduce.md.
#[test]
fn every_init_checkpoint_and_data_folder_has_a_producer() {
    let all: Vec<(String, TrainConfig)> = configs()
        .iter()
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                TrainConfig::from_file(p).unwrap(),
            )
        })
        .collect();
    let reproduce = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/reproduce.md"),
    )
    .unwrap();
    for (name, c) in &all {
        assert_eq!(
            c.output_dir,
            format!("runs/{name}"),
            "{name}: output_dir must be runs/<config name> (error messages rely on it)"
        );
        for dir in [&c.train_dir, &c.eval_dir] {
            assert!(
                reproduce.contains(dir.as_str()),
                "{name}: {dir} is not produced in docs/reproduce.md"
            );
        }
        let init = &c.init_checkpoint;
        if init.is_empty() {
            continue;
        }
        if init == "pretrained/resnet50-11ad3fa6.pth" {
            assert!(reproduce.contains("download.pytorch.org/models/resnet50-11ad3fa6.pth"));
            continue;
        }
        let producer = all
            .iter()
            .find(|(_, p)| *init == format!("{}/checkpoints/last.safetensors", p.output_dir))
            .unwrap_or_else(|| {
                panic!("{name}: init_checkpoint {init}: no shipped config writes it")
            });
        assert_ne!(&producer.0, name, "{name} starts from itself");
        let (a, b) = (producer.1.spec().unwrap(), c.spec().unwrap());
        assert_eq!(
            (a.backbone, a.num_classes, a.seg_classes),
            (b.backbone, b.num_classes, b.seg_classes),
            "{name} cannot load the model of {}",
            producer.0
        );
        assert_eq!(
            std::mem::discriminant(&a.head),
            std::mem::discriminant(&b.head),
            "{name} and {}: different model kinds",
            producer.0
        );
    }
}

/// The configs' comments are checked against the reference's YAMLs (train_configs/1k_pp/): none
/// may still claim a YAML is unavailable, and the four ablations whose YAML names torchvision's
/// file with `full_pretrain: True` say what that does in the reference and what they use.
#[test]
fn config_comments_follow_the_reference_yamls() {
    for p in configs() {
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if !name.ends_with("_in1k") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            !text.contains("not in this repository"),
            "{name}: the reference YAMLs are readable now; compare with them"
        );
        assert!(
            text.contains(".yaml") || text.contains("no YAML"),
            "{name}: names its reference YAML, or says there is none"
        );
    }
    for name in [
        "mpm_sv1_at_in1k",
        "mpm_sv2_at_in1k",
        "mpm_object_at_in1k",
        "twostage_at_in1k",
    ] {
        let text =
            std::fs::read_to_string(configs()[0].with_file_name(format!("{name}.toml"))).unwrap();
        assert!(
            text.contains("full_pretrain: True") && text.contains("['state_dict']"),
            "{name}: says what the YAML's torchvision file + full_pretrain does in the reference"
        );
    }
}
