//! COCO instance-segmentation AP, the computation of pycocotools' `COCOeval(iouType="segm")`
//! (`evaluate`, `accumulate`, `summarize`) with its default parameters: IoU thresholds
//! 0.50:0.05:0.95, 101 recall points, maxDets 1/10/100, area ranges all / small (< 32^2) /
//! medium / large (> 96^2), categories and images those of the ground truth.
//!
//! Kept exactly as pycocotools does it, because these details move AP:
//! - per (image, category) the detections are ordered by score, stable on file order
//!   (numpy's mergesort), and only the first 100 are matched;
//! - a ground truth is ignored when it is a crowd region or its `area` (the file's field) is
//!   outside the range; ignored ones are tried last, and a detection matched to one is ignored;
//! - a crowd region can be matched by several detections, with IoU = intersection over the
//!   detection's area;
//! - an unmatched detection whose own mask area is outside the range is ignored;
//! - across images (in image-id order) detections are merged by a stable score sort; precision
//!   is made monotone from the right and read at the first recall >= each threshold;
//! - an entry with no ground truth (or no image with either) is -1 and left out of the means.

use std::collections::HashMap;

use rayon::prelude::*;

use super::dataset::Dataset;
use super::rle;
use crate::data::rasterise::Rle;

/// A detection to score.
#[derive(Clone, Debug)]
pub struct Det {
    /// Index into `Dataset::images`.
    pub image: usize,
    /// Index into `Dataset::categories`.
    pub category: usize,
    pub score: f64,
    /// File order: the tie-break of equal scores.
    pub index: u64,
    pub rle: Rle,
}

/// `np.linspace(start, stop, num)` as numpy computes it (so thresholds compare bit for bit).
fn linspace<const N: usize>(start: f64, stop: f64) -> [f64; N] {
    let step = (stop - start) / (N - 1) as f64;
    let mut out = [0.0; N];
    for (i, v) in out.iter_mut().enumerate() {
        *v = i as f64 * step + start;
    }
    out[N - 1] = stop;
    out
}

pub const T: usize = 10;
pub const R: usize = 101;
pub const MAX_DETS: [usize; 3] = [1, 10, 100];
pub const AREA_NAMES: [&str; 4] = ["all", "small", "medium", "large"];
const AREAS: [(f64, f64); 4] = [(0.0, 1e10), (0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)];

/// One (image, category, area range) of `evaluateImg`.
struct ImgEval {
    scores: Vec<f64>,
    /// `[t][d]`
    matched: Vec<Vec<bool>>,
    ignored: Vec<Vec<bool>>,
    /// Ground truths not ignored.
    npig: usize,
}

/// Per category: mean precision over the recall points and the recall, per
/// `[area][maxDets][iou threshold]`; `None` where pycocotools stores -1.
#[derive(Clone, Debug)]
pub struct CategoryEval {
    pub precision: [[[Option<f64>; T]; 3]; 4],
    pub recall: [[[Option<f64>; T]; 3]; 4],
    pub gt: usize,
    pub dets: usize,
}

impl CategoryEval {
    /// Mean over the IoU thresholds `ts` at area "all", maxDets 100; -1 when nothing counts.
    pub fn ap(&self, ts: std::ops::Range<usize>) -> f64 {
        mean(self.precision[0][2][ts].iter().flatten().copied())
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for x in v {
        s += x;
        n += 1;
    }
    if n == 0 {
        -1.0
    } else {
        s / n as f64
    }
}

#[derive(Clone, Debug)]
pub struct EvalResult {
    /// pycocotools' `stats`: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl
    /// (fractions; -1 where nothing counts).
    pub stats: [f64; 12],
    pub per_category: Vec<CategoryEval>,
}

pub const STAT_NAMES: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

fn evaluate_img(
    gts: &[&super::dataset::GtAnn],
    dts: &[&Det],
    ious: &[Vec<f64>],
    area: (f64, f64),
    iou_thrs: &[f64; T],
) -> ImgEval {
    let gt_ign: Vec<bool> = gts
        .iter()
        .map(|g| g.crowd || g.area < area.0 || g.area > area.1)
        .collect();
    // Non-ignored first, stable (mergesort on the 0/1 flag).
    let mut gtind: Vec<usize> = (0..gts.len()).collect();
    gtind.sort_by_key(|&g| gt_ign[g]);
    let d_n = dts.len();
    let mut matched = vec![vec![false; d_n]; T];
    let mut ignored = vec![vec![false; d_n]; T];
    for (t, &thr) in iou_thrs.iter().enumerate() {
        let mut gtm = vec![false; gts.len()];
        for d in 0..d_n {
            let mut best = thr.min(1.0 - 1e-10);
            let mut m: Option<usize> = None;
            for (gi, &g) in gtind.iter().enumerate() {
                if gtm[gi] && !gts[g].crowd {
                    continue;
                }
                if let Some(mi) = m {
                    if !gt_ign[gtind[mi]] && gt_ign[g] {
                        break;
                    }
                }
                let v = ious[d][g];
                if v < best {
                    continue;
                }
                best = v;
                m = Some(gi);
            }
            if let Some(mi) = m {
                ignored[t][d] = gt_ign[gtind[mi]];
                matched[t][d] = true;
                gtm[mi] = true;
            }
        }
    }
    for (d, det) in dts.iter().enumerate() {
        let a = rle::area(&det.rle) as f64;
        if a < area.0 || a > area.1 {
            for t in 0..T {
                if !matched[t][d] {
                    ignored[t][d] = true;
                }
            }
        }
    }
    ImgEval {
        scores: dts.iter().map(|d| d.score).collect(),
        matched,
        ignored,
        npig: gt_ign.iter().filter(|&&i| !i).count(),
    }
}

/// `accumulate` for one (category, area, maxDets): mean precision over the recall points and
/// the final recall, per IoU threshold.
fn accumulate(
    evals: &[&ImgEval],
    max_det: usize,
    rec_thrs: &[f64; R],
) -> ([Option<f64>; T], [Option<f64>; T]) {
    let mut prec = [None; T];
    let mut rec = [None; T];
    if evals.is_empty() {
        return (prec, rec);
    }
    let npig: usize = evals.iter().map(|e| e.npig).sum();
    if npig == 0 {
        return (prec, rec);
    }
    // (score, image position, det position) in concatenation order, then a stable sort.
    let mut order: Vec<(f64, usize, usize)> = Vec::new();
    for (i, e) in evals.iter().enumerate() {
        for d in 0..e.scores.len().min(max_det) {
            order.push((e.scores[d], i, d));
        }
    }
    order.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
    let nd = order.len();
    for t in 0..T {
        let (mut tp, mut fp) = (0.0f64, 0.0f64);
        let mut rc = Vec::with_capacity(nd);
        let mut pr = Vec::with_capacity(nd);
        for &(_, i, d) in &order {
            let (m, ig) = (evals[i].matched[t][d], evals[i].ignored[t][d]);
            if m && !ig {
                tp += 1.0;
            }
            if !m && !ig {
                fp += 1.0;
            }
            rc.push(tp / npig as f64);
            pr.push(tp / (fp + tp + f64::EPSILON));
        }
        rec[t] = Some(if nd > 0 { rc[nd - 1] } else { 0.0 });
        for i in (1..nd).rev() {
            if pr[i] > pr[i - 1] {
                pr[i - 1] = pr[i];
            }
        }
        let mut sum = 0.0;
        for &thr in rec_thrs {
            let p = rc.partition_point(|&r| r < thr);
            if p < nd {
                sum += pr[p];
            }
        }
        prec[t] = Some(sum / R as f64);
    }
    (prec, rec)
}

/// Scores `dets` against the ground truth of `gt` (every image and category of the file).
pub fn evaluate(gt: &Dataset, dets: &[Det]) -> EvalResult {
    let iou_thrs: [f64; T] = linspace(0.5, 0.95);
    let rec_thrs: [f64; R] = linspace(0.0, 1.0);
    // Images in id order (pycocotools sorts p.imgIds); categories in id order.
    let mut img_order: Vec<usize> = (0..gt.images.len()).collect();
    img_order.sort_by_key(|&i| gt.images[i].id);
    let mut cat_order: Vec<usize> = (0..gt.categories.len()).collect();
    cat_order.sort_by_key(|&c| gt.categories[c].id);
    let mut gts: HashMap<(usize, usize), Vec<&super::dataset::GtAnn>> = HashMap::new();
    for a in &gt.anns {
        gts.entry((a.category, a.image)).or_default().push(a);
    }
    let mut dts: HashMap<(usize, usize), Vec<&Det>> = HashMap::new();
    for d in dets {
        dts.entry((d.category, d.image)).or_default().push(d);
    }
    for v in dts.values_mut() {
        v.sort_by(|a, b| {
            b.score
                .partial_cmp(&a.score)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.index.cmp(&b.index))
        });
        v.truncate(MAX_DETS[2]);
    }
    let per_category: Vec<CategoryEval> = cat_order
        .par_iter()
        .map(|&k| {
            let mut evals: [Vec<ImgEval>; 4] = Default::default();
            let (mut n_gt, mut n_dt) = (0, 0);
            for &i in &img_order {
                let g = gts.get(&(k, i)).map(Vec::as_slice).unwrap_or(&[]);
                let d = dts.get(&(k, i)).map(Vec::as_slice).unwrap_or(&[]);
                if g.is_empty() && d.is_empty() {
                    continue;
                }
                n_gt += g.len();
                n_dt += d.len();
                let ious: Vec<Vec<f64>> = d
                    .iter()
                    .map(|dt| {
                        g.iter()
                            .map(|gt| rle::iou(&dt.rle, &gt.rle, gt.crowd))
                            .collect()
                    })
                    .collect();
                for (a, &rng) in AREAS.iter().enumerate() {
                    evals[a].push(evaluate_img(g, d, &ious, rng, &iou_thrs));
                }
            }
            let mut precision = [[[None; T]; 3]; 4];
            let mut recall = [[[None; T]; 3]; 4];
            for a in 0..4 {
                let refs: Vec<&ImgEval> = evals[a].iter().collect();
                for (m, &md) in MAX_DETS.iter().enumerate() {
                    let (p, r) = accumulate(&refs, md, &rec_thrs);
                    precision[a][m] = p;
                    recall[a][m] = r;
                }
            }
            CategoryEval {
                precision,
                recall,
                gt: n_gt,
                dets: n_dt,
            }
        })
        .collect();
    let ap = |a: usize, m: usize, ts: std::ops::Range<usize>| {
        mean(
            per_category
                .iter()
                .flat_map(|c| c.precision[a][m][ts.clone()].iter().flatten().copied()),
        )
    };
    let ar = |a: usize, m: usize| {
        mean(
            per_category
                .iter()
                .flat_map(|c| c.recall[a][m].iter().flatten().copied()),
        )
    };
    let stats = [
        ap(0, 2, 0..T),
        ap(0, 2, 0..1),
        ap(0, 2, 5..6),
        ap(1, 2, 0..T),
        ap(2, 2, 0..T),
        ap(3, 2, 0..T),
        ar(0, 0),
        ar(0, 1),
        ar(0, 2),
        ar(1, 2),
        ar(2, 2),
        ar(3, 2),
    ];
    // Back to the dataset's category order.
    let mut by_index: Vec<Option<CategoryEval>> = vec![None; gt.categories.len()];
    for (c, e) in cat_order.iter().zip(per_category) {
        by_index[*c] = Some(e);
    }
    EvalResult {
        stats,
        per_category: by_index.into_iter().flatten().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_as_numpy() {
        let t: [f64; T] = linspace(0.5, 0.95);
        assert_eq!(t[0], 0.5);
        assert_eq!(t[5], 0.75);
        assert_eq!(t[9], 0.95);
        let r: [f64; R] = linspace(0.0, 1.0);
        assert_eq!(r[100], 1.0);
        assert_eq!(r[1], 0.01);
    }
}
