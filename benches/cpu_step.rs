//! CPU throughput of ResNet-50-GELU + MPM (S = 3,311, levels 3, top-down) at 224x224:
//! (a) a full training step (forward + backward to every parameter),
//! (b) the input-gradient-only pass an attack step needs (eval mode, no weight gradients).
//! When PyTorch is importable, `scripts/bench_pytorch.py` measures the same two passes on
//! this machine in the same run and the ratio is printed.
//!
//! `cargo bench --bench cpu_step [-- --batch 8 --repeats 3 --no-torch]`

use mpm::autograd::GradMode;
use mpm::nn::{Act, Arch, Backbone, Ctx, Head, LossConfig, ModelSpec};
use mpm::tensor::Tensor;
use std::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let batch = arg("--batch", 8);
    let size = arg("--size", 224);
    let repeats = arg("--repeats", 3);
    let no_torch = std::env::args().any(|a| a == "--no-torch");
    let s = 3311;
    let spec = ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet50,
            width: 64,
            act: Act::Gelu,
        },
        num_classes: 1000,
        seg_classes: s,
        head: Head::Mpm {
            levels: 3,
            top_down: true,
        },
    };
    let mut store = spec.init(0).expect("init");
    let images = Tensor::full(&[batch, size, size, 3], 0.5);
    let labels: Vec<usize> = (0..batch).map(|i| i * 7 % 1000).collect();
    let sizes = [size / 8, size / 16, size / 32];
    let targets: Vec<Tensor> = sizes
        .iter()
        .map(|&h| Tensor::full(&[batch, h, h, s], 1.0 / s as f32))
        .collect();
    let weights = vec![1.0f32; batch];

    let mut full_step = || {
        let mut ctx = Ctx::new(&mut store, GradMode::Full, true);
        let x = ctx.tape.input(images.clone(), false);
        let out = spec.forward(&mut ctx, x).expect("forward");
        let loss = spec
            .loss(
                &mut ctx,
                &out,
                &labels,
                &targets,
                &weights,
                LossConfig::default(),
            )
            .expect("loss");
        let g = ctx.tape.backward(loss).expect("backward");
        std::hint::black_box(g);
    };
    let time = |f: &mut dyn FnMut()| {
        f();
        let t0 = Instant::now();
        for _ in 0..repeats {
            f();
        }
        t0.elapsed().as_secs_f64() / repeats as f64
    };
    let t_full = time(&mut full_step);
    let mut store2 = spec.init(0).expect("init");
    let mut input_grad = || {
        let mut ctx = Ctx::new(&mut store2, GradMode::InputGradOnly, false);
        let x = ctx.tape.input(images.clone(), true);
        let logits = spec.forward_logits(&mut ctx, x).expect("forward");
        let loss =
            mpm::ops::cross_entropy_smooth(&mut ctx.tape, logits, &labels, 0.1).expect("loss");
        let g = ctx.tape.backward(loss).expect("backward");
        std::hint::black_box(g);
    };
    let t_in = time(&mut input_grad);
    let threads = rayon::current_num_threads();
    let full_ips = batch as f64 / t_full;
    let in_ips = batch as f64 / t_in;
    println!("cpu_r50mpm_full_step_b{batch}_{size}: {full_ips:.2} images/s ({t_full:.2} s/step, {threads} threads)");
    println!("cpu_r50mpm_input_grad_b{batch}_{size}: {in_ips:.2} images/s ({t_in:.2} s/step); input-grad pass costs {:.0}% of a full step", 100.0 * t_in / t_full);
    if no_torch {
        return;
    }
    let out = std::process::Command::new("python3")
        .args([
            "scripts/bench_pytorch.py",
            "--batch",
            &batch.to_string(),
            "--size",
            &size.to_string(),
            "--repeats",
            &repeats.to_string(),
            "--threads",
            &threads.to_string(),
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let line = text.lines().rev().find(|l| l.trim_start().starts_with('{'));
            let v: Option<serde_json::Value> = line.and_then(|l| serde_json::from_str(l).ok());
            match v {
                Some(v) => {
                    let tf = v["full_step_images_per_s"].as_f64().unwrap_or(f64::NAN);
                    let ti = v["input_grad_images_per_s"].as_f64().unwrap_or(f64::NAN);
                    println!(
                        "pytorch {} ({} threads): full step {tf:.2} images/s, input-grad {ti:.2} images/s",
                        v["torch_version"], v["threads"]
                    );
                    println!(
                        "ratio (mpm / pytorch): full step {:.2}x, input-grad {:.2}x",
                        full_ips / tf,
                        in_ips / ti
                    );
                }
                None => println!("pytorch reference printed no JSON line:\n{text}"),
            }
        }
        Ok(o) => println!(
            "pytorch reference skipped: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        ),
        Err(e) => println!("pytorch reference skipped: cannot run python3: {e}"),
    }
}
