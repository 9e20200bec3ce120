//! Part segmentation metrics at the label map's resolution: the part head's logits (7x7 to
//! 28x28) are resized bilinearly (align_corners=False, as `F.interpolate` and the usual
//! segmentation evaluation do) to the label map's size, the argmax taken per pixel and
//! compared with every pixel of the map. Scoring at the head's resolution instead (the map
//! sampled at 28x28 or 7x7 points) counts each head cell once whatever its area, ignores
//! part boundaries inside a cell and can score a coarse head perfectly on a part it only
//! covers in part (see the tests).
//!
//! Pixel accuracy: correct pixels / pixels (background included). mIoU: the mean over the
//! classes present in the prediction or the target (background, class 0, included) of
//! `|pred = c and target = c| / |pred = c or target = c|`, summed over all images first
//! (dataset-level IoU, as mmseg computes it), not averaged per image.

/// Intersection and union counts per class, and pixel counts, summed over images.
#[derive(Clone, Debug, PartialEq)]
pub struct PartScores {
    pub inter: Vec<u64>,
    pub union: Vec<u64>,
    pub correct: u64,
    pub pixels: u64,
}

impl PartScores {
    /// Empty counts for `classes` classes (background included).
    pub fn new(classes: usize) -> Self {
        PartScores {
            inter: vec![0; classes],
            union: vec![0; classes],
            correct: 0,
            pixels: 0,
        }
    }

    /// One pixel predicted `p` with target `t`; labels outside the classes count as wrong
    /// pixels and enter no class's counts.
    pub fn add(&mut self, p: usize, t: usize) {
        let s = self.inter.len();
        self.pixels += 1;
        if p == t {
            self.correct += 1;
            if t < s {
                self.inter[t] += 1;
                self.union[t] += 1;
            }
        } else {
            if t < s {
                self.union[t] += 1;
            }
            if p < s {
                self.union[p] += 1;
            }
        }
    }

    /// Scores one image: `logits` `[h, w, c]` (NHWC row, `c` classes) against the label map
    /// `labels` `[side, side]`, at the map's resolution.
    pub fn add_image(&mut self, logits: &[f32], (h, w, c): (usize, usize, usize), labels: &[u16]) {
        let side = (labels.len() as f64).sqrt() as usize;
        debug_assert_eq!(side * side, labels.len(), "label map must be square");
        let pred = upsampled_argmax(logits, (h, w, c), side, side);
        for (p, &t) in pred.into_iter().zip(labels) {
            self.add(p, t as usize);
        }
    }

    /// Correct pixels / pixels (None without pixels).
    pub fn pixel_acc(&self) -> Option<f64> {
        (self.pixels > 0).then(|| self.correct as f64 / self.pixels as f64)
    }

    /// Mean IoU over the classes with a non-empty union (None when there is none).
    pub fn miou(&self) -> Option<f64> {
        let ious: Vec<f64> = self
            .inter
            .iter()
            .zip(&self.union)
            .filter(|(_, &u)| u > 0)
            .map(|(&i, &u)| i as f64 / u as f64)
            .collect();
        (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64)
    }
}

/// PyTorch's bilinear source coordinate (align_corners=False) of output index `d` for a
/// resize from `input` to `output` samples: the two neighbours and the weight of the second.
fn source(d: usize, input: usize, output: usize) -> (usize, usize, f32) {
    let scale = input as f32 / output as f32;
    let src = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(input - 1);
    let i1 = (i0 + 1).min(input - 1);
    (i0, i1, src - i0 as f32)
}

/// Per output pixel `[oh, ow]` (row-major), the argmax over the `c` channels of `logits`
/// `[h, w, c]` resized bilinearly to `oh x ow` (ties: the lowest class).
pub fn upsampled_argmax(
    logits: &[f32],
    (h, w, c): (usize, usize, usize),
    oh: usize,
    ow: usize,
) -> Vec<usize> {
    let xs: Vec<(usize, usize, f32)> = (0..ow).map(|x| source(x, w, ow)).collect();
    let mut out = Vec::with_capacity(oh * ow);
    let mut px = vec![0f32; c];
    for y in 0..oh {
        let (y0, y1, ly) = source(y, h, oh);
        for &(x0, x1, lx) in &xs {
            let at = |yy: usize, xx: usize| &logits[(yy * w + xx) * c..(yy * w + xx + 1) * c];
            let (a, b, cc, d) = (at(y0, x0), at(y0, x1), at(y1, x0), at(y1, x1));
            for k in 0..c {
                let top = a[k] * (1.0 - lx) + b[k] * lx;
                let bot = cc[k] * (1.0 - lx) + d[k] * lx;
                px[k] = top * (1.0 - ly) + bot * ly;
            }
            out.push(argmax(&px));
        }
    }
    out
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One-hot logits `[h, w, c]` from a class map.
    fn one_hot(map: &[usize], c: usize) -> Vec<f32> {
        map.iter()
            .flat_map(|&k| (0..c).map(move |j| if j == k { 4.0 } else { 0.0 }))
            .collect()
    }

    #[test]
    fn same_size_resize_is_the_identity_and_scores_count_pixels() {
        let map = [0usize, 1, 2, 1, 0, 0, 2, 2, 1];
        let pred = upsampled_argmax(&one_hot(&map, 3), (3, 3, 3), 3, 3);
        assert_eq!(pred, map.to_vec());
        let mut s = PartScores::new(3);
        let labels: Vec<u16> = vec![0, 1, 2, 1, 0, 0, 2, 1, 1];
        s.add_image(&one_hot(&map, 3), (3, 3, 3), &labels);
        // One pixel wrong: predicted 2, target 1.
        assert_eq!((s.correct, s.pixels), (8, 9));
        assert_eq!(s.inter, vec![3, 3, 2]);
        assert_eq!(s.union, vec![3, 4, 3]);
        let want = (1.0 + 3.0 / 4.0 + 2.0 / 3.0) / 3.0;
        assert!((s.miou().unwrap() - want).abs() < 1e-12);
        assert_eq!(s.pixel_acc(), Some(8.0 / 9.0));
        assert_eq!(PartScores::new(3).miou(), None);
    }

    #[test]
    fn bilinear_upsampling_follows_pytorch_coordinates() {
        // 2 -> 4 samples, align_corners=False: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25.
        assert_eq!(source(0, 2, 4), (0, 1, 0.0));
        assert_eq!(source(1, 2, 4), (0, 1, 0.25));
        assert_eq!(source(2, 2, 4), (0, 1, 0.75));
        assert_eq!(source(3, 2, 4), (1, 1, 0.25));
        // A 1x2 head, class 1 stronger on the right: the boundary lands between output
        // columns 1 and 2 of 4.
        let logits = [1.0, 0.0, 0.0, 1.0];
        assert_eq!(upsampled_argmax(&logits, (1, 2, 2), 1, 4), vec![0, 0, 1, 1]);
    }

    /// A part covering a 3x3 corner of an 8x8 map, and a 2x2 head that marks its top-left
    /// cell as the part: sampled at the head's 2x2 points the head is perfect (mIoU 1); at the
    /// map's resolution the upsampled head marks 15 pixels around the corner, the part's IoU
    /// is 9 / 15 and the background's 49 / 55.
    #[test]
    fn a_coarse_head_is_not_perfect_at_the_label_resolution() {
        let side = 8;
        let mut labels = vec![0u16; side * side];
        for y in 0..3 {
            for x in 0..3 {
                labels[y * side + x] = 1;
            }
        }
        let head = one_hot(&[1, 0, 0, 0], 2);
        // At the head's resolution (the old metric): nearest samples of the map.
        let mut coarse = PartScores::new(2);
        for (cell, p) in [(0usize, 1usize), (1, 0), (2, 0), (3, 0)] {
            let (y, x) = (cell / 2 * 4, cell % 2 * 4);
            coarse.add(p, labels[y * side + x] as usize);
        }
        assert_eq!(coarse.miou(), Some(1.0));
        let mut fine = PartScores::new(2);
        fine.add_image(&head, (2, 2, 2), &labels);
        let pred = upsampled_argmax(&head, (2, 2, 2), side, side);
        let part_pixels = pred.iter().filter(|&&p| p == 1).count();
        assert_eq!(part_pixels, 15, "{pred:?}");
        // Rows 0-1: columns 0-3; row 2: 0-3; row 3: 0-2 (where the bilinear weight of the
        // top-left cell is above 1/2).
        for (y, cols) in [(0, 4), (1, 4), (2, 4), (3, 3), (4, 0)] {
            let row = &pred[y * side..(y + 1) * side];
            assert!(row[..cols].iter().all(|&p| p == 1) && row[cols..].iter().all(|&p| p == 0));
        }
        assert_eq!(fine.inter, vec![49, 9]);
        assert_eq!(fine.union, vec![55, 15]);
        let want = (49.0 / 55.0 + 9.0 / 15.0) / 2.0;
        assert!((fine.miou().unwrap() - want).abs() < 1e-12);
        assert_eq!(fine.pixel_acc(), Some(58.0 / 64.0));
    }
}
