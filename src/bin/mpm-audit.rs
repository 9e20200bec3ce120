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
            Ok(true)
        }),
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
