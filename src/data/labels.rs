//! `mpm-data labels` (DESIGN.md contract C): PIN++ JSON -> 16-bit PNG label maps in the
//! reference training layout, `parts.tsv`, and a per-class train/val split.
//!
//! Output under `OUT`:
//! - `seg/<wnid>/<stem>.png`  label map of the image's size, value = global part id, 0 background
//! - `img/<wnid>/<file>`      the image (symlink to the source, or a copy with `--copy`)
//! - `whether_pseudo/<wnid>.txt`  `<file> 0` per written image (annotated; merged into an
//!   existing file, whose pseudo-label entries are kept): the reference's training layout
//! - `parts.tsv`              `global_id<TAB>wnid<TAB>part name`, no header
//! - `classes.tsv`            `class index<TAB>wnid<TAB>class name` (name from category_name.json)
//! - `train.txt`, `val.txt`   `<wnid>/<file> <class index>` (the format of the paper's 10K list);
//!   per class, `round(n * val_fraction)` images chosen by a seeded shuffle go to val
//! - `labels_report.json`     counts and every skipped item with its path and reason
//!
//! Paint order per image: annotations sorted by (inclusion depth of their part, JSON index),
//! stably; so an inner part is painted over its container, other overlaps: later wins.

use std::path::PathBuf;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::imageio::{self, LabelMap};
pub use super::layout::ImageMode;
use super::layout::{self, place_image};
use super::pin_json::{self, Discarded, PinClass, PinImage};
use super::report::{summarise, Skip};
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct LabelsConfig {
    pub json_dir: PathBuf,
    pub including: Option<PathBuf>,
    pub discarded: Option<PathBuf>,
    pub category_names: Option<PathBuf>,
    pub images: PathBuf,
    pub out: PathBuf,
    pub image_mode: ImageMode,
    pub val_fraction: f64,
    pub split_seed: u64,
    pub progress: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LabelsSummary {
    pub classes: usize,
    pub parts: usize,
    pub images_in_json: usize,
    pub written: usize,
    pub blank_maps: usize,
    pub discarded: usize,
    /// What `discarded_data.json` was understood as ("a list of 12 image names").
    pub discarded_format: String,
    /// Entries of `discarded_data.json` that name no image of the class files.
    pub discarded_unmatched: usize,
    pub train: usize,
    pub val: usize,
    pub empty_masks: usize,
    pub skipped: Vec<Skip>,
    pub warnings: Vec<Skip>,
    /// Folders synced once at the end (the maps and image links are written without a
    /// per-file fsync).
    pub dirs_synced: usize,
    /// Temp files of killed earlier runs, removed at start.
    pub stale_temps_removed: usize,
}

/// Everything a class needs to be painted, after the part table is known.
struct ClassJob<'a> {
    index: usize,
    class: &'a PinClass,
    first_id: u32,
    depths: Vec<u32>,
}

struct ClassResult {
    written: Vec<String>, // base names, in JSON order
    blank: usize,
    discarded: usize,
    empty_masks: usize,
    skipped: Vec<Skip>,
    warnings: Vec<Skip>,
    /// Writing an output failed: the run stops with this error.
    write_error: Option<String>,
}

/// Paints one image's label map. Errors are reasons to skip the image.
pub fn paint_image(
    img: &PinImage,
    class: &PinClass,
    first_id: u32,
    depths: &[u32],
) -> std::result::Result<(LabelMap, usize), String> {
    if let Some(p) = &img.problem {
        return Err(p.clone());
    }
    let (h, w) = (img.height, img.width);
    let mut order: Vec<(u32, usize)> = Vec::with_capacity(img.anns.len());
    for (i, a) in img.anns.iter().enumerate() {
        let r = class
            .rank(a.category_id)
            .ok_or_else(|| format!("category_id {} is not in 'categories'", a.category_id))?;
        order.push((depths.get(r).copied().unwrap_or(0), i));
    }
    order.sort(); // (depth, JSON index): stable by construction
    let mut map = LabelMap::zeros(h, w);
    let mut empty = 0;
    for (_, i) in order {
        let a = &img.anns[i];
        let id = first_id + class.rank(a.category_id).unwrap_or(0) as u32;
        let id = u16::try_from(id).map_err(|_| format!("global part id {id} exceeds 65535"))?;
        let m = a
            .segmentation
            .to_mask(h, w)
            .map_err(|e| format!("annotation {i} (category {}): {e}", a.category_id))?;
        if m.area() == 0 {
            empty += 1;
        }
        for (dst, &v) in map.data.iter_mut().zip(&m.data) {
            if v != 0 {
                *dst = id;
            }
        }
    }
    Ok((map, empty))
}

fn run_class(
    job: &ClassJob,
    cfg: &LabelsConfig,
    discarded: &Discarded,
    pb: &indicatif::ProgressBar,
) -> ClassResult {
    let c = job.class;
    let mut res = ClassResult {
        written: Vec::new(),
        blank: 0,
        discarded: 0,
        empty_masks: 0,
        skipped: Vec::new(),
        warnings: Vec::new(),
        write_error: None,
    };
    let seg_dir = cfg.out.join("seg").join(&c.wnid);
    let img_dir = cfg.out.join("img").join(&c.wnid);
    let mut dirs = vec![&seg_dir];
    if cfg.image_mode != ImageMode::None {
        dirs.push(&img_dir);
    }
    for d in dirs {
        if let Err(e) = imageio::mkdirs(d) {
            res.skipped
                .push(Skip::new(d, format!("class {} lost: {e}", c.wnid)));
            pb.inc(c.images.len() as u64);
            return res;
        }
    }
    for img in &c.images {
        pb.inc(1);
        if discarded.contains(&c.wnid, img) {
            res.discarded += 1;
            continue;
        }
        let src = cfg.images.join(&c.wnid).join(img.base_name());
        let outcome = (|| -> std::result::Result<(LabelMap, usize), Skip> {
            let rgb = imageio::read_rgb(&src).map_err(|e| Skip::from_error(&src, &e))?;
            if (rgb.width() as usize, rgb.height() as usize) != (img.width, img.height) {
                return Err(Skip::new(
                    &src,
                    format!(
                        "image is {}x{} (w x h), its JSON entry says {}x{}",
                        rgb.width(),
                        rgb.height(),
                        img.width,
                        img.height
                    ),
                ));
            }
            paint_image(img, c, job.first_id, &job.depths)
                .map_err(|r| Skip::new(&c.path, format!("{}: {r}", img.file_name)))
        })();
        let (map, empty) = match outcome {
            Ok(x) => x,
            Err(s) => {
                pb.suspend(|| eprintln!("skip {s}"));
                res.skipped.push(s);
                continue;
            }
        };
        let dst = seg_dir.join(format!("{}.png", img.stem()));
        let placed = imageio::write_label_map(&dst, &map)
            .and_then(|_| place_image(&src, &img_dir.join(img.base_name()), cfg.image_mode));
        if let Err(e) = placed {
            // An output that cannot be written (full disk, permissions) is not a bad input
            // to skip: the run fails instead of reporting success over missing maps.
            res.write_error = Some(e.to_string());
            return res;
        }
        if empty > 0 {
            res.empty_masks += empty;
            res.warnings.push(Skip::new(
                &c.path,
                format!("{}: {empty} annotation(s) paint no pixel", img.file_name),
            ));
        }
        if map.is_blank() {
            res.blank += 1;
        }
        res.written.push(img.base_name().to_string());
    }
    if let Err(e) = layout::mark_annotated(&cfg.out, &c.wnid, &res.written) {
        let p = layout::flags_path(&cfg.out, &c.wnid);
        res.skipped.push(Skip::new(
            &p,
            format!("whether_pseudo flags of {} not written: {e}", c.wnid),
        ));
    }
    res
}

/// Per-class split: a seeded shuffle of the written images; the first `round(n*val_fraction)`
/// go to val. Returns `(train, val)` base names, each sorted.
pub fn split_class(
    names: &[String],
    val_fraction: f64,
    seed: u64,
    class_index: usize,
) -> (Vec<String>, Vec<String>) {
    let mut v: Vec<String> = names.to_vec();
    v.sort();
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (class_index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    v.shuffle(&mut rng);
    let n_val = ((v.len() as f64) * val_fraction).round() as usize;
    let mut val = v[..n_val.min(v.len())].to_vec();
    let mut train = v[n_val.min(v.len())..].to_vec();
    val.sort();
    train.sort();
    (train, val)
}

/// Runs `mpm-data labels`. Fails only when nothing usable is left (no class file readable or
/// no label map written), or when the output cannot be created.
pub fn run_labels(cfg: &LabelsConfig) -> Result<LabelsSummary> {
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        return Err(Error::flag("--val-fraction", "must be in [0, 1)"));
    }
    let mut summary = LabelsSummary::default();
    let discarded = match &cfg.discarded {
        Some(p) => Discarded::read(p)?,
        None => Discarded::default(),
    };
    summary.discarded_format = discarded.describe();
    let class_names = match &cfg.category_names {
        Some(p) => match pin_json::read_category_names(p) {
            Ok(m) => m,
            Err(e) => {
                summary.warnings.push(Skip::new(p, format!("ignored: {e}")));
                Default::default()
            }
        },
        None => Default::default(),
    };
    let loaded = pin_json::load_classes(&cfg.json_dir, "labels")?;
    for s in &loaded.unreadable {
        eprintln!("skip class {s} (global ids of later classes shift by its part count)");
    }
    summary.skipped.extend(loaded.unreadable);
    summary.warnings.extend(loaded.warnings);
    for s in &loaded.dropped {
        eprintln!("skip {s}");
    }
    summary.skipped.extend(loaded.dropped);
    let (classes, table) = (loaded.classes, loaded.table);
    if let Some(p) = &cfg.discarded {
        let (n, examples) = discarded.unmatched(&classes);
        summary.discarded_unmatched = n;
        if n > 0 {
            summary.warnings.push(Skip::new(
                p,
                format!(
                    "{n} of its {} entries name no image of the class files (e.g. {})",
                    discarded.len(),
                    examples.join(", ")
                ),
            ));
        }
    }
    summary.classes = classes.len();
    summary.parts = table.num_parts();
    // OUT/seg/<wnid>, OUT/img/<wnid>, OUT/whether_pseudo: two levels.
    summary.stale_temps_removed = crate::io::remove_stale_temps_tree(&cfg.out, 2)?;
    imageio::mkdirs(&cfg.out)?;
    imageio::write_atomic(&cfg.out.join("parts.tsv"), table.to_tsv().as_bytes())?;
    let mut classes_tsv = String::new();
    for (i, c) in classes.iter().enumerate() {
        let name = class_names.get(&c.wnid).cloned().unwrap_or_default();
        classes_tsv.push_str(&format!("{i}\t{}\t{name}\n", c.wnid));
    }
    imageio::write_atomic(&cfg.out.join("classes.tsv"), classes_tsv.as_bytes())?;

    let mut jobs = Vec::new();
    for (i, c) in classes.iter().enumerate() {
        let depths = match pin_json::class_depths(cfg.including.as_deref(), c) {
            Ok(d) => d,
            Err(e) => {
                // Painting without the inclusion rule would put containers over their inner
                // parts: the class is left out rather than labelled wrongly.
                let s = Skip::new(&c.path, format!("class {} left out: {e}", c.wnid));
                eprintln!("skip {s}");
                summary.skipped.push(s);
                continue;
            }
        };
        jobs.push(ClassJob {
            index: i,
            class: c,
            first_id: table.first_id[i],
            depths,
        });
    }
    let total: usize = classes.iter().map(|c| c.images.len()).sum();
    summary.images_in_json = total;
    let pb = progress_bar(total as u64, cfg.progress, "labels");
    let results: Vec<ClassResult> = jobs
        .par_iter()
        .map(|j| run_class(j, cfg, &discarded, &pb))
        .collect();
    pb.finish_and_clear();
    if let Some(e) = results.iter().find_map(|r| r.write_error.clone()) {
        return Err(Error::Msg(format!("labels: cannot write an output: {e}")));
    }
    // Label maps and image links are written without per-file fsync; persist them once, per
    // directory (with the parents up to OUT).
    let bulk = crate::io::BulkDirs::new(&cfg.out);
    for j in &jobs {
        for sub in ["seg", "img"] {
            let d = cfg.out.join(sub).join(&j.class.wnid);
            if d.is_dir() {
                bulk.add_dir(&d);
            }
        }
    }
    summary.dirs_synced = bulk.sync()?;

    let mut train_txt = String::new();
    let mut val_txt = String::new();
    for (j, r) in jobs.iter().zip(results) {
        summary.written += r.written.len();
        summary.blank_maps += r.blank;
        summary.discarded += r.discarded;
        summary.empty_masks += r.empty_masks;
        summary.skipped.extend(r.skipped);
        summary.warnings.extend(r.warnings);
        let (train, val) = split_class(&r.written, cfg.val_fraction, cfg.split_seed, j.index);
        for n in &train {
            train_txt.push_str(&format!("{}/{n} {}\n", j.class.wnid, j.index));
        }
        for n in &val {
            val_txt.push_str(&format!("{}/{n} {}\n", j.class.wnid, j.index));
        }
        summary.train += train.len();
        summary.val += val.len();
    }
    imageio::write_atomic(&cfg.out.join("train.txt"), train_txt.as_bytes())?;
    imageio::write_atomic(&cfg.out.join("val.txt"), val_txt.as_bytes())?;
    let report = serde_json::to_string_pretty(&summary)
        .map_err(|e| Error::Msg(format!("labels report: {e}")))?;
    imageio::write_atomic(&cfg.out.join("labels_report.json"), report.as_bytes())?;
    if summary.written == 0 {
        return Err(Error::Msg(format!(
            "labels: no label map written ({} skipped, {} discarded); see {}",
            summary.skipped.len(),
            summary.discarded,
            cfg.out.join("labels_report.json").display()
        )));
    }
    Ok(summary)
}

impl LabelsSummary {
    /// Human-readable end-of-run summary.
    pub fn text(&self) -> String {
        let mut s = format!(
            "classes {}  parts {}  images in JSON {}  label maps written {} (all background {})  \
             discarded {} (list: {}, {} entries match no image)  skipped {}  train {}  val {}\n",
            self.classes,
            self.parts,
            self.images_in_json,
            self.written,
            self.blank_maps,
            self.discarded,
            self.discarded_format,
            self.discarded_unmatched,
            self.skipped.len(),
            self.train,
            self.val
        );
        if !self.skipped.is_empty() {
            s.push_str("skipped, by reason:\n");
            for (k, n) in summarise(&self.skipped) {
                s.push_str(&format!("  {n:>6}  {k}\n"));
            }
        }
        if !self.warnings.is_empty() {
            s.push_str(&format!(
                "warnings: {} (e.g. {})\n",
                self.warnings.len(),
                self.warnings[0]
            ));
        }
        s
    }
}

/// A progress bar on stderr (hidden when `show` is false or stderr is not a terminal).
pub fn progress_bar(len: u64, show: bool, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_prefix(what.to_string());
    pb
}
