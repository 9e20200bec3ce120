//! Pseudo part labels: the Category Filter (paper section 4, Tab. 5).
//!
//! The image's class is known, so the part probabilities of every other class are set to 0
//! before the argmax. `mpm-data pseudo` (the model-driven part) waits for the engine; this is
//! the tested core it will call.

use crate::{Error, Result};

/// Category-Filtered argmax over NHWC probabilities.
///
/// `probs`: `(N, H, W, S)`; `classes[n]`: class index of image n; `ranges[c] = (first, end)`:
/// the half-open global part-id range of class c (see `PartTable::ranges`). Channel 0
/// (background) and the image's own range keep their values, all others count as 0; the result
/// is the first index of the maximum (as `torch.argmax`), `(N, H, W)` u16.
pub fn category_filter_argmax(
    probs: &[f32],
    n: usize,
    h: usize,
    w: usize,
    s: usize,
    classes: &[usize],
    ranges: &[(u32, u32)],
) -> Result<Vec<u16>> {
    if probs.len() != n * h * w * s || classes.len() != n {
        return Err(Error::shape(
            "category_filter_argmax",
            format!(
                "probs has {} values, classes {}; expected N*H*W*S = {} and N = {n}",
                probs.len(),
                classes.len(),
                n * h * w * s
            ),
        ));
    }
    if s == 0 || s > u16::MAX as usize + 1 {
        return Err(Error::shape(
            "category_filter_argmax",
            format!("S = {s} out of range"),
        ));
    }
    let mut out = Vec::with_capacity(n * h * w);
    for (img, &c) in classes.iter().enumerate() {
        let &(lo, hi) = ranges.get(c).ok_or_else(|| {
            Error::shape(
                "category_filter_argmax",
                format!("class {c} has no part range"),
            )
        })?;
        let (lo, hi) = (lo as usize, (hi as usize).min(s));
        if lo == 0 || lo > hi {
            return Err(Error::shape(
                "category_filter_argmax",
                format!("bad range {lo}..{hi}"),
            ));
        }
        // The first channel zeroed by the filter (value 0), if any.
        let first_zeroed = if lo > 1 {
            Some(1)
        } else if hi < s {
            Some(hi)
        } else {
            None
        };
        for p in probs[img * h * w * s..(img + 1) * h * w * s].chunks_exact(s) {
            let (mut best, mut bv) = (0usize, p[0]);
            for (k, &v) in p[lo..hi].iter().enumerate() {
                if v > bv {
                    best = lo + k;
                    bv = v;
                }
            }
            if let Some(z) = first_zeroed {
                if 0.0 > bv || (0.0 == bv && z < best) {
                    best = z;
                }
            }
            out.push(best as u16);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: zero the other classes' channels, then first-max argmax.
    fn slow(p: &[f32], s: usize, lo: usize, hi: usize) -> u16 {
        let q: Vec<f32> = (0..s)
            .map(|k| {
                if k == 0 || (lo..hi).contains(&k) {
                    p[k]
                } else {
                    0.0
                }
            })
            .collect();
        let mut best = 0;
        for k in 1..s {
            if q[k] > q[best] {
                best = k;
            }
        }
        best as u16
    }

    #[test]
    fn filter_matches_zero_then_argmax() {
        let ranges = [(1u32, 4u32), (4, 6), (6, 9)];
        let s = 9;
        let mut seed = 12345u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) % 1000) as f32 / 1000.0 - 0.1
        };
        let (n, h, w) = (3, 4, 5);
        let probs: Vec<f32> = (0..n * h * w * s).map(|_| rnd()).collect();
        let classes = [0, 1, 2];
        let got = category_filter_argmax(&probs, n, h, w, s, &classes, &ranges).unwrap();
        for (i, px) in probs.chunks(s).enumerate() {
            let (lo, hi) = ranges[classes[i / (h * w)]];
            assert_eq!(got[i], slow(px, s, lo as usize, hi as usize), "pixel {i}");
        }
        // A pixel whose unfiltered argmax is another class's part.
        let mut p = vec![0.05f32; 9];
        p[7] = 0.9;
        p[2] = 0.3;
        assert_eq!(
            category_filter_argmax(&p, 1, 1, 1, 9, &[0], &ranges).unwrap(),
            vec![2]
        );
        assert!(category_filter_argmax(&p, 1, 1, 1, 9, &[5], &ranges).is_err());
    }
}
