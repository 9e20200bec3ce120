//! `mpm-data part-ap`: part AP of a segmenter's results (or of label maps) against a COCO
//! ground truth, with or without the Category Filter: Table 5's left half.
//!
//! Results are streamed ([`super::results`]); every record that cannot be scored is counted by
//! reason (unknown image, unknown category, malformed record or mask, mask of another size)
//! and up to 5 examples are kept. A file whose category ids are mostly outside the ground
//! truth's id range, or that uses id 0 (background in every toolkit, never a part: 0-based
//! label indices), is another numbering: an error, before any score is reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::ap::{self, Det, EvalResult};
use super::dataset::Dataset;
use super::filter::{self, Candidate, CfOutcome};
use super::instances;
use super::results;
use super::rle;
use crate::data::imageio;
use crate::{Error, Result};

/// What is scored.
#[derive(Clone, Debug)]
pub enum Source {
    /// A COCO results file (standard or extended form).
    Results(PathBuf),
    /// Label maps `SEG/<wnid>/<stem>.png`, with the labeller's probabilities
    /// `PROB/<wnid>/<stem>.png` when given (see [`super::instances`]).
    LabelMaps { seg: PathBuf, prob: Option<PathBuf> },
}

#[derive(Clone, Debug)]
pub struct PartApConfig {
    pub gt: PathBuf,
    pub source: Source,
    pub category_filter: bool,
    /// Standard-form CF: mask IoU at which two own-part detections are one object.
    pub same_mask_iou: f64,
}

/// Counts of what happened to the inputs.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Counts {
    pub records: u64,
    pub scored: u64,
    pub extended_records: u64,
    pub unknown_image: u64,
    pub unknown_category: u64,
    pub out_of_range_category: u64,
    pub malformed: u64,
    pub size_mismatch: u64,
    pub cf_relabelled: u64,
    pub cf_dropped_other_class: u64,
    pub cf_dropped_background: u64,
    pub cf_dropped_duplicate: u64,
    pub missing_maps: u64,
    pub examples: Vec<String>,
}

impl Counts {
    pub fn note(&mut self, what: String) {
        if self.examples.len() < 5 {
            self.examples.push(what);
        }
    }
    pub fn count_cf(&mut self, o: CfOutcome) {
        match o {
            CfOutcome::Kept => {}
            CfOutcome::Relabelled => self.cf_relabelled += 1,
            CfOutcome::DroppedOtherClass => self.cf_dropped_other_class += 1,
            CfOutcome::DroppedBackground => self.cf_dropped_background += 1,
            CfOutcome::DroppedDuplicate => self.cf_dropped_duplicate += 1,
        }
    }
}

/// Detects another category numbering (see the module docs): `Err` with the message.
pub fn check_numbering(
    out_of_range: u64,
    saw_zero: bool,
    total: u64,
    range: (i64, i64),
    seen: (i64, i64),
    file: &Path,
) -> Result<()> {
    if out_of_range > 0 && (saw_zero || out_of_range * 2 > total) {
        return Err(Error::format(
            file,
            format!(
                "the results use another category numbering: {out_of_range} of {total} \
                 detections have category ids outside the part range {}..={} (ids seen: {}..={}){}; \
                 category_id must be the global part id of the ground truth / parts.tsv",
                range.0,
                range.1,
                seen.0,
                seen.1,
                if saw_zero {
                    "; id 0 is background in every toolkit, so these look like 0-based label \
                     indices (map them through the dataset's category ids)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(())
}

pub struct PartApOutput {
    pub eval: EvalResult,
    pub counts: Counts,
    pub form: &'static str,
    pub json: Value,
}

fn image_classes(gt: &Dataset) -> Vec<Option<String>> {
    gt.images
        .iter()
        .map(|i| i.class_wnid().map(str::to_string))
        .collect()
}

/// Runs `part-ap` (no file written: the caller writes `json`).
pub fn run(cfg: &PartApConfig) -> Result<PartApOutput> {
    let gt = Dataset::read(&cfg.gt, true)?;
    if gt.categories.is_empty() || gt.images.is_empty() {
        return Err(Error::format(
            &cfg.gt,
            "the ground truth has no images or no categories",
        ));
    }
    let cat_wnid = gt.category_wnids();
    let img_wnid = image_classes(&gt);
    if cfg.category_filter {
        if let Some(i) = img_wnid.iter().position(Option::is_none) {
            return Err(Error::format(
                &cfg.gt,
                format!(
                    "--category-filter needs each image's class: image '{}' has no 'wnid' and \
                     its file_name has no <wnid>/ folder",
                    gt.images[i].file_name
                ),
            ));
        }
        if let Some(c) = cat_wnid.iter().position(Option::is_none) {
            return Err(Error::format(
                &cfg.gt,
                format!(
                    "--category-filter needs each part's class: category {} has no \
                     supercategory and its name no <wnid>/ prefix",
                    gt.categories[c].id
                ),
            ));
        }
    }
    // Sorted category ids: the positions of an extended `scores` vector.
    let mut by_id: Vec<usize> = (0..gt.categories.len()).collect();
    by_id.sort_by_key(|&c| gt.categories[c].id);
    let lo = gt.categories[by_id[0]].id;
    let hi = gt.categories[by_id[by_id.len() - 1]].id;
    let own = |image: usize, category: usize| img_wnid[image] == cat_wnid[category];
    let mut counts = Counts::default();
    let mut dets: Vec<Det> = Vec::new();
    let form;
    match &cfg.source {
        Source::Results(path) => {
            let mut standard: HashMap<usize, Vec<Candidate<()>>> = HashMap::new();
            let (mut saw_zero, mut seen) = (false, (i64::MAX, i64::MIN));
            let mut extended = 0u64;
            let total = results::stream(path, |rec| {
                counts.records += 1;
                let d = match rec {
                    Ok(d) => d,
                    Err(e) => {
                        counts.malformed += 1;
                        counts.note(format!("record {}: {e}", counts.records - 1));
                        return Ok(());
                    }
                };
                seen = (seen.0.min(d.category_id), seen.1.max(d.category_id));
                if d.category_id < lo || d.category_id > hi {
                    counts.out_of_range_category += 1;
                    saw_zero |= d.category_id == 0;
                    return Ok(());
                }
                let Some(&image) = gt.image_index.get(&d.image_id) else {
                    counts.unknown_image += 1;
                    counts.note(format!(
                        "record {}: image_id {} is not in the ground truth",
                        d.index, d.image_id
                    ));
                    return Ok(());
                };
                let Some(&category) = gt.category_index.get(&d.category_id) else {
                    counts.unknown_category += 1;
                    counts.note(format!(
                        "record {}: category_id {} is not in the ground truth",
                        d.index, d.category_id
                    ));
                    return Ok(());
                };
                let im = &gt.images[image];
                let r = match rle::segmentation_to_rle(&d.segmentation, im.height, im.width) {
                    Ok(r) => r,
                    Err(e) => {
                        counts.malformed += 1;
                        counts.note(format!("record {}: malformed mask: {e}", d.index));
                        return Ok(());
                    }
                };
                if (r.h, r.w) != (im.height, im.width) {
                    // Kept, as pycocotools keeps it: IoU -1, never a match.
                    counts.size_mismatch += 1;
                }
                let (mut category, mut score) = (category, d.score);
                if let Some(s) = &d.scores {
                    extended += 1;
                    if cfg.category_filter {
                        match filter::cf_extended(s, by_id.len(), |p| own(image, by_id[p])) {
                            Err(e) => {
                                counts.malformed += 1;
                                counts.note(format!("record {}: {e}", d.index));
                                return Ok(());
                            }
                            Ok(None) => {
                                counts.count_cf(CfOutcome::DroppedBackground);
                                return Ok(());
                            }
                            Ok(Some((p, v))) => {
                                if by_id[p] != category {
                                    counts.count_cf(CfOutcome::Relabelled);
                                }
                                category = by_id[p];
                                score = v as f64;
                            }
                        }
                    }
                } else if cfg.category_filter {
                    standard.entry(image).or_default().push(Candidate {
                        category,
                        score,
                        index: d.index,
                        rle: r,
                        payload: (),
                    });
                    return Ok(());
                }
                dets.push(Det {
                    image,
                    category,
                    score,
                    index: d.index,
                    rle: r,
                });
                Ok(())
            })?;
            check_numbering(
                counts.out_of_range_category,
                saw_zero,
                total,
                (lo, hi),
                seen,
                path,
            )?;
            counts.extended_records = extended;
            for (image, cands) in standard {
                let (kept, outcomes) =
                    filter::cf_standard(cands, |c| own(image, c), cfg.same_mask_iou);
                for o in outcomes {
                    counts.count_cf(o);
                }
                dets.extend(kept.into_iter().map(|c| Det {
                    image,
                    category: c.category,
                    score: c.score,
                    index: c.index,
                    rle: c.rle,
                }));
            }
            form = if extended == 0 {
                "standard"
            } else if extended == counts.records {
                "extended"
            } else {
                "mixed"
            };
        }
        Source::LabelMaps { seg, prob } => {
            form = if prob.is_some() {
                "label maps (score: mean probability)"
            } else {
                "label maps (score: 1.0, no probabilities)"
            };
            let mut next = 0u64;
            for (image, im) in gt.images.iter().enumerate() {
                let Some(w) = &img_wnid[image] else {
                    counts.missing_maps += 1;
                    counts.note(format!("{}: no class folder to find its map", im.file_name));
                    continue;
                };
                let p = seg.join(w).join(format!("{}.png", im.stem()));
                let map = match imageio::read_label_map(&p) {
                    Ok(m) => m,
                    Err(e) => {
                        counts.missing_maps += 1;
                        counts.note(e.to_string());
                        continue;
                    }
                };
                if (map.h, map.w) != (im.height, im.width) {
                    counts.size_mismatch += 1;
                    counts.note(format!(
                        "{}: {}x{}, the image is {}x{}",
                        p.display(),
                        map.h,
                        map.w,
                        im.height,
                        im.width
                    ));
                    continue;
                }
                let probs = match prob {
                    Some(root) => {
                        let pp = root.join(w).join(format!("{}.png", im.stem()));
                        match imageio::read_label_map(&pp) {
                            Ok(m) if (m.h, m.w) == (map.h, map.w) => Some(
                                m.data
                                    .iter()
                                    .map(|&v| v as f32 / 65535.0)
                                    .collect::<Vec<f32>>(),
                            ),
                            Ok(_) | Err(_) => {
                                counts.missing_maps += 1;
                                counts.note(format!(
                                    "{}: probability map missing or of another size",
                                    pp.display()
                                ));
                                continue;
                            }
                        }
                    }
                    None => None,
                };
                for r in instances::regions(&map, probs.as_deref()) {
                    counts.records += 1;
                    let Some(&category) = gt.category_index.get(&(r.id as i64)) else {
                        counts.unknown_category += 1;
                        counts.note(format!(
                            "{}: part id {} is not a category",
                            p.display(),
                            r.id
                        ));
                        continue;
                    };
                    if cfg.category_filter && !own(image, category) {
                        counts.count_cf(CfOutcome::DroppedOtherClass);
                        continue;
                    }
                    dets.push(Det {
                        image,
                        category,
                        score: r.score,
                        index: next,
                        rle: r.rle,
                    });
                    next += 1;
                }
            }
        }
    }
    counts.scored = dets.len() as u64;
    let eval = ap::evaluate(&gt, &dets);
    let json = report_json(cfg, &gt, &eval, &counts, form);
    Ok(PartApOutput {
        eval,
        counts,
        form,
        json,
    })
}

fn report_json(
    cfg: &PartApConfig,
    gt: &Dataset,
    e: &EvalResult,
    counts: &Counts,
    form: &str,
) -> Value {
    let mut j = json!({
        "gt": cfg.gt.display().to_string(),
        "source": match &cfg.source {
            Source::Results(p) => json!({"results": p.display().to_string()}),
            Source::LabelMaps { seg, prob } => json!({
                "label_maps": seg.display().to_string(),
                "probabilities": prob.as_ref().map(|p| p.display().to_string()),
            }),
        },
        "form": form,
        "category_filter": cfg.category_filter,
        "iou_type": "segm",
        "counts": counts,
        "gt_skipped": gt.skipped.len(),
    });
    for (k, v) in ap::STAT_NAMES.iter().zip(e.stats) {
        j[*k] = json!(v);
    }
    let mut by_id: Vec<usize> = (0..gt.categories.len()).collect();
    by_id.sort_by_key(|&c| gt.categories[c].id);
    j["per_category"] = Value::Array(
        by_id
            .iter()
            .map(|&c| {
                let ce = &e.per_category[c];
                json!({
                    "id": gt.categories[c].id,
                    "name": gt.categories[c].name,
                    "AP": ce.ap(0..ap::T),
                    "AP50": ce.ap(0..1),
                    "AP75": ce.ap(5..6),
                    "gt": ce.gt,
                    "detections": ce.dets,
                })
            })
            .collect(),
    );
    j
}
