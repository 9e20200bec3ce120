//! `mpm-data`: PIN++ data tools. See `docs/data.md`.
//!
//! ```text
//! mpm-data synth  --out D [--classes 10] [--images-per-class 30] [--seed 0] [--faults]
//! mpm-data labels --json-dir D/json [--including D/including] [--discarded D/discarded_data.json]
//!                 --images D/images --out OUT [--copy | --no-images] [--val-fraction 0.1]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mpm::data::labels::{self, ImageMode, LabelsConfig};
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
}

#[derive(clap::Args)]
struct SynthArgs {
    /// Output directory (json/, images/, including/, discarded_data.json, category_name.json).
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
    /// Add known-bad items (corrupt JPEG, size mismatch, broken annotations, a non-JSON class).
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
    /// Directory of `including/<wnid>.json` inclusion relations (inner part -> container).
    #[arg(long)]
    including: Option<PathBuf>,
    /// `discarded_data.json`: images to leave out.
    #[arg(long)]
    discarded: Option<PathBuf>,
    /// `category_name.json` (wnid -> class name), written to OUT/classes.tsv.
    #[arg(long)]
    category_names: Option<PathBuf>,
    /// Image root: images are IMG_ROOT/<wnid>/<file_name>.
    #[arg(long)]
    images: PathBuf,
    /// Output root (seg/, img/, parts.tsv, classes.tsv, train.txt, val.txt, labels_report.json).
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
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mpm-data: error: {e}");
            ExitCode::FAILURE
        }
    }
}
