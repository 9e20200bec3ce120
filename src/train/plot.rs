//! Pictures of a training run: the curves from `metrics.jsonl` (drawn by `crate::charts`, like
//! every chart the project writes) and the part-prediction overlays (image | true parts |
//! predicted parts, drawn pixel by pixel here; the text in the bundled font through
//! `charts::draw_labels`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::charts::{self, Label, Markers, Panel, Series};
use crate::data::show::part_color;
use crate::{Error, Result};

/// Curves of one run, by epoch (1-based, whole numbers), accuracies as fractions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunCurves {
    pub loss: Vec<(f64, f64)>,
    pub train_acc: Vec<(f64, f64)>,
    pub clean: Vec<(f64, f64)>,
    pub pgd: Vec<(f64, f64)>,
    pub pixel: Vec<(f64, f64)>,
    /// What the PGD curve measures, e.g. "PGD-10, eps 4/255" (from the first eval record).
    pub pgd_desc: Option<String>,
}

/// Reads `metrics.jsonl`. Lines that are not JSON are skipped; when a resumed run wrote an
/// epoch twice, its last record wins.
pub fn read_curves(metrics: &Path) -> Result<RunCurves> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    let mut train: BTreeMap<i64, serde_json::Value> = BTreeMap::new();
    let mut eval: BTreeMap<i64, serde_json::Value> = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(e) = v["epoch"].as_i64() else {
            continue;
        };
        match v["kind"].as_str() {
            Some("train") => {
                train.insert(e, v);
            }
            Some("eval") => {
                eval.insert(e, v);
            }
            _ => {}
        }
    }
    let mut r = RunCurves::default();
    for (&e, v) in &train {
        let e = e as f64;
        if let Some(l) = v["loss"].as_f64() {
            r.loss.push((e, l));
        }
        if let Some(a) = v["acc"].as_f64() {
            r.train_acc.push((e, a));
        }
    }
    for (&e, v) in &eval {
        let e = e as f64;
        if let Some(a) = v["clean_acc"].as_f64() {
            r.clean.push((e, a));
        }
        if let Some(a) = v["pgd"][0]["acc"].as_f64() {
            r.pgd.push((e, a));
            if r.pgd_desc.is_none() {
                r.pgd_desc = pgd_desc(&v["pgd"][0]);
            }
        }
        if let Some(a) = v["pixel_acc"].as_f64() {
            r.pixel.push((e, a));
        }
    }
    Ok(r)
}

/// "PGD-10, eps 4/255" from `{"eps": 0.0157, "steps": 10}`.
fn pgd_desc(p: &serde_json::Value) -> Option<String> {
    let eps = p["eps"].as_f64()?;
    let steps = p["steps"].as_u64();
    let k = eps * 255.0;
    let eps = if (k - k.round()).abs() < 1e-3 {
        format!("{}/255", k.round())
    } else {
        format!("{eps:.4}")
    };
    Some(match steps {
        Some(s) => format!("PGD-{s}, eps {eps}"),
        None => format!("PGD, eps {eps}"),
    })
}

fn pct(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    points.iter().map(|&(x, y)| (x, 100.0 * y)).collect()
}

fn series(name: &str, points: Vec<(f64, f64)>) -> Series {
    Series {
        name: name.into(),
        points,
    }
}

const EPOCH: &str = "epoch";
const ACC: &str = "accuracy (%)";

/// `dir/curves.png` for one run: the training loss, and the accuracies (adversarial training
/// batches, EMA clean, EMA PGD, part pixel accuracy) in %.
pub fn curves_from_metrics(metrics: &Path, dir: &Path) -> Result<()> {
    let r = read_curves(metrics)?;
    let pgd = format!("eval {}", r.pgd_desc.as_deref().unwrap_or("PGD"));
    charts::figure(
        &dir.join("curves.png"),
        &[
            Panel {
                title: "training loss (adversarial batches)".into(),
                x_label: EPOCH.into(),
                y_label: "loss (CE + lambda x part loss)".into(),
                lines: vec![series("training loss", r.loss)],
                ..Panel::default()
            },
            Panel {
                title: "accuracy".into(),
                x_label: EPOCH.into(),
                y_label: ACC.into(),
                lines: vec![
                    series("train (adversarial)", pct(&r.train_acc)),
                    series("eval clean", pct(&r.clean)),
                    series(&pgd, pct(&r.pgd)),
                    series("part pixel acc", pct(&r.pixel)),
                ],
                y_range: Some((0.0, 100.0)),
                ..Panel::default()
            },
        ],
    )
}

/// One run of a comparison: its name, its curves, and its AutoAttack robust accuracy
/// (fraction) when measured; `aa_desc` says which attacks and budget, for the legend.
pub struct RunResult<'a> {
    pub name: &'a str,
    pub curves: &'a RunCurves,
    pub autoattack: Option<f64>,
}

/// Side-by-side curves of several runs (the demo's vanilla and MPM): training loss, EMA clean
/// accuracy and EMA PGD accuracy per epoch, run `i` in colour `i`; a run's AutoAttack result is
/// a diamond of its colour at its last epoch on the PGD panel, its value written next to it.
pub fn compare_runs(runs: &[RunResult<'_>], aa_desc: &str, path: &Path) -> Result<()> {
    let lines = |f: &dyn Fn(&RunCurves) -> Vec<(f64, f64)>| -> Vec<Series> {
        runs.iter().map(|r| series(r.name, f(r.curves))).collect()
    };
    let pgd_desc = runs
        .iter()
        .find_map(|r| r.curves.pgd_desc.clone())
        .unwrap_or_else(|| "PGD".into());
    let markers = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let aa = r.autoattack?;
            let last = r
                .curves
                .pgd
                .iter()
                .chain(&r.curves.loss)
                .map(|p| p.0)
                .fold(f64::NAN, f64::max);
            Some(Markers {
                series: series(
                    &format!("{}: {aa_desc}", r.name),
                    vec![(if last.is_finite() { last } else { 0.0 }, 100.0 * aa)],
                ),
                colour: i,
                value_labels: true,
            })
        })
        .collect();
    charts::figure(
        path,
        &[
            Panel {
                title: "training loss (adversarial batches)".into(),
                x_label: EPOCH.into(),
                y_label: "loss (CE + lambda x part loss)".into(),
                lines: lines(&|c| c.loss.clone()),
                ..Panel::default()
            },
            Panel {
                title: "EMA clean accuracy".into(),
                x_label: EPOCH.into(),
                y_label: ACC.into(),
                lines: lines(&|c| pct(&c.clean)),
                y_range: Some((0.0, 100.0)),
                ..Panel::default()
            },
            Panel {
                title: format!("EMA robust accuracy ({pgd_desc})"),
                x_label: EPOCH.into(),
                y_label: ACC.into(),
                lines: lines(&|c| pct(&c.pgd)),
                markers,
                y_range: Some((0.0, 100.0)),
            },
        ],
    )
}

/// Part names by global part id (index 0 = background) from a `parts.tsv`
/// (`global_id<TAB>wnid<TAB>name`, as `mpm-data labels` writes it). Unreadable lines are
/// skipped: the names only label a picture.
pub fn part_names(parts_tsv: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(parts_tsv).map_err(|e| Error::io(parts_tsv, e))?;
    let mut names = vec!["background".to_string()];
    for line in text.lines() {
        let mut f = line.split('\t');
        let (Some(id), Some(_wnid), Some(name)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(id) = id.trim().parse::<usize>() else {
            continue;
        };
        if id >= names.len() {
            names.resize(id + 1, String::new());
        }
        names[id] = name.trim().to_string();
    }
    Ok(names)
}

/// Each tile is at least this many pixels wide: a 64-px input at 3x, where parts of a few
/// pixels (legs, tails) are visible.
const MIN_TILE: usize = 192;
const GAP: usize = 8;
const HEAD: usize = 30;
const LABEL_PX: f64 = 16.0;
const LEGEND_PX: f64 = 15.0;
const SWATCH: usize = 16;

/// A grid of rows `image | true parts | predicted parts`, tiles at least [`MIN_TILE`] px
/// (nearest-neighbour upscaling, so every label pixel stays a visible block), and a legend of
/// the parts that occur. In the part columns the image is greyed and darkened and every part
/// painted in its colour (the one `mpm-data show` uses), with darker borders between parts, so
/// a prediction reads as a map and cannot be mistaken for the input.
/// `images`: `(N, side, side, 3)` in [0, 1]; `maps`: `(N, side, side)` part ids;
/// `preds`: `(N, pred_side, pred_side)` part ids; `names`: part names by id (may be empty).
#[allow(clippy::too_many_arguments)]
pub fn overlays(
    images: &[f32],
    maps: &[u16],
    preds: &[usize],
    n: usize,
    side: usize,
    pred_side: usize,
    names: &[String],
    path: &Path,
) -> Result<()> {
    let (side, pred_side) = (side.max(1), pred_side.max(1));
    if images.len() < n * side * side * 3
        || maps.len() < n * side * side
        || preds.len() < n * pred_side * pred_side
    {
        return Err(Error::format(
            path,
            format!(
                "overlays: {n} rows of {side}x{side} need {} image values, {} label values and \
                 {} predictions; got {}, {}, {}",
                n * side * side * 3,
                n * side * side,
                n * pred_side * pred_side,
                images.len(),
                maps.len(),
                preds.len()
            ),
        ));
    }
    let scale = MIN_TILE.div_ceil(side).max(1);
    let tile = side * scale;
    let name_of = |id: usize| -> String {
        match names.get(id).filter(|s| !s.is_empty()) {
            Some(s) => format!("{id} {s}"),
            None => format!("part {id}"),
        }
    };
    // Parts present in the true or predicted maps, in id order, for the legend.
    let mut present: Vec<usize> = maps
        .iter()
        .take(n * side * side)
        .map(|&m| m as usize)
        .chain(preds.iter().take(n * pred_side * pred_side).copied())
        .filter(|&id| id != 0)
        .collect();
    present.sort_unstable();
    present.dedup();
    let legend_w = present
        .iter()
        .map(|&id| charts::label_width(&name_of(id), LEGEND_PX) as usize)
        .max()
        .unwrap_or(0)
        + SWATCH
        + 3 * GAP;
    let w = 3 * tile + 4 * GAP + legend_w;
    let legend_h = HEAD + GAP + present.len() * (SWATCH + 6);
    let h = (HEAD + n * (tile + GAP) + GAP).max(legend_h);
    let mut px = vec![255u8; w * h * 3];
    let mut put = |x: usize, y: usize, c: [u8; 3]| {
        let i = (y * w + x) * 3;
        px[i..i + 3].copy_from_slice(&c);
    };
    for i in 0..n {
        let oy = HEAD + i * (tile + GAP);
        let rgb_at = |sy: usize, sx: usize| -> [u8; 3] {
            let p = ((i * side + sy) * side + sx) * 3;
            std::array::from_fn(|k| (images[p + k] * 255.0).clamp(0.0, 255.0) as u8)
        };
        let truth = |sy: usize, sx: usize| maps[(i * side + sy) * side + sx] as usize;
        let pred = |sy: usize, sx: usize| {
            let (py, pxx) = (sy * pred_side / side, sx * pred_side / side);
            preds[(i * pred_side + py) * pred_side + pxx]
        };
        for y in 0..tile {
            for x in 0..tile {
                let (sy, sx) = (y / scale, x / scale);
                let rgb = rgb_at(sy, sx);
                put(GAP + x, oy + y, rgb);
                for (col, label) in [
                    (1usize, &truth as &dyn Fn(usize, usize) -> usize),
                    (2, &pred),
                ] {
                    let id = label(sy, sx);
                    // A border pixel: the last screen pixel of a label cell whose right or
                    // lower neighbour has another part.
                    let edge = (x % scale == scale - 1 && sx + 1 < side && label(sy, sx + 1) != id)
                        || (y % scale == scale - 1 && sy + 1 < side && label(sy + 1, sx) != id);
                    let c = paint(rgb, id, edge);
                    put(GAP + col * (tile + GAP) + x, oy + y, c);
                }
            }
        }
    }
    let lx = 3 * tile + 4 * GAP + GAP;
    for (k, &id) in present.iter().enumerate() {
        let ly = HEAD + GAP + k * (SWATCH + 6);
        for y in ly..ly + SWATCH {
            for x in lx..lx + SWATCH {
                put(x, y, part_color(id as u32));
            }
        }
    }
    let mut labels = vec![
        head_label(GAP, "image"),
        head_label(2 * GAP + tile, "true parts"),
        head_label(
            3 * GAP + 2 * tile,
            &format!("predicted ({pred_side}x{pred_side} head)"),
        ),
    ];
    if !present.is_empty() {
        labels.push(head_label(lx, "parts"));
    }
    for (k, &id) in present.iter().enumerate() {
        labels.push(Label {
            x: (lx + SWATCH + 6) as i32,
            y: (HEAD + GAP + k * (SWATCH + 6)) as i32,
            text: name_of(id),
            px: LEGEND_PX,
            bold: false,
        });
    }
    charts::draw_labels(&mut px, w as u32, h as u32, &labels)?;
    charts::write_png(path, &px, w as u32, h as u32)
}

fn head_label(x: usize, text: &str) -> Label {
    Label {
        x: x as i32,
        y: 6,
        text: text.into(),
        px: LABEL_PX,
        bold: true,
    }
}

/// A part-column pixel: background = the image greyed and darkened (context without colour
/// that could be taken for a part); a part = its colour over 25% of the grey; borders darker.
fn paint(rgb: [u8; 3], id: usize, edge: bool) -> [u8; 3] {
    let grey = (0.299 * rgb[0] as f32 + 0.587 * rgb[1] as f32 + 0.114 * rgb[2] as f32) * 0.55;
    if id == 0 {
        return [grey as u8; 3];
    }
    let c = part_color(id as u32);
    let k = if edge { 0.55 } else { 1.0 };
    std::array::from_fn(|i| ((0.75 * c[i] as f32 + 0.25 * grey) * k) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_read_whole_epochs_and_the_last_record_of_a_repeated_epoch() {
        let dir = tempfile_dir("curves");
        let m = dir.join("metrics.jsonl");
        std::fs::write(
            &m,
            "{\"kind\":\"train\",\"epoch\":1,\"loss\":2.5,\"acc\":0.25}\n\
             not json\n\
             {\"kind\":\"train\",\"epoch\":2,\"loss\":9.0,\"acc\":0.1}\n\
             {\"kind\":\"train\",\"epoch\":2,\"loss\":2.0,\"acc\":0.5}\n\
             {\"kind\":\"eval\",\"epoch\":2,\"clean_acc\":0.6,\"pgd\":[{\"eps\":0.01568627450980392,\"steps\":10,\"acc\":0.3}]}\n",
        )
        .unwrap();
        let r = read_curves(&m).unwrap();
        assert_eq!(r.loss, vec![(1.0, 2.5), (2.0, 2.0)]);
        assert_eq!(r.train_acc, vec![(1.0, 0.25), (2.0, 0.5)]);
        assert_eq!(r.pgd, vec![(2.0, 0.3)]);
        assert_eq!(r.pgd_desc.as_deref(), Some("PGD-10, eps 4/255"));
        curves_from_metrics(&m, &dir).unwrap();
        let png = image::open(dir.join("curves.png")).unwrap().to_rgb8();
        // Two charts::figure panels side by side.
        assert_eq!(png.width(), 2 * 520);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn overlays_paint_parts_not_the_input_and_list_their_names() {
        let dir = tempfile_dir("overlays");
        let side = 8;
        // A mid-grey image with part 2 in the top half (truth) and part 3 predicted everywhere.
        let images = vec![0.5f32; side * side * 3];
        let maps: Vec<u16> = (0..side * side)
            .map(|p| if p < side * side / 2 { 2 } else { 0 })
            .collect();
        let preds = vec![3usize; 4];
        let names: Vec<String> = ["background", "body", "leg", "tail"]
            .map(String::from)
            .to_vec();
        let p = dir.join("parts.png");
        overlays(&images, &maps, &preds, 1, side, 2, &names, &p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        let tile = 192;
        assert!(img.width() as usize > 3 * tile && img.height() as usize >= tile + HEAD);
        let at = |col: usize, x: usize, y: usize| {
            img.get_pixel((GAP + col * (tile + GAP) + x) as u32, (HEAD + y) as u32)
                .0
        };
        // The predicted column shows part 3's colour, far from the grey input.
        let c3 = part_color(3);
        let got = at(2, tile / 2, tile / 2);
        let input = at(0, tile / 2, tile / 2);
        assert_eq!(input, [127, 127, 127]);
        for k in 0..3 {
            assert!(
                (got[k] as i32 - (0.75 * c3[k] as f32) as i32).abs() <= 20,
                "{got:?} vs {c3:?}"
            );
        }
        let dist: i32 = (0..3)
            .map(|k| (got[k] as i32 - input[k] as i32).abs())
            .sum();
        assert!(
            dist > 60,
            "prediction {got:?} too close to the input {input:?}"
        );
        // Truth: part 2 on top, darkened grey background below.
        assert_ne!(at(1, 10, 10), at(1, 10, tile - 10));
        assert_eq!(at(1, 10, tile - 10), [69, 69, 69]);
        // Size mismatch is an error naming what was expected.
        let e = overlays(&images, &maps, &preds[..3], 1, side, 2, &names, &p).unwrap_err();
        assert!(e.to_string().contains("need"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn part_names_by_global_id() {
        let dir = tempfile_dir("names");
        let p = dir.join("parts.tsv");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&p, "1\tn01\tbody\n3\tn01\ttail\nbad line\n").unwrap();
        assert_eq!(part_names(&p).unwrap(), ["background", "body", "", "tail"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir(what: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("mpm-plot-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
