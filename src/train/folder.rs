//! Image-folder datasets through the data pipeline's loader (`crate::data`): decode, aligned
//! augmentation of image and label map, per-sample RNG `(seed, epoch, index)`.
//!
//! `train_dir` / `eval_dir` may be
//! - a directory in the reference layout: `DIR/img/<wnid>/<image>` and `DIR/seg/<wnid>/<stem>.png`
//!   (classes = sorted wnid directories; a missing `seg/` means no part maps), or
//! - a list file `<wnid>/<file> <class index>` per line (as `mpm-data labels` writes
//!   `train.txt` / `val.txt`), read relative to the `img/` and `seg/` folders next to it.
//!
//! Training batches use RandomResizedCrop (bicubic image, nearest map), flip and colour jitter;
//! evaluation batches resize to `input_size / 0.875` and centre-crop `input_size` (the
//! reference's crop_pct 0.875).

use super::config::TrainConfig;
use super::source::{epoch_order, Batch, BatchSource};
use crate::data::augment::{random_erase_pixel, sample_rng, TrainAug, Transform};
use crate::data::index::{read_list, scan_image_folder, Sample};
use crate::data::loader::{load_batch, LoaderConfig};
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

pub struct FolderSource {
    pub samples: Vec<Sample>,
    pub classes: usize,
    pub seg_classes: Option<usize>,
    pub loader: LoaderConfig,
    pub seed: u64,
    pub origin: PathBuf,
    /// Per sample: its map is a pseudo label (`whether_pseudo`); empty unless
    /// `use_whether_pseudo` (training data only, as the reference's loader).
    pub pseudo: Vec<bool>,
    /// Random erasing probability of training images (0 for evaluation sets).
    pub reprob: f64,
    /// Images dropped so far because they could not be loaded (each is also named once per
    /// load in a "skipped:" line).
    pub dropped: std::sync::atomic::AtomicUsize,
}

impl FolderSource {
    /// Counts `n` dropped images; returns the total so far.
    fn count_dropped(&self, n: usize) -> usize {
        use std::sync::atomic::Ordering;
        self.dropped.fetch_add(n, Ordering::Relaxed) + n
    }
}

/// Keeps the erasing draws apart from the augmentation's (same sample, another stream).
const ERASE_STREAM: u64 = 0xE4A5_E000_0000_0001;

/// Opens `dir` (see the module doc) as a batch source; `train` picks the augmentation.
pub fn open(cfg: &TrainConfig, dir: &str, key: &str, train: bool) -> Result<Box<dyn BatchSource>> {
    let flag = format!("--{}", key.replace('_', "-"));
    if dir.is_empty() {
        return Err(Error::flag(
            flag,
            "no dataset given (a directory with img/ and seg/, or a list file)",
        ));
    }
    let path = PathBuf::from(dir);
    if !path.exists() {
        return Err(Error::flag(
            flag,
            format!("{dir}: no such file or directory"),
        ));
    }
    let (samples, classes, base) = if path.is_dir() {
        let img = if path.join("img").is_dir() {
            path.join("img")
        } else {
            path.clone()
        };
        let seg = path.join("seg");
        let idx = scan_image_folder(&img, seg.is_dir().then_some(seg.as_path()), None)?;
        (idx.samples, idx.classes.len(), path.clone())
    } else {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let seg = base.join("seg");
        let (idx, skips) = read_list(
            &path,
            &base.join("img"),
            seg.is_dir().then_some(seg.as_path()),
        )?;
        if !skips.is_empty() {
            // Each with its line number (the reason says it), the first few in full.
            for s in skips.iter().take(MAX_LISTED_SKIPS) {
                eprintln!("{dir}: skipped: {s}");
            }
            eprintln!("{dir}: {} malformed line(s) skipped", skips.len());
        }
        if idx.classes.len() > cfg.num_classes {
            return Err(label_out_of_range(&path, cfg.num_classes));
        }
        let n = idx.classes.len();
        (idx.samples, n, base)
    };
    if samples.is_empty() {
        return Err(Error::flag(flag, format!("{dir}: no images found")));
    }
    if cfg.partmodel_type != "vanilla" && !cfg.use_object_seg && base.join("seg").is_dir() {
        let without = samples.iter().filter(|s| s.seg.is_none()).count();
        if without > 0 {
            // Not an error (PIN++ annotates a part of the images), but never silent: these
            // images train the classifier only (segmentation weight 0).
            eprintln!(
                "{dir}: {without} of {} images have no label map in {}; they get \
                 segmentation weight 0",
                samples.len(),
                base.join("seg").display()
            );
        }
    }
    let seg_classes = read_parts(&base.join("parts.tsv"));
    let pseudo = if train && cfg.use_whether_pseudo {
        read_whether_pseudo(&base.join("whether_pseudo"), &samples)?
    } else {
        Vec::new()
    };
    let transform = if train {
        Transform::Train(TrainAug {
            size: cfg.input_size,
            flip: cfg.hflip > 0.0,
            brightness: cfg.color_jitter as f32,
            contrast: cfg.color_jitter as f32,
            saturation: cfg.color_jitter as f32,
            ..TrainAug::default()
        })
    } else {
        Transform::Eval {
            resize: (cfg.input_size as f64 / 0.875).round() as usize,
            crop: cfg.input_size,
        }
    };
    Ok(Box::new(FolderSource {
        samples,
        classes,
        seg_classes,
        loader: LoaderConfig {
            transform,
            targets: None,
            seg_classes: (cfg.partmodel_type != "vanilla" && !cfg.use_object_seg)
                .then_some(cfg.seg_classes),
            seed: cfg.seed,
        },
        seed: cfg.seed,
        origin: path,
        pseudo,
        reprob: if train { cfg.reprob } else { 0.0 },
        dropped: Default::default(),
    }))
}

/// How many malformed list lines are printed one by one (all are counted).
const MAX_LISTED_SKIPS: usize = 5;

/// The first line of list file `list` whose class index is `num_classes` or more, as an error
/// naming the file, the line, the label and the valid range.
fn label_out_of_range(list: &Path, num_classes: usize) -> Error {
    let text = std::fs::read_to_string(list).unwrap_or_default();
    let found = text.lines().enumerate().find_map(|(i, line)| {
        let label = line.split_whitespace().nth(1)?.parse::<usize>().ok()?;
        (label >= num_classes && !line.trim_start().starts_with('#'))
            .then(|| (i + 1, label, line.trim().to_string()))
    });
    let range = format!(
        "--num-classes {num_classes} allows labels 0 to {}",
        num_classes.saturating_sub(1)
    );
    match found {
        Some((n, label, line)) => Error::format(
            list,
            format!("line {n}: label {label} is out of range ('{line}'): {range}"),
        ),
        None => Error::format(list, format!("a label is out of range: {range}")),
    }
}

/// The reference's `whether_pseudo/<wnid>.txt` flags (`<name> 0|1` per line; a path in `<name>`
/// counts by its last component), one per sample, looked up by the image's class folder and
/// file name. A missing file, a malformed line or an image without a line is an error naming
/// the file: the reference's loader fails on them too, and guessing would silently change the
/// loss weights.
pub fn read_whether_pseudo(dir: &Path, samples: &[Sample]) -> Result<Vec<bool>> {
    use std::collections::HashMap;
    let mut by_class: HashMap<String, (PathBuf, HashMap<String, bool>)> = HashMap::new();
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        let wnid = s
            .image
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = s
            .image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !by_class.contains_key(&wnid) {
            let file = dir.join(format!("{wnid}.txt"));
            let flags = parse_whether_pseudo(&file)?;
            by_class.insert(wnid.clone(), (file, flags));
        }
        let (file, flags) = &by_class[&wnid];
        match flags.get(&name) {
            Some(&f) => out.push(f),
            None => {
                return Err(Error::format(
                    file,
                    format!(
                        "no line for image '{name}' (use_whether_pseudo needs a '<name> 0|1' line                          for every training image of the class)"
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn parse_whether_pseudo(file: &Path) -> Result<std::collections::HashMap<String, bool>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Error::format(
            file,
            format!(
                "cannot read the pseudo-label flags ({e}); use_whether_pseudo = true needs                  whether_pseudo/<wnid>.txt for every class (`mpm-data labels` writes them)"
            ),
        )
    })?;
    let mut flags = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = || {
            Error::format(
                file,
                format!("line {}: '{line}': expected '<name> 0|1'", n + 1),
            )
        };
        let (name, flag) = line.rsplit_once(char::is_whitespace).ok_or_else(bad)?;
        let flag = match flag {
            "0" => false,
            "1" => true,
            _ => return Err(bad()),
        };
        let name = name.trim();
        let name = name.rsplit('/').next().unwrap_or(name);
        flags.insert(name.to_string(), flag);
    }
    Ok(flags)
}

/// `max id + 1` from a `parts.tsv` (`global_id<TAB>wnid<TAB>name`), when present.
fn read_parts(p: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(p).ok()?;
    text.lines()
        .filter_map(|l| l.split('\t').next()?.parse::<usize>().ok())
        .max()
        .map(|m| m + 1)
}

/// How many following samples a batch whose images all failed may try instead.
const MAX_REPLACEMENT_TRIES: usize = 64;

impl BatchSource for FolderSource {
    fn len(&self) -> usize {
        self.samples.len()
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn seg_classes(&self) -> Option<usize> {
        self.seg_classes
    }
    fn order(&self, epoch: usize, train: bool) -> Vec<usize> {
        epoch_order(self.samples.len(), self.seed, epoch, train)
    }
    fn load(&self, epoch: usize, indices: &[usize], train: bool) -> Result<Batch> {
        let (mut b, skips) = load_batch(&self.samples, indices, epoch as u64, &self.loader)?;
        for s in &skips {
            eprintln!("{}: skipped: {s}", self.origin.display());
        }
        if b.n < indices.len() {
            let total = self.count_dropped(indices.len() - b.n);
            eprintln!(
                "{}: epoch {epoch}: {} of {} images dropped from this batch ({total} dropped \
                 so far)",
                self.origin.display(),
                indices.len() - b.n,
                indices.len()
            );
        }
        if b.n == 0 && !indices.is_empty() {
            // Every image of this batch is bad (often a batch of one): drop them and take
            // the next loadable samples of the list instead, so that one undecodable file
            // cannot stop a run (nor a resume, which meets the same batch). Deterministic:
            // the replacements depend only on the indices.
            let n = self.samples.len();
            let start = indices.iter().copied().max().unwrap_or(0);
            let mut tried = 0;
            let mut next = start;
            while b.n == 0 && tried < n.min(MAX_REPLACEMENT_TRIES) {
                next = (next + 1) % n.max(1);
                tried += 1;
                if indices.contains(&next) {
                    continue;
                }
                let (r, skips) = load_batch(&self.samples, &[next], epoch as u64, &self.loader)?;
                for s in &skips {
                    eprintln!("{}: skipped: {s}", self.origin.display());
                }
                if r.n == 0 {
                    self.count_dropped(1);
                }
                if r.n > 0 {
                    eprintln!(
                        "{}: epoch {epoch}: no image of the batch could be loaded; sample \
                         {next} takes its place",
                        self.origin.display()
                    );
                    b = r;
                }
            }
        }
        if b.n == 0 {
            return Err(Error::Msg(format!(
                "{}: epoch {epoch}: none of the {} images asked for could be loaded",
                self.origin.display(),
                indices.len()
            )));
        }
        let mut images = b.images;
        if train && self.reprob > 0.0 {
            // Per image, from its own (seed, epoch, index) stream: a batch stays a pure
            // function of its position.
            let per = b.h * b.w * 3;
            for (k, &i) in b.indices.iter().enumerate() {
                let mut rng = sample_rng(self.seed ^ ERASE_STREAM, epoch as u64, i as u64);
                random_erase_pixel(
                    &mut images[k * per..(k + 1) * per],
                    b.h,
                    b.w,
                    self.reprob,
                    &mut rng,
                );
            }
        }
        Ok(Batch {
            images: Tensor::from_vec(&[b.n, b.h, b.w, 3], images)?,
            labels: b.labels.iter().map(|&l| l as usize).collect(),
            label_maps: b.label_maps,
            has_parts: b.seg_weight.iter().map(|&w| w > 0.0).collect(),
            pseudo: if self.pseudo.is_empty() {
                Vec::new()
            } else {
                b.indices.iter().map(|&i| self.pseudo[i]).collect()
            },
        })
    }
}
