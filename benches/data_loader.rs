//! Data loader throughput in images/s, on 1 thread and on all threads: decode; decode and
//! augment (RandomResizedCrop 224 bicubic, flip, jitter); decode, augment and soft targets
//! (S = 3,311, levels 28/14/7). Two sets: the synthetic one (64-128 px) and ~400x350 JPEGs
//! (synth with sizes 350-400). The soft-target stage writes (28*28 + 14*14 + 7*7) * S f32 per
//! image; its GB/s is reported next to a plain fill of the same bytes measured in the same run
//! (the memory-bandwidth ceiling of this stage).
//!
//! Run: `cargo bench --bench data_loader` (env `MPM_BENCH_SECONDS`, default 2, per measurement).

use std::time::{Duration, Instant};

use mpm::data::augment::{TrainAug, Transform};
use mpm::data::imageio::read_rgb;
use mpm::data::index::{scan_image_folder, Sample};
use mpm::data::labels::{run_labels, ImageMode, LabelsConfig};
use mpm::data::loader::{load_batch, LoaderConfig};
use mpm::data::synth::{run_synth, SynthConfig};
use mpm::data::targets::TargetSpec;
use rayon::prelude::*;

const S: usize = 3311;

fn dataset(root: &std::path::Path, name: &str, min: usize, max: usize, n: usize) -> Vec<Sample> {
    let src = root.join(name);
    let out = root.join(format!("{name}-pin"));
    run_synth(&SynthConfig {
        out: src.clone(),
        classes: 8,
        images_per_class: n,
        min_size: min,
        max_size: max,
        seed: 1,
        ..Default::default()
    })
    .unwrap();
    run_labels(&LabelsConfig {
        json_dir: src.join("json"),
        including: Some(src.join("including")),
        discarded: None,
        category_names: None,
        images: src.join("images"),
        out: out.clone(),
        image_mode: ImageMode::Symlink,
        val_fraction: 0.1,
        split_seed: 0,
        progress: false,
    })
    .unwrap();
    scan_image_folder(&out.join("img"), Some(&out.join("seg")), None)
        .unwrap()
        .samples
}

/// Runs `f(batch_indices)` over batches of 32 until `budget` has passed; returns images/s.
fn rate(samples: &[Sample], budget: Duration, f: &dyn Fn(&[usize])) -> f64 {
    let idx: Vec<usize> = (0..samples.len()).collect();
    let t0 = Instant::now();
    let mut done = 0usize;
    let mut k = 0;
    while t0.elapsed() < budget {
        let lo = (k * 32) % idx.len();
        let hi = (lo + 32).min(idx.len());
        f(&idx[lo..hi]);
        done += hi - lo;
        k += 1;
    }
    done as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let secs: f64 = std::env::var("MPM_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let budget = Duration::from_secs_f64(secs);
    let tmp = tempfile::tempdir().unwrap();
    let sets = [
        (
            "synthetic 64-128px",
            dataset(tmp.path(), "small", 64, 128, 40),
        ),
        ("JPEG 350-400px", dataset(tmp.path(), "large", 350, 400, 16)),
    ];
    let all = rayon::current_num_threads();
    let aug = LoaderConfig {
        transform: Transform::Train(TrainAug::default()),
        targets: None,
        seg_classes: Some(S),
        seed: 0,
    };
    let full = LoaderConfig {
        targets: Some(TargetSpec::paper(S)),
        ..aug.clone()
    };
    println!("data_loader bench: {secs} s per measurement, S = {S}, output 224x224");
    println!(
        "{:<20} {:>7} {:>14} {:>18} {:>26}",
        "set", "threads", "decode img/s", "+augment img/s", "+targets img/s (per core)"
    );
    for (name, samples) in &sets {
        for threads in [1usize, all] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (d, a, t) = pool.install(|| {
                let d = rate(samples, budget, &|ix| {
                    ix.par_iter().for_each(|&i| {
                        std::hint::black_box(read_rgb(&samples[i].image).unwrap());
                    })
                });
                let a = rate(samples, budget, &|ix| {
                    std::hint::black_box(load_batch(samples, ix, 0, &aug).unwrap());
                });
                let t = rate(samples, budget, &|ix| {
                    std::hint::black_box(load_batch(samples, ix, 0, &full).unwrap());
                });
                (d, a, t)
            });
            println!(
                "{name:<20} {threads:>7} {d:>14.0} {a:>18.0} {t:>18.1} ({:.1})",
                t / threads as f64
            );
        }
    }
    // Soft-target stage vs a plain fill of the same bytes (1 thread).
    let per_image = (28 * 28 + 14 * 14 + 7 * 7) * S;
    let n = 16;
    let map = mpm::data::imageio::LabelMap {
        h: 224,
        w: 224,
        data: (0..224 * 224).map(|i| ((i / 7) % S) as u16).collect(),
    };
    let maps: Vec<Option<&mpm::data::imageio::LabelMap>> = (0..n).map(|_| Some(&map)).collect();
    let spec = TargetSpec::paper(S);
    let t0 = Instant::now();
    let mut reps = 0;
    while t0.elapsed() < budget {
        std::hint::black_box(mpm::data::targets::soft_targets(&maps, &spec).unwrap());
        reps += 1;
    }
    let targets_gbs = (reps * n * per_image * 4) as f64 / t0.elapsed().as_secs_f64() / 1e9;
    let t0 = Instant::now();
    let mut reps = 0;
    while t0.elapsed() < budget {
        let v: Vec<Vec<f32>> = [28usize, 14, 7]
            .iter()
            .map(|h| vec![1e-5f32; n * h * h * S])
            .collect();
        std::hint::black_box(v);
        reps += 1;
    }
    let fill_gbs = (reps * n * per_image * 4) as f64 / t0.elapsed().as_secs_f64() / 1e9;
    println!(
        "soft targets (1 thread): {targets_gbs:.2} GB/s written = {:.0}% of a plain fill ({fill_gbs:.2} GB/s); {:.1} MB per image",
        100.0 * targets_gbs / fill_gbs,
        (per_image * 4) as f64 / 1e6
    );
}
