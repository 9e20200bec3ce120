//! RLE masks as pycocotools' `maskApi.c` handles them: one RLE per segmentation (`annToRLE`:
//! polygons are rasterised ring by ring and merged by union), area, bounding box and IoU
//! computed on the runs themselves (no `h x w` buffer).
//!
//! Runs are column-major (pixel `x * h + y`) and alternate 0,1,0,... starting with a (possibly
//! empty) run of 0s, exactly as [`crate::data::rasterise`] decodes them; that module owns the
//! polygon rasteriser and the compressed-string codec, this one the set operations.

use crate::data::rasterise::{rle_from_poly, rle_from_string, Rle, Segmentation};

/// Checks that the runs of `r` cover exactly its `h * w` pixels (pycocotools reads out of
/// bounds otherwise; here it is an error the caller counts as a malformed mask).
pub fn validate(r: &Rle) -> Result<(), String> {
    let total: u64 = r.counts.iter().map(|&c| c as u64).sum();
    let want = (r.h as u64) * (r.w as u64);
    if total != want {
        return Err(format!(
            "RLE runs cover {total} pixels, its size {}x{} has {want}",
            r.h, r.w
        ));
    }
    Ok(())
}

/// `annToRLE` of a segmentation for an image of `h x w`: polygons (every ring through
/// `rleFrPoly`, then their union, as `frPyObjects` + `merge`), uncompressed RLE (`frPyObjects`)
/// or compressed RLE (as given). An RLE keeps its own size (pycocotools does: a size that
/// differs from the image's is the caller's to judge); its runs must cover that size.
pub fn segmentation_to_rle(seg: &Segmentation, h: usize, w: usize) -> Result<Rle, String> {
    let r = match seg {
        Segmentation::Polygons(rings) => {
            let first = rings.first().ok_or("empty polygon list")?;
            if first.len() <= 4 {
                return Err(format!(
                    "first polygon ring has {} numbers (pycocotools needs > 4)",
                    first.len()
                ));
            }
            if h == 0 || w == 0 {
                return Err(format!("image size {h}x{w} is empty"));
            }
            let mut acc = rle_from_poly(&rings[0], h, w);
            for ring in &rings[1..] {
                acc = union(&acc, &rle_from_poly(ring, h, w));
            }
            acc
        }
        Segmentation::Uncompressed { h, w, counts } => Rle {
            h: *h,
            w: *w,
            counts: counts.clone(),
        },
        Segmentation::Compressed { h, w, counts } => rle_from_string(counts, *h, *w)?,
    };
    validate(&r)?;
    Ok(r)
}

/// Walks two run lists over the same pixels, calling `f(length, in_a, in_b)` for each stretch
/// where neither changes. Zero-length runs (allowed in uncompressed RLE) are stepped over.
fn zip_runs(a: &[u32], b: &[u32], mut f: impl FnMut(u64, bool, bool)) {
    struct Cursor<'a> {
        counts: &'a [u32],
        next: usize,
        left: u64,
        on: bool,
    }
    impl Cursor<'_> {
        /// Loads the next non-empty run; false at the end.
        fn fill(&mut self) -> bool {
            while self.left == 0 {
                if self.next >= self.counts.len() {
                    return false;
                }
                // Run i is "on" when i is odd.
                self.on = self.next % 2 == 1;
                self.left = self.counts[self.next] as u64;
                self.next += 1;
            }
            true
        }
    }
    let mut ca = Cursor {
        counts: a,
        next: 0,
        left: 0,
        on: false,
    };
    let mut cb = Cursor {
        counts: b,
        next: 0,
        left: 0,
        on: false,
    };
    while ca.fill() && cb.fill() {
        let c = ca.left.min(cb.left);
        f(c, ca.on, cb.on);
        ca.left -= c;
        cb.left -= c;
    }
}

/// Appends a run of `len` pixels of value `on` to canonical counts (first run 0s, no empty
/// runs after the first).
fn push_run(counts: &mut Vec<u32>, len: u64, on: bool) {
    if len == 0 {
        return;
    }
    if counts.is_empty() {
        if on {
            counts.push(0);
        }
        counts.push(len as u32);
        return;
    }
    // Run i holds 1s when i is odd: the last run holds 1s when the count of runs is even.
    let last_is_on = counts.len() % 2 == 0;
    if last_is_on == on {
        *counts.last_mut().expect("non-empty") += len as u32;
    } else {
        counts.push(len as u32);
    }
}

/// Union of two RLEs of the same size (`rleMerge` with `intersect = 0`).
pub fn union(a: &Rle, b: &Rle) -> Rle {
    let mut counts = Vec::with_capacity(a.counts.len() + b.counts.len());
    zip_runs(&a.counts, &b.counts, |c, x, y| {
        push_run(&mut counts, c, x || y)
    });
    if counts.is_empty() {
        counts.push(0);
    }
    Rle {
        h: a.h,
        w: a.w,
        counts,
    }
}

/// Number of pixels set (`rleArea`).
pub fn area(r: &Rle) -> u64 {
    r.counts.iter().skip(1).step_by(2).map(|&c| c as u64).sum()
}

/// `rleToBbox`: `[x, y, w, h]` of the set pixels, with maskApi.c's handling of a mask that
/// spans columns (its y range becomes the full height, as pycocotools reports it).
pub fn bbox(r: &Rle) -> [f64; 4] {
    let (h, w) = (r.h as u64, r.w as u64);
    let m = (r.counts.len() / 2) * 2;
    if m == 0 || h == 0 {
        return [0.0; 4];
    }
    let (mut xs, mut ys, mut xe, mut ye) = (w, h, 0u64, 0u64);
    let mut cc = 0u64;
    let mut xp = 0u64;
    for j in 0..m {
        cc += r.counts[j] as u64;
        let t = cc - (j % 2) as u64;
        let y = t % h;
        let x = (t - y) / h;
        if j % 2 == 0 {
            xp = x;
        } else if xp < x {
            ys = 0;
            ye = h - 1;
        }
        xs = xs.min(x);
        xe = xe.max(x);
        ys = ys.min(y);
        ye = ye.max(y);
    }
    [
        xs as f64,
        ys as f64,
        (xe - xs + 1) as f64,
        (ye - ys + 1) as f64,
    ]
}

/// `rleIou` of a detection against a ground truth: intersection over union, or over the
/// detection's area when the ground truth is a crowd region; 0 without overlap; -1 when the
/// two sizes differ (pycocotools' value, which no threshold matches).
pub fn iou(dt: &Rle, gt: &Rle, gt_crowd: bool) -> f64 {
    if dt.h != gt.h || dt.w != gt.w {
        return -1.0;
    }
    let (mut inter, mut uni) = (0u64, 0u64);
    zip_runs(&dt.counts, &gt.counts, |c, a, b| {
        if a || b {
            uni += c;
        }
        if a && b {
            inter += c;
        }
    });
    if inter == 0 {
        return 0.0;
    }
    let den = if gt_crowd { area(dt) } else { uni };
    inter as f64 / den as f64
}

/// Builds a canonical RLE from the set pixels given in increasing column-major order.
#[derive(Clone, Debug, Default)]
pub struct RunBuilder {
    counts: Vec<u32>,
    /// Column-major index just after the last set pixel.
    next: u64,
}

impl RunBuilder {
    /// Adds pixel `p` (column-major), which must exceed every pixel added before.
    pub fn push(&mut self, p: u64) {
        if !self.counts.is_empty() && p == self.next {
            *self.counts.last_mut().expect("non-empty") += 1;
        } else {
            self.counts.push((p - self.next) as u32);
            self.counts.push(1);
        }
        self.next = p + 1;
    }
    pub fn finish(mut self, h: usize, w: usize) -> Rle {
        let total = (h * w) as u64;
        if self.counts.is_empty() {
            self.counts.push(total as u32);
        } else if total > self.next {
            self.counts.push((total - self.next) as u32);
        }
        Rle {
            h,
            w,
            counts: self.counts,
        }
    }
}

/// Sets `map[y * w + x] = value` for every pixel of `r` (row-major map of `r.h x r.w`).
pub fn paint_into(r: &Rle, map: &mut [u16], value: u16) {
    let h = r.h;
    let w = r.w;
    let mut pos = 0usize;
    for (i, &c) in r.counts.iter().enumerate() {
        let c = c as usize;
        if i % 2 == 1 {
            for p in pos..pos + c {
                let (x, y) = (p / h, p % h);
                map[y * w + x] = value;
            }
        }
        pos += c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::rasterise::{decode, encode, Mask};

    fn mask(h: usize, w: usize, f: impl Fn(usize, usize) -> bool) -> Mask {
        let mut m = Mask::zeros(h, w);
        for y in 0..h {
            for x in 0..w {
                m.data[y * w + x] = f(y, x) as u8;
            }
        }
        m
    }

    #[test]
    fn set_operations_match_pixel_loops() {
        let (h, w) = (7, 9);
        let a = mask(h, w, |y, x| (x * 3 + y) % 5 < 2);
        let b = mask(h, w, |y, x| x > 2 && y < 5);
        let (ra, rb) = (encode(&a), encode(&b));
        let u = union(&ra, &rb);
        let want: Vec<u8> = a.data.iter().zip(&b.data).map(|(x, y)| x | y).collect();
        assert_eq!(decode(&u).unwrap().data, want);
        assert_eq!(u, encode(&decode(&u).unwrap()), "canonical runs");
        let inter = a
            .data
            .iter()
            .zip(&b.data)
            .filter(|(x, y)| **x & **y == 1)
            .count();
        let uni = want.iter().filter(|v| **v == 1).count();
        assert_eq!(area(&ra), a.area() as u64);
        assert!((iou(&ra, &rb, false) - inter as f64 / uni as f64).abs() < 1e-15);
        assert!((iou(&ra, &rb, true) - inter as f64 / a.area() as f64).abs() < 1e-15);
        // Zero-length runs in the middle (legal uncompressed RLE) change nothing.
        let mut z = ra.counts.clone();
        z.insert(2, 0);
        z.insert(2, 0);
        let rz = Rle { h, w, counts: z };
        assert_eq!(iou(&rz, &rb, false), iou(&ra, &rb, false));
        assert_eq!(
            iou(
                &ra,
                &Rle {
                    h: 9,
                    w: 7,
                    counts: vec![63]
                },
                false
            ),
            -1.0
        );
        // Builder from column-major pixels.
        let mut bld = RunBuilder::default();
        for x in 0..w {
            for y in 0..h {
                if a.data[y * w + x] == 1 {
                    bld.push((x * h + y) as u64);
                }
            }
        }
        assert_eq!(bld.finish(h, w), ra);
        let mut map = vec![0u16; h * w];
        paint_into(&rb, &mut map, 7);
        assert!(map.iter().zip(&b.data).all(|(m, v)| (*m == 7) == (*v == 1)));
    }

    #[test]
    fn bbox_of_a_block() {
        let m = mask(6, 8, |y, x| (2..5).contains(&x) && (1..3).contains(&y));
        assert_eq!(bbox(&encode(&m)), [2.0, 1.0, 3.0, 2.0]);
        assert_eq!(bbox(&encode(&Mask::zeros(4, 4))), [0.0; 4]);
    }
}
