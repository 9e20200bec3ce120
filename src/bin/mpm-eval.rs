//! `mpm-eval`: robustness beyond adversarial attacks (issue 16, docs/robustness.md).
//!
//! ```text
//! mpm-eval clean        --weights W <model flags> --data VAL --json R.json
//! mpm-eval corruptions  --weights W <model flags> --data IMAGENET-C [--on-the-fly] --json R.json
//! mpm-eval ood          --weights W <model flags> --dataset imagenet-a-plus --data DIR --json R.json
//! mpm-eval human        --weights W <model flags> --data STIMULI --out CSV_DIR --json R.json
//! mpm-eval human-metrics --model-csv DIR --human-data DIR --json OUT [--datasets all|NAME,...]
//! mpm-eval table        --runs A.json,B.json,... --out DIR
//! ```

use clap::{Args, Parser, Subcommand};
use mpm::attack::imagefolder::ImageFolder;
use mpm::attack::EngineClassifier;
use mpm::audit::files::ModelArgs;
use mpm::data::corrupt::job::{parse_corruptions, parse_severities};
use mpm::device::DeviceRequest;
use mpm::eval::assets::HUMAN_DATASETS;
use mpm::eval::predict::PredictionJournal;
use mpm::eval::report::write_report;
use mpm::eval::runs::{self, CorruptionPlan, OodDataset, Runner};
use mpm::eval::sets::{EvalTransform, Images};
use mpm::eval::{human, human_metrics, table};
use mpm::{Error, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mpm-eval",
    about = "Common corruptions, OOD datasets and model-vs-human consistency (the paper's Tables 3, 4, S4)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// The model and how to run it (as mpm-attack).
#[derive(Args)]
struct ModelOpts {
    /// Model weights (safetensors or PyTorch .pth/.pth.tar; EMA weights preferred when present).
    #[arg(long)]
    weights: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    norm: mpm::nn::zoo::NormArgs,
    /// The model's name in reports, tables and CSV files (default: the weights' file stem).
    #[arg(long)]
    name: Option<String>,
    /// Model input size (the eval transform's centre crop; 256/224 of it is the resize).
    #[arg(long, default_value_t = 224)]
    crop: u32,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// auto | cpu | cuda[:N]
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// GPU arithmetic: f32, tf32 or bf16 (ignored on the CPU).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Report (JSON); its table is also written beside it as Markdown (`.md`).
    #[arg(long)]
    json: PathBuf,
    /// Per-image journal (default `<json>.journal`); a rerun resumes from it.
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Ignore an existing journal and start afresh.
    #[arg(long)]
    no_resume: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Clean top-1 accuracy on an ImageFolder (the IN-1K val set).
    Clean {
        #[command(flatten)]
        m: ModelOpts,
        #[arg(long)]
        data: PathBuf,
        /// Only the images this list names (`<class>/<file> [label]`, e.g. the balanced 10K).
        #[arg(long)]
        list: Option<PathBuf>,
        /// The first K images (by name) of each class.
        #[arg(long)]
        per_class: Option<usize>,
    },
    /// ImageNet-C (Table 3): a pre-generated tree `<corruption>/<severity>/<class>/<image>`
    /// (the released layout), or with --on-the-fly the val set corrupted as it is read.
    Corruptions {
        #[command(flatten)]
        m: ModelOpts,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        on_the_fly: bool,
        #[arg(long, default_value = "all")]
        corruptions: String,
        #[arg(long, default_value = "1-5")]
        severities: String,
        /// Seed of the random corruptions on the fly (as mpm-data corrupt --seed).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        per_class: Option<usize>,
    },
    /// One OOD dataset (Table 4).
    Ood {
        #[command(flatten)]
        m: ModelOpts,
        /// imagenet-a | imagenet-a-plus | imagenet-r | imagenet-sketch | stylized-imagenet | imagenet-v2
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        per_class: Option<usize>,
    },
    /// The 17 model-vs-human datasets -> the benchmark's session CSV files.
    Human {
        #[command(flatten)]
        m: ModelOpts,
        /// The stimuli: `<data>/<dataset>/dnn/session-1/*.png`.
        #[arg(long)]
        data: PathBuf,
        /// Where the `<dataset>_<model>_session-1.csv` files go.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "all")]
        datasets: String,
    },
    /// Contract E: OOD accuracy, accuracy difference, observed and error consistency.
    HumanMetrics {
        #[arg(long)]
        model_csv: PathBuf,
        /// The benchmark's `raw-data/` (its `<dataset>/*.csv` human files).
        #[arg(long)]
        human_data: PathBuf,
        #[arg(long)]
        json: PathBuf,
        #[arg(long, default_value = "all")]
        datasets: String,
    },
    /// Several reports side by side as Tables 2, 3, 4 and S4 (Markdown, CSV, PNG).
    Table {
        /// Report files or folders of reports, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        runs: Vec<PathBuf>,
        /// Model names, one per report file (default: each report's model name).
        #[arg(long, value_delimiter = ',')]
        names: Option<Vec<String>>,
        #[arg(long)]
        out: PathBuf,
        /// Put the paper's published Table 2 numbers (assets/zoo/table2.toml, `mpm-attack zoo`)
        /// beside the measured rows, as `NAME (paper)` rows.
        #[arg(long)]
        published: bool,
    },
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn dataset_list(s: &str) -> Result<Option<Vec<String>>> {
    if s == "all" {
        return Ok(None);
    }
    let v: Vec<String> = s
        .split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect();
    if let Some(bad) = v.iter().find(|d| !HUMAN_DATASETS.contains(&d.as_str())) {
        return Err(Error::flag(
            "--datasets",
            format!(
                "unknown dataset '{bad}'; one of {}",
                HUMAN_DATASETS.join(", ")
            ),
        ));
    }
    Ok(Some(v))
}

/// Loads the model, opens the journal, runs `f`, writes the report.
fn with_model(
    m: &ModelOpts,
    command: &str,
    fingerprint: Value,
    heads: usize,
    f: impl FnOnce(&mut Runner) -> Result<Value>,
) -> Result<()> {
    if m.batch_size == 0 {
        return Err(Error::flag("--batch-size", "must be at least 1"));
    }
    if m.crop < 32 {
        return Err(Error::flag("--crop", "must be at least 32"));
    }
    let (dev, why) = m.device.resolve()?;
    eprintln!("device: {why}");
    mpm::device::parse_precision_flag(&m.precision)?;
    // Published checkpoints load as published, with their own normalisation (nn::zoo).
    let loaded = mpm::nn::zoo::load_for_eval(&m.weights, &m.model, &m.norm)?;
    let (spec, store, prep) = (loaded.spec, loaded.store, loaded.preprocessing);
    eprintln!("model: {}", spec.describe());
    eprintln!("model: {}", prep.describe());
    let name = m.name.clone().unwrap_or_else(|| {
        m.weights
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let weights_bytes = std::fs::metadata(&m.weights).map(|x| x.len()).unwrap_or(0);
    let fp = json!({
        "command": command, "run": fingerprint, "weights": m.weights.display().to_string(),
        "weights_bytes": weights_bytes, "model": spec.describe(), "crop": m.crop,
    });
    // Another normalisation is another model: part of the journal key, except ImageNet's (the
    // only one before per-model normalisation, so older journals still resume).
    let fp = if prep.norm.same(&mpm::nn::zoo::InputNorm::IMAGENET) {
        fp
    } else {
        let mut fp = fp;
        fp["normalisation"] = json!(prep.norm.describe());
        fp
    };
    let jpath = m
        .journal
        .clone()
        .unwrap_or_else(|| with_suffix(&m.json, ".journal"));
    let journal = PredictionJournal::open(&jpath, &fp, heads, !m.no_resume)?;
    let mut model = EngineClassifier::new(spec, store)
        .with_input_norm(prep.norm)
        .on_device(dev)?;
    let mut r = Runner {
        model: &mut model,
        batch_size: m.batch_size,
        journal,
        throughput: Default::default(),
        name,
    };
    let mut report = f(&mut r)?;
    eprintln!("total: {}", r.throughput.line());
    if let Value::Object(o) = &mut report {
        o.insert("device".into(), json!(dev.to_string()));
        o.insert("weights".into(), json!(m.weights.display().to_string()));
        o.insert("architecture".into(), json!(spec.describe()));
        o.insert("preprocessing".into(), prep.to_json());
        o.insert("timing".into(), r.throughput.to_json());
        o.insert("journal".into(), json!(jpath.display().to_string()));
    }
    let md = report["table"].as_str().unwrap_or_default().to_string();
    write_report(&m.json, &report, &md)?;
    eprintln!("wrote {}", m.json.display());
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Clean {
            m,
            data,
            list,
            per_class,
        } => {
            let fp = json!({"data": data.display().to_string(), "list": list.as_ref().map(|l| l.display().to_string()), "per_class": per_class});
            let crop = m.crop;
            let num_classes = m.model.num_classes;
            with_model(&m, "clean", fp, 1, |r| {
                let f =
                    ImageFolder::open(&data, list.as_deref(), per_class, num_classes, 256, 224)?;
                let set = Images {
                    root: f.root,
                    classes: f.classes,
                    items: f.items,
                    transform: EvalTransform::standard(crop),
                    corruption: None,
                    what: "val set".into(),
                };
                runs::clean(r, &set)
            })
        }
        Cmd::Corruptions {
            m,
            data,
            on_the_fly,
            corruptions,
            severities,
            seed,
            per_class,
        } => {
            let plan = CorruptionPlan {
                data: data.clone(),
                on_the_fly,
                corruptions: parse_corruptions(&corruptions)?,
                severities: parse_severities(&severities)?,
                seed,
                crop: m.crop,
                num_classes: m.model.num_classes,
                per_class,
            };
            let fp = json!({"data": data.display().to_string(), "on_the_fly": on_the_fly,
                            "seed": if on_the_fly { Some(seed) } else { None }, "per_class": per_class});
            with_model(&m, "corruptions", fp, 1, |r| runs::corruptions(r, &plan))
        }
        Cmd::Ood {
            m,
            dataset,
            data,
            per_class,
        } => {
            let ds = OodDataset::parse(&dataset)?;
            let fp = json!({"dataset": ds.name(), "data": data.display().to_string(), "per_class": per_class});
            let crop = m.crop;
            with_model(&m, "ood", fp, 1, |r| {
                runs::ood(r, ds, &data, crop, per_class)
            })
        }
        Cmd::Human {
            m,
            data,
            out,
            datasets,
        } => {
            let list = dataset_list(&datasets)?
                .unwrap_or_else(|| HUMAN_DATASETS.iter().map(|s| s.to_string()).collect());
            let fp =
                json!({"data": data.display().to_string(), "head": "sixteen categories (mean)"});
            let crop = m.crop;
            with_model(&m, "human", fp, 1, |r| {
                human::run(r, &data, &out, &list, crop)
            })
        }
        Cmd::HumanMetrics {
            model_csv,
            human_data,
            json,
            datasets,
        } => {
            let list = dataset_list(&datasets)?;
            let hm = human_metrics::compute(&model_csv, &human_data, list.as_deref())?;
            let table = hm.table();
            println!("{table}");
            write_report(&json, &hm.to_json(), &table)?;
            eprintln!("wrote {}", json.display());
            Ok(())
        }
        Cmd::Table {
            runs,
            names,
            out,
            published,
        } => {
            let files = table::report_files(&runs)?;
            let mut tables = table::build(&files, names.as_deref())?;
            if published {
                table::add_published(&mut tables, &mpm::nn::zoo_list::table2()?);
            }
            let md = table::write(&out, &tables)?;
            println!("{md}");
            eprintln!(
                "wrote {}/tables.md and tableN.{{md,csv,png}}",
                out.display()
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    mpm::attack::run::join_global_pool();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
