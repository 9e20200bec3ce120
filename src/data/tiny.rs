//! `mpm-data tiny`: Tiny-PartImageNet++ (T-PIN++, the paper's appendix: Table S7, Figure S3).
//!
//! T-PIN++ is Tiny-ImageNet's (T-IN's) 200 classes and 500 training images per class, at full
//! IN-1K resolution and with PIN++ part labels (real or pseudo). It is built the way T-IN's
//! public generation script (`make_tiny_imagenet.py`, CS231N 2015; a copy lives in
//! hendrycks/outlier-exposure, `TinyImageNet/Tiny_ImageNet_dataset/`) builds T-IN:
//!
//! - **Classes**: the script reads them from a wnid file, it does not choose them. T-IN's list
//!   (`wnids.txt` of tiny-imagenet-200) is committed as `assets/tiny/wnids.txt` and used by
//!   default, so the classes are exactly T-IN's.
//! - **Images**: per class, the script draws `random.sample(candidates, 500)` with Python's
//!   `random.seed(42)` from the class's IN-1K *training* images that have a bounding-box XML,
//!   then 50 more from the rest as T-IN's validation set. Its candidates are a Python 2 `set`
//!   of paths, so the draw depends on Python 2's string hashes of the authors' paths, and the
//!   release renames every image (`<wnid>_<i>.JPEG`): T-IN's exact images cannot be recovered.
//!   This builder makes the same kind of draw, documented and reproducible instead: candidates =
//!   the class's training images that decode (header) and have a label map (and, with
//!   `--boxes`, a bounding-box XML, as the script requires), sorted by file name, shuffled by
//!   ChaCha8 seeded from `(seed, wnid)` (seed 42 by default, the script's); the first 500 are
//!   the training images, the next `--leaky-val` (default 0) T-IN-style validation images.
//! - **No resizing** (T-IN downsamples to 64x64; T-PIN++ keeps the IN-1K files as they are).
//! - **Evaluation**: T-IN's validation images come from the IN-1K *train* set, which the paper
//!   points out leaks labels (near-duplicates of training images); the paper re-evaluates on
//!   the IN-1K *val* set, so the default evaluation set here is the 200 classes' IN-1K val
//!   images (50 per class).
//!
//! Output (class index = rank of the wnid in sorted order, as everywhere in the project):
//!
//! ```text
//! OUT/train/img/<wnid>/<file>            symlinks (or copies) of the chosen training images
//! OUT/train/seg/<wnid>/<stem>.png        their label maps
//! OUT/train/whether_pseudo/<wnid>.txt    the source's real/pseudo flags of those images
//! OUT/train/train.txt                    "<wnid>/<file> <class index>" per image
//! OUT/val/img/<wnid>/<file>              the 200 classes' IN-1K val images (with --val)
//! OUT/val/val.txt                        "<wnid>/<file> <class index>"
//! OUT/leaky_val/...                      T-IN-style validation from train (with --leaky-val K)
//! OUT/wnids.txt                          the classes in class-index order
//! OUT/tiny_report.json                   settings, counts, every skipped input and why
//! ```
//!
//! Re-running over the same OUT redoes the links (identical ones are kept) and rewrites the
//! lists atomically: an interrupted run is finished by running it again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::imageio;
use super::layout::{self, ImageMode};
use super::report::Skip;
use crate::{Error, Result};

/// T-IN's 200 classes (`wnids.txt` of tiny-imagenet-200, the release's order).
pub const TIN_WNIDS: &str = include_str!("../../assets/tiny/wnids.txt");

/// T-IN's generation script's default seed.
pub const TIN_SEED: u64 = 42;

#[derive(Clone, Debug)]
pub struct TinyConfig {
    /// IN-1K training images: `TRAIN/img/<wnid>/<file>` (the training layout) or
    /// `TRAIN/<wnid>/<file>`.
    pub train: PathBuf,
    /// Label maps `SEG/<wnid>/<stem>.png`; `None`: `TRAIN/seg` when the training layout is
    /// used.
    pub seg: Option<PathBuf>,
    /// Build without part labels (plain Tiny-ImageNet at full resolution).
    pub no_seg: bool,
    /// ILSVRC training bounding boxes `BOXES/<wnid>/<stem>.xml`: only images that have one are
    /// candidates, as in T-IN's script.
    pub boxes: Option<PathBuf>,
    /// IN-1K val images `VAL/<wnid>/<file>` (or `VAL/img/<wnid>/<file>`).
    pub val: Option<PathBuf>,
    pub out: PathBuf,
    /// Class list (one wnid per line, '#' comments); `None`: T-IN's.
    pub wnids: Option<PathBuf>,
    pub images_per_class: usize,
    pub val_per_class: usize,
    pub leaky_val: usize,
    pub seed: u64,
    pub image_mode: ImageMode,
    pub progress: bool,
}

impl Default for TinyConfig {
    fn default() -> Self {
        TinyConfig {
            train: PathBuf::new(),
            seg: None,
            no_seg: false,
            boxes: None,
            val: None,
            out: PathBuf::new(),
            wnids: None,
            images_per_class: 500,
            val_per_class: 50,
            leaky_val: 0,
            seed: TIN_SEED,
            image_mode: ImageMode::Symlink,
            progress: true,
        }
    }
}

#[derive(Debug, Default)]
pub struct TinySummary {
    pub classes: usize,
    pub train_images: usize,
    pub val_images: usize,
    pub leaky_val_images: usize,
    /// Classes with fewer usable images than asked: (wnid, split, found).
    pub short: Vec<(String, &'static str, usize)>,
    pub skipped: Vec<Skip>,
}

impl TinySummary {
    pub fn text(&self) -> String {
        let mut s = format!(
            "tiny: {} classes, {} training images, {} val images{}, {} input(s) skipped\n",
            self.classes,
            self.train_images,
            self.val_images,
            if self.leaky_val_images > 0 {
                format!(", {} T-IN-style val images", self.leaky_val_images)
            } else {
                String::new()
            },
            self.skipped.len()
        );
        for (w, split, n) in &self.short {
            s += &format!("  note: {w}: only {n} usable {split} image(s)\n");
        }
        s
    }
}

/// Parses a class list: one wnid per line, '#' comments; duplicates are an error.
pub fn parse_wnids(text: &str, origin: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let w = line.trim();
        if w.is_empty() || w.starts_with('#') {
            continue;
        }
        let w = w.split_whitespace().next().unwrap_or(w);
        if out.iter().any(|o| o == w) {
            return Err(Error::format(
                origin,
                format!("line {}: {w} listed twice", i + 1),
            ));
        }
        out.push(w.to_string());
    }
    if out.is_empty() {
        return Err(Error::format(origin, "no wnid listed"));
    }
    Ok(out)
}

/// The image folder under a root that may be in the training layout (`ROOT/img`).
fn image_root(root: &Path) -> PathBuf {
    let img = root.join("img");
    if img.is_dir() {
        img
    } else {
        root.to_path_buf()
    }
}

fn is_image_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "jpeg" | "jpg" | "png"))
}

/// The image files of a class directory, sorted by name (other files are not candidates).
fn class_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image_name(p))
        .collect();
    v.sort();
    Ok(v)
}

/// A per-class seed: the choice for one class does not depend on the others.
fn class_seed(seed: u64, wnid: &str) -> u64 {
    // FNV-1a of the wnid, mixed with the seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in wnid.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}

/// An image whose header does not decode is skipped with the decoder's reason.
fn check_header(p: &Path) -> std::result::Result<(), String> {
    image::ImageReader::open(p)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_dimensions()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn write_list(path: &Path, rows: &[(String, usize)]) -> Result<()> {
    let mut s = String::with_capacity(rows.len() * 40);
    for (rel, label) in rows {
        s += &format!("{rel} {label}\n");
    }
    imageio::write_atomic(path, s.as_bytes())
}

pub fn run_tiny(cfg: &TinyConfig) -> Result<TinySummary> {
    if cfg.images_per_class == 0 {
        return Err(Error::flag("--images-per-class", "must be at least 1"));
    }
    let wnids = match &cfg.wnids {
        None => parse_wnids(TIN_WNIDS, "assets/tiny/wnids.txt")?,
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            parse_wnids(&t, &p.display().to_string())?
        }
    };
    let train_img = image_root(&cfg.train);
    if !train_img.is_dir() {
        return Err(Error::flag(
            "--train",
            format!("{}: no such directory", cfg.train.display()),
        ));
    }
    let seg_root = match (&cfg.seg, cfg.no_seg) {
        (_, true) => None,
        (Some(s), false) => Some(s.clone()),
        (None, false) => Some(cfg.train.join("seg")),
    };
    if let Some(s) = &seg_root {
        if !s.is_dir() {
            return Err(Error::flag(
                "--seg",
                format!(
                    "{}: no label-map folder (T-PIN++ needs part labels; give --seg SEG, or \
                     --no-seg for plain Tiny-ImageNet at full resolution)",
                    s.display()
                ),
            ));
        }
    }
    // Every class must be there: a T-PIN++ with missing classes would train a different task.
    let missing: Vec<&String> = wnids
        .iter()
        .filter(|w| !train_img.join(w).is_dir())
        .collect();
    if !missing.is_empty() {
        return Err(Error::flag(
            "--train",
            format!(
                "{} of the {} classes have no folder in {}: {}{}",
                missing.len(),
                wnids.len(),
                train_img.display(),
                missing
                    .iter()
                    .take(10)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.len() > 10 { ", ..." } else { "" }
            ),
        ));
    }
    let val_img = cfg.val.as_deref().map(image_root);
    if let Some(v) = &val_img {
        let missing: Vec<&String> = wnids.iter().filter(|w| !v.join(w).is_dir()).collect();
        if !missing.is_empty() {
            return Err(Error::flag(
                "--val",
                format!(
                    "{} of the {} classes have no folder in {} (expected the IN-1K val set \
                     sorted into <wnid>/ folders): {}",
                    missing.len(),
                    wnids.len(),
                    v.display(),
                    missing
                        .iter()
                        .take(10)
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let mut sorted = wnids.clone();
    sorted.sort();
    let label_of: BTreeMap<&str, usize> = sorted
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i))
        .collect();

    let train_out = cfg.out.join("train");
    let leaky_out = cfg.out.join("leaky_val");
    let val_out = cfg.out.join("val");
    imageio::mkdirs(&cfg.out)?;
    let mut sum = TinySummary {
        classes: wnids.len(),
        ..Default::default()
    };
    let mut train_rows: Vec<(String, usize)> = Vec::new();
    let mut leaky_rows: Vec<(String, usize)> = Vec::new();
    let mut val_rows: Vec<(String, usize)> = Vec::new();
    let pb = super::labels::progress_bar(wnids.len() as u64, cfg.progress, "tiny");
    for wnid in &wnids {
        let label = label_of[wnid.as_str()];
        let flags = layout::read_flags(&layout::flags_path(&cfg.train, wnid))?;
        let mut candidates = Vec::new();
        for p in class_images(&train_img.join(wnid))? {
            if let Some(b) = &cfg.boxes {
                if !b.join(wnid).join(format!("{}.xml", stem(&p))).is_file() {
                    // Not a skip: T-IN's script only ever considers boxed images.
                    continue;
                }
            }
            let seg = seg_root
                .as_ref()
                .map(|s| s.join(wnid).join(format!("{}.png", stem(&p))));
            if let Some(s) = &seg {
                if !s.is_file() {
                    sum.skipped
                        .push(Skip::new(&p, format!("no label map {}", s.display())));
                    continue;
                }
            }
            if let Err(e) = check_header(&p) {
                sum.skipped
                    .push(Skip::new(&p, format!("image does not decode: {e}")));
                continue;
            }
            candidates.push((p, seg));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(class_seed(cfg.seed, wnid));
        candidates.shuffle(&mut rng);
        let n_train = cfg.images_per_class.min(candidates.len());
        if n_train < cfg.images_per_class {
            sum.short.push((wnid.clone(), "training", n_train));
        }
        let rest = &candidates[n_train..];
        let n_leaky = cfg.leaky_val.min(rest.len());
        if n_leaky < cfg.leaky_val {
            sum.short.push((wnid.clone(), "T-IN-style val", n_leaky));
        }
        for (root, chosen, rows) in [
            (&train_out, &candidates[..n_train], &mut train_rows),
            (&leaky_out, &rest[..n_leaky], &mut leaky_rows),
        ] {
            if chosen.is_empty() {
                continue;
            }
            let mut chosen: Vec<&(PathBuf, Option<PathBuf>)> = chosen.iter().collect();
            chosen.sort();
            let img_dir = root.join("img").join(wnid);
            imageio::mkdirs(&img_dir)?;
            let mut class_flags = layout::Flags::new();
            for (p, seg) in chosen {
                let name = file_name(p);
                layout::place_image(p, &img_dir.join(&name), cfg.image_mode)?;
                if let Some(s) = seg {
                    let seg_dir = root.join("seg").join(wnid);
                    imageio::mkdirs(&seg_dir)?;
                    layout::place_image(
                        s,
                        &seg_dir.join(format!("{}.png", stem(p))),
                        cfg.image_mode,
                    )?;
                }
                if let Some(&f) = flags.get(&name) {
                    class_flags.insert(name.clone(), f);
                }
                rows.push((format!("{wnid}/{name}"), label));
            }
            if !class_flags.is_empty() {
                layout::write_flags(&layout::flags_path(root, wnid), &class_flags)?;
            }
        }
        if let Some(v) = &val_img {
            let mut files = Vec::new();
            for p in class_images(&v.join(wnid))? {
                match check_header(&p) {
                    Ok(()) => files.push(p),
                    Err(e) => sum
                        .skipped
                        .push(Skip::new(&p, format!("image does not decode: {e}"))),
                }
            }
            // IN-1K val has exactly 50 per class; a larger folder keeps its first k by name.
            if files.len() < cfg.val_per_class {
                sum.short.push((wnid.clone(), "val", files.len()));
            }
            files.truncate(cfg.val_per_class);
            let dir = val_out.join("img").join(wnid);
            imageio::mkdirs(&dir)?;
            for p in files {
                let name = file_name(&p);
                layout::place_image(&p, &dir.join(&name), cfg.image_mode)?;
                val_rows.push((format!("{wnid}/{name}"), label));
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    train_rows.sort();
    leaky_rows.sort();
    val_rows.sort();
    write_list(&train_out.join("train.txt"), &train_rows)?;
    if !leaky_rows.is_empty() {
        write_list(&leaky_out.join("leaky_val.txt"), &leaky_rows)?;
    }
    if !val_rows.is_empty() {
        write_list(&val_out.join("val.txt"), &val_rows)?;
    }
    let mut w = sorted.join("\n");
    w.push('\n');
    imageio::write_atomic(&cfg.out.join("wnids.txt"), w.as_bytes())?;
    sum.train_images = train_rows.len();
    sum.leaky_val_images = leaky_rows.len();
    sum.val_images = val_rows.len();
    let report = json!({
        "train": cfg.train,
        "seg": seg_root,
        "boxes": cfg.boxes,
        "val": cfg.val,
        "class_list": cfg.wnids.as_ref().map_or("assets/tiny/wnids.txt (T-IN)".to_string(), |p| p.display().to_string()),
        "seed": cfg.seed,
        "images_per_class": cfg.images_per_class,
        "val_per_class": cfg.val_per_class,
        "leaky_val": cfg.leaky_val,
        "classes": sum.classes,
        "train_images": sum.train_images,
        "val_images": sum.val_images,
        "leaky_val_images": sum.leaky_val_images,
        "short": sum.short.iter().map(|(w, s, n)| json!({"wnid": w, "split": s, "found": n})).collect::<Vec<_>>(),
        "skipped": sum.skipped,
    });
    let text = serde_json::to_string_pretty(&report).map_err(|e| Error::Msg(e.to_string()))?;
    imageio::write_atomic(&cfg.out.join("tiny_report.json"), text.as_bytes())?;
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_class_list_is_t_in_s() {
        let w = parse_wnids(TIN_WNIDS, "x").unwrap();
        assert_eq!(w.len(), 200);
        // wnids.txt of tiny-imagenet-200 begins and ends with these.
        assert_eq!(&w[..3], ["n02124075", "n04067472", "n04540053"]);
        assert_eq!(w[199], "n02504458");
    }

    #[test]
    fn class_lists_reject_duplicates_and_empty_files() {
        assert!(parse_wnids("# only a comment\n", "x").is_err());
        let e = parse_wnids("n1\nn2\nn1\n", "list.txt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("list.txt") && e.contains("line 3"), "{e}");
    }
}
