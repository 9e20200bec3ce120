//! The Category Filter (CF, paper §3 and Tab. 5) on instance detections.
//!
//! The paper's rule: the image's class is known, so the probabilities of the part categories
//! that do not belong to it are set to zero and the mask's part is the argmax of what remains.
//! A segmenter can give us two things:
//!
//! - **Extended results** (a `scores` vector per detection: one score per part category, in
//!   category-id order, optionally followed by background, as detectron2's and mmdetection's
//!   box heads order their softmax): the rule exactly. The other classes' entries are zeroed,
//!   the first maximum of the rest (parts before background, so a tie goes to the part) is the
//!   label and its value the score; a detection whose maximum is background is dropped. The
//!   mask is the one given (the segmenter's mask for its original label: a class-specific mask
//!   head's mask for the new label is not in the file).
//! - **Standard results** (one record per (proposal, category) above the toolkit's score
//!   threshold: `ROI_HEADS.SCORE_THRESH_TEST` in detectron2, `test_cfg.rcnn.score_thr` in
//!   mmdetection): detections of other classes' parts are dropped, then per mask the
//!   best-scoring detection among the image's own parts is kept: a detection is dropped when a
//!   better-scoring kept detection of another own part covers the same object (mask IoU >=
//!   `same_mask_iou`). When the toolkit threshold is low enough that every own-part category of
//!   a proposal with a non-negligible probability is written (0.05 or below; the defaults of
//!   both toolkits are 0.05), the kept detection is the proposal's filtered argmax, i.e. the
//!   paper's rule; with a higher threshold, a proposal whose best own part scores below it is
//!   lost (the paper's rule would label it, with that low score).

use crate::data::rasterise::Rle;

use super::rle;

/// What CF did to one detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CfOutcome {
    /// Kept with its own label.
    Kept,
    /// Extended form: kept, relabelled to another of the image's own parts.
    Relabelled,
    /// A part of another class (standard form), or background won (extended form).
    DroppedOtherClass,
    DroppedBackground,
    /// Standard form: another own part's better detection of the same mask.
    DroppedDuplicate,
}

/// Exact CF on a per-category score vector. `own(p)`: whether position `p` (0-based, the
/// category with the p-th smallest id) is one of the image's parts; `k` the number of part
/// categories. Returns `(position, score)` of the filtered argmax, or `None` when background
/// wins; an error when the vector has neither `k` nor `k + 1` entries.
pub fn cf_extended(
    scores: &[f32],
    k: usize,
    own: impl Fn(usize) -> bool,
) -> Result<Option<(usize, f32)>, String> {
    let background = match scores.len() {
        n if n == k => None,
        n if n == k + 1 => Some(scores[k]),
        n => {
            return Err(format!(
                "'scores' has {n} entries; expected one per part category ({k}) or {} with \
                 background last",
                k + 1
            ))
        }
    };
    // The other classes' entries count as 0 (not left out): a 0 can still be the maximum.
    let mut best: Option<(usize, f32)> = None;
    for (p, &s) in scores[..k].iter().enumerate() {
        let v = if own(p) { s } else { 0.0 };
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((p, v));
        }
    }
    let Some((p, v)) = best else {
        return Ok(None);
    };
    if let Some(bg) = background {
        if bg > v {
            return Ok(None);
        }
    }
    // A zeroed entry winning, or an own part at 0, means every own part scores <= 0: no part
    // of this class.
    if !own(p) || v <= 0.0 {
        return Ok(None);
    }
    Ok(Some((p, v)))
}

/// A detection for the standard-form CF.
#[derive(Clone, Debug)]
pub struct Candidate<T> {
    pub category: usize,
    pub score: f64,
    /// File order, the tie-break of equal scores.
    pub index: u64,
    pub rle: Rle,
    pub payload: T,
}

/// Standard-form CF over one image's detections (see the module docs). Returns the kept
/// detections (best score first) and the outcome of every input in input order.
pub fn cf_standard<T>(
    dets: Vec<Candidate<T>>,
    own: impl Fn(usize) -> bool,
    same_mask_iou: f64,
) -> (Vec<Candidate<T>>, Vec<CfOutcome>) {
    let mut outcome = vec![CfOutcome::DroppedOtherClass; dets.len()];
    let mut order: Vec<(usize, Candidate<T>)> = dets.into_iter().enumerate().collect();
    order.sort_by(|a, b| {
        b.1.score
            .partial_cmp(&a.1.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.index.cmp(&b.1.index))
    });
    let mut kept: Vec<Candidate<T>> = Vec::new();
    for (i, d) in order {
        if !own(d.category) {
            continue;
        }
        let dup = kept
            .iter()
            .any(|k| k.category != d.category && rle::iou(&d.rle, &k.rle, false) >= same_mask_iou);
        if dup {
            outcome[i] = CfOutcome::DroppedDuplicate;
        } else {
            outcome[i] = CfOutcome::Kept;
            kept.push(d);
        }
    }
    (kept, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_zeroes_other_classes_then_argmax() {
        // Parts 0,1 belong to the image's class; 2,3 do not.
        let own = |p: usize| p < 2;
        let s = [0.1, 0.2, 0.6, 0.05];
        assert_eq!(cf_extended(&s, 4, own).unwrap(), Some((1, 0.2)));
        // Background last: wins over 0.2 -> dropped.
        let s = [0.1, 0.2, 0.6, 0.05, 0.3];
        assert_eq!(cf_extended(&s, 4, own).unwrap(), None);
        // Tie between parts: the first.
        assert_eq!(
            cf_extended(&[0.3, 0.3, 0.0, 0.0], 4, own).unwrap(),
            Some((0, 0.3))
        );
        // All own parts zero: nothing of this class.
        assert_eq!(cf_extended(&[0.0, 0.0, 0.9, 0.1], 4, own).unwrap(), None);
        assert!(cf_extended(&[0.1; 3], 4, own).is_err());
    }

    #[test]
    fn standard_keeps_best_own_part_per_mask() {
        let block = |x0: usize, x1: usize| {
            let mut m = crate::data::rasterise::Mask::zeros(4, 8);
            for y in 0..4 {
                for x in x0..x1 {
                    m.data[y * 8 + x] = 1;
                }
            }
            crate::data::rasterise::encode(&m)
        };
        let c = |category, score, index, rle| Candidate {
            category,
            score,
            index,
            rle,
            payload: (),
        };
        let own = |k: usize| k == 1 || k == 2;
        let dets = vec![
            c(1, 0.4, 0, block(0, 4)), // same mask as the next, lower score: duplicate
            c(2, 0.5, 1, block(0, 4)),
            c(9, 0.9, 2, block(0, 4)),  // another class's part
            c(1, 0.3, 3, block(5, 8)),  // another object
            c(2, 0.45, 4, block(0, 4)), // same category as a kept one: the toolkit's NMS decides
        ];
        let (kept, out) = cf_standard(dets, own, 0.5);
        assert_eq!(
            out,
            vec![
                CfOutcome::DroppedDuplicate,
                CfOutcome::Kept,
                CfOutcome::DroppedOtherClass,
                CfOutcome::Kept,
                CfOutcome::Kept
            ]
        );
        assert_eq!(
            kept.iter().map(|k| k.index).collect::<Vec<_>>(),
            vec![1, 4, 3]
        );
    }
}
