//! `mpm-data show`: PNG overlay grids. One row per class: N samples (image blended with a colour
//! per part, part borders darkened) and a legend with the part names.
//!
//! Sources: annotations (`--json-dir` + `--images`, painted like `labels`) or label maps
//! (`--seg` + `--images` + `--parts parts.tsv`; works for pseudo labels and predictions too).

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

use super::augment::{resize_bicubic, resize_nearest, CropBox};
use super::imageio::{self, read_label_map, read_rgb, LabelMap};
use super::labels::paint_image;
use super::pin_json::{self, PartTable};
use super::report::Skip;
use crate::{Error, Result};

/// Deterministic, well-spread colour of a global part id (0 = background, not drawn).
pub fn part_color(id: u32) -> [u8; 3] {
    let h = (id as f64 * 0.618_033_988_75).fract();
    let (s, v) = (0.85, if id % 2 == 0 { 0.95 } else { 0.75 });
    let hp = h * 6.0;
    let c = v * s;
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
        ((r + m) * 255.0) as u8,
        ((g + m) * 255.0) as u8,
        ((b + m) * 255.0) as u8,
    ]
}

fn fill(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, c: [u8; 3]) {
    for yy in y..(y + h).min(img.height()) {
        for xx in x..(x + w).min(img.width()) {
            img.put_pixel(xx, yy, Rgb(c));
        }
    }
}

/// One sample: the image and its overlay side by side, each fitted in a `tile x tile` square
/// (letterboxed): `(2 * tile + 2) x tile`.
pub fn overlay(img: &RgbImage, map: &LabelMap, tile: usize, alpha: f32) -> Result<RgbImage> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let k = tile as f64 / w.max(h) as f64;
    let (ow, oh) = (
        ((w as f64 * k).round() as usize).max(1),
        ((h as f64 * k).round() as usize).max(1),
    );
    let full = CropBox {
        top: 0,
        left: 0,
        h,
        w,
    };
    let small = resize_bicubic(img, full, ow, oh)?;
    let m = resize_nearest(map, full, ow, oh);
    // Left: the image; right: the overlay.
    let gap = 2;
    let mut out = RgbImage::from_pixel((2 * tile + gap) as u32, tile as u32, Rgb([24, 24, 24]));
    let (ox, oy) = ((tile - ow) / 2, (tile - oh) / 2);
    image::imageops::replace(&mut out, &small, ox as i64, oy as i64);
    let ox = ox + tile + gap;
    for y in 0..oh {
        for x in 0..ow {
            let id = m.data[y * ow + x];
            let p = small.get_pixel(x as u32, y as u32).0;
            let q = if id == 0 {
                p
            } else {
                let c = part_color(id as u32);
                let edge = [(0i64, 1i64), (1, 0), (0, -1), (-1, 0)]
                    .iter()
                    .any(|&(dx, dy)| {
                        let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                        nx >= 0
                            && ny >= 0
                            && (nx as usize) < ow
                            && (ny as usize) < oh
                            && m.data[ny as usize * ow + nx as usize] != id
                    });
                if edge {
                    c.map(|v| v / 2)
                } else {
                    std::array::from_fn(|i| {
                        (alpha * c[i] as f32 + (1.0 - alpha) * p[i] as f32) as u8
                    })
                }
            };
            out.put_pixel((ox + x) as u32, (oy + y) as u32, Rgb(q));
        }
    }
    Ok(out)
}

/// One grid row: wnid, legend `(global id, part name)`, sample tiles.
type Row = (String, Vec<(u32, String)>, Vec<RgbImage>);

/// Where `show` takes its maps from.
pub enum ShowSource {
    Annotations {
        json_dir: PathBuf,
        including: Option<PathBuf>,
    },
    LabelMaps {
        seg: PathBuf,
        parts: PathBuf,
    },
}

pub struct ShowConfig {
    pub source: ShowSource,
    pub images: PathBuf,
    pub out: PathBuf,
    pub per_class: usize,
    pub max_classes: usize,
    pub tile: usize,
    pub alpha: f32,
}

/// Writes the grid PNG; returns the number of tiles drawn and the skipped items.
pub fn run_show(cfg: &ShowConfig) -> Result<(usize, Vec<Skip>)> {
    let mut skips = Vec::new();
    // rows: (wnid, part names with ids, tiles)
    let mut rows: Vec<Row> = Vec::new();
    match &cfg.source {
        ShowSource::Annotations {
            json_dir,
            including,
        } => {
            let files = pin_json::class_files(json_dir)?;
            let mut classes = Vec::new();
            for (_, p) in &files {
                match pin_json::read_class(p) {
                    Ok(c) => classes.push(c),
                    Err(e) => skips.push(Skip::from_error(p, &e)),
                }
            }
            let table = PartTable::from_classes(&classes.iter().collect::<Vec<_>>());
            for (ci, c) in classes.iter().enumerate().take(cfg.max_classes) {
                let names: Vec<String> = c.categories.iter().map(|x| x.1.clone()).collect();
                let depths = match pin_json::class_depths(including.as_deref(), c) {
                    Ok(d) => d,
                    Err(e) => {
                        skips.push(Skip::from_error(&c.path, &e));
                        vec![0; names.len()]
                    }
                };
                let legend = names
                    .iter()
                    .enumerate()
                    .map(|(r, n)| (table.first_id[ci] + r as u32, n.clone()))
                    .collect();
                let mut tiles = Vec::new();
                for img in &c.images {
                    if tiles.len() >= cfg.per_class {
                        break;
                    }
                    let src = cfg.images.join(&c.wnid).join(img.base_name());
                    let r = read_rgb(&src).and_then(|rgb| {
                        // Size check first: the JSON size decides how much memory painting takes.
                        if (img.width, img.height) != (rgb.width() as usize, rgb.height() as usize)
                        {
                            return Err(Error::format(
                                &src,
                                "image size differs from its JSON entry",
                            ));
                        }
                        let (map, _) = paint_image(img, c, table.first_id[ci], &depths)
                            .map_err(|e| Error::format(&src, e))?;
                        overlay(&rgb, &map, cfg.tile, cfg.alpha)
                    });
                    match r {
                        Ok(t) => tiles.push(t),
                        Err(e) => skips.push(Skip::from_error(&src, &e)),
                    }
                }
                rows.push((c.wnid.clone(), legend, tiles));
            }
        }
        ShowSource::LabelMaps { seg, parts } => {
            let table = PartTable::from_tsv(parts)?;
            for (ci, wnid) in table.wnids.iter().enumerate().take(cfg.max_classes) {
                let legend = table.names[ci]
                    .iter()
                    .enumerate()
                    .map(|(r, n)| (table.first_id[ci] + r as u32, n.clone()))
                    .collect();
                let mut tiles = Vec::new();
                let dir = seg.join(wnid);
                let mut pngs: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                    .unwrap_or_default();
                pngs.sort();
                for p in pngs {
                    if tiles.len() >= cfg.per_class {
                        break;
                    }
                    let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else {
                        continue;
                    };
                    let img_path = find_image(&cfg.images.join(wnid), stem);
                    let r = img_path
                        .ok_or_else(|| Error::format(&p, "no image with this stem"))
                        .and_then(|ip| {
                            let rgb = read_rgb(&ip)?;
                            let map = read_label_map(&p)?;
                            if (map.w, map.h) != (rgb.width() as usize, rgb.height() as usize) {
                                return Err(Error::format(
                                    &p,
                                    "label map size differs from the image",
                                ));
                            }
                            overlay(&rgb, &map, cfg.tile, cfg.alpha)
                        });
                    match r {
                        Ok(t) => tiles.push(t),
                        Err(e) => skips.push(Skip::from_error(&p, &e)),
                    }
                }
                rows.push((wnid.clone(), legend, tiles));
            }
        }
    }
    let drawn: usize = rows.iter().map(|r| r.2.len()).sum();
    if drawn == 0 {
        return Err(Error::Msg("show: nothing to draw".into()));
    }
    let mut grid = compose(&rows, cfg);
    let (w, h) = grid.dimensions();
    crate::charts::draw_labels(&mut grid, w, h, &labels(&rows, cfg))?;
    // Through the atomic writer: an interrupted run leaves no half-written PNG.
    crate::charts::write_png(&cfg.out, &grid, w, h)?;
    Ok((drawn, skips))
}

fn find_image(dir: &Path, stem: &str) -> Option<PathBuf> {
    for ext in ["JPEG", "jpg", "jpeg", "png", "JPG"] {
        let p = dir.join(format!("{stem}.{ext}"));
        if p.exists() {
            return Some(p);
        }
    }
    None
}

const PAD: u32 = 4;
/// Height of the class-name line above each row of tiles.
const HEAD: u32 = 18;
const TEXT_PX: f64 = 13.0;
const LEGEND_ROW: u32 = 15;
const SWATCH: u32 = 11;

/// Legend text of a part: "id name".
fn legend_text(id: u32, name: &str) -> String {
    format!("{id} {name}")
}

fn legend_width(rows: &[Row]) -> u32 {
    rows.iter()
        .flat_map(|r| r.1.iter())
        .map(|(id, name)| crate::charts::label_width(&legend_text(*id, name), TEXT_PX))
        .max()
        .unwrap_or(0)
        + SWATCH
        + 12
}

fn row_height(rows: &[Row], cfg: &ShowConfig) -> u32 {
    let most_parts = rows.iter().map(|r| r.1.len() as u32).max().unwrap_or(1);
    (cfg.tile as u32 + HEAD).max(HEAD + LEGEND_ROW * most_parts)
}

/// The pixels: tiles and legend swatches (the text is drawn by [`labels`]).
fn compose(rows: &[Row], cfg: &ShowConfig) -> RgbImage {
    let tile = cfg.tile as u32;
    let row_h = row_height(rows, cfg);
    let tw = 2 * tile + 2;
    let width = PAD + cfg.per_class as u32 * (tw + PAD) + legend_width(rows);
    let height = PAD + rows.len() as u32 * (row_h + PAD);
    let mut g = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for (ri, (_, legend, tiles)) in rows.iter().enumerate() {
        let y0 = PAD + ri as u32 * (row_h + PAD);
        for (ti, t) in tiles.iter().enumerate() {
            let x0 = PAD + ti as u32 * (tw + PAD);
            image::imageops::replace(&mut g, t, x0 as i64, (y0 + HEAD) as i64);
        }
        let lx = PAD + cfg.per_class as u32 * (tw + PAD);
        for (li, (id, _)) in legend.iter().enumerate() {
            let ly = y0 + HEAD + li as u32 * LEGEND_ROW;
            fill(&mut g, lx, ly + 1, SWATCH, SWATCH, part_color(*id));
        }
    }
    g
}

/// The text of the grid, in the bundled font: each row's class, and its legend of parts.
fn labels(rows: &[Row], cfg: &ShowConfig) -> Vec<crate::charts::Label> {
    let tile = cfg.tile as u32;
    let row_h = row_height(rows, cfg);
    let lx = PAD + cfg.per_class as u32 * (2 * tile + 2 + PAD);
    let mut out = Vec::new();
    for (ri, (wnid, legend, _)) in rows.iter().enumerate() {
        let y0 = PAD + ri as u32 * (row_h + PAD);
        out.push(crate::charts::Label {
            x: PAD as i32,
            y: y0 as i32 + 1,
            text: wnid.clone(),
            px: TEXT_PX,
            bold: true,
        });
        for (li, (id, name)) in legend.iter().enumerate() {
            out.push(crate::charts::Label {
                x: (lx + SWATCH + 5) as i32,
                y: (y0 + HEAD + li as u32 * LEGEND_ROW) as i32,
                text: legend_text(*id, name),
                px: TEXT_PX,
                bold: false,
            });
        }
    }
    out
}

/// Makes sure the output's folder exists.
pub fn prepare_out(out: &Path) -> Result<()> {
    if let Some(p) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        imageio::mkdirs(p)?;
    }
    Ok(())
}
