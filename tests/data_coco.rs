//! COCO bridge to external part segmenters (issue 20): `part-ap` against pycocotools'
//! `COCOeval(iouType="segm")`, the Category Filter, `pseudo --from-coco-results` label maps,
//! `coco-export`, and bad input.
//!
//! Fixtures: `tests/fixtures/coco/`, written by `scripts/make_coco_fixtures.py` with pycocotools
//! (see that script's docstring and the fixture README): a 9-image ground truth of two classes
//! with polygons, compressed / uncompressed RLE and crowd regions across COCO's area ranges;
//! standard and extended results; label maps with probabilities; and the expected numbers.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/coco")
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn expected() -> Value {
    read_json(&fixtures().join("expected.json"))
}

fn data_bin(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mpm-data"))
        .args(args)
        .output()
        .expect("run mpm-data")
}

fn ok(o: std::process::Output) -> std::process::Output {
    assert!(
        o.status.success(),
        "mpm-data failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

const STATS: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

/// The report's 12 stats and per-category AP equal pycocotools' (the issue allows 0.1 AP =
/// 0.001; the computation is the same, so 1e-9 is asked).
fn assert_matches(report: &Value, want: &Value, what: &str) {
    let ws = want["stats"].as_array().unwrap();
    for (k, w) in STATS.iter().zip(ws) {
        let (g, w) = (report[*k].as_f64().unwrap(), w.as_f64().unwrap());
        assert!((g - w).abs() < 1e-9, "{what}: {k} = {g}, pycocotools {w}");
    }
    let per = report["per_category"].as_array().unwrap();
    for w in want["per_category"].as_array().unwrap() {
        let g = per.iter().find(|c| c["id"] == w["id"]).expect("category");
        for k in ["AP", "AP50", "AP75"] {
            let (a, b) = (g[k].as_f64().unwrap(), w[k].as_f64().unwrap());
            assert!(
                (a - b).abs() < 1e-9,
                "{what}: category {} {k} = {a}, pycocotools {b}",
                w["id"]
            );
        }
    }
}

fn part_ap(gt: &Path, extra: &[&str], out: &Path) -> Value {
    let (g, o) = (gt.to_str().unwrap(), out.to_str().unwrap());
    let mut a = vec!["part-ap", "--gt", g, "--json", o];
    a.extend_from_slice(extra);
    ok(data_bin(&a));
    read_json(out)
}

#[test]
fn part_ap_equals_pycocotools_with_and_without_category_filter() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let exp = expected();
    let gt = f.join("gt.json");
    for (case, file) in [
        ("standard", "preds.json"),
        ("extended", "preds_extended.json"),
    ] {
        let res = f.join(file);
        let r = res.to_str().unwrap();
        let plain = part_ap(&gt, &["--results", r], &dir.path().join("a.json"));
        assert_matches(&plain, &exp[case]["no_cf"], &format!("{case} without CF"));
        let cf = part_ap(
            &gt,
            &["--results", r, "--category-filter"],
            &dir.path().join("b.json"),
        );
        assert_matches(&cf, &exp[case]["cf"], &format!("{case} with CF"));
        assert_eq!(cf["form"], case);
        assert_eq!(cf["category_filter"], true);
        // The fixture is built so that the filter changes the score.
        assert_ne!(plain["AP"], cf["AP"]);
        let c = &cf["counts"];
        if case == "standard" {
            assert!(c["cf_dropped_other_class"].as_u64().unwrap() > 0, "{c}");
            assert!(c["cf_dropped_duplicate"].as_u64().unwrap() > 0, "{c}");
        } else {
            assert!(c["cf_relabelled"].as_u64().unwrap() > 0, "{c}");
        }
    }
}

/// Expands the fixture's row-major `[value, count, ...]` runs.
fn unruns(v: &Value) -> Vec<u16> {
    let a = v.as_array().unwrap();
    let mut out = Vec::new();
    for p in a.chunks(2) {
        let (val, n) = (
            p[0].as_u64().unwrap() as u16,
            p[1].as_u64().unwrap() as usize,
        );
        out.extend(std::iter::repeat_n(val, n));
    }
    out
}

fn write_map(p: &Path, h: usize, w: usize, data: Vec<u16>) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    mpm::data::imageio::write_label_map(p, &mpm::data::imageio::LabelMap { h, w, data }).unwrap();
}

#[test]
fn label_maps_scored_as_instances_equal_pycocotools() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let exp = expected();
    let lm = read_json(&fixtures().join("labelmaps.json"));
    for m in lm.as_array().unwrap() {
        let (h, w) = (
            m["height"].as_u64().unwrap() as usize,
            m["width"].as_u64().unwrap() as usize,
        );
        let file = m["file_name"].as_str().unwrap();
        let (wnid, base) = file.split_once('/').unwrap();
        let stem = base.trim_end_matches(".JPEG");
        write_map(
            &d.join("seg").join(wnid).join(format!("{stem}.png")),
            h,
            w,
            unruns(&m["labels"]),
        );
        let blocks: Vec<u16> = m["prob_blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u16)
            .collect();
        let bw = w.div_ceil(4);
        let prob = (0..h * w)
            .map(|i| blocks[(i / w / 4) * bw + (i % w) / 4])
            .collect();
        write_map(
            &d.join("prob").join(wnid).join(format!("{stem}.png")),
            h,
            w,
            prob,
        );
    }
    // The ground truth of the label-mapped images only.
    let mut gt = read_json(&fixtures().join("gt.json"));
    let keep: Vec<Value> = exp["label_maps"]["gt_images"].as_array().unwrap().clone();
    let imgs: Vec<Value> = gt["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| keep.contains(&i["id"]))
        .cloned()
        .collect();
    let anns: Vec<Value> = gt["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| keep.contains(&a["image_id"]))
        .cloned()
        .collect();
    gt["images"] = json!(imgs);
    gt["annotations"] = json!(anns);
    let gt_path = d.join("gt_lm.json");
    std::fs::write(&gt_path, gt.to_string()).unwrap();
    let (seg, prob) = (d.join("seg"), d.join("prob"));
    let args = [
        "--label-maps",
        seg.to_str().unwrap(),
        "--prob-maps",
        prob.to_str().unwrap(),
    ];
    let plain = part_ap(&gt_path, &args, &d.join("a.json"));
    assert_matches(&plain, &exp["label_maps"]["no_cf"], "label maps without CF");
    let mut with_cf = args.to_vec();
    with_cf.push("--category-filter");
    let cf = part_ap(&gt_path, &with_cf, &d.join("b.json"));
    assert_matches(&cf, &exp["label_maps"]["cf"], "label maps with CF");
    assert!(cf["counts"]["cf_dropped_other_class"].as_u64().unwrap() > 0);
    // Without probabilities every region scores 1.0; still a valid report.
    let no_prob = part_ap(&gt_path, &args[..2], &d.join("c.json"));
    assert!(no_prob["form"]
        .as_str()
        .unwrap()
        .contains("no probabilities"));
}

/// Reads `OUT/seg/<wnid>/<stem>.png` of every image with an expected map and compares.
fn check_maps(out: &Path, want: &Value, what: &str) -> usize {
    let gt = read_json(&fixtures().join("gt.json"));
    let mut n = 0;
    for im in gt["images"].as_array().unwrap() {
        let Some(runs) = want.get(im["id"].to_string()) else {
            continue;
        };
        let (wnid, base) = im["file_name"].as_str().unwrap().split_once('/').unwrap();
        let p = out
            .join("seg")
            .join(wnid)
            .join(format!("{}.png", base.trim_end_matches(".JPEG")));
        let m = mpm::data::imageio::read_label_map(&p).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(m.data, unruns(runs), "{what}: map of image {}", im["id"]);
        n += 1;
    }
    n
}

fn pseudo(results: &Path, out: &Path, extra: &[&str]) -> Value {
    let f = fixtures();
    let (gt, parts, inc) = (f.join("gt.json"), f.join("parts.tsv"), f.join("including"));
    let mut a = vec![
        "pseudo",
        "--from-coco-results",
        results.to_str().unwrap(),
        "--images-json",
        gt.to_str().unwrap(),
        "--parts",
        parts.to_str().unwrap(),
        "--including",
        inc.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    ok(data_bin(&a));
    read_json(&out.join("pseudo_coco_report.json"))["summary"].clone()
}

#[test]
fn pseudo_from_coco_results_paints_the_filtered_masks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = fixtures();
    let exp = expected();
    let want_std = &exp["paint"]["standard_cf"];
    let n_images = want_std.as_object().unwrap().len();
    let s = pseudo(&f.join("preds.json"), &d.join("std"), &[]);
    assert_eq!(s["written"].as_u64().unwrap() as usize, n_images);
    assert_eq!(check_maps(&d.join("std"), want_std, "standard"), n_images);
    let s = pseudo(&f.join("preds_extended.json"), &d.join("ext"), &[]);
    assert!(s["counts"]["cf_relabelled"].as_u64().unwrap() > 0);
    check_maps(&d.join("ext"), &exp["paint"]["extended_cf"], "extended");
    // Flag 1 for every written image.
    let flags = std::fs::read_to_string(d.join("std/whether_pseudo/n01440764.txt")).unwrap();
    assert!(
        !flags.is_empty() && flags.lines().all(|l| l.ends_with(" 1")),
        "{flags}"
    );

    // Records not grouped by image (round-robin over the images, each image's records in
    // their order, so equal-score ties resolve as before): the same maps.
    let recs = read_json(&f.join("preds.json"));
    let mut by_image: Vec<(Value, Vec<Value>)> = Vec::new();
    for r in recs.as_array().unwrap() {
        match by_image.iter_mut().find(|(id, _)| *id == r["image_id"]) {
            Some((_, v)) => v.push(r.clone()),
            None => by_image.push((r["image_id"].clone(), vec![r.clone()])),
        }
    }
    let mut rev = Vec::new();
    for i in 0.. {
        let row: Vec<Value> = by_image
            .iter()
            .filter_map(|(_, v)| v.get(i).cloned())
            .collect();
        if row.is_empty() {
            break;
        }
        rev.extend(row);
    }
    let p = d.join("reversed.json");
    std::fs::write(&p, Value::Array(rev).to_string()).unwrap();
    let s = pseudo(&p, &d.join("rev"), &[]);
    assert_eq!(s["written"].as_u64().unwrap() as usize, n_images);
    check_maps(&d.join("rev"), want_std, "interleaved records");
    assert!(s["max_open_images"].as_u64().unwrap() > 1);

    // Resumable: a rerun skips done images; a lost map is repainted; annotated images are kept.
    let s = pseudo(&f.join("preds.json"), &d.join("std"), &[]);
    assert_eq!(s["written"], 0);
    assert_eq!(s["already_done"].as_u64().unwrap() as usize, n_images);
    let gt = read_json(&f.join("gt.json"));
    let first = &gt["images"][0];
    let (wnid, base) = first["file_name"]
        .as_str()
        .unwrap()
        .split_once('/')
        .unwrap();
    let map0 = d
        .join("std/seg")
        .join(wnid)
        .join(format!("{}.png", base.trim_end_matches(".JPEG")));
    std::fs::remove_file(&map0).unwrap();
    let s = pseudo(&f.join("preds.json"), &d.join("std"), &[]);
    assert_eq!(s["written"], 1);
    check_maps(&d.join("std"), want_std, "after resume");
    let flags_path = d.join("std/whether_pseudo").join(format!("{wnid}.txt"));
    let flags = std::fs::read_to_string(&flags_path).unwrap();
    std::fs::write(
        &flags_path,
        flags.replace(&format!("{base} 1"), &format!("{base} 0")),
    )
    .unwrap();
    std::fs::write(&map0, b"annotated").unwrap();
    let s = pseudo(&f.join("preds.json"), &d.join("std"), &["--overwrite"]);
    assert_eq!(s["kept_annotated"], 1);
    assert_eq!(s["written"].as_u64().unwrap() as usize, n_images - 1);
    assert_eq!(std::fs::read(&map0).unwrap(), b"annotated");
}

/// The maps' folders are synced once at the end (counted in the report), temp files of a
/// killed run are removed at start, and a map that cannot be written stops the run with its
/// error (it was counted as a skipped image, with exit status 0).
#[test]
fn pseudo_syncs_its_folders_and_stops_on_a_failed_write() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let f = fixtures();
    let gt = read_json(&f.join("gt.json"));
    let (wnid, base) = gt["images"][0]["file_name"]
        .as_str()
        .unwrap()
        .split_once('/')
        .unwrap();
    let stale = out.join("seg").join(wnid).join(".x.png.tmp.2147483632.9");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, b"half").unwrap();
    let s = pseudo(&f.join("preds.json"), &out, &[]);
    assert_eq!(s["stale_temps_removed"], 1);
    assert!(!stale.exists());
    // seg/<wnid> of each class, seg/ and the output folder.
    let classes = std::fs::read_dir(out.join("seg")).unwrap().count();
    assert_eq!(s["dirs_synced"].as_u64().unwrap() as usize, classes + 2);

    // Flag 1 and --overwrite repaint the map, but its path is taken by a non-empty folder.
    let stem = base.trim_end_matches(".JPEG");
    let map0 = out.join("seg").join(wnid).join(format!("{stem}.png"));
    std::fs::remove_file(&map0).unwrap();
    std::fs::create_dir_all(map0.join("x")).unwrap();
    let (preds, parts) = (f.join("preds.json"), f.join("parts.tsv"));
    let o = data_bin(&[
        "pseudo",
        "--from-coco-results",
        preds.to_str().unwrap(),
        "--images-json",
        f.join("gt.json").to_str().unwrap(),
        "--parts",
        parts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--overwrite",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(matches!(o.status.code(), Some(1) | Some(2)), "{e}");
    assert!(
        e.contains("cannot write an output") && e.contains(&format!("{stem}.png")),
        "{e}"
    );
}

#[test]
fn bad_results_are_counted_and_other_numberings_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = fixtures();
    let gt = f.join("gt.json");
    let good: Vec<Value> = read_json(&f.join("preds.json")).as_array().unwrap().clone();
    let mut recs = good.clone();
    let seg = json!({"size": [48, 64], "counts": [10, 5, 3057]});
    recs.push(json!({"image_id": 999, "category_id": 1, "score": 0.9, "segmentation": seg}));
    recs.push(json!({"image_id": 10, "category_id": 1, "score": 0.9,
                     "segmentation": {"size": [48, 64], "counts": [10, 5, 7]}}));
    recs.push(json!({"image_id": 10, "category_id": 1, "score": 0.9,
                     "segmentation": {"size": [48, 64], "counts": "\u{7f}bad"}}));
    recs.push(json!({"image_id": 10, "category_id": 1, "segmentation": seg}));
    recs.push(json!({"image_id": 10, "category_id": 1, "score": 0.9,
                     "segmentation": {"size": [40, 64], "counts": [2560]}}));
    recs.push(json!({"image_id": 10, "category_id": 7, "score": 0.9, "segmentation": seg}));
    recs.push(json!("not a detection"));
    let p = d.join("bad.json");
    std::fs::write(&p, Value::Array(recs).to_string()).unwrap();
    let r = part_ap(&gt, &["--results", p.to_str().unwrap()], &d.join("r.json"));
    let c = &r["counts"];
    assert_eq!(c["records"].as_u64().unwrap() as usize, good.len() + 7);
    assert_eq!(c["unknown_image"], 1);
    assert_eq!(c["malformed"], 4, "{c}");
    assert_eq!(c["size_mismatch"], 1);
    assert_eq!(c["out_of_range_category"], 1);
    assert!(!c["examples"].as_array().unwrap().is_empty());
    // The unusable records change nothing but one false positive of another size (kept with
    // IoU -1, as pycocotools keeps it): AP stays a number.
    assert!(r["AP"].as_f64().unwrap() > 0.0);

    // Empty predictions: AP 0, no crash.
    let e = d.join("empty.json");
    std::fs::write(&e, "[]").unwrap();
    let r = part_ap(&gt, &["--results", e.to_str().unwrap()], &d.join("e.json"));
    assert_eq!(r["AP"], 0.0);
    assert_eq!(r["counts"]["records"], 0);

    // 0-based label indices and a foreign numbering: clear errors, nothing written.
    for (name, shift) in [("zero_based.json", -1i64), ("foreign.json", 1000)] {
        let recs: Vec<Value> = good
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r["category_id"] = json!(r["category_id"].as_i64().unwrap() + shift);
                r
            })
            .collect();
        let p = d.join(name);
        std::fs::write(&p, Value::Array(recs).to_string()).unwrap();
        let o = data_bin(&[
            "part-ap",
            "--gt",
            gt.to_str().unwrap(),
            "--results",
            p.to_str().unwrap(),
            "--json",
            d.join("x.json").to_str().unwrap(),
        ]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("another category numbering"), "{err}");
        assert!(!d.join("x.json").exists());
        let out = d.join(format!("pseudo_{name}"));
        let o = data_bin(&[
            "pseudo",
            "--from-coco-results",
            p.to_str().unwrap(),
            "--images-json",
            gt.to_str().unwrap(),
            "--parts",
            f.join("parts.tsv").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("another category numbering"));
        assert!(!out.join("seg").exists());
    }
    // Not a results list at all.
    let o = data_bin(&[
        "part-ap",
        "--gt",
        gt.to_str().unwrap(),
        "--results",
        gt.to_str().unwrap(),
        "--json",
        d.join("y.json").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a COCO results file"));
}

#[test]
fn coco_export_keeps_masks_and_matches_pycocotools_areas() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rel = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pinpp/release");
    let out = d.join("coco");
    ok(data_bin(&[
        "coco-export",
        "--json-dir",
        rel.join("json").to_str().unwrap(),
        "--discarded",
        rel.join("discarded_data.json").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--val-fraction",
        "0.5",
        "--quiet",
    ]));
    let train = read_json(&out.join("train.json"));
    let val = read_json(&out.join("val.json"));
    // Per class round(n * 0.5) in val: 2 images -> 1, 1 image -> 1 (round half away from 0).
    assert_eq!(train["images"].as_array().unwrap().len(), 1);
    assert_eq!(val["images"].as_array().unwrap().len(), 2);
    let cats = train["categories"].as_array().unwrap();
    let tsv = std::fs::read_to_string(out.join("parts.tsv")).unwrap();
    assert_eq!(cats.len(), 8);
    for (c, line) in cats.iter().zip(tsv.lines()) {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(c["id"].to_string(), f[0]);
        assert_eq!(c["name"], format!("{}/{}", f[1], f[2]));
        assert_eq!(c["supercategory"], f[1]);
    }
    assert_eq!(val["categories"], train["categories"]);
    let exp = expected();
    let mut ids = std::collections::HashSet::new();
    let mut ann_ids = std::collections::HashSet::new();
    let mut seen = 0;
    for split in [&train, &val] {
        for im in split["images"].as_array().unwrap() {
            assert!(
                ids.insert(im["id"].as_i64().unwrap()),
                "image ids are global"
            );
            let want = exp["export"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["file_name"] == im["file_name"])
                .expect("exported image is in the release and not discarded");
            assert_eq!(im["wnid"], want["wnid"]);
            let anns: Vec<&Value> = split["annotations"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["image_id"] == im["id"])
                .collect();
            let w = want["annotations"].as_array().unwrap();
            assert_eq!(anns.len(), w.len());
            for (a, w) in anns.iter().zip(w) {
                assert!(ann_ids.insert(a["id"].as_i64().unwrap()));
                assert_eq!(a["category_id"], w["category_id"]);
                assert_eq!(a["area"].as_f64(), w["area"].as_f64());
                assert_eq!(a["bbox"], w["bbox"]);
                assert_eq!(a["iscrowd"], w["iscrowd"]);
                assert!(
                    a["segmentation"].is_array()
                        || a["segmentation"]["counts"].is_string()
                        || a["segmentation"]["counts"].is_array()
                );
            }
            seen += 1;
        }
    }
    assert_eq!(seen, exp["export"].as_array().unwrap().len());
    // The export is a ground truth part-ap reads: its own masks as results score AP 1.
    let res: Vec<Value> = val["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["iscrowd"] == 0)
        .map(|a| {
            json!({"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
                        "segmentation": a["segmentation"]})
        })
        .collect();
    let p = d.join("self.json");
    std::fs::write(&p, Value::Array(res).to_string()).unwrap();
    let r = part_ap(
        &out.join("val.json"),
        &["--results", p.to_str().unwrap(), "--category-filter"],
        &d.join("s.json"),
    );
    // 1 / (1 + eps): pycocotools' precision carries np.spacing(1) in its denominator.
    assert!(
        (r["AP"].as_f64().unwrap() - 1.0).abs() < 1e-12,
        "{}",
        r["AP"]
    );
}
