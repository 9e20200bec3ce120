//! `mpm-attack`: AutoAttack robustness evaluation (DESIGN.md contract B).
//!
//! ```text
//! mpm-attack --weights W.safetensors <model flags> --data X.safetensors --norm Linf --eps 0.01568627
//!   [--version standard] [--attacks apgd-ce,apgd-t,fab-t,square] [--seed S] [--batch-size B]
//!   --report R.json [--adv-out A.safetensors] [--device auto]
//! mpm-attack ... --data IMAGENET/val [--list balanced_10k.txt | --per-class K] --threats paper --report R.json
//! mpm-attack zoo [NAME]        # the known Table 2 models (docs/zoo.md)
//! ```
//!
//! Checkpoints of the published AT ResNet-50s load as published (`nn::zoo`: robustness
//! library, RobustBench, timm/ARES, Bai et al. 2021, the paper's MPM); the layout and the input
//! normalisation are detected, printed and recorded in the report.

use clap::Parser;
use mpm::attack::autoattack::{AttackKind, AutoAttackConfig, SampleResult};
use mpm::attack::imagefolder::{EvalSet, ImageFolder, TensorSet};
use mpm::attack::report::{build_report, paper_table, wilson95, write_json_atomic};
use mpm::attack::run::{evaluate, Timing};
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
        return Ok(vec![
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
        ]);
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
    for (i, r) in results.iter().enumerate() {
        match &r.adv {
            Some(a) => data.extend_from_slice(a),
            None => data.extend(set.image(i)?),
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
        eprintln!("precision: {precision:?}");
    }
    if cli.batch_size == 0 {
        return Err(Error::flag("--batch-size", "must be at least 1"));
    }
    // Fail before the evaluation, not after it, when the report cannot be written there.
    if cli.report.is_dir() {
        return Err(Error::flag(
            "--report",
            format!("{} is a directory; give a file path", cli.report.display()),
        ));
    }
    if let Some(parent) = cli.report.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(Error::flag(
                "--report",
                format!("{}: no such directory", parent.display()),
            ));
        }
    }
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
    let set = Limited {
        inner: full.as_ref(),
        n: cli.limit.unwrap_or(usize::MAX),
    };
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
        &set,
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
        let (results, timing) = evaluate(
            &mut model,
            &set,
            &cfg,
            cli.batch_size,
            &journal,
            &fingerprint,
            !cli.no_resume,
            &t.name,
        )?;
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
        let report = build_report(&results, &attacks, &set.class_names(), extra);
        if let Some(adv) = &cli.adv_out {
            let p = if t.slug.is_empty() {
                adv.clone()
            } else {
                with_suffix(adv, &format!(".{}", t.slug))
            };
            write_adv(&p, &set, &results)?;
            eprintln!("wrote adversarial examples to {}", p.display());
        }
        print_summary(&t.name, &report);
        outputs.push((t, report));
    }
    let out = if threats.len() == 1 {
        outputs.pop().map(|(_, r)| r).unwrap_or(Value::Null)
    } else {
        let n = set.len();
        let clean_k = outputs
            .first()
            .and_then(|(_, r)| r["clean_accuracy"].as_f64())
            .map(|p| (p * n as f64).round() as usize)
            .unwrap_or(0);
        let mut rows = vec![("clean".to_string(), clean_k, n)];
        for (t, r) in &outputs {
            let k = (r["robust_accuracy"].as_f64().unwrap_or(0.0) * n as f64).round() as usize;
            rows.push((t.name.clone(), k, n));
        }
        let table = paper_table(&rows);
        println!("{table}");
        let mut per = serde_json::Map::new();
        for (t, r) in outputs {
            per.insert(t.slug.clone(), r);
        }
        let (lo, hi) = wilson95(clean_k, n);
        let mut out = json!({
            "threats": per,
            "clean_accuracy": clean_k as f64 / n.max(1) as f64,
            "ci95_clean": [lo, hi],
            "n": n,
            "table": table,
            "model_spec": spec.describe(),
            "preprocessing": preprocessing,
        });
        // Only a zoo name names the row: without it `mpm-eval table` keeps naming a paper
        // report by its file, as before (two models of one architecture stay two rows).
        if let (Some(z), Value::Object(m)) = (&cli.zoo, &mut out) {
            m.insert("model".into(), json!(z));
        }
        out
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
    let e = zoo_list::find(&list, name)?;
    if !e.identified {
        return Err(Error::flag(
            "--zoo",
            format!("'{}' ({}) has no identified checkpoint", e.name, e.row),
        ));
    }
    if let Some(n) = e.norm() {
        if !n.same(&prep.norm) {
            return Err(Error::flag(
                "--zoo",
                format!(
                    "{} was trained with {}, but this run normalises with {} ({})",
                    e.name,
                    n.describe(),
                    prep.norm.describe(),
                    prep.norm_source
                ),
            ));
        }
    }
    if !e.act.is_empty() && e.act != cli.model.act {
        return Err(Error::flag(
            "--act",
            format!(
                "{} uses {} activations; got --act {}",
                e.name, e.act, cli.model.act
            ),
        ));
    }
    if e.layout != prep.layout.name() {
        eprintln!(
            "note: {} is listed in the {} layout; this file is {}",
            e.name,
            e.layout,
            prep.layout.name()
        );
    }
    if cli.data.is_dir() {
        let wanted = match e.transform.as_str() {
            "Crop288" => (0, 288, "bicubic"),
            "Res256Crop224" => (256, 224, "bilinear"),
            _ => (256, 224, "bicubic"),
        };
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
    }
}
