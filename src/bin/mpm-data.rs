//! `mpm-data`: PIN++ data tools. See `docs/data.md`.
//!
//! ```text
//! mpm-data synth  --out D [--classes 10] [--images-per-class 30] [--seed 0] [--faults]
//! mpm-data labels --json-dir D/json [--including D/including] [--discarded D/discarded_data.json]
//!                 --images D/images --out OUT [--copy | --no-images] [--val-fraction 0.1]
//! mpm-data index  (--root IMG_ROOT | --list LIST --root IMG_ROOT) [--seg SEG_ROOT]
//!                 [--per-class K --seed S] [--check-maps] --out INDEX.tsv
//! mpm-data stats  --json-dir D/json [--discarded F] [--category-names F] [--json OUT.json]
//! mpm-data show   (--json-dir D/json [--including D/including] | --seg SEG --parts parts.tsv)
//!                 --images IMG_ROOT --out grid.png [--per-class 4] [--max-classes 10]
//! mpm-data corrupt --images DIR|LIST --out OUT [--corruptions all|NAME,...] [--severities 1-5]
//!                 [--size 224|0] [--format png|jpeg] [--seed N]      (docs/corruptions.md)
//! mpm-data tiny   --train IN1K_TRAIN [--seg SEG | --no-seg] [--val IN1K_VAL] --out OUT
//!                 [--wnids FILE] [--images-per-class 500] [--seed 42]   (docs/tracks.md)
//! mpm-data coco-export --json-dir D/json [--discarded F] --out OUT [--infer-images IMG_ROOT]
//! mpm-data pseudo --from-coco-results preds.json --images-json OUT/infer.json --parts parts.tsv
//!                 --out ROOT [--including D/including] [--score-threshold 0.5]
//! mpm-data part-ap --gt GT.json (--results preds.json | --label-maps SEG [--prob-maps PROB])
//!                 [--category-filter] --json OUT.json                 (docs/part-labels.md)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mpm::data::index;
use mpm::data::labels::{self, ImageMode, LabelsConfig};
use mpm::data::report::Skip;
use mpm::data::show::{self, ShowConfig, ShowSource};
use mpm::data::stats;
use mpm::data::synth::{self, SynthConfig};

#[derive(Parser)]
#[command(
    name = "mpm-data",
    version,
    about = "PIN++ data tools: synthetic data, label maps, indexes, statistics, pictures"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a deterministic synthetic part dataset in the PIN++ format.
    Synth(SynthArgs),
    /// PIN++ JSON -> 16-bit PNG label maps + training layout (DESIGN.md contract C).
    Labels(LabelsArgs),
    /// Index an ImageFolder tree or a list file, joined with label maps.
    Index(IndexArgs),
    /// Counts over the PIN++ JSON (Table S1 masks-per-image bins), text and JSON.
    Stats(StatsArgs),
    /// PNG grid of part overlays with a legend, from annotations or label maps.
    Show(ShowArgs),
    /// Pseudo part label maps from a trained MPM's part heads, with the Category Filter;
    /// images that have a label map are scored (pixel accuracy, part mIoU, with/without CF).
    /// `pseudo --from-coco-results FILE` labels from an instance segmenter's results instead
    /// (its own flags: `mpm-data pseudo --from-coco-results x --help`; docs/part-labels.md).
    Pseudo(PseudoArgs),
    /// ImageNet-C: the 15 common corruptions x 5 severities (DESIGN.md contract D).
    Corrupt(CorruptArgs),
    /// Tiny-PartImageNet++: Tiny-ImageNet's 200 classes and 500 training images per class from
    /// an IN-1K train tree with label maps, unresized, plus the classes' IN-1K val images.
    Tiny(TinyArgs),
    // --- part labels from instance segmenters (issue 20, docs/part-labels.md) ---
    /// PIN++ -> COCO instance segmentation (train/val, global part ids) for mmdetection or
    /// detectron2.
    CocoExport(CocoExportArgs),
    /// COCO segm AP / AP50 / AP75 and per-part AP of results or label maps, with or without
    /// the Category Filter (pycocotools' COCOeval semantics).
    PartAp(PartApArgs),
    // --- end part labels ---
}

// --- part labels from instance segmenters (issue 20, docs/part-labels.md) ---
#[derive(clap::Args)]
struct CocoExportArgs {
    /// Directory of per-class `<wnid>.json` files (the PIN++ release).
    #[arg(long)]
    json_dir: PathBuf,
    /// `discarded_data.json`: images left out.
    #[arg(long)]
    discarded: Option<PathBuf>,
    /// Output: OUT/train.json, OUT/val.json, OUT/parts.tsv, OUT/export_report.json.
    #[arg(long)]
    out: PathBuf,
    /// Fraction of each class's images in val (the split of `mpm-data labels`).
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Also write OUT/infer.json: the images of IMG_ROOT/<wnid>/ not in either split (the
    /// images to pseudo-label), with their classes and sizes.
    #[arg(long)]
    infer_images: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct PartApArgs {
    /// Ground truth: a COCO instance file (e.g. coco-export's val.json).
    #[arg(long)]
    gt: PathBuf,
    /// A COCO results file (standard, or extended with a per-detection `scores` vector).
    #[arg(
        long,
        conflicts_with = "label_maps",
        required_unless_present = "label_maps"
    )]
    results: Option<PathBuf>,
    /// Label maps SEG/<wnid>/<stem>.png instead (e.g. `mpm-data pseudo --weights` output's
    /// seg/): one instance per connected part region.
    #[arg(long)]
    label_maps: Option<PathBuf>,
    /// The labeller's probability maps PROB/<wnid>/<stem>.png (its prob/ folder): region
    /// score = mean probability (1.0 for every region without them).
    #[arg(long, requires = "label_maps")]
    prob_maps: Option<PathBuf>,
    /// Apply the Category Filter with each image's known class.
    #[arg(long)]
    category_filter: bool,
    /// Standard results with the filter: mask IoU at which two detections of different own
    /// parts are one object (the better-scoring one is kept).
    #[arg(long, default_value_t = 0.5)]
    same_mask_iou: f64,
    /// Report (AP, AP50, AP75, APs/m/l, AR, per-part AP, counts of unusable records).
    #[arg(long)]
    json: PathBuf,
}

fn run_coco_export(a: CocoExportArgs) -> mpm::Result<()> {
    use mpm::data::coco::export::{run_export, ExportConfig};
    let cfg = ExportConfig {
        json_dir: a.json_dir,
        discarded: a.discarded,
        out: a.out.clone(),
        val_fraction: a.val_fraction,
        split_seed: a.split_seed,
        infer_images: a.infer_images,
        progress: !a.quiet,
    };
    let s = run_export(&cfg)?;
    report_skips(&s.skipped);
    eprintln!(
        "coco-export: {} classes, {} parts; train {} images / {} masks, val {} images / {} \
         masks, {} discarded{} -> {}",
        s.classes,
        s.parts,
        s.train_images,
        s.train_annotations,
        s.val_images,
        s.val_annotations,
        s.discarded,
        if cfg.infer_images.is_some() {
            format!(", {} images to pseudo-label (infer.json)", s.infer_images)
        } else {
            String::new()
        },
        a.out.display()
    );
    if !s.warnings.is_empty() {
        eprintln!("warnings: {} (e.g. {})", s.warnings.len(), s.warnings[0]);
    }
    Ok(())
}

fn run_part_ap(a: PartApArgs) -> mpm::Result<()> {
    use mpm::data::coco::part_ap::{self, PartApConfig, Source};
    let source = match (a.results, a.label_maps) {
        (Some(r), None) => Source::Results(r),
        (None, Some(seg)) => Source::LabelMaps {
            seg,
            prob: a.prob_maps,
        },
        _ => {
            return Err(mpm::Error::flag(
                "--results / --label-maps",
                "give exactly one of them",
            ))
        }
    };
    if !(0.0..=1.0).contains(&a.same_mask_iou) {
        return Err(mpm::Error::flag("--same-mask-iou", "must be in [0, 1]"));
    }
    let cfg = PartApConfig {
        gt: a.gt,
        source,
        category_filter: a.category_filter,
        same_mask_iou: a.same_mask_iou,
    };
    let out = part_ap::run(&cfg)?;
    let c = &out.counts;
    eprintln!(
        "part-ap: {} records ({}), {} scored; unusable: {} unknown image, {} unknown category, \
         {} malformed, {} of another size, {} missing maps{}",
        c.records,
        out.form,
        c.scored,
        c.unknown_image,
        c.unknown_category,
        c.malformed,
        c.size_mismatch,
        c.missing_maps,
        if cfg.category_filter {
            format!(
                "; CF: {} relabelled, {} other-class dropped, {} background, {} same-mask \
                 duplicates",
                c.cf_relabelled,
                c.cf_dropped_other_class,
                c.cf_dropped_background,
                c.cf_dropped_duplicate
            )
        } else {
            String::new()
        }
    );
    for e in &c.examples {
        eprintln!("  e.g. {e}");
    }
    if c.records == 0 {
        eprintln!("part-ap: no detections: every AP with ground truth is 0");
    }
    let st = out.eval.stats;
    println!(
        "{:<22} {:>6} {:>6} {:>6}",
        if cfg.category_filter {
            "with CF"
        } else {
            "without CF"
        },
        "AP",
        "AP50",
        "AP75"
    );
    println!(
        "{:<22} {:>6.1} {:>6.1} {:>6.1}",
        "segm (%)",
        st[0] * 100.0,
        st[1] * 100.0,
        st[2] * 100.0
    );
    let text = serde_json::to_string_pretty(&out.json)
        .map_err(|e| mpm::Error::Msg(format!("part-ap report: {e}")))?;
    mpm::data::imageio::write_atomic(&a.json, text.as_bytes())
}

/// `mpm-data pseudo --from-coco-results`: flags of its own (no model), parsed before the main
/// parser sees the command line (the model flags of `pseudo` are required there).
#[derive(Parser)]
#[command(
    name = "mpm-data pseudo",
    about = "Pseudo part label maps from an instance segmenter's COCO results, with the \
             Category Filter (docs/part-labels.md)"
)]
struct PseudoCocoArgs {
    /// The segmenter's results: standard COCO records, or extended ones with a `scores`
    /// vector per detection; streamed, any size.
    #[arg(long)]
    from_coco_results: PathBuf,
    /// COCO file(s) listing the results' images (ids, file names, sizes, classes), e.g.
    /// coco-export's infer.json.
    #[arg(long, required = true)]
    images_json: Vec<PathBuf>,
    /// `parts.tsv` (global part ids per class; coco-export and labels write it).
    #[arg(long)]
    parts: PathBuf,
    /// Output root (the training layout; may be the `labels` root): seg/, whether_pseudo/,
    /// pseudo_coco_report.json.
    #[arg(long)]
    out: PathBuf,
    /// `including/` of the release: inner parts painted over their containers.
    #[arg(long)]
    including: Option<PathBuf>,
    /// IMG_ROOT the file names are relative to: OUT/img/<wnid>/<file> symlinks.
    #[arg(long)]
    images: Option<PathBuf>,
    /// Masks scoring below this are not painted.
    #[arg(long, default_value_t = 0.5)]
    score_threshold: f64,
    /// Keep every detection's own label (no Category Filter).
    #[arg(long)]
    no_category_filter: bool,
    /// Standard results with the filter: mask IoU at which detections of two different own
    /// parts are one object (the better-scoring one is kept).
    #[arg(long, default_value_t = 0.5)]
    same_mask_iou: f64,
    /// Repaint images this command already labelled (flag 1 and a map).
    #[arg(long)]
    overwrite: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// The command line, when it is `pseudo ... --from-coco-results ...`, as that command's own
/// (its name first).
fn pseudo_coco_argv() -> Option<Vec<std::ffi::OsString>> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let is = argv.get(1).is_some_and(|a| a == "pseudo")
        && argv.iter().any(|a| {
            a.to_str().is_some_and(|s| {
                s == "--from-coco-results" || s.starts_with("--from-coco-results=")
            })
        });
    is.then(|| {
        std::iter::once(std::ffi::OsString::from("mpm-data pseudo"))
            .chain(argv.into_iter().skip(2))
            .collect()
    })
}

fn run_pseudo_coco(a: PseudoCocoArgs) -> mpm::Result<()> {
    use mpm::data::coco::pseudo::{run, CocoPseudoConfig};
    if !(0.0..=1.0).contains(&a.same_mask_iou) {
        return Err(mpm::Error::flag("--same-mask-iou", "must be in [0, 1]"));
    }
    let cfg = CocoPseudoConfig {
        results: a.from_coco_results,
        images_json: a.images_json,
        parts: a.parts,
        including: a.including,
        images_root: a.images,
        out: a.out.clone(),
        threshold: a.score_threshold,
        category_filter: !a.no_category_filter,
        same_mask_iou: a.same_mask_iou,
        overwrite: a.overwrite,
        batch: 256,
        progress: !a.quiet,
    };
    let s = run(&cfg)?;
    report_skips(&s.skipped);
    let c = &s.counts;
    eprintln!(
        "pseudo: {} label maps written ({} all background), {:.1} images/s; {} annotated and \
         {} of unknown origin kept, {} already done; {} masks painted, {} below {}; records: \
         {} unknown image, {} unknown category, {} malformed, {} of another size; CF: {} \
         relabelled, {} other-class, {} background, {} same-mask duplicates -> {}",
        s.written,
        s.blank_maps,
        s.images_per_second,
        s.kept_annotated,
        s.kept_unknown_origin,
        s.already_done,
        s.masks_painted,
        s.masks_below_threshold,
        cfg.threshold,
        c.unknown_image,
        c.unknown_category,
        c.malformed,
        c.size_mismatch,
        c.cf_relabelled,
        c.cf_dropped_other_class,
        c.cf_dropped_background,
        c.cf_dropped_duplicate,
        a.out.join("seg").display()
    );
    for e in &c.examples {
        eprintln!("  e.g. {e}");
    }
    Ok(())
}
// --- end part labels ---

#[derive(clap::Args)]
struct TinyArgs {
    /// IN-1K training images: TRAIN/img/<wnid>/<file> (training layout, label maps in
    /// TRAIN/seg) or TRAIN/<wnid>/<file>.
    #[arg(long)]
    train: PathBuf,
    /// Label maps SEG/<wnid>/<stem>.png (default TRAIN/seg).
    #[arg(long)]
    seg: Option<PathBuf>,
    /// No part labels: plain Tiny-ImageNet classes and images at full resolution.
    #[arg(long, conflicts_with = "seg")]
    no_seg: bool,
    /// ILSVRC train bounding boxes BOXES/<wnid>/<stem>.xml: only boxed images are candidates,
    /// as in Tiny-ImageNet's generation script.
    #[arg(long)]
    boxes: Option<PathBuf>,
    /// IN-1K val images sorted into VAL/<wnid>/ folders: the evaluation set (50 per class).
    #[arg(long)]
    val: Option<PathBuf>,
    /// Output root (OUT/train, OUT/val, OUT/wnids.txt, OUT/tiny_report.json).
    #[arg(long)]
    out: PathBuf,
    /// Class list, one wnid per line (default: Tiny-ImageNet's 200, assets/tiny/wnids.txt).
    #[arg(long)]
    wnids: Option<PathBuf>,
    /// Training images per class (Tiny-ImageNet: 500).
    #[arg(long, default_value_t = 500)]
    images_per_class: usize,
    /// IN-1K val images per class (the val set has 50).
    #[arg(long, default_value_t = 50)]
    val_per_class: usize,
    /// Also K Tiny-ImageNet-style validation images per class from the *train* set (T-IN's
    /// own rule, which leaks near-duplicates of training images; default none).
    #[arg(long, default_value_t = 0)]
    leaky_val: usize,
    /// Seed of the per-class draw (42: the generation script's default).
    #[arg(long, default_value_t = mpm::data::tiny::TIN_SEED)]
    seed: u64,
    /// Copy images and maps instead of symlinking them.
    #[arg(long)]
    copy: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn run_tiny(a: TinyArgs) -> mpm::Result<()> {
    use mpm::data::tiny::{self, TinyConfig};
    let cfg = TinyConfig {
        train: a.train,
        seg: a.seg,
        no_seg: a.no_seg,
        boxes: a.boxes,
        val: a.val,
        out: a.out.clone(),
        wnids: a.wnids,
        images_per_class: a.images_per_class,
        val_per_class: a.val_per_class,
        leaky_val: a.leaky_val,
        seed: a.seed,
        image_mode: if a.copy {
            ImageMode::Copy
        } else {
            ImageMode::Symlink
        },
        progress: !a.quiet,
    };
    let s = tiny::run_tiny(&cfg)?;
    report_skips(&s.skipped);
    eprint!("{}", s.text());
    eprintln!("-> {}", a.out.display());
    Ok(())
}

#[derive(clap::Args)]
struct CorruptArgs {
    /// A folder of images (read recursively: .png, .jpg, .jpeg) or a list file of paths
    /// relative to the list's folder (one per line; a trailing class index is ignored).
    #[arg(long)]
    images: PathBuf,
    /// Output root: OUT/<corruption>/<severity>/<relative path>.<format>.
    #[arg(long)]
    out: PathBuf,
    /// `all` or comma-separated names (gaussian_noise, ..., jpeg_compression).
    #[arg(long, default_value = "all")]
    corruptions: String,
    /// A range (1-5) or a list (1,3,5).
    #[arg(long, default_value = "1-5")]
    severities: String,
    /// 224: resize 256 (bilinear) + centre crop 224 first; 0: keep the input size.
    #[arg(long, default_value_t = 224)]
    size: u32,
    /// png (lossless) or jpeg (quality 85).
    #[arg(long, default_value = "png")]
    format: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct PseudoArgs {
    /// MPM checkpoint (safetensors or .pth; its EMA weights when it holds both).
    #[arg(long)]
    weights: PathBuf,
    #[command(flatten)]
    model: mpm::audit::files::ModelArgs,
    /// `parts.tsv` of the label set the model was trained on (global part ids per class).
    #[arg(long)]
    parts: PathBuf,
    /// Images to label: an index file written by `mpm-data index` (class of each image; a
    /// label map, when present, is used for scoring).
    #[arg(long)]
    index: PathBuf,
    /// Output (the reference's training layout; may be the `labels` output root): OUT/seg/<wnid>/<stem>.png,
    /// OUT/img/<wnid>/<file> (symlinks), OUT/whether_pseudo/<wnid>.txt (flag 1; images flagged 0,
    /// i.e. annotated, are never overwritten), OUT/pseudo.jsonl, OUT/pseudo_report.json.
    #[arg(long)]
    out: PathBuf,
    /// Model input size (the whole image is resized to it).
    #[arg(long, default_value_t = 224)]
    input_size: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Plain argmax over all part classes (the filter is on by default).
    #[arg(long)]
    no_category_filter: bool,
    /// Score images that already have a label map but do not write a pseudo map for them.
    #[arg(long)]
    skip_annotated: bool,
}

#[derive(clap::Args)]
struct IndexArgs {
    /// Image root: ROOT/<wnid>/<image> (ImageFolder), or the root the list file is relative to.
    #[arg(long)]
    root: PathBuf,
    /// List file of `<wnid>/<file> <class index>` lines (e.g. the paper's 10K val list).
    #[arg(long)]
    list: Option<PathBuf>,
    /// Label-map root: SEG/<wnid>/<stem>.png.
    #[arg(long)]
    seg: Option<PathBuf>,
    /// Class order file (one wnid per line, or `wnid<TAB>name`): fixes class indices.
    #[arg(long)]
    classes: Option<PathBuf>,
    /// Keep K samples per class (balanced subset).
    #[arg(long)]
    per_class: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Read every label map: unreadable, size-mismatched and all-background maps are left out
    /// (those images get segmentation weight 0).
    #[arg(long)]
    check_maps: bool,
    /// Index file to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct StatsArgs {
    #[arg(long)]
    json_dir: PathBuf,
    #[arg(long)]
    discarded: Option<PathBuf>,
    #[arg(long)]
    category_names: Option<PathBuf>,
    /// Also write the statistics as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ShowArgs {
    /// Draw from annotations: the per-class JSON directory.
    #[arg(long, conflicts_with_all = ["seg", "parts"])]
    json_dir: Option<PathBuf>,
    #[arg(long, requires = "json_dir")]
    including: Option<PathBuf>,
    /// Draw from label maps (annotations, pseudo labels or predictions): SEG/<wnid>/<stem>.png.
    #[arg(long, requires = "parts")]
    seg: Option<PathBuf>,
    /// parts.tsv naming the global ids.
    #[arg(long, requires = "seg")]
    parts: Option<PathBuf>,
    /// Image root: IMG/<wnid>/<file>.
    #[arg(long)]
    images: PathBuf,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 4)]
    per_class: usize,
    #[arg(long, default_value_t = 10)]
    max_classes: usize,
    /// Tile side in pixels.
    #[arg(long, default_value_t = 128)]
    tile: usize,
    /// Opacity of the part colours.
    #[arg(long, default_value_t = 0.55)]
    alpha: f32,
}

#[derive(clap::Args)]
struct SynthArgs {
    /// Output directory: json/, including/, discarded_data.json, category_name.json (the PIN++
    /// release format) and images/<wnid>/ (standing for the IN-1K train folder).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 10)]
    classes: usize,
    #[arg(long, default_value_t = 30)]
    images_per_class: usize,
    #[arg(long, default_value_t = 64)]
    min_size: usize,
    #[arg(long, default_value_t = 128)]
    max_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Add known-bad items (corrupt JPEG, size mismatch, broken annotations, a file name without
    /// its wnid folder, a non-JSON class).
    #[arg(long)]
    faults: bool,
    #[arg(long, default_value_t = 92)]
    jpeg_quality: u8,
}

#[derive(clap::Args)]
struct LabelsArgs {
    /// Directory of per-class `<wnid>.json` files.
    #[arg(long)]
    json_dir: PathBuf,
    /// Directory of `including/<wnid>.txt` inclusion relations (`child:parent` part names).
    #[arg(long)]
    including: Option<PathBuf>,
    /// `discarded_data.json`: images to leave out (a list of names, a list of objects with
    /// `file_name`, or a map wnid -> names).
    #[arg(long)]
    discarded: Option<PathBuf>,
    /// `category_name.json` (wnid -> class name), written to OUT/classes.tsv.
    #[arg(long)]
    category_names: Option<PathBuf>,
    /// Image root: images are IMG_ROOT/<wnid>/<file_name>.
    #[arg(long)]
    images: PathBuf,
    /// Output root (img/, seg/, whether_pseudo/, parts.tsv, classes.tsv, train.txt, val.txt,
    /// labels_report.json).
    #[arg(long)]
    out: PathBuf,
    /// Copy images into OUT/img instead of symlinking them.
    #[arg(long, conflicts_with = "no_images")]
    copy: bool,
    /// Do not create OUT/img.
    #[arg(long)]
    no_images: bool,
    /// Fraction of each class's images put in val.txt.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn run(cli: Cli) -> mpm::Result<()> {
    match cli.cmd {
        Cmd::Synth(a) => {
            let cfg = SynthConfig {
                out: a.out.clone(),
                classes: a.classes,
                images_per_class: a.images_per_class,
                min_size: a.min_size,
                max_size: a.max_size,
                seed: a.seed,
                faults: a.faults,
                keep_truth: false,
                jpeg_quality: a.jpeg_quality.clamp(1, 100),
            };
            let s = synth::run_synth(&cfg)?;
            eprintln!(
                "synth: {} classes, {} images, {} annotations, {} discarded{} -> {}",
                s.classes,
                s.images,
                s.annotations,
                s.discarded.len(),
                if a.faults {
                    format!(", {} faulty images + 1 broken class file", s.faulty_images)
                } else {
                    String::new()
                },
                a.out.display()
            );
            Ok(())
        }
        Cmd::Labels(a) => {
            let cfg = LabelsConfig {
                json_dir: a.json_dir,
                including: a.including,
                discarded: a.discarded,
                category_names: a.category_names,
                images: a.images,
                out: a.out,
                image_mode: if a.no_images {
                    ImageMode::None
                } else if a.copy {
                    ImageMode::Copy
                } else {
                    ImageMode::Symlink
                },
                val_fraction: a.val_fraction,
                split_seed: a.split_seed,
                progress: !a.quiet,
            };
            let s = labels::run_labels(&cfg)?;
            eprint!("{}", s.text());
            Ok(())
        }
        Cmd::Index(a) => run_index(a),
        Cmd::Tiny(a) => run_tiny(a),
        Cmd::Stats(a) => {
            let st = stats::compute(
                &a.json_dir,
                a.discarded.as_deref(),
                a.category_names.as_deref(),
            )?;
            print!("{}", st.text());
            if let Some(p) = a.json {
                let j = serde_json::to_string_pretty(&st)
                    .map_err(|e| mpm::Error::Msg(e.to_string()))?;
                mpm::data::imageio::write_atomic(&p, j.as_bytes())?;
            }
            Ok(())
        }
        Cmd::Show(a) => {
            let source = match (a.json_dir, a.seg, a.parts) {
                (Some(json_dir), None, None) => ShowSource::Annotations {
                    json_dir,
                    including: a.including,
                },
                (None, Some(seg), Some(parts)) => ShowSource::LabelMaps { seg, parts },
                _ => {
                    return Err(mpm::Error::flag(
                        "--json-dir / --seg",
                        "give --json-dir, or --seg with --parts",
                    ))
                }
            };
            if a.per_class == 0 || a.tile < 16 || !(0.0..=1.0).contains(&a.alpha) {
                return Err(mpm::Error::flag(
                    "--per-class/--tile/--alpha",
                    "need per-class >= 1, tile >= 16, alpha in [0, 1]",
                ));
            }
            show::prepare_out(&a.out)?;
            let cfg = ShowConfig {
                source,
                images: a.images,
                out: a.out.clone(),
                per_class: a.per_class,
                max_classes: a.max_classes,
                tile: a.tile,
                alpha: a.alpha,
            };
            let (n, skips) = show::run_show(&cfg)?;
            report_skips(&skips);
            eprintln!("show: {n} samples -> {}", a.out.display());
            Ok(())
        }
        Cmd::Pseudo(a) => run_pseudo(a),
        Cmd::Corrupt(a) => run_corrupt(a),
        // --- part labels (issue 20) ---
        Cmd::CocoExport(a) => run_coco_export(a),
        Cmd::PartAp(a) => run_part_ap(a),
    }
}

fn run_corrupt(a: CorruptArgs) -> mpm::Result<()> {
    use mpm::data::corrupt::job::{self, CorruptConfig, OutFormat};
    let cfg = CorruptConfig {
        images: a.images,
        out: a.out,
        corruptions: job::parse_corruptions(&a.corruptions)?,
        severities: job::parse_severities(&a.severities)?,
        size: a.size,
        format: OutFormat::parse(&a.format)?,
        seed: a.seed,
        progress: !a.quiet,
    };
    let t = std::time::Instant::now();
    let s = job::run(&cfg)?;
    report_skips(&s.skipped);
    eprint!("{}", s.text());
    let secs = t.elapsed().as_secs_f64();
    if s.written > 0 {
        eprintln!(
            "corrupt: {:.1} s, {:.1} outputs/s -> {}",
            secs,
            s.written as f64 / secs,
            cfg.out.display()
        );
    }
    if s.written + s.kept == 0 {
        return Err(mpm::Error::Msg("corrupt: no output could be made".into()));
    }
    Ok(())
}

fn run_pseudo(a: PseudoArgs) -> mpm::Result<()> {
    use mpm::data::pseudo_label::{self, PseudoConfig};
    let (spec, store) = mpm::audit::files::load_model(&a.weights, &a.model)?;
    let table = mpm::data::pin_json::PartTable::from_tsv(&a.parts)?;
    let index = index::Index::read(&a.index)?;
    if index.samples.is_empty() {
        return Err(mpm::Error::format(&a.index, "the index lists no images"));
    }
    if a.input_size < 32 || a.batch_size == 0 {
        return Err(mpm::Error::flag(
            "--input-size/--batch-size",
            "need an input size of at least 32 and a batch size of at least 1",
        ));
    }
    let cfg = PseudoConfig {
        input_size: a.input_size,
        batch_size: a.batch_size,
        category_filter: !a.no_category_filter,
        skip_annotated: a.skip_annotated,
        out: a.out.clone(),
        progress: true,
    };
    let sum = pseudo_label::run(&spec, &store, &table, &index, &cfg)?;
    report_skips(&sum.skipped);
    let mut report = serde_json::json!({
        "written": sum.written,
        "kept_annotated": sum.kept_annotated,
        "scored": sum.scored,
        "skipped": sum.skipped.len(),
        "category_filter": cfg.category_filter,
        "dirs_synced": sum.dirs_synced,
        "stale_temps_removed": sum.stale_temps_removed,
    });
    eprintln!(
        "pseudo: {} label maps -> {} (flag 1 in whether_pseudo/); {} annotated image(s) kept as they were",
        sum.written,
        a.out.join("seg").display(),
        sum.kept_annotated
    );
    if let (Some(f), Some(p)) = (&sum.with_filter, &sum.without_filter) {
        println!("scored on {} annotated images:", sum.scored);
        println!("  {:<26} {:>14} {:>10}", "", "pixel accuracy", "part mIoU");
        println!(
            "  {:<26} {:>14.4} {:>10.4}",
            "without Category Filter",
            p.pixel_accuracy(),
            p.part_miou()
        );
        println!(
            "  {:<26} {:>14.4} {:>10.4}",
            "with Category Filter",
            f.pixel_accuracy(),
            f.part_miou()
        );
        report["without_filter"] = serde_json::json!({
            "pixel_accuracy": p.pixel_accuracy(), "part_miou": p.part_miou() });
        report["with_filter"] = serde_json::json!({
            "pixel_accuracy": f.pixel_accuracy(), "part_miou": f.part_miou() });
    }
    mpm::data::imageio::write_atomic(
        &a.out.join("pseudo_report.json"),
        serde_json::to_string_pretty(&report)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    if sum.written == 0 && sum.scored == 0 {
        return Err(mpm::Error::Msg(
            "pseudo: nothing usable was labelled".into(),
        ));
    }
    Ok(())
}

fn report_skips(skips: &[Skip]) {
    for s in skips {
        eprintln!("skip {s}");
    }
    if !skips.is_empty() {
        eprintln!("skipped {} item(s):", skips.len());
        for (k, n) in mpm::data::report::summarise(skips) {
            eprintln!("  {n:>6}  {k}");
        }
    }
}

fn run_index(a: IndexArgs) -> mpm::Result<()> {
    let classes = match &a.classes {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| mpm::Error::io(p, e))?;
            Some(
                t.lines()
                    .filter(|l| !l.trim().is_empty() && !l.starts_with("wnid"))
                    .map(|l| l.split('\t').next().unwrap_or("").trim().to_string())
                    .collect::<Vec<_>>(),
            )
        }
        None => None,
    };
    let (mut idx, mut skips) = match &a.list {
        Some(list) => index::read_list(list, &a.root, a.seg.as_deref())?,
        None => (
            index::scan_image_folder(&a.root, a.seg.as_deref(), classes)?,
            Vec::new(),
        ),
    };
    if let Some(k) = a.per_class {
        idx = index::balanced_subset(&idx, k, a.seed);
    }
    let mut blank = 0;
    if a.check_maps {
        for s in idx.samples.iter_mut() {
            let Some(p) = s.seg.clone() else { continue };
            let dims = image::ImageReader::open(&s.image)
                .ok()
                .and_then(|r| r.with_guessed_format().ok())
                .and_then(|r| r.into_dimensions().ok());
            match mpm::data::imageio::read_label_map(&p) {
                Err(e) => {
                    skips.push(Skip::new(&p, format!("map left out: {e}")));
                    s.seg = None;
                }
                Ok(m) if dims != Some((m.w as u32, m.h as u32)) => {
                    let image = match dims {
                        Some((w, h)) => format!("image {w}x{h}"),
                        None => format!("an unreadable image ({})", s.image.display()),
                    };
                    skips.push(Skip::new(
                        &p,
                        format!("map left out: {}x{} vs {image}", m.w, m.h),
                    ));
                    s.seg = None;
                }
                Ok(m) if m.is_blank() => {
                    blank += 1;
                    s.seg = None;
                }
                Ok(_) => {}
            }
        }
    }
    report_skips(&skips);
    if idx.samples.is_empty() {
        return Err(mpm::Error::Msg("index: no samples found".into()));
    }
    mpm::data::imageio::write_atomic(&a.out, idx.to_text().as_bytes())?;
    eprintln!(
        "index: {} samples, {} classes, {} with a label map{} -> {}",
        idx.samples.len(),
        idx.classes.len(),
        idx.with_maps(),
        if a.check_maps {
            format!(" ({blank} all-background maps left out)")
        } else {
            String::new()
        },
        a.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    // --- part labels (issue 20) ---
    if let Some(argv) = pseudo_coco_argv() {
        return match run_pseudo_coco(PseudoCocoArgs::parse_from(argv)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mpm-data: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // --- end part labels ---
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mpm-data: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap checks flag definitions (duplicate names, conflicting defaults) only in debug
    /// builds and only when parsing: check them here so a release-only test run cannot miss it.
    #[test]
    fn cli_definition_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
        super::PseudoCocoArgs::command().debug_assert();
    }
}
