//! Attack throughput against the reference PyTorch AutoAttack, same model, data and machine,
//! in the same run (issue 6):
//!   (a) APGD-CE step: images x (K + 1) gradient evaluations per second on one batch;
//!   (b) full AutoAttack (standard, or the budgets given) on N images: images per second,
//!       with the robust accuracy reached (only comparable at equal robust accuracy).
//! The reference is run by `scripts/bench_attack_pytorch.py` (skipped with a printed reason
//! when PyTorch or the `autoattack` package is missing; `--autoattack-path DIR` is passed on).
//!
//! `cargo bench --bench attack -- [--weights W --data X --arch resnet18 --num-classes 10]
//!     [--norm Linf --eps 0.03137255] [--batch 16] [--iters 20] [--n 16] [--n-iter 100]
//!     [--square-queries 5000] [--repeats R] [--autoattack-path DIR] [--no-torch] [--skip-full]`
//! `--repeats R`: the full AutoAttack runs R times, engine and reference alternating; the
//! ratio printed is the median over rounds, of wall time and of CPU time.
//! Without `--weights`: a random ResNet-18 (width 8, 32x32), labels = its predictions.

use mpm::attack::apgd::{Apgd, ApgdConfig};
use mpm::attack::autoattack::{AutoAttack, AutoAttackConfig};
use mpm::attack::imagefolder::{EvalSet, TensorSet};
use mpm::attack::model::argmax;
use mpm::attack::{Classifier, Dims, EngineClassifier, Norm};
use mpm::audit::files::{load_model, ModelArgs};
use mpm::io::{self, HostTensor, NamedTensors};
use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec, StateValue};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num<T: std::str::FromStr>(name: &str, default: T) -> T {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // The calling thread runs the engine's parallel loops itself (as the binary does).
    mpm::attack::run::join_global_pool();
    let flag = |f: &str| std::env::args().any(|a| a == f);
    let batch: usize = num("--batch", 16);
    let iters: usize = num("--iters", 20);
    let n: usize = num("--n", 16);
    let n_iter: usize = num("--n-iter", 100);
    let queries: usize = num("--square-queries", 5000);
    let norm: Norm = arg("--norm")
        .unwrap_or("Linf".into())
        .parse()
        .expect("--norm");
    let eps: f32 = num("--eps", 8.0 / 255.0);
    let arch = arg("--arch").unwrap_or("resnet18".into());
    let act = arg("--act").unwrap_or("gelu".into());
    let tmp = std::env::temp_dir().join(format!("mpm_bench_attack_{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let (weights, data, classes) = match (arg("--weights"), arg("--data")) {
        (Some(w), Some(d)) => (
            PathBuf::from(w),
            PathBuf::from(d),
            num("--num-classes", 10usize),
        ),
        _ => random_fixture(&tmp, n.max(batch)),
    };
    let margs = ModelArgs {
        arch: arch.clone(),
        act: act.clone(),
        num_classes: classes,
        head: "none".into(),
        seg_classes: None,
        levels: 3,
        no_top_down: false,
    };
    let (spec, store) = load_model(&weights, &margs).expect("weights");
    let set = TensorSet::load(&data, classes).expect("data");
    let dims = set.dims();
    let mut model = EngineClassifier::new(spec, store);
    let take = |k: usize| -> (Vec<f32>, Vec<usize>) {
        let k = k.min(set.len());
        let mut x = Vec::new();
        for i in 0..k {
            x.extend(set.image(i).expect("image"));
        }
        (x, (0..k).map(|i| set.label(i)).collect())
    };
    println!(
        "attack bench: {} on {}x{}, {norm} eps {eps}, rayon threads {}",
        spec.describe(),
        dims.h,
        dims.w,
        rayon::current_num_threads()
    );

    // (a) APGD-CE step
    let (xb, yb) = take(batch);
    let mut cfg = ApgdConfig::standard_ce(norm, eps, 0);
    cfg.n_iter = iters;
    cfg.use_largereps = false;
    cfg.n_restarts = 1;
    let ids: Vec<u64> = (0..yb.len() as u64).collect();
    // Every sample attacked: labels = predictions, so none is skipped as misclassified.
    let z = model.logits(&xb, dims).expect("logits");
    let k = model.num_classes();
    let yp: Vec<usize> = z.chunks(k).map(argmax).collect();
    let t0 = Instant::now();
    Apgd {
        cfg,
        model: &mut model,
        stream: 1,
    }
    .perturb(&xb, &yp, &ids, dims)
    .expect("apgd");
    let dt = t0.elapsed().as_secs_f64();
    // perturb = 2 clean forwards + (iters + 1) gradient evaluations.
    let apgd_rate = yb.len() as f64 * (iters + 1) as f64 / dt;
    println!(
        "cpu_apgd_ce_step_b{}: {apgd_rate:.1} images/s ({iters} iterations in {dt:.2} s)",
        yb.len()
    );

    // (b) full AutoAttack, engine and reference alternating `--repeats` times (the machine
    // may be shared: alternating exposes both to the same load; CPU seconds are reported
    // next to wall seconds because they are much less sensitive to other processes).
    let repeats: usize = num("--repeats", 1usize).max(1);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/bench_attack_pytorch.py"
    );
    let reference = |skip_apgd: bool, skip_full: bool| -> Result<serde_json::Value, String> {
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args(["--weights", weights.to_str().unwrap_or_default()])
            .args(["--data", data.to_str().unwrap_or_default()])
            .args(["--arch", &arch, "--act", &act])
            .args(["--num-classes", &classes.to_string()])
            .args(["--norm", &norm.to_string(), "--eps", &eps.to_string()])
            .args(["--batch", &batch.to_string(), "--iters", &iters.to_string()])
            .args(["--n", &n.to_string(), "--n-iter", &n_iter.to_string()])
            .args(["--square-queries", &queries.to_string()])
            .args(["--threads", &rayon::current_num_threads().to_string()]);
        if let Some(p) = arg("--autoattack-path") {
            cmd.args(["--autoattack-path", &p]);
        }
        if skip_apgd {
            cmd.arg("--skip-apgd");
        }
        if skip_full {
            cmd.arg("--skip-full");
        }
        match cmd.output() {
            Ok(o) if o.status.success() => {
                let out = String::from_utf8_lossy(&o.stdout);
                let line = out.lines().last().unwrap_or_default().to_string();
                println!("reference: {line}");
                serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))
            }
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
                .to_string()),
            Err(e) => Err(format!("python3: {e}")),
        }
    };
    let torch = !flag("--no-torch");
    let mut apgd_ref = None;
    let mut torch_err = None;
    let mut rounds: Vec<Round> = Vec::new();
    let (mut robust_e, mut robust_r) = (0.0, None);
    if flag("--skip-full") {
        if torch {
            match reference(false, true) {
                Ok(v) => apgd_ref = v["apgd_step_images_per_s"].as_f64(),
                Err(e) => torch_err = Some(e),
            }
        }
    } else {
        let (x, y) = take(n);
        let mut c = AutoAttackConfig::standard(norm, eps, 0);
        c.n_iter = n_iter;
        c.square_queries = queries;
        let ids: Vec<u64> = (0..y.len() as u64).collect();
        for round in 0..repeats {
            let (t0, c0) = (Instant::now(), cpu_seconds());
            let res = AutoAttack {
                cfg: c.clone(),
                model: &mut model,
            }
            .run_batch(&x, &y, &ids, dims)
            .expect("autoattack");
            let (dt, dc) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
            robust_e = res.iter().filter(|r| r.robust()).count() as f64 / y.len() as f64;
            let clean = res.iter().filter(|r| r.clean_correct).count() as f64 / y.len() as f64;
            println!(
                "cpu_autoattack_{}_n{} round {round}: {:.3} images/s ({dt:.1} s wall, {dc:.1} s CPU), clean {:.1}%, robust {:.1}%",
                c.version(),
                y.len(),
                y.len() as f64 / dt,
                100.0 * clean,
                100.0 * robust_e
            );
            let mut r = None;
            if torch && torch_err.is_none() {
                match reference(round > 0, false) {
                    Ok(v) => {
                        if round == 0 {
                            apgd_ref = v["apgd_step_images_per_s"].as_f64();
                        }
                        robust_r = v["robust_accuracy"].as_f64();
                        if let (Some(w), Some(cs)) = (
                            v["autoattack_seconds"].as_f64(),
                            v["autoattack_cpu_seconds"].as_f64(),
                        ) {
                            r = Some((w, cs));
                        }
                    }
                    Err(e) => torch_err = Some(e),
                }
            }
            rounds.push((dt, dc, r));
        }
    }
    match (&torch_err, torch) {
        (_, false) => println!("reference: skipped (--no-torch)"),
        (Some(e), _) => println!("reference: skipped ({e})"),
        _ => {}
    }
    if let Some(r) = apgd_ref {
        println!(
            "ratio apgd_ce_step (engine / reference): {:.2}x",
            apgd_rate / r
        );
    }
    let paired: Vec<(f64, f64, f64, f64)> = rounds
        .iter()
        .filter_map(|&(w, c, r)| r.map(|(rw, rc)| (w, c, rw, rc)))
        .collect();
    if !paired.is_empty() {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            let m = v.len() / 2;
            if v.len() % 2 == 1 {
                v[m]
            } else {
                0.5 * (v[m - 1] + v[m])
            }
        };
        let wall: Vec<f64> = paired.iter().map(|p| p.2 / p.0).collect();
        let cpu: Vec<f64> = paired.iter().map(|p| p.3 / p.1).collect();
        println!(
            "ratio autoattack (engine / reference, {} rounds): wall {:.2}x median (rounds: {}), CPU {:.2}x median (rounds: {}) at robust accuracy {:.1}% (engine) vs {:.1}% (reference)",
            paired.len(),
            median(wall.clone()),
            wall.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", "),
            median(cpu.clone()),
            cpu.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", "),
            100.0 * robust_e,
            100.0 * robust_r.unwrap_or(f64::NAN)
        );
    }
}

/// One round of (b): engine wall s, engine CPU s, reference (wall s, CPU s).
type Round = (f64, f64, Option<(f64, f64)>);

/// CPU seconds (user + system) of this process so far, from /proc (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces):
    // state is field 3, utime 14, stime 15 (clock ticks of 1/100 s, Linux's USER_HZ).
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// A random ResNet-18 (width 8) and `n` random 32x32 images labelled by its predictions.
fn random_fixture(dir: &std::path::Path, n: usize) -> (PathBuf, PathBuf, usize) {
    let spec = ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet18,
            width: 8,
            act: Act::Gelu,
        },
        num_classes: 10,
        seg_classes: 0,
        head: Head::None,
    };
    let store = spec.init(0).expect("init");
    let mut w = NamedTensors::new();
    for (k, v) in spec.state_dict(&store).expect("state") {
        w.insert(
            k,
            match v {
                StateValue::Float(t) => HostTensor::f32(t.shape, t.data),
                StateValue::Int(i) => HostTensor::i64(Vec::<usize>::new(), vec![i]),
            },
        );
    }
    let wp = dir.join("w.safetensors");
    io::save_safetensors(&wp, &w, &io::no_metadata()).expect("save");
    let dims = Dims { c: 3, h: 32, w: 32 };
    let x: Vec<f32> = (0..n * dims.len())
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    let mut m = EngineClassifier::new(spec, store);
    let z = m.logits(&x, dims).expect("logits");
    let y: Vec<i64> = z.chunks(10).map(|r| argmax(r) as i64).collect();
    let mut t = NamedTensors::new();
    t.insert("input".into(), HostTensor::f32(vec![n, 3, 32, 32], x));
    t.insert("target".into(), HostTensor::i64(vec![n], y));
    let xp = dir.join("x.safetensors");
    io::save_safetensors(&xp, &t, &io::no_metadata()).expect("save");
    (wp, xp, 10)
}
