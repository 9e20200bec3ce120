//! `mpm-data pseudo --from-coco-results`: an instance segmenter's results -> pseudo part label
//! maps in the training layout (docs/part-labels.md).
//!
//! 1. The image table: one or more COCO files (`coco-export`'s `infer.json`, or any file whose
//!    images carry `wnid` or a `<wnid>/` file name) give each image id its file, size and class.
//! 2. Pass 1 streams the results and counts the usable records per image, and checks the
//!    category numbering (ids must be the global part ids 1..=K of `parts.tsv`; another
//!    numbering is an error before anything is written).
//! 3. Pass 2 streams them again; an image's records are buffered until its count is reached,
//!    then the image is done: memory holds the images still open (one at a time for the files
//!    detectron2 and mmdetection write, which group records by image) plus one batch.
//! 4. Per batch, in parallel: the Category Filter ([`super::filter`]; extended records exactly,
//!    standard ones per mask), masks with `score >= threshold` painted ([`super::paint`],
//!    inner parts over containers per `including/`), `seg/<wnid>/<stem>.png` written atomically.
//!
//! Layout and resumption (`super::super::layout`): the flag `1` of an image is written to
//! `whether_pseudo/<wnid>.txt` *before* its map, and removed again if the map cannot be made.
//! So on a rerun: flag 1 with a map = done (skipped; `--overwrite` repaints), flag 1 without a
//! map = interrupted (painted), flag 0 = annotated (kept, never overwritten), a map without a
//! flag = of unknown origin (kept, as `mpm-data pseudo` does).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde_json::json;

use super::dataset::{Dataset, ImageEntry};
use super::filter::{self, Candidate, CfOutcome};
use super::paint::{self, PaintDet};
use super::part_ap::{check_numbering, Counts};
use super::results::{self, RawDet};
use super::rle;
use crate::data::imageio;
use crate::data::layout::{self, Flags, ImageMode};
use crate::data::pin_json::{self, PartTable};
use crate::data::report::Skip;
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct CocoPseudoConfig {
    pub results: PathBuf,
    pub images_json: Vec<PathBuf>,
    pub parts: PathBuf,
    pub including: Option<PathBuf>,
    /// IMG_ROOT: `OUT/img/<wnid>/<file>` symlinks to IMG_ROOT/<file_name> when given.
    pub images_root: Option<PathBuf>,
    pub out: PathBuf,
    pub threshold: f64,
    pub category_filter: bool,
    pub same_mask_iou: f64,
    pub overwrite: bool,
    pub batch: usize,
    pub progress: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CocoPseudoSummary {
    pub images_in_table: usize,
    pub images_with_results: usize,
    pub written: usize,
    pub blank_maps: usize,
    pub kept_annotated: usize,
    pub kept_unknown_origin: usize,
    pub already_done: usize,
    pub masks_painted: u64,
    pub masks_below_threshold: u64,
    pub max_open_images: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub counts: Counts,
    pub skipped: Vec<Skip>,
    /// Folders synced once at the end (maps and image links are written without a
    /// per-file fsync).
    pub dirs_synced: usize,
    /// Temp files of killed earlier runs, removed at start.
    pub stale_temps_removed: usize,
}

/// What to do with a completed image.
enum Plan {
    Paint,
    KeptAnnotated,
    KeptUnknown,
    Done,
}

struct Job {
    image: usize,
    class: usize,
    dets: Vec<RawDet>,
}

/// Per-image outcome of the parallel part.
struct Painted {
    counts: Counts,
    masks: u64,
    below: u64,
    blank: bool,
    /// The image is skipped (its file under IMG_ROOT is missing).
    error: Option<String>,
    /// An output could not be written: the run stops with it.
    write_error: Option<Error>,
}

struct Ctx<'a> {
    cfg: &'a CocoPseudoConfig,
    images: &'a [ImageEntry],
    table: &'a PartTable,
    /// Class index of each global id (index 0 unused).
    class_of: Vec<usize>,
    depth_of: Vec<u32>,
    k: usize,
    bulk: &'a crate::io::BulkDirs,
}

fn seg_path(out: &Path, wnid: &str, im: &ImageEntry) -> PathBuf {
    out.join("seg")
        .join(wnid)
        .join(format!("{}.png", im.stem()))
}

fn paint_image(ctx: &Ctx, job: Job) -> Painted {
    let im = &ctx.images[job.image];
    let (h, w) = (im.height, im.width);
    let c = job.class;
    let mut counts = Counts::default();
    let own = |id: usize| ctx.class_of.get(id) == Some(&c);
    let mut standard: Vec<Candidate<()>> = Vec::new();
    let mut paint_dets: Vec<PaintDet> = Vec::new();
    for d in job.dets {
        if d.category_id < 1 || d.category_id as usize > ctx.k {
            counts.unknown_category += 1;
            continue;
        }
        let r = match rle::segmentation_to_rle(&d.segmentation, h, w) {
            Ok(r) if (r.h, r.w) == (h, w) => r,
            Ok(r) => {
                counts.size_mismatch += 1;
                counts.note(format!(
                    "record {}: mask {}x{}, image {} is {h}x{w}",
                    d.index, r.h, r.w, im.file_name
                ));
                continue;
            }
            Err(e) => {
                counts.malformed += 1;
                counts.note(format!("record {}: malformed mask: {e}", d.index));
                continue;
            }
        };
        let (mut id, mut score) = (d.category_id as usize, d.score);
        if ctx.cfg.category_filter {
            if let Some(s) = &d.scores {
                counts.extended_records += 1;
                match filter::cf_extended(s, ctx.k, |p| own(p + 1)) {
                    Err(e) => {
                        counts.malformed += 1;
                        counts.note(format!("record {}: {e}", d.index));
                        continue;
                    }
                    Ok(None) => {
                        counts.count_cf(CfOutcome::DroppedBackground);
                        continue;
                    }
                    Ok(Some((p, v))) => {
                        if p + 1 != id {
                            counts.count_cf(CfOutcome::Relabelled);
                        }
                        id = p + 1;
                        score = v as f64;
                    }
                }
            } else {
                standard.push(Candidate {
                    category: id,
                    score,
                    index: d.index,
                    rle: r,
                    payload: (),
                });
                continue;
            }
        }
        paint_dets.push(PaintDet {
            id: id as u16,
            score,
            depth: ctx.depth_of[id],
            index: d.index,
            rle: r,
        });
    }
    let (kept, outcomes) = filter::cf_standard(standard, own, ctx.cfg.same_mask_iou);
    for o in outcomes {
        counts.count_cf(o);
    }
    for k in kept {
        paint_dets.push(PaintDet {
            id: k.category as u16,
            score: k.score,
            depth: ctx.depth_of[k.category],
            index: k.index,
            rle: k.rle,
        });
    }
    let total = paint_dets.len() as u64;
    let (map, masks) = paint::paint(&mut paint_dets, h, w, ctx.cfg.threshold);
    let wnid = &ctx.table.wnids[c];
    let dst = seg_path(&ctx.cfg.out, wnid, im);
    let (mut error, mut write_error) = (None, None);
    match imageio::write_label_map(&dst, &map) {
        Ok(()) => ctx.bulk.wrote(&dst),
        Err(e) => write_error = Some(e),
    }
    if write_error.is_none() {
        if let Some(root) = &ctx.cfg.images_root {
            let src = root.join(&im.file_name);
            let img_dst = ctx.cfg.out.join("img").join(wnid).join(im.base_name());
            if std::fs::symlink_metadata(&img_dst).is_err() {
                match layout::place_image(&src, &img_dst, ImageMode::Symlink) {
                    Ok(()) => ctx.bulk.wrote(&img_dst),
                    // A missing source image is the input's fault: skipped and counted.
                    Err(e) if std::fs::metadata(&src).is_err() => error = Some(e.to_string()),
                    Err(e) => write_error = Some(e),
                }
            }
        }
    }
    Painted {
        counts,
        masks: masks as u64,
        below: total - masks as u64,
        blank: map.is_blank(),
        error,
        write_error,
    }
}

fn merge_counts(into: &mut Counts, from: Counts) {
    into.unknown_category += from.unknown_category;
    into.malformed += from.malformed;
    into.size_mismatch += from.size_mismatch;
    into.extended_records += from.extended_records;
    into.cf_relabelled += from.cf_relabelled;
    into.cf_dropped_other_class += from.cf_dropped_other_class;
    into.cf_dropped_background += from.cf_dropped_background;
    into.cf_dropped_duplicate += from.cf_dropped_duplicate;
    for e in from.examples {
        into.note(e);
    }
}

/// Flags of the classes touched, as on disk plus this run's changes.
struct FlagBook {
    out: PathBuf,
    flags: HashMap<String, (Flags, bool)>,
}

impl FlagBook {
    fn class(&mut self, wnid: &str) -> Result<&mut Flags> {
        if !self.flags.contains_key(wnid) {
            let f = layout::read_flags(&layout::flags_path(&self.out, wnid))?;
            self.flags.insert(wnid.to_string(), (f, false));
        }
        let e = self.flags.get_mut(wnid).expect("inserted above");
        Ok(&mut e.0)
    }
    fn set(&mut self, wnid: &str, file: &str, pseudo: Option<bool>) -> Result<()> {
        let f = self.class(wnid)?;
        match pseudo {
            Some(p) => f.insert(file.to_string(), p),
            None => f.remove(file),
        };
        self.flags.get_mut(wnid).expect("loaded").1 = true;
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        for (wnid, (f, dirty)) in self.flags.iter_mut() {
            if *dirty {
                layout::write_flags(&layout::flags_path(&self.out, wnid), f)?;
                *dirty = false;
            }
        }
        Ok(())
    }
}

pub fn run(cfg: &CocoPseudoConfig) -> Result<CocoPseudoSummary> {
    let start = Instant::now();
    if !(0.0..=1.0).contains(&cfg.threshold) {
        return Err(Error::flag("--score-threshold", "must be in [0, 1]"));
    }
    if cfg.images_json.is_empty() {
        return Err(Error::flag(
            "--images-json",
            "give the COCO file(s) listing the images the results refer to (coco-export's \
             infer.json / train.json / val.json)",
        ));
    }
    let table = PartTable::from_tsv(&cfg.parts)?;
    let k = table.num_parts();
    if k == 0 || k > u16::MAX as usize {
        return Err(Error::format(
            &cfg.parts,
            format!("{k} parts: expected 1..=65535"),
        ));
    }
    let mut class_of = vec![usize::MAX; k + 1];
    let mut depth_of = vec![0u32; k + 1];
    for (c, wnid) in table.wnids.iter().enumerate() {
        let first = table.first_id[c] as usize;
        for r in 0..table.names[c].len() {
            class_of[first + r] = c;
        }
        if let Some(dir) = &cfg.including {
            let p = pin_json::including_path(dir, wnid);
            if p.exists() {
                let pairs = pin_json::read_including(&p)?;
                let d = pin_json::paint_depths(&table.names[c], &pairs)
                    .map_err(|e| Error::format(&p, e))?;
                for (r, v) in d.into_iter().enumerate() {
                    depth_of[first + r] = v;
                }
            }
        }
    }
    let class_index: HashMap<&str, usize> = table
        .wnids
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i))
        .collect();
    // The image table, over all files given.
    let mut images: Vec<ImageEntry> = Vec::new();
    let mut by_id: HashMap<i64, usize> = HashMap::new();
    let mut summary = CocoPseudoSummary::default();
    for p in &cfg.images_json {
        let d = Dataset::read(p, false)?;
        for im in d.images {
            if by_id.insert(im.id, images.len()).is_some() {
                return Err(Error::format(
                    p,
                    format!(
                        "image id {} is also in an earlier --images-json file",
                        im.id
                    ),
                ));
            }
            images.push(im);
        }
    }
    summary.images_in_table = images.len();
    // Pass 1: usable records per image, and the numbering check.
    let mut expected: HashMap<usize, u32> = HashMap::new();
    let (mut out_of_range, mut saw_zero, mut seen) = (0u64, false, (i64::MAX, i64::MIN));
    let pb = crate::data::labels::progress_bar(0, cfg.progress, "pseudo: counting records");
    let total = results::stream(&cfg.results, |rec| {
        pb.inc(1);
        if let Ok(d) = rec {
            seen = (seen.0.min(d.category_id), seen.1.max(d.category_id));
            if d.category_id < 1 || d.category_id as usize > k {
                out_of_range += 1;
                saw_zero |= d.category_id == 0;
            }
            if let Some(&i) = by_id.get(&d.image_id) {
                *expected.entry(i).or_default() += 1;
            }
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    check_numbering(
        out_of_range,
        saw_zero,
        total,
        (1, k as i64),
        seen,
        &cfg.results,
    )?;
    summary.images_with_results = expected.len();
    // OUT/seg/<wnid>, OUT/img/<wnid>, OUT/whether_pseudo: two levels.
    summary.stale_temps_removed = crate::io::remove_stale_temps_tree(&cfg.out, 2)?;
    imageio::mkdirs(&cfg.out.join("seg"))?;
    let bulk = crate::io::BulkDirs::new(&cfg.out);
    let ctx = Ctx {
        cfg,
        images: &images,
        table: &table,
        class_of,
        depth_of,
        k,
        bulk: &bulk,
    };
    let mut book = FlagBook {
        out: cfg.out.clone(),
        flags: HashMap::new(),
    };
    let mut open: HashMap<usize, Vec<RawDet>> = HashMap::new();
    let mut ready: Vec<Job> = Vec::new();
    let mut counts = Counts::default();
    let mut seg_dirs: std::collections::BTreeSet<PathBuf> = Default::default();
    let pb = crate::data::labels::progress_bar(expected.len() as u64, cfg.progress, "pseudo");
    let mut run_batch = |ready: &mut Vec<Job>,
                         book: &mut FlagBook,
                         summary: &mut CocoPseudoSummary,
                         counts: &mut Counts|
     -> Result<()> {
        // Decide, then flag 1 before painting (see the module docs).
        let mut todo = Vec::new();
        for job in ready.drain(..) {
            let im = &images[job.image];
            let wnid = &table.wnids[job.class];
            let map_exists = seg_path(&cfg.out, wnid, im).exists();
            let flag = book.class(wnid)?.get(im.base_name()).copied();
            let plan = match (flag, map_exists) {
                (Some(false), _) => Plan::KeptAnnotated,
                (None, true) => Plan::KeptUnknown,
                (Some(true), true) if !cfg.overwrite => Plan::Done,
                _ => Plan::Paint,
            };
            match plan {
                Plan::KeptAnnotated => summary.kept_annotated += 1,
                Plan::KeptUnknown => summary.kept_unknown_origin += 1,
                Plan::Done => summary.already_done += 1,
                Plan::Paint => {
                    book.set(wnid, im.base_name(), Some(true))?;
                    let dir = cfg.out.join("seg").join(wnid);
                    if seg_dirs.insert(dir.clone()) {
                        imageio::mkdirs(&dir)?;
                        if cfg.images_root.is_some() {
                            imageio::mkdirs(&cfg.out.join("img").join(wnid))?;
                        }
                    }
                    todo.push(job);
                }
            }
        }
        book.flush()?;
        let n = todo.len();
        let keys: Vec<(usize, usize)> = todo.iter().map(|j| (j.image, j.class)).collect();
        let mut outs: Vec<Painted> = todo.into_par_iter().map(|j| paint_image(&ctx, j)).collect();
        // A failed write (a full disk, a read-only folder) stops the run: it is not the
        // image's fault, and a skip would report success over missing maps. Their flags stay
        // 1, so a rerun paints them (flag 1 without a map = interrupted).
        if let Some(e) = outs.iter_mut().find_map(|o| o.write_error.take()) {
            return Err(Error::Msg(format!("pseudo: cannot write an output: {e}")));
        }
        for ((image, class), o) in keys.into_iter().zip(outs) {
            merge_counts(counts, o.counts);
            let im = &images[image];
            if let Some(e) = o.error {
                book.set(&table.wnids[class], im.base_name(), None)?;
                summary.skipped.push(Skip::new(&im.file_name, e));
                continue;
            }
            summary.written += 1;
            summary.blank_maps += o.blank as usize;
            summary.masks_painted += o.masks;
            summary.masks_below_threshold += o.below;
        }
        book.flush()?;
        pb.inc(n as u64);
        Ok(())
    };
    let batch = cfg.batch.max(1);
    results::stream(&cfg.results, |rec| {
        counts.records += 1;
        let d = match rec {
            Ok(d) => d,
            Err(e) => {
                counts.malformed += 1;
                counts.note(format!("record {}: {e}", counts.records - 1));
                return Ok(());
            }
        };
        let Some(&image) = by_id.get(&d.image_id) else {
            counts.unknown_image += 1;
            counts.note(format!(
                "record {}: image_id {} is in no --images-json file",
                d.index, d.image_id
            ));
            return Ok(());
        };
        let left = expected.get_mut(&image).ok_or_else(|| {
            Error::format(&cfg.results, "the file changed between the two passes")
        })?;
        open.entry(image).or_default().push(d);
        *left -= 1;
        if *left == 0 {
            let dets = open.remove(&image).unwrap_or_default();
            let im = &images[image];
            match im.class_wnid().and_then(|w| class_index.get(w)) {
                Some(&class) => ready.push(Job { image, class, dets }),
                None => summary.skipped.push(Skip::new(
                    &im.file_name,
                    format!(
                        "class '{}' is not in {}: no Category Filter or part ids possible",
                        im.class_wnid().unwrap_or("?"),
                        cfg.parts.display()
                    ),
                )),
            }
        }
        summary.max_open_images = summary.max_open_images.max(open.len());
        if ready.len() >= batch {
            run_batch(&mut ready, &mut book, &mut summary, &mut counts)?;
        }
        Ok(())
    })?;
    run_batch(&mut ready, &mut book, &mut summary, &mut counts)?;
    pb.finish_and_clear();
    summary.dirs_synced = bulk.sync()?;
    summary.counts = counts;
    summary.seconds = start.elapsed().as_secs_f64();
    summary.images_per_second = summary.written as f64 / summary.seconds.max(1e-9);
    let report = serde_json::to_string_pretty(&json!({
        "results": cfg.results.display().to_string(),
        "category_filter": cfg.category_filter,
        "score_threshold": cfg.threshold,
        "same_mask_iou": cfg.same_mask_iou,
        "summary": summary,
    }))
    .map_err(|e| Error::Msg(format!("pseudo report: {e}")))?;
    imageio::write_atomic(&cfg.out.join("pseudo_coco_report.json"), report.as_bytes())?;
    Ok(summary)
}
