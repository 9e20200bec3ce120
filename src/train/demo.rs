//! `mpm-train demo`: a self-contained comparison of a vanilla and an MPM ResNet-18 trained with
//! PGD adversarial training on a synthetic part dataset, in a few minutes on a CPU.

use super::config::TrainConfig;
use super::plot;
use super::run::{eval_trainer, run, RunOptions};
use super::source::BatchSource;
use super::trainer::{argmax, Trainer};
use crate::autograd::GradMode;
use crate::nn::Ctx;
use crate::{Error, Result};
use clap::{Arg, ArgMatches, Command};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub fn command() -> Command {
    Command::new("demo")
        .about(
            "Synthetic part data -> vanilla and MPM ResNet-18 with PGD AT -> clean / PGD-10 \
             table, curves and part overlays (no downloads; minutes on a CPU)",
        )
        .arg(Arg::new("out").long("out").default_value("runs/demo"))
        .arg(
            Arg::new("classes")
                .long("classes")
                .default_value("8")
                .value_parser(clap::value_parser!(usize)),
        )
        .arg(
            Arg::new("per-class")
                .long("per-class")
                .default_value("150")
                .value_parser(clap::value_parser!(usize)),
        )
        .arg(
            Arg::new("epochs")
                .long("epochs")
                .default_value("20")
                .value_parser(clap::value_parser!(usize)),
        )
        .arg(
            Arg::new("size")
                .long("size")
                .default_value("64")
                .value_parser(clap::value_parser!(usize)),
        )
        .arg(
            Arg::new("width")
                .long("width")
                .default_value("8")
                .value_parser(clap::value_parser!(usize)),
        )
        .arg(
            Arg::new("batch-size")
                .long("batch-size")
                .default_value("32")
                .value_parser(clap::value_parser!(usize)),
        )
        .arg(
            Arg::new("aa-images")
                .long("aa-images")
                .default_value("116")
                .value_parser(clap::value_parser!(usize))
                .help(
                    "AutoAttack (APGD-CE + APGD-T, l-inf 4/255) on this many val images; 0 = off",
                ),
        )
        .arg(
            Arg::new("aa-standard")
                .long("aa-standard")
                .action(clap::ArgAction::SetTrue)
                .help(
                    "Complete AutoAttack \"standard\": also run FAB-T and Square on the \
                     --aa-images images still robust after APGD-CE + APGD-T (slow on a CPU)",
                ),
        )
        .arg(
            Arg::new("no-progress")
                .long("no-progress")
                .action(clap::ArgAction::SetTrue),
        )
}

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub out: PathBuf,
    pub classes: usize,
    pub per_class: usize,
    pub epochs: usize,
    pub size: usize,
    pub width: usize,
    pub batch_size: usize,
    pub aa_images: usize,
    /// Also run FAB-T and Square (AutoAttack "standard") after APGD-CE + APGD-T.
    pub aa_standard: bool,
    pub progress: bool,
}

pub fn run_cli(m: &ArgMatches) -> Result<()> {
    let get = |k: &str| m.get_one::<usize>(k).copied().unwrap_or(0);
    let o = DemoOptions {
        out: PathBuf::from(
            m.get_one::<String>("out")
                .map_or("runs/demo", |s| s.as_str()),
        ),
        classes: get("classes"),
        per_class: get("per-class"),
        epochs: get("epochs"),
        size: get("size"),
        width: get("width"),
        batch_size: get("batch-size"),
        aa_images: get("aa-images"),
        aa_standard: m.get_flag("aa-standard"),
        progress: !m.get_flag("no-progress"),
    };
    demo(&o).map(|_| ())
}

/// The demo's configuration for one model kind.
pub fn demo_config(
    o: &DemoOptions,
    partmodel: &str,
    out: &Path,
    seg_classes: usize,
    data: &DemoData,
) -> Result<TrainConfig> {
    let mut c = TrainConfig::default();
    let s = |v: usize| v.to_string();
    for (k, v) in [
        ("train_dir", data.train.clone()),
        ("eval_dir", data.val.clone()),
        ("model", "resnet18".to_string()),
        ("width", s(o.width)),
        ("num_classes", s(o.classes)),
        ("seg_classes", s(seg_classes.max(2))),
        ("partmodel_type", partmodel.to_string()),
        ("epochs", s(o.epochs)),
        ("warmup_epochs", "1".into()),
        ("batch_size", s(o.batch_size)),
        ("input_size", s(o.size)),
        ("lr", "0.1".into()),
        ("warmup_lr", "0.01".into()),
        ("min_lr", "0.001".into()),
        ("weight_decay", "5e-4".into()),
        ("model_ema_decay", "0.95".into()),
        ("eval_every", s(2)),
        ("eval_attack_it", "10".into()),
        ("output_dir", out.display().to_string()),
        ("keep_checkpoints", "1".into()),
    ] {
        c.set(k, &v)?;
    }
    c.validate()?;
    Ok(c)
}

pub struct DemoRow {
    pub name: String,
    pub clean: f64,
    pub pgd: Vec<(f32, f64)>,
    pub pixel_acc: Option<f64>,
    pub miou: Option<f64>,
    /// `(images, robust accuracy)` under APGD-CE + APGD-T.
    pub autoattack: Option<(usize, f64)>,
    /// `(images, robust accuracy, seconds of FAB-T + Square)` under AutoAttack standard
    /// (`--aa-standard`).
    pub autoattack_standard: Option<(usize, f64, f64)>,
    pub seconds: f64,
}

pub fn demo(o: &DemoOptions) -> Result<Vec<DemoRow>> {
    let t0 = Instant::now();
    if o.classes < 2 || o.per_class < 2 {
        return Err(Error::flag(
            "--classes",
            "need at least 2 classes of 2 images",
        ));
    }
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let data = make_data(o)?;
    let probe = demo_config(o, "vanilla", &o.out, 0, &data)?;
    let train = super::folder::open(&probe, &data.train, "train_dir", true)?;
    let val = super::folder::open(&probe, &data.val, "eval_dir", false)?;
    let (train, val) = (train.as_ref(), val.as_ref());
    eprintln!(
        "demo: {} train / {} val images, {} classes, {} part classes, {}x{} px inputs ({:.1}s)",
        train.len(),
        val.len(),
        o.classes,
        data.seg_classes - 1,
        o.size,
        o.size,
        t0.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    for (name, kind) in [("vanilla", "vanilla"), ("MPM", "mpm")] {
        let dir = o.out.join(kind);
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = demo_config(o, kind, &dir, data.seg_classes, &data)?;
        eprintln!("training {name} ({})", cfg.spec()?.describe());
        let t = Instant::now();
        let s = run(
            &cfg,
            train,
            Some(val),
            &RunOptions {
                run_dir: dir.clone(),
                stop_after_steps: None,
                resume: None,
                progress: o.progress,
                plots: true,
                eval_batch_size: 64,
            },
        )?;
        let train_secs = t.elapsed().as_secs_f64();
        let eps = cfg.attack_eps as f32;
        let r = eval_trainer(&s.trainer, val, 64, &[eps, 2.0 * eps])?;
        eprintln!("{name}: {}", super::run::describe_eval(&r));
        let (mut aa, mut aa_std) = (None, None);
        if o.aa_images > 0 {
            let ta = Instant::now();
            let (v, std) = autoattack(&s.trainer, val, o.aa_images, eps, o.aa_standard)?;
            eprintln!(
                "{name}: AutoAttack ({}) robust accuracy {:.2}% on {} images ({:.0}s)",
                first_attacks(s.trainer.spec.num_classes)
                    .iter()
                    .map(|a| a.name().to_uppercase())
                    .collect::<Vec<_>>()
                    .join(" + "),
                100.0 * v.1,
                v.0,
                ta.elapsed().as_secs_f64() - std.map_or(0.0, |s| s.2)
            );
            if let Some(st) = std {
                eprintln!(
                    "{name}: AutoAttack standard (+ FAB-T + Square) robust accuracy {:.2}% on {} images (FAB-T + Square {:.0}s)",
                    100.0 * st.1,
                    st.0,
                    st.2
                );
            }
            aa = Some(v);
            aa_std = std;
        }
        curves.push((name, plot::read_curves(&dir.join("metrics.jsonl"))?));
        if kind == "mpm" {
            // Part names label the overlay's legend; without them it shows ids.
            let names = plot::part_names(&o.out.join("data/pin/parts.tsv")).unwrap_or_default();
            part_overlays(&s.trainer, val, 6, &names, &o.out.join("parts.png"))?;
        }
        rows.push(DemoRow {
            name: name.to_string(),
            clean: r.clean_acc,
            pgd: r.pgd_acc.clone(),
            pixel_acc: r.pixel_acc,
            miou: r.miou,
            autoattack: aa,
            autoattack_standard: aa_std,
            seconds: train_secs,
        });
    }
    let results: Vec<plot::RunResult<'_>> = curves
        .iter()
        .zip(&rows)
        .map(|((name, c), row)| plot::RunResult {
            name,
            curves: c,
            autoattack: row.autoattack.map(|a| a.1),
        })
        .collect();
    plot::compare_runs(
        &results,
        &format!(
            "AutoAttack APGD-CE+T ({} images)",
            rows.iter()
                .find_map(|r| r.autoattack.map(|a| a.0))
                .unwrap_or(0)
        ),
        &o.out.join("curves.png"),
    )?;
    let table = format_table(&rows);
    println!("{table}");
    let total = t0.elapsed().as_secs_f64();
    println!("demo wall time: {total:.0}s");
    let p = o.out.join("results.md");
    crate::data::imageio::write_atomic(&p, format!("{table}\nwall time {total:.0}s\n").as_bytes())?;
    Ok(rows)
}

pub fn format_table(rows: &[DemoRow]) -> String {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.1}", 100.0 * x));
    let aa_n = rows
        .iter()
        .find_map(|r| r.autoattack.map(|a| a.0))
        .unwrap_or(0);
    let std_n = rows.iter().find_map(|r| r.autoattack_standard.map(|a| a.0));
    let (std_head, std_rule) = match std_n {
        Some(n) => (
            format!(" AutoAttack standard acc % (eps 4/255, {n} images) |"),
            "---|",
        ),
        None => (String::new(), ""),
    };
    let mut s = format!(
        "| model | clean acc % | PGD-10 acc % (eps 4/255) | PGD-10 acc % (eps 8/255) | APGD-CE+T acc % (eps 4/255, {aa_n} images) |{std_head} part pixel acc % | part mIoU % | train s |\n|---|---|---|---|---|{std_rule}---|---|---|\n",
    );
    for r in rows {
        let a = |i: usize| pct(r.pgd.get(i).map(|p| p.1));
        let std_cell = if std_n.is_some() {
            format!(" {} |", pct(r.autoattack_standard.map(|a| a.1)))
        } else {
            String::new()
        };
        s += &format!(
            "| {} | {:.1} | {} | {} | {} |{std_cell} {} | {} | {:.0} |\n",
            r.name,
            100.0 * r.clean,
            a(0),
            a(1),
            pct(r.autoattack.map(|a| a.1)),
            pct(r.pixel_acc),
            pct(r.miou),
            r.seconds
        );
    }
    s
}

/// Image | label map | predicted parts (highest-resolution head of the EMA model) for the
/// first `n` validation images that have parts.
pub fn part_overlays(
    trainer: &Trainer,
    src: &dyn BatchSource,
    n: usize,
    names: &[String],
    path: &Path,
) -> Result<()> {
    let b = src.batch(0, 0, src.len().min(64), false)?;
    let keep: Vec<usize> = (0..b.len()).filter(|&i| b.has_parts[i]).take(n).collect();
    if keep.is_empty() {
        return Ok(());
    }
    let side = b.side();
    let mut store = trainer.eval_model().clone();
    let mut ctx = Ctx::new(&mut store, GradMode::NoGrad, false);
    let x = ctx.tape.input(b.images.to_device(trainer.device)?, false);
    let out = trainer.spec.forward(&mut ctx, x)?;
    let Some(seg) = out.segs.first() else {
        return Ok(());
    };
    let z = ctx.tape.value(*seg);
    let (h, c) = (z.shape()[1], z.shape()[3]);
    let maps = trainer.effective_maps(&b);
    let (mut imgs, mut gts, mut preds) = (Vec::new(), Vec::new(), Vec::new());
    for &i in &keep {
        imgs.extend_from_slice(&b.images.data()[i * side * side * 3..(i + 1) * side * side * 3]);
        gts.extend_from_slice(&maps[i * side * side..(i + 1) * side * side]);
        for p in 0..h * h {
            preds.push(argmax(
                &z.data()[(i * h * h + p) * c..(i * h * h + p + 1) * c],
            ));
        }
    }
    plot::overlays(&imgs, &gts, &preds, keep.len(), side, h, names, path)
}

/// Where the demo's data went.
pub struct DemoData {
    /// `train.txt` / `val.txt` list files of the training layout.
    pub train: String,
    pub val: String,
    /// S = parts + 1.
    pub seg_classes: usize,
}

/// `mpm-data synth` then `mpm-data labels` into `OUT/data` (no downloads).
fn make_data(o: &DemoOptions) -> Result<DemoData> {
    use crate::data::labels::{run_labels, ImageMode, LabelsConfig};
    use crate::data::synth::{run_synth, SynthConfig};
    let root = o.out.join("data");
    let _ = std::fs::remove_dir_all(&root);
    let raw = root.join("pinpp");
    let pin = root.join("pin");
    run_synth(&SynthConfig {
        out: raw.clone(),
        classes: o.classes,
        images_per_class: o.per_class,
        min_size: o.size,
        max_size: o.size * 3 / 2,
        seed: 0,
        faults: false,
        keep_truth: false,
        jpeg_quality: 92,
    })?;
    let summary = run_labels(&LabelsConfig {
        json_dir: raw.join("json"),
        including: Some(raw.join("including")),
        discarded: Some(raw.join("discarded_data.json")),
        category_names: Some(raw.join("category_name.json")),
        images: raw.join("images"),
        out: pin.clone(),
        image_mode: ImageMode::Symlink,
        val_fraction: 0.2,
        split_seed: 0,
        progress: false,
    })?;
    Ok(DemoData {
        train: pin.join("train.txt").display().to_string(),
        val: pin.join("val.txt").display().to_string(),
        seg_classes: summary.parts + 1,
    })
}

/// The APGD attacks of the demo's first AutoAttack pass: APGD-CE + APGD-T, as far as the
/// model's classes allow ([`AttackKind::fit_to_classes`]; the log names what ran).
fn first_attacks(num_classes: usize) -> Vec<crate::attack::AttackKind> {
    use crate::attack::AttackKind;
    AttackKind::fit_to_classes(&[AttackKind::ApgdCe, AttackKind::ApgdT], num_classes)
}

/// Robust accuracy under AutoAttack's APGD-CE and APGD-T (l-inf, 100 iterations, 9 target
/// classes at most, verified examples; `src/attack`) on `n` evenly spaced validation images.
/// FAB-T and Square of the "standard" version are left out to keep the demo within minutes,
/// unless `standard`: then they run on the images still robust after APGD (AutoAttack runs
/// each attack on the points the previous ones left), and the second value is
/// `(images, robust accuracy under all four, seconds the last two took)`.
#[allow(clippy::type_complexity)]
pub fn autoattack(
    trainer: &Trainer,
    src: &dyn BatchSource,
    n: usize,
    eps: f32,
    standard: bool,
) -> Result<((usize, f64), Option<(usize, f64, f64)>)> {
    use crate::attack::{AttackKind, AutoAttack, AutoAttackConfig, Dims, EngineClassifier, Norm};
    // Evenly spaced over the (class-ordered) validation set, so every class is represented.
    let all = src.batch(0, 0, src.len(), false)?;
    let side = all.side();
    let n = n.min(all.len());
    let pick: Vec<usize> = (0..n).map(|i| i * all.len() / n).collect();
    let px = side * side * 3;
    let nhwc: Vec<f32> = pick
        .iter()
        .flat_map(|&i| all.images.data()[i * px..(i + 1) * px].iter().copied())
        .collect();
    let labels: Vec<usize> = pick.iter().map(|&i| all.labels[i]).collect();
    let x = crate::nn::layout::nhwc_to_nchw(&nhwc, n, side, side, 3);
    let ids: Vec<u64> = pick.iter().map(|&i| i as u64).collect();
    let mut clf = EngineClassifier::new(trainer.spec, trainer.eval_model().clone());
    let mut cfg = AutoAttackConfig::standard(Norm::Linf, eps, trainer.cfg.seed);
    cfg.attacks = first_attacks(trainer.spec.num_classes);
    let mut aa = AutoAttack {
        cfg,
        model: &mut clf,
    };
    let dims = Dims {
        c: 3,
        h: side,
        w: side,
    };
    let res = aa.run_batch(&x, &labels, &ids, dims)?;
    let robust = res.iter().filter(|r| r.robust()).count();
    let apgd = (res.len(), robust as f64 / res.len().max(1) as f64);
    if !standard {
        return Ok((apgd, None));
    }
    let t = std::time::Instant::now();
    let keep: Vec<usize> = (0..res.len()).filter(|&i| res[i].robust()).collect();
    let mut still = 0;
    if !keep.is_empty() {
        let px = 3 * side * side;
        let xr: Vec<f32> = keep
            .iter()
            .flat_map(|&i| x[i * px..(i + 1) * px].iter().copied())
            .collect();
        let lr: Vec<usize> = keep.iter().map(|&i| labels[i]).collect();
        let ir: Vec<u64> = keep.iter().map(|&i| ids[i]).collect();
        let mut cfg = AutoAttackConfig::standard(Norm::Linf, eps, trainer.cfg.seed);
        cfg.attacks = vec![AttackKind::FabT, AttackKind::Square];
        let mut aa = AutoAttack {
            cfg,
            model: &mut clf,
        };
        let r2 = aa.run_batch(&xr, &lr, &ir, dims)?;
        still = r2.iter().filter(|r| r.robust()).count();
    }
    Ok((
        apgd,
        Some((
            res.len(),
            still as f64 / res.len().max(1) as f64,
            t.elapsed().as_secs_f64(),
        )),
    ))
}
