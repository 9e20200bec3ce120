//! `mpm::charts`: every chart comes out as a PNG of the expected size, with its series drawn in
//! their palette colours, text rendered from the bundled font, and bad input refused by name.
//!
//! Set `MPM_CHARTS_OUT=DIR` to keep the pictures for a look.

use mpm::charts::{
    colour, figure, grouped_bar_chart, line_chart, BarGroup, Markers, Panel, Series,
};
use std::path::{Path, PathBuf};

fn out_dir() -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("MPM_CHARTS_OUT") {
        Some(d) => {
            let d = PathBuf::from(d);
            std::fs::create_dir_all(&d).unwrap();
            (None, d)
        }
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

fn load(p: &Path) -> image::RgbImage {
    image::open(p).expect("a readable PNG").to_rgb8()
}

/// Pixels exactly of palette colour `i`.
fn count_colour(img: &image::RgbImage, i: usize) -> usize {
    let c = colour(i);
    img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count()
}

/// Dark grey-to-black pixels (text, axes) in rows `y0..y1`.
fn dark_in_rows(img: &image::RgbImage, y0: u32, y1: u32) -> usize {
    (y0..y1.min(img.height()))
        .flat_map(|y| (0..img.width()).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let p = img.get_pixel(x, y).0;
            p.iter().all(|&v| v < 90) && p[0].abs_diff(p[1]) < 10 && p[1].abs_diff(p[2]) < 10
        })
        .count()
}

fn epochs(f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
    (1..=20).map(|e| (e as f64, f(e as f64))).collect()
}

#[test]
fn line_chart_draws_each_series_in_its_colour() {
    let (_keep, dir) = out_dir();
    let p = dir.join("sub/line.png");
    let series = vec![
        Series {
            name: "vanilla".into(),
            points: epochs(|e| 2.0 - 0.03 * e),
        },
        Series {
            name: "MPM".into(),
            points: epochs(|e| 4.8 / e.sqrt()),
        },
    ];
    line_chart(&p, "training loss", "epoch", "loss (nats)", &series).unwrap();
    let img = load(&p);
    assert_eq!(img.width(), 520, "one panel is 520 px wide");
    assert!(img.height() >= 380);
    for i in 0..2 {
        assert!(
            count_colour(&img, i) > 200,
            "series {i} should be drawn in palette colour {i}"
        );
    }
    assert_eq!(count_colour(&img, 2), 0, "only two series");
    // Title, tick labels and axis titles are text: dark pixels in the top rows (title) and in
    // the legend strip under the plot.
    assert!(dark_in_rows(&img, 0, 30) > 50, "title text");
    assert!(dark_in_rows(&img, 380, img.height()) > 50, "legend text");
    // No temp file is left next to the chart.
    let left: Vec<_> = std::fs::read_dir(p.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "only the PNG in its folder: {left:?}");
}

#[test]
fn figure_with_markers_and_missing_data() {
    let (_keep, dir) = out_dir();
    let p = dir.join("figure.png");
    let acc = Panel {
        title: "EMA accuracy".into(),
        x_label: "epoch".into(),
        y_label: "accuracy (%)".into(),
        lines: vec![
            Series {
                name: "clean".into(),
                points: epochs(|e| 30.0 + 2.0 * e),
            },
            Series {
                name: "PGD-10".into(),
                // A NaN point is left out, not drawn or used for the range.
                points: epochs(|e| if e == 7.0 { f64::NAN } else { 15.0 + 2.0 * e }),
            },
        ],
        markers: vec![Markers {
            series: Series {
                name: "AutoAttack".into(),
                points: vec![(20.0, 51.5)],
            },
            colour: 3,
            value_labels: true,
        }],
        y_range: Some((0.0, 100.0)),
    };
    let empty = Panel {
        title: "nothing yet".into(),
        x_label: "epoch".into(),
        y_label: "loss".into(),
        ..Default::default()
    };
    figure(&p, &[acc, empty]).unwrap();
    let img = load(&p);
    assert_eq!(img.width(), 2 * 520);
    assert!(count_colour(&img, 0) > 200 && count_colour(&img, 1) > 200);
    // The diamond (radius 7) and its legend swatch.
    assert!(count_colour(&img, 3) > 80, "AutoAttack marker drawn");
    // The empty panel says so instead of failing.
    let right_text = (520..1040)
        .flat_map(|x| (100..300).map(move |y| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&v| v < 90))
        .count();
    assert!(right_text > 20, "'no data' written in the empty panel");
    assert!(figure(&dir.join("none.png"), &[]).is_err());
}

#[test]
fn grouped_bars_with_a_missing_value() {
    let (_keep, dir) = out_dir();
    let p = dir.join("bars.png");
    let names = vec!["vanilla".to_string(), "MPM".to_string()];
    let groups = vec![
        BarGroup {
            label: "clean".into(),
            values: vec![67.1, 67.8],
        },
        BarGroup {
            label: "Linf 4/255".into(),
            values: vec![38.1, 39.1],
        },
        BarGroup {
            label: "L1 75".into(),
            values: vec![5.0, f64::NAN],
        },
    ];
    grouped_bar_chart(&p, "AutoAttack", "robust accuracy (%)", &names, &groups).unwrap();
    let img = load(&p);
    assert!(img.width() >= 520);
    // Three vanilla bars, two MPM bars (one missing): the pixel counts reflect the heights.
    let (a, b) = (count_colour(&img, 0), count_colour(&img, 1));
    assert!(a > 1000 && b > 1000, "both series drawn ({a}, {b})");
    assert!(a > b, "the missing MPM bar is not drawn ({a} vs {b})");
    let bad = vec![BarGroup {
        label: "clean".into(),
        values: vec![1.0],
    }];
    let e = grouped_bar_chart(&dir.join("bad.png"), "t", "y", &names, &bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'clean'") && e.contains("1 values for 2 series"),
        "{e}"
    );
}
