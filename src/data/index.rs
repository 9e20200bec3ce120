//! Sample indexes: an ImageFolder tree (`root/<wnid>/<image>`) or a list file
//! (`<wnid>/<file> <class index>` per line, the paper's 10K list form), joined with label maps
//! (`seg_root/<wnid>/<stem>.png`), and balanced `k`-per-class subsets.
//!
//! Index file (`mpm-data index --out`): `#` comment lines, then
//! `<image path>\t<class index>\t<label map path or ->` per sample.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::report::Skip;
use crate::{Error, Result};

/// One sample: image, class index, optional label map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub image: PathBuf,
    pub label: usize,
    pub seg: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    /// Class wnids, index = class label.
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

const IMAGE_EXTS: [&str; 5] = ["jpeg", "jpg", "png", "bmp", "webp"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_dir(p: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(p)
        .map_err(|e| Error::io(p, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

fn seg_for(seg_root: Option<&Path>, wnid: &str, image: &Path) -> Option<PathBuf> {
    let stem = image.file_stem()?.to_str()?;
    let p = seg_root?.join(wnid).join(format!("{stem}.png"));
    p.exists().then_some(p)
}

/// Scans `root/<class dir>/<image>` (classes = sorted directory names, like torchvision's
/// ImageFolder; `classes` overrides the list, e.g. to keep the 1000-class order with a subset).
pub fn scan_image_folder(
    root: &Path,
    seg_root: Option<&Path>,
    classes: Option<Vec<String>>,
) -> Result<Index> {
    let classes = match classes {
        Some(c) => c,
        None => sorted_dir(root)?
            .into_iter()
            .filter(|p| p.is_dir())
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect(),
    };
    let mut samples = Vec::new();
    for (label, wnid) in classes.iter().enumerate() {
        let dir = root.join(wnid);
        if !dir.is_dir() {
            continue;
        }
        for p in sorted_dir(&dir)? {
            if is_image(&p) {
                let seg = seg_for(seg_root, wnid, &p);
                samples.push(Sample {
                    image: p,
                    label,
                    seg,
                });
            }
        }
    }
    Ok(Index { classes, samples })
}

/// Reads a list file of `<wnid>/<file> <class index>` lines relative to `root`. Malformed lines
/// are skipped and returned.
pub fn read_list(list: &Path, root: &Path, seg_root: Option<&Path>) -> Result<(Index, Vec<Skip>)> {
    let text = std::fs::read_to_string(list).map_err(|e| Error::io(list, e))?;
    let mut idx = Index::default();
    let mut skips = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(rel), Some(lab), None) = (it.next(), it.next(), it.next()) else {
            skips.push(Skip::new(
                list,
                format!("line {}: expected '<wnid>/<file> <class>'", i + 1),
            ));
            continue;
        };
        let (Some((wnid, _)), Ok(label)) = (rel.split_once('/'), lab.parse::<usize>()) else {
            skips.push(Skip::new(
                list,
                format!("line {}: expected '<wnid>/<file> <class>'", i + 1),
            ));
            continue;
        };
        if idx.classes.len() <= label {
            idx.classes.resize(label + 1, String::new());
        }
        if idx.classes[label].is_empty() {
            idx.classes[label] = wnid.to_string();
        }
        let image = root.join(rel);
        let seg = seg_for(seg_root, wnid, &image);
        idx.samples.push(Sample { image, label, seg });
    }
    Ok((idx, skips))
}

/// `k` samples per class chosen by a seeded shuffle (classes with fewer keep all), in index order.
pub fn balanced_subset(idx: &Index, k: usize, seed: u64) -> Index {
    let mut per: Vec<Vec<usize>> = vec![Vec::new(); idx.classes.len().max(1)];
    for (i, s) in idx.samples.iter().enumerate() {
        if s.label >= per.len() {
            per.resize(s.label + 1, Vec::new());
        }
        per[s.label].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut keep: Vec<usize> = Vec::new();
    for v in per.iter_mut() {
        v.shuffle(&mut rng);
        keep.extend(v.iter().take(k));
    }
    keep.sort_unstable();
    Index {
        classes: idx.classes.clone(),
        samples: keep.into_iter().map(|i| idx.samples[i].clone()).collect(),
    }
}

impl Index {
    /// The index file text (see the module docs).
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "# mpm-data index: image<TAB>class<TAB>label map or -\n# classes\t{}\n",
            self.classes.join(",")
        );
        for x in &self.samples {
            s.push_str(&format!(
                "{}\t{}\t{}\n",
                x.image.display(),
                x.label,
                x.seg
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "-".into())
            ));
        }
        s
    }

    /// Reads an index file written by [`Index::to_text`].
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut idx = Index::default();
        for (i, line) in text.lines().enumerate() {
            if let Some(c) = line.strip_prefix("# classes\t") {
                idx.classes = c
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            let label = f.get(1).and_then(|x| x.parse().ok());
            let (3, Some(label)) = (f.len(), label) else {
                return Err(Error::format(
                    path,
                    format!("line {}: expected 3 tab-separated fields", i + 1),
                ));
            };
            idx.samples.push(Sample {
                image: PathBuf::from(f[0]),
                label,
                seg: (f[2] != "-").then(|| PathBuf::from(f[2])),
            });
        }
        Ok(idx)
    }

    /// Samples with a label map.
    pub fn with_maps(&self) -> usize {
        self.samples.iter().filter(|s| s.seg.is_some()).count()
    }
}
