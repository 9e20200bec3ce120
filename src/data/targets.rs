//! Multi-scale soft segmentation targets on the CPU (DESIGN.md section 1, the spec the GPU
//! `mask_targets` kernel must match):
//!
//! 1. nearest resize of the label map to `base x base` (28) with PyTorch's `nearest` rule, in
//!    f32 as PyTorch computes it: `src = min(floor(dst * (in as f32 / out as f32)), in - 1)`
//!    (identity when sizes are equal, `dst >> 1` when `out == 2 * in`);
//! 2. one-hot over S channels with label smoothing: `on = 1 - s + s/S`, `off = s/S`;
//! 3. bilinear, `align_corners=False`, from `base` to each smaller level (14, 7):
//!    `src = max(scale * (dst + 0.5) - 0.5, 0)`, `i0 = floor(src)`, `i1 = min(i0 + 1, in - 1)`,
//!    `l1 = src - i0`, `l0 = 1 - l1`.
//!
//! Output per level: NHWC f32 `(N, h, w, S)`, level 0 = highest resolution.
//! [`soft_targets`] fills `off` and adds the few labels present per output pixel (the one-hot is
//! sparse); [`soft_targets_slow`] is the dense composition, kept as the test reference.

use super::imageio::LabelMap;
use crate::{Error, Result};

/// What to build: S channels, smoothing, square level sizes (first = the nearest-resize size).
#[derive(Clone, Debug, PartialEq)]
pub struct TargetSpec {
    pub num_classes: usize,
    pub smoothing: f32,
    pub sizes: Vec<usize>,
}

impl TargetSpec {
    /// The paper's setting: S channels, smoothing 0.1, levels 28, 14, 7.
    pub fn paper(num_classes: usize) -> Self {
        TargetSpec {
            num_classes,
            smoothing: 0.1,
            sizes: vec![28, 14, 7],
        }
    }
    pub fn on_off(&self) -> (f32, f32) {
        let s = self.smoothing;
        let k = self.num_classes as f32;
        (1.0 - s + s / k, s / k)
    }
}

/// PyTorch `nearest` source index (f32 arithmetic, as `nearest_idx` in UpSample.h).
pub fn nearest_index(dst: usize, input: usize, output: usize) -> usize {
    if input == output {
        dst
    } else if output == 2 * input {
        dst >> 1
    } else {
        let scale = input as f32 / output as f32;
        ((dst as f32 * scale).floor() as usize).min(input - 1)
    }
}

/// Nearest resize of a label map (PyTorch rule), row-major.
pub fn nearest_resize(m: &LabelMap, oh: usize, ow: usize) -> LabelMap {
    let ys: Vec<usize> = (0..oh).map(|y| nearest_index(y, m.h, oh)).collect();
    let xs: Vec<usize> = (0..ow).map(|x| nearest_index(x, m.w, ow)).collect();
    let mut data = Vec::with_capacity(oh * ow);
    for &sy in &ys {
        for &sx in &xs {
            data.push(m.data[sy * m.w + sx]);
        }
    }
    LabelMap { h: oh, w: ow, data }
}

/// Bilinear (align_corners=False) taps for one axis: `(i0, i1, l0, l1)` per output index.
pub fn bilinear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|d| {
            let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

fn check_spec(spec: &TargetSpec) -> Result<()> {
    if spec.num_classes == 0 || spec.sizes.is_empty() || spec.sizes.contains(&0) {
        return Err(Error::shape(
            "soft_targets",
            format!(
                "need S >= 1 and sizes >= 1, got S = {} sizes {:?}",
                spec.num_classes, spec.sizes
            ),
        ));
    }
    Ok(())
}

fn check_labels(m: &LabelMap, s: usize) -> Result<()> {
    if let Some(&v) = m.data.iter().find(|&&v| v as usize >= s) {
        return Err(Error::shape(
            "soft_targets",
            format!("label value {v} out of range for S = {s}"),
        ));
    }
    if m.h == 0 || m.w == 0 {
        return Err(Error::shape("soft_targets", "empty label map"));
    }
    Ok(())
}

/// Soft targets for a batch of label maps: one `Vec<f32>` per level, NHWC `(N, h, h, S)`.
/// `None` entries (no map) get the all-background target (their loss weight is 0 anyway).
pub fn soft_targets(maps: &[Option<&LabelMap>], spec: &TargetSpec) -> Result<Vec<Vec<f32>>> {
    check_spec(spec)?;
    let s = spec.num_classes;
    let (on, off) = spec.on_off();
    let base = *spec
        .sizes
        .first()
        .ok_or_else(|| Error::shape("soft_targets", "no levels"))?;
    let n = maps.len();
    let mut out: Vec<Vec<f32>> = spec
        .sizes
        .iter()
        .map(|&h| vec![off; n * h * h * s])
        .collect();
    let blank = LabelMap::zeros(base, base);
    for (i, m) in maps.iter().enumerate() {
        let small = match m {
            Some(m) => {
                check_labels(m, s)?;
                nearest_resize(m, base, base)
            }
            None => blank.clone(),
        };
        for (lvl, &h) in spec.sizes.iter().enumerate() {
            let o = &mut out[lvl][i * h * h * s..(i + 1) * h * h * s];
            if h == base {
                for (p, &lab) in small.data.iter().enumerate() {
                    o[p * s + lab as usize] = on;
                }
                continue;
            }
            // Each output pixel mixes <= 4 inputs: off everywhere, plus (on - off) * weight on
            // the labels present.
            let taps = bilinear_taps(base, h);
            for (oy, &(y0, y1, ly0, ly1)) in taps.iter().enumerate() {
                for (ox, &(x0, x1, lx0, lx1)) in taps.iter().enumerate() {
                    let px = &mut o[(oy * h + ox) * s..(oy * h + ox + 1) * s];
                    for (yy, wy) in [(y0, ly0), (y1, ly1)] {
                        for (xx, wx) in [(x0, lx0), (x1, lx1)] {
                            let lab = small.data[yy * base + xx] as usize;
                            px[lab] += (on - off) * wy * wx;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Dense reference: full one-hot then bilinear over every channel (PyTorch's op order).
pub fn soft_targets_slow(maps: &[Option<&LabelMap>], spec: &TargetSpec) -> Result<Vec<Vec<f32>>> {
    check_spec(spec)?;
    let s = spec.num_classes;
    let (on, off) = spec.on_off();
    let base = spec.sizes[0];
    let mut out: Vec<Vec<f32>> = spec.sizes.iter().map(|_| Vec::new()).collect();
    for m in maps {
        let small = match m {
            Some(m) => {
                check_labels(m, s)?;
                nearest_resize(m, base, base)
            }
            None => LabelMap::zeros(base, base),
        };
        let mut oh = vec![off; base * base * s];
        for (p, &lab) in small.data.iter().enumerate() {
            oh[p * s + lab as usize] = on;
        }
        for (lvl, &h) in spec.sizes.iter().enumerate() {
            let taps = bilinear_taps(base, h);
            for &(y0, y1, ly0, ly1) in &taps {
                for &(x0, x1, lx0, lx1) in &taps {
                    for c in 0..s {
                        let v = |y: usize, x: usize| oh[(y * base + x) * s + c];
                        let t = ly0 * (lx0 * v(y0, x0) + lx1 * v(y0, x1))
                            + ly1 * (lx0 * v(y1, x0) + lx1 * v(y1, x1));
                        out[lvl].push(t);
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rule_matches_pytorch_special_cases() {
        assert_eq!(nearest_index(5, 28, 28), 5);
        assert_eq!(nearest_index(5, 14, 28), 2);
        // floor(27 * 61/28) = floor(58.82) = 58
        assert_eq!(nearest_index(27, 61, 28), 58);
    }

    #[test]
    fn rows_sum_to_one() {
        let m = LabelMap {
            h: 3,
            w: 5,
            data: vec![0, 1, 2, 3, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1, 2],
        };
        let spec = TargetSpec::paper(4);
        let t = soft_targets(&[Some(&m), None], &spec).unwrap();
        for (lvl, &h) in spec.sizes.iter().enumerate() {
            assert_eq!(t[lvl].len(), 2 * h * h * 4);
            for px in t[lvl].chunks(4) {
                assert!((px.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
        let bad = LabelMap {
            h: 1,
            w: 1,
            data: vec![4],
        };
        assert!(soft_targets(&[Some(&bad)], &spec).is_err());
    }
}
