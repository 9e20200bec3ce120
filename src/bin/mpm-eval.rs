//! `mpm-eval`: robustness beyond adversarial attacks (issue 16, docs/robustness.md).
//!
//! ```text
//! mpm-eval clean        --weights W <model flags> --data VAL --json R.json
//! mpm-eval corruptions  --weights W <model flags> --data IMAGENET-C [--on-the-fly] --json R.json
//! mpm-eval ood          --weights W <model flags> --dataset imagenet-a-plus --data DIR --json R.json
//! mpm-eval human        --weights W <model flags> --data STIMULI --out CSV_DIR --json R.json
//! mpm-eval human-metrics --model-csv DIR --human-data DIR --json OUT [--datasets all|NAME,...]
//! mpm-eval table        --runs A.json,B.json,... --out DIR [--table main|5|6]
//! mpm-eval clean ... --shard I/N --json shard_I.json   (any command that evaluates images)
//! mpm-eval merge shard_0.json shard_1.json ... --json R.json
//! mpm-eval clean ... --class-subset FILE | --super-classes FILE
//! mpm-eval clean ... --interpolation bilinear [--zoo NAME]   (RobustBench's Res256Crop224)
//! ```
//!
//! Every path a command writes (`--json`, `--journal`, `--out`) is checked before the model
//! loads, so a bad one fails at once, naming its flag.

use clap::{Args, Parser, Subcommand};
use mpm::attack::imagefolder::ImageFolder;
use mpm::attack::shard::{check_shards, merged_timing, Shard};
use mpm::attack::subset::ClassMap;
use mpm::attack::{Classifier, Dims, EngineClassifier};
use mpm::audit::files::ModelArgs;
use mpm::data::corrupt::job::{parse_corruptions, parse_severities};
use mpm::device::DeviceRequest;
use mpm::eval::assets::HUMAN_DATASETS;
use mpm::eval::predict::PredictionJournal;
use mpm::eval::report::{check_output_dir, check_output_file, write_report};
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
    /// A model of `mpm-attack zoo`: checks the checkpoint's normalisation and activation
    /// against its entry, notes a different eval transform, and names the model (as
    /// `mpm-attack --zoo`).
    #[arg(long)]
    zoo: Option<String>,
    /// The model's name in reports, tables and CSV files (default: the `--zoo` name, else the
    /// weights' file stem).
    #[arg(long)]
    name: Option<String>,
    /// Model input size (the eval transform's centre crop; 256/224 of it is the resize).
    #[arg(long, default_value_t = 224)]
    crop: u32,
    /// The eval transform's shorter-side resize filter: bicubic (the paper's and timm's) or
    /// bilinear (torchvision's default `Resize`: RobustBench's Res256Crop224, Bai et al.).
    /// ImageNet-A-Plus's squash stays bilinear and model-vs-human stimuli are not resized.
    #[arg(long, default_value = "bicubic", value_parser = ["bicubic", "bilinear"])]
    interpolation: String,
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
    // -- Sharding and class subsets (issues 19 and 21; docs/robustness.md). --
    /// Evaluate only shard I of N (0-based) of every image set: its I-th contiguous block
    /// (`env`: RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS). Combine with `mpm-eval merge`.
    #[arg(long)]
    shard: Option<String>,
    /// Restrict the logits to these classes (wnid, class folder name or logit index per line)
    /// before the argmax; only images of these classes count.
    #[arg(long)]
    class_subset: Option<PathBuf>,
    /// `<class> <super-category>` per line: correct when the argmax over these classes falls
    /// in the true super-category.
    #[arg(long)]
    super_classes: Option<PathBuf>,
    /// Set by `merge`: the shards' combined timing; the run replays the merged journal.
    #[arg(skip)]
    merged: Option<Value>,
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
    /// Combines the reports of `--shard I/N` runs of one command into the single run's
    /// report (replays the command on the shards' per-image results: no image is read and
    /// no forward pass runs, but the weights and data paths the shards used must exist).
    Merge {
        /// The shard reports, one per shard, in any order.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// The merged report (its journal goes beside it, `<json>.journal`).
        #[arg(long)]
        json: PathBuf,
    },
    /// Several reports side by side as Tables 2, 3, 4 and S4, or as the ablation Tables 5 and 6
    /// (Markdown, CSV, PNG).
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
        /// The table to lay the reports out as: main (Tables 2, 3, 4, S4 by report kind), 5 (the
        /// part-label ablations: mpm-attack and mpm-data part-ap reports) or 6 (MPM's design
        /// ablations: mpm-attack reports). docs/reproduce.md.
        #[arg(long, default_value = "main")]
        table: table::Layout,
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

impl ModelOpts {
    fn bilinear(&self) -> bool {
        self.interpolation == "bilinear"
    }

    /// The files this command writes, checked before the model loads.
    fn check_outputs(&self) -> Result<()> {
        check_output_file("--json", &self.json)?;
        if let Some(j) = &self.journal {
            check_output_file("--journal", j)?;
        }
        Ok(())
    }
}

/// `--zoo NAME`: the checkpoint must be the model the zoo list describes (mpm-attack's rules:
/// another normalisation or activation is an error, another layout or eval transform a note).
fn check_zoo_entry(
    name: &str,
    prep: &mpm::nn::zoo::Preprocessing,
    m: &ModelOpts,
) -> Result<String> {
    let list = mpm::nn::zoo_list::table2()?;
    let e = mpm::nn::zoo_list::check_entry(&list, name, prep, &m.model.act)?;
    // mpm-eval always resizes 256/224 of --crop; only the filter and the crop can differ.
    let (_, crop, interp) = e.eval_transform();
    if e.transform == "Crop288" || (m.crop, m.interpolation.as_str()) != (crop, interp) {
        eprintln!(
            "note: {} is evaluated with {} (mpm-eval: --crop {crop} --interpolation {interp}{}); \
             this run uses --crop {} --interpolation {}",
            e.name,
            e.transform,
            if e.transform == "Crop288" {
                ", but without a resize: mpm-attack --resize 0 does that"
            } else {
                ""
            },
            m.crop,
            m.interpolation
        );
    }
    Ok(e.name.clone())
}

/// Loads the model, opens the journal, runs `f`, writes the report.
fn with_model(
    m: &ModelOpts,
    command: &str,
    fingerprint: Value,
    heads: usize,
    f: impl FnOnce(&mut Runner) -> Result<Value>,
) -> Result<()> {
    // Fail before the model loads, not after the evaluation, when a report cannot be written.
    m.check_outputs()?;
    if m.batch_size == 0 {
        return Err(Error::flag("--batch-size", "must be at least 1"));
    }
    if m.crop < 32 {
        return Err(Error::flag("--crop", "must be at least 32"));
    }
    let (dev, why) = if m.merged.is_some() {
        (mpm::device::Device::Cpu, "merge: no model pass".to_string())
    } else {
        m.device.resolve()?
    };
    eprintln!("device: {why}");
    mpm::device::parse_precision_flag(&m.precision)?;
    // Published checkpoints load as published, with their own normalisation (nn::zoo).
    let loaded = mpm::nn::zoo::load_for_eval(&m.weights, &m.model, &m.norm)?;
    let (spec, store, prep) = (loaded.spec, loaded.store, loaded.preprocessing);
    eprintln!("model: {}", spec.describe());
    eprintln!("model: {}", prep.describe());
    let zoo_name = match &m.zoo {
        Some(z) => Some(check_zoo_entry(z, &prep, m)?),
        None => None,
    };
    let arch = spec.describe();
    let shard = m.shard.as_deref().map(Shard::parse).transpose()?;
    let class_map = ClassMap::from_flags(
        m.class_subset.as_deref(),
        m.super_classes.as_deref(),
        spec.num_classes,
        &[],
    )?;
    let name = m.name.clone().or(zoo_name).unwrap_or_else(|| {
        m.weights
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let weights_bytes = std::fs::metadata(&m.weights).map(|x| x.len()).unwrap_or(0);
    let mut fp = json!({
        "command": command, "run": fingerprint, "weights": m.weights.display().to_string(),
        "weights_bytes": weights_bytes, "model": spec.describe(), "crop": m.crop,
    });
    // Another normalisation is another model: part of the journal key, except ImageNet's (the
    // only one before per-model normalisation, so older journals still resume).
    if !prep.norm.same(&mpm::nn::zoo::InputNorm::IMAGENET) {
        fp["normalisation"] = json!(prep.norm.describe());
    }
    // Likewise the bilinear filter: bicubic journals written before --interpolation resume.
    if m.bilinear() {
        fp["interpolation"] = json!("bilinear");
    }
    if let (Some(cm), Value::Object(o)) = (&class_map, &mut fp) {
        o.insert("class_map".into(), json!(cm.digest));
    }
    // Every shard of one run shares `run_fp`; the shard keys its own journal.
    let run_fp = fp.clone();
    if let (Some(s), Value::Object(o)) = (shard, &mut fp) {
        o.insert("shard".into(), json!(s.label()));
    }
    let jpath = m
        .journal
        .clone()
        .unwrap_or_else(|| with_suffix(&m.json, ".journal"));
    let journal = PredictionJournal::open(&jpath, &fp, heads, !m.no_resume)?;
    let num_classes = spec.num_classes;
    let mut engine;
    let mut replay;
    let model: &mut dyn Classifier = if m.merged.is_some() {
        replay = MergedResults { num_classes };
        &mut replay
    } else {
        engine = EngineClassifier::new(spec, store)
            .with_input_norm(prep.norm)
            .on_device(dev)?;
        &mut engine
    };
    let class_json = class_map.as_ref().map(|c| c.to_json());
    let mut r = Runner {
        model,
        batch_size: m.batch_size,
        journal,
        throughput: Default::default(),
        name,
        shard,
        class_map,
    };
    let mut report = f(&mut r)?;
    eprintln!("total: {}", r.throughput.line());
    if let Value::Object(o) = &mut report {
        o.insert("device".into(), json!(dev.to_string()));
        o.insert("weights".into(), json!(m.weights.display().to_string()));
        o.insert("architecture".into(), json!(arch));
        let mut p = prep.to_json();
        if let Value::Object(po) = &mut p {
            po.insert("interpolation".into(), json!(m.interpolation));
        }
        o.insert("preprocessing".into(), p);
        o.insert("timing".into(), r.throughput.to_json());
        o.insert("journal".into(), json!(jpath.display().to_string()));
        if let Some(c) = class_json {
            o.insert("classes".into(), c);
        }
        if let Some(s) = shard {
            o.insert(
                "shard".into(),
                json!({
                    "index": s.index, "count": s.count, "fingerprint": run_fp,
                    "argv": std::env::args().collect::<Vec<_>>(),
                    "entries": r.journal.entries(),
                    "images_this_run": r.throughput.images, "seconds": r.throughput.seconds,
                    "images_per_s": r.throughput.images_per_s(),
                }),
            );
        }
        if let Some(Value::Object(merged)) = &m.merged {
            o.extend(merged.clone());
        }
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
            let (crop, bilinear) = (m.crop, m.bilinear());
            let num_classes = m.model.num_classes;
            with_model(&m, "clean", fp, 1, |r| {
                let f =
                    ImageFolder::open(&data, list.as_deref(), per_class, num_classes, 256, 224)?;
                let set = Images {
                    root: f.root,
                    classes: f.classes,
                    items: f.items,
                    transform: EvalTransform::standard(crop).with_bilinear(bilinear),
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
                bilinear: m.bilinear(),
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
            let (crop, bilinear) = (m.crop, m.bilinear());
            with_model(&m, "ood", fp, 1, |r| {
                runs::ood(r, ds, &data, crop, bilinear, per_class)
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
            m.check_outputs()?;
            check_output_dir("--out", &out)?;
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
            check_output_file("--json", &json)?;
            let hm = human_metrics::compute(&model_csv, &human_data, list.as_deref())?;
            let table = hm.table();
            println!("{table}");
            write_report(&json, &hm.to_json(), &table)?;
            eprintln!("wrote {}", json.display());
            Ok(())
        }
        Cmd::Merge { reports, json } => merge(&reports, &json),
        Cmd::Table {
            runs,
            names,
            out,
            published,
            table: layout,
        } => {
            if published && layout != table::Layout::Main {
                return Err(Error::flag(
                    "--published",
                    "the published numbers are Table 2's: use it with --table main",
                ));
            }
            let files = table::report_files(&runs)?;
            let mut tables = table::lay_out(table::build(&files, names.as_deref())?, layout)?;
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

// ---- Sharded evaluation: `mpm-eval merge` (issue 19). ----

/// The model stand-in of a merge: every image's answer is in the merged journal, so a pass
/// that is asked for means an image no shard evaluated.
struct MergedResults {
    num_classes: usize,
}

impl Classifier for MergedResults {
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn logits(&mut self, x: &[f32], dims: Dims) -> Result<Vec<f32>> {
        Err(Error::Msg(format!(
            "merge: {} images are in no shard's results (were the shards run on other data, \
             or is a shard report incomplete?)",
            x.len() / dims.len().max(1)
        )))
    }
    fn logits_and_grad(
        &mut self,
        x: &[f32],
        dims: Dims,
        _seed: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        self.logits(x, dims).map(|z| (z, Vec::new()))
    }
}

/// The shard's command line without what differs between shards or that a merge sets.
fn replay_argv(argv: &[String], json: &Path, journal: &Path) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let flag = a.split('=').next().unwrap_or(a);
        let has_value = !a.contains('=');
        match flag {
            "--shard" | "--json" | "--journal" | "--device" => {
                if has_value {
                    it.next();
                }
            }
            "--no-resume" => {}
            _ => out.push(a.clone()),
        }
    }
    out.extend([
        "--json".to_string(),
        json.display().to_string(),
        "--journal".to_string(),
        journal.display().to_string(),
    ]);
    out
}

fn merge(reports: &[PathBuf], out: &Path) -> Result<()> {
    check_output_file("--json", out)?;
    let mut docs = Vec::with_capacity(reports.len());
    for p in reports {
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| Error::format(p, format!("not JSON: {e}")))?;
        docs.push((p.clone(), v.get("shard").cloned().unwrap_or(Value::Null)));
    }
    let order = check_shards(&docs)?;
    let (p0, first) = &docs[order[0]];
    let argv: Vec<String> = first["argv"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if argv.len() < 2 {
        return Err(Error::format(p0, "its shard block has no command line"));
    }
    let jpath = with_suffix(out, ".journal");
    // The merged journal: the shards' images under the unsharded run's fingerprint.
    let mut journal = PredictionJournal::open(&jpath, &first["fingerprint"], 1, false)?;
    let mut per_shard = Vec::new();
    for &k in &order {
        let (p, b) = &docs[k];
        let lines = b["entries"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        journal.append_lines(lines, p)?;
        per_shard.push((
            b["index"].as_u64().unwrap_or(0) as usize,
            b["images_this_run"].as_u64().unwrap_or(0) as usize,
            b["seconds"].as_f64().unwrap_or(0.0),
        ));
    }
    drop(journal);
    let mut cli = Cli::try_parse_from(replay_argv(&argv, out, &jpath))
        .map_err(|e| Error::format(p0, format!("its command line does not parse: {e}")))?;
    let merged = json!({
        "timing": merged_timing(&per_shard),
        "merged_from": order.iter().map(|&k| docs[k].0.display().to_string()).collect::<Vec<_>>(),
    });
    match &mut cli.cmd {
        Cmd::Clean { m, .. }
        | Cmd::Corruptions { m, .. }
        | Cmd::Ood { m, .. }
        | Cmd::Human { m, .. } => {
            m.merged = Some(merged);
        }
        _ => {
            return Err(Error::format(
                p0,
                "its command evaluates no images: nothing to merge",
            ))
        }
    }
    run(cli)
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
