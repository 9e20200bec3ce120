//! Rasterisation vs pycocotools 2.0.11 (`COCO.annToMask`), bit-exact.
//!
//! Fixture `tests/fixtures/data/coco_masks.json` is written by `scripts/make_data_fixtures.py`
//! (pycocotools + numpy): hand-made tricky cases (fractional, negative, outside, self-intersecting,
//! multi-ring, duplicate vertices, odd-length rings, RLEs) and 120 random polygons. Expected masks
//! are stored as column-major run lengths computed with numpy, plus pycocotools' compressed string.

use mpm::data::rasterise::{decode, encode, rle_from_string, rle_to_string, Segmentation};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/data/coco_masks.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

#[test]
fn ann_to_mask_matches_pycocotools() {
    let mut checked = 0;
    for c in cases() {
        let name = c["name"].as_str().unwrap();
        let (h, w) = (
            c["h"].as_u64().unwrap() as usize,
            c["w"].as_u64().unwrap() as usize,
        );
        let got = Segmentation::from_json(&c["segmentation"]).and_then(|s| s.to_mask(h, w));
        if c.get("error").is_some() {
            assert!(
                got.is_err(),
                "{name}: pycocotools fails, we returned a mask"
            );
            continue;
        }
        let m = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        let runs: Vec<u32> = c["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let r = encode(&m);
        if r.counts != runs {
            let want = decode(&mpm::data::rasterise::Rle { h, w, counts: runs }).unwrap();
            let diff: Vec<(usize, usize)> = (0..h * w)
                .filter(|&i| want.data[i] != m.data[i])
                .map(|i| (i / w, i % w))
                .take(10)
                .collect();
            panic!("{name}: mask differs from pycocotools at (y, x) {diff:?}");
        }
        assert_eq!(m.area() as u64, c["area"].as_u64().unwrap(), "{name}");
        // Our compressed string must equal pycocotools' byte for byte.
        assert_eq!(
            rle_to_string(&r),
            c["rle_string"].as_str().unwrap(),
            "{name}"
        );
        checked += 1;
    }
    assert!(checked > 120, "only {checked} cases checked");
}

#[test]
fn compressed_strings_decode_like_pycocotools() {
    for c in cases() {
        let Some(s) = c.get("rle_string").and_then(|s| s.as_str()) else {
            continue;
        };
        let (h, w) = (
            c["h"].as_u64().unwrap() as usize,
            c["w"].as_u64().unwrap() as usize,
        );
        let r = rle_from_string(s, h, w).unwrap();
        let runs: Vec<u32> = c["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(r.counts, runs, "{}", c["name"]);
    }
}
