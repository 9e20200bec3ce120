//! `mpm-train sweep`: one configuration key varied over a list of values (Figure S3: lambda,
//! the weight of the part loss, for MPM ResNet-50 on Tiny-PartImageNet++).
//!
//! The variants run one after another, each a whole `mpm-train` run in its own folder
//! `OUT/<key>_<value>/` (config, log, metrics, checkpoints as usual). After training, each is
//! evaluated on `eval_dir` with the EMA model the run exports (its best epoch by EMA PGD
//! accuracy, else the last): clean accuracy, PGD accuracy (the config's
//! `eval_attack_it` steps at `attack_eps`, as the training run's own evaluations) and
//! AutoAttack at `attack_eps` (l-inf, the attack library's AutoAttack; `standard` = APGD-CE,
//! APGD-T, FAB-T, Square, each on the points the previous left robust) on `aa_images` evenly
//! spaced evaluation images. The result is written to `OUT/<key>_<value>/sweep_result.json`.
//!
//! Resumable: a variant with a result file is not run again; a variant interrupted in training
//! resumes from its last checkpoint (`--resume` semantics: same configuration required). At the
//! end, and after every variant, `OUT/sweep.json`, `OUT/sweep.md` (the table) and
//! `OUT/sweep.png` (accuracy against the value, Figure S3's plot) are rewritten atomically.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::run::{best_checkpoint, eval_trainer, last_checkpoint, read_best, run, RunOptions};
use super::source::BatchSource;
use super::trainer::Trainer;
use crate::charts::{self, Panel, Series};
use crate::{Error, Result};

/// Which AutoAttack runs on each variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AaVersion {
    /// APGD-CE, APGD-T, FAB-T, Square (Croce & Hein's "standard", the paper's).
    Standard,
    /// APGD-CE and APGD-T only (minutes instead of hours; an upper bound on the standard one).
    Apgd,
}

impl std::str::FromStr for AaVersion {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "standard" => Ok(AaVersion::Standard),
            "apgd" => Ok(AaVersion::Apgd),
            _ => Err(format!("'{s}': expected standard or apgd")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// The configuration key varied (any key of `TrainConfig`, e.g. `lambdas`).
    pub key: String,
    pub values: Vec<String>,
    /// Output folder; the variants' runs are its sub-folders.
    pub out: PathBuf,
    /// Evaluation images attacked with AutoAttack (0 = no AutoAttack).
    pub aa_images: usize,
    pub aa_version: AaVersion,
    /// Images per evaluation pass (0: the config's micro-batch).
    pub eval_batch_size: usize,
    pub progress: bool,
}

/// One variant's evaluation (accuracies are fractions).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SweepRow {
    pub key: String,
    pub value: String,
    pub run_dir: String,
    /// Which checkpoint of the run was evaluated: "best (epoch E)" or "last (epoch E)".
    pub evaluated: String,
    pub images: usize,
    pub clean_accuracy: f64,
    pub pgd_steps: usize,
    pub eps: f64,
    pub pgd_accuracy: f64,
    pub autoattack: Option<String>,
    pub autoattack_images: usize,
    pub autoattack_accuracy: Option<f64>,
    pub train_seconds: f64,
    pub eval_seconds: f64,
}

/// The folder of one variant: `<key>_<value>` with characters other than `[A-Za-z0-9._-]`
/// replaced, so any value makes a valid name.
pub fn variant_dir(out: &Path, key: &str, value: &str) -> PathBuf {
    let clean: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.join(format!("{key}_{clean}"))
}

/// Parses `--values`: comma-separated, at least one, no duplicates.
pub fn parse_values(s: &str) -> Result<Vec<String>> {
    let v: Vec<String> = s
        .split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect();
    if v.is_empty() {
        return Err(Error::flag("--values", "no value given"));
    }
    for (i, a) in v.iter().enumerate() {
        if v[..i].contains(a) {
            return Err(Error::flag("--values", format!("'{a}' listed twice")));
        }
    }
    Ok(v)
}

/// The configuration of the variant `key = value`, in its own folder.
pub fn variant_config(base: &TrainConfig, o: &SweepOptions, value: &str) -> Result<TrainConfig> {
    if super::config::RUNTIME_KEYS.contains(&o.key.replace('-', "_").as_str()) {
        return Err(Error::flag(
            "--key",
            format!(
                "'{}' changes how a run executes, not what it computes: nothing to sweep",
                o.key
            ),
        ));
    }
    let mut c = base.clone();
    c.set(&o.key, value)?;
    c.output_dir = variant_dir(&o.out, &o.key, value).display().to_string();
    c.validate()?;
    Ok(c)
}

const RESULT: &str = "sweep_result.json";

fn read_result(dir: &Path, key: &str, value: &str) -> Option<SweepRow> {
    let text = std::fs::read_to_string(dir.join(RESULT)).ok()?;
    let r: SweepRow = serde_json::from_str(&text).ok()?;
    (r.key == key && r.value == value).then_some(r)
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Msg(e.to_string()))?;
    crate::io::write_bytes_atomic(path, text.as_bytes(), crate::io::Durability::Fsync)
}

/// Runs (or resumes) every variant, evaluates it, and writes the table and the plot.
pub fn sweep(
    base: &TrainConfig,
    train: &dyn BatchSource,
    eval: &dyn BatchSource,
    o: &SweepOptions,
) -> Result<Vec<SweepRow>> {
    // Every variant's configuration first: a bad value fails before hours of training.
    let cfgs: Vec<TrainConfig> = o
        .values
        .iter()
        .map(|v| variant_config(base, o, v))
        .collect::<Result<_>>()?;
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let mut rows: Vec<SweepRow> = Vec::new();
    for (i, (value, cfg)) in o.values.iter().zip(&cfgs).enumerate() {
        let dir = PathBuf::from(&cfg.output_dir);
        let tag = format!("[{}/{}] {} = {value}", i + 1, o.values.len(), o.key);
        if let Some(r) = read_result(&dir, &o.key, value) {
            eprintln!(
                "{tag}: done before ({}), skipped",
                dir.join(RESULT).display()
            );
            rows.push(r);
            continue;
        }
        let resume = last_checkpoint(&dir).exists().then(|| dir.clone());
        eprintln!(
            "{tag}: {} {}",
            if resume.is_some() {
                "resuming"
            } else {
                "training"
            },
            dir.display()
        );
        let t = Instant::now();
        let s = run(
            cfg,
            train,
            Some(eval),
            &RunOptions {
                run_dir: dir.clone(),
                stop_after_steps: None,
                resume,
                progress: o.progress,
                plots: true,
                eval_batch_size: o.eval_batch_size,
            },
        )?;
        let train_seconds = t.elapsed().as_secs_f64();
        // The model the run exports, as the paper reports it: the best epoch by EMA PGD
        // accuracy on eval_dir (the reference's model_best), else the last.
        let last_epoch = s.trainer.pos.epoch;
        let (trainer, evaluated) = match read_best(&dir)? {
            Some(b) if b.epoch != last_epoch => {
                let mut t = super::checkpoint::load(&best_checkpoint(&dir), None)?;
                t.to_device(s.trainer.device)?;
                (t, format!("best (epoch {})", b.epoch))
            }
            Some(b) => (s.trainer, format!("best (epoch {})", b.epoch)),
            None => (s.trainer, format!("last (epoch {last_epoch})")),
        };
        let mut row = evaluate_variant(&trainer, eval, o, value, &dir, train_seconds)?;
        row.evaluated = evaluated;
        eprintln!("{tag}: {}", describe(&row));
        write_json(&dir.join(RESULT), &row)?;
        rows.push(row);
        write_outputs(&rows, o)?;
    }
    write_outputs(&rows, o)?;
    Ok(rows)
}

fn describe(r: &SweepRow) -> String {
    let mut s = format!(
        "clean {:.2}%, PGD-{} {:.2}%",
        100.0 * r.clean_accuracy,
        r.pgd_steps,
        100.0 * r.pgd_accuracy
    );
    if let (Some(name), Some(a)) = (&r.autoattack, r.autoattack_accuracy) {
        s += &format!(
            ", {name} {:.2}% ({} images)",
            100.0 * a,
            r.autoattack_images
        );
    }
    s
}

fn evaluate_variant(
    trainer: &Trainer,
    eval: &dyn BatchSource,
    o: &SweepOptions,
    value: &str,
    dir: &Path,
    train_seconds: f64,
) -> Result<SweepRow> {
    let t = Instant::now();
    let eps = trainer.cfg.attack_eps as f32;
    let bs = if o.eval_batch_size > 0 {
        o.eval_batch_size
    } else {
        trainer.cfg.micro_batch()
    };
    let r = eval_trainer(trainer, eval, bs, &[eps])?;
    let pgd = r.pgd_acc.first().map(|p| p.1).unwrap_or(f64::NAN);
    let (aa_name, aa_n, aa_acc) = if o.aa_images > 0 {
        let (n, acc, attacks) = autoattack(trainer, eval, o.aa_images, eps, o.aa_version)?;
        let name = match o.aa_version {
            AaVersion::Standard if attacks == crate::attack::AttackKind::STANDARD => {
                "AutoAttack".to_string()
            }
            _ => format!(
                "AutoAttack ({})",
                attacks
                    .iter()
                    .map(|a| a.name().to_uppercase())
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
        };
        (Some(name), n, Some(acc))
    } else {
        (None, 0, None)
    };
    Ok(SweepRow {
        key: o.key.clone(),
        value: value.to_string(),
        run_dir: dir.display().to_string(),
        evaluated: String::new(),
        images: r.images,
        clean_accuracy: r.clean_acc,
        pgd_steps: r.pgd_steps,
        eps: f64::from(eps),
        pgd_accuracy: pgd,
        autoattack: aa_name,
        autoattack_images: aa_n,
        autoattack_accuracy: aa_acc,
        train_seconds,
        eval_seconds: t.elapsed().as_secs_f64(),
    })
}

/// Robust accuracy under AutoAttack (l-inf, `eps`) of the EMA model on `n` evenly spaced
/// evaluation images (so every class of a class-ordered set is represented); only those images
/// are loaded.
fn autoattack(
    trainer: &Trainer,
    src: &dyn BatchSource,
    n: usize,
    eps: f32,
    version: AaVersion,
) -> Result<(usize, f64, Vec<crate::attack::AttackKind>)> {
    use crate::attack::{AttackKind, AutoAttack, AutoAttackConfig, Dims, EngineClassifier, Norm};
    let total = src.len();
    let n = n.min(total);
    let attacks = AttackKind::fit_to_classes(
        match version {
            AaVersion::Standard => &AttackKind::STANDARD,
            AaVersion::Apgd => &[AttackKind::ApgdCe, AttackKind::ApgdT],
        },
        trainer.spec.num_classes,
    );
    if n == 0 {
        return Ok((0, f64::NAN, attacks));
    }
    let pick: Vec<usize> = (0..n).map(|i| i * total / n).collect();
    let b = src.load(0, &pick, false)?;
    let side = b.side();
    let x = crate::nn::layout::nhwc_to_nchw(b.images.data(), n, side, side, 3);
    let ids: Vec<u64> = pick.iter().map(|&i| i as u64).collect();
    let mut clf = EngineClassifier::new(trainer.spec, trainer.eval_model().clone());
    let mut cfg = AutoAttackConfig::standard(Norm::Linf, eps, trainer.cfg.seed);
    cfg.attacks = attacks.clone();
    let mut aa = AutoAttack {
        cfg,
        model: &mut clf,
    };
    let dims = Dims {
        c: 3,
        h: side,
        w: side,
    };
    let res = aa.run_batch(&x, &b.labels, &ids, dims)?;
    let robust = res.iter().filter(|r| r.robust()).count();
    Ok((res.len(), robust as f64 / res.len().max(1) as f64, attacks))
}

/// The Markdown table of the rows (accuracies in %).
pub fn table(rows: &[SweepRow]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let aa = rows
        .iter()
        .find_map(|r| r.autoattack.clone().map(|n| (n, r.autoattack_images)));
    let mut s = format!(
        "| {} | clean acc % | PGD-{} acc % (l-inf {:.4}) |",
        first.key, first.pgd_steps, first.eps
    );
    if let Some((name, n)) = &aa {
        s += &format!(" {name} acc % ({n} images) |");
    }
    s += " images | evaluated | train s |\n|---|---|---|";
    if aa.is_some() {
        s += "---|";
    }
    s += "---|---|---|\n";
    for r in rows {
        s += &format!(
            "| {} | {:.2} | {:.2} |",
            r.value,
            100.0 * r.clean_accuracy,
            100.0 * r.pgd_accuracy
        );
        if aa.is_some() {
            s += &match r.autoattack_accuracy {
                Some(a) => format!(" {:.2} |", 100.0 * a),
                None => " - |".to_string(),
            };
        }
        s += &format!(
            " {} | {} | {:.0} |\n",
            r.images, r.evaluated, r.train_seconds
        );
    }
    s
}

fn write_outputs(rows: &[SweepRow], o: &SweepOptions) -> Result<()> {
    write_json(&o.out.join("sweep.json"), &rows)?;
    let md = format!(
        "# Sweep over `{}`\n\nEvaluated on the EMA model of each run (sweep_result.json in each \
         run folder).\n\n{}",
        o.key,
        table(rows)
    );
    crate::io::write_bytes_atomic(
        &o.out.join("sweep.md"),
        md.as_bytes(),
        crate::io::Durability::Fsync,
    )?;
    plot(rows, o)
}

/// Figure S3's plot: accuracy (%) against the value; x is the value itself when every value is
/// a number, else its position in the list.
fn plot(rows: &[SweepRow], o: &SweepOptions) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let numeric: Option<Vec<f64>> = rows.iter().map(|r| r.value.parse::<f64>().ok()).collect();
    let xs: Vec<f64> = numeric.unwrap_or_else(|| (0..rows.len()).map(|i| i as f64).collect());
    let line = |name: String, f: &dyn Fn(&SweepRow) -> Option<f64>| Series {
        name,
        points: xs
            .iter()
            .zip(rows)
            .filter_map(|(&x, r)| f(r).map(|y| (x, 100.0 * y)))
            .collect(),
    };
    let first = &rows[0];
    let mut lines = vec![
        line("clean".into(), &|r| Some(r.clean_accuracy)),
        line(
            format!("PGD-{} (l-inf {:.4})", first.pgd_steps, first.eps),
            &|r| Some(r.pgd_accuracy),
        ),
    ];
    if let Some(name) = rows.iter().find_map(|r| r.autoattack.clone()) {
        lines.push(line(name, &|r| r.autoattack_accuracy));
    }
    let x_label = if o.key == "lambdas" {
        "lambda (weight of the part loss)".to_string()
    } else {
        o.key.clone()
    };
    charts::figure(
        &o.out.join("sweep.png"),
        &[Panel {
            title: format!("Accuracy against {}", o.key),
            x_label,
            y_label: "accuracy (%)".into(),
            lines,
            markers: Vec::new(),
            y_range: None,
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_folders() {
        assert_eq!(parse_values("0, 0.25,1").unwrap(), ["0", "0.25", "1"]);
        assert!(parse_values(" , ").is_err());
        assert!(parse_values("1,1")
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert_eq!(
            variant_dir(Path::new("o"), "lambdas", "0.25"),
            Path::new("o/lambdas_0.25")
        );
        assert_eq!(
            variant_dir(Path::new("o"), "act", "a/b c"),
            Path::new("o/act_a_b_c")
        );
    }

    #[test]
    fn variants_are_checked_before_anything_runs() {
        let o = SweepOptions {
            key: "lambdas".into(),
            values: vec!["0.5".into()],
            out: PathBuf::from("sw"),
            aa_images: 0,
            aa_version: AaVersion::Apgd,
            eval_batch_size: 0,
            progress: false,
        };
        let c = variant_config(&TrainConfig::default(), &o, "0.5").unwrap();
        assert_eq!(c.lambdas, 0.5);
        assert_eq!(
            c.output_dir,
            Path::new("sw/lambdas_0.5").display().to_string()
        );
        let e = variant_config(&TrainConfig::default(), &o, "heavy")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--lambdas") && e.contains("heavy"), "{e}");
        let o2 = SweepOptions {
            key: "device".into(),
            ..o
        };
        assert!(variant_config(&TrainConfig::default(), &o2, "cpu").is_err());
    }
}
