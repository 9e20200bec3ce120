//! CPU vs CUDA, in one process: every op forward and backward, a whole MPM training step and an
//! attack step, and the fused kernels without an op (PGD step, mask targets) against plain
//! CPU references written here. Tolerances (relative L2, STYLE.md §8): f32 mode 1e-4 for
//! values, 1e-3 for gradients; bf16 storage 2e-2.
//! Without a working GPU every test prints `skipped: <reason>` and passes.

use mpm::autograd::{GradMode, Tape, Var};
use mpm::cuda::{ops as cu, DType};
use mpm::device::Device;
use mpm::nn::{Act, Arch, Backbone, Ctx, Head, LossConfig, ModelSpec};
use mpm::ops::{self, BatchNormMode, Conv2dParams};
use mpm::tensor::Tensor;
use mpm::Result;
use rand::{RngExt, SeedableRng};

const F32_VAL: f64 = 1e-4;
const F32_GRAD: f64 = 1e-3;
const BF16: f64 = 2e-2;

fn gpu() -> Option<Device> {
    match mpm::cuda::unavailable_reason(0) {
        None => Some(Device::Cuda(0)),
        Some(why) => {
            println!("skipped: {why}");
            None
        }
    }
}

fn rand_tensor(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| rng.random_range(lo..hi)).collect()).unwrap()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        num += ((*x - *y) as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

fn assert_close(what: &str, gpu: &Tensor, cpu: &Tensor, tol: f64) {
    assert_eq!(gpu.shape(), cpu.shape(), "{what}: shapes differ");
    let e = rel_l2(gpu.data(), cpu.data());
    println!(
        "{what}: rel L2 {e:.2e} ({:.0}% of {tol:.0e})",
        100.0 * e / tol
    );
    assert!(
        e <= tol && e.is_finite(),
        "{what}: rel L2 {e:.3e} > {tol:.0e}"
    );
}

/// Runs `f` on `inputs` (all requiring gradients) on the CPU and on `dev`, seeds backward with
/// the same random output gradient, and compares outputs and every input gradient.
fn parity(
    name: &str,
    dev: Device,
    dtype: DType,
    inputs: &[Tensor],
    f: impl Fn(&mut Tape, &[Var]) -> Result<Var>,
) {
    let run = |on: Option<Device>| -> (Tensor, Vec<Tensor>) {
        let mut t = Tape::new(GradMode::Full);
        let vars: Vec<Var> = inputs
            .iter()
            .map(|x| {
                let x = match on {
                    Some(d) => x.to_device_as(d, dtype).unwrap(),
                    None => x.clone(),
                };
                t.input(x, true)
            })
            .collect();
        let y = f(&mut t, &vars).unwrap();
        let out = t.value(y).clone();
        let seed = rand_tensor(out.shape(), 99, -1.0, 1.0);
        let seed = match on {
            Some(d) if out.numel() > 1 => seed.to_device_as(d, dtype).unwrap(),
            _ => seed,
        };
        let g = t.backward_with(y, seed).unwrap();
        let grads = vars
            .iter()
            .map(|v| g.get(*v).expect("gradient").to_device(Device::Cpu).unwrap())
            .collect();
        (out.to_device(Device::Cpu).unwrap(), grads)
    };
    let (yc, gc) = run(None);
    let (yg, gg) = run(Some(dev));
    let (tv, tg) = if dtype == DType::F32 {
        (F32_VAL, F32_GRAD)
    } else {
        (BF16, BF16)
    };
    assert_close(&format!("{name} forward"), &yg, &yc, tv);
    for (i, (a, b)) in gg.iter().zip(&gc).enumerate() {
        assert_close(&format!("{name} d input {i}"), a, b, tg);
    }
}

#[test]
fn auto_device_resolution_says_what_it_picked() {
    let (d, why) = mpm::device::DeviceRequest::Auto.resolve().unwrap();
    println!("--device auto -> {d}: {why}");
    assert!(why.starts_with(&d.to_string()));
}

#[test]
fn elementwise_ops() {
    let Some(dev) = gpu() else { return };
    let x = rand_tensor(&[2, 5, 5, 7], 1, -3.0, 3.0);
    let y = rand_tensor(&[2, 5, 5, 7], 2, -3.0, 3.0);
    for dt in [DType::F32, DType::Bf16] {
        parity("gelu", dev, dt, std::slice::from_ref(&x), |t, v| {
            Ok(ops::gelu(t, v[0]))
        });
        parity("relu", dev, dt, std::slice::from_ref(&x), |t, v| {
            Ok(ops::relu(t, v[0]))
        });
        parity("add", dev, dt, &[x.clone(), y.clone()], |t, v| {
            ops::add(t, v[0], v[1])
        });
        parity("scale", dev, dt, std::slice::from_ref(&x), |t, v| {
            Ok(ops::scale(t, v[0], -0.7))
        });
        parity("softmax", dev, dt, std::slice::from_ref(&x), |t, v| {
            Ok(ops::softmax_channels(t, v[0]))
        });
    }
    let img = rand_tensor(&[2, 6, 6, 3], 3, 0.0, 1.0);
    parity("normalize_input", dev, DType::F32, &[img], |t, v| {
        ops::normalize_input(t, v[0], ops::basic::IMAGENET_MEAN, ops::basic::IMAGENET_STD)
    });
}

#[test]
fn linear_and_convolutions() {
    let Some(dev) = gpu() else { return };
    let x = rand_tensor(&[4, 9], 4, -1.0, 1.0);
    let w = rand_tensor(&[5, 9], 5, -1.0, 1.0);
    let b = rand_tensor(&[5], 6, -1.0, 1.0);
    parity("linear", dev, DType::F32, &[x, w, b], |t, v| {
        ops::linear(t, v[0], v[1], Some(v[2]))
    });
    let x = rand_tensor(&[2, 9, 9, 8], 7, -1.0, 1.0);
    for (name, wshape, p, bias) in [
        ("conv 3x3 s1", [6, 3, 3, 8], Conv2dParams::new(1, 1), true),
        ("conv 3x3 s2", [6, 3, 3, 8], Conv2dParams::new(2, 1), false),
        ("conv 1x1", [16, 1, 1, 8], Conv2dParams::new(1, 0), false),
        (
            "conv 7x7 s2 p3",
            [4, 7, 7, 8],
            Conv2dParams::new(2, 3),
            false,
        ),
        (
            "depthwise 3x3",
            [8, 3, 3, 1],
            Conv2dParams::new(1, 1).groups(8),
            false,
        ),
    ] {
        let w = rand_tensor(&wshape, 8, -0.5, 0.5);
        let bb = rand_tensor(&[wshape[0]], 9, -0.5, 0.5);
        let mut ins = vec![x.clone(), w];
        if bias {
            ins.push(bb);
        }
        parity(name, dev, DType::F32, &ins, move |t, v| {
            ops::conv2d(t, v[0], v[1], v.get(2).copied(), p)
        });
    }
}

#[test]
fn norm_pool_resize() {
    let Some(dev) = gpu() else { return };
    let x = rand_tensor(&[3, 6, 6, 5], 10, -2.0, 2.0);
    let g = rand_tensor(&[5], 11, 0.5, 1.5);
    let b = rand_tensor(&[5], 12, -0.5, 0.5);
    for (name, mode) in [
        ("batch_norm train", BatchNormMode::Train { momentum: 0.1 }),
        ("batch_norm eval", BatchNormMode::Eval),
    ] {
        let init = (
            rand_tensor(&[5], 13, -0.2, 0.2),
            rand_tensor(&[5], 14, 0.5, 1.5),
        );
        // Each run (CPU, GPU) updates its own running statistics; compared below.
        let cpu_stats = std::cell::RefCell::new(init.clone());
        let gpu_stats = std::cell::RefCell::new(init);
        parity(
            name,
            dev,
            DType::F32,
            &[x.clone(), g.clone(), b.clone()],
            |t, v| {
                let cell = if t.value(v[0]).is_cuda() {
                    &gpu_stats
                } else {
                    &cpu_stats
                };
                let mut st = cell.borrow_mut();
                let (rm, rv) = &mut *st;
                ops::batch_norm(t, v[0], v[1], v[2], rm, rv, mode, 1e-5)
            },
        );
        let (c, gs) = (cpu_stats.into_inner(), gpu_stats.into_inner());
        assert_close(
            &format!("{name} running_mean"),
            &gs.0.to_device(Device::Cpu).unwrap(),
            &c.0,
            F32_VAL,
        );
        assert_close(
            &format!("{name} running_var"),
            &gs.1.to_device(Device::Cpu).unwrap(),
            &c.1,
            F32_VAL,
        );
    }
    let x = rand_tensor(&[2, 9, 9, 4], 15, -2.0, 2.0);
    parity(
        "max_pool2d",
        dev,
        DType::F32,
        std::slice::from_ref(&x),
        |t, v| ops::max_pool2d(t, v[0], 3, 2, 1),
    );
    parity(
        "adaptive_avg_pool2d 1x1",
        dev,
        DType::F32,
        std::slice::from_ref(&x),
        |t, v| ops::adaptive_avg_pool2d(t, v[0], 1, 1),
    );
    parity(
        "adaptive_avg_pool2d 4x4",
        dev,
        DType::F32,
        std::slice::from_ref(&x),
        |t, v| ops::adaptive_avg_pool2d(t, v[0], 4, 4),
    );
    parity(
        "resize_bilinear up",
        dev,
        DType::F32,
        std::slice::from_ref(&x),
        |t, v| ops::resize_bilinear(t, v[0], 14, 17),
    );
    parity("resize_bilinear down", dev, DType::F32, &[x], |t, v| {
        ops::resize_bilinear(t, v[0], 4, 5)
    });
}

#[test]
fn losses() {
    let Some(dev) = gpu() else { return };
    let z = rand_tensor(&[6, 11], 16, -3.0, 3.0);
    parity("cross_entropy_smooth", dev, DType::F32, &[z], |t, v| {
        ops::cross_entropy_smooth(t, v[0], &[0, 3, 10, 5, 5, 1], 0.1)
    });
    let s = 3311;
    let z = rand_tensor(&[2, 3, 3, s], 17, -4.0, 4.0);
    let mut tt = rand_tensor(&[2, 3, 3, s], 18, 0.0, 1.0).into_vec();
    for row in tt.chunks_mut(s) {
        let sum: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= sum);
    }
    let targets = Tensor::from_vec(&[2, 3, 3, s], tt).unwrap();
    for dt in [DType::F32, DType::Bf16] {
        let tg = targets.clone();
        parity(
            "focal_loss S=3311",
            dev,
            dt,
            std::slice::from_ref(&z),
            move |t, v| ops::focal_loss(t, v[0], &tg, &[1.0, 0.0], 2.0),
        );
    }
}

/// CPU reference of the Linf / L2 projected step (AutoAttack's formulas).
fn pgd_ref(x: &[f32], x0: &[f32], g: &[f32], eps: &[f32], step: &[f32], l2: bool) -> Vec<f32> {
    let d = x.len() / eps.len();
    let mut out = vec![0.0; x.len()];
    for n in 0..eps.len() {
        let r = n * d..(n + 1) * d;
        if !l2 {
            for i in r {
                let v = x[i] + step[n] * g[i].signum() * (g[i] != 0.0) as i32 as f32;
                out[i] = v.clamp(x0[i] - eps[n], x0[i] + eps[n]).clamp(0.0, 1.0);
            }
        } else {
            let gn = g[r.clone()].iter().map(|v| v * v).sum::<f32>().sqrt() + 1e-12;
            let delta: Vec<f32> = r
                .clone()
                .map(|i| x[i] + step[n] * g[i] / gn - x0[i])
                .collect();
            let dn = delta.iter().map(|v| v * v).sum::<f32>().sqrt();
            let f = eps[n].min(dn) / (dn + 1e-12);
            for (k, i) in r.enumerate() {
                out[i] = (x0[i] + delta[k] * f).clamp(0.0, 1.0);
            }
        }
    }
    out
}

#[test]
fn pgd_step_kernels() {
    let Some(dev) = gpu() else { return };
    let shape = [3, 8, 8, 3];
    let x0 = rand_tensor(&shape, 19, 0.0, 1.0);
    let x = rand_tensor(&shape, 20, 0.0, 1.0);
    let g = rand_tensor(&shape, 21, -1.0, 1.0);
    let eps = [4.0 / 255.0, 8.0 / 255.0, 0.5];
    let step = [2.0 / 255.0, 4.0 / 255.0, 0.25];
    let xg = x.to_device(dev).unwrap();
    for (name, norm, l2) in [("linf", cu::Norm::Linf, false), ("l2", cu::Norm::L2, true)] {
        let got = cu::pgd_step(&xg, &x0, &g, &eps, &step, norm).unwrap();
        let want = Tensor::from_vec(
            &shape,
            pgd_ref(x.data(), x0.data(), g.data(), &eps, &step, l2),
        )
        .unwrap();
        assert_close(
            &format!("pgd {name}"),
            &got.to_device(Device::Cpu).unwrap(),
            &want,
            F32_VAL,
        );
    }
    // L1: invariants (inside the ball and the box; moved along the largest gradients).
    let e1 = [2.0f32, 5.0, 0.1];
    let got = cu::pgd_step(&xg, &x0, &g, &e1, &[1.0, 1.0, 1.0], cu::Norm::L1(0.05))
        .unwrap()
        .into_vec();
    let d = got.len() / 3;
    for n in 0..3 {
        let l1: f32 = (n * d..(n + 1) * d)
            .map(|i| (got[i] - x0.data()[i]).abs())
            .sum();
        assert!(
            l1 <= e1[n] * 1.001 + 1e-5,
            "pgd l1: sample {n} has ||delta||_1 = {l1} > {}",
            e1[n]
        );
        assert!(got[n * d..(n + 1) * d]
            .iter()
            .all(|v| (0.0..=1.0).contains(v)));
    }
}

#[test]
fn mask_targets_kernel() {
    let Some(dev) = gpu() else { return };
    let Device::Cuda(ord) = dev else { return };
    let (n, h, w, s) = (2, 37, 45, 13);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(22);
    let labels: Vec<u16> = (0..n * h * w)
        .map(|_| rng.random_range(0..s as u16))
        .collect();
    let g = mpm::cuda::gpu(ord).unwrap();
    let outs = cu::mask_targets(&g, &labels, n, h, w, s, 28, &[14, 7], 0.1, DType::F32).unwrap();
    // CPU reference: nearest to 28x28, smoothed one-hot, then the engine's bilinear resize.
    let off = 0.1 / s as f32;
    let on = 1.0 - 0.1 + off;
    let near = |d: usize, i: usize, o: usize| {
        ((d as f32 * (i as f32 / o as f32)).floor() as usize).min(i - 1)
    };
    let mut base = vec![off; n * 28 * 28 * s];
    for b in 0..n {
        for y in 0..28 {
            for x in 0..28 {
                let l = labels[(b * h + near(y, h, 28)) * w + near(x, w, 28)] as usize;
                base[((b * 28 + y) * 28 + x) * s + l] = on;
            }
        }
    }
    let base = Tensor::from_vec(&[n, 28, 28, s], base).unwrap();
    assert_close(
        "mask 28x28",
        &outs[0].to_device(Device::Cpu).unwrap(),
        &base,
        F32_VAL,
    );
    for (k, o) in [14usize, 7].iter().enumerate() {
        let mut t = Tape::new(GradMode::NoGrad);
        let v = t.input(base.clone(), false);
        let r = ops::resize_bilinear(&mut t, v, *o, *o).unwrap();
        assert_close(
            &format!("mask {o}x{o}"),
            &outs[k + 1].to_device(Device::Cpu).unwrap(),
            t.value(r),
            F32_VAL,
        );
    }
}

fn tiny_mpm() -> ModelSpec {
    ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet18,
            width: 8,
            act: Act::Gelu,
        },
        num_classes: 10,
        seg_classes: 7,
        head: Head::Mpm {
            levels: 3,
            top_down: true,
        },
    }
}

#[test]
fn mpm_training_step_and_attack_step() {
    let Some(dev) = gpu() else { return };
    let spec = tiny_mpm();
    let (n, size) = (4, 64);
    let images = rand_tensor(&[n, size, size, 3], 23, 0.0, 1.0);
    let labels = [1usize, 4, 9, 0];
    let targets: Vec<Tensor> = [8usize, 4, 2]
        .iter()
        .enumerate()
        .map(|(i, &h)| {
            let mut v = rand_tensor(&[n, h, h, 7], 30 + i as u64, 0.0, 1.0).into_vec();
            for r in v.chunks_mut(7) {
                let s: f32 = r.iter().sum();
                r.iter_mut().for_each(|x| *x /= s);
            }
            Tensor::from_vec(&[n, h, h, 7], v).unwrap()
        })
        .collect();
    let weights = [1.0, 1.0, 0.0, 1.0];
    // Training step: loss and every parameter gradient.
    let step = |on: Option<Device>| {
        let mut store = spec.init(5).unwrap();
        if let Some(d) = on {
            for (_, e) in store.iter_mut() {
                e.tensor = e.tensor.to_device(d).unwrap();
            }
        }
        let mut ctx = Ctx::new(&mut store, GradMode::Full, true);
        let x = ctx.tape.input(
            on.map_or(images.clone(), |d| images.to_device(d).unwrap()),
            false,
        );
        let out = spec.forward(&mut ctx, x).unwrap();
        let loss = spec
            .loss(
                &mut ctx,
                &out,
                &labels,
                &targets,
                &weights,
                LossConfig::default(),
            )
            .unwrap();
        let lv = ctx.tape.value(loss).item();
        let g = ctx.tape.backward(loss).unwrap();
        let mut grads: Vec<(String, Tensor)> = ctx
            .used_params()
            .iter()
            .filter_map(|(k, v)| {
                g.get(*v)
                    .map(|t| (k.clone(), t.to_device(Device::Cpu).unwrap()))
            })
            .collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        (lv, grads)
    };
    let (lc, gc) = step(None);
    let (lg, gg) = step(Some(dev));
    let rel = ((lg - lc) / lc).abs() as f64;
    println!("MPM train loss: cpu {lc} gpu {lg} (rel {rel:.2e})");
    assert!(rel <= F32_VAL, "MPM training loss differs: {rel:.3e}");
    assert_eq!(gc.len(), gg.len());
    for ((name, a), (_, b)) in gg.iter().zip(&gc) {
        assert_close(&format!("MPM grad {name}"), a, b, F32_GRAD);
    }
    // Attack step: eval mode, input gradient only, then one Linf PGD step.
    let attack = |on: Option<Device>| {
        let mut store = spec.init(5).unwrap();
        if let Some(d) = on {
            for (_, e) in store.iter_mut() {
                e.tensor = e.tensor.to_device(d).unwrap();
            }
        }
        let mut ctx = Ctx::new(&mut store, GradMode::InputGradOnly, false);
        let x = ctx.tape.input(
            on.map_or(images.clone(), |d| images.to_device(d).unwrap()),
            true,
        );
        let logits = spec.forward_logits(&mut ctx, x).unwrap();
        let loss = ops::cross_entropy_smooth(&mut ctx.tape, logits, &labels, 0.1).unwrap();
        let g = ctx.tape.backward(loss).unwrap();
        g.get(x).unwrap().to_device(Device::Cpu).unwrap()
    };
    let (gxc, gxg) = (attack(None), attack(Some(dev)));
    assert_close("attack input gradient", &gxg, &gxc, F32_GRAD);
    let eps = vec![4.0 / 255.0; n];
    let st = vec![2.0 / 255.0; n];
    let adv = cu::pgd_step(
        &images.to_device(dev).unwrap(),
        &images,
        &gxg,
        &eps,
        &st,
        cu::Norm::Linf,
    )
    .unwrap();
    let want = Tensor::from_vec(
        images.shape(),
        pgd_ref(images.data(), images.data(), gxc.data(), &eps, &st, false),
    )
    .unwrap();
    assert_close(
        "attack PGD step",
        &adv.to_device(Device::Cpu).unwrap(),
        &want,
        F32_VAL,
    );
}
