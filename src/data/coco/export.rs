//! `mpm-data coco-export`: the PIN++ release (per-class JSONs) -> one COCO instance
//! segmentation file per split, for training an instance segmenter (Mask R-CNN) with
//! mmdetection or detectron2 (docs/part-labels.md).
//!
//! - Categories: every part of every class read, with its global id (DESIGN.md contract C:
//!   1 + parts of smaller wnids + rank within the class), `name` `<wnid>/<part name>`
//!   (unique, as both toolkits need), `supercategory` the wnid, `part` the part name.
//! - Images: `file_name` `<wnid>/<file>` (relative to the IN-1K train root), `height`,
//!   `width`, and the image's class: `wnid` and `class_index` (position among the classes
//!   read). Ids are global over both splits (1, 2, ... in wnid then JSON order), so results
//!   on either split join back to one image table.
//! - Annotations: `segmentation` kept as released (polygons stay polygons, RLE stays RLE),
//!   `area` = pixels of the rasterised mask (what COCOeval's area ranges should see), `bbox`
//!   from the mask (`toBbox`), `iscrowd` as released, ids global from 1.
//! - Split: the authors' segmentation split is not published; per class, the seeded shuffle
//!   of `mpm-data labels` (`labels::split_class`, same `--val-fraction` / `--split-seed`) puts
//!   `round(n * 0.1)` images in val, so the COCO val split equals `labels`' val.txt for the
//!   same images.
//! - `--infer-images IMG_ROOT`: also `infer.json`, the images of IMG_ROOT/<wnid>/ of the
//!   classes read that are not in either split (the images to pseudo-label), sizes read from
//!   the file headers, ids continuing after the splits'.
//!
//! Discarded images are left out; an image with an unreadable annotation is skipped whole and
//! reported (as `labels` does).

use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{json, Value};

use super::rle;
use crate::data::labels::split_class;
use crate::data::pin_json::{self, Discarded, PartTable, PinClass, PinImage};
use crate::data::rasterise::Segmentation;
use crate::data::report::Skip;
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct ExportConfig {
    pub json_dir: PathBuf,
    pub discarded: Option<PathBuf>,
    pub out: PathBuf,
    pub val_fraction: f64,
    pub split_seed: u64,
    /// Also list the images under this root that the splits do not hold (`infer.json`).
    pub infer_images: Option<PathBuf>,
    pub progress: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ExportSummary {
    pub classes: usize,
    pub parts: usize,
    pub train_images: usize,
    pub val_images: usize,
    pub train_annotations: usize,
    pub val_annotations: usize,
    pub discarded: usize,
    pub infer_images: usize,
    pub skipped: Vec<Skip>,
    pub warnings: Vec<Skip>,
}

/// The JSON of a segmentation as released.
pub fn segmentation_json(s: &Segmentation) -> Value {
    match s {
        Segmentation::Polygons(rings) => json!(rings),
        Segmentation::Uncompressed { h, w, counts } => json!({"size": [h, w], "counts": counts}),
        Segmentation::Compressed { h, w, counts } => json!({"size": [h, w], "counts": counts}),
    }
}

/// The category list of a part table (see the module docs).
pub fn categories_json(table: &PartTable) -> Vec<Value> {
    let mut out = Vec::with_capacity(table.num_parts());
    for (c, wnid) in table.wnids.iter().enumerate() {
        for (r, part) in table.names[c].iter().enumerate() {
            out.push(json!({
                "id": table.first_id[c] as usize + r,
                "name": format!("{wnid}/{part}"),
                "supercategory": wnid,
                "part": part,
            }));
        }
    }
    out
}

/// One image of a split, serialised, with its annotations (ids assigned later).
struct ExportImage {
    val: bool,
    image: Value,
    anns: Vec<Value>,
}

struct ClassOut {
    images: Vec<ExportImage>,
    discarded: usize,
    skipped: Vec<Skip>,
}

fn image_anns(
    img: &PinImage,
    class: &PinClass,
    first_id: u32,
) -> std::result::Result<Vec<Value>, String> {
    if let Some(p) = &img.problem {
        return Err(p.clone());
    }
    let mut anns = Vec::with_capacity(img.anns.len());
    for (i, a) in img.anns.iter().enumerate() {
        let rank = class
            .rank(a.category_id)
            .ok_or_else(|| format!("category_id {} is not in 'categories'", a.category_id))?;
        let r = rle::segmentation_to_rle(&a.segmentation, img.height, img.width)
            .map_err(|e| format!("annotation {i} (category {}): {e}", a.category_id))?;
        if (r.h, r.w) != (img.height, img.width) {
            return Err(format!(
                "annotation {i}: RLE size {}x{} differs from the image's {}x{}",
                r.h, r.w, img.height, img.width
            ));
        }
        anns.push(json!({
            "category_id": first_id as usize + rank,
            "segmentation": segmentation_json(&a.segmentation),
            "area": rle::area(&r),
            "bbox": rle::bbox(&r),
            "iscrowd": a.iscrowd as u8,
        }));
    }
    Ok(anns)
}

fn export_class(
    index: usize,
    class: &PinClass,
    first_id: u32,
    discarded: &Discarded,
    cfg: &ExportConfig,
) -> ClassOut {
    let mut out = ClassOut {
        images: Vec::new(),
        discarded: 0,
        skipped: Vec::new(),
    };
    let mut kept: Vec<(&PinImage, Vec<Value>)> = Vec::new();
    for img in &class.images {
        if discarded.contains(&class.wnid, img) {
            out.discarded += 1;
            continue;
        }
        match image_anns(img, class, first_id) {
            Ok(a) => kept.push((img, a)),
            Err(e) => out
                .skipped
                .push(Skip::new(&class.path, format!("{}: {e}", img.file_name))),
        }
    }
    let names: Vec<String> = kept
        .iter()
        .map(|(i, _)| i.base_name().to_string())
        .collect();
    let (_, val) = split_class(&names, cfg.val_fraction, cfg.split_seed, index);
    let val: std::collections::HashSet<String> = val.into_iter().collect();
    for (img, anns) in kept {
        out.images.push(ExportImage {
            val: val.contains(img.base_name()),
            image: json!({
                "file_name": format!("{}/{}", class.wnid, img.base_name()),
                "height": img.height,
                "width": img.width,
                "wnid": class.wnid,
                "class_index": index,
            }),
            anns,
        });
    }
    out
}

/// Writes a COCO file from serialised parts, streaming (never one JSON tree of the whole file).
fn write_coco(
    path: &Path,
    info: &Value,
    cats: &[Value],
    images: &[&Value],
    anns: &[&Value],
) -> Result<()> {
    crate::io::write_atomic_with(path, crate::io::Durability::Fsync, |f| {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let io = |e: std::io::Error| Error::io(path, e);
        let js = |e: serde_json::Error| Error::format(path, format!("cannot serialise: {e}"));
        write!(w, "{{\"info\": ").map_err(io)?;
        serde_json::to_writer(&mut w, info).map_err(js)?;
        write!(w, ",\n\"categories\": ").map_err(io)?;
        serde_json::to_writer(&mut w, cats).map_err(js)?;
        for (key, list) in [("images", images), ("annotations", anns)] {
            write!(w, ",\n\"{key}\": [").map_err(io)?;
            for (i, v) in list.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",\n").map_err(io)?;
                }
                serde_json::to_writer(&mut w, v).map_err(js)?;
            }
            w.write_all(b"]").map_err(io)?;
        }
        w.write_all(b"}\n").map_err(io)?;
        w.flush().map_err(io)
    })
}

const IMAGE_EXTS: [&str; 5] = ["jpeg", "jpg", "png", "bmp", "webp"];

/// `infer.json`'s image entries: IMG_ROOT/<wnid>/<file> for the table's classes, minus the
/// images already exported, sizes from the headers. Ids from `next_id`.
fn infer_images(
    root: &Path,
    table: &PartTable,
    exported: &std::collections::HashSet<(String, String)>,
    next_id: usize,
    skipped: &mut Vec<Skip>,
) -> Result<Vec<Value>> {
    let mut files: Vec<(usize, String, PathBuf)> = Vec::new();
    for (c, wnid) in table.wnids.iter().enumerate() {
        let dir = root.join(wnid);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                skipped.push(Skip::new(&dir, format!("class folder not read: {e}")));
                continue;
            }
        };
        let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        v.sort();
        for p in v {
            let is_img = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()));
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if is_img && !exported.contains(&(wnid.clone(), name.to_string())) {
                files.push((c, name.to_string(), p.clone()));
            }
        }
    }
    let sizes: Vec<std::result::Result<(u32, u32), String>> = files
        .par_iter()
        .map(|(_, _, p)| {
            image::ImageReader::open(p)
                .map_err(|e| e.to_string())
                .and_then(|r| r.with_guessed_format().map_err(|e| e.to_string()))
                .and_then(|r| r.into_dimensions().map_err(|e| e.to_string()))
        })
        .collect();
    let mut out = Vec::with_capacity(files.len());
    for ((c, name, p), size) in files.into_iter().zip(sizes) {
        match size {
            Ok((w, h)) => out.push(json!({
                "id": next_id + out.len(),
                "file_name": format!("{}/{name}", table.wnids[c]),
                "height": h,
                "width": w,
                "wnid": table.wnids[c],
                "class_index": c,
            })),
            Err(e) => skipped.push(Skip::new(&p, format!("image size not read: {e}"))),
        }
    }
    Ok(out)
}

/// Runs `mpm-data coco-export`: OUT/train.json, OUT/val.json, OUT/parts.tsv,
/// OUT/export_report.json (and OUT/infer.json with `infer_images`).
pub fn run_export(cfg: &ExportConfig) -> Result<ExportSummary> {
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        return Err(Error::flag("--val-fraction", "must be in [0, 1)"));
    }
    let discarded = match &cfg.discarded {
        Some(p) => Discarded::read(p)?,
        None => Discarded::default(),
    };
    let mut summary = ExportSummary::default();
    let loaded = pin_json::load_classes(&cfg.json_dir, "coco-export")?;
    summary.skipped.extend(loaded.unreadable);
    summary.warnings.extend(loaded.warnings);
    summary.skipped.extend(loaded.dropped);
    let (classes, table) = (loaded.classes, loaded.table);
    summary.classes = classes.len();
    summary.parts = table.num_parts();
    let pb = crate::data::labels::progress_bar(classes.len() as u64, cfg.progress, "coco-export");
    let outs: Vec<ClassOut> = classes
        .par_iter()
        .enumerate()
        .map(|(i, c)| {
            let o = export_class(i, c, table.first_id[i], &discarded, cfg);
            pb.inc(1);
            o
        })
        .collect();
    pb.finish_and_clear();
    // Ids: images then annotations, global over both splits, in wnid then JSON order.
    let (mut image_id, mut ann_id) = (0usize, 0usize);
    let mut split: [(Vec<Value>, Vec<Value>); 2] = Default::default();
    let mut exported = std::collections::HashSet::new();
    for (c, o) in classes.iter().zip(outs) {
        summary.discarded += o.discarded;
        summary.skipped.extend(o.skipped);
        for mut im in o.images {
            image_id += 1;
            im.image["id"] = json!(image_id);
            if let Some(f) = im.image["file_name"].as_str() {
                let base = f.rsplit('/').next().unwrap_or(f).to_string();
                exported.insert((c.wnid.clone(), base));
            }
            let s = &mut split[im.val as usize];
            for mut a in im.anns {
                ann_id += 1;
                a["id"] = json!(ann_id);
                a["image_id"] = json!(image_id);
                s.1.push(a);
            }
            s.0.push(im.image);
        }
    }
    summary.train_images = split[0].0.len();
    summary.val_images = split[1].0.len();
    summary.train_annotations = split[0].1.len();
    summary.val_annotations = split[1].1.len();
    let cats = categories_json(&table);
    crate::data::imageio::mkdirs(&cfg.out)?;
    for (name, (imgs, anns)) in ["train", "val"].iter().zip(&split) {
        let info = json!({
            "description": format!("PartImageNet++ parts, {name} split (mpm-data coco-export)"),
            "split": name,
            "val_fraction": cfg.val_fraction,
            "split_seed": cfg.split_seed,
            "parts": table.num_parts(),
        });
        let iv: Vec<&Value> = imgs.iter().collect();
        let av: Vec<&Value> = anns.iter().collect();
        write_coco(
            &cfg.out.join(format!("{name}.json")),
            &info,
            &cats,
            &iv,
            &av,
        )?;
    }
    crate::data::imageio::write_atomic(&cfg.out.join("parts.tsv"), table.to_tsv().as_bytes())?;
    if let Some(root) = &cfg.infer_images {
        let imgs = infer_images(root, &table, &exported, image_id + 1, &mut summary.skipped)?;
        summary.infer_images = imgs.len();
        let info = json!({
            "description": "images to pseudo-label (mpm-data coco-export --infer-images)",
            "split": "infer",
            "parts": table.num_parts(),
        });
        let iv: Vec<&Value> = imgs.iter().collect();
        write_coco(&cfg.out.join("infer.json"), &info, &cats, &iv, &[])?;
    }
    let report = serde_json::to_string_pretty(&summary)
        .map_err(|e| Error::Msg(format!("coco-export report: {e}")))?;
    crate::data::imageio::write_atomic(&cfg.out.join("export_report.json"), report.as_bytes())?;
    if summary.train_images + summary.val_images == 0 {
        return Err(Error::Msg(format!(
            "coco-export: no image exported ({} skipped, {} discarded)",
            summary.skipped.len(),
            summary.discarded
        )));
    }
    Ok(summary)
}
