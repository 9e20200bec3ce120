//! `mpm-data synth`: a deterministic synthetic part dataset in the real PIN++ format.
//!
//! Each class is an object made of 2-6 parts whose shapes, colours, textures and layout differ per
//! class (so parts carry class information). Images (64-128 px by default) get a textured
//! background with clutter, a random scale / rotation / flip / position of the object, and
//! sometimes an occluder drawn over it (those images carry RLE annotations: part minus occluder).
//! Written as PIN++ is distributed:
//!
//! ```text
//! OUT/json/<wnid>.json          COCO style: images (file_name "<wnid>/<wnid>_<k>.JPEG"),
//!                               annotations (polygons, compressed RLE, uncompressed RLE with
//!                               iscrowd=1), categories (1-based ids, not contiguous, listed out
//!                               of order)
//! OUT/images/<wnid>/<wnid>_<k>.JPEG   the images (stands for the IN-1K train folder)
//! OUT/including/<wnid>.txt      "horn:head" for classes with a part inside another
//! OUT/discarded_data.json       ["<file name>", ...] (about 1 image in 40)
//! OUT/category_name.json        {"<wnid>": "synthetic <shape> ..."}
//! ```
//! wnids are `n90000000`, `n90000001`, ... (sorted like real ones). In the JSON an inner part is
//! listed *before* its container, so only the inclusion rule paints it right. Everything is a
//! function of `--seed`: same seed, same bytes.

use std::path::{Path, PathBuf};

use image::RgbImage;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::{json, Value};

use super::imageio::{self, LabelMap};
use super::rasterise::{self, Mask, Segmentation};
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct SynthConfig {
    pub out: PathBuf,
    pub classes: usize,
    pub images_per_class: usize,
    pub min_size: usize,
    pub max_size: usize,
    pub seed: u64,
    /// Add known-bad items (corrupt JPEG, size mismatch, broken annotations, a class file that is
    /// not JSON) to exercise the skip paths of `labels`.
    pub faults: bool,
    /// Keep the painted label maps in memory (for tests).
    pub keep_truth: bool,
    pub jpeg_quality: u8,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            out: PathBuf::from("synth"),
            classes: 10,
            images_per_class: 30,
            min_size: 64,
            max_size: 128,
            seed: 0,
            faults: false,
            keep_truth: false,
            jpeg_quality: 92,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SynthSummary {
    pub classes: usize,
    pub images: usize,
    pub annotations: usize,
    pub discarded: Vec<String>,
    /// `(wnid, file name, painted label map)` when `keep_truth`; discarded and faulty images
    /// are not included.
    pub truth: Vec<(String, String, LabelMap)>,
    /// Number of images the fault injection expects `labels` to skip.
    pub faulty_images: usize,
    /// Folders synced once at the end (the images are written without a per-file fsync).
    pub dirs_synced: usize,
    /// Temp files of killed earlier runs, removed at start.
    pub stale_temps_removed: usize,
}

/// The wnid of synthetic class `i`.
pub fn wnid(i: usize) -> String {
    format!("n{:08}", 90_000_000 + i)
}

#[derive(Clone, Copy, Debug)]
enum Texture {
    Plain,
    Stripes { period: f64, angle: f64 },
    Checker { period: f64 },
    Dots { period: f64 },
}

#[derive(Clone, Debug)]
struct PartTemplate {
    name: &'static str,
    /// Rings in object-local coordinates ([-1, 1] roughly).
    rings: Vec<Vec<(f64, f64)>>,
    color: [u8; 3],
    texture: Texture,
    /// Index of the containing part (painted over it).
    inner_of: Option<usize>,
}

#[derive(Clone, Debug)]
struct ClassTemplate {
    wnid: String,
    description: String,
    parts: Vec<PartTemplate>,
    /// Category id of each part (increasing with the part index, so rank = index).
    cat_ids: Vec<i64>,
}

fn ellipse(cx: f64, cy: f64, rx: f64, ry: f64, n: usize) -> Vec<(f64, f64)> {
    (0..n)
        .map(|i| {
            let t = i as f64 / n as f64 * std::f64::consts::TAU;
            (cx + rx * t.cos(), cy + ry * t.sin())
        })
        .collect()
}

fn rect(x0: f64, y0: f64, x1: f64, y1: f64) -> Vec<(f64, f64)> {
    vec![(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
}

fn hsv(h: f64, s: f64, v: f64) -> [u8; 3] {
    let c = v * s;
    let hp = (h.rem_euclid(1.0)) * 6.0;
    let x = c * (1.0 - (hp % 2.0 - 1.0).abs());
    let (r, g, b) = match hp as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [
        ((r + m) * 255.0).round() as u8,
        ((g + m) * 255.0).round() as u8,
        ((b + m) * 255.0).round() as u8,
    ]
}

fn class_rng(seed: u64, class: usize, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ class as u64);
    r.set_stream(stream);
    r
}

fn make_class(seed: u64, c: usize) -> ClassTemplate {
    let mut rng = class_rng(seed, c, 1);
    let hue0: f64 = rng.random();
    let tex = |rng: &mut ChaCha8Rng| match rng.random_range(0..4) {
        0 => Texture::Plain,
        1 => Texture::Stripes {
            period: rng.random_range(0.15..0.4),
            angle: rng.random_range(0.0..std::f64::consts::PI),
        },
        2 => Texture::Checker {
            period: rng.random_range(0.15..0.35),
        },
        _ => Texture::Dots {
            period: rng.random_range(0.2..0.4),
        },
    };
    let body_kind = rng.random_range(0..3);
    let (brx, bry) = (rng.random_range(0.45..0.75), rng.random_range(0.25..0.5));
    let body = match body_kind {
        0 => ellipse(0.0, 0.0, brx, bry, 20),
        1 => rect(-brx, -bry, brx, bry),
        _ => ellipse(0.0, 0.0, brx, bry, 6), // hexagon
    };
    let mut parts = vec![PartTemplate {
        name: "body",
        rings: vec![body],
        color: hsv(hue0, 0.7, 0.8),
        texture: tex(&mut rng),
        inner_of: None,
    }];
    let n_parts = rng.random_range(2..=6usize);
    let mut extras: Vec<&'static str> = vec!["head", "tail", "legs", "wing", "fin"];
    // Deterministic shuffle.
    for i in (1..extras.len()).rev() {
        let j = rng.random_range(0..=i);
        extras.swap(i, j);
    }
    // A horn (inside the head) takes one of the part slots for some classes.
    let want_horn = n_parts >= 3 && rng.random_bool(0.5);
    if want_horn {
        let hp = extras.iter().position(|&n| n == "head").unwrap_or(0);
        extras.swap(0, hp);
    }
    let n_appendages = n_parts - 1 - usize::from(want_horn);
    let mut head: Option<(usize, f64, f64, f64)> = None;
    for name in extras.into_iter().take(n_appendages) {
        let hue = hue0 + 0.15 * parts.len() as f64 + rng.random_range(0.0..0.1);
        let color = hsv(hue, rng.random_range(0.5..1.0), rng.random_range(0.5..1.0));
        let rings = match name {
            "head" => {
                let r = rng.random_range(0.18..0.3);
                let (cx, cy) = (brx + r * 0.6, -bry * 0.6);
                head = Some((parts.len(), cx, cy, r));
                vec![ellipse(cx, cy, r, r * rng.random_range(0.8..1.2), 16)]
            }
            "tail" => {
                let l = rng.random_range(0.25..0.45);
                vec![vec![
                    (-brx + 0.05, -0.08),
                    (-brx - l, -0.25),
                    (-brx - l * 0.8, 0.12),
                ]]
            }
            "legs" => {
                let w = rng.random_range(0.06..0.14);
                let l = rng.random_range(0.25..0.45);
                vec![
                    rect(-brx * 0.6, bry * 0.7, -brx * 0.6 + w, bry + l),
                    rect(brx * 0.5, bry * 0.7, brx * 0.5 + w, bry + l),
                ]
            }
            "wing" => {
                let l = rng.random_range(0.3..0.6);
                vec![vec![(-0.2, -bry * 0.5), (0.3, -bry * 0.5), (0.0, -bry - l)]]
            }
            _ => vec![vec![(0.1, bry * 0.5), (0.45, bry * 0.4), (0.3, bry + 0.25)]],
        };
        parts.push(PartTemplate {
            name,
            rings,
            color,
            texture: tex(&mut rng),
            inner_of: None,
        });
    }
    if want_horn {
        if let Some((hi, cx, cy, r)) = head {
            parts.push(PartTemplate {
                name: "horn",
                rings: vec![vec![
                    (cx - r * 0.3, cy - r * 0.1),
                    (cx + r * 0.3, cy - r * 0.1),
                    (cx, cy - r * 0.9),
                ]],
                color: hsv(hue0 + 0.5, 0.2, 0.95),
                texture: Texture::Plain,
                inner_of: Some(hi),
            });
        }
    }
    let mut cat_ids = Vec::new();
    let mut id = rng.random_range(1..40i64);
    for _ in &parts {
        cat_ids.push(id);
        id += rng.random_range(1..7i64);
    }
    let names: Vec<&str> = parts.iter().map(|p| p.name).collect();
    ClassTemplate {
        wnid: wnid(c),
        description: format!(
            "synthetic {} {}",
            ["ellipse", "box", "hexagon"][body_kind],
            names.join("+")
        ),
        parts,
        cat_ids,
    }
}

fn texture_at(t: Texture, base: [u8; 3], u: f64, v: f64) -> [u8; 3] {
    let k = match t {
        Texture::Plain => 1.0,
        Texture::Stripes { period, angle } => {
            let p = (u * angle.cos() + v * angle.sin()) / period;
            if p.rem_euclid(1.0) < 0.5 {
                1.0
            } else {
                0.55
            }
        }
        Texture::Checker { period } => {
            if ((u / period).floor() as i64 + (v / period).floor() as i64) % 2 == 0 {
                1.0
            } else {
                0.6
            }
        }
        Texture::Dots { period } => {
            let (a, b) = (
                (u / period).rem_euclid(1.0) - 0.5,
                (v / period).rem_euclid(1.0) - 0.5,
            );
            if a * a + b * b < 0.08 {
                0.4
            } else {
                1.0
            }
        }
    };
    [
        (base[0] as f64 * k) as u8,
        (base[1] as f64 * k) as u8,
        (base[2] as f64 * k) as u8,
    ]
}

/// Rasterises rings (image coordinates) like pycocotools (union of rings).
fn poly_mask(rings: &[Vec<f64>], h: usize, w: usize) -> Mask {
    Segmentation::Polygons(rings.to_vec())
        .to_mask(h, w)
        .unwrap_or_else(|_| Mask::zeros(h, w))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

struct Rendered {
    rgb: RgbImage,
    /// `(JSON-order position, category id, segmentation JSON)`.
    anns: Vec<(i64, Value, bool)>,
    truth: LabelMap,
}

/// Renders one image of class `t`. `first_id` is the class's first global part id.
fn render(t: &ClassTemplate, first_id: u32, rng: &mut ChaCha8Rng, cfg: &SynthConfig) -> Rendered {
    let w = rng.random_range(cfg.min_size..=cfg.max_size);
    let h = rng.random_range(cfg.min_size..=cfg.max_size);
    let mut rgb = RgbImage::new(w as u32, h as u32);
    // Background: gradient + noise + clutter polygons.
    let (c0, c1) = (
        hsv(rng.random(), 0.3, rng.random_range(0.3..0.9)),
        hsv(rng.random(), 0.3, rng.random_range(0.3..0.9)),
    );
    for y in 0..h {
        let a = y as f64 / h as f64;
        for x in 0..w {
            let n: f64 = rng.random_range(-10.0..10.0);
            let p = std::array::from_fn(|k| {
                (c0[k] as f64 * (1.0 - a) + c1[k] as f64 * a + n).clamp(0.0, 255.0) as u8
            });
            rgb.put_pixel(x as u32, y as u32, image::Rgb(p));
        }
    }
    let clutter = rng.random_range(2..7);
    for _ in 0..clutter {
        let (cx, cy) = (
            rng.random_range(0.0..w as f64),
            rng.random_range(0.0..h as f64),
        );
        let r = rng.random_range(4.0..(w.min(h) as f64 / 4.0));
        let k = rng.random_range(3..7);
        let ring: Vec<f64> = ellipse(cx, cy, r, r * rng.random_range(0.5..1.5), k)
            .into_iter()
            .flat_map(|(x, y)| [x, y])
            .collect();
        let m = poly_mask(&[ring], h, w);
        let col = hsv(
            rng.random(),
            rng.random_range(0.0..0.6),
            rng.random_range(0.2..1.0),
        );
        for (i, &v) in m.data.iter().enumerate() {
            if v != 0 {
                rgb.put_pixel((i % w) as u32, (i / w) as u32, image::Rgb(col));
            }
        }
    }
    // Pose.
    let scale = rng.random_range(0.4..0.8) * w.min(h) as f64 / 2.0 * 0.9;
    let theta: f64 = rng.random_range(-0.5..0.5);
    let flip = rng.random_bool(0.5);
    let (tx, ty) = (
        w as f64 / 2.0 + rng.random_range(-0.15..0.15) * w as f64,
        h as f64 / 2.0 + rng.random_range(-0.15..0.15) * h as f64,
    );
    let (ct, st) = (theta.cos(), theta.sin());
    let to_img = |(x, y): (f64, f64)| {
        let x = if flip { -x } else { x };
        (
            round2(tx + scale * (ct * x - st * y)),
            round2(ty + scale * (st * x + ct * y)),
        )
    };
    let to_local = |px: f64, py: f64| {
        let (dx, dy) = ((px - tx) / scale, (py - ty) / scale);
        (ct * dx + st * dy, -st * dx + ct * dy)
    };
    let occluded = rng.random_bool(0.25);
    let crowd_rle = !occluded && rng.random_bool(0.1);
    let occ_mask = if occluded {
        let (cx, cy) = (
            tx + rng.random_range(-0.5..0.5) * scale,
            ty + rng.random_range(-0.5..0.5) * scale,
        );
        let (rx, ry) = (
            rng.random_range(0.2..0.5) * scale,
            rng.random_range(0.2..0.5) * scale,
        );
        let ring: Vec<f64> = rect(cx - rx, cy - ry, cx + rx, cy + ry)
            .into_iter()
            .flat_map(|(x, y)| [x, y])
            .collect();
        Some(poly_mask(&[ring], h, w))
    } else {
        None
    };
    let occ_col = hsv(rng.random(), 0.1, rng.random_range(0.1..0.9));
    // Paint parts: containers first (template order), inner parts last.
    let mut truth = LabelMap::zeros(h, w);
    let mut order: Vec<usize> = (0..t.parts.len())
        .filter(|&i| t.parts[i].inner_of.is_none())
        .collect();
    order.extend((0..t.parts.len()).filter(|&i| t.parts[i].inner_of.is_some()));
    let mut anns: Vec<(usize, i64, Value, bool)> = Vec::new();
    for &pi in &order {
        let p = &t.parts[pi];
        let rings: Vec<Vec<f64>> = p
            .rings
            .iter()
            .map(|r| {
                r.iter()
                    .flat_map(|&q| {
                        let (x, y) = to_img(q);
                        [x, y]
                    })
                    .collect()
            })
            .collect();
        let mut m = poly_mask(&rings, h, w);
        for (i, &v) in m.data.iter().enumerate() {
            if v != 0 {
                let (px, py) = ((i % w) as f64 + 0.5, (i / w) as f64 + 0.5);
                let (u, vv) = to_local(px, py);
                let mut col = texture_at(p.texture, p.color, u, vv);
                let n: i32 = rng.random_range(-6..=6);
                col = col.map(|c| (c as i32 + n).clamp(0, 255) as u8);
                rgb.put_pixel((i % w) as u32, (i / w) as u32, image::Rgb(col));
                truth.data[i] = (first_id + pi as u32) as u16;
            }
        }
        let seg = if let Some(o) = &occ_mask {
            for (v, &ov) in m.data.iter_mut().zip(&o.data) {
                if ov != 0 {
                    *v = 0;
                }
            }
            let r = rasterise::encode(&m);
            json!({"size": [h, w], "counts": rasterise::rle_to_string(&r)})
        } else if crowd_rle {
            let r = rasterise::encode(&m);
            json!({"size": [h, w], "counts": r.counts})
        } else {
            json!(rings)
        };
        if m.area() > 0 {
            anns.push((pi, t.cat_ids[pi], seg, crowd_rle));
        }
    }
    if let Some(o) = &occ_mask {
        for (i, &v) in o.data.iter().enumerate() {
            if v != 0 {
                rgb.put_pixel((i % w) as u32, (i / w) as u32, image::Rgb(occ_col));
                truth.data[i] = 0;
            }
        }
    }
    // JSON order: inner parts first (before their containers), the rest in paint order.
    anns.sort_by_key(|a| t.parts[a.0].inner_of.is_none());
    Rendered {
        rgb,
        anns: anns.into_iter().map(|a| (a.1, a.2, a.3)).collect(),
        truth,
    }
}

fn jpeg_bytes(rgb: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality)
        .encode_image(rgb)
        .map_err(|e| Error::Msg(format!("JPEG encode: {e}")))?;
    Ok(buf)
}

struct ClassOut {
    images: usize,
    annotations: usize,
    discarded: Vec<String>,
    truth: Vec<(String, String, LabelMap)>,
    faulty: usize,
}

fn write_class(
    t: &ClassTemplate,
    c: usize,
    first_id: u32,
    cfg: &SynthConfig,
    bulk: &crate::io::BulkDirs,
) -> Result<ClassOut> {
    let mut rng = class_rng(cfg.seed, c, 2);
    let img_dir = cfg.out.join("images").join(&t.wnid);
    imageio::mkdirs(&img_dir)?;
    // Every image of the class goes here (written without a per-file fsync).
    bulk.add_dir(&img_dir);
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    let mut out = ClassOut {
        images: 0,
        annotations: 0,
        discarded: Vec::new(),
        truth: Vec::new(),
        faulty: 0,
    };
    let mut ann_id = 1 + 100_000 * c as i64;
    for k in 0..cfg.images_per_class {
        let r = render(t, first_id, &mut rng, cfg);
        let file = format!("{}_{}.JPEG", t.wnid, 1000 + k);
        let image_id = 1 + k as i64;
        imageio::write_bulk(&img_dir.join(&file), &jpeg_bytes(&r.rgb, cfg.jpeg_quality)?)?;
        images.push(
            json!({"id": image_id, "file_name": format!("{}/{file}", t.wnid),
                           "height": r.rgb.height(), "width": r.rgb.width()}),
        );
        for (cat, seg, crowd) in r.anns {
            annotations.push(
                json!({"id": ann_id, "image_id": image_id, "category_id": cat,
                                    "segmentation": seg, "iscrowd": i32::from(crowd)}),
            );
            ann_id += 1;
            out.annotations += 1;
        }
        let discard = rng.random_range(0..40) == 0;
        if discard {
            out.discarded.push(file.clone());
        } else if cfg.keep_truth {
            out.truth.push((t.wnid.clone(), file.clone(), r.truth));
        }
        out.images += 1;
    }
    if cfg.faults && c == 0 {
        out.faulty = add_faults(t, &img_dir, &mut images, &mut annotations, cfg)?;
    }
    // Categories listed in a shuffled order: rank must come from the sorted ids.
    let mut cats: Vec<Value> = t
        .parts
        .iter()
        .zip(&t.cat_ids)
        .map(|(p, id)| json!({"id": id, "name": p.name, "supercategory": t.wnid}))
        .collect();
    for i in (1..cats.len()).rev() {
        let j = rng.random_range(0..=i);
        cats.swap(i, j);
    }
    let doc = json!({"info": {"description": t.description, "generator": "mpm-data synth"},
                     "images": images, "annotations": annotations, "categories": cats});
    let p = cfg.out.join("json").join(format!("{}.json", t.wnid));
    imageio::write_atomic(&p, doc.to_string().as_bytes())?;
    // including/<wnid>.txt: one "child:parent" line per inclusion, as the release has them.
    let inner: String = t
        .parts
        .iter()
        .filter_map(|p| {
            p.inner_of
                .map(|c| format!("{}:{}\n", p.name, t.parts[c].name))
        })
        .collect();
    if !inner.is_empty() {
        let p = cfg.out.join("including").join(format!("{}.txt", t.wnid));
        imageio::write_atomic(&p, inner.as_bytes())?;
    }
    Ok(out)
}

/// Known-bad items in class 0; returns how many images `labels` must skip.
fn add_faults(
    t: &ClassTemplate,
    img_dir: &Path,
    images: &mut Vec<Value>,
    anns: &mut Vec<Value>,
    cfg: &SynthConfig,
) -> Result<usize> {
    let rgb = RgbImage::from_pixel(70, 60, image::Rgb([90, 120, 30]));
    let jpg = jpeg_bytes(&rgb, cfg.jpeg_quality)?;
    let cat = t.cat_ids[0];
    let tri = json!([[5.0, 5.0, 50.0, 8.0, 30.0, 50.0]]);
    let mut add = |name: &str, bytes: &[u8], w: u32, h: u32, seg: Option<Value>| -> Result<()> {
        let file = format!("{}_{name}.JPEG", t.wnid);
        imageio::write_bulk(&img_dir.join(&file), bytes)?;
        let id = 900_000 + images.len() as i64;
        // One entry deviates from the release format: its folder is another class's wnid.
        let listed = if name == "other_wnid_folder" {
            format!("n99999999/{file}")
        } else {
            format!("{}/{file}", t.wnid)
        };
        images.push(json!({"id": id, "file_name": listed, "height": h, "width": w}));
        let mut a = json!({"id": 9_000_000 + anns.len() as i64, "image_id": id,
                           "category_id": cat, "iscrowd": 0});
        if let Some(s) = seg {
            a["segmentation"] = s;
        }
        anns.push(a);
        Ok(())
    };
    add("corrupt", &jpg[..jpg.len() / 3], 70, 60, Some(tri.clone()))?;
    add("size_mismatch", &jpg, 71, 60, Some(tri.clone()))?;
    add("no_segmentation", &jpg, 70, 60, None)?;
    add("short_ring", &jpg, 70, 60, Some(json!([[1.0, 2.0]])))?;
    add("other_wnid_folder", &jpg, 70, 60, Some(tri.clone()))?;
    // Written, with an "annotation paints no pixel" warning:
    add(
        "outside",
        &jpg,
        70,
        60,
        Some(json!([[100.0, 100.0, 120.0, 100.0, 110.0, 130.0]])),
    )?;
    // A class file that is not JSON, sorted last so no global id shifts.
    let broken = cfg
        .out
        .join("json")
        .join(format!("{}.json", wnid(cfg.classes)));
    imageio::write_atomic(&broken, b"{\"images\": [truncated")?;
    Ok(5)
}

/// Writes the synthetic dataset. Parallel over classes; output is a function of the config.
pub fn run_synth(cfg: &SynthConfig) -> Result<SynthSummary> {
    if cfg.classes == 0 || cfg.images_per_class == 0 {
        return Err(Error::flag(
            "--classes/--images-per-class",
            "must be at least 1",
        ));
    }
    if cfg.min_size < 16 || cfg.max_size < cfg.min_size || cfg.max_size > 4096 {
        return Err(Error::flag(
            "--min-size/--max-size",
            "need 16 <= min <= max <= 4096",
        ));
    }
    // OUT/json, OUT/including, OUT/images/<wnid>: two levels.
    let stale_temps_removed = crate::io::remove_stale_temps_tree(&cfg.out, 2)?;
    for d in ["json", "images", "including"] {
        imageio::mkdirs(&cfg.out.join(d))?;
    }
    let bulk = crate::io::BulkDirs::new(&cfg.out);
    let templates: Vec<ClassTemplate> = (0..cfg.classes).map(|c| make_class(cfg.seed, c)).collect();
    let mut first = Vec::new();
    let mut next = 1u32;
    for t in &templates {
        first.push(next);
        next += t.parts.len() as u32;
    }
    let outs: Vec<Result<ClassOut>> = templates
        .par_iter()
        .enumerate()
        .map(|(c, t)| write_class(t, c, first[c], cfg, &bulk))
        .collect();
    let mut s = SynthSummary {
        classes: cfg.classes,
        stale_temps_removed,
        ..Default::default()
    };
    for o in outs {
        let o = o?;
        s.images += o.images;
        s.annotations += o.annotations;
        s.discarded.extend(o.discarded);
        s.truth.extend(o.truth);
        s.faulty_images += o.faulty;
    }
    s.dirs_synced = bulk.sync()?;
    imageio::write_atomic(
        &cfg.out.join("discarded_data.json"),
        json!(s.discarded).to_string().as_bytes(),
    )?;
    let names: serde_json::Map<String, Value> = templates
        .iter()
        .map(|t| (t.wnid.clone(), json!(t.description)))
        .collect();
    imageio::write_atomic(
        &cfg.out.join("category_name.json"),
        Value::Object(names).to_string().as_bytes(),
    )?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_folders_are_synced_once_and_stale_temps_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("synth");
        // A temp file left by a killed run (pid 0x7fff_fff0 never runs), in a class folder.
        let class_dir = out.join("images").join(wnid(1));
        std::fs::create_dir_all(&class_dir).unwrap();
        let stale = class_dir.join(".x.JPEG.tmp.2147483632.7");
        std::fs::write(&stale, b"half").unwrap();
        let cfg = SynthConfig {
            out: out.clone(),
            classes: 2,
            images_per_class: 2,
            min_size: 32,
            max_size: 40,
            ..Default::default()
        };
        let s = run_synth(&cfg).unwrap();
        assert_eq!(s.stale_temps_removed, 1);
        assert!(!stale.exists());
        // images/<wnid> for each class, images/, and the output folder.
        assert_eq!(s.dirs_synced, 2 + 1 + 1);
        assert_eq!(s.images, 4);
    }

    #[test]
    fn a_failed_image_write_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("synth");
        // The first image's name is taken by a non-empty folder: the rename fails.
        let blocked = out
            .join("images")
            .join(wnid(0))
            .join(format!("{}_1000.JPEG", wnid(0)));
        std::fs::create_dir_all(blocked.join("x")).unwrap();
        let cfg = SynthConfig {
            out,
            classes: 1,
            images_per_class: 1,
            min_size: 32,
            max_size: 40,
            ..Default::default()
        };
        let e = run_synth(&cfg).unwrap_err().to_string();
        assert!(e.contains("_1000.JPEG"), "{e}");
    }
}
