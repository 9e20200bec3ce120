//! `mpm-audit`: check that the engine computes what PyTorch computes.
//!
//! - `parity`: contract A of DESIGN.md: W + X safetensors in, Y safetensors out.
//! - `check`: runs `parity` on a case directory (`weights.safetensors`, `input.safetensors`,
//!   `expected.safetensors`, `case.json` with the flags) and prints each tensor's error
//!   against the reference with pass/fail at contract A's tolerances.

use clap::{Parser, Subcommand};
use mpm::audit::files::{self, LossArgs, ModelArgs};
use mpm::audit::parity;
use mpm::device::DeviceRequest;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mpm-audit",
    version,
    about = "Parity and gradient audits of the MPM engine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Eval- and train-mode outputs and gradients of a model, in PyTorch names (contract A).
    Parity {
        /// Model weights (safetensors or .pth), PyTorch names and layouts.
        #[arg(long)]
        weights: PathBuf,
        /// Inputs: `input` [N,3,H,W], `target` [N], `seg_target.{i}`, `seg_weight`.
        #[arg(long)]
        input: PathBuf,
        /// Output safetensors.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        loss: LossArgs,
        /// auto | cpu | cuda[:N]
        #[arg(long, default_value = "auto")]
        device: DeviceRequest,
    },
    /// Runs `parity` on a reference case directory and compares with its expected outputs.
    Check {
        /// Case directories (each with weights/input/expected safetensors and case.json).
        #[arg(required = true)]
        cases: Vec<PathBuf>,
        /// Print every tensor, not only the worst per group and the failures.
        #[arg(long)]
        verbose: bool,
    },
    /// Input gradient (the attack path) vs central finite differences along random directions.
    Grad {
        #[command(flatten)]
        common: AuditData,
        /// Random directions per sample.
        #[arg(long, default_value_t = 8)]
        directions: usize,
        /// Finite-difference step (l2 length of the perturbation).
        #[arg(long, default_value_t = 3e-3)]
        step: f32,
        /// Function differentiated: probe (a fixed random linear function of the logits,
        /// well conditioned), or an attack loss: ce, dlr, dlr-t (targeted at the runner-up).
        #[arg(long, default_value = "probe", value_parser = ["probe", "ce", "dlr", "dlr-t"])]
        loss: String,
        /// Pass when the 95th percentile of relative errors is below this.
        #[arg(long, default_value_t = 1e-2)]
        tolerance: f64,
        #[command(flatten)]
        per_layer: PerLayerArgs,
    },
    /// Gradient-masking sanity checks (monotone in eps, unbounded -> 0%, iterative beats
    /// single-step, more steps/restarts help, Square not stronger, gradients finite and
    /// non-zero, smooth loss along the gradient).
    Masking {
        #[command(flatten)]
        common: AuditData,
        #[arg(long, value_parser = ["Linf", "L2", "L1", "linf", "l2", "l1"])]
        norm: String,
        /// Radius (decimal).
        #[arg(long)]
        eps: f32,
        /// APGD iterations (reference 100).
        #[arg(long, default_value_t = 100)]
        n_iter: usize,
        /// Square's queries.
        #[arg(long, default_value_t = 1000)]
        square_queries: usize,
        /// Demonstration: quantise the input to this many levels with a zero gradient (a
        /// deliberately masked model the audit must flag).
        #[arg(long)]
        quantize_input: Option<f32>,
    },
}

/// `grad --per-layer`: the same check at every named layer output, to localise a wrong
/// backward rule.
#[derive(clap::Args)]
struct PerLayerArgs {
    /// Also check the gradient at each layer's output (PyTorch module names: conv1, bn1,
    /// maxpool, layer2.1.conv2, layer3.0 = a block's output, fc, MPM cp*/up_layer*/
    /// segmenter_head*) and say where it first goes wrong.
    #[arg(long)]
    per_layer: bool,
    /// Layers to check: comma-separated globs, e.g. 'layer3.*,fc' (default: all).
    #[arg(long, requires = "per_layer")]
    layers: Option<String>,
    /// Per-layer finite-difference step, relative to the l2 norm of one sample's output.
    #[arg(long, default_value_t = 1e-3, requires = "per_layer")]
    layer_step: f32,
    /// Per-layer: leave the segmentation outputs (MPM heads) out of the loss: the attack
    /// path only.
    #[arg(long, requires = "per_layer")]
    no_heads: bool,
    /// Demonstration: a deliberate bug in the per-layer passes, quantize[=STEP]@LAYER
    /// (straight-through gradient) or scale-grad[=K]@LAYER (wrong backward rule).
    #[arg(long, requires = "per_layer")]
    inject_fault: Option<mpm::audit::grad_layers::Fault>,
}

/// Model, data and report flags shared by `grad` and `masking`.
#[derive(clap::Args)]
struct AuditData {
    /// Model weights (safetensors or .pth), PyTorch names and layouts.
    #[arg(long)]
    weights: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Data: safetensors (`input` [N,3,H,W] in [0,1], `target` [N]) or an ImageFolder directory.
    #[arg(long)]
    data: PathBuf,
    /// Use the first N samples.
    #[arg(long, default_value_t = 32)]
    limit: usize,
    /// ImageFolder eval transform (resize, then centre crop).
    #[arg(long, default_value_t = 256)]
    resize: u32,
    #[arg(long, default_value_t = 224)]
    crop: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// JSON report with every figure.
    #[arg(long)]
    report: Option<PathBuf>,
}

type Loaded = (
    mpm::attack::EngineClassifier,
    Vec<f32>,
    Vec<usize>,
    mpm::attack::Dims,
);

fn load_audit_data(a: &AuditData) -> mpm::Result<Loaded> {
    use mpm::attack::imagefolder::{EvalSet, ImageFolder, TensorSet};
    let (spec, store) = files::load_model(&a.weights, &a.model)?;
    let set: Box<dyn EvalSet> = if a.data.is_dir() {
        Box::new(ImageFolder::open(
            &a.data,
            None,
            None,
            spec.num_classes,
            a.resize,
            a.crop,
        )?)
    } else {
        Box::new(TensorSet::load(&a.data, spec.num_classes)?)
    };
    let n = set.len().min(a.limit);
    let mut x = Vec::new();
    for i in 0..n {
        x.extend(set.image(i)?);
    }
    let y = (0..n).map(|i| set.label(i)).collect();
    eprintln!(
        "model: {}; data: {} (first {n})",
        spec.describe(),
        set.describe()
    );
    Ok((
        mpm::attack::EngineClassifier::new(spec, store),
        x,
        y,
        set.dims(),
    ))
}

fn write_report(path: &Option<PathBuf>, v: &serde_json::Value) -> mpm::Result<()> {
    if let Some(p) = path {
        mpm::attack::report::write_json_atomic(p, v)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn run_grad(
    a: &AuditData,
    directions: usize,
    step: f32,
    loss: &str,
    tolerance: f64,
    pl: &PerLayerArgs,
) -> mpm::Result<bool> {
    use mpm::attack::LossKind;
    use mpm::audit::grad::{grad_audit, AuditLoss, GradAuditConfig};
    let (mut model, x, y, dims) = load_audit_data(a)?;
    let cfg = GradAuditConfig {
        directions,
        step,
        loss: match loss {
            "ce" => AuditLoss::Attack(LossKind::Ce),
            "dlr" => AuditLoss::Attack(LossKind::Dlr),
            "dlr-t" => AuditLoss::Attack(LossKind::DlrTargeted),
            _ => AuditLoss::Probe,
        },
        seed: a.seed,
        tolerance,
        ..GradAuditConfig::default()
    };
    let r = grad_audit(&mut model, &x, &y, dims, &cfg)?;
    println!("{}", r.summary());
    let mut report = r.to_json();
    let mut pass = r.pass;
    if pl.per_layer {
        use mpm::audit::grad_layers::{layer_audit, LayerAuditConfig, LayerSelect};
        let lcfg = LayerAuditConfig {
            directions,
            step: pl.layer_step,
            loss: cfg.loss,
            seed: a.seed,
            quantile: cfg.quantile,
            tolerance,
            select: match &pl.layers {
                Some(s) => LayerSelect::parse(s)?,
                None => LayerSelect::all(),
            },
            heads: !pl.no_heads,
            fault: pl.inject_fault.clone(),
        };
        if let Some(f) = &lcfg.fault {
            eprintln!("injected fault (per-layer passes only): {}", f.describe());
        }
        let t0 = std::time::Instant::now();
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let lr = layer_audit(&mut model, &x, &y, dims, &lcfg, &mut |i, n, row| {
            if tty {
                eprint!("\rper-layer audit: {}/{n} {:<40}", i + 1, row.name);
            }
        })?;
        if tty {
            eprint!("\r{:80}\r", "");
        }
        eprintln!("per-layer audit: {:.1} s", t0.elapsed().as_secs_f64());
        print!("{}", lr.table());
        println!("{}", lr.summary());
        report["per_layer"] = lr.to_json();
        pass &= lr.pass;
    }
    write_report(&a.report, &report)?;
    Ok(pass)
}

#[allow(clippy::too_many_arguments)]
fn run_masking(
    a: &AuditData,
    norm: &str,
    eps: f32,
    n_iter: usize,
    square_queries: usize,
    quantize: Option<f32>,
) -> mpm::Result<bool> {
    use mpm::attack::{Classifier, Norm};
    use mpm::audit::masking::{checks_json, masking_audit, MaskingConfig, QuantizedInput};
    let norm: Norm = norm
        .parse()
        .map_err(|e: String| mpm::Error::flag("--norm", e))?;
    let (mut model, x, y, dims) = load_audit_data(a)?;
    norm.validate_eps(eps, dims.len())?;
    let mut cfg = MaskingConfig::new(norm, eps);
    cfg.seed = a.seed;
    cfg.n_iter = n_iter.max(1);
    cfg.square_queries = square_queries;
    let mut q;
    let m: &mut dyn Classifier = match quantize {
        Some(levels) if levels > 0.0 => {
            q = QuantizedInput {
                inner: &mut model,
                levels,
            };
            &mut q
        }
        Some(_) => return Err(mpm::Error::flag("--quantize-input", "must be positive")),
        None => &mut model,
    };
    let checks = masking_audit(m, &x, &y, dims, &cfg)?;
    for c in &checks {
        println!(
            "{:<20} {}  {}",
            c.name,
            if c.pass { "PASS" } else { "FAIL" },
            c.summary
        );
    }
    let v = checks_json(&checks);
    let pass = v["pass"].as_bool().unwrap_or(false);
    println!(
        "masking audit: {}",
        if pass {
            "PASS (no sign of gradient masking)"
        } else {
            "FAIL (signs of gradient masking: robust accuracy from gradient attacks is not trustworthy)"
        }
    );
    write_report(&a.report, &v)?;
    Ok(pass)
}

fn run_parity(
    weights: &Path,
    input: &Path,
    model: &ModelArgs,
    loss: &LossArgs,
) -> mpm::Result<std::collections::BTreeMap<String, mpm::nn::TorchTensor>> {
    let (spec, store) = files::load_model(weights, model)?;
    let x = files::read_input(input, &spec)?;
    parity::run(&spec, &store, &x, loss.config())
}

/// Flags of a case directory's `case.json` (`args`), parsed by the same clap definitions.
fn case_flags(dir: &Path) -> mpm::Result<(ModelArgs, LossArgs)> {
    let path = dir.join("case.json");
    let text = std::fs::read_to_string(&path).map_err(|e| mpm::Error::io(&path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| mpm::Error::format(&path, e.to_string()))?;
    let args: Vec<String> = v["args"]
        .as_array()
        .ok_or_else(|| mpm::Error::format(&path, "no 'args' list"))?
        .iter()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        loss: LossArgs,
    }
    let f = Flags::try_parse_from(std::iter::once("case".to_string()).chain(args))
        .map_err(|e| mpm::Error::format(&path, e.to_string()))?;
    Ok((f.model, f.loss))
}

fn check(dir: &Path, verbose: bool) -> mpm::Result<bool> {
    let (model, loss) = case_flags(dir)?;
    let got = run_parity(
        &dir.join("weights.safetensors"),
        &dir.join("input.safetensors"),
        &model,
        &loss,
    )?;
    let expected = files::read_output(&dir.join("expected.safetensors"))?;
    let rows = parity::compare(&expected, &got);
    let failed: Vec<_> = rows.iter().filter(|r| !r.ok()).collect();
    let worst = |prefix: &str| {
        rows.iter()
            .filter(|r| r.name.starts_with(prefix) && !r.absolute)
            .map(|r| r.error)
            .fold(0.0, f64::max)
    };
    println!(
        "{}: {} tensors, worst relative L2: eval {:.1e}, train.loss {:.1e}, grads {:.1e}, running stats {:.1e} -> {}",
        dir.display(),
        rows.len(),
        worst("eval."),
        worst("train.loss"),
        worst("train.grad."),
        worst("train.state."),
        if failed.is_empty() { "PASS" } else { "FAIL" }
    );
    for r in rows.iter().filter(|r| verbose || !r.ok()) {
        println!(
            "  {:<60} {} {:.2e} (tolerance {:.0e}) {}",
            r.name,
            if r.absolute { "abs" } else { "rel" },
            r.error,
            r.tolerance,
            if r.ok() { "ok" } else { "FAIL" }
        );
    }
    Ok(failed.is_empty())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Parity {
            weights,
            input,
            out,
            model,
            loss,
            device,
        } => device.resolve().and_then(|(dev, why)| {
            eprintln!("device: {why}");
            let _ = dev;
            let y = run_parity(&weights, &input, &model, &loss)?;
            files::write_output(&out, &y)?;
            eprintln!("wrote {} tensors to {}", y.len(), out.display());
            let bad = parity::non_finite_outputs(&y);
            if !bad.is_empty() {
                return Err(mpm::Error::NonFinite(format!(
                    "{} output(s) hold NaN or infinity: {} (written to {} for inspection)",
                    bad.len(),
                    bad.join(", "),
                    out.display()
                )));
            }
            Ok(true)
        }),
        Cmd::Grad {
            common,
            directions,
            step,
            loss,
            tolerance,
            per_layer,
        } => run_grad(&common, directions, step, &loss, tolerance, &per_layer),
        Cmd::Masking {
            common,
            norm,
            eps,
            n_iter,
            square_queries,
            quantize_input,
        } => run_masking(&common, &norm, eps, n_iter, square_queries, quantize_input),
        Cmd::Check { cases, verbose } => {
            let mut all = true;
            for c in &cases {
                match check(c, verbose) {
                    Ok(ok) => all &= ok,
                    Err(e) => {
                        eprintln!("{}: error: {e}", c.display());
                        all = false;
                    }
                }
            }
            Ok(all)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
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
