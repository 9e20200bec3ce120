//! `mpm-train`: adversarial training of vanilla, MPM and two-stage ResNets with the paper's
//! recipe (DESIGN.md §1), and the built-in demo. See docs/train.md.
//!
//! ```text
//! mpm-train --config configs/mpm_at_in1k.toml [--KEY VALUE ...] [--resume RUN|CKPT]
//! mpm-train --nproc-per-node N --config ...   (N local ranks; docs/distributed.md)
//! mpm-train demo [--out DIR]
//! mpm-train export --checkpoint RUN_DIR [--which best|last] --out DIR   (or one checkpoint file)
//! mpm-train sweep --config C --key lambdas --values 0,0.25,0.5,1,2 [--set KEY=VALUE ...]
//!                  [--jobs N | --devices cuda:0,cuda:1,...]   (variants side by side)
//! ```

use clap::{Arg, ArgAction, ArgMatches, Command};
use mpm::train::{self, checkpoint, RunOptions, TrainConfig};
use std::path::PathBuf;
use std::process::ExitCode;

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn cli() -> Command {
    let mut cmd = Command::new("mpm-train")
        .about(
            "Adversarial training (PGD l-inf) of vanilla / MPM / two-stage ResNets with the \
             paper's recipe. Every configuration key is also a flag: --KEY VALUE.",
        )
        .arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE.toml")
                .help("Configuration file (keys as in configs/*.toml); flags override it"),
        )
        .arg(
            Arg::new("resume")
                .long("resume")
                .value_name("RUN_DIR|CHECKPOINT")
                .help("Continue a run exactly from its last checkpoint"),
        )
        .arg(
            Arg::new("stop-after-steps")
                .long("stop-after-steps")
                .value_name("N")
                .value_parser(clap::value_parser!(u64))
                .help("Checkpoint and stop once N optimiser steps are done (resume later)"),
        )
        .arg(
            Arg::new("no-progress")
                .long("no-progress")
                .action(ArgAction::SetTrue)
                .help("No progress bar"),
        )
        .arg(
            Arg::new("nproc-per-node")
                .long("nproc-per-node")
                .value_name("N")
                .help(
                    "Start N data-parallel ranks on this node (one per GPU), like torchrun; \
                     with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (or Slurm's variables) set, \
                     this process is one rank instead. docs/distributed.md",
                ),
        )
        .arg(
            Arg::new("dist-timeout")
                .long("dist-timeout")
                .value_name("SECONDS")
                .help(
                    "Data-parallel runs: how long a rank waits for the others before it stops, \
                     naming the missing rank (default 600, or MPM_DIST_TIMEOUT_S)",
                ),
        )
        .arg(
            Arg::new("print-config")
                .long("print-config")
                .action(ArgAction::SetTrue)
                .help("Print the resolved configuration as TOML and exit"),
        );
    for (key, default) in TrainConfig::keys() {
        let flag = leak(key.replace('_', "-"));
        let kind = match default {
            toml::Value::Boolean(_) => "BOOL",
            toml::Value::Integer(_) => "INT",
            toml::Value::Float(_) => "NUM",
            _ => "STR",
        };
        cmd = cmd.arg(
            Arg::new(leak(key.clone()))
                .long(flag)
                .value_name(kind)
                .help_heading("Configuration keys")
                .help(leak(format!("`{key}` (default {default})"))),
        );
    }
    let cmd = cmd.subcommand(sweep_command());
    cmd.subcommand(train::demo::command()).subcommand(
        Command::new("export")
            .about("Write the inference model (EMA, bypass dropped) of a run or a checkpoint")
            .arg(
                Arg::new("checkpoint")
                    .long("checkpoint")
                    .value_name("RUN_DIR|CHECKPOINT")
                    .required(true)
                    .help("A run directory (see --which) or one checkpoint file"),
            )
            .arg(
                Arg::new("which")
                    .long("which")
                    .value_parser(["best", "last"])
                    .help(
                        "With a run directory: its best epoch (by EMA PGD accuracy, the \
                         default) or its last checkpoint",
                    ),
            )
            .arg(Arg::new("out").long("out").required(true)),
    )
}

fn config_from(m: &ArgMatches) -> mpm::Result<TrainConfig> {
    let mut cfg = match m.get_one::<String>("config") {
        Some(p) => TrainConfig::from_file(&PathBuf::from(p))?,
        None => TrainConfig::default(),
    };
    for (key, _) in TrainConfig::keys() {
        if let Some(v) = m.get_one::<String>(&key) {
            cfg.set(&key, v)?;
        }
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    // `--nproc-per-node N`: this process only launches the N ranks (each runs the same
    // command without the flag).
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match mpm::dist::launch::take_nproc_flag(&mut args) {
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        Ok(Some(n)) => {
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(&args[0]));
            return match mpm::dist::launch::launch(&exe, &args[1..], n) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Ok(None) => {}
    }
    let m = cli().get_matches_from(args);
    let res = match m.subcommand() {
        Some(("demo", sm)) => train::demo::run_cli(sm),
        Some(("export", sm)) => export(sm),
        Some(("sweep", sm)) => sweep(sm),
        _ => train_cmd(&m),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn export(m: &ArgMatches) -> mpm::Result<()> {
    let ck = PathBuf::from(m.get_one::<String>("checkpoint").map_or("", |s| s.as_str()));
    let out = PathBuf::from(m.get_one::<String>("out").map_or("", |s| s.as_str()));
    let which = m.get_one::<String>("which").map(String::as_str);
    let (file, label, epoch) = if ck.is_dir() {
        let best = train::run::read_best(&ck)?;
        match (which, best) {
            (Some("last"), _) => (train::run::last_checkpoint(&ck), "last", None),
            (_, Some(b)) => {
                println!(
                    "best: epoch {} ({} {:.4} on {}, eval_metric {})",
                    b.epoch, b.metric, b.value, b.selected_on, b.eval_metric
                );
                (train::run::best_checkpoint(&ck), "best", Some(b.epoch))
            }
            (Some(_), None) => {
                return Err(mpm::Error::flag(
                    "--which",
                    format!(
                        "best: {} has no best checkpoint (no evaluation ran: set eval_dir); \
                         use --which last",
                        ck.display()
                    ),
                ))
            }
            (None, None) => {
                eprintln!(
                    "note: {} has no best checkpoint (no evaluation ran); exporting the last",
                    ck.display()
                );
                (train::run::last_checkpoint(&ck), "last", None)
            }
        }
    } else {
        if which.is_some() {
            return Err(mpm::Error::flag(
                "--which",
                "applies to a run directory; --checkpoint names one file",
            ));
        }
        (ck.clone(), "checkpoint", None)
    };
    if !file.exists() {
        return Err(mpm::Error::flag(
            "--checkpoint",
            format!("{}: no such checkpoint", file.display()),
        ));
    }
    let t = checkpoint::load(&file, None)?;
    let epoch = epoch.or(Some(t.pos.epoch));
    for p in checkpoint::export_inference_as(&t, &out, label, epoch)? {
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// `mpm-train sweep` (Figure S3; docs/tracks.md).
fn sweep_command() -> Command {
    Command::new("sweep")
        .about(
            "Train one run per value of a configuration key, one after another or side by side \
             (--jobs, --devices; finished ones are skipped, interrupted ones resume), evaluate \
             each (clean, PGD, AutoAttack) and write a table (sweep.md, sweep.json) and a plot \
             (sweep.png)",
        )
        .arg(
            Arg::new("config")
                .long("config")
                .required(true)
                .value_name("FILE.toml"),
        )
        .arg(
            Arg::new("key")
                .long("key")
                .required(true)
                .help("The configuration key varied, e.g. lambdas"),
        )
        .arg(
            Arg::new("values")
                .long("values")
                .required(true)
                .help("Comma-separated values, e.g. 0,0.25,0.5,1,2"),
        )
        .arg(
            Arg::new("set")
                .long("set")
                .value_name("KEY=VALUE")
                .action(ArgAction::Append)
                .help("Override a configuration key for every variant (repeatable)"),
        )
        .arg(
            Arg::new("out")
                .long("out")
                .help("Output folder (default: <output_dir>/sweep_<key>)"),
        )
        .arg(
            Arg::new("aa-images")
                .long("aa-images")
                .value_parser(clap::value_parser!(usize))
                .default_value("1000")
                .help("Evaluation images attacked with AutoAttack per variant (0 = none)"),
        )
        .arg(
            Arg::new("aa-version")
                .long("aa-version")
                .value_parser(["standard", "apgd"])
                .default_value("standard")
                .help("standard: APGD-CE, APGD-T, FAB-T, Square; apgd: the first two only"),
        )
        .arg(
            Arg::new("eval-batch-size")
                .long("eval-batch-size")
                .value_parser(clap::value_parser!(usize))
                .default_value("0")
                .help("Images per evaluation pass (0: the config's micro-batch)"),
        )
        .arg(
            Arg::new("no-progress")
                .long("no-progress")
                .action(ArgAction::SetTrue),
        )
        .arg(
            Arg::new("jobs")
                .long("jobs")
                .value_parser(clap::value_parser!(usize))
                .conflicts_with("devices")
                .help(
                    "Run N variants at a time on the CPU, each its own mpm-train process \
                     (output in OUT/<key>_<value>.log)",
                ),
        )
        .arg(Arg::new("devices").long("devices").value_name("LIST").help(
            "Run the variants side by side, at most one per listed device at a time \
                     (e.g. cuda:0,cuda:1; list a device twice for two variants on it), each \
                     its own mpm-train process (output in OUT/<key>_<value>.log)",
        ))
        .arg(
            // A parallel sweep's child: runs this one value (its result, not the table).
            Arg::new("variant")
                .long("variant")
                .hide(true)
                .conflicts_with_all(["jobs", "devices"]),
        )
}

/// The slots of a parallel sweep: `--jobs N` (N x cpu) or `--devices LIST`; None: serial.
fn sweep_slots(m: &ArgMatches) -> mpm::Result<Option<Vec<String>>> {
    if let Some(&n) = m.get_one::<usize>("jobs") {
        if n == 0 {
            return Err(mpm::Error::flag("--jobs", "must be at least 1"));
        }
        return Ok(Some(vec!["cpu".to_string(); n]));
    }
    let Some(list) = m.get_one::<String>("devices") else {
        return Ok(None);
    };
    let slots: Vec<String> = list
        .split(',')
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect();
    if slots.is_empty() {
        return Err(mpm::Error::flag("--devices", "no device given"));
    }
    for d in &slots {
        let r: mpm::device::DeviceRequest = d
            .parse()
            .map_err(|e| mpm::Error::flag("--devices", format!("'{d}': {e}")))?;
        if matches!(r, mpm::device::DeviceRequest::Auto) {
            return Err(mpm::Error::flag(
                "--devices",
                "name each device (cpu, cuda:N), not auto",
            ));
        }
    }
    Ok(Some(slots))
}

fn sweep(m: &ArgMatches) -> mpm::Result<()> {
    use train::sweep::{self, SweepOptions};
    let s = |k: &str| m.get_one::<String>(k).cloned().unwrap_or_default();
    let mut cfg = TrainConfig::from_file(&PathBuf::from(s("config")))?;
    for kv in m.get_many::<String>("set").into_iter().flatten() {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| mpm::Error::flag("--set", format!("'{kv}': expected KEY=VALUE")))?;
        cfg.set(k.trim(), v.trim())?;
    }
    let key = s("key").replace('-', "_");
    let out = match m.get_one::<String>("out") {
        Some(o) => PathBuf::from(o),
        None => PathBuf::from(&cfg.output_dir).join(format!("sweep_{key}")),
    };
    let o = SweepOptions {
        key,
        values: sweep::parse_values(&s("values"))?,
        out: out.clone(),
        aa_images: m.get_one::<usize>("aa-images").copied().unwrap_or(0),
        aa_version: s("aa-version")
            .parse()
            .map_err(|e: String| mpm::Error::flag("--aa-version", e))?,
        eval_batch_size: m.get_one::<usize>("eval-batch-size").copied().unwrap_or(0),
        progress: !m.get_flag("no-progress"),
    };
    // Every variant's configuration is checked before the data is scanned.
    for v in &o.values {
        sweep::variant_config(&cfg, &o, v)?;
    }
    if cfg.eval_dir.is_empty() {
        return Err(mpm::Error::flag(
            "--eval-dir",
            "the sweep evaluates every variant on eval_dir: set it in the config or with --set",
        ));
    }
    let slots = sweep_slots(m)?;
    if let Some(slots) = slots {
        // Each variant is this program with this sweep's flags and `--variant V`.
        let mut args: Vec<String> = vec![
            "sweep".into(),
            "--config".into(),
            s("config"),
            "--key".into(),
            o.key.clone(),
            "--values".into(),
            o.values.join(","),
            "--out".into(),
            out.display().to_string(),
            "--aa-images".into(),
            o.aa_images.to_string(),
            "--aa-version".into(),
            s("aa-version"),
            "--eval-batch-size".into(),
            o.eval_batch_size.to_string(),
            "--no-progress".into(),
        ];
        for kv in m.get_many::<String>("set").into_iter().flatten() {
            args.extend(["--set".to_string(), kv.clone()]);
        }
        let program = std::env::current_exe()
            .map_err(|e| mpm::Error::Msg(format!("cannot find this program to start: {e}")))?;
        let p = sweep::Parallel {
            slots,
            program,
            args: args.into_iter().map(Into::into).collect(),
            status_every: 60,
        };
        let rows = sweep::sweep_parallel(&cfg, &o, &p)?;
        print_sweep(&rows, &out);
        return Ok(());
    }
    let train_src = train::folder::open(&cfg, &cfg.train_dir, "train_dir", true)?;
    let eval_src = train::folder::open(&cfg, &cfg.eval_dir, "eval_dir", false)?;
    if let Some(value) = m.get_one::<String>("variant") {
        // A parallel sweep's child: this value only; the parent writes the table.
        let i = o.values.iter().position(|v| v == value).ok_or_else(|| {
            mpm::Error::flag("--variant", format!("'{value}' is not one of --values"))
        })?;
        let vcfg = sweep::variant_config(&cfg, &o, value)?;
        let tag = format!("[{}/{}] {} = {value}", i + 1, o.values.len(), o.key);
        let row = sweep::run_variant(
            &vcfg,
            train_src.as_ref(),
            eval_src.as_ref(),
            &o,
            value,
            &tag,
        )?;
        println!("{}", serde_json::to_string(&row).unwrap_or_default());
        return Ok(());
    }
    let rows = sweep::sweep(&cfg, train_src.as_ref(), eval_src.as_ref(), &o)?;
    print_sweep(&rows, &out);
    Ok(())
}

/// The sweep's table and the files it wrote, on stdout.
fn print_sweep(rows: &[train::sweep::SweepRow], out: &std::path::Path) {
    print!("{}", train::sweep::table(rows));
    println!(
        "wrote {}, {} and {}",
        out.join("sweep.md").display(),
        out.join("sweep.json").display(),
        out.join("sweep.png").display()
    );
}

fn train_cmd(m: &ArgMatches) -> mpm::Result<()> {
    let resume = m.get_one::<String>("resume").map(PathBuf::from);
    let mut cfg = config_from(m)?;
    if let Some(r) = &resume {
        // A resumed run takes its configuration from the checkpoint; flags may change only
        // runtime keys (checked when loading).
        let file = if r.is_dir() {
            train::run::last_checkpoint(r)
        } else {
            r.clone()
        };
        let stored = checkpoint::read_config(&file)?;
        let explicit = config_from(m)?;
        let mut merged = stored.clone();
        for (key, _) in TrainConfig::keys() {
            if let Some(v) = m.get_one::<String>(&key) {
                merged.set(&key, v)?;
            }
        }
        if m.get_one::<String>("config").is_some() && explicit != merged {
            eprintln!("note: --resume uses the checkpoint's configuration; --config is ignored");
        }
        if m.get_one::<String>("output_dir").is_none() {
            if let Some(run_dir) = file.parent().and_then(|p| p.parent()) {
                merged.output_dir = run_dir.display().to_string();
            }
        }
        cfg = merged;
    }
    cfg.validate()?;
    if m.get_flag("print-config") {
        print!("{}", cfg.to_toml());
        return Ok(());
    }
    // Before the (long) scan of the data: a missing starting checkpoint names what makes it.
    let init = PathBuf::from(&cfg.init_checkpoint);
    if resume.is_none() && !cfg.init_checkpoint.is_empty() && !init.exists() {
        return Err(train::init::missing(&init));
    }
    // A rank of a data-parallel run joins the others (rendezvous) before the data scan.
    let timeout = match m.get_one::<String>("dist-timeout") {
        Some(v) => {
            mpm::dist::parse_timeout(v).map_err(|e| mpm::Error::flag("--dist-timeout", e))?
        }
        None => mpm::dist::timeout_from_env()?,
    };
    let (dist, rank_device) = mpm::dist::train::from_env(&cfg, timeout)?;
    if let Some(d) = rank_device {
        cfg.device = d;
    }
    let (device, why) = cfg
        .device
        .parse::<mpm::device::DeviceRequest>()?
        .resolve()?;
    eprintln!("device: {why}");
    if dist.world() > 1 {
        eprintln!("distributed: {}", dist.describe());
    } else if device != mpm::device::Device::Cpu {
        if let Some(why) = mpm::dist::nccl::unavailable_reason() {
            eprintln!("note: one GPU only; multi-GPU training is unavailable: {why}");
        }
    }
    // The parser's error already names --precision.
    let precision = mpm::device::parse_precision_flag(&cfg.precision)?;
    if !why.starts_with("cpu") {
        eprintln!("precision: {precision}");
    }
    let train_src = train::folder::open(&cfg, &cfg.train_dir, "train_dir", true)?;
    let eval_src = if cfg.eval_dir.is_empty() {
        None
    } else {
        Some(train::folder::open(&cfg, &cfg.eval_dir, "eval_dir", false)?)
    };
    let opts = RunOptions {
        run_dir: PathBuf::from(&cfg.output_dir),
        stop_after_steps: m.get_one::<u64>("stop-after-steps").copied(),
        resume,
        progress: !m.get_flag("no-progress"),
        plots: true,
        eval_batch_size: 0,
    };
    let s =
        train::run::run_distributed(&cfg, train_src.as_ref(), eval_src.as_deref(), &opts, &dist)?;
    if !dist.is_root() {
        return Ok(());
    }
    if s.finished {
        println!(
            "done: {} epochs in {:.0}s; run directory {}",
            cfg.epochs,
            s.seconds,
            opts.run_dir.display()
        );
        if let Some(r) = &s.last_eval {
            println!("last eval (EMA): {}", train::run::describe_eval(r));
        }
    } else {
        println!(
            "stopped at global step {}; resume with: mpm-train --resume {}",
            s.trainer.pos.global_step,
            opts.run_dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// clap checks flag definitions (duplicate names, conflicting defaults) only in debug
    /// builds and only when parsing: check the generated flag table here.
    #[test]
    fn cli_definition_is_well_formed() {
        super::cli().debug_assert();
    }
}
