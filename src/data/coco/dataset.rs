//! COCO instance files as this module reads them: the image table (with each image's class),
//! the categories, and the annotations as RLE masks (the ground truth of `part-ap`).
//!
//! The image entries of `coco-export` carry the class (`wnid`); for other files the class is
//! the folder of `file_name` (`<wnid>/<file>`, the IN-1K train layout). Images and categories
//! are read with typed serde structs (an images-only file of the full IN-1K train set is a
//! few hundred bytes per image); annotations one by one, so a bad one is skipped and
//! reported, not fatal.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::rle;
use crate::data::rasterise::{Rle, Segmentation};
use crate::data::report::Skip;
use crate::{Error, Result};

#[derive(Clone, Debug, Deserialize)]
pub struct ImageEntry {
    pub id: i64,
    pub file_name: String,
    pub height: usize,
    pub width: usize,
    #[serde(default)]
    pub wnid: Option<String>,
}

impl ImageEntry {
    /// The image's class: `wnid`, else the folder of `file_name`.
    pub fn class_wnid(&self) -> Option<&str> {
        self.wnid
            .as_deref()
            .or_else(|| self.file_name.split_once('/').map(|(d, _)| d))
    }
    /// File name without folders.
    pub fn base_name(&self) -> &str {
        self.file_name.rsplit('/').next().unwrap_or(&self.file_name)
    }
    pub fn stem(&self) -> &str {
        let b = self.base_name();
        match b.rfind('.') {
            Some(i) if i > 0 => &b[..i],
            _ => b,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct CategoryEntry {
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub supercategory: Option<String>,
}

#[derive(Deserialize)]
struct RawFile {
    images: Vec<ImageEntry>,
    #[serde(default)]
    categories: Vec<CategoryEntry>,
    #[serde(default)]
    annotations: Vec<Value>,
}

/// One ground-truth mask.
#[derive(Clone, Debug)]
pub struct GtAnn {
    pub id: i64,
    pub image: usize,
    pub category: usize,
    pub rle: Rle,
    /// The file's `area` (COCOeval's area ranges read it), else the mask's pixel count.
    pub area: f64,
    /// `iscrowd`: matched by intersection over the detection's area, never a false negative.
    /// (COCOeval overwrites any `ignore` field with `iscrowd`, so that field is not read.)
    pub crowd: bool,
}

/// A COCO file read: images and categories in file order, annotations as RLE.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub images: Vec<ImageEntry>,
    pub categories: Vec<CategoryEntry>,
    pub anns: Vec<GtAnn>,
    pub image_index: HashMap<i64, usize>,
    pub category_index: HashMap<i64, usize>,
    /// Annotations left out, with the reason.
    pub skipped: Vec<Skip>,
}

fn int(v: Option<&Value>, at: &str) -> std::result::Result<i64, String> {
    let v = v.ok_or_else(|| format!("{at} is missing"))?;
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
        .ok_or_else(|| format!("{at} = {v} is not an integer"))
}

impl Dataset {
    /// Reads a COCO file. `with_annotations = false` reads only images and categories (an
    /// image table for pseudo-labelling; annotations are skipped by the parser unread).
    pub fn read(path: &Path, with_annotations: bool) -> Result<Dataset> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let rd = BufReader::with_capacity(1 << 20, file);
        let raw: RawFile = if with_annotations {
            serde_json::from_reader(rd)
        } else {
            #[derive(Deserialize)]
            struct ImagesOnly {
                images: Vec<ImageEntry>,
                #[serde(default)]
                categories: Vec<CategoryEntry>,
            }
            serde_json::from_reader::<_, ImagesOnly>(rd).map(|f| RawFile {
                images: f.images,
                categories: f.categories,
                annotations: Vec::new(),
            })
        }
        .map_err(|e| {
            Error::format(
                path,
                format!("not a COCO instance file (images with id, file_name, height, width): {e}"),
            )
        })?;
        let mut d = Dataset {
            images: raw.images,
            categories: raw.categories,
            ..Default::default()
        };
        for (i, im) in d.images.iter().enumerate() {
            if d.image_index.insert(im.id, i).is_some() {
                return Err(Error::format(
                    path,
                    format!("image id {} is listed twice", im.id),
                ));
            }
            if im.height == 0 || im.width == 0 {
                return Err(Error::format(
                    path,
                    format!("image id {} has size {}x{}", im.id, im.height, im.width),
                ));
            }
        }
        for (i, c) in d.categories.iter().enumerate() {
            if d.category_index.insert(c.id, i).is_some() {
                return Err(Error::format(
                    path,
                    format!("category id {} is listed twice", c.id),
                ));
            }
        }
        for (i, a) in raw.annotations.iter().enumerate() {
            let at = format!("annotations[{i}]");
            let parsed = (|| -> std::result::Result<GtAnn, String> {
                let id = int(a.get("id"), &format!("{at}.id"))?;
                let image_id = int(a.get("image_id"), &format!("{at}.image_id"))?;
                let cat = int(a.get("category_id"), &format!("{at}.category_id"))?;
                let &image = d
                    .image_index
                    .get(&image_id)
                    .ok_or_else(|| format!("{at}.image_id = {image_id} is not an image"))?;
                let &category = d
                    .category_index
                    .get(&cat)
                    .ok_or_else(|| format!("{at}.category_id = {cat} is not a category"))?;
                let im = &d.images[image];
                let seg = Segmentation::from_json(
                    a.get("segmentation")
                        .ok_or_else(|| format!("{at}.segmentation is missing"))?,
                )
                .map_err(|e| format!("{at}.segmentation: {e}"))?;
                let r = rle::segmentation_to_rle(&seg, im.height, im.width)
                    .map_err(|e| format!("{at}.segmentation: {e}"))?;
                let flag = |k: &str| a.get(k).and_then(Value::as_i64).unwrap_or(0) != 0;
                let area = a
                    .get("area")
                    .and_then(Value::as_f64)
                    .unwrap_or(rle::area(&r) as f64);
                Ok(GtAnn {
                    id,
                    image,
                    category,
                    rle: r,
                    area,
                    crowd: flag("iscrowd"),
                })
            })();
            match parsed {
                Ok(g) => d.anns.push(g),
                Err(e) => d.skipped.push(Skip::new(path, e)),
            }
        }
        Ok(d)
    }

    /// The class (wnid) of every category: its `supercategory` (as `coco-export` writes), else
    /// the part before `/` in its name.
    pub fn category_wnids(&self) -> Vec<Option<String>> {
        self.categories
            .iter()
            .map(|c| {
                c.supercategory
                    .clone()
                    .filter(|s| !s.is_empty())
                    .or_else(|| c.name.split_once('/').map(|(w, _)| w.to_string()))
            })
            .collect()
    }
}
