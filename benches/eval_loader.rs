//! `mpm-eval`'s loader (decode + evaluation transform, CHW f32 in [0, 1]) in images/s per core,
//! against the authors' loader (PIL + torchvision `Resize(256, bicubic)`, `CenterCrop(224)`,
//! `ToTensor()`, one thread) on the same JPEG files, measured in the same run.
//!
//! ```text
//! cargo bench --bench eval_loader        # the reference needs python3 with torch, torchvision
//!                                        # and pillow (scripts/bench_eval_loader.py); without
//!                                        # them only our figures are printed
//! MPM_PYTHON=/work/venv/bin/python MPM_BENCH_SECONDS=2 MPM_BENCH_ROUNDS=5 cargo bench --bench eval_loader
//! ```
//! Images: 32 synthetic JPEGs (`mpm-data synth`, quality 92) of 375-500 px, about the size of
//! ImageNet's val images (typically 500x375), in an ImageFolder. Two transforms: the standard
//! one (IN-1K val, ImageNet-C, -R, -Sketch, Stylized, -V2) and ImageNet-A-Plus's squash
//! (`Resize((256, 256))` bilinear). As in the corruption bench, the two sides alternate for
//! `MPM_BENCH_ROUNDS` rounds (default 3) and the median round's ratio is reported, so both sides
//! of a ratio see the same load on a shared machine. Also printed: decoding alone (our JPEG
//! decoder), so the transform's share of the time is visible, and our rate on all cores.

use std::path::Path;
use std::time::Instant;

use mpm::attack::imagefolder::EvalSet;
use mpm::data::imageio::read_rgb;
use mpm::data::synth::{run_synth, SynthConfig};
use mpm::eval::sets::{EvalTransform, Images};
use rayon::prelude::*;

const CLASSES: usize = 8;

/// Images/s of `f(i)` over every image in turn, until `seconds` have passed, on the current
/// rayon pool (one image per task).
fn rate(n: usize, seconds: f64, f: &(dyn Fn(usize) + Sync)) -> f64 {
    f(0); // warm-up
    let t = Instant::now();
    let mut done = 0usize;
    while t.elapsed().as_secs_f64() < seconds {
        (0..n).into_par_iter().for_each(f);
        done += n;
    }
    done as f64 / t.elapsed().as_secs_f64()
}

fn python_reference(
    dir: &Path,
    transform: &str,
    seconds: f64,
) -> Result<serde_json::Value, String> {
    let python = std::env::var("MPM_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_eval_loader.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg("--images")
        .arg(dir)
        .args(["--transform", transform, "--min-time", &seconds.to_string()])
        .env("OMP_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .output()
        .map_err(|e| format!("{python}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).map_err(|e| format!("unreadable output ({e}): {line}"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let seconds: f64 = std::env::var("MPM_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let rounds: usize = std::env::var("MPM_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let tmp = tempfile::tempdir().expect("temp dir");
    let syn = tmp.path().join("syn");
    run_synth(&SynthConfig {
        out: syn.clone(),
        classes: CLASSES,
        images_per_class: 4,
        min_size: 375,
        max_size: 500,
        seed: 3,
        ..Default::default()
    })
    .expect("synthetic images");
    let root = syn.join("images");
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool");
    let cores = rayon::current_num_threads();
    let transforms = [
        ("shorter", EvalTransform::standard(224)),
        (
            "squash",
            EvalTransform::Squash {
                size: 256,
                crop: 224,
            },
        ),
    ];
    let decode_set = Images::folder(&root, CLASSES, transforms[0].1, "bench").expect("images");
    let n = decode_set.len();
    let decode = one.install(|| {
        rate(n, seconds, &|i| {
            std::hint::black_box(read_rgb(&decode_set.items[i].0).expect("decode"));
        })
    });
    println!(
        "eval_loader bench: {n} JPEGs of 375-500 px, output 224x224, {rounds} rounds of {seconds} s"
    );
    println!("decode only (1 thread): {decode:.1} images/s");
    println!(
        "{:<34} {:>12} {:>14} {:>8} {:>16} {:>13}",
        "transform",
        "mpm img/s",
        "torchvision/s",
        "ratio",
        format!("mpm {cores} threads"),
        "decode share"
    );
    let mut versions = serde_json::Value::Null;
    let mut py_err: Option<String> = None;
    for (name, t) in transforms {
        let set = Images::folder(&root, CLASSES, t, "bench").expect("images");
        let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let single = one.install(|| {
                rate(n, seconds, &|i| {
                    std::hint::black_box(set.image(i).expect("load"));
                })
            });
            ours.push(single);
            if py_err.is_some() {
                continue;
            }
            match python_reference(&root, name, seconds) {
                Ok(j) => {
                    if let Some(p) = j["images_per_s"].as_f64() {
                        theirs.push(p);
                        ratios.push(single / p);
                    }
                    versions = j["versions"].clone();
                }
                Err(e) => py_err = Some(e),
            }
        }
        let all = rate(n, seconds, &|i| {
            std::hint::black_box(set.image(i).expect("load"));
        });
        let single = median(&mut ours);
        let (p, r) = if ratios.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.1}", median(&mut theirs)),
                format!("{:.2}x", median(&mut ratios)),
            )
        };
        println!(
            "{:<34} {:>12.1} {:>14} {:>8} {:>16.1} {:>12.0}%",
            t.describe(),
            single,
            p,
            r,
            all,
            100.0 * single / decode
        );
    }
    match py_err {
        Some(e) => println!("python reference unavailable ({e}); ratios not measured"),
        None => println!("python versions: {versions}"),
    }
}
