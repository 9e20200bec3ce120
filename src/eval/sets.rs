//! The datasets of the robustness evaluations, each with the evaluation transform the paper's
//! authors use for it (their `eval_multi_dataset.py`, and the model-vs-human toolkit):
//!
//! - ImageNet-C (the released 224-px JPEGs), ImageNet-R, -Sketch, Stylized-ImageNet, -V2, -A and
//!   the clean val set: `Resize(256, bicubic)` of the shorter side + `CenterCrop(224)`
//!   ([`EvalTransform::ShorterSide`]). The authors apply it to ImageNet-C too, so its 224-px
//!   images are enlarged to 256 and cropped back to 224 (not passed through unchanged).
//! - ImageNet-A-Plus: `Resize((256, 256))` (a squash to a square, torchvision's default
//!   bilinear) + `CenterCrop(224)` ([`EvalTransform::Squash`]).
//! - model-vs-human stimuli: already 224 px, fed as they are ([`EvalTransform::AsIs`]), as the
//!   benchmark's loader does for its 224-px datasets.
//! - Corruptions on the fly: the IN-C generation pipeline (`Resize(256)` bilinear +
//!   `CenterCrop(224)`, the corruption with `mpm-data corrupt`'s per-image seed, a JPEG
//!   quality-85 round trip as the released files), then the ImageNet-C eval transform above.

use crate::attack::imagefolder::{EvalSet, ImageFolder};
use crate::attack::model::Dims;
use crate::data::corrupt::filters::{pil_resize, PilFilter};
use crate::data::corrupt::job::{image_seed, resize_center_crop};
use crate::data::corrupt::{corrupt, Corruption};
use crate::data::imageio::read_rgb;
use crate::{Error, Result};
use image::RgbImage;
use std::path::{Path, PathBuf};

/// How a decoded image becomes the model's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalTransform {
    /// Shorter side to `resize` (Pillow bicubic, or bilinear: `mpm-eval --interpolation`),
    /// centre crop `crop`.
    ShorterSide {
        resize: u32,
        crop: u32,
        bilinear: bool,
    },
    /// Whole image to `size x size` (Pillow bilinear), centre crop `crop`.
    Squash { size: u32, crop: u32 },
    /// The image as it is; it must be `crop x crop`.
    AsIs { crop: u32 },
}

impl EvalTransform {
    pub fn crop(self) -> u32 {
        match self {
            EvalTransform::ShorterSide { crop, .. }
            | EvalTransform::Squash { crop, .. }
            | EvalTransform::AsIs { crop } => crop,
        }
    }

    /// The standard eval transform for a model input of `crop` (256/224 of it, then `crop`).
    pub fn standard(crop: u32) -> Self {
        EvalTransform::ShorterSide {
            resize: crop * 256 / 224,
            crop,
            bilinear: false,
        }
    }

    /// The same transform with the shorter-side resize done by Pillow's bilinear filter
    /// (torchvision's default `Resize`: RobustBench's Res256Crop224) when `bilinear`. The
    /// other transforms keep their own filter (ImageNet-A-Plus's squash is bilinear by
    /// definition; model-vs-human stimuli are not resized).
    pub fn with_bilinear(self, bilinear: bool) -> Self {
        match self {
            EvalTransform::ShorterSide { resize, crop, .. } => EvalTransform::ShorterSide {
                resize,
                crop,
                bilinear,
            },
            other => other,
        }
    }

    pub fn describe(self) -> String {
        match self {
            EvalTransform::ShorterSide {
                resize,
                crop,
                bilinear,
            } => {
                let filter = if bilinear { "bilinear" } else { "bicubic" };
                format!("Resize({resize}, {filter}) + CenterCrop({crop})")
            }
            EvalTransform::Squash { size, crop } => {
                format!("Resize(({size}, {size}), bilinear) + CenterCrop({crop})")
            }
            EvalTransform::AsIs { crop } => format!("as is ({crop}x{crop})"),
        }
    }

    /// CHW values in [0, 1].
    pub fn apply(self, img: &RgbImage) -> Result<Vec<f32>> {
        match self {
            EvalTransform::ShorterSide {
                resize,
                crop,
                bilinear: false,
            } => crate::attack::imagefolder::eval_transform(img, resize, crop),
            EvalTransform::ShorterSide {
                resize,
                crop,
                bilinear: true,
            } => crate::attack::imagefolder::eval_transform_bilinear(img, resize, crop),
            EvalTransform::Squash { size, crop } => {
                let (w, h) = img.dimensions();
                if w == 0 || h == 0 {
                    return Err(Error::Msg("image has no pixels".into()));
                }
                let data = pil_resize(
                    img.as_raw(),
                    h as usize,
                    w as usize,
                    size as usize,
                    size as usize,
                    PilFilter::Bilinear,
                );
                let sq = RgbImage::from_raw(size, size, data)
                    .ok_or_else(|| Error::Msg("squash resize: buffer size".into()))?;
                if crop > size {
                    return Err(Error::flag("--crop", "crop larger than the squashed image"));
                }
                let off = ((size - crop) as f64 / 2.0).round_ties_even() as u32;
                let c = image::imageops::crop_imm(&sq, off, off, crop, crop).to_image();
                Ok(to_chw(&c))
            }
            EvalTransform::AsIs { crop } => {
                if img.dimensions() != (crop, crop) {
                    return Err(Error::Msg(format!(
                        "image is {}x{}, expected {crop}x{crop} (fed as it is, no resizing)",
                        img.width(),
                        img.height()
                    )));
                }
                Ok(to_chw(img))
            }
        }
    }
}

/// An RGB image as CHW f32 in [0, 1].
pub fn to_chw(img: &RgbImage) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0f32; 3 * w * h];
    for (p, px) in img.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * w * h + p] = px[c] as f32 / 255.0;
        }
    }
    out
}

/// The sorted sub-directory names of `root` (an ImageFolder's classes).
pub fn class_dirs(root: &Path, what: &str) -> Result<Vec<String>> {
    if !root.is_dir() {
        return Err(Error::format(
            root,
            format!("{what}: not a directory (missing dataset?)"),
        ));
    }
    let mut v: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

/// Checks that the class folders `found` are exactly `wnids`, naming what differs.
pub fn require_classes(root: &Path, what: &str, found: &[String], wnids: &[&str]) -> Result<()> {
    let missing: Vec<String> = wnids
        .iter()
        .filter(|w| !found.iter().any(|c| c == *w))
        .map(|w| w.to_string())
        .collect();
    let extra: Vec<String> = found
        .iter()
        .filter(|c| !wnids.contains(&c.as_str()))
        .cloned()
        .collect();
    if missing.is_empty() && extra.is_empty() {
        return Ok(());
    }
    let show = |v: &[String]| {
        let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        if v.len() > 5 {
            s.push_str(&format!(" and {} more", v.len() - 5));
        }
        s
    };
    Err(Error::format(
        root,
        format!(
            "{what}: {} class folders, expected the {} classes of the dataset: missing [{}], \
             unexpected [{}]",
            found.len(),
            wnids.len(),
            show(&missing),
            show(&extra),
        ),
    ))
}

/// Labelled image files read through an [`EvalTransform`] (and optionally corrupted first).
pub struct Images {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub items: Vec<(PathBuf, usize)>,
    pub transform: EvalTransform,
    pub corruption: Option<(Corruption, u8, u64)>,
    pub what: String,
}

impl Images {
    /// An ImageFolder tree (classes = sorted sub-directories) with `expected` classes.
    pub fn folder(
        root: &Path,
        expected: usize,
        transform: EvalTransform,
        what: &str,
    ) -> Result<Images> {
        if !root.is_dir() {
            return Err(Error::format(
                root,
                format!("{what}: not a directory (missing dataset?)"),
            ));
        }
        let f = ImageFolder::open(root, None, None, expected, 256, 224)?;
        Ok(Images {
            root: f.root,
            classes: f.classes,
            items: f.items,
            transform,
            corruption: None,
            what: what.to_string(),
        })
    }

    /// Checks that the class folders are exactly `wnids`, naming what differs.
    pub fn require_classes(&self, wnids: &[&str]) -> Result<()> {
        require_classes(&self.root, &self.what, &self.classes, wnids)
    }

    /// ImageNet-V2: folders named by class index (`0` .. `999`), labels = those numbers.
    pub fn relabel_by_index(&mut self, num_classes: usize) -> Result<()> {
        let idx: Vec<usize> = self
            .classes
            .iter()
            .map(|c| {
                c.parse::<usize>()
                    .ok()
                    .filter(|&v| v < num_classes)
                    .ok_or_else(|| {
                        Error::format(
                            &self.root,
                            format!(
                                "{}: folder '{c}' is not a class index below {num_classes} \
                             (ImageNet-V2 names its folders 0..999)",
                                self.what
                            ),
                        )
                    })
            })
            .collect::<Result<_>>()?;
        for it in &mut self.items {
            it.1 = idx[it.1];
        }
        let mut names = vec![String::new(); num_classes];
        for (c, &i) in self.classes.iter().zip(&idx) {
            names[i] = c.clone();
        }
        self.classes = names;
        Ok(())
    }

    fn load(&self, i: usize) -> Result<RgbImage> {
        let p = &self.items[i].0;
        let img = read_rgb(p)?;
        let Some((c, s, seed)) = self.corruption else {
            return Ok(img);
        };
        if img.width() == 0 || img.height() == 0 {
            return Err(Error::format(p, "image has no pixels"));
        }
        // The ImageNet-C pipeline: Resize(256) + CenterCrop(224) (bilinear), corrupt, JPEG 85.
        let crop = self.transform.crop();
        let pre = resize_center_crop(&img, crop * 256 / 224, crop);
        let rel = p.strip_prefix(&self.root).unwrap_or(p);
        let out = corrupt(&pre, c, s, image_seed(seed, rel))
            .map_err(|e| Error::format(p, e.to_string()))?;
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
            .encode_image(&out)
            .map_err(|e| Error::format(p, format!("JPEG round trip: {e}")))?;
        crate::data::imageio::decode_rgb(&bytes).map_err(|e| Error::format(p, e))
    }
}

impl EvalSet for Images {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn dims(&self) -> Dims {
        let c = self.transform.crop() as usize;
        Dims { c: 3, h: c, w: c }
    }
    fn label(&self, i: usize) -> usize {
        self.items[i].1
    }
    fn image(&self, i: usize) -> Result<Vec<f32>> {
        let img = self.load(i)?;
        self.transform
            .apply(&img)
            .map_err(|e| Error::format(&self.items[i].0, e.to_string()))
    }
    fn class_names(&self) -> Vec<String> {
        self.classes.clone()
    }
    fn describe(&self) -> String {
        let corr = match self.corruption {
            Some((c, s, seed)) => format!(", {} severity {s} on the fly (seed {seed})", c.name()),
            None => String::new(),
        };
        format!(
            "{} {}: {} images of {} classes, {}{corr}",
            self.what,
            self.root.display(),
            self.items.len(),
            self.classes.len(),
            self.transform.describe()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squash_and_as_is_transforms() {
        let img = RgbImage::from_fn(40, 20, |x, y| image::Rgb([x as u8 * 6, y as u8 * 12, 7]));
        let t = EvalTransform::Squash { size: 36, crop: 32 };
        let v = t.apply(&img).unwrap();
        assert_eq!(v.len(), 3 * 32 * 32);
        // Blue is constant 7 through any resize.
        assert!((v[2 * 32 * 32 + 100] - 7.0 / 255.0).abs() < 1e-6);
        let e = EvalTransform::AsIs { crop: 32 }
            .apply(&img)
            .unwrap_err()
            .to_string();
        assert!(e.contains("40x20") && e.contains("32x32"), "{e}");
        let sq = RgbImage::from_pixel(32, 32, image::Rgb([255, 0, 51]));
        let v = EvalTransform::AsIs { crop: 32 }.apply(&sq).unwrap();
        assert_eq!((v[0], v[1024], v[2048]), (1.0, 0.0, 0.2));
    }

    #[test]
    fn bilinear_changes_only_the_shorter_side_resize() {
        let img = RgbImage::from_fn(53, 41, |x, y| {
            image::Rgb([
                (x * 37 % 256) as u8,
                (y * 59 % 256) as u8,
                ((x * y) % 256) as u8,
            ])
        });
        let bicubic = EvalTransform::standard(32);
        let bilinear = bicubic.with_bilinear(true);
        assert_eq!(bilinear.with_bilinear(false), bicubic);
        assert!(
            bilinear.describe().contains("bilinear"),
            "{}",
            bilinear.describe()
        );
        assert!(
            bicubic.describe().contains("bicubic"),
            "{}",
            bicubic.describe()
        );
        let (a, b) = (bicubic.apply(&img).unwrap(), bilinear.apply(&img).unwrap());
        assert_eq!((a.len(), b.len()), (3 * 32 * 32, 3 * 32 * 32));
        assert!(a.iter().zip(&b).any(|(p, q)| (p - q).abs() > 1e-3));
        // The same as the attack's ImageFolder transform with the same filter.
        let want = crate::attack::imagefolder::eval_transform_bilinear(&img, 36, 32).unwrap();
        assert_eq!(b, want);
        // Transforms with a filter of their own keep it.
        let sq = EvalTransform::Squash { size: 36, crop: 32 };
        assert_eq!(sq.with_bilinear(true), sq);
    }
}
