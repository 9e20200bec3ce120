//! Soft targets vs PyTorch 2.x (`F.interpolate` nearest to 28x28, smoothed one-hot, bilinear
//! align_corners=False to 14x14 and 7x7). Fixture `tests/fixtures/data/soft_targets.json` from
//! `scripts/make_data_fixtures.py`: 4 label maps (up- and down-sampling, odd aspect ratios,
//! smoothing 0, 0.1, 0.2). The 28x28 level is checked through the nearest indices (exact); the
//! bilinear levels to 1e-6 absolute (values are f32 printed with 9 significant digits).

use mpm::data::imageio::LabelMap;
use mpm::data::targets::{nearest_resize, soft_targets, soft_targets_slow, TargetSpec};
use serde_json::Value;

fn nums(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn soft_targets_match_pytorch() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/data/soft_targets.json"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for c in v["cases"].as_array().unwrap() {
        let (h, w, s) = (
            c["h"].as_u64().unwrap() as usize,
            c["w"].as_u64().unwrap() as usize,
            c["s"].as_u64().unwrap() as usize,
        );
        let m = LabelMap {
            h,
            w,
            data: nums(&c["label"]).into_iter().map(|x| x as u16).collect(),
        };
        let n28: Vec<u16> = nums(&c["n28"]).into_iter().map(|x| x as u16).collect();
        assert_eq!(nearest_resize(&m, 28, 28).data, n28, "nearest {h}x{w}");
        let spec = TargetSpec {
            num_classes: s,
            smoothing: c["smoothing"].as_f64().unwrap() as f32,
            sizes: vec![28, 14, 7],
        };
        let (on, off) = spec.on_off();
        for t in [
            soft_targets(&[Some(&m)], &spec).unwrap(),
            soft_targets_slow(&[Some(&m)], &spec).unwrap(),
        ] {
            for (p, &lab) in n28.iter().enumerate() {
                for ch in 0..s {
                    let want = if ch == lab as usize { on } else { off };
                    assert_eq!(t[0][p * s + ch], want);
                }
            }
            for (lvl, key) in [(1, "t14"), (2, "t7")] {
                let want = nums(&c[key]);
                assert_eq!(t[lvl].len(), want.len());
                let max = t[lvl]
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (*a as f64 - b).abs())
                    .fold(0.0, f64::max);
                assert!(max < 1e-6, "{key} {h}x{w}: max abs diff {max:e}");
            }
        }
    }
}
