//! `mpm-attack`: AutoAttack robustness evaluation (DESIGN.md contract B).
//!
//! ```text
//! mpm-attack --weights W.safetensors <model flags> --data X.safetensors --norm Linf --eps 0.01568627
//!   [--version standard] [--attacks apgd-ce,apgd-t,fab-t,square] [--seed S] [--batch-size B]
//!   --report R.json [--adv-out A.safetensors] [--device auto]
//! mpm-attack ... --data IMAGENET/val [--list balanced_10k.txt | --per-class K] --threats paper --report R.json
//! mpm-attack zoo [NAME]        # the known Table 2 models (docs/zoo.md)
//! mpm-attack ... --shard I/N --report shard_I.json        (one block of the samples; docs/evaluation.md)
//! mpm-attack merge shard_0.json shard_1.json ... --report R.json
//! mpm-attack ... --class-subset FILE | --super-classes FILE (the attacked model is the masked one)
//! ```
//!
//! Checkpoints of the published AT ResNet-50s load as published (`nn::zoo`: robustness
//! library, RobustBench, timm/ARES, Bai et al. 2021, the paper's MPM); the layout and the input
//! normalisation are detected, printed and recorded in the report.

use clap::Parser;
use mpm::attack::autoattack::{AttackKind, AutoAttackConfig, SampleResult};
use mpm::attack::imagefolder::{EvalSet, ImageFolder, TensorSet};
use mpm::attack::report::{
    build_report, paper_table, parse_sample, sample_json, wilson95, write_json_atomic,
    COMPUTED_KEYS,
};
use mpm::attack::run::{evaluate, Timing};
use mpm::attack::shard::{check_shards, merged_timing, Shard};
use mpm::attack::subset::{ClassMap, GroupedClassifier, MappedSet};
use mpm::attack::{Classifier, EngineClassifier, Norm};
use mpm::audit::files::ModelArgs;
use mpm::device::DeviceRequest;
use mpm::io::{self, HostTensor, NamedTensors};
use mpm::nn::zoo::{self, NormArgs};
use mpm::nn::zoo_list;
use mpm::{Error, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
// No clap `--version` flag: contract B's `--version` names the AutoAttack version.
#[command(
    name = "mpm-attack",
    disable_version_flag = true,
    about = "AutoAttack (APGD-CE, APGD-T, FAB-T, Square) robustness evaluation, contract B"
)]
struct Cli {
    /// Model weights (safetensors or PyTorch .pth/.pth.tar; EMA weights preferred when present).
    #[arg(long)]
    weights: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input_norm: NormArgs,
    /// A model of `mpm-attack zoo`: checks the checkpoint's normalisation, activation and the
    /// eval transform against its entry, and names the report's rows after it.
    #[arg(long)]
    zoo: Option<String>,
    /// Data: a safetensors file (`input` [N,3,H,W] in [0,1], `target` [N]) or an ImageFolder
    /// directory (`<class>/<image>`, classes = sorted sub-directories).
    #[arg(long)]
    data: PathBuf,
    /// ImageFolder: evaluate only the images this list names (`<class>/<file> [label]`).
    #[arg(long)]
    list: Option<PathBuf>,
    /// ImageFolder: the first K images (by name) of each class.
    #[arg(long)]
    per_class: Option<usize>,
    /// Evaluate only the first N samples.
    #[arg(long)]
    limit: Option<usize>,
    /// ImageFolder eval transform: shorter side resized to this (bicubic; 0 = no resize, as
    /// RobustBench's Crop288) ...
    #[arg(long, default_value_t = 256)]
    resize: u32,
    /// ... then a centre crop of this size.
    #[arg(long, default_value_t = 224)]
    crop: u32,
    /// ImageFolder resize filter: bicubic (the paper's and timm's eval transform) or bilinear
    /// (torchvision's default `Resize`: RobustBench's Res256Crop224, Bai et al.).
    #[arg(long, default_value = "bicubic", value_parser = ["bicubic", "bilinear"])]
    interpolation: String,
    /// Threat model norm.
    #[arg(long, value_parser = ["Linf", "L2", "L1", "linf", "l2", "l1"])]
    norm: Option<String>,
    /// Radius, a decimal number (e.g. 0.01568627 for 4/255).
    #[arg(long)]
    eps: Option<f32>,
    /// `paper`: l-inf 4/255, l-inf 8/255, l1 75, l2 2, printed as the paper's Table 2.
    #[arg(long, value_parser = ["paper"])]
    threats: Option<String>,
    /// AutoAttack version: `standard` (the reference's list and budgets) or `custom`
    /// (set by --attacks / --n-iter / --square-queries).
    #[arg(long, default_value = "standard", value_parser = ["standard", "custom"])]
    version: String,
    /// Attacks to run, in order, each on the points still robust.
    #[arg(long, default_value = "apgd-ce,apgd-t,fab-t,square")]
    attacks: String,
    /// APGD / FAB iterations (reference: 100; lower only for smoke tests: the version
    /// becomes `custom`).
    #[arg(long, default_value_t = 100)]
    n_iter: usize,
    /// Square's queries (reference: 5000).
    #[arg(long, default_value_t = 5000)]
    square_queries: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Most images in one model pass. APGD-T and FAB-T run their targets (and restarts) side
    /// by side while they fit, so a GPU makes far fewer, larger passes; results are the same
    /// as one target at a time. Default: 4x --batch-size on a GPU; on the CPU one target at a
    /// time (there side-by-side runs only add work). Lower it if the GPU runs out of memory.
    #[arg(long)]
    pass_batch: Option<usize>,
    /// Report (JSON, contract B).
    #[arg(long)]
    report: PathBuf,
    /// Adversarial examples (`adv` [N,3,H,W]; the clean image where none was found).
    #[arg(long)]
    adv_out: Option<PathBuf>,
    /// Per-sample journal (default: `<report>.journal`); a rerun resumes from it.
    #[arg(long)]
    journal: Option<PathBuf>,
    /// Ignore an existing journal and start afresh (alias: --restart).
    #[arg(long, alias = "restart")]
    no_resume: bool,
    /// auto | cpu | cuda[:N]
    #[arg(long, default_value = "auto")]
    device: DeviceRequest,
    /// GPU arithmetic: f32 (default: the evaluation's gradients as exact as the CPU's), tf32
    /// (f32 tensors, TF32 tensor cores in cuBLAS/cuDNN: PyTorch's default for convolutions) or
    /// bf16 (mixed precision, fastest; robust accuracy may differ slightly). Ignored on the CPU.
    #[arg(long, default_value = "f32")]
    precision: String,
    // -- Sharding and class subsets (issues 19 and 21; docs/evaluation.md). --
    /// Evaluate only shard I of N (0-based): the I-th of N contiguous blocks of the samples
    /// (`env`: RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS). Combine the shard reports with
    /// `mpm-attack merge`.
    #[arg(long)]
    shard: Option<String>,
    /// Restrict the logits to these classes (one wnid, class folder name or logit index per
    /// line) before the argmax and inside every attack; only samples of these classes count.
    #[arg(long)]
    class_subset: Option<PathBuf>,
    /// `<class> <super-category>` per line: correct when the argmax over these classes falls
    /// in the true super-category; the attacks use the matching max-pooled logits.
    #[arg(long)]
    super_classes: Option<PathBuf>,
}

struct Threat {
    name: String,
    slug: String,
    norm: Norm,
    eps: f32,
}

fn threats(cli: &Cli) -> Result<Vec<Threat>> {
    if cli.threats.is_some() {
        if cli.norm.is_some() || cli.eps.is_some() {
            return Err(Error::flag(
                "--threats",
                "paper sets the norms and radii: drop --norm/--eps",
            ));
        }
        return Ok(paper_threats());
    }
    let norm: Norm = cli
        .norm
        .as_deref()
        .ok_or_else(|| Error::flag("--norm", "required (or --threats paper)"))?
        .parse()
        .map_err(|e: String| Error::flag("--norm", e))?;
    let eps = cli
        .eps
        .ok_or_else(|| Error::flag("--eps", "required (or --threats paper)"))?;
    Ok(vec![Threat {
        name: format!("{norm} {eps}"),
        slug: String::new(),
        norm,
        eps,
    }])
}

/// The paper's four threats (Table 2), in its column order.
fn paper_threats() -> Vec<Threat> {
    vec![
        Threat {
            name: "Linf 4/255".into(),
            slug: "linf4".into(),
            norm: Norm::Linf,
            eps: 4.0 / 255.0,
        },
        Threat {
            name: "Linf 8/255".into(),
            slug: "linf8".into(),
            norm: Norm::Linf,
            eps: 8.0 / 255.0,
        },
        Threat {
            name: "L1 75".into(),
            slug: "l1_75".into(),
            norm: Norm::L1,
            eps: 75.0,
        },
        Threat {
            name: "L2 2".into(),
            slug: "l2_2".into(),
            norm: Norm::L2,
            eps: 2.0,
        },
    ]
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Restricts a set to its first `n` samples.
struct Limited<'a> {
    inner: &'a dyn EvalSet,
    n: usize,
}

impl EvalSet for Limited<'_> {
    fn len(&self) -> usize {
        self.n.min(self.inner.len())
    }
    fn dims(&self) -> mpm::attack::Dims {
        self.inner.dims()
    }
    fn label(&self, i: usize) -> usize {
        self.inner.label(i)
    }
    fn image(&self, i: usize) -> Result<Vec<f32>> {
        self.inner.image(i)
    }
    fn class_names(&self) -> Vec<String> {
        self.inner.class_names()
    }
    fn describe(&self) -> String {
        format!("{} (first {})", self.inner.describe(), self.len())
    }
    fn item_key(&self, i: usize, h: &mut io::ContentHasher) -> Result<()> {
        self.inner.item_key(i, h)
    }
}

fn write_adv(path: &Path, set: &dyn EvalSet, results: &[SampleResult]) -> Result<()> {
    let dims = set.dims();
    let mut data = Vec::with_capacity(results.len() * dims.len());
    for r in results {
        match &r.adv {
            Some(a) => data.extend_from_slice(a),
            // A shard's results start at its block: the index is the set's.
            None => data.extend(set.image(r.index as usize)?),
        }
    }
    let mut t = NamedTensors::new();
    t.insert(
        "adv".into(),
        HostTensor::f32(vec![results.len(), dims.c, dims.h, dims.w], data),
    );
    io::save_safetensors(path, &t, &Default::default())
}

fn run(cli: Cli) -> Result<()> {
    let (dev, why) = cli.device.resolve()?;
    eprintln!("device: {why}");
    let precision = mpm::device::parse_precision_flag(&cli.precision)?;
    if dev != mpm::device::Device::Cpu {
        eprintln!("precision: {precision}");
    }
    if cli.batch_size == 0 {
        return Err(Error::flag("--batch-size", "must be at least 1"));
    }
    // Fail before the evaluation, not after it, when the report cannot be written there.
    mpm::eval::report::check_output_file("--report", &cli.report)?;
    let pass_batch = match cli.pass_batch {
        Some(0) => return Err(Error::flag("--pass-batch", "must be at least 1")),
        Some(p) => p,
        None if dev == mpm::device::Device::Cpu => 0,
        None => 4 * cli.batch_size,
    };
    if dev != mpm::device::Device::Cpu {
        eprintln!("pass batch: {pass_batch} images (--pass-batch)");
    }
    let attacks = AttackKind::parse_list(&cli.attacks)?;
    if cli.version == "standard" && attacks != AttackKind::STANDARD {
        return Err(Error::flag(
            "--attacks",
            "differs from the standard list: pass --version custom to run another list",
        ));
    }
    if cli.n_iter == 0 {
        return Err(Error::flag("--n-iter", "must be at least 1"));
    }
    let threats = threats(&cli)?;
    let loaded = zoo::load_for_eval(&cli.weights, &cli.model, &cli.input_norm)?;
    let (spec, store, prep) = (loaded.spec, loaded.store, loaded.preprocessing);
    eprintln!("model: {}", spec.describe());
    eprintln!("model: {}", prep.describe());
    let bilinear = cli.interpolation == "bilinear";
    let transform = zoo::transform_name(cli.resize, cli.crop, bilinear);
    if let Some(name) = &cli.zoo {
        check_zoo_entry(name, &prep, &cli)?;
    }
    // The report's row name: the zoo name when given, else the model's description.
    let row_name = cli.zoo.clone().unwrap_or_else(|| spec.describe());
    let full: Box<dyn EvalSet> = if cli.data.is_dir() {
        Box::new(
            ImageFolder::open(
                &cli.data,
                cli.list.as_deref(),
                cli.per_class,
                spec.num_classes,
                cli.resize,
                cli.crop,
            )?
            .with_bilinear(cli.interpolation == "bilinear"),
        )
    } else {
        if cli.list.is_some() || cli.per_class.is_some() {
            return Err(Error::flag(
                "--list/--per-class",
                "only apply to an ImageFolder directory",
            ));
        }
        Box::new(TensorSet::load(&cli.data, spec.num_classes)?)
    };
    let limited = Limited {
        inner: full.as_ref(),
        n: cli.limit.unwrap_or(usize::MAX),
    };
    // Class subsets: the samples of the listed classes, labelled by group (issue 21).
    let class_map = ClassMap::from_flags(
        cli.class_subset.as_deref(),
        cli.super_classes.as_deref(),
        spec.num_classes,
        &limited.class_names(),
    )?;
    let mapped = match &class_map {
        Some(m) => Some(MappedSet::new(&limited, m)?),
        None => None,
    };
    let set: &dyn EvalSet = match &mapped {
        Some(m) => m,
        None => &limited,
    };
    if let Some(m) = &class_map {
        eprintln!(
            "classes: {} {} ({} groups over {} logits)",
            m.flag(),
            m.source,
            m.len(),
            spec.num_classes
        );
    }
    let shard = cli.shard.as_deref().map(Shard::parse).transpose()?;
    let range = mpm::attack::shard::indices(shard, set.len());
    if let Some(s) = shard {
        eprintln!(
            "shard {}: samples {}..{} of {}",
            s.label(),
            range.start,
            range.end,
            set.len()
        );
    }
    eprintln!("data: {}", set.describe());
    let dims = set.dims();
    for t in &threats {
        t.norm
            .validate_eps(t.eps, dims.len())
            .map_err(|e| Error::flag("--eps", format!("{} ({}): {e}", t.name, t.norm)))?;
    }
    // Keyed by content: another model of the same size, a replaced or reordered data file,
    // or another transform or precision must not resume this journal.
    let content = mpm::attack::run::content_key(
        &cli.weights,
        set,
        &spec.describe(),
        // The normalisation is part of the key only when it is not ImageNet's, so journals
        // written before per-model normalisation existed still resume.
        &format!(
            "resize {} crop {}{}{}",
            cli.resize,
            cli.crop,
            if bilinear { " bilinear" } else { "" },
            if prep.norm.same(&zoo::InputNorm::IMAGENET) {
                String::new()
            } else {
                format!(" {}", prep.norm.describe())
            }
        ),
        &cli.precision,
    )?;
    let mut model = EngineClassifier::new(spec, store)
        .with_input_norm(prep.norm)
        .on_device(dev)?;
    let mut preprocessing = prep.to_json();
    if let Value::Object(m) = &mut preprocessing {
        let t = if cli.data.is_dir() {
            transform.clone()
        } else {
            "none (safetensors images as given)".to_string()
        };
        m.insert("transform".into(), json!(t));
    }
    let mut outputs = Vec::new();
    for t in &threats {
        let mut cfg = AutoAttackConfig::standard(t.norm, t.eps, cli.seed);
        cfg.attacks = attacks.clone();
        cfg.n_iter = cli.n_iter;
        cfg.square_queries = cli.square_queries;
        cfg.pass_batch = pass_batch;
        if cli.version == "standard" && cfg.version() != "standard" {
            return Err(Error::flag(
                "--version",
                "standard fixes --n-iter 100 and --square-queries 5000: pass --version custom",
            ));
        }
        let mut fingerprint = json!({
            "norm": t.norm.to_string(), "eps": t.eps, "seed": cli.seed,
            "attacks": attacks.iter().map(|a| a.name()).collect::<Vec<_>>(),
            "n_iter": cfg.n_iter, "square_queries": cfg.square_queries,
            "n": set.len(), "dims": [dims.c, dims.h, dims.w],
        });
        if let Value::Object(m) = &mut fingerprint {
            m.extend(content.clone());
            // Only added when set: existing journals of plain runs stay valid.
            if let Some(cm) = &class_map {
                m.insert("class_map".into(), json!(cm.digest));
            }
        }
        // What every shard of this run shares; the shard itself keys the journal too.
        let run_fingerprint = fingerprint.clone();
        if let (Some(s), Value::Object(m)) = (shard, &mut fingerprint) {
            m.insert("shard".into(), json!(s.label()));
        }
        let base = cli
            .journal
            .clone()
            .unwrap_or_else(|| with_suffix(&cli.report, ".journal"));
        let journal = if t.slug.is_empty() {
            base
        } else {
            with_suffix(&base, &format!(".{}", t.slug))
        };
        let (results, timing) = {
            // With a class map the attacks see the regrouped logits only.
            let mut grouped;
            let attacked: &mut dyn Classifier = match &class_map {
                Some(map) => {
                    grouped = GroupedClassifier {
                        inner: &mut model,
                        map,
                    };
                    &mut grouped
                }
                None => &mut model,
            };
            evaluate(
                attacked,
                set,
                &cfg,
                cli.batch_size,
                range.clone(),
                &journal,
                &fingerprint,
                !cli.no_resume,
                &t.name,
            )?
        };
        let (fw, bw) = model.passes();
        print_timing(&t.name, &timing);
        let extra = json!({
            "norm": t.norm.to_string(), "eps": t.eps, "version": cfg.version(), "seed": cli.seed,
            "n_iter": cfg.n_iter, "square_queries": cfg.square_queries,
            "model": row_name, "model_spec": spec.describe(),
            "preprocessing": preprocessing,
            "weights": cli.weights.display().to_string(),
            "data": set.describe(),
            "timing": {"attacked_this_run": timing.attacked, "seconds": timing.seconds,
                       "images_per_s": timing.images_per_s(), "forward_images": fw, "backward_images": bw,
                       "model_seconds": model.model_seconds(),
                       "per_attack": timing.per_attack.iter().map(|p| json!({
                           "attack": p.kind.name(), "images": p.images, "seconds": p.seconds,
                           "model_seconds": p.model_seconds,
                       })).collect::<Vec<_>>()},
        });
        let mut report = build_report(&results, &attacks, &set.class_names(), extra);
        if let Value::Object(o) = &mut report {
            if let Some(cm) = &class_map {
                o.insert("classes".into(), cm.to_json());
            }
            if let Some(s) = shard {
                o.insert(
                    "shard".into(),
                    shard_block(s, &range, set, &run_fingerprint, &results, &timing),
                );
            }
        }
        if let Some(adv) = &cli.adv_out {
            let p = if t.slug.is_empty() {
                adv.clone()
            } else {
                with_suffix(adv, &format!(".{}", t.slug))
            };
            write_adv(&p, set, &results)?;
            eprintln!("wrote adversarial examples to {}", p.display());
        }
        print_summary(&t.name, &report);
        outputs.push((t, report));
    }
    let out = if threats.len() == 1 {
        outputs.pop().map(|(_, r)| r).unwrap_or(Value::Null)
    } else {
        let outputs = outputs
            .into_iter()
            .map(|(t, r)| (t.name.clone(), t.slug.clone(), r))
            .collect();
        let mut out = paper_summary(outputs, range.len());
        if let Value::Object(m) = &mut out {
            m.insert("model_spec".into(), json!(spec.describe()));
            m.insert("preprocessing".into(), preprocessing.clone());
            // Only a zoo name names the row: without it `mpm-eval table` keeps naming a paper
            // report by its file, as before (two models of one architecture stay two rows).
            if let Some(z) = &cli.zoo {
                m.insert("model".into(), json!(z));
            }
        }
        out
    };
    write_json_atomic(&cli.report, &out)?;
    eprintln!("wrote {}", cli.report.display());
    Ok(())
}

/// The `--threats paper` report: each threat's report under its slug, clean accuracy and
/// the paper's table. `outputs`: (threat name, slug, report) in the table's column order.
fn paper_summary(outputs: Vec<(String, String, Value)>, n: usize) -> Value {
    let clean_k = outputs
        .first()
        .and_then(|(_, _, r)| r["clean_accuracy"].as_f64())
        .map(|p| (p * n as f64).round() as usize)
        .unwrap_or(0);
    let mut rows = vec![("clean".to_string(), clean_k, n)];
    for (name, _, r) in &outputs {
        let k = (r["robust_accuracy"].as_f64().unwrap_or(0.0) * n as f64).round() as usize;
        rows.push((name.clone(), k, n));
    }
    let table = paper_table(&rows);
    println!("{table}");
    let mut per = serde_json::Map::new();
    for (_, slug, r) in outputs {
        per.insert(slug, r);
    }
    let (lo, hi) = wilson95(clean_k, n);
    json!({
        "threats": per,
        "clean_accuracy": clean_k as f64 / n.max(1) as f64,
        "ci95_clean": [lo, hi],
        "n": n,
        "table": table,
    })
}

// ---- Sharded evaluation: the shard block and `mpm-attack merge` (issue 19). ----

/// A shard report's `shard` block: what `merge` checks and combines.
fn shard_block(
    s: Shard,
    range: &std::ops::Range<usize>,
    set: &dyn EvalSet,
    run_fingerprint: &Value,
    results: &[SampleResult],
    timing: &Timing,
) -> Value {
    json!({
        "index": s.index, "count": s.count, "range": [range.start, range.end],
        "n_total": set.len(), "fingerprint": run_fingerprint,
        "class_names": set.class_names(),
        "samples": results.iter().map(|r| sample_json(r, None)).collect::<Vec<_>>(),
        "attacked_this_run": timing.attacked, "seconds": timing.seconds,
        "images_per_s": timing.images_per_s(),
    })
}

#[derive(Parser)]
#[command(
    name = "mpm-attack merge",
    about = "Combines the reports of `mpm-attack --shard I/N` runs into the single run's report"
)]
struct MergeCli {
    /// The shard reports, one per shard, in any order.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// The merged report (contract B, plus each shard's throughput under `timing`).
    #[arg(long)]
    report: PathBuf,
}

fn read_report(p: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(p, format!("not JSON: {e}")))
}

/// Merges one threat's shard reports (`docs`: path and report).
fn merge_threat(docs: &[(PathBuf, Value)]) -> Result<Value> {
    let blocks: Vec<(PathBuf, Value)> = docs
        .iter()
        .map(|(p, r)| (p.clone(), r.get("shard").cloned().unwrap_or(Value::Null)))
        .collect();
    let order = check_shards(&blocks)?;
    let (p0, first) = &docs[order[0]];
    let names: Vec<&str> = first["attacks"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let attacks = AttackKind::parse_list(&names.join(","))
        .map_err(|e| Error::format(p0, format!("its attack list: {e}")))?;
    let class_names: Vec<String> = first["shard"]["class_names"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut results = Vec::new();
    let mut per_shard = Vec::new();
    let mut next = 0usize;
    for &k in &order {
        let (p, r) = &docs[k];
        let b = &r["shard"];
        let range = (
            b["range"][0].as_u64().unwrap_or(u64::MAX) as usize,
            b["range"][1].as_u64().unwrap_or(0) as usize,
        );
        let samples = b["samples"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if range.0 != next || range.1 < range.0 || samples.len() != range.1 - range.0 {
            return Err(Error::format(
                p,
                format!(
                    "shard {} should hold samples from {next} on; it holds {} for the range {} \
                     (an interrupted or edited report?)",
                    b["index"],
                    samples.len(),
                    b["range"]
                ),
            ));
        }
        for (j, v) in samples.iter().enumerate() {
            let s = parse_sample(v, &attacks)
                .filter(|s| s.index as usize == range.0 + j)
                .ok_or_else(|| {
                    Error::format(
                        p,
                        format!("sample entry {j} of its shard block is not valid"),
                    )
                })?;
            results.push(s);
        }
        next = range.1;
        per_shard.push((
            b["index"].as_u64().unwrap_or(0) as usize,
            samples.len(),
            b["seconds"].as_f64().unwrap_or(0.0),
        ));
    }
    let total = first["shard"]["n_total"].as_u64().unwrap_or(0) as usize;
    if next != total {
        return Err(Error::format(
            p0,
            format!("the shards hold {next} samples, the run has {total}"),
        ));
    }
    let mut extra = first.as_object().cloned().unwrap_or_default();
    for k in COMPUTED_KEYS.iter().chain(&["shard", "timing"]) {
        extra.remove(*k);
    }
    extra.insert("timing".into(), merged_timing(&per_shard));
    extra.insert(
        "merged_from".into(),
        json!(order
            .iter()
            .map(|&k| docs[k].0.display().to_string())
            .collect::<Vec<_>>()),
    );
    let report = build_report(&results, &attacks, &class_names, Value::Object(extra));
    Ok(report)
}

fn merge(cli: MergeCli) -> Result<()> {
    let docs = cli
        .reports
        .iter()
        .map(|p| -> Result<(PathBuf, Value)> { Ok((p.clone(), read_report(p)?)) })
        .collect::<Result<Vec<_>>>()?;
    let multi = docs[0].1.get("threats").is_some();
    if let Some((p, _)) = docs
        .iter()
        .find(|(_, r)| r.get("threats").is_some() != multi)
    {
        return Err(Error::format(
            p,
            "mixes a --threats paper report with single-threat ones: shards of another run",
        ));
    }
    let out = if !multi {
        let r = merge_threat(&docs)?;
        print_summary("merged", &r);
        r
    } else {
        let mut outputs = Vec::new();
        for t in paper_threats() {
            let part: Vec<(PathBuf, Value)> = docs
                .iter()
                .map(|(p, r)| (p.clone(), r["threats"][&t.slug].clone()))
                .collect();
            if part.iter().all(|(_, r)| r.is_null()) {
                continue;
            }
            let r = merge_threat(&part)?;
            print_summary(&t.name, &r);
            outputs.push((t.name.clone(), t.slug.clone(), r));
        }
        let n = outputs.first().and_then(|o| o.2["n"].as_u64()).unwrap_or(0) as usize;
        paper_summary(outputs, n)
    };
    write_json_atomic(&cli.report, &out)?;
    eprintln!("wrote {}", cli.report.display());
    Ok(())
}

/// `--zoo NAME`: the checkpoint and flags must be the model the zoo list describes. The
/// normalisation and activation are checked (a mismatch is a different model, not a detail);
/// a different layout or transform is reported (the same weights ship in several layouts).
fn check_zoo_entry(name: &str, prep: &zoo::Preprocessing, cli: &Cli) -> Result<()> {
    let list = zoo_list::table2()?;
    let e = zoo_list::check_entry(&list, name, prep, &cli.model.act)?;
    if cli.data.is_dir() {
        let wanted = e.eval_transform();
        let given = (cli.resize, cli.crop, cli.interpolation.as_str());
        if given != wanted && !(wanted.0 == 0 && given.0 == 0 && given.1 == wanted.1) {
            eprintln!(
                "note: {} is evaluated with {} (--resize {} --crop {} --interpolation {}); this \
                 run uses --resize {} --crop {} --interpolation {}",
                e.name, e.transform, wanted.0, wanted.1, wanted.2, given.0, given.1, given.2
            );
        }
    }
    Ok(())
}

/// `mpm-attack zoo [NAME]`: the known Table 2 models.
fn zoo_command(args: &[String]) -> Result<()> {
    let list = zoo_list::table2()?;
    match args {
        [] => print!("{}", zoo_list::listing(&list)),
        [name] => print!(
            "{}",
            zoo_list::listing(std::slice::from_ref(zoo_list::find(&list, name)?))
        ),
        _ => {
            return Err(Error::flag(
                "zoo",
                "usage: mpm-attack zoo [NAME] (the list is assets/zoo/table2.toml)",
            ))
        }
    }
    Ok(())
}

/// One line per run: where the time went, per attack, and how much of it was the model.
fn print_timing(name: &str, t: &Timing) {
    if t.attacked == 0 {
        return;
    }
    let mut s = format!(
        "{name}: {} images in {:.1} s ({:.2} images/s)",
        t.attacked,
        t.seconds,
        t.images_per_s()
    );
    for p in &t.per_attack {
        s.push_str(&format!(
            " | {} {:.1} s on {} images, {:.0}% in the model",
            p.kind.name(),
            p.seconds,
            p.images,
            100.0 * p.model_seconds / p.seconds.max(1e-12)
        ));
    }
    eprintln!("{s}");
}

fn print_summary(name: &str, r: &Value) {
    let pct = |v: &Value| 100.0 * v.as_f64().unwrap_or(0.0);
    let mut s = format!(
        "{name}: n = {}, clean {:.2}%, robust {:.2}%",
        r["n"],
        pct(&r["clean_accuracy"]),
        pct(&r["robust_accuracy"])
    );
    if let Some(a) = r["attacks"].as_array() {
        for name in a.iter().filter_map(|v| v.as_str()) {
            s.push_str(&format!(
                " | after {name} {:.2}%",
                pct(&r["per_attack"][name])
            ));
        }
    }
    let rej = r["rejected_claims"].as_u64().unwrap_or(0);
    if rej > 0 {
        s.push_str(&format!(
            " | {rej} claimed examples failed verification and were not counted"
        ));
    }
    eprintln!("{s}");
}

fn main() -> ExitCode {
    // `zoo` is a listing, not an evaluation: handled before the contract-B flags are parsed.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("zoo") {
        return match zoo_command(&argv[2..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    mpm::attack::run::join_global_pool();
    // `mpm-attack merge ...` (sharded evaluation); everything else is the attack itself.
    if std::env::args_os().nth(1).is_some_and(|a| a == "merge") {
        let cli = MergeCli::parse_from(std::env::args_os().skip(1));
        return match merge(cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
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
        super::MergeCli::command().debug_assert();
    }
}
