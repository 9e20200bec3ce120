//! Loader: synth -> labels -> index -> batches. Shapes, reproducibility from (seed, epoch,
//! index) whatever the thread count, label/target consistency, segmentation weights, bad input.

use mpm::data::augment::{TrainAug, Transform};
use mpm::data::imageio::{write_label_map, LabelMap};
use mpm::data::index::{scan_image_folder, Index, Sample};
use mpm::data::labels::{run_labels, ImageMode, LabelsConfig};
use mpm::data::loader::{load_batch, Loader, LoaderConfig};
use mpm::data::pin_json::PartTable;
use mpm::data::synth::{run_synth, SynthConfig};
use mpm::data::targets::{nearest_resize, TargetSpec};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    index: Index,
    table: PartTable,
}

fn fixture(faults: bool) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    run_synth(&SynthConfig {
        out: src.clone(),
        classes: 4,
        images_per_class: 10,
        seed: 3,
        faults,
        ..Default::default()
    })
    .unwrap();
    run_labels(&LabelsConfig {
        json_dir: src.join("json"),
        including: Some(src.join("including")),
        discarded: Some(src.join("discarded_data.json")),
        category_names: None,
        images: src.join("images"),
        out: out.clone(),
        image_mode: ImageMode::Symlink,
        val_fraction: 0.1,
        split_seed: 0,
        progress: false,
    })
    .unwrap();
    let index = scan_image_folder(&out.join("img"), Some(&out.join("seg")), None).unwrap();
    let table = PartTable::from_tsv(&out.join("parts.tsv")).unwrap();
    Fixture {
        root: tmp.path().to_path_buf(),
        _tmp: tmp,
        index,
        table,
    }
}

fn train_cfg(s: usize) -> LoaderConfig {
    LoaderConfig {
        transform: Transform::Train(TrainAug {
            size: 48,
            ..Default::default()
        }),
        targets: Some(TargetSpec::paper(s)),
        seg_classes: Some(s),
        seed: 11,
    }
}

#[test]
fn batches_have_documented_shapes_and_consistent_targets() {
    let f = fixture(true);
    let s = f.table.num_parts() + 1;
    let loader = Loader {
        samples: &f.index.samples,
        cfg: train_cfg(s),
        batch_size: 8,
        shuffle: true,
        drop_last: false,
    };
    assert_eq!(loader.num_batches(), f.index.samples.len().div_ceil(8));
    let mut blank_seen = false;
    for b in 0..loader.num_batches() {
        let (batch, skips) = loader.batch(0, b).unwrap();
        assert!(skips.is_empty(), "{skips:?}");
        let n = batch.n;
        assert_eq!((batch.h, batch.w), (48, 48));
        assert_eq!(batch.images.len(), n * 48 * 48 * 3);
        assert!(batch.images.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(batch.label_maps.len(), n * 48 * 48);
        assert_eq!(batch.targets.len(), 3);
        for (lvl, h) in [28usize, 14, 7].into_iter().enumerate() {
            assert_eq!(batch.targets[lvl].len(), n * h * h * s);
        }
        let ranges = f.table.ranges();
        for i in 0..n {
            let map = &batch.label_maps[i * 48 * 48..(i + 1) * 48 * 48];
            let (lo, hi) = ranges[batch.labels[i] as usize];
            assert!(map
                .iter()
                .all(|&v| v == 0 || (lo..hi).contains(&(v as u32))));
            let blank = map.iter().all(|&v| v == 0);
            blank_seen |= blank;
            assert_eq!(batch.seg_weight[i], if blank { 0.0 } else { 1.0 });
            // Level 0 is the smoothed one-hot of the nearest-resized map.
            let m = LabelMap {
                h: 48,
                w: 48,
                data: map.to_vec(),
            };
            let small = nearest_resize(&m, 28, 28);
            let t = &batch.targets[0][i * 28 * 28 * s..(i + 1) * 28 * 28 * s];
            for (p, &lab) in small.data.iter().enumerate() {
                let px = &t[p * s..(p + 1) * s];
                let arg = (0..s)
                    .max_by(|&a, &b| px[a].partial_cmp(&px[b]).unwrap())
                    .unwrap();
                assert_eq!(arg, lab as usize);
            }
        }
    }
    assert!(blank_seen, "the fault set has one all-background map");
    // Iterating and prefetching give the same batches as indexing.
    let direct: Vec<Vec<usize>> = (0..loader.num_batches())
        .map(|b| loader.batch(1, b).unwrap().0.indices)
        .collect();
    let iterated: Vec<Vec<usize>> = loader.epoch(1).map(|r| r.unwrap().0.indices).collect();
    assert_eq!(direct, iterated);
    let prefetched: Vec<Vec<f32>> = std::thread::scope(|sc| {
        loader
            .prefetch(sc, 1, 2)
            .iter()
            .map(|r| r.unwrap().0.images)
            .collect()
    });
    let first = loader.batch(1, 0).unwrap().0.images;
    assert_eq!(prefetched.len(), direct.len());
    assert_eq!(prefetched[0], first);
}

#[test]
fn batches_are_reproducible_across_thread_counts_and_differ_across_epochs() {
    let f = fixture(false);
    let s = f.table.num_parts() + 1;
    let cfg = train_cfg(s);
    let idx: Vec<usize> = (0..10).collect();
    let (a, _) = load_batch(&f.index.samples, &idx, 2, &cfg).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let (b, _) = pool.install(|| load_batch(&f.index.samples, &idx, 2, &cfg).unwrap());
    assert_eq!(a.images, b.images);
    assert_eq!(a.label_maps, b.label_maps);
    assert_eq!(a.targets, b.targets);
    let (c, _) = load_batch(&f.index.samples, &idx, 3, &cfg).unwrap();
    assert_ne!(a.images, c.images);
    // Eval transform: no randomness at all.
    let eval = LoaderConfig {
        transform: Transform::Eval {
            resize: 40,
            crop: 32,
        },
        ..cfg
    };
    let (d, _) = load_batch(&f.index.samples, &idx, 0, &eval).unwrap();
    let (e, _) = load_batch(&f.index.samples, &idx, 9, &eval).unwrap();
    assert_eq!((d.h, d.w), (32, 32));
    assert_eq!(d.images, e.images);
    assert_eq!(d.label_maps, e.label_maps);
}

#[test]
fn bad_samples_are_dropped_or_lose_their_map() {
    let f = fixture(false);
    let s = f.table.num_parts() + 1;
    let good = f.index.samples[0].clone();
    let corrupt = f.root.join("corrupt.JPEG");
    std::fs::write(&corrupt, b"\xff\xd8\xff\xe0 not a jpeg").unwrap();
    let small = f.root.join("small.png");
    write_label_map(&small, &LabelMap::zeros(5, 5)).unwrap();
    let big_value = f.root.join("big.png");
    let img = image::open(&good.image).unwrap();
    let mut m = LabelMap::zeros(img.height() as usize, img.width() as usize);
    m.data[0] = s as u16;
    write_label_map(&big_value, &m).unwrap();
    let samples = vec![
        Sample {
            image: corrupt,
            label: 0,
            seg: None,
        },
        Sample {
            seg: Some(small),
            ..good.clone()
        },
        Sample {
            seg: Some(big_value),
            ..good.clone()
        },
        Sample {
            seg: Some(f.root.join("missing.png")),
            ..good.clone()
        },
        good,
    ];
    let (b, skips) = load_batch(&samples, &[0, 1, 2, 3, 4], 0, &train_cfg(s)).unwrap();
    assert_eq!(b.n, 4);
    assert_eq!(b.indices, vec![1, 2, 3, 4]);
    assert_eq!(&b.seg_weight[..3], &[0.0, 0.0, 0.0]);
    assert_eq!(skips.len(), 4, "{skips:#?}");
    assert!(skips[0].reason.contains("decode"));
}
