//! Charts as PNG files: line charts (training curves, sweeps) and grouped bar charts
//! (robustness tables). `plotters` draws into an RGB buffer with the DejaVu Sans subset
//! bundled in `assets/fonts/` (so nothing is read from the system and a chart looks the same on
//! every machine); the buffer is encoded as PNG and written atomically (temp file + rename).
//!
//! Conventions every chart follows: axis titles carry their units (the caller writes them,
//! e.g. "accuracy (%)"); when every x value is a whole number (epochs, steps) the x ticks are
//! whole numbers; the legend sits in its own strip under the plot, so it never hides data;
//! series `i` of a chart gets colour `i` of matplotlib's `tab10` palette, which PyTorch users
//! know; non-finite points (a NaN loss) are left out of lines and ranges.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::{Error, Result};

/// One named line (or set of points) of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One group of bars (one x position) of a grouped bar chart: one value per series, in the
/// order of the chart's series names; NaN = missing (no bar, "n/a" written instead).
#[derive(Debug, Clone, PartialEq)]
pub struct BarGroup {
    pub label: String,
    pub values: Vec<f64>,
}

/// Points drawn as large diamonds, without a line: results measured once, e.g. the AutoAttack
/// accuracy of the final model, placed at the epoch it was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Markers {
    pub series: Series,
    /// Palette index: the colour of the line this result belongs to.
    pub colour: usize,
    /// Writes each point's y value next to it.
    pub value_labels: bool,
}

/// One plot of a figure: lines (series `i` in colour `i`) and marker sets over the same axes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub lines: Vec<Series>,
    pub markers: Vec<Markers>,
    /// Fixed y range, e.g. `(0.0, 100.0)` for accuracies in %; from the data when `None`.
    pub y_range: Option<(f64, f64)>,
}

/// The `tab10` palette (matplotlib's default colour cycle).
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// Colour `i` of [`PALETTE`] (cycling).
pub fn colour(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

const FONT: &str = "sans-serif";
const PANEL_W: u32 = 520;
const PLOT_H: u32 = 380;
const TITLE_PX: f64 = 19.0;
const AXIS_PX: f64 = 16.0;
const TICK_PX: f64 = 14.0;
const LEGEND_PX: f64 = 15.0;
const LEGEND_ROW: u32 = 22;

/// A line chart in one panel: one line per series (with a dot per point), legend below.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    figure(
        path,
        &[Panel {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            lines: series.to_vec(),
            markers: Vec::new(),
            y_range: None,
        }],
    )
}

/// Panels side by side in one PNG, each with its own axes and legend.
pub fn figure(path: &Path, panels: &[Panel]) -> Result<()> {
    if panels.is_empty() {
        return Err(Error::format(path, "chart: no panels to draw"));
    }
    let legend_rows = panels
        .iter()
        .map(|p| legend_layout(&legend_entries(p), PANEL_W).len())
        .max()
        .unwrap_or(0) as u32;
    let (w, h) = (
        PANEL_W * panels.len() as u32,
        PLOT_H + legend_rows * LEGEND_ROW + 10,
    );
    render(path, (w, h), |root| {
        let areas = root.split_evenly((1, panels.len()));
        for (area, panel) in areas.iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        Ok(())
    })
}

/// Grouped bars: one group per `groups` entry along x, one bar per series inside each group
/// (series `i` in colour `i`, named in the legend), each bar labelled with its value. The y
/// axis starts at 0 (or below, for negative values).
pub fn grouped_bar_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series_names: &[String],
    groups: &[BarGroup],
) -> Result<()> {
    if groups.is_empty() || series_names.is_empty() {
        return Err(Error::format(path, "bar chart: no groups or no series"));
    }
    if let Some(g) = groups.iter().find(|g| g.values.len() != series_names.len()) {
        return Err(Error::format(
            path,
            format!(
                "bar chart: group '{}' has {} values for {} series",
                g.label,
                g.values.len(),
                series_names.len()
            ),
        ));
    }
    let k = series_names.len();
    // Room for the widest group label and for k bars of at least 22 px.
    let label_px = groups
        .iter()
        .map(|g| text_width(&g.label, TICK_PX))
        .max()
        .unwrap_or(0);
    let group_px = (label_px + 16).max(22 * k as u32 + 24);
    let w = (90 + group_px * groups.len() as u32 + 20).max(PANEL_W);
    let entries: Vec<LegendEntry> = series_names
        .iter()
        .enumerate()
        .map(|(i, n)| LegendEntry {
            name: n.clone(),
            colour: colour(i),
            kind: EntryKind::Bar,
        })
        .collect();
    let rows = legend_layout(&entries, w);
    let h = PLOT_H + rows.len() as u32 * LEGEND_ROW + 10;

    let finite: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.values.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    let lo = finite.iter().copied().fold(0.0f64, f64::min);
    let hi = finite.iter().copied().fold(0.0f64, f64::max);
    // Headroom for the value labels above the bars.
    let span = (hi - lo).max(1e-12);
    let (y0, y1, y_ticks) = nice_axis(
        if lo < 0.0 { lo - 0.12 * span } else { 0.0 },
        hi + 0.12 * span,
        6,
        false,
        true,
    );
    let n = groups.len() as f64;
    render(path, (w, h), |root| {
        let (plot, legend) = root.split_vertically(PLOT_H);
        let x_axis = Axis {
            lo: 0.0,
            hi: n,
            ticks: Ticks {
                values: (0..groups.len()).map(|i| i as f64 + 0.5).collect(),
                decimals: 0,
            },
            labels: Some(groups.iter().map(|g| g.label.clone()).collect()),
        };
        let y_axis = Axis {
            lo: y0,
            hi: y1,
            ticks: y_ticks.clone(),
            labels: None,
        };
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, title_style())
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(x_axis, y_axis)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .y_desc(y_label)
            .axis_desc_style(axis_style())
            .label_style(tick_style())
            .draw()
            .map_err(draw_err)?;
        let bar_w = 0.8 / k as f64;
        let value_decimals = (y_ticks.decimals + 1).min(3);
        for (gi, g) in groups.iter().enumerate() {
            for (si, &v) in g.values.iter().enumerate() {
                let x0 = gi as f64 + 0.1 + si as f64 * bar_w;
                let xc = x0 + bar_w / 2.0;
                if !v.is_finite() {
                    chart
                        .draw_series(std::iter::once(Text::new(
                            "n/a",
                            (xc, 0.0f64.max(y0)),
                            small_style().pos(Pos::new(HPos::Center, VPos::Bottom)),
                        )))
                        .map_err(draw_err)?;
                    continue;
                }
                let c = colour(si);
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0 + 0.01, 0.0), (x0 + bar_w - 0.01, v)],
                        c.filled(),
                    )))
                    .map_err(draw_err)?;
                let anchor = if v >= 0.0 { VPos::Bottom } else { VPos::Top };
                chart
                    .draw_series(std::iter::once(Text::new(
                        format_tick(v, value_decimals),
                        (xc, v),
                        small_style().pos(Pos::new(HPos::Center, anchor)),
                    )))
                    .map_err(draw_err)?;
            }
        }
        draw_legend(&legend, &rows)
    })
}

// ---- panels -------------------------------------------------------------------------------

fn draw_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, p: &Panel) -> Result<()> {
    let (plot, legend) = area.split_vertically(PLOT_H);
    let lines: Vec<Vec<(f64, f64)>> = p.lines.iter().map(|s| finite(&s.points)).collect();
    let marks: Vec<Vec<(f64, f64)>> = p.markers.iter().map(|m| finite(&m.series.points)).collect();
    let all: Vec<(f64, f64)> = lines.iter().chain(&marks).flatten().copied().collect();
    if all.is_empty() {
        plot.titled(&p.title, title_style())
            .map_err(draw_err)?
            .draw(&Text::new(
                "no data",
                (PANEL_W as i32 / 2 - 30, PLOT_H as i32 / 2),
                axis_style(),
            ))
            .map_err(draw_err)?;
        return Ok(());
    }
    let integer_x = all.iter().all(|&(x, _)| x.fract() == 0.0 && x.abs() < 1e9);
    let (xmin, xmax) = min_max(all.iter().map(|p| p.0));
    let (x0, x1, x_ticks) = if integer_x {
        // Whole-number ticks inside the data range; half a unit of room at each end keeps the
        // first and last dots off the axes.
        let t = nice_ticks(xmin, xmax.max(xmin + 1.0), 8, true);
        (xmin - 0.5, xmax.max(xmin + 1.0) + 0.5, t)
    } else {
        let pad = ((xmax - xmin) * 0.03).max(1e-9);
        let t = nice_ticks(xmin, xmax, 7, false);
        (xmin - pad, xmax + pad, t)
    };
    let x_ticks = Ticks {
        values: x_ticks
            .values
            .into_iter()
            .filter(|v| *v >= x0 && *v <= x1)
            .collect(),
        decimals: x_ticks.decimals,
    };
    let (y0, y1, y_ticks) = match p.y_range {
        Some((a, b)) if b > a => {
            let t = nice_ticks(a, b, 6, false);
            (a, b, t)
        }
        _ => {
            let (a, b) = min_max(all.iter().map(|p| p.1));
            nice_axis(a, b, 6, false, false)
        }
    };
    let decimals = (y_ticks.decimals + 1).min(3);
    let mut chart = ChartBuilder::on(&plot)
        .caption(&p.title, title_style())
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(
            Axis {
                lo: x0,
                hi: x1,
                ticks: x_ticks,
                labels: None,
            },
            Axis {
                lo: y0,
                hi: y1,
                ticks: y_ticks,
                labels: None,
            },
        )
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .x_desc(&p.x_label)
        .y_desc(&p.y_label)
        .axis_desc_style(axis_style())
        .label_style(tick_style())
        .draw()
        .map_err(draw_err)?;
    for (i, pts) in lines.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
            .map_err(draw_err)?;
        chart
            .draw_series(pts.iter().map(|&q| Circle::new(q, 3, c.filled())))
            .map_err(draw_err)?;
    }
    for (m, pts) in p.markers.iter().zip(&marks) {
        let c = colour(m.colour);
        for &q in pts {
            chart
                .draw_series(std::iter::once(EmptyElement::at(q) + diamond(c, 7)))
                .map_err(draw_err)?;
            if m.value_labels {
                chart
                    .draw_series(std::iter::once(
                        EmptyElement::at(q)
                            + Text::new(
                                format_tick(q.1, decimals),
                                (-10, 0),
                                small_style().pos(Pos::new(HPos::Right, VPos::Center)),
                            ),
                    ))
                    .map_err(draw_err)?;
            }
        }
    }
    draw_legend(&legend, &legend_layout(&legend_entries(p), PANEL_W))
}

fn diamond(c: RGBColor, r: i32) -> Polygon<(i32, i32)> {
    Polygon::new(vec![(0, -r), (r, 0), (0, r), (-r, 0)], c.filled())
}

fn finite(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .copied()
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect()
}

fn min_max(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    })
}

// ---- axes and ticks -----------------------------------------------------------------------

/// A linear f64 axis with our own ticks and tick labels (plotters' own f64 axis picks ticks
/// like 5.8, 10.5 for epochs 1..20 and cannot be given labels).
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Ticks,
    /// Text of tick `i` (bar groups), instead of the tick's value.
    labels: Option<Vec<String>>,
}

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let t = if self.hi > self.lo {
            (v - self.lo) / (self.hi - self.lo)
        } else {
            0.5
        };
        limit.0 + (t * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // Grid lines and labels at the ticks only (no minor grid).
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.values.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for Axis {
    fn format_ext(&self, v: &f64) -> String {
        match &self.labels {
            Some(l) => l
                .get(v.floor().max(0.0) as usize)
                .cloned()
                .unwrap_or_default(),
            None => format_tick(*v, self.ticks.decimals),
        }
    }
}

/// Tick positions and the decimals needed to print them.
#[derive(Debug, Clone, PartialEq)]
struct Ticks {
    values: Vec<f64>,
    decimals: usize,
}

/// Ticks at a "nice" step (1, 2, 2.5 or 5 times a power of ten; 1, 2 or 5 times one for
/// whole-number axes, at least 1) covering `[lo, hi]` with about `target` ticks.
fn nice_ticks(lo: f64, hi: f64, target: usize, integer: bool) -> Ticks {
    let step = nice_step(lo, hi, target, integer);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    let values = (first..=last).map(|k| k as f64 * step).collect();
    Ticks {
        values,
        decimals: step_decimals(step),
    }
}

/// Like [`nice_ticks`], and widens `[lo, hi]` to the ticks just outside the data (a data-driven
/// axis ends on a labelled tick). `from_zero` keeps 0 as the lower end for non-negative data.
fn nice_axis(lo: f64, hi: f64, target: usize, integer: bool, from_zero: bool) -> (f64, f64, Ticks) {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        let d = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - d, hi + d)
    };
    let step = nice_step(lo, hi, target, integer);
    let a = if from_zero && lo >= 0.0 {
        0.0
    } else {
        (lo / step - 1e-9).floor() * step
    };
    let b = (hi / step + 1e-9).ceil() * step;
    let t = nice_ticks(a, b, target, integer);
    (a, b, t)
}

fn nice_step(lo: f64, hi: f64, target: usize, integer: bool) -> f64 {
    let raw = ((hi - lo) / target.max(1) as f64).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let steps: &[f64] = if integer {
        &[1.0, 2.0, 5.0, 10.0]
    } else {
        &[1.0, 2.0, 2.5, 5.0, 10.0]
    };
    let step = steps
        .iter()
        .map(|s| s * mag)
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    if integer {
        step.max(1.0).round()
    } else {
        step
    }
}

fn step_decimals(step: f64) -> usize {
    // 0.25 needs 2 decimals, 2.5 one, 0.1 one, 5 none.
    (0..6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
        })
        .unwrap_or(6)
}

fn format_tick(v: f64, decimals: usize) -> String {
    // Avoid "-0".
    let v = if v.abs() < 0.5 * 10f64.powi(-(decimals as i32)) {
        0.0
    } else {
        v
    };
    format!("{v:.decimals$}")
}

// ---- legend -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum EntryKind {
    Line,
    Marker,
    Bar,
}

#[derive(Debug, Clone)]
struct LegendEntry {
    name: String,
    colour: RGBColor,
    kind: EntryKind,
}

/// One entry per named series that has something to draw: a series without a finite point
/// (e.g. the part pixel accuracy of a run without a part head, or PGD of a run not yet
/// evaluated) draws nothing, so it gets no entry either; colours stay those of the series'
/// positions.
fn legend_entries(p: &Panel) -> Vec<LegendEntry> {
    let drawn = |s: &Series| !s.name.is_empty() && !finite(&s.points).is_empty();
    let lines = p
        .lines
        .iter()
        .enumerate()
        .filter(|(_, s)| drawn(s))
        .map(|(i, s)| LegendEntry {
            name: s.name.clone(),
            colour: colour(i),
            kind: EntryKind::Line,
        });
    let marks = p
        .markers
        .iter()
        .filter(|m| drawn(&m.series))
        .map(|m| LegendEntry {
            name: m.series.name.clone(),
            colour: colour(m.colour),
            kind: EntryKind::Marker,
        });
    lines.chain(marks).collect()
}

const SWATCH_W: u32 = 26;

/// Entries packed into rows of at most `width` pixels: `(x offset, entry)` per row.
fn legend_layout(entries: &[LegendEntry], width: u32) -> Vec<Vec<(u32, LegendEntry)>> {
    let mut rows: Vec<Vec<(u32, LegendEntry)>> = Vec::new();
    let mut x = u32::MAX;
    let left = 70;
    for e in entries {
        let w = SWATCH_W + 6 + text_width(&e.name, LEGEND_PX) + 18;
        if x == u32::MAX || (x + w > width.saturating_sub(10) && x > left) {
            rows.push(Vec::new());
            x = left;
        }
        if let Some(r) = rows.last_mut() {
            r.push((x, e.clone()));
        }
        x += w;
    }
    rows
}

fn draw_legend(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    rows: &[Vec<(u32, LegendEntry)>],
) -> Result<()> {
    for (r, row) in rows.iter().enumerate() {
        let yc = (r as u32 * LEGEND_ROW + LEGEND_ROW / 2 + 2) as i32;
        for (x, e) in row {
            let x = *x as i32;
            let sw = SWATCH_W as i32;
            match e.kind {
                EntryKind::Line => {
                    area.draw(&PathElement::new(
                        vec![(x, yc), (x + sw, yc)],
                        e.colour.stroke_width(2),
                    ))
                    .map_err(draw_err)?;
                    area.draw(&Circle::new((x + sw / 2, yc), 3, e.colour.filled()))
                        .map_err(draw_err)?;
                }
                EntryKind::Marker => {
                    area.draw(&(EmptyElement::at((x + sw / 2, yc)) + diamond(e.colour, 7)))
                        .map_err(draw_err)?;
                }
                EntryKind::Bar => {
                    area.draw(&Rectangle::new(
                        [(x + 4, yc - 7), (x + sw - 4, yc + 7)],
                        e.colour.filled(),
                    ))
                    .map_err(draw_err)?;
                }
            }
            area.draw(&Text::new(
                e.name.clone(),
                (x + sw + 6, yc),
                legend_style().pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(draw_err)?;
        }
    }
    Ok(())
}

// ---- text, fonts, output ------------------------------------------------------------------

static REGULAR: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
static BOLD: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-Bold.ttf");

/// Registers the bundled fonts with plotters (once per process).
fn fonts() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, REGULAR).is_ok()
            && plotters::style::register_font(FONT, FontStyle::Bold, BOLD).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Msg(
            "charts: the bundled font (assets/fonts/DejaVuSans*.ttf) could not be parsed".into(),
        ))
    }
}

fn title_style() -> TextStyle<'static> {
    (FONT, TITLE_PX).into_font().style(FontStyle::Bold).into()
}
fn axis_style() -> TextStyle<'static> {
    (FONT, AXIS_PX).into_font().color(&BLACK)
}
fn tick_style() -> TextStyle<'static> {
    (FONT, TICK_PX).into_font().color(&RGBColor(60, 60, 60))
}
fn legend_style() -> TextStyle<'static> {
    (FONT, LEGEND_PX).into_font().color(&BLACK)
}
fn small_style() -> TextStyle<'static> {
    (FONT, 12.0).into_font().color(&RGBColor(40, 40, 40))
}

/// Width in pixels of `text` at `px` (the bundled font's advances), for layout before drawing.
fn text_width(text: &str, px: f64) -> u32 {
    let _ = fonts();
    FontDesc::new(FontFamily::Name(FONT), px, FontStyle::Normal)
        .box_size(text)
        .map(|(w, _)| w)
        .unwrap_or((text.chars().count() as f64 * px * 0.6) as u32)
}

fn draw_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Msg(format!("drawing chart: {e}"))
}

/// Draws into a white RGB buffer of `size`, encodes it as PNG and writes it to `path`
/// atomically, creating the parent folder.
fn render(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    fonts()?;
    let (w, h) = size;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        draw(&root).map_err(|e| match e {
            Error::Msg(m) => Error::format(path, m),
            other => other,
        })?;
        root.present()
            .map_err(|e| Error::format(path, format!("drawing chart: {e}")))?;
    }
    write_png(path, &buf, w, h)
}

/// A text label for [`draw_labels`]: top-left corner in pixels, size in pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub x: i32,
    pub y: i32,
    pub text: String,
    pub px: f64,
    pub bold: bool,
}

/// Writes `labels` in black onto an RGB8 image (`w` x `h`) in the bundled font: the text of
/// the image overlays, whose pixels are drawn by hand.
pub fn draw_labels(rgb: &mut [u8], w: u32, h: u32, labels: &[Label]) -> Result<()> {
    fonts()?;
    let root = BitMapBackend::with_buffer(rgb, (w, h)).into_drawing_area();
    for l in labels {
        let style = if l.bold {
            FontStyle::Bold
        } else {
            FontStyle::Normal
        };
        let font: TextStyle<'_> = (FONT, l.px).into_font().style(style).color(&BLACK);
        root.draw(&Text::new(l.text.as_str(), (l.x, l.y), font))
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)
}

/// Width in pixels of `text` at `px` in the bundled font (layout of [`draw_labels`] text).
pub fn label_width(text: &str, px: f64) -> u32 {
    text_width(text, px)
}

/// Encodes an RGB8 buffer as PNG and writes it atomically (temp file + fsync + rename),
/// creating the parent folder. Shared by the charts and the image overlays.
pub fn write_png(path: &Path, rgb: &[u8], w: u32, h: u32) -> Result<()> {
    use image::ImageEncoder;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(rgb, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::format(path, format!("encoding PNG: {e}")))?;
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    crate::io::write_atomic(path, |f| {
        use std::io::Write;
        f.write_all(&png).map_err(|e| Error::io(path, e))?;
        f.sync_all().map_err(|e| Error::io(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A single run's accuracy panel has four series; a run without a part head and without
    /// evaluations has data for one of them: only that one is in the legend, in its colour.
    #[test]
    fn series_without_points_have_no_legend_entry() {
        let s = |name: &str, points: Vec<(f64, f64)>| Series {
            name: name.into(),
            points,
        };
        let panel = Panel {
            lines: vec![
                s("train (adversarial)", vec![(1.0, 40.0), (2.0, 55.0)]),
                s("eval clean", Vec::new()),
                s("eval PGD", vec![(1.0, f64::NAN)]),
                s("part pixel acc", Vec::new()),
            ],
            markers: vec![Markers {
                series: s("AutoAttack", Vec::new()),
                colour: 1,
                value_labels: true,
            }],
            ..Panel::default()
        };
        let entries = legend_entries(&panel);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["train (adversarial)"]);
        assert_eq!(entries[0].colour, colour(0));
        assert_eq!(legend_layout(&entries, PANEL_W).len(), 1);
    }

    #[test]
    fn ticks_are_nice() {
        let t = nice_ticks(1.0, 20.0, 8, true);
        assert_eq!(t.values, vec![5.0, 10.0, 15.0, 20.0]);
        assert_eq!(t.decimals, 0);
        let t = nice_ticks(1.0, 3.0, 8, true);
        assert_eq!(t.values, vec![1.0, 2.0, 3.0]);
        let t = nice_ticks(0.0, 100.0, 6, false);
        assert_eq!(t.values, vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        let t = nice_ticks(0.0, 1.0, 4, false);
        assert_eq!(t.values, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(t.decimals, 2);
        // A range of 3.18 in about 8 ticks steps by 0.5 and widens to the ticks outside it.
        let (a, b, t) = nice_axis(1.63, 4.81, 8, false, false);
        assert_eq!((a, b), (1.5, 5.0));
        assert_eq!(t.decimals, 1);
        // In about 6 ticks it steps by 1.
        let (a, b, t) = nice_axis(1.63, 4.81, 6, false, false);
        assert_eq!((a, b), (1.0, 5.0));
        assert_eq!(t.decimals, 0);
        assert_eq!(format_tick(-0.0001, 2), "0.00");
    }
}
