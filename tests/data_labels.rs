//! `synth` -> `labels` round trip (contract C): the label maps `labels` paints from the JSON
//! equal the maps `synth` painted into the images (inner parts listed before their containers in
//! the JSON, occluded parts as compressed RLE, crowd parts as uncompressed RLE), known-bad items
//! are skipped and reported, and the split / parts files have the documented form.

use std::collections::HashMap;

use mpm::data::imageio::read_label_map;
use mpm::data::labels::{run_labels, ImageMode, LabelsConfig};
use mpm::data::pin_json::PartTable;
use mpm::data::synth::{run_synth, wnid, SynthConfig};

fn synth(dir: &std::path::Path, faults: bool) -> mpm::data::synth::SynthSummary {
    run_synth(&SynthConfig {
        out: dir.to_path_buf(),
        classes: 6,
        images_per_class: 20,
        seed: 7,
        faults,
        keep_truth: true,
        ..Default::default()
    })
    .unwrap()
}

fn labels_cfg(src: &std::path::Path, out: &std::path::Path) -> LabelsConfig {
    LabelsConfig {
        json_dir: src.join("json"),
        including: Some(src.join("including")),
        discarded: Some(src.join("discarded_data.json")),
        category_names: Some(src.join("category_name.json")),
        images: src.join("images"),
        out: out.to_path_buf(),
        image_mode: ImageMode::Symlink,
        val_fraction: 0.1,
        split_seed: 0,
        progress: false,
    }
}

#[test]
fn synth_roundtrips_through_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    let s = synth(&src, true);
    // A temp file left by a killed run (pid 0x7fff_fff0 never runs): removed at start.
    let stale = out
        .join("seg")
        .join(wnid(1))
        .join(".x.png.tmp.2147483632.4");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, b"half").unwrap();
    let r = run_labels(&labels_cfg(&src, &out)).unwrap();
    assert_eq!(r.classes, 6);
    assert_eq!(r.stale_temps_removed, 1);
    assert!(!stale.exists());
    // Synced once at the end: each class folder of seg/ and img/, the two, and OUT.
    let class_dirs = |sub: &str| std::fs::read_dir(out.join(sub)).unwrap().count();
    assert_eq!(r.dirs_synced, class_dirs("seg") + class_dirs("img") + 2 + 1);
    // 5 faulty images (one filed under another class's wnid folder) + the broken class file.
    assert_eq!(r.skipped.len(), s.faulty_images + 1, "{:#?}", r.skipped);
    assert!(r.skipped.iter().any(|k| k
        .reason
        .contains("file_name = \"n99999999/n90000000_other_wnid_folder.JPEG\"")));
    assert_eq!(
        r.discarded_format,
        format!("a list of {} image names", s.discarded.len())
    );
    // The authors' layout: a whether_pseudo flag file per class, 0 for every written image.
    let flags =
        std::fs::read_to_string(out.join(format!("whether_pseudo/{}.txt", wnid(1)))).unwrap();
    assert!(!flags.is_empty() && flags.lines().all(|l| l.ends_with(" 0")));
    assert_eq!(r.discarded, s.discarded.len());
    assert_eq!(r.written, s.truth.len() + 1); // + the "outside" fault image (blank map)
    assert!(r
        .warnings
        .iter()
        .any(|w| w.reason.contains("paint no pixel")));
    let mut exact = 0;
    for (w, file, truth) in &s.truth {
        let stem = file.trim_end_matches(".JPEG");
        let got = read_label_map(&out.join("seg").join(w).join(format!("{stem}.png"))).unwrap();
        assert_eq!((got.h, got.w), (truth.h, truth.w), "{file}");
        assert!(
            got == *truth,
            "{file}: label map differs from the painted truth"
        );
        exact += 1;
        assert!(out.join("img").join(w).join(file).exists());
    }
    assert!(exact > 100);
    // Every discarded image has no label map.
    for f in &s.discarded {
        let w = &f[..9];
        let stem = f.trim_end_matches(".JPEG");
        assert!(!out.join("seg").join(w).join(format!("{stem}.png")).exists());
    }
    // parts.tsv: consecutive ids from 1, grouped by wnid in sorted order.
    let t = PartTable::from_tsv(&out.join("parts.tsv")).unwrap();
    assert_eq!(t.wnids, (0..6).map(wnid).collect::<Vec<_>>());
    assert_eq!(t.first_id[0], 1);
    assert_eq!(r.parts, t.num_parts());
    // Split: per class 10% (rounded) to val, disjoint, lines "<wnid>/<file> <class index>".
    let read = |n: &str| std::fs::read_to_string(out.join(n)).unwrap();
    let (train, val) = (read("train.txt"), read("val.txt"));
    let mut per_class: HashMap<String, (usize, usize)> = HashMap::new();
    for (txt, is_val) in [(&train, false), (&val, true)] {
        for line in txt.lines() {
            let (path, idx) = line.split_once(' ').unwrap();
            let w = path.split('/').next().unwrap();
            assert_eq!(
                idx.parse::<usize>().unwrap(),
                t.wnids.iter().position(|x| x == w).unwrap()
            );
            let e = per_class.entry(w.to_string()).or_default();
            if is_val {
                e.1 += 1
            } else {
                e.0 += 1
            }
        }
    }
    for (w, (tr, va)) in per_class {
        assert_eq!(va, ((tr + va) as f64 * 0.1).round() as usize, "{w}");
    }
    assert!(train.lines().all(|l| !val.contains(l)));
}

#[test]
fn synth_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    synth(&a, false);
    synth(&b, false);
    for w in (0..6).map(wnid) {
        let f = format!("json/{w}.json");
        assert_eq!(
            std::fs::read(a.join(&f)).unwrap(),
            std::fs::read(b.join(&f)).unwrap()
        );
        let img = format!("images/{w}/{w}_1003.JPEG");
        assert_eq!(
            std::fs::read(a.join(&img)).unwrap(),
            std::fs::read(b.join(&img)).unwrap()
        );
    }
}

#[test]
fn nothing_usable_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("json")).unwrap();
    std::fs::write(src.join("json/n1.json"), "not json").unwrap();
    let cfg = LabelsConfig {
        including: None,
        discarded: None,
        category_names: None,
        ..labels_cfg(&src, &tmp.path().join("out"))
    };
    assert!(run_labels(&cfg).is_err());
}

/// Contract C on a hand-made two-class set, expectations worked out by hand:
/// class n00000001 (ids 7, 3 listed out of order -> ranks: 3 -> 0, 7 -> 1; global ids 1, 2) and
/// class n00000002 (ids 50, 10, 20 -> global 3 (id 10), 4 (id 20), 5 (id 50)).
/// Image a1 (8x6): "head" (id 7) square, "horn" (id 3, inside head) listed first -> horn painted
/// over head. Image b1: two overlapping boxes, later annotation wins; third part as compressed RLE.
#[test]
fn contract_c_hand_checked() {
    use serde_json::json;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for sub in ["json", "including", "images/n00000001", "images/n00000002"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let jpg = |w: u32, h: u32, p: &str| {
        image::RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]))
            .save(d.join(p))
            .unwrap()
    };
    jpg(8, 6, "images/n00000001/a1.JPEG");
    jpg(8, 6, "images/n00000001/a2.JPEG");
    jpg(5, 4, "images/n00000002/b1.JPEG");
    // Square x in [1,5), y in [1,5): pycocotools covers pixels 1..=4 (see rasterise tests).
    let head = json!([[1, 1, 5, 1, 5, 5, 1, 5]]);
    let horn = json!([[2, 2, 4, 2, 4, 4, 2, 4]]);
    std::fs::write(
        d.join("json/n00000001.json"),
        json!({"categories": [{"id": 7, "name": "head"}, {"id": 3, "name": "horn"}],
               "images": [{"id": 1, "file_name": "n00000001/a1.JPEG", "height": 6, "width": 8},
                          {"id": 2, "file_name": "n00000001/a2.JPEG", "height": 6, "width": 8}],
               "annotations": [
                   {"image_id": 1, "category_id": 3, "segmentation": horn, "iscrowd": 0},
                   {"image_id": 1, "category_id": 7, "segmentation": head, "iscrowd": 0},
                   {"image_id": 2, "category_id": 7, "segmentation": head, "iscrowd": 0}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(d.join("including/n00000001.txt"), "horn:head\n").unwrap();
    // b1: 5 wide, 4 high. Box A x 0..3, box B x 2..5 (both all rows); B later -> wins on x = 2.
    // Part id 20 as compressed RLE covering column 4 only: column-major runs [16, 4].
    let rle = mpm::data::rasterise::rle_to_string(&mpm::data::rasterise::Rle {
        h: 4,
        w: 5,
        counts: vec![16, 4],
    });
    std::fs::write(
        d.join("json/n00000002.json"),
        json!({"categories": [{"id": 50, "name": "c"}, {"id": 10, "name": "a"},
                              {"id": 20, "name": "b"}],
               "images": [{"id": 9, "file_name": "n00000002/b1.JPEG", "height": 4, "width": 5}],
               "annotations": [
                   {"image_id": 9, "category_id": 10, "segmentation": [[0, 0, 3, 0, 3, 4, 0, 4]]},
                   {"image_id": 9, "category_id": 50, "segmentation": [[2, 0, 5, 0, 5, 4, 2, 4]]},
                   {"image_id": 9, "category_id": 20,
                    "segmentation": {"size": [4, 5], "counts": rle}, "iscrowd": 1}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(d.join("discarded.json"), r#"{"n00000001": ["a2.JPEG"]}"#).unwrap();
    let out = d.join("out");
    let r = run_labels(&LabelsConfig {
        json_dir: d.join("json"),
        including: Some(d.join("including")),
        discarded: Some(d.join("discarded.json")),
        category_names: None,
        images: d.join("images"),
        out: out.clone(),
        image_mode: ImageMode::None,
        val_fraction: 0.0,
        split_seed: 0,
        progress: false,
    })
    .unwrap();
    assert_eq!((r.written, r.discarded, r.skipped.len()), (2, 1, 0));
    assert_eq!(
        std::fs::read_to_string(out.join("parts.tsv")).unwrap(),
        "1\tn00000001\thorn\n2\tn00000001\thead\n3\tn00000002\ta\n4\tn00000002\tb\n5\tn00000002\tc\n"
    );
    let a1 = read_label_map(&out.join("seg/n00000001/a1.png")).unwrap();
    #[rustfmt::skip]
    let want_a1: Vec<u16> = vec![
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 2, 2, 2, 2, 0, 0, 0,
        0, 2, 1, 1, 2, 0, 0, 0,
        0, 2, 1, 1, 2, 0, 0, 0,
        0, 2, 2, 2, 2, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0,
    ];
    // pycocotools: the square (1,1)-(5,5) covers x, y in 1..=4; the horn (2,2)-(4,4) 2..=3.
    assert_eq!(a1.data, want_a1);
    let b1 = read_label_map(&out.join("seg/n00000002/b1.png")).unwrap();
    let row: Vec<u16> = vec![3, 3, 5, 5, 4];
    assert_eq!(b1.data, row.repeat(4));
    assert!(!out.join("seg/n00000001/a2.png").exists());
}
