//! Every `mpm-data` subcommand on small generated data, through the binary.

use std::path::Path;
use std::process::Command;

fn mpm_data(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mpm-data"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = mpm_data(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "mpm-data {args:?} failed:\n{err}");
    String::from_utf8_lossy(&o.stdout).to_string() + &err
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap()
}

#[test]
fn all_subcommands_on_synthetic_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("syn"), tmp.path().join("pin"));
    let log = ok(&[
        "synth",
        "--out",
        p(&src),
        "--classes",
        "5",
        "--images-per-class",
        "12",
        "--faults",
    ]);
    assert!(log.contains("5 classes, 60 images"), "{log}");
    for f in [
        "json/n90000000.json",
        "images/n90000000/n90000000_1000.JPEG",
        "discarded_data.json",
        "category_name.json",
    ] {
        assert!(src.join(f).exists(), "{f}");
    }

    let log = ok(&[
        "labels",
        "--json-dir",
        p(&src.join("json")),
        "--including",
        p(&src.join("including")),
        "--discarded",
        p(&src.join("discarded_data.json")),
        "--category-names",
        p(&src.join("category_name.json")),
        "--images",
        p(&src.join("images")),
        "--out",
        p(&out),
        "--copy",
        "--quiet",
    ]);
    // 5 faulty images (one filed under another class's wnid folder) + the broken class file.
    assert!(log.contains("skipped 6"), "{log}");
    assert!(
        log.contains("file_name = \"n99999999/n90000000_other_wnid_folder.JPEG\": folder 'n99999999' is not this class's wnid"),
        "{log}"
    );
    assert!(log.contains("(list: a list of "), "{log}");
    assert!(
        log.contains("n90000000_corrupt.JPEG"),
        "skips are logged with their path:\n{log}"
    );
    for f in [
        "parts.tsv",
        "classes.tsv",
        "train.txt",
        "val.txt",
        "labels_report.json",
        "whether_pseudo/n90000000.txt",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    assert!(out.join("img/n90000000/n90000000_1000.JPEG").is_file());

    let stats_json = tmp.path().join("stats.json");
    let log = ok(&[
        "stats",
        "--json-dir",
        p(&src.join("json")),
        "--discarded",
        p(&src.join("discarded_data.json")),
        "--json",
        p(&stats_json),
    ]);
    assert!(log.contains("masks per image (Table S1 bins)"), "{log}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats_json).unwrap()).unwrap();
    assert_eq!(v["classes"], 5);
    assert!(v["masks_per_image"]["5-6"].as_u64().is_some());

    let idx = tmp.path().join("index.tsv");
    let log = ok(&[
        "index",
        "--root",
        p(&out.join("img")),
        "--seg",
        p(&out.join("seg")),
        "--check-maps",
        "--out",
        p(&idx),
    ]);
    assert!(log.contains("all-background maps left out"), "{log}");
    let index = mpm::data::index::Index::read(&idx).unwrap();
    assert_eq!(index.classes.len(), 5);
    let idx2 = tmp.path().join("val_index.tsv");
    ok(&[
        "index",
        "--root",
        p(&out.join("img")),
        "--list",
        p(&out.join("val.txt")),
        "--seg",
        p(&out.join("seg")),
        "--per-class",
        "1",
        "--seed",
        "4",
        "--out",
        p(&idx2),
    ]);
    let sub = mpm::data::index::Index::read(&idx2).unwrap();
    assert_eq!(sub.samples.len(), 5);

    let png = tmp.path().join("show/ann.png");
    ok(&[
        "show",
        "--json-dir",
        p(&src.join("json")),
        "--including",
        p(&src.join("including")),
        "--images",
        p(&src.join("images")),
        "--out",
        p(&png),
        "--per-class",
        "2",
    ]);
    assert!(image::open(&png).is_ok());
    let png2 = tmp.path().join("show/maps.png");
    ok(&[
        "show",
        "--seg",
        p(&out.join("seg")),
        "--parts",
        p(&out.join("parts.tsv")),
        "--images",
        p(&out.join("img")),
        "--out",
        p(&png2),
    ]);
    assert!(image::open(&png2).is_ok());
}

#[test]
fn errors_exit_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    // Unknown flag.
    assert!(!mpm_data(&["synth", "--out", p(tmp.path()), "--bogus"])
        .status
        .success());
    // Nothing usable: a class file that is not JSON.
    std::fs::create_dir_all(tmp.path().join("json")).unwrap();
    std::fs::write(tmp.path().join("json/n1.json"), "{").unwrap();
    let o = mpm_data(&[
        "labels",
        "--json-dir",
        p(&tmp.path().join("json")),
        "--images",
        p(tmp.path()),
        "--out",
        p(&tmp.path().join("out")),
        "--quiet",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("n1.json"));
    // Missing json dir.
    let o = mpm_data(&["stats", "--json-dir", p(&tmp.path().join("nope"))]);
    assert!(!o.status.success());
}
