//! `mpm-data pseudo`: synthetic set -> label maps -> an MPM checkpoint -> pseudo labels with
//! and without the Category Filter, scored against the annotations.

use mpm::data::imageio::read_label_map;
use mpm::data::pin_json::PartTable;
use mpm::data::pseudo::category_filter_argmax;
use mpm::data::pseudo_label::upsampled_argmax;
use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec};
use rand::{RngExt, SeedableRng};
use std::path::Path;
use std::process::Command;

fn data_bin(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mpm-data"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run mpm-data")
}

#[test]
fn filtered_argmax_at_native_resolution_equals_the_probability_filter() {
    // Same size in and out: upsampling is the identity, so the restricted logit argmax must
    // equal the library's probability-zeroing argmax.
    let (h, w, s) = (3, 4, 9);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let logits: Vec<f32> = (0..h * w * s)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    let probs = mpm::cpu::softmax_xent::softmax(&logits, s);
    let ranges = vec![(1u32, 4u32), (4, 6), (6, 9)];
    for (c, &(lo, hi)) in ranges.iter().enumerate() {
        let chans: Vec<usize> = std::iter::once(0).chain(lo as usize..hi as usize).collect();
        let a = upsampled_argmax(&logits, h, w, s, h, w, Some(&chans));
        let b = category_filter_argmax(&probs, 1, h, w, s, &[c], &ranges).unwrap();
        assert_eq!(a, b, "class {c}");
    }
    let all = upsampled_argmax(&logits, h, w, s, h, w, None);
    for (p, &a) in all.iter().enumerate() {
        let row = &logits[p * s..(p + 1) * s];
        let best = (0..s).fold(0, |b, i| if row[i] > row[b] { i } else { b });
        assert_eq!(a as usize, best);
    }
}

#[test]
fn pseudo_labels_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(data_bin(
        &[
            "synth",
            "--out",
            "syn",
            "--classes",
            "3",
            "--images-per-class",
            "5"
        ],
        d
    )
    .status
    .success());
    assert!(data_bin(
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
            "lab",
        ],
        d
    )
    .status
    .success());
    assert!(data_bin(
        &["index", "--root", "lab/img", "--seg", "lab/seg", "--out", "all.idx"],
        d
    )
    .status
    .success());
    let table = PartTable::from_tsv(&d.join("lab/parts.tsv")).unwrap();
    let s = table.num_parts() + 1;
    let spec = ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet18,
            width: 4,
            act: Act::Gelu,
        },
        num_classes: 3,
        seg_classes: s,
        head: Head::Mpm {
            levels: 3,
            top_down: true,
        },
    };
    let store = spec.init(9).unwrap();
    mpm::nn::checkpoint::save_state(
        &d.join("w.safetensors"),
        &spec.state_dict(&store).unwrap(),
        &Default::default(),
    )
    .unwrap();
    let sc = s.to_string();
    let common = [
        "pseudo",
        "--weights",
        "w.safetensors",
        "--arch",
        "resnet18",
        "--num-classes",
        "3",
        "--head",
        "mpm",
        "--seg-classes",
        &sc,
        "--parts",
        "lab/parts.tsv",
        "--index",
        "all.idx",
        "--input-size",
        "64",
    ];
    let run = |out: &str, extra: &[&str]| {
        let mut a: Vec<&str> = common.to_vec();
        a.extend_from_slice(&["--out", out]);
        a.extend_from_slice(extra);
        let o = data_bin(&a, d);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(d.join(out).join("pseudo_report.json")).unwrap(),
        )
        .unwrap();
        r
    };
    let cf = run("cf", &[]);
    let plain = run("plain", &["--no-category-filter"]);
    assert!(cf["written"].as_u64().unwrap() >= 10);
    assert_eq!(cf["scored"], cf["written"]);
    // One directory-level sync at the end: every class folder of seg/, prob/ and img/, the
    // three folders themselves and the output root, each once.
    let class_dirs = |sub: &str| std::fs::read_dir(d.join("cf").join(sub)).unwrap().count();
    let want = class_dirs("seg") + class_dirs("prob") + class_dirs("img") + 3 + 1;
    assert_eq!(cf["dirs_synced"].as_u64().unwrap() as usize, want);
    assert_eq!(cf["stale_temps_removed"], 0);
    // Both runs score both ways on the same predictions.
    assert_eq!(cf["with_filter"], plain["with_filter"]);
    assert_eq!(cf["without_filter"], plain["without_filter"]);
    // With the filter every written label lies in the image's own class's parts or 0.
    let ranges = table.ranges();
    let idx = mpm::data::index::Index::read(&d.join("all.idx")).unwrap();
    for smp in &idx.samples {
        let wnid = &idx.classes[smp.label];
        let stem = smp.image.file_stem().unwrap().to_str().unwrap();
        let m = read_label_map(&d.join("cf/seg").join(wnid).join(format!("{stem}.png"))).unwrap();
        let img = mpm::data::imageio::read_rgb(&d.join(&smp.image)).unwrap();
        assert_eq!((m.w, m.h), (img.width() as usize, img.height() as usize));
        let c = table.wnids.iter().position(|w| w == wnid).unwrap();
        let (lo, hi) = ranges[c];
        assert!(m
            .data
            .iter()
            .all(|&v| v == 0 || (lo..hi).contains(&(v as u32))));
    }
    // Into the labels root itself (the authors' layout): annotated images (flag 0) keep their
    // maps and flags; an image made unannotated (map and flag removed) gets a pseudo map,
    // flag 1 and keeps its img/ entry; a map without a flag is kept (origin unknown).
    let w0 = &idx.classes[0];
    let flags_path = d.join("lab/whether_pseudo").join(format!("{w0}.txt"));
    let flags = std::fs::read_to_string(&flags_path).unwrap();
    let names: Vec<&str> = flags
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert!(names.len() >= 3 && flags.lines().all(|l| l.ends_with(" 0")));
    let stem = |n: &str| n.trim_end_matches(".JPEG").to_string();
    let seg = |n: &str| d.join("lab/seg").join(w0).join(format!("{}.png", stem(n)));
    let (freed, unflagged, kept) = (names[0], names[1], names[2]);
    std::fs::remove_file(seg(freed)).unwrap();
    let rest: String = flags
        .lines()
        .filter(|l| !l.starts_with(freed) && !l.starts_with(unflagged))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&flags_path, rest).unwrap();
    let before_kept = std::fs::read(seg(kept)).unwrap();
    let before_unflagged = std::fs::read(seg(unflagged)).unwrap();
    assert!(data_bin(
        &[
            "index",
            "--root",
            "syn/images",
            "--seg",
            "lab/seg",
            "--out",
            "syn.idx"
        ],
        d
    )
    .status
    .success());
    // A temp file left by a killed run (pid 0x7fff_fff0 never runs): removed at start.
    let stale = d.join("lab/seg").join(w0).join(".x.png.tmp.2147483632.3");
    std::fs::write(&stale, b"half").unwrap();
    let mut a: Vec<&str> = common.to_vec();
    let at = a.iter().position(|x| *x == "all.idx").unwrap();
    a[at] = "syn.idx";
    a.extend_from_slice(&["--out", "lab"]);
    let o = data_bin(&a, d);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("lab/pseudo_report.json")).unwrap())
            .unwrap();
    let annotated = idx.samples.len() as u64 - 1; // all labelled images but the freed one
    assert_eq!(rep["kept_annotated"].as_u64().unwrap(), annotated);
    assert_eq!(rep["stale_temps_removed"], 1);
    assert!(!stale.exists());
    // Synced: the seg/ and prob/ class folders of the maps written, the img/ class folders
    // that received a link (images not labelled before: the freed one had its link), their
    // parents, and the root, each once.
    let linked: std::collections::HashSet<(String, String)> = idx
        .samples
        .iter()
        .map(|s| {
            let f = s.image.file_name().unwrap().to_str().unwrap().to_string();
            (idx.classes[s.label].clone(), f)
        })
        .collect();
    let mut dirs = std::collections::BTreeSet::new();
    let records = std::fs::read_to_string(d.join("lab/pseudo.jsonl")).unwrap();
    for l in records.lines() {
        let r: serde_json::Value = serde_json::from_str(l).unwrap();
        let w = r["wnid"].as_str().unwrap().to_string();
        let f = Path::new(r["image"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        for sub in ["seg", "prob"] {
            dirs.insert(format!("{sub}/{w}"));
            dirs.insert(sub.to_string());
        }
        if !linked.contains(&(w.clone(), f)) {
            dirs.insert(format!("img/{w}"));
            dirs.insert("img".to_string());
        }
    }
    assert!(dirs.contains(&format!("seg/{w0}")), "{dirs:?}");
    assert_eq!(
        rep["dirs_synced"].as_u64().unwrap() as usize,
        dirs.len() + 1
    );
    assert_eq!(std::fs::read(seg(kept)).unwrap(), before_kept);
    assert_eq!(std::fs::read(seg(unflagged)).unwrap(), before_unflagged);
    assert!(seg(freed).exists());
    let after = std::fs::read_to_string(&flags_path).unwrap();
    assert!(after.contains(&format!("{freed} 1\n")), "{after}");
    assert!(after.contains(&format!("{kept} 0\n")), "{after}");
    assert!(!after.contains(unflagged), "{after}");
    assert!(d.join("lab/img").join(w0).join(freed).exists());

    // A model without part heads cannot pseudo-label.
    let o = data_bin(
        &[
            "pseudo",
            "--weights",
            "w.safetensors",
            "--arch",
            "resnet18",
            "--num-classes",
            "3",
            "--parts",
            "lab/parts.tsv",
            "--index",
            "all.idx",
            "--out",
            "x",
        ],
        d,
    );
    assert!(!o.status.success());
}
