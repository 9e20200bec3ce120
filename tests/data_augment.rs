//! Resampling vs Pillow 13 (`Image.resize(size, BICUBIC | NEAREST, box=crop)`, what
//! torchvision's RandomResizedCrop / Resize do on PIL images). Fixture
//! `tests/fixtures/data/resize.json` from `scripts/make_data_fixtures.py`: a 37x29 RGB image and
//! a 16-bit label map, 6 crop boxes / output sizes (up- and down-sampling). Nearest must be
//! exact; bicubic within 1 grey level (measured: >= 99.3% of values exact, the rest 1 apart:
//! Pillow and fast_image_resize round the same Catmull-Rom coefficients to different fixed-point
//! precisions).

use mpm::data::augment::{resize_bicubic, resize_nearest, CropBox};
use mpm::data::imageio::LabelMap;
use serde_json::Value;

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn resampling_matches_pillow() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/data/resize.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (h, w) = (
        v["h"].as_u64().unwrap() as usize,
        v["w"].as_u64().unwrap() as usize,
    );
    let rgb = image::RgbImage::from_raw(
        w as u32,
        h as u32,
        ints(&v["rgb"]).into_iter().map(|x| x as u8).collect(),
    )
    .unwrap();
    let lab = LabelMap {
        h,
        w,
        data: ints(&v["label"]).into_iter().map(|x| x as u16).collect(),
    };
    for c in v["cases"].as_array().unwrap() {
        let cr = ints(&c["crop"]);
        let out = ints(&c["out"]);
        let cb = CropBox {
            left: cr[0] as usize,
            top: cr[1] as usize,
            w: cr[2] as usize,
            h: cr[3] as usize,
        };
        let (ow, oh) = (out[0] as usize, out[1] as usize);
        let n = resize_nearest(&lab, cb, ow, oh);
        let want: Vec<u16> = ints(&c["nearest"]).into_iter().map(|x| x as u16).collect();
        assert_eq!(n.data, want, "nearest {cr:?} -> {out:?}");
        let b = resize_bicubic(&rgb, cb, ow, oh).unwrap();
        let want = ints(&c["bicubic"]);
        let diffs: Vec<i64> = b
            .as_raw()
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as i64 - b).abs())
            .collect();
        let max = diffs.iter().copied().max().unwrap();
        let exact = diffs.iter().filter(|&&d| d == 0).count() as f64 / diffs.len() as f64;
        eprintln!(
            "bicubic {cr:?} -> {out:?}: max diff {max}, {:.1}% exact",
            exact * 100.0
        );
        assert!(
            max <= 1,
            "bicubic {cr:?} -> {out:?}: max diff {max}, {:.1}% exact",
            exact * 100.0
        );
    }
}
