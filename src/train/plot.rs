//! PNG pictures without a plotting library: line charts of the training curves (from
//! `metrics.jsonl`) and part-prediction overlays (image | label map | prediction).

use crate::{Error, Result};
use std::path::Path;

/// An RGB canvas.
pub struct Canvas {
    pub w: usize,
    pub h: usize,
    pub px: Vec<u8>,
}

pub const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [23, 190, 207],
];

impl Canvas {
    pub fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    pub fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    pub fn rect(&mut self, x0: i64, y0: i64, w: i64, h: i64, c: [u8; 3]) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.set(x, y, c);
            }
        }
    }

    /// A 2-pixel-wide line (Bresenham).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            self.set(x, y + 1, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// 8x8 bitmap text (ASCII).
    pub fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let code = ch as usize;
            let glyph = font8x8::legacy::BASIC_LEGACY
                .get(code)
                .copied()
                .unwrap_or(font8x8::legacy::BASIC_LEGACY[b'?' as usize]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.set(x + 8 * k as i64 + col, y + row as i64, c);
                    }
                }
            }
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        image::save_buffer(
            path,
            &self.px,
            self.w as u32,
            self.h as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::format(path, format!("writing PNG: {e}")))
    }
}

/// One line of a chart.
pub struct Series {
    pub label: String,
    pub colour: [u8; 3],
    pub points: Vec<(f64, f64)>,
}

/// One chart panel.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
    /// Fixed y range (e.g. 0..1 for accuracies); auto when None.
    pub y_range: Option<(f64, f64)>,
}

fn nice(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws panels side by side into one PNG.
pub fn chart(panels: &[Panel], path: &Path) -> Result<()> {
    let (pw, ph) = (420i64, 300i64);
    let mut c = Canvas::new((pw as usize) * panels.len().max(1), ph as usize);
    for (k, p) in panels.iter().enumerate() {
        let ox = k as i64 * pw;
        let (l, r, t, b) = (ox + 48, ox + pw - 12, 24i64, ph - 60);
        c.text(ox + 48, 6, &p.title, [0, 0, 0]);
        let pts: Vec<(f64, f64)> = p.series.iter().flat_map(|s| s.points.clone()).collect();
        if pts.is_empty() {
            c.text(l + 10, (t + b) / 2, "no data", [120, 120, 120]);
            continue;
        }
        let (mut x0, mut x1) = (f64::MAX, f64::MIN);
        let (mut y0, mut y1) = (f64::MAX, f64::MIN);
        for &(x, y) in &pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if let Some((a, bb)) = p.y_range {
            y0 = a;
            y1 = bb;
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if y1 <= y0 {
            y1 = y0 + 1.0;
        }
        let sx = |x: f64| l + ((x - x0) / (x1 - x0) * (r - l) as f64).round() as i64;
        let sy = |y: f64| b - ((y - y0) / (y1 - y0) * (b - t) as f64).round() as i64;
        for i in 0..=4 {
            let yv = y0 + (y1 - y0) * i as f64 / 4.0;
            let yy = sy(yv);
            for x in l..=r {
                if x % 4 == 0 {
                    c.set(x, yy, [220, 220, 220]);
                }
            }
            c.text(ox + 2, yy - 4, &nice(yv), [60, 60, 60]);
            let xv = x0 + (x1 - x0) * i as f64 / 4.0;
            c.text(sx(xv) - 8, b + 6, &nice(xv), [60, 60, 60]);
        }
        c.line((l, b), (r, b), [0, 0, 0]);
        c.line((l, t), (l, b), [0, 0, 0]);
        c.text(
            (l + r) / 2 - 4 * p.x_label.len() as i64,
            b + 18,
            &p.x_label,
            [0, 0, 0],
        );
        for (j, s) in p.series.iter().enumerate() {
            for w in s.points.windows(2) {
                c.line((sx(w[0].0), sy(w[0].1)), (sx(w[1].0), sy(w[1].1)), s.colour);
            }
            for &(x, y) in &s.points {
                c.rect(sx(x) - 2, sy(y) - 2, 5, 5, s.colour);
            }
            let ly = ph - 28 + 10 * (j as i64 % 3);
            let lx = l + (j as i64 / 3) * 180;
            c.rect(lx, ly + 2, 10, 4, s.colour);
            c.text(lx + 14, ly, &s.label, [0, 0, 0]);
        }
    }
    c.save(path)
}

/// Per-run curves from a metrics file: (train loss, train acc, eval clean, eval PGD).
pub struct RunCurves {
    pub loss: Vec<(f64, f64)>,
    pub train_acc: Vec<(f64, f64)>,
    pub clean: Vec<(f64, f64)>,
    pub pgd: Vec<(f64, f64)>,
    pub pixel: Vec<(f64, f64)>,
}

pub fn read_curves(metrics: &Path) -> Result<RunCurves> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    let mut r = RunCurves {
        loss: vec![],
        train_acc: vec![],
        clean: vec![],
        pgd: vec![],
        pixel: vec![],
    };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let e = v["epoch"].as_f64().unwrap_or(0.0);
        match v["kind"].as_str() {
            Some("train") => {
                if let Some(l) = v["loss"].as_f64() {
                    r.loss.push((e, l));
                }
                if let Some(a) = v["acc"].as_f64() {
                    r.train_acc.push((e, a));
                }
            }
            Some("eval") => {
                if let Some(a) = v["clean_acc"].as_f64() {
                    r.clean.push((e, a));
                }
                if let Some(a) = v["pgd"][0]["acc"].as_f64() {
                    r.pgd.push((e, a));
                }
                if let Some(a) = v["pixel_acc"].as_f64() {
                    r.pixel.push((e, a));
                }
            }
            _ => {}
        }
    }
    Ok(r)
}

/// `dir/curves.png` for one run: loss, and accuracies (adversarial train, EMA clean, EMA PGD).
pub fn curves_from_metrics(metrics: &Path, dir: &Path) -> Result<()> {
    let r = read_curves(metrics)?;
    let s = |label: &str, k: usize, points: Vec<(f64, f64)>| Series {
        label: label.into(),
        colour: PALETTE[k],
        points,
    };
    chart(
        &[
            Panel {
                title: "training loss".into(),
                x_label: "epoch".into(),
                series: vec![s("loss (adv. batch)", 0, r.loss)],
                y_range: None,
            },
            Panel {
                title: "accuracy".into(),
                x_label: "epoch".into(),
                series: vec![
                    s("train (adv.)", 0, r.train_acc),
                    s("eval clean", 1, r.clean),
                    s("eval PGD", 2, r.pgd),
                    s("part pixel acc", 3, r.pixel),
                ],
                y_range: Some((0.0, 1.0)),
            },
        ],
        &dir.join("curves.png"),
    )
}

/// Colour of part id `v` in overlays (0 = background: dark grey).
pub fn part_colour(v: usize) -> [u8; 3] {
    if v == 0 {
        return [40, 40, 40];
    }
    let c = PALETTE[(v - 1) % PALETTE.len()];
    let shade = 1.0 - 0.35 * (((v - 1) / PALETTE.len()) % 3) as f32;
    [
        (c[0] as f32 * shade) as u8,
        (c[1] as f32 * shade) as u8,
        (c[2] as f32 * shade) as u8,
    ]
}

/// A grid of rows `image | label map | predicted parts`, each tile `scale` x the input.
/// `images`: `(N, H, W, 3)` in [0, 1]; `maps`: `(N, H, W)`; `preds`: `(N, h, w)` part ids.
pub fn overlays(
    images: &[f32],
    maps: &[u16],
    preds: &[usize],
    n: usize,
    side: usize,
    pred_side: usize,
    path: &Path,
) -> Result<()> {
    let scale = (96 / side.max(1)).max(1);
    let tile = side * scale;
    let gap = 4;
    let mut c = Canvas::new(3 * tile + 4 * gap, n * (tile + gap) + gap + 14);
    c.text(gap as i64, 3, "image", [0, 0, 0]);
    c.text((tile + 2 * gap) as i64, 3, "parts", [0, 0, 0]);
    c.text((2 * tile + 3 * gap) as i64, 3, "predicted", [0, 0, 0]);
    for i in 0..n {
        let oy = 14 + gap + i * (tile + gap);
        for y in 0..tile {
            for x in 0..tile {
                let (sy, sx) = (y / scale, x / scale);
                let p = (i * side + sy) * side + sx;
                let rgb = [
                    (images[p * 3] * 255.0).clamp(0.0, 255.0) as u8,
                    (images[p * 3 + 1] * 255.0).clamp(0.0, 255.0) as u8,
                    (images[p * 3 + 2] * 255.0).clamp(0.0, 255.0) as u8,
                ];
                c.set((gap + x) as i64, (oy + y) as i64, rgb);
                let m = maps[p] as usize;
                let blend = |a: [u8; 3], b: [u8; 3]| {
                    [
                        ((a[0] as u16 + b[0] as u16) / 2) as u8,
                        ((a[1] as u16 + b[1] as u16) / 2) as u8,
                        ((a[2] as u16 + b[2] as u16) / 2) as u8,
                    ]
                };
                let gt = if m == 0 {
                    rgb
                } else {
                    blend(rgb, part_colour(m))
                };
                c.set((2 * gap + tile + x) as i64, (oy + y) as i64, gt);
                let (py, px) = (y * pred_side / tile, x * pred_side / tile);
                let pv = preds[(i * pred_side + py) * pred_side + px];
                let pr = if pv == 0 {
                    rgb
                } else {
                    blend(rgb, part_colour(pv))
                };
                c.set((3 * gap + 2 * tile + x) as i64, (oy + y) as i64, pr);
            }
        }
    }
    c.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_writes_a_png() {
        let dir = std::env::temp_dir().join(format!("mpm-plot-{}", std::process::id()));
        let p = dir.join("c.png");
        chart(
            &[Panel {
                title: "t".into(),
                x_label: "epoch".into(),
                series: vec![Series {
                    label: "a".into(),
                    colour: PALETTE[0],
                    points: vec![(1.0, 0.5), (2.0, 0.7)],
                }],
                y_range: Some((0.0, 1.0)),
            }],
            &p,
        )
        .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
