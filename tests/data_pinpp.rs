//! The PartImageNet++ release format (issue 13 item 6) on a committed fixture in exactly that
//! format (tests/fixtures/pinpp, written by scripts/make_pinpp_fixtures.py with its expected
//! label maps computed independently): `json/<wnid>.json` with `<wnid>/<file>.JPEG` names and
//! 1-based category ids, `including/<wnid>.txt` `child:parent` lines, `discarded_data.json`
//! in its three known shapes, the authors' training layout (img/, seg/, whether_pseudo/), and
//! a clear error naming the file and the field for each deviation.

use std::path::{Path, PathBuf};

use mpm::data::imageio::read_label_map;
use mpm::data::labels::{run_labels, ImageMode, LabelsConfig, LabelsSummary};
use serde_json::{json, Value};

const TENCH: &str = "n01440764";
const GOLDFISH: &str = "n01443537";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pinpp")
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// The fixture release in `dir/release` and, in `dir/train`, an IN-1K train folder holding a
/// JPEG of the listed size for every image the class files name.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let rel = dir.join("release");
    copy_dir(&fixture().join("release"), &rel);
    let train = dir.join("train");
    for w in [TENCH, GOLDFISH] {
        let doc: Value = serde_json::from_str(
            &std::fs::read_to_string(rel.join(format!("json/{w}.json"))).unwrap(),
        )
        .unwrap();
        for im in doc["images"].as_array().unwrap() {
            let f = train.join(im["file_name"].as_str().unwrap());
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            image::RgbImage::from_pixel(
                im["width"].as_u64().unwrap() as u32,
                im["height"].as_u64().unwrap() as u32,
                image::Rgb([40, 90, 140]),
            )
            .save(f)
            .unwrap();
        }
    }
    (rel, train)
}

fn cfg(rel: &Path, train: &Path, out: &Path) -> LabelsConfig {
    LabelsConfig {
        json_dir: rel.join("json"),
        including: Some(rel.join("including")),
        discarded: Some(rel.join("discarded_data.json")),
        category_names: Some(rel.join("category_name.json")),
        images: train.to_path_buf(),
        out: out.to_path_buf(),
        image_mode: ImageMode::Symlink,
        val_fraction: 0.0,
        split_seed: 0,
        progress: false,
    }
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
        .unwrap()
}

fn check_maps(out: &Path) {
    let e = expected();
    let maps = e["maps"].as_object().unwrap();
    assert_eq!(maps.len(), 3);
    for (key, m) in maps {
        let got = read_label_map(&out.join("seg").join(format!("{key}.png"))).unwrap();
        assert_eq!(
            (got.h as u64, got.w as u64),
            (m["h"].as_u64().unwrap(), m["w"].as_u64().unwrap())
        );
        let want: Vec<u16> = m["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u16)
            .collect();
        assert_eq!(got.data, want, "{key}");
    }
    for d in e["discarded"].as_array().unwrap() {
        assert!(!out
            .join("seg")
            .join(format!("{}.png", d.as_str().unwrap()))
            .exists());
    }
}

#[test]
fn release_fixture_gives_the_expected_maps_and_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let (rel, train) = setup(tmp.path());
    let out = tmp.path().join("out");
    let r = run_labels(&cfg(&rel, &train, &out)).unwrap();
    assert_eq!((r.classes, r.parts, r.images_in_json), (2, 8, 4));
    assert_eq!((r.written, r.blank_maps, r.discarded), (3, 1, 1));
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    assert_eq!(r.discarded_format, "a list of 1 image names");
    assert_eq!(r.discarded_unmatched, 0);
    // Global ids equal the full release's (the two first wnids, 4 parts each), and the run
    // says that the other 998 classes are missing.
    assert_eq!(
        std::fs::read_to_string(out.join("parts.tsv")).unwrap(),
        expected()["parts_tsv"].as_str().unwrap()
    );
    assert!(r.warnings.iter().any(|w| w
        .reason
        .contains("2 of the release's 1000 classes are present")));
    check_maps(&out);
    // The authors' training layout: img/<wnid>/<file> (symlinks), whether_pseudo 0.
    let link = out.join(format!("img/{TENCH}/n01440764_10026.JPEG"));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!out
        .join(format!("img/{TENCH}/n01440764_10027.JPEG"))
        .exists());
    assert_eq!(
        std::fs::read_to_string(out.join(format!("whether_pseudo/{TENCH}.txt"))).unwrap(),
        "n01440764_10026.JPEG 0\nn01440764_10029.JPEG 0\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join(format!("whether_pseudo/{GOLDFISH}.txt"))).unwrap(),
        "n01443537_1021.JPEG 0\n"
    );
    // --copy: real files; a pseudo-label entry already in the flag file is kept.
    let out2 = tmp.path().join("out2");
    std::fs::create_dir_all(out2.join("whether_pseudo")).unwrap();
    std::fs::write(
        out2.join(format!("whether_pseudo/{GOLDFISH}.txt")),
        "n01443537_77.JPEG 1\nn01443537_1021.JPEG 1\n",
    )
    .unwrap();
    run_labels(&LabelsConfig {
        image_mode: ImageMode::Copy,
        ..cfg(&rel, &train, &out2)
    })
    .unwrap();
    let copied = out2.join(format!("img/{GOLDFISH}/n01443537_1021.JPEG"));
    assert!(!std::fs::symlink_metadata(&copied)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(out2.join(format!("whether_pseudo/{GOLDFISH}.txt"))).unwrap(),
        "n01443537_1021.JPEG 0\nn01443537_77.JPEG 1\n"
    );
}

#[test]
fn discarded_shapes_are_understood_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let (rel, train) = setup(tmp.path());
    let shapes = [
        (
            json!([{"file_name": "n01440764/n01440764_10027.JPEG", "id": 2}]),
            "a list of 1 objects with 'file_name'",
        ),
        (
            json!({TENCH: ["n01440764_10027.JPEG"], GOLDFISH: []}),
            "a map of 2 wnids -> 1 image names",
        ),
        (
            json!(["n01440764/n01440764_10027"]),
            "a list of 1 image names",
        ),
    ];
    for (i, (v, what)) in shapes.into_iter().enumerate() {
        std::fs::write(rel.join("discarded_data.json"), v.to_string()).unwrap();
        let out = tmp.path().join(format!("out{i}"));
        let r = run_labels(&cfg(&rel, &train, &out)).unwrap();
        assert_eq!(r.discarded_format, what);
        assert_eq!((r.written, r.discarded, r.discarded_unmatched), (3, 1, 0));
        check_maps(&out);
    }
    // Entries that name no image are counted and reported.
    std::fs::write(rel.join("discarded_data.json"), r#"["n01440764_1.jpg"]"#).unwrap();
    let r = run_labels(&cfg(&rel, &train, &tmp.path().join("outx"))).unwrap();
    assert_eq!((r.discarded, r.discarded_unmatched), (0, 1));
    assert!(r
        .warnings
        .iter()
        .any(|w| w.reason.contains("1 of its 1 entries name no image")));
    // Any other shape is an error naming the file.
    std::fs::write(rel.join("discarded_data.json"), r#"{"images": 3}"#).unwrap();
    let e = run_labels(&cfg(&rel, &train, &tmp.path().join("outy")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("discarded_data.json") && e.contains("key \"images\" is not a wnid"),
        "{e}"
    );
}

fn edit_json(p: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, v.to_string()).unwrap();
}

fn skip_reasons(r: &LabelsSummary) -> Vec<String> {
    r.skipped.iter().map(|s| s.to_string()).collect()
}

/// Each deviation from the release format is reported with the file and the field.
#[test]
fn deviations_name_the_file_and_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, f: &dyn Fn(&Path)| -> LabelsSummary {
        let d = tmp.path().join(name);
        let (rel, train) = setup(&d);
        f(&rel);
        run_labels(&cfg(&rel, &train, &d.join("out"))).unwrap()
    };
    let has = |r: &LabelsSummary, file: &str, what: &str| {
        let s = skip_reasons(r);
        assert!(
            s.iter().any(|x| x.contains(file) && x.contains(what)),
            "no skip with {file} / {what}: {s:#?}"
        );
    };
    // A category id of 0 (ids are 1-based): the class file is left out.
    let r = run("cat0", &|rel| {
        edit_json(&rel.join(format!("json/{GOLDFISH}.json")), |v| {
            v["categories"][0]["id"] = json!(0)
        })
    });
    has(
        &r,
        "n01443537.json",
        "categories[0].id = 0: category ids are 1-based",
    );
    assert_eq!(r.written, 2);
    // A file name under another class's wnid folder: that image is left out.
    let r = run("fname", &|rel| {
        edit_json(&rel.join(format!("json/{GOLDFISH}.json")), |v| {
            v["images"][0]["file_name"] = json!("n01440764/n01443537_1021.JPEG")
        })
    });
    has(
        &r,
        "n01443537.json",
        "images[0].file_name = \"n01440764/n01443537_1021.JPEG\": folder 'n01440764' is not this class's wnid",
    );
    assert_eq!(r.written, 2);
    // A bare file name is the same image (contract C: `IMG_ROOT/<wnid>/<file_name>`).
    let r = run("bare", &|rel| {
        edit_json(&rel.join(format!("json/{GOLDFISH}.json")), |v| {
            v["images"][0]["file_name"] = json!("n01443537_1021.JPEG")
        })
    });
    assert_eq!(r.written, 3);
    // An annotation without a segmentation: its image is left out.
    let r = run("seg", &|rel| {
        edit_json(&rel.join(format!("json/{TENCH}.json")), |v| {
            v["annotations"][2]
                .as_object_mut()
                .unwrap()
                .remove("segmentation");
        })
    });
    has(
        &r,
        "n01440764.json",
        "annotations[2].segmentation is missing",
    );
    // No 'annotations' list: the class file is left out.
    let r = run("anns", &|rel| {
        edit_json(&rel.join(format!("json/{TENCH}.json")), |v| {
            v.as_object_mut().unwrap().remove("annotations");
        })
    });
    has(&r, "n01440764.json", "field 'annotations' is missing");
    assert_eq!(r.written, 1);
    // including/: a malformed line, an unknown part name, and the old JSON form.
    let r = run("inc_line", &|rel| {
        std::fs::write(
            rel.join(format!("including/{TENCH}.txt")),
            "eye:head\neye head\n",
        )
        .unwrap()
    });
    has(&r, "n01440764.txt", "line 2: expected 'child:parent'");
    assert_eq!(r.written, 1);
    let r = run("inc_name", &|rel| {
        std::fs::write(rel.join(format!("including/{TENCH}.txt")), "nose:head\n").unwrap()
    });
    has(
        &r,
        "n01440764.txt",
        "line 1: 'nose' is not a part of this class",
    );
    let r = run("inc_json", &|rel| {
        std::fs::remove_file(rel.join(format!("including/{TENCH}.txt"))).unwrap();
        std::fs::write(
            rel.join(format!("including/{TENCH}.json")),
            r#"{"eye": "head"}"#,
        )
        .unwrap()
    });
    has(
        &r,
        "n01440764.json",
        "inclusion relations are read from n01440764.txt",
    );
}
