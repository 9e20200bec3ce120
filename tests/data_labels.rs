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
    let r = run_labels(&labels_cfg(&src, &out)).unwrap();
    assert_eq!(r.classes, 6);
    // 4 faulty images + the broken class file.
    assert_eq!(r.skipped.len(), s.faulty_images + 1, "{:#?}", r.skipped);
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
