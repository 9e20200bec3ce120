//! Evaluation datasets for `mpm-attack`: contract B's safetensors file (`input` [N,3,H,W] in
//! [0,1], `target` [N]) held in memory, and ImageFolder trees (`root/<class>/<image>`, classes
//! = sorted sub-directories, as torchvision) read lazily, optionally through a list file
//! (`<class>/<file> [label]` per line, e.g. the paper's balanced 10K list) or the first k
//! images per class. Decoding and the eval transform (resize the shorter side to `resize`,
//! Pillow-matching bicubic, centre crop `crop` with torchvision's rounding) are the data
//! pipeline's (`data::imageio`, `data::augment`), so training and evaluation share them.

use super::model::Dims;
use crate::io::{self, HostData, HostTensor};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// A labelled evaluation set.
pub trait EvalSet {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn dims(&self) -> Dims;
    fn label(&self, i: usize) -> usize;
    /// Image `i`, NCHW (without N) in [0, 1].
    fn image(&self, i: usize) -> Result<Vec<f32>>;
    /// Names of the classes, by index (empty when unknown).
    fn class_names(&self) -> Vec<String>;
    /// One line saying what was loaded.
    fn describe(&self) -> String;
    /// Feeds what identifies sample `i` (its content, or where it comes from and its size)
    /// and its label to `h`: the journal is keyed by these, in order. The default hashes
    /// the decoded image, which is exact but decodes; file-backed sets override it.
    fn item_key(&self, i: usize, h: &mut io::ContentHasher) -> Result<()> {
        for v in self.image(i)? {
            h.update(&v.to_le_bytes());
        }
        h.update_u64(self.label(i) as u64);
        Ok(())
    }
}

/// Contract B's X file.
pub struct TensorSet {
    pub path: PathBuf,
    pub dims: Dims,
    pub x: Vec<f32>,
    pub y: Vec<usize>,
}

impl TensorSet {
    pub fn load(path: &Path, num_classes: usize) -> Result<TensorSet> {
        let (t, _) = io::load_safetensors(path)?;
        let (shape, x) = match t.get("input") {
            Some(HostTensor {
                shape,
                data: HostData::F32(d),
            }) => (shape.clone(), d.clone()),
            Some(_) => return Err(Error::format(path, "'input' must be a float tensor")),
            None => return Err(Error::format(path, "missing tensor 'input' [N, 3, H, W]")),
        };
        if shape.len() != 4 || shape[1] != 3 {
            return Err(Error::format(
                path,
                format!("'input' must be [N, 3, H, W], got {shape:?}"),
            ));
        }
        if let Some(v) = x.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(Error::format(
                path,
                format!("'input' must lie in [0, 1] (images are normalised inside the model), found {v}"),
            ));
        }
        let n = shape[0];
        let y: Vec<usize> = match t.get("target") {
            Some(HostTensor {
                shape: ts,
                data: HostData::I64(d),
            }) if ts.as_slice() == [n] => d
                .iter()
                .map(|&v| {
                    usize::try_from(v)
                        .ok()
                        .filter(|&c| c < num_classes)
                        .ok_or_else(|| {
                            Error::format(
                                path,
                                format!(
                                    "target {v} is out of range for --num-classes {num_classes}: \
                                 the data and the model disagree on the classes"
                                ),
                            )
                        })
                })
                .collect::<Result<_>>()?,
            Some(o) => {
                return Err(Error::format(
                    path,
                    format!("'target' must be int64 [{n}], got shape {:?}", o.shape),
                ))
            }
            None => return Err(Error::format(path, "missing tensor 'target' [N]")),
        };
        Ok(TensorSet {
            path: path.to_path_buf(),
            dims: Dims {
                c: 3,
                h: shape[2],
                w: shape[3],
            },
            x,
            y,
        })
    }
}

impl EvalSet for TensorSet {
    fn len(&self) -> usize {
        self.y.len()
    }
    fn dims(&self) -> Dims {
        self.dims
    }
    fn label(&self, i: usize) -> usize {
        self.y[i]
    }
    fn image(&self, i: usize) -> Result<Vec<f32>> {
        let d = self.dims.len();
        Ok(self.x[i * d..(i + 1) * d].to_vec())
    }
    fn item_key(&self, i: usize, h: &mut io::ContentHasher) -> Result<()> {
        let d = self.dims.len();
        h.update(bytemuck::cast_slice(&self.x[i * d..(i + 1) * d]));
        h.update_u64(self.y[i] as u64);
        Ok(())
    }
    fn class_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn describe(&self) -> String {
        format!(
            "{}: {} images {}x{}",
            self.path.display(),
            self.y.len(),
            self.dims.h,
            self.dims.w
        )
    }
}

/// An ImageFolder tree.
pub struct ImageFolder {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub items: Vec<(PathBuf, usize)>,
    pub resize: u32,
    pub crop: u32,
    /// Resize with Pillow's bilinear filter instead of bicubic: torchvision's default
    /// `Resize`, so RobustBench's `Res256Crop224` and Bai et al.'s evaluation (`nn::zoo`).
    pub bilinear: bool,
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("jpeg" | "jpg" | "png")
    )
}

impl ImageFolder {
    /// Walks `root`. `list`: only the files it names (`<class>/<file> [label]`);
    /// `per_class`: the first k files (sorted by name) of each class.
    pub fn open(
        root: &Path,
        list: Option<&Path>,
        per_class: Option<usize>,
        num_classes: usize,
        resize: u32,
        crop: u32,
    ) -> Result<ImageFolder> {
        let mut classes: Vec<String> = std::fs::read_dir(root)
            .map_err(|e| Error::io(root, e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        classes.sort();
        if classes.len() != num_classes {
            return Err(Error::format(
                root,
                format!(
                    "{} class directories, but the model has --num-classes {num_classes}: the \
                     dataset and the model disagree on the classes",
                    classes.len()
                ),
            ));
        }
        let class_index = |name: &str| classes.binary_search_by(|c| c.as_str().cmp(name)).ok();
        let mut items = Vec::new();
        if let Some(list) = list {
            let text = std::fs::read_to_string(list).map_err(|e| Error::io(list, e))?;
            for (ln, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let rel = parts.next().unwrap_or_default();
                let class = rel.split('/').next().unwrap_or_default();
                let ci = class_index(class).ok_or_else(|| {
                    Error::format(
                        list,
                        format!(
                            "line {}: class '{class}' is not a directory of {}",
                            ln + 1,
                            root.display()
                        ),
                    )
                })?;
                if let Some(lbl) = parts.next() {
                    let l: usize = lbl.parse().map_err(|_| {
                        Error::format(
                            list,
                            format!("line {}: label '{lbl}' is not an integer", ln + 1),
                        )
                    })?;
                    if l != ci {
                        return Err(Error::format(
                            list,
                            format!("line {}: label {l} but '{class}' is class {ci} of the sorted directories", ln + 1),
                        ));
                    }
                }
                let p = root.join(rel);
                if !p.is_file() {
                    return Err(Error::format(
                        list,
                        format!("line {}: {} does not exist", ln + 1, p.display()),
                    ));
                }
                items.push((p, ci));
            }
        } else {
            for (ci, c) in classes.iter().enumerate() {
                let dir = root.join(c);
                let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .map_err(|e| Error::io(&dir, e))?
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_file() && is_image(p))
                    .collect();
                files.sort();
                if let Some(k) = per_class {
                    files.truncate(k);
                }
                items.extend(files.into_iter().map(|p| (p, ci)));
            }
        }
        if items.is_empty() {
            return Err(Error::format(root, "no images found"));
        }
        Ok(ImageFolder {
            root: root.to_path_buf(),
            classes,
            items,
            resize,
            crop,
            bilinear: false,
        })
    }

    /// Resizes bilinearly (see `bilinear`).
    pub fn with_bilinear(mut self, bilinear: bool) -> Self {
        self.bilinear = bilinear;
        self
    }
}

/// The eval transform of the data pipeline (resize the shorter side to `resize` with
/// Pillow-matching bicubic, centre crop `crop`), returned as CHW values in [0, 1].
/// `resize` 0: no resize, the centre crop of the image as it is (RobustBench's `Crop288`).
pub fn eval_transform(img: &image::RgbImage, resize: u32, crop: u32) -> Result<Vec<f32>> {
    use crate::data::augment::{apply, sample_rng, Transform};
    let hwc = if resize == 0 {
        centre_crop(img, crop)?
    } else {
        let t = Transform::Eval {
            resize: resize as usize,
            crop: crop as usize,
        };
        // The eval transform draws no random numbers; the RNG only fills the signature.
        apply(img, None, &t, &mut sample_rng(0, 0, 0))?.pixels
    };
    let c = crop as usize;
    let mut out = vec![0f32; 3 * c * c];
    for (p, px) in hwc.chunks(3).enumerate() {
        for ch in 0..3 {
            out[ch * c * c + p] = px[ch];
        }
    }
    Ok(out)
}

/// torchvision's `Resize(resize)` (shorter side to `resize`, the other truncated, Pillow's
/// bilinear filter, antialiased when shrinking) then `CenterCrop(crop)`, as CHW values in
/// [0, 1]. Two single-axis passes, horizontal first with a u8 intermediate, as Pillow runs
/// them (see `augment::resize_bicubic`).
pub fn eval_transform_bilinear(img: &image::RgbImage, resize: u32, crop: u32) -> Result<Vec<f32>> {
    use fast_image_resize as fr;
    let (w, h) = (img.width(), img.height());
    let (ow, oh) = if w <= h {
        (resize, (resize as f64 * h as f64 / w as f64) as u32)
    } else {
        ((resize as f64 * w as f64 / h as f64) as u32, resize)
    };
    let err = |e: &dyn std::fmt::Display| Error::Msg(format!("resize: {e}"));
    let alg = fr::ResizeAlg::Convolution(fr::FilterType::Bilinear);
    let src =
        fr::images::ImageRef::new(w, h, img.as_raw(), fr::PixelType::U8x3).map_err(|e| err(&e))?;
    let mut resizer = fr::Resizer::new();
    let mut tmp = fr::images::Image::new(ow, h, fr::PixelType::U8x3);
    let opts = fr::ResizeOptions::new().resize_alg(alg);
    resizer.resize(&src, &mut tmp, &opts).map_err(|e| err(&e))?;
    let mut dst = fr::images::Image::new(ow, oh, fr::PixelType::U8x3);
    resizer.resize(&tmp, &mut dst, &opts).map_err(|e| err(&e))?;
    let big = image::RgbImage::from_raw(ow, oh, dst.into_vec())
        .ok_or_else(|| Error::Msg("resize: buffer size".into()))?;
    let hwc = centre_crop(&big, crop)?;
    let c = crop as usize;
    let mut out = vec![0f32; 3 * c * c];
    for (p, px) in hwc.chunks(3).enumerate() {
        for ch in 0..3 {
            out[ch * c * c + p] = px[ch];
        }
    }
    Ok(out)
}

/// torchvision's `CenterCrop(crop)` of an image at least `crop` on each side, as HWC values
/// in [0, 1] (offsets rounded half to even, as Python's `round`).
fn centre_crop(img: &image::RgbImage, crop: u32) -> Result<Vec<f32>> {
    let (w, h) = (img.width(), img.height());
    if w < crop || h < crop {
        return Err(Error::flag(
            "--crop",
            format!("{w}x{h} image is smaller than the centre crop {crop} (with --resize 0)"),
        ));
    }
    let top = ((h - crop) as f64 / 2.0).round_ties_even() as u32;
    let left = ((w - crop) as f64 / 2.0).round_ties_even() as u32;
    let c = image::imageops::crop_imm(img, left, top, crop, crop).to_image();
    Ok(c.as_raw().iter().map(|&v| v as f32 / 255.0).collect())
}

impl EvalSet for ImageFolder {
    fn len(&self) -> usize {
        self.items.len()
    }
    fn dims(&self) -> Dims {
        Dims {
            c: 3,
            h: self.crop as usize,
            w: self.crop as usize,
        }
    }
    fn label(&self, i: usize) -> usize {
        self.items[i].1
    }
    fn image(&self, i: usize) -> Result<Vec<f32>> {
        let p = &self.items[i].0;
        let img = crate::data::imageio::read_rgb(p)?;
        if img.width().min(img.height()) == 0 {
            return Err(Error::format(p, "empty image"));
        }
        let out = if self.bilinear && self.resize > 0 {
            eval_transform_bilinear(&img, self.resize, self.crop)
        } else {
            eval_transform(&img, self.resize, self.crop)
        };
        out.map_err(|e| Error::format(p, e.to_string()))
    }
    /// Path (relative to the root), file size and modification time, and label: replacing
    /// or reordering files changes the key without decoding anything.
    fn item_key(&self, i: usize, h: &mut io::ContentHasher) -> Result<()> {
        let (p, label) = &self.items[i];
        let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
        let rel = p.strip_prefix(&self.root).unwrap_or(p);
        h.update_str(&rel.to_string_lossy());
        h.update_u64(meta.len());
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        h.update_u64(mtime);
        h.update_u64(*label as u64);
        Ok(())
    }
    fn class_names(&self) -> Vec<String> {
        self.classes.clone()
    }
    fn describe(&self) -> String {
        format!(
            "{}: {} images of {} classes (resize {}, centre crop {})",
            self.root.display(),
            self.items.len(),
            self.classes.len(),
            self.resize,
            self.crop
        )
    }
}
