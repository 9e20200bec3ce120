//! `mpm-data tiny` (Tiny-PartImageNet++, issue #21) on a small IN-1K-layout fixture tree made
//! here: the per-class draw (count, reproducibility, independence of other classes, the
//! seed), the training layout and lists, the IN-1K val evaluation set, bad input skipped and
//! counted, and clear errors for missing classes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mpm::data::imageio::{write_label_map, LabelMap};

/// Classes of the fixture, deliberately not in sorted order (class index = sorted rank).
const WNIDS: [&str; 3] = ["n03000000", "n01000000", "n02000000"];

fn png(path: &Path, v: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(8, 6, image::Rgb([v, 255 - v, 7]))
        .save_with_format(path, image::ImageFormat::Png)
        .unwrap();
}

/// TRAIN/img/<wnid>/<wnid>_<k>.JPEG (PNG bytes: the name's extension does not matter to the
/// decoder), TRAIN/seg/<wnid>/<stem>.png, TRAIN/whether_pseudo/<wnid>.txt; VAL/<wnid>/...
/// Per class 8 good images; n01000000 also has an undecodable image and one without a map,
/// n02000000 only 3 good images; a stray text file in every class.
fn fixture(root: &Path) -> (PathBuf, PathBuf) {
    let train = root.join("in1k_train");
    let val = root.join("in1k_val");
    for (ci, w) in WNIDS.iter().enumerate() {
        let good = if *w == "n02000000" { 3 } else { 8 };
        let mut flags = String::new();
        for k in 0..good {
            let name = format!("{w}_{k}.JPEG");
            png(&train.join("img").join(w).join(&name), (ci * 40 + k) as u8);
            let m = LabelMap {
                h: 6,
                w: 8,
                data: vec![(ci + 1) as u16; 48],
            };
            let seg = train.join("seg").join(w);
            std::fs::create_dir_all(&seg).unwrap();
            write_label_map(&seg.join(format!("{w}_{k}.png")), &m).unwrap();
            flags += &format!("{name} {}\n", u8::from(k % 2 == 1));
        }
        let flag_dir = train.join("whether_pseudo");
        std::fs::create_dir_all(&flag_dir).unwrap();
        std::fs::write(flag_dir.join(format!("{w}.txt")), flags).unwrap();
        std::fs::write(train.join("img").join(w).join("notes.txt"), "not an image").unwrap();
        for k in 0..4 {
            png(
                &val.join(w).join(format!("ILSVRC2012_val_{ci}{k}.JPEG")),
                k as u8,
            );
        }
    }
    let bad = train.join("img/n01000000/n01000000_bad.JPEG");
    std::fs::write(&bad, b"\xff\xd8\xff garbage, not a JPEG").unwrap();
    let seg = train.join("seg/n01000000");
    write_label_map(&seg.join("n01000000_bad.png"), &LabelMap::zeros(6, 8)).unwrap();
    png(&train.join("img/n01000000/n01000000_nomap.JPEG"), 99);
    (train, val)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mpm-data"))
        .arg("tiny")
        .args(args)
        .arg("--quiet")
        .output()
        .expect("run mpm-data")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(String::from)
        .collect()
}

/// The chosen training files of one class.
fn chosen(out: &Path, wnid: &str) -> BTreeSet<String> {
    std::fs::read_dir(out.join("train/img").join(wnid))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn builds_the_training_layout_and_the_val_list() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, val) = fixture(tmp.path());
    let wnids = tmp.path().join("wnids.txt");
    std::fs::write(&wnids, format!("# test classes\n{}\n", WNIDS.join("\n"))).unwrap();
    let out = tmp.path().join("out");
    let args = |out: &Path, seed: &str| {
        run(&[
            "--train",
            s(&train),
            "--val",
            s(&val),
            "--wnids",
            s(&wnids),
            "--out",
            s(out),
            "--images-per-class",
            "4",
            "--val-per-class",
            "2",
            "--seed",
            seed,
        ])
    };
    let o = args(&out, "42");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");

    // Classes in sorted order; labels are the sorted rank.
    assert_eq!(
        lines(&out.join("wnids.txt")),
        ["n01000000", "n02000000", "n03000000"]
    );
    let train_list = lines(&out.join("train/train.txt"));
    // 4 + 3 (a short class keeps all it has) + 4.
    assert_eq!(train_list.len(), 11, "{train_list:?}");
    for row in &train_list {
        let (rel, label) = row.split_once(' ').unwrap();
        let wnid = rel.split('/').next().unwrap();
        let expect = ["n01000000", "n02000000", "n03000000"]
            .iter()
            .position(|w| *w == wnid)
            .unwrap();
        assert_eq!(label.parse::<usize>().unwrap(), expect, "{row}");
        let img = out.join("train/img").join(rel);
        assert!(img.exists(), "{}", img.display());
        let stem = Path::new(rel).file_stem().unwrap().to_str().unwrap();
        let map = out.join("train/seg").join(wnid).join(format!("{stem}.png"));
        assert!(map.exists(), "{}", map.display());
        // Unresized: the file is the source's.
        assert_eq!(
            std::fs::read(&img).unwrap(),
            std::fs::read(train.join("img").join(rel)).unwrap()
        );
    }
    // Bad input never chosen: undecodable, no label map, not an image.
    let c1 = chosen(&out, "n01000000");
    assert_eq!(c1.len(), 4);
    assert!(c1
        .iter()
        .all(|f| !f.contains("bad") && !f.contains("nomap") && f.ends_with(".JPEG")));
    assert_eq!(chosen(&out, "n02000000").len(), 3);
    // Real/pseudo flags travel with the chosen images.
    let flags = lines(&out.join("train/whether_pseudo/n01000000.txt"));
    assert_eq!(flags.len(), 4);
    for f in &flags {
        let (name, flag) = f.split_once(' ').unwrap();
        assert!(c1.contains(name));
        let k: u32 = name
            .trim_start_matches("n01000000_")
            .trim_end_matches(".JPEG")
            .parse()
            .unwrap();
        assert_eq!(flag, if k % 2 == 1 { "1" } else { "0" });
    }
    // The evaluation set: IN-1K val, first 2 per class by name.
    let val_list = lines(&out.join("val/val.txt"));
    assert_eq!(val_list.len(), 6);
    assert!(val_list.contains(&"n02000000/ILSVRC2012_val_20.JPEG 1".to_string()));
    assert!(out
        .join("val/img/n03000000/ILSVRC2012_val_01.JPEG")
        .exists());
    // The list parses as the trainer's list files do.
    let (idx, skips) = mpm::data::index::read_list(
        &out.join("train/train.txt"),
        &out.join("train/img"),
        Some(&out.join("train/seg")),
    )
    .unwrap();
    assert!(skips.is_empty());
    assert_eq!(idx.samples.len(), 11);
    assert!(idx.samples.iter().all(|s| s.seg.is_some()));

    // Skips counted and reported with their reasons.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tiny_report.json")).unwrap())
            .unwrap();
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    let reasons: Vec<String> = skipped
        .iter()
        .map(|v| v["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("does not decode")));
    assert!(reasons.iter().any(|r| r.contains("no label map")));
    assert_eq!(report["short"][0]["wnid"], "n02000000");
    assert!(
        err.contains("skip") && err.contains("n01000000_bad.JPEG"),
        "{err}"
    );

    // Same seed: the same images, run after run (and rerunning over OUT is harmless).
    let again = args(&out, "42");
    assert!(again.status.success());
    assert_eq!(lines(&out.join("train/train.txt")), train_list);
    let out2 = tmp.path().join("out2");
    assert!(args(&out2, "42").status.success());
    assert_eq!(lines(&out2.join("train/train.txt")), train_list);
    // Another seed: another draw (8 candidates choose 4, twice: 1/70^2 to coincide).
    let out3 = tmp.path().join("out3");
    assert!(args(&out3, "7").status.success());
    assert!(
        chosen(&out3, "n01000000") != c1 || chosen(&out3, "n03000000") != chosen(&out, "n03000000")
    );
    // A class's draw does not depend on the other classes in the list.
    let one = tmp.path().join("one.txt");
    std::fs::write(&one, "n03000000\n").unwrap();
    let out4 = tmp.path().join("out4");
    let o = run(&[
        "--train",
        s(&train),
        "--wnids",
        s(&one),
        "--out",
        s(&out4),
        "--images-per-class",
        "4",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(chosen(&out4, "n03000000"), chosen(&out, "n03000000"));
    assert!(!out4.join("val").exists(), "no --val, no val set");
}

#[test]
fn missing_classes_and_maps_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, _) = fixture(tmp.path());
    let out = tmp.path().join("out");
    // Default class list: Tiny-ImageNet's 200, none of which the fixture has.
    let o = run(&["--train", s(&train), "--out", s(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("200 of the 200 classes") && err.contains("n02124075"),
        "{err}"
    );
    // No label maps where they are looked for.
    let o = run(&[
        "--train",
        s(&train.join("img")),
        "--out",
        s(&out),
        "--wnids",
        s(&write(tmp.path(), "w.txt", "n01000000\n")),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--no-seg"), "{err}");
    // --no-seg: plain Tiny-ImageNet at full resolution; the no-map image is a candidate then.
    let o = run(&[
        "--train",
        s(&train.join("img")),
        "--no-seg",
        "--out",
        s(&out),
        "--wnids",
        s(&write(tmp.path(), "w.txt", "n01000000\n")),
        "--images-per-class",
        "100",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(chosen(&out, "n01000000").len(), 9);
    assert!(!out.join("train/seg").exists());
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_default_class_list_is_tiny_imagenet_s_and_in_in1k() {
    let w = mpm::data::tiny::parse_wnids(mpm::data::tiny::TIN_WNIDS, "assets").unwrap();
    assert_eq!(w.len(), 200);
    let in1k: BTreeSet<String> = include_str!("../assets/eval/imagenet_classes.tsv")
        .lines()
        .filter_map(|l| l.split('\t').next().map(String::from))
        .collect();
    assert_eq!(in1k.len(), 1000);
    for x in &w {
        assert!(in1k.contains(x), "{x} is not an IN-1K class");
    }
}
