//! The paper's pipeline end to end, at toy scale, with the shipped configuration files.
//!
//! Everything runs in one temporary folder laid out as `docs/reproduce.md` lays out the real
//! run: `configs/` (a copy of the shipped files), `pretrained/resnet50-11ad3fa6.pth`,
//! `data/partimagenetpp/{train,train_nocf,val_1w}`, `runs/<config>/`. So the configs' own paths
//! (`init_checkpoint`, `train_dir`, `eval_dir`, `output_dir`) are used as shipped; the command
//! line overrides only sizes (ResNet-18 width 8, 32 px, 3 classes, batch 4 in 2 batch-norm
//! groups, one epoch), and the device. Order:
//!
//! ```text
//! torchvision-layout backbone -> mpm_init -> mpm-data pseudo (the warm-up as the part labeller:
//!                                            train with the Category Filter, train_nocf without)
//!                             -> mpm_at, sv1, sv2, notd, ori, eps8, real_only, nocf
//!                             -> mpm_object_init -> mpm_object_at
//!                             -> twostage_at, vanilla_at, vanilla_at_eps8
//! standard (from scratch); then docs/reproduce.md's section 4: export every run a
//! table needs, mpm-attack each once, the labeller's part AP without and with the Category
//! Filter (`coco-export`, `index`, `pseudo`, `part-ap`), and `mpm-eval table` for Tables 2, 5, 6.
//! ```
//! A stage that cannot consume the previous stage's output fails the test; so does a shipped
//! config the test does not run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const CLASSES: usize = 3;
/// Train images per class without real annotations (pseudo-labelled by the pipeline).
const UNLABELLED_PER_CLASS: usize = 2;

fn run(bin: &str, dir: &Path, args: &[&str]) -> String {
    let o = Command::new(bin)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{bin} {args:?} failed:\n{text}");
    text
}

fn data(dir: &Path, args: &[&str]) -> String {
    run(env!("CARGO_BIN_EXE_mpm-data"), dir, args)
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `mpm-train export --checkpoint runs/<name> --out exported/<name>` (the best epoch).
fn export(dir: &Path, name: &str) -> String {
    let ck = format!("runs/{name}");
    let out = format!("exported/{name}");
    run(
        env!("CARGO_BIN_EXE_mpm-train"),
        dir,
        &["export", "--checkpoint", &ck, "--out", &out],
    )
}

/// docs/reproduce.md's attack of an exported run, `--threats paper` into `reports/<name>.json`,
/// at the cheapest settings (APGD-CE, 2 iterations, the 6 evaluation images at 32 px); `head`:
/// the model flags of a two-stage export. Checks the four threats' results.
fn attack(dir: &Path, name: &str, head: &[&str]) -> serde_json::Value {
    let weights = format!("exported/{name}/model.safetensors");
    let report = format!("reports/{name}.json");
    let c = CLASSES.to_string();
    let mut args = vec![
        "--weights",
        &weights,
        "--arch",
        "resnet18",
        "--num-classes",
        &c,
    ];
    args.extend(head);
    args.extend([
        "--data",
        "data/partimagenetpp/val_1w/img",
        "--list",
        "val_list.txt",
        "--resize",
        "36",
        "--crop",
        "32",
        "--threats",
        "paper",
        "--version",
        "custom",
        "--attacks",
        "apgd-ce",
        "--n-iter",
        "2",
        "--device",
        "cpu",
        "--report",
        &report,
    ]);
    let text = run(env!("CARGO_BIN_EXE_mpm-attack"), dir, &args);
    let report = read_json(&dir.join(&report));
    for threat in ["linf4", "linf8", "l1_75", "l2_2"] {
        let r = &report["threats"][threat];
        assert_eq!(r["n"], 2 * CLASSES, "{name} {threat}: {report}\n{text}");
        let clean = r["clean_accuracy"].as_f64().unwrap();
        let robust = r["robust_accuracy"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&clean) && robust <= clean,
            "{name}: {report}"
        );
    }
    report
}

/// `mpm-eval table [--table <layout>] --runs <reports> --names <names> --out tables/<out>`;
/// returns the Markdown of `tables/<out>/<file>.md`.
fn table(dir: &Path, layout: &str, runs: &[&str], names: &[&str], out: &str, file: &str) -> String {
    let runs = runs
        .iter()
        .map(|r| format!("reports/{r}.json"))
        .collect::<Vec<_>>()
        .join(",");
    let names = names.join(",");
    let out_dir = format!("tables/{out}");
    let mut args = vec!["table"];
    // docs/reproduce.md leaves the default layout (main: Table 2) implicit.
    if layout != "main" {
        args.extend(["--table", layout]);
    }
    args.extend(["--runs", &runs, "--names", &names, "--out", &out_dir]);
    run(env!("CARGO_BIN_EXE_mpm-eval"), dir, &args);
    let md = std::fs::read_to_string(dir.join(&out_dir).join(format!("{file}.md")))
        .unwrap_or_else(|e| panic!("tables/{out}/{file}.md: {e}"));
    eprintln!("{md}\n");
    md
}

/// `mpm-train --config configs/<name>.toml` with size overrides only.
fn train(dir: &Path, name: &str, seg_classes: usize) -> String {
    let config = format!("configs/{name}.toml");
    let s = seg_classes.to_string();
    let c = CLASSES.to_string();
    let text = run(
        env!("CARGO_BIN_EXE_mpm-train"),
        dir,
        &[
            "--config",
            &config,
            "--model",
            "resnet18",
            "--width",
            "8",
            "--num-classes",
            &c,
            "--seg-classes",
            &s,
            "--twostage-hidden",
            "8",
            "--twostage-fc-hidden",
            "16",
            "--input-size",
            "32",
            "--batch-size",
            "4",
            "--bn-group",
            "2",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--no-progress",
        ],
    );
    let run_dir = dir.join("runs").join(name);
    for f in ["checkpoints/last.safetensors", "export/model.safetensors"] {
        assert!(run_dir.join(f).exists(), "{name}: no {f}\n{text}");
    }
    text
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let meta = std::fs::metadata(&p).unwrap();
        if meta.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn images_of(class_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(class_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The data: synthetic PIN++ -> `mpm-data labels` -> the training layout (flag 0 in
/// `whether_pseudo/`); the same for the no-Category-Filter set (`train_nocf`, as
/// docs/reproduce.md builds it); a small eval folder; and the train images without real
/// annotations (IN-1K's other images): a second synthetic set's images, renamed so that no name
/// collides, in `data/imagenet/train_unlabelled/<wnid>/`.
fn prepare_data(d: &Path) -> usize {
    data(
        d,
        &[
            "synth",
            "--out",
            "syn",
            "--classes",
            &CLASSES.to_string(),
            "--images-per-class",
            "6",
            "--min-size",
            "40",
            "--max-size",
            "56",
        ],
    );
    let train = d.join("data/partimagenetpp/train");
    data(
        d,
        &[
            "labels",
            "--json-dir",
            "syn/json",
            "--including",
            "syn/including",
            "--discarded",
            "syn/discarded_data.json",
            "--images",
            "syn/images",
            "--out",
            "data/partimagenetpp/train",
            "--copy",
            "--quiet",
        ],
    );
    let parts = std::fs::read_to_string(train.join("parts.tsv")).unwrap();
    let seg_classes = parts.lines().count() + 1;
    let mut wnids: Vec<String> = std::fs::read_dir(train.join("img"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    wnids.sort();
    assert_eq!(wnids.len(), CLASSES);
    for w in &wnids {
        let flags = std::fs::read_to_string(train.join(format!("whether_pseudo/{w}.txt")))
            .unwrap_or_else(|e| panic!("labels wrote no whether_pseudo/{w}.txt: {e}"));
        assert!(
            !flags.is_empty() && flags.lines().all(|l| l.ends_with(" 0")),
            "{w}: annotated images are flagged 0:\n{flags}"
        );
    }
    data(
        d,
        &[
            "synth",
            "--out",
            "syn_more",
            "--classes",
            &CLASSES.to_string(),
            "--images-per-class",
            &UNLABELLED_PER_CLASS.to_string(),
            "--min-size",
            "40",
            "--max-size",
            "56",
            "--seed",
            "1",
        ],
    );
    for w in &wnids {
        let to = d.join("data/imagenet/train_unlabelled").join(w);
        std::fs::create_dir_all(&to).unwrap();
        for p in images_of(&d.join("syn_more/images").join(w)) {
            let name = format!("more_{}", p.file_name().unwrap().to_string_lossy());
            std::fs::copy(&p, to.join(name)).unwrap();
        }
    }
    copy_dir(&train, &d.join("data/partimagenetpp/train_nocf"));
    // The evaluation set: two images per class, in the ImageFolder layout (no part maps).
    let val = d.join("data/partimagenetpp/val_1w/img");
    for w in &wnids {
        std::fs::create_dir_all(val.join(w)).unwrap();
        for p in images_of(&train.join("img").join(w)).iter().take(2) {
            std::fs::copy(p, val.join(w).join(p.file_name().unwrap())).unwrap();
        }
    }
    seg_classes
}

/// `mpm-data pseudo` as docs/reproduce.md runs it, with the head warm-up's checkpoint as the
/// part labeller (its EMA weights): the unlabelled train images get maps in `train` (with the
/// Category Filter) and in `train_nocf` (without), `img/` links and flag 1; the annotated
/// images keep their maps and flag 0. The AT stages after it train on both.
fn pseudo_label(d: &Path, seg_classes: usize) {
    data(
        d,
        &[
            "index",
            "--root",
            "data/imagenet/train_unlabelled",
            "--out",
            "data/train_unlabelled.tsv",
        ],
    );
    let sc = seg_classes.to_string();
    let c = CLASSES.to_string();
    for (out, extra) in [
        ("data/partimagenetpp/train", None),
        (
            "data/partimagenetpp/train_nocf",
            Some("--no-category-filter"),
        ),
    ] {
        let before =
            std::fs::read_to_string(d.join(out).join("whether_pseudo/n90000000.txt")).unwrap();
        let mut args = vec![
            "pseudo",
            "--weights",
            "runs/mpm_init_in1k/checkpoints/last.safetensors",
            "--arch",
            "resnet18",
            "--num-classes",
            &c,
            "--head",
            "mpm",
            "--seg-classes",
            &sc,
            "--parts",
            "data/partimagenetpp/train/parts.tsv",
            "--index",
            "data/train_unlabelled.tsv",
            "--input-size",
            "32",
            "--out",
            out,
        ];
        args.extend(extra);
        let text = data(d, &args);
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(d.join(out).join("pseudo_report.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            report["written"],
            CLASSES * UNLABELLED_PER_CLASS,
            "{out}: {report}\n{text}"
        );
        assert_eq!(report["category_filter"], extra.is_none(), "{report}");
        let root = d.join(out);
        for w in (0..CLASSES).map(|i| format!("n9000000{i}")) {
            let flags =
                std::fs::read_to_string(root.join(format!("whether_pseudo/{w}.txt"))).unwrap();
            let mut pseudo = 0;
            for p in images_of(&d.join("data/imagenet/train_unlabelled").join(&w)) {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
                assert!(
                    root.join(format!("img/{w}/{name}")).exists(),
                    "{out}: no img/{w}/{name}"
                );
                assert!(
                    root.join(format!("seg/{w}/{stem}.png")).exists(),
                    "{out}: no map"
                );
                let line = flags.lines().find(|l| l.contains(&name));
                assert!(
                    line.is_some_and(|l| l.ends_with(" 1")),
                    "{out}/{w}: {flags}"
                );
                pseudo += 1;
            }
            assert_eq!(pseudo, UNLABELLED_PER_CLASS);
            // The annotated images' flags are untouched.
            let zeros = flags.lines().filter(|l| l.ends_with(" 0")).count();
            if w == "n90000000" {
                assert_eq!(zeros, before.lines().count(), "{out}: {flags}");
            }
            assert!(zeros > 0, "{out}/{w}: {flags}");
        }
    }
}

/// torchvision's ResNet-50 file, at toy size: a plain ResNet-18 (width 8, 3 classes) state dict
/// in torchvision's names and layouts, `num_batches_tracked` included, as a PyTorch zip.
fn write_backbone(d: &Path) {
    use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec};
    let spec = ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet18,
            width: 8,
            act: Act::Gelu,
        },
        num_classes: CLASSES,
        seg_classes: 0,
        head: Head::None,
    };
    let store = spec.init(11).unwrap();
    std::fs::create_dir_all(d.join("pretrained")).unwrap();
    mpm::nn::checkpoint::save_state(
        &d.join("pretrained/resnet50-11ad3fa6.pth"),
        &spec.state_dict(&store).unwrap(),
        &Default::default(),
    )
    .unwrap();
}

#[test]
fn every_shipped_config_runs_in_the_readme_order_and_chains() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_dir(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs"),
        &d.join("configs"),
    );
    let s = prepare_data(d);
    write_backbone(d);
    let object_s = CLASSES + 1;
    let mut ran = BTreeSet::new();
    let mut stage = |name: &str, seg: usize, expect_init: &str| {
        let text = train(d, name, seg);
        assert!(
            text.contains(expect_init),
            "{name}: expected the init line '{expect_init}':\n{text}"
        );
        ran.insert(name.to_string());
        text
    };
    let torchvision = "init_checkpoint pretrained/resnet50-11ad3fa6.pth: a PyTorch state dict";
    let from_warmup =
        "init_checkpoint runs/mpm_init_in1k/checkpoints/last.safetensors: an mpm-train checkpoint";
    stage("mpm_init_in1k", s, torchvision);
    pseudo_label(d, s);
    for name in [
        "mpm_at_in1k",
        "mpm_sv1_at_in1k",
        "mpm_sv2_at_in1k",
        "mpm_notd_at_in1k",
        "mpm_at_eps8_in1k",
        "mpm_real_only_at_in1k",
        "mpm_nocf_at_in1k",
    ] {
        let text = stage(name, s, from_warmup);
        assert!(
            text.contains("taking its raw model weights (model.*)"),
            "{text}"
        );
    }
    stage("mpm_object_init_in1k", object_s, torchvision);
    stage(
        "mpm_object_at_in1k",
        object_s,
        "init_checkpoint runs/mpm_object_init_in1k/checkpoints/last.safetensors: an mpm-train \
         checkpoint",
    );
    for name in [
        "twostage_at_in1k",
        "vanilla_at_in1k",
        "vanilla_at_eps8_in1k",
    ] {
        stage(name, s, torchvision);
    }
    stage("mpm_ori_in1k", s, "");
    stage("standard_in1k", s, "");

    // The small track (issue #21): Tiny-PartImageNet++ built by `mpm-data tiny` from the
    // training layout (the toy classes stand for T-IN's 200), then its three configs.
    let wnids: Vec<String> = std::fs::read_dir(d.join("data/partimagenetpp/train/img"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    std::fs::write(d.join("tiny_wnids.txt"), wnids.join("\n")).unwrap();
    data(
        d,
        &[
            "tiny",
            "--train",
            "data/partimagenetpp/train",
            "--val",
            "data/partimagenetpp/val_1w",
            "--wnids",
            "tiny_wnids.txt",
            "--images-per-class",
            "4",
            "--val-per-class",
            "2",
            "--out",
            "data/tpinpp",
            "--quiet",
        ],
    );
    for name in [
        "tpinpp_vanilla_resnext50",
        "tpinpp_mpm_resnext50",
        "tpinpp_mpm_resnet50",
    ] {
        stage(name, s, "");
    }

    // Every shipped config ran.
    let shipped: BTreeSet<String> = std::fs::read_dir(d.join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        shipped, ran,
        "the pipeline test must run every shipped config"
    );

    // The real-only ablation read the flags (the pseudo-labelled images are flagged 1).
    let cfg = std::fs::read_to_string(d.join("runs/mpm_real_only_at_in1k/config.toml")).unwrap();
    assert!(
        cfg.contains("use_whether_pseudo = true") && cfg.contains("pseudo_weight = 0.0"),
        "{cfg}"
    );

    // docs/reproduce.md section 4: export the MPM run's model (the default is the best epoch by
    // EMA PGD accuracy, recorded in the metrics) ...
    let text = export(d, "mpm_at_in1k");
    assert!(
        text.contains("best: epoch 1") && text.contains("model.safetensors"),
        "{text}"
    );
    let metrics = std::fs::read_to_string(d.join("runs/mpm_at_in1k/metrics.jsonl")).unwrap();
    assert!(
        metrics.contains("\"kind\":\"best\"") && metrics.contains("\"epoch\":1"),
        "{metrics}"
    );
    // ... or the last one.
    let text = run(
        env!("CARGO_BIN_EXE_mpm-train"),
        d,
        &[
            "export",
            "--checkpoint",
            "runs/vanilla_at_in1k",
            "--which",
            "last",
            "--out",
            "exported/vanilla_at_in1k",
        ],
    );
    assert!(!text.contains("best: epoch"), "{text}");
    let (_, meta) =
        mpm::io::load_safetensors(&d.join("exported/vanilla_at_in1k/model.safetensors")).unwrap();
    assert!(
        meta[mpm::train::init::EXPORT_META].contains("\"which\":\"last\""),
        "{meta:?}"
    );
    // The non-AT runs chose their best epoch by clean accuracy (the reference's top1).
    for name in ["mpm_init_in1k", "mpm_ori_in1k", "standard_in1k"] {
        let best = read_json(&d.join(format!("runs/{name}/checkpoints/best.json")));
        assert_eq!(
            (best["eval_metric"].as_str(), best["metric"].as_str()),
            (Some("top1"), Some("clean_acc")),
            "{name}: {best}"
        );
    }
    // The 10K list's format: `<wnid>/<file> <class index>`.
    let mut list = String::new();
    let val = d.join("data/partimagenetpp/val_1w/img");
    let mut wnids: Vec<String> = std::fs::read_dir(&val)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    wnids.sort();
    for (label, w) in wnids.iter().enumerate() {
        for p in images_of(&val.join(w)) {
            let f = p.file_name().unwrap().to_string_lossy().into_owned();
            list += &format!("{w}/{f} {label}\n");
        }
    }
    std::fs::write(d.join("val_list.txt"), list).unwrap();
    // `mkdir -p reports`: one report per run, each attacked once, read by every table.
    std::fs::create_dir_all(d.join("reports")).unwrap();
    attack(d, "mpm_at_in1k", &[]);
    attack(d, "vanilla_at_in1k", &[]);
    let md = table(
        d,
        "main",
        &["vanilla_at_in1k", "mpm_at_in1k"],
        &["Vanilla", "MPM"],
        "table2",
        "table2",
    );
    assert!(
        md.contains("Table 2") && md.contains("| Vanilla |") && md.contains("| MPM |"),
        "{md}"
    );

    // Table 5 (section 4): the labeller's part AP on the annotated images `labels` held out
    // (val.txt; coco-export's val.json is the same split), without and with the Category
    // Filter, then the three part-label runs.
    let c = CLASSES.to_string();
    let sc = s.to_string();
    data(
        d,
        &[
            "coco-export",
            "--json-dir",
            "syn/json",
            "--discarded",
            "syn/discarded_data.json",
            "--out",
            "data/pinpp_coco",
            "--quiet",
        ],
    );
    data(
        d,
        &[
            "index",
            "--list",
            "data/partimagenetpp/train/val.txt",
            "--root",
            "data/partimagenetpp/train/img",
            "--out",
            "data/pinpp_val.tsv",
        ],
    );
    for (cf, extra) in [("nocf", Some("--no-category-filter")), ("cf", None)] {
        let out = format!("ap/{cf}");
        let mut args = vec![
            "pseudo",
            "--weights",
            "runs/mpm_init_in1k/checkpoints/last.safetensors",
            "--arch",
            "resnet18",
            "--num-classes",
            &c,
            "--head",
            "mpm",
            "--seg-classes",
            &sc,
            "--parts",
            "data/partimagenetpp/train/parts.tsv",
            "--index",
            "data/pinpp_val.tsv",
            "--input-size",
            "32",
            "--out",
            &out,
        ];
        args.extend(extra);
        data(d, &args);
        let seg = format!("ap/{cf}/seg");
        let prob = format!("ap/{cf}/prob");
        let json = format!("reports/ap_{cf}.json");
        data(
            d,
            &[
                "part-ap",
                "--gt",
                "data/pinpp_coco/val.json",
                "--label-maps",
                &seg,
                "--prob-maps",
                &prob,
                "--json",
                &json,
            ],
        );
        let r = read_json(&d.join(&json));
        assert_eq!(r["counts"]["missing_maps"], 0, "{json}: {r}");
        assert!(r["AP"].as_f64().is_some(), "{json}: {r}");
    }
    for name in ["mpm_real_only_at_in1k", "mpm_nocf_at_in1k"] {
        export(d, name);
        attack(d, name, &[]);
    }
    let md = table(
        d,
        "5",
        &[
            "ap_nocf",
            "ap_cf",
            "mpm_real_only_at_in1k",
            "mpm_nocf_at_in1k",
            "mpm_at_in1k",
        ],
        &[
            "labeller without CF",
            "labeller with CF",
            "real annotations only",
            "pseudo labels without CF",
            "pseudo labels with CF (MPM)",
        ],
        "table5",
        "table5",
    );
    for row in [
        "Table 5: part-label ablations",
        "| Model | Clean | Linf 4/255 | Linf 8/255 | L1 75 | L2 2 | Avg |",
        "| real annotations only |",
        "| pseudo labels without CF |",
        "| pseudo labels with CF (MPM) |",
    ] {
        assert!(md.contains(row), "no '{row}':\n{md}");
    }
    let ap = std::fs::read_to_string(d.join("tables/table5/table5_ap.md")).unwrap();
    assert!(
        ap.contains("Table 5: part AP")
            && ap.contains("| labeller without CF |")
            && ap.contains("| labeller with CF |"),
        "{ap}"
    );

    // Table 6 (section 4): MPM's design ablations, each exported and attacked once.
    for name in [
        "mpm_sv1_at_in1k",
        "mpm_sv2_at_in1k",
        "mpm_notd_at_in1k",
        "mpm_object_at_in1k",
    ] {
        export(d, name);
        attack(d, name, &[]);
    }
    export(d, "twostage_at_in1k");
    attack(
        d,
        "twostage_at_in1k",
        &["--head", "twostage", "--seg-classes", &sc],
    );
    let md = table(
        d,
        "6",
        &[
            "mpm_sv1_at_in1k",
            "mpm_sv2_at_in1k",
            "mpm_notd_at_in1k",
            "mpm_at_in1k",
            "mpm_object_at_in1k",
            "twostage_at_in1k",
        ],
        &[
            "SV1",
            "SV2",
            "SV3 without top-down",
            "SV3 = MPM",
            "object masks",
            "two-stage",
        ],
        "table6",
        "table6",
    );
    assert!(md.contains("Table 6: MPM design ablations"), "{md}");
    // The paper's column order, whatever order the reports list the threats in.
    assert!(
        md.contains("| Model | Clean | Linf 4/255 | Linf 8/255 | L1 75 | L2 2 | Avg |"),
        "{md}"
    );
    for row in [
        "SV1",
        "SV2",
        "SV3 without top-down",
        "SV3 = MPM",
        "object masks",
        "two-stage",
    ] {
        assert!(md.contains(&format!("| {row} |")), "no row {row}:\n{md}");
    }
}
