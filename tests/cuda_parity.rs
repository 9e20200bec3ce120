//! CPU vs CUDA, in one process: every op forward and backward, a whole MPM training step and an
//! attack step, and the fused kernels without an op (PGD step, mask targets) against plain
//! CPU references written here. Tolerances (relative L2, STYLE.md §8): f32 mode 1e-4 for
//! values, 1e-3 for gradients; bf16 storage 2e-2.
//! Without a working GPU every test prints `skipped: <reason>` and passes.

use mpm::autograd::{GradMode, Tape, Var};
use mpm::cuda::fused::{set_conv_gelu_impl, ConvGeluImpl};
use mpm::cuda::{ops as cu, DType};
use mpm::device::{Device, Precision};
use mpm::nn::{Act, Arch, Backbone, Ctx, Head, LossConfig, ModelSpec};
use mpm::ops::{self, BatchNormMode, Conv2dParams};
use mpm::tensor::Tensor;
use mpm::Result;
use rand::{RngExt, SeedableRng};

mod attack_refs;
use attack_refs::{pgd_l1_ref, pgd_ref, square_cases, square_linf_case};

const F32_VAL: f64 = 1e-4;
const F32_GRAD: f64 = 1e-3;
const BF16: f64 = 2e-2;

/// GPU tests hold this lock: the allocation-count test needs no other test allocating at the
/// same time, and the conv-GELU tests force an implementation process-wide.
static GPU_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn gpu() -> Option<(Device, std::sync::MutexGuard<'static, ()>)> {
    match mpm::cuda::unavailable_reason(0) {
        None => Some((
            Device::Cuda(0),
            GPU_LOCK.lock().unwrap_or_else(|p| p.into_inner()),
        )),
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

fn round_bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
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
    parity_n(name, dev, dtype, inputs, inputs.len(), f)
}

/// `parity` where only the first `n_grad` inputs require gradients (the rest are constants,
/// e.g. the weights of the input-gradient-only eval path).
fn parity_n(
    name: &str,
    dev: Device,
    dtype: DType,
    inputs: &[Tensor],
    n_grad: usize,
    f: impl Fn(&mut Tape, &[Var]) -> Result<Var>,
) {
    parity_tol(name, dev, dtype, inputs, n_grad, None, f)
}

/// `parity_n` with explicit (value, gradient) tolerances, for ops whose output type differs
/// from their input's (f32 images in, bf16 activations out).
fn parity_tol(
    name: &str,
    dev: Device,
    dtype: DType,
    inputs: &[Tensor],
    n_grad: usize,
    tol: Option<(f64, f64)>,
    f: impl Fn(&mut Tape, &[Var]) -> Result<Var>,
) {
    // bf16 mode: both sides start from the same bf16-representable inputs, so the comparison
    // measures the GPU's bf16 arithmetic, not the rounding of the inputs.
    let inputs: Vec<Tensor> = inputs
        .iter()
        .map(|x| {
            if dtype == DType::Bf16 {
                x.map(round_bf16)
            } else {
                x.clone()
            }
        })
        .collect();
    let run = |on: Option<Device>| -> (Tensor, Vec<Tensor>) {
        let mut t = Tape::new(GradMode::Full);
        let vars: Vec<Var> = inputs
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let x = match on {
                    Some(d) => x.to_device_as(d, dtype).unwrap(),
                    None => x.clone(),
                };
                if i < n_grad {
                    t.input(x, true)
                } else {
                    t.constant(x)
                }
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
        let grads = vars[..n_grad]
            .iter()
            .map(|v| g.get(*v).expect("gradient").to_device(Device::Cpu).unwrap())
            .collect();
        (out.to_device(Device::Cpu).unwrap(), grads)
    };
    let (yc, gc) = run(None);
    let (yg, gg) = run(Some(dev));
    let (tv, tg) = if let Some(t) = tol {
        t
    } else if dtype == DType::F32 {
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
    let Some((dev, _lock)) = gpu() else { return };
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
    parity(
        "normalize_input",
        dev,
        DType::F32,
        std::slice::from_ref(&img),
        |t, v| ops::normalize_input(t, v[0], ops::basic::IMAGENET_MEAN, ops::basic::IMAGENET_STD),
    );
    // The mixed-precision entry: f32 images in, bf16 activations out (bf16 tolerance), f32
    // input gradient.
    parity_tol(
        "normalize_input -> bf16",
        dev,
        DType::F32,
        std::slice::from_ref(&img),
        1,
        Some((BF16, BF16)),
        |t, v| {
            let y = ops::basic::normalize_input_as(
                t,
                v[0],
                ops::basic::IMAGENET_MEAN,
                ops::basic::IMAGENET_STD,
                DType::Bf16,
            )?;
            if t.value(y).is_cuda() {
                assert_eq!(t.value(y).cuda().unwrap().dtype, DType::Bf16);
            }
            Ok(y)
        },
    );
}

#[test]
fn linear_and_convolutions() {
    let Some((dev, _lock)) = gpu() else { return };
    let x = rand_tensor(&[4, 9], 4, -1.0, 1.0);
    let w = rand_tensor(&[5, 9], 5, -1.0, 1.0);
    let b = rand_tensor(&[5], 6, -1.0, 1.0);
    for dt in [DType::F32, DType::Bf16] {
        parity(
            "linear",
            dev,
            dt,
            &[x.clone(), w.clone(), b.clone()],
            |t, v| ops::linear(t, v[0], v[1], Some(v[2])),
        );
    }
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
        for dt in [DType::F32, DType::Bf16] {
            parity(name, dev, dt, &ins, move |t, v| {
                ops::conv2d(t, v[0], v[1], v.get(2).copied(), p)
            });
        }
    }
}

/// `--precision tf32`: f32 tensors through cuBLAS / cuDNN with TF32 tensor cores allowed. TF32
/// keeps 10 mantissa bits of each product's operands (relative error ~5e-4 per product, f32
/// accumulation), so the bound is 1e-2, between f32's and bf16's. Shapes with enough channels
/// for the tensor-core kernels to be eligible.
#[test]
fn tf32_math_mode_convolutions_and_linear() {
    let Some((dev, _lock)) = gpu() else { return };
    mpm::cuda::set_tf32(true);
    let x = rand_tensor(&[8, 64], 30, -1.0, 1.0);
    let w = rand_tensor(&[32, 64], 31, -1.0, 1.0);
    parity_tol(
        "linear (tf32)",
        dev,
        DType::F32,
        &[x, w],
        2,
        Some((1e-2, 1e-2)),
        |t, v| ops::linear(t, v[0], v[1], None),
    );
    let x = rand_tensor(&[2, 12, 12, 32], 32, -1.0, 1.0);
    for (name, wshape, p) in [
        (
            "conv 3x3 s1 (tf32)",
            [32, 3, 3, 32],
            Conv2dParams::new(1, 1),
        ),
        ("conv 1x1 (tf32)", [64, 1, 1, 32], Conv2dParams::new(1, 0)),
    ] {
        let w = rand_tensor(&wshape, 33, -0.5, 0.5);
        parity_tol(
            name,
            dev,
            DType::F32,
            &[x.clone(), w],
            2,
            Some((1e-2, 1e-2)),
            move |t, v| ops::conv2d(t, v[0], v[1], None, p),
        );
    }
    mpm::cuda::set_tf32(false);
}

#[test]
fn norm_pool_resize() {
    let Some((dev, _lock)) = gpu() else { return };
    for dt in [DType::F32, DType::Bf16] {
        norm_pool_resize_in(dev, dt);
    }
}

fn norm_pool_resize_in(dev: Device, dt: DType) {
    let tv = if dt == DType::F32 { F32_VAL } else { BF16 };
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
            &format!("{name} {dt:?}"),
            dev,
            dt,
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
            tv,
        );
        assert_close(
            &format!("{name} running_var"),
            &gs.1.to_device(Device::Cpu).unwrap(),
            &c.1,
            tv,
        );
    }
    // Max pool: distinct values per (image, channel) plane, exact in bf16 (integers <= 256),
    // so no window holds a tie and both devices route the gradient to the same element.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
    let mut v = vec![0.0f32; 2 * 9 * 9 * 4];
    for n in 0..2 {
        for c in 0..4 {
            let mut perm: Vec<usize> = (0..81).collect();
            for i in (1..81).rev() {
                perm.swap(i, rng.random_range(0..=i));
            }
            for (p, &k) in perm.iter().enumerate() {
                v[(n * 81 + p) * 4 + c] = k as f32 / 8.0;
            }
        }
    }
    let xm = Tensor::from_vec(&[2, 9, 9, 4], v).unwrap();
    parity("max_pool2d", dev, dt, std::slice::from_ref(&xm), |t, v| {
        ops::max_pool2d(t, v[0], 3, 2, 1)
    });
    let x = rand_tensor(&[2, 9, 9, 4], 15, -2.0, 2.0);
    parity(
        "adaptive_avg_pool2d 1x1",
        dev,
        dt,
        std::slice::from_ref(&x),
        |t, v| ops::adaptive_avg_pool2d(t, v[0], 1, 1),
    );
    parity(
        "adaptive_avg_pool2d 4x4",
        dev,
        dt,
        std::slice::from_ref(&x),
        |t, v| ops::adaptive_avg_pool2d(t, v[0], 4, 4),
    );
    parity(
        "resize_bilinear up",
        dev,
        dt,
        std::slice::from_ref(&x),
        |t, v| ops::resize_bilinear(t, v[0], 14, 17),
    );
    parity("resize_bilinear down", dev, dt, &[x], |t, v| {
        ops::resize_bilinear(t, v[0], 4, 5)
    });
}

#[test]
fn losses() {
    let Some((dev, _lock)) = gpu() else { return };
    let z = rand_tensor(&[6, 11], 16, -3.0, 3.0);
    for dt in [DType::F32, DType::Bf16] {
        parity(
            "cross_entropy_smooth",
            dev,
            dt,
            std::slice::from_ref(&z),
            |t, v| ops::cross_entropy_smooth(t, v[0], &[0, 3, 10, 5, 5, 1], 0.1),
        );
    }
    let s = 3311;
    let z = rand_tensor(&[2, 3, 3, s], 17, -4.0, 4.0);
    let mut tt = rand_tensor(&[2, 3, 3, s], 18, 0.0, 1.0).into_vec();
    for row in tt.chunks_mut(s) {
        let sum: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= sum);
    }
    let targets = Tensor::from_vec(&[2, 3, 3, s], tt).unwrap();
    // Both kernels of focal_loss.cu (the register-staged one is a candidate until timed).
    for imp in [cu::FocalImpl::Shared, cu::FocalImpl::Registers] {
        cu::set_focal_impl(imp);
        for dt in [DType::F32, DType::Bf16] {
            let tg = targets.clone();
            parity(
                &format!("focal_loss S=3311 ({imp:?})"),
                dev,
                dt,
                std::slice::from_ref(&z),
                move |t, v| ops::focal_loss(t, v[0], &tg, &[1.0, 0.0], 2.0),
            );
        }
    }
    cu::set_focal_impl(cu::FocalImpl::Shared);
}

/// The l1 reference itself (runs without a GPU): a step far outside the ball lands on its
/// surface (to f32 summation error) inside the box; one inside the ball is left as it is.
#[test]
fn pgd_l1_reference_projects_onto_the_ball() {
    let shape = [2, 16, 16, 3];
    let x0 = rand_tensor(&shape, 7, 0.0, 1.0);
    let x = rand_tensor(&shape, 8, 0.0, 1.0);
    let g = rand_tensor(&shape, 9, -1.0, 1.0);
    let d = x.numel() / 2;
    let out = pgd_l1_ref(
        x.data(),
        x0.data(),
        g.data(),
        &[3.0, 1e4],
        &[1.0, 1.0],
        0.05,
    );
    let l1 = |n: usize| -> f64 {
        (n * d..(n + 1) * d)
            .map(|i| (out[i] - x0.data()[i]).abs() as f64)
            .sum()
    };
    assert!(
        (l1(0) - 3.0).abs() < 1e-4,
        "cut sample: ||delta||_1 = {}",
        l1(0)
    );
    assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
    // Sample 1: budget larger than any point of the box, so only the clamp acts.
    let moved = (d..2 * d)
        .filter(|&i| (out[i] - x.data()[i]).abs() > 1e-6)
        .count();
    assert!(
        moved > 0 && moved <= d / 20 + 1,
        "{moved} coordinates moved"
    );
}

/// The projected step kernels against their CPU references, on small images (one block per
/// sample) and on images large enough for the sm_90 cluster kernels (both implementations).
#[test]
fn pgd_step_kernels() {
    let Some((dev, _lock)) = gpu() else { return };
    for (shape, seed) in [([3, 8, 8, 3], 19), ([3, 128, 128, 3], 40)] {
        let x0 = rand_tensor(&shape, seed, 0.0, 1.0);
        let x = rand_tensor(&shape, seed + 1, 0.0, 1.0);
        let g = rand_tensor(&shape, seed + 2, -1.0, 1.0);
        let xg = x.to_device(dev).unwrap();
        let d = x.numel() / 3;
        for imp in [cu::PgdImpl::Cluster, cu::PgdImpl::Block] {
            cu::set_pgd_impl(imp);
            let tag = format!("{shape:?} {imp:?}");
            let eps = [4.0 / 255.0, 8.0 / 255.0, 0.5];
            let step = [2.0 / 255.0, 4.0 / 255.0, 0.25];
            for (name, norm, l2) in [("linf", cu::Norm::Linf, false), ("l2", cu::Norm::L2, true)] {
                let got = cu::pgd_step(&xg, &x0, &g, &eps, &step, norm).unwrap();
                let want = Tensor::from_vec(
                    &shape,
                    pgd_ref(x.data(), x0.data(), g.data(), &eps, &step, l2),
                )
                .unwrap();
                assert_close(
                    &format!("pgd {name} {tag}"),
                    &got.to_device(Device::Cpu).unwrap(),
                    &want,
                    F32_VAL,
                );
            }
            // L1: x far from x0 (the projection cuts hard), and x = x0 with a small budget
            // used up by the step alone or not.
            let big = d as f32 * 0.01;
            for (what, xs, e1, s1) in [
                ("far", &x, [2.0f32, big, 0.1], [1.0f32, 1.0, 1.0]),
                ("from x0", &x0, [2.0, big, 1e3], [1.0, 3.0, 0.5]),
            ] {
                let got = cu::pgd_step(
                    &xs.to_device(dev).unwrap(),
                    &x0,
                    &g,
                    &e1,
                    &s1,
                    cu::Norm::L1(0.05),
                )
                .unwrap()
                .to_device(Device::Cpu)
                .unwrap();
                let want = pgd_l1_ref(xs.data(), x0.data(), g.data(), &e1, &s1, 0.05);
                let gv = got.data();
                for (n, &en) in e1.iter().enumerate() {
                    let r = n * d..(n + 1) * d;
                    let l1: f32 = r.clone().map(|i| (gv[i] - x0.data()[i]).abs()).sum();
                    assert!(
                        l1 <= en * 1.001 + 1e-5,
                        "pgd l1 {what} {tag}: sample {n} has ||delta||_1 = {l1} > {en}"
                    );
                    assert!(gv[r].iter().all(|v| (0.0..=1.0).contains(v)));
                }
                assert_close(
                    &format!("pgd l1 {what} {tag}"),
                    &got,
                    &Tensor::from_vec(&shape, want).unwrap(),
                    F32_VAL,
                );
            }
        }
    }
    cu::set_pgd_impl(cu::PgdImpl::Cluster);
}

/// Square's resident l-inf candidates and the row copy: the GPU must give the CPU twin's bits
/// (same arithmetic, no reductions), including windows at the image border.
#[test]
fn attack_row_kernels() {
    use mpm::attack::resident::{apgd_step, copy_rows, square_linf_candidates};
    use mpm::attack::Norm;
    let Some((dev, _lock)) = gpu() else { return };
    let shape = [5, 11, 9, 3];
    let x = rand_tensor(&shape, 23, 0.0, 1.0);
    let best = rand_tensor(&shape, 24, 0.0, 1.0);
    let p = square_linf_case();
    let eps = 8.0 / 255.0;
    let want = square_linf_candidates(&best, &x, &p, eps).unwrap();
    let (xg, bg) = (x.to_device(dev).unwrap(), best.to_device(dev).unwrap());
    let got = square_linf_candidates(&bg, &xg, &p, eps).unwrap();
    assert!(got.is_cuda());
    assert_eq!(got.shape(), want.shape());
    assert_eq!(
        got.to_device(Device::Cpu).unwrap().data(),
        want.data(),
        "square candidates"
    );
    let pairs = [3u32, 2, 0, 0];
    let want_rows = copy_rows(&best, &want, &pairs).unwrap();
    let got_rows = copy_rows(&bg, &got, &pairs).unwrap();
    assert!(got_rows.is_cuda());
    assert_eq!(
        got_rows.to_device(Device::Cpu).unwrap().data(),
        want_rows.data(),
        "copy_rows"
    );
    // Out of place: the GPU input keeps its values.
    assert_eq!(bg.to_device(Device::Cpu).unwrap().data(), best.data());
    // APGD's l-inf step (momentum 0.75, per-row step sizes; zero gradients included).
    let old = rand_tensor(&shape, 25, 0.0, 1.0);
    let mut gv = rand_tensor(&shape, 26, -1.0, 1.0).into_vec();
    gv.iter_mut().step_by(7).for_each(|v| *v = 0.0);
    let grad = Tensor::from_vec(&shape, gv).unwrap();
    let steps = [0.01f32, 0.03, 0.0, 0.02, 0.05];
    let want = apgd_step(Norm::Linf, &best, &old, &grad, &x, &steps, eps, 0.75).unwrap();
    let got = apgd_step(
        Norm::Linf,
        &bg,
        &old.to_device(dev).unwrap(),
        &grad.to_device(dev).unwrap(),
        &xg,
        &steps,
        eps,
        0.75,
    )
    .unwrap();
    assert!(got.is_cuda());
    assert_eq!(
        got.to_device(Device::Cpu).unwrap().data(),
        want.data(),
        "apgd_linf_step"
    );
    // The l2 step: f64 norm sums in another order, so equal up to the f32 rounding of a norm.
    let want = apgd_step(Norm::L2, &best, &old, &grad, &x, &steps, 0.5, 0.75).unwrap();
    let got = apgd_step(
        Norm::L2,
        &bg,
        &old.to_device(dev).unwrap(),
        &grad.to_device(dev).unwrap(),
        &xg,
        &steps,
        0.5,
        0.75,
    )
    .unwrap();
    assert!(got.is_cuda());
    assert_close(
        "apgd_l2_step",
        &got.to_device(Device::Cpu).unwrap(),
        &want,
        1e-6,
    );
    println!(
        "attack rows: square candidates, copy_rows and the APGD l-inf step bit-identical to the CPU"
    );
}

/// APGD-L1's resident step (per-sample top-k fractions, including 0: only the largest
/// coordinate moves) and the per-row L0 count, GPU against their CPU twins: on small images
/// (one block per sample) and on images large enough for the cluster kernels. The CPU projects
/// exactly, the GPU by a bracketed search that stops 1e-5 of eps inside the ball, so the
/// values agree to f32 rounding and both stay in the ball and the box.
#[test]
fn apgd_l1_step_and_row_l0_kernels() {
    use mpm::attack::resident::{apgd_l1_step, row_l0};
    let Some((dev, _lock)) = gpu() else { return };
    for (shape, seed) in [([4, 11, 9, 3], 60), ([4, 128, 128, 3], 61)] {
        let x0 = rand_tensor(&shape, seed, 0.0, 1.0);
        let xa = rand_tensor(&shape, seed + 1, 0.0, 1.0);
        let mut gv = rand_tensor(&shape, seed + 2, -1.0, 1.0).into_vec();
        gv.iter_mut().step_by(5).for_each(|v| *v = 0.0);
        let grad = Tensor::from_vec(&shape, gv).unwrap();
        let d = x0.numel() / 4;
        let (steps, topk) = ([0.5f32, 2.0, 1.0, 0.0], [0.2f32, 0.0, 0.05, 1.0]);
        let eps = d as f32 * 0.02;
        let want = apgd_l1_step(&xa, &grad, &x0, &steps, &topk, eps).unwrap();
        let x0g = x0.to_device(dev).unwrap();
        let got = apgd_l1_step(
            &xa.to_device(dev).unwrap(),
            &grad.to_device(dev).unwrap(),
            &x0g,
            &steps,
            &topk,
            eps,
        )
        .unwrap();
        assert!(got.is_cuda());
        let got = got.to_device(Device::Cpu).unwrap();
        assert_close(&format!("apgd_l1_step {shape:?}"), &got, &want, F32_VAL);
        for n in 0..4 {
            let r = n * d..(n + 1) * d;
            let l1: f32 = r
                .clone()
                .map(|i| (got.data()[i] - x0.data()[i]).abs())
                .sum();
            assert!(l1 <= eps * 1.001, "sample {n}: ||delta||_1 = {l1} > {eps}");
            assert!(got.data()[r].iter().all(|v| (0.0..=1.0).contains(v)));
        }
        // L0 counts: exact.
        let l0_cpu = row_l0(&want, &x0).unwrap();
        let l0_gpu = row_l0(&want.to_device(dev).unwrap(), &x0g).unwrap();
        assert_eq!(l0_gpu, l0_cpu, "row_l0 {shape:?}");
        println!("apgd_l1_step {shape:?}: L0 of the CPU step {l0_cpu:?}");
    }
}

/// FAB's resident ops, GPU against their CPU twins: the step (l-inf, l2: the GPU finds the
/// projections' roots by a bracketed search to 1e-6 where the CPU sorts; l1: the crossing
/// coordinate by a radix select; values agree to f32 rounding), including a row with a zero
/// gradient and one whose boundary is out of reach within the box; the per-row distances (f64
/// sums on the GPU); the shrink (bit for bit).
#[test]
fn fab_row_kernels() {
    use mpm::attack::fab::FabConfig;
    use mpm::attack::resident::{fab_step, row_dist, shrink_rows};
    use mpm::attack::Norm;
    let Some((dev, _lock)) = gpu() else { return };
    let shape = [4, 11, 9, 3];
    let im2 = rand_tensor(&shape, 70, 0.0, 1.0);
    let x1 = rand_tensor(&shape, 71, 0.0, 1.0);
    let mut wv = rand_tensor(&shape, 72, -1.0, 1.0).into_vec();
    let d = wv.len() / 4;
    wv.iter_mut().step_by(6).for_each(|v| *v = 0.0);
    wv[..d].iter_mut().for_each(|v| *v = 0.0); // row 0: no gradient
    let w = Tensor::from_vec(&shape, wv).unwrap();
    let df = [0.7f32, -1.3, 2.0, 1e6]; // row 3: out of reach
    let on = |t: &Tensor| t.to_device(dev).unwrap();
    for norm in [Norm::Linf, Norm::L2, Norm::L1] {
        let cfg = FabConfig::standard(norm, 0.1, 0);
        let want = fab_step(&x1, &im2, &w, &df, &cfg).unwrap();
        let got = fab_step(&on(&x1), &on(&im2), &on(&w), &df, &cfg).unwrap();
        assert!(got.is_cuda());
        assert_close(
            &format!("fab_step {norm}"),
            &got.to_device(Device::Cpu).unwrap(),
            &want,
            F32_VAL,
        );
    }
    for norm in [Norm::Linf, Norm::L2, Norm::L1] {
        let want = row_dist(&x1, &im2, norm).unwrap();
        let got = row_dist(&on(&x1), &on(&im2), norm).unwrap();
        for (g, c) in got.iter().zip(&want) {
            assert!(
                (g - c).abs() <= 1e-5 * c.abs(),
                "row_dist {norm}: {got:?} vs {want:?}"
            );
        }
    }
    let want = shrink_rows(&x1, &im2, &[3, 1], 0.9).unwrap();
    let got = shrink_rows(&on(&x1), &on(&im2), &[3, 1], 0.9).unwrap();
    assert_eq!(
        got.to_device(Device::Cpu).unwrap().data(),
        want.data(),
        "shrink_rows"
    );
}

/// Square's resident l2 / l1 candidates (kernels/square_rows.cu) against their CPU twin, with
/// windows at the border, overlapping and identical ones, both profile orientations, on small
/// images and at 224 px (window side 25, and 201: the first queries' side, where the serial
/// window sums are longest). l2: same element arithmetic and window sums, f64 norm sums in
/// another order, so equal up to the f32 rounding of a norm (checked at 1e-5 relative; a norm
/// one ulp off moves the candidate by ~1e-7). l1: lambda by a bracketed search (to 1e-9 of
/// eps) instead of the CPU's sort, so close (checked at 1e-5 absolute, values in [0, 1]) and,
/// like the CPU's, inside the ball (eps (1 - 1e-6) up to f32 rounding) and the box. A host
/// emulation of the kernels gave the CPU's bits on such inputs; the count is printed.
#[test]
fn square_l2l1_candidate_kernels() {
    use mpm::attack::resident::square_l2l1_candidates;
    use mpm::attack::Norm;
    let Some((dev, _lock)) = gpu() else { return };
    for (shape, s, seed) in [
        ([5, 11, 9, 3], 5u32, 70u64),
        ([3, 224, 224, 3], 25, 71),
        ([2, 224, 224, 3], 201, 72),
    ] {
        let d = shape[1] * shape[2] * shape[3];
        let x = rand_tensor(&shape, seed, 0.0, 1.0);
        // Best points: a perturbation of x in the box (some coordinates at 0 or 1).
        let noise = rand_tensor(&shape, seed + 1, -0.2, 0.2);
        let best = Tensor::from_vec(
            &shape,
            x.data()
                .iter()
                .zip(noise.data())
                .map(|(a, b)| (a + b).clamp(0.0, 1.0))
                .collect(),
        )
        .unwrap();
        let (xg, bg) = (x.to_device(dev).unwrap(), best.to_device(dev).unwrap());
        for (norm, eps, p) in square_cases(shape, s) {
            let want = square_l2l1_candidates(&best, &x, &p, norm, eps).unwrap();
            let got = square_l2l1_candidates(&bg, &xg, &p, norm, eps).unwrap();
            assert!(got.is_cuda());
            let got = got.to_device(Device::Cpu).unwrap();
            assert_eq!(got.shape(), want.shape());
            let same = got
                .data()
                .iter()
                .zip(want.data())
                .filter(|(a, b)| a == b)
                .count();
            let what = format!("square {norm} {shape:?} s {s} eps {eps}");
            println!(
                "{what}: {same} of {} values bit-identical to the CPU twin",
                got.numel()
            );
            if norm == Norm::L2 {
                assert_close(&what, &got, &want, 1e-5);
                continue;
            }
            let max_abs = got
                .data()
                .iter()
                .zip(want.data())
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(max_abs <= 1e-5, "{what}: max |gpu - cpu| = {max_abs}");
            assert!(
                got.data().iter().all(|v| (0.0..=1.0).contains(v)),
                "{what}: box"
            );
            for (a, &row) in p.rows.iter().enumerate() {
                let r0 = row as usize * d;
                let xr = &x.data()[r0..r0 + d];
                let l1: f64 = got.data()[a * d..(a + 1) * d]
                    .iter()
                    .zip(xr)
                    .map(|(g, x)| (g - x).abs() as f64)
                    .sum();
                assert!(
                    l1 <= eps as f64 * (1.0 + 1e-6),
                    "{what}, row {a}: ||z - x||_1 = {l1}"
                );
            }
        }
    }
}

/// APGD (l-inf, l2, l1), Square (l-inf, l2, l1) and FAB-T (l-inf, l2) with their state on
/// the GPU against the same attacks' host loops on the same GPU model: the passes see the same
/// batches (same kernels), and the resident steps round like the host's (APGD l1: the
/// projection's lambda to 1e-5 of eps; Square l2 / l1: f64 norm sums in another order, l1's
/// lambda by a search; FAB: the projections' roots by a search to 1e-6), so the outcomes should
/// agree; cuDNN's backward-data algorithms may accumulate in a
/// run-dependent order, so one borderline sample may differ.
/// Every fooled example must be in the threat model and fool the GPU model.
#[test]
fn resident_attacks_match_the_host_loops_on_the_gpu() {
    use mpm::attack::apgd::{Apgd, ApgdConfig};
    use mpm::attack::fab::{FabConfig, FabT};
    use mpm::attack::model::{argmax, in_threat_model};
    use mpm::attack::square::{Square, SquareConfig};
    use mpm::attack::{Classifier, Dims, EngineClassifier, Norm};
    let Some((dev, _lock)) = gpu() else { return };
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
    let mut m = EngineClassifier::new(spec, spec.init(3).unwrap())
        .on_device(dev)
        .unwrap();
    let dims = Dims { c: 3, h: 32, w: 32 };
    let (n, d) = (8, dims.len());
    let x = rand_tensor(&[n * d], 27, 0.0, 1.0).into_vec();
    let k = m.num_classes();
    let y: Vec<usize> = m.logits(&x, dims).unwrap().chunks(k).map(argmax).collect();
    let ids: Vec<u64> = (0..n as u64).collect();
    for (what, norm, eps) in [
        ("apgd-ce linf", Norm::Linf, 1.0 / 255.0),
        ("apgd-ce l2", Norm::L2, 0.1),
        ("apgd-ce l1", Norm::L1, 2.0),
        ("square linf", Norm::Linf, 2.0 / 255.0),
        ("fab-t linf", Norm::Linf, 1.0 / 255.0),
        ("fab-t l2", Norm::L2, 0.1),
        ("fab-t l1", Norm::L1, 2.0),
        ("square l2", Norm::L2, 0.5),
        ("square l1", Norm::L1, 2.0),
    ] {
        let mut out = Vec::new();
        for resident in [false, true] {
            let r = if what.starts_with("fab") {
                let mut cfg = FabConfig::standard(norm, eps, 1);
                cfg.n_iter = 20;
                cfg.n_target_classes = 3;
                cfg.resident = resident;
                FabT {
                    cfg,
                    model: &mut m,
                    stream: 4,
                }
                .perturb(&x, &y, &ids, dims)
            } else if what.starts_with("square") {
                let mut cfg = SquareConfig::standard(norm, eps, 1);
                cfg.n_queries = 100;
                cfg.resident = resident;
                Square {
                    cfg,
                    model: &mut m,
                    stream: 5,
                }
                .perturb(&x, &y, &ids, dims)
            } else {
                let mut cfg = ApgdConfig::standard_ce(norm, eps, 1);
                cfg.n_iter = 20;
                cfg.resident = resident;
                Apgd {
                    cfg,
                    model: &mut m,
                    stream: 1,
                }
                .perturb(&x, &y, &ids, dims)
            }
            .unwrap();
            out.push(r);
        }
        let (host, res) = (&out[0], &out[1]);
        let same_flags = (0..n).filter(|&i| host.1[i] == res.1[i]).count();
        let same_rows = (0..n)
            .filter(|&i| host.0[i * d..(i + 1) * d] == res.0[i * d..(i + 1) * d])
            .count();
        println!(
            "{what}: fooled host {} / resident {} of {n}; flags agree on {same_flags}, examples bit-identical on {same_rows}",
            host.1.iter().filter(|f| **f).count(),
            res.1.iter().filter(|f| **f).count()
        );
        assert!(
            same_flags + 1 >= n,
            "{what}: flags agree on {same_flags} of {n}"
        );
        // Re-evaluated in one batch of all rows (another shape than the attack's passes, so
        // a claim at a margin of a few ulps may flip): at most one such sample.
        let z = m.logits(&res.0, dims).unwrap();
        let mut unconfirmed = 0;
        for i in (0..n).filter(|&i| res.1[i]) {
            let r = i * d..(i + 1) * d;
            assert!(
                in_threat_model(norm, eps * (1.0 + 1e-5), &res.0[r.clone()], &x[r]),
                "{what}: sample {i} outside the threat model"
            );
            unconfirmed += (argmax(&z[i * k..(i + 1) * k]) == y[i]) as usize;
        }
        println!("{what}: claims not confirmed by a whole-batch pass: {unconfirmed}");
        assert!(
            unconfirmed <= 1,
            "{what}: {unconfirmed} claims do not fool the model"
        );
    }
}

#[test]
fn mask_targets_kernel() {
    let Some((dev, _lock)) = gpu() else { return };
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

fn tiny_mpm50() -> ModelSpec {
    ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet50,
            width: 4,
            act: Act::Gelu,
        },
        ..tiny_mpm()
    }
}

fn model_on(spec: &ModelSpec, on: Option<Device>) -> mpm::nn::ParamStore {
    let mut store = spec.init(5).unwrap();
    // BN running statistics set from the test images (40 train-mode passes at momentum 0.1
    // leave 1.5% of the initial 0/1): the eval-mode (attack) forward is then normalised, as a
    // trained model's is, instead of growing layer by layer from the init's unit variances.
    let images = batch(4, 64, spec.seg_classes).images;
    for _ in 0..40 {
        let mut ctx = Ctx::new(&mut store, GradMode::NoGrad, true);
        let x = ctx.tape.input(images.clone(), false);
        spec.forward(&mut ctx, x).unwrap();
    }
    if let Some(d) = on {
        store.to_device(d).unwrap();
    }
    store
}

struct Batch {
    images: Tensor,
    labels: Vec<usize>,
    targets: Vec<Tensor>,
    weights: Vec<f32>,
}

fn batch(n: usize, size: usize, s: usize) -> Batch {
    let images = rand_tensor(&[n, size, size, 3], 23, 0.0, 1.0);
    let labels = (0..n).map(|i| (i * 7 + 1) % 10).collect();
    let targets = [size / 8, size / 16, size / 32]
        .iter()
        .enumerate()
        .map(|(i, &h)| {
            let mut v = rand_tensor(&[n, h, h, s], 30 + i as u64, 0.0, 1.0).into_vec();
            for r in v.chunks_mut(s) {
                let sum: f32 = r.iter().sum();
                r.iter_mut().for_each(|x| *x /= sum);
            }
            Tensor::from_vec(&[n, h, h, s], v).unwrap()
        })
        .collect();
    let weights = (0..n).map(|i| if i == 2 { 0.0 } else { 1.0 }).collect();
    Batch {
        images,
        labels,
        targets,
        weights,
    }
}

/// One MPM training step (train-mode forward, loss with focal terms, backward): the loss and
/// every parameter gradient (on the host, sorted by name).
fn train_step(
    spec: &ModelSpec,
    store: &mut mpm::nn::ParamStore,
    b: &Batch,
    on: Option<Device>,
    prec: Precision,
) -> (f32, Vec<(String, Tensor)>) {
    let mut ctx = Ctx::new(store, GradMode::Full, true).with_precision(prec);
    let x = ctx.tape.input(
        on.map_or(b.images.clone(), |d| b.images.to_device(d).unwrap()),
        false,
    );
    let out = spec.forward(&mut ctx, x).unwrap();
    let loss = spec
        .loss(
            &mut ctx,
            &out,
            &b.labels,
            &b.targets,
            &b.weights,
            LossConfig::default(),
        )
        .unwrap();
    let lv = ctx.tape.value(loss).item();
    let g = ctx.tape.backward(loss).unwrap();
    let mut grads: Vec<(String, Tensor)> = ctx
        .used_params()
        .iter()
        .filter_map(|(k, v)| {
            g.get(*v).map(|t| {
                if on.is_some() {
                    // Weight gradients reach the optimiser as f32 in every precision.
                    assert_eq!(cu::dtype_of(t), DType::F32, "gradient of {k} not f32");
                }
                (k.clone(), t.to_device(Device::Cpu).unwrap())
            })
        })
        .collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    (lv, grads)
}

/// Attack gradient step: eval mode, input gradient only, of the smoothed CE.
fn attack_grad(
    spec: &ModelSpec,
    store: &mut mpm::nn::ParamStore,
    b: &Batch,
    x: &Tensor,
    on: Option<Device>,
    prec: Precision,
) -> Tensor {
    let mut ctx = Ctx::new(store, GradMode::InputGradOnly, false).with_precision(prec);
    let xv = ctx
        .tape
        .input(on.map_or(x.clone(), |d| x.to_device(d).unwrap()), true);
    let logits = spec.forward_logits(&mut ctx, xv).unwrap();
    let loss = ops::cross_entropy_smooth(&mut ctx.tape, logits, &b.labels, 0.1).unwrap();
    let g = ctx.tape.backward(loss).unwrap();
    let gx = g.get(xv).unwrap();
    if on.is_some() {
        assert_eq!(cu::dtype_of(gx), DType::F32, "input gradient not f32");
    }
    gx.to_device(Device::Cpu).unwrap()
}

/// Whole MPM training step and attack step (input gradient + Linf PGD step), GPU vs CPU.
/// f32: loss 1e-4, every parameter gradient 1e-3. bf16: 2e-2 for the loss, for the input
/// gradient and for all parameter gradients taken together; single parameters are printed
/// and held to 2e-1 only, a gross-error bound: a bf16 step through a dozen train-mode BN
/// backwards loses more on the small gradients of some early layers than the 2e-2 op-level
/// budget (measured on the H200, 2026-11-28, R18-MPM at batch 4, 64x64: up to 1.2e-1 on
/// `segmenter.layer1.0.bn1.bias`, 8.8e-2 on `segmenter.conv1.weight`, under 3.5e-2 on the
/// heads and classifier); the global figure is the one that matters to the optimiser.
/// Every figure is printed before any is asserted, so one run shows them all.
fn model_parity(name: &str, dev: Device, spec: &ModelSpec, prec: Precision) {
    let b = batch(4, 64, spec.seg_classes);
    // bf16: these tiny random-init models in train mode (BN over a few values per channel at
    // 64x64) are ill-conditioned, so the parameter-gradient bounds scale with how far the
    // CPU's own f32 gradients move when only images and weights are rounded to bf16
    // (`bf16_rounding_sensitivity`, parameters / attack input gradient: R18-MPM 5.3e-2 /
    // 7.3e-2, R50-MPM (width 4) 6.4e-1 / 6.8e-1, so R50's bf16 bounds only catch gross errors;
    // R18's are the informative ones). The loss keeps the fixed 2e-2.
    let (tl, tg, tparam, tall) = match prec {
        Precision::F32 => (F32_VAL, F32_GRAD, F32_GRAD, F32_GRAD),
        Precision::Tf32 => unreachable!("model parity runs f32 and bf16"),
        Precision::Bf16 => {
            let (sens, sens_x) = bf16_rounding_sensitivity(spec);
            println!(
                "{name}: bf16 rounding sensitivity of the CPU gradients: parameters {sens:.2e}, \
                 input {sens_x:.2e}"
            );
            (
                BF16,
                (3.0 * sens_x).max(BF16),
                // Where rounding alone moves the gradients by more than 25%, single
                // parameters say nothing (R50 width 4); only the global figure is held.
                if sens > 0.25 {
                    f64::INFINITY
                } else {
                    (3.0 * sens).max(2e-1)
                },
                (3.0 * sens).max(BF16),
            )
        }
    };
    let (lc, gc) = train_step(spec, &mut model_on(spec, None), &b, None, Precision::F32);
    let (lg, gg) = train_step(spec, &mut model_on(spec, Some(dev)), &b, Some(dev), prec);
    let rel = ((lg - lc) / lc).abs() as f64;
    println!("{name} train loss: cpu {lc} gpu {lg} (rel {rel:.2e})");
    assert_eq!(gc.len(), gg.len());
    let (mut all_c, mut all_g) = (Vec::new(), Vec::new());
    let mut worst = (0.0f64, String::new());
    for ((na, a), (nb, bb)) in gg.iter().zip(&gc) {
        assert_eq!(na, nb);
        assert_eq!(a.shape(), bb.shape(), "{name} grad {na}: shapes differ");
        let e = rel_l2(a.data(), bb.data());
        println!("{name} grad {na}: rel L2 {e:.2e} (bound {tparam:.0e})");
        if e > worst.0 || e.is_nan() {
            worst = (e, na.clone());
        }
        all_g.extend_from_slice(a.data());
        all_c.extend_from_slice(bb.data());
    }
    let e = rel_l2(&all_g, &all_c);
    println!("{name} all parameter gradients: rel L2 {e:.2e} (bound {tall:.1e})");
    assert!(rel <= tl, "{name}: training loss differs: {rel:.3e}");
    // Checked at the end, so the attack figures below are printed too.
    let params_ok = worst.0 <= tparam && e <= tall;
    let params_msg = format!(
        "{name}: worst parameter gradient {} rel L2 {:.3e} (bound {tparam:.1e}), all {e:.3e} \
         (bound {tall:.1e})",
        worst.1, worst.0
    );
    // Attack step, with each conv-GELU implementation of the eval path.
    let gxc = attack_grad(spec, &mut model_on(spec, None), &b, &b.images, None, prec);
    for imp in [ConvGeluImpl::Fused, ConvGeluImpl::Cudnn] {
        set_conv_gelu_impl(Some(imp));
        let mut store = model_on(spec, Some(dev));
        let gxg = attack_grad(spec, &mut store, &b, &b.images, Some(dev), prec);
        set_conv_gelu_impl(None);
        assert_close(
            &format!("{name} attack input gradient ({imp:?})"),
            &gxg,
            &gxc,
            tg,
        );
    }
    let n = b.labels.len();
    let eps = vec![4.0 / 255.0; n];
    let st = vec![2.0 / 255.0; n];
    let gxg = attack_grad(
        spec,
        &mut model_on(spec, Some(dev)),
        &b,
        &b.images,
        Some(dev),
        prec,
    );
    let adv = cu::pgd_step(
        &b.images.to_device(dev).unwrap(),
        &b.images,
        &gxg,
        &eps,
        &st,
        cu::Norm::Linf,
    )
    .unwrap()
    .to_device(Device::Cpu)
    .unwrap();
    // The step itself is checked on the GPU's own gradient (the gradients were compared
    // above): in bf16 a gradient off by the rounding flips the sign of small components, which
    // says nothing about the step kernel.
    let want = pgd_ref(
        b.images.data(),
        b.images.data(),
        gxg.data(),
        &eps,
        &st,
        false,
    );
    let bad = adv
        .data()
        .iter()
        .zip(&want)
        .filter(|(a, w)| (**a - **w).abs() > 1e-6)
        .count();
    println!("{name} PGD step: {bad} pixels differ from the CPU step");
    assert!(
        bad * 1000 <= adv.numel(),
        "{name}: PGD step differs on {bad} of {} pixels",
        adv.numel()
    );
    assert!(params_ok, "{params_msg}");
}

#[test]
fn mpm_training_step_and_attack_step() {
    let Some((dev, _lock)) = gpu() else { return };
    model_parity("R18-MPM f32", dev, &tiny_mpm(), Precision::F32);
    model_parity("R50-MPM f32", dev, &tiny_mpm50(), Precision::F32);
}

/// How far the CPU's own f32 parameter gradients move when only the images and the weights are
/// rounded to bf16 (activations stay f32): the conditioning of this small random-init test
/// problem, against which a whole bf16 step is judged. Runs without a GPU.
fn bf16_rounding_sensitivity(spec: &ModelSpec) -> (f64, f64) {
    let b = batch(4, 64, spec.seg_classes);
    let (_, exact) = train_step(spec, &mut model_on(spec, None), &b, None, Precision::F32);
    let mut store = model_on(spec, None);
    for (_, e) in store.iter_mut() {
        e.tensor = e.tensor.map(round_bf16);
    }
    let rb = Batch {
        images: b.images.map(round_bf16),
        labels: b.labels.clone(),
        targets: b.targets.clone(),
        weights: b.weights.clone(),
    };
    let (_, rounded) = train_step(spec, &mut store, &rb, None, Precision::F32);
    let (mut a, mut c) = (Vec::new(), Vec::new());
    for ((_, x), (_, y)) in rounded.iter().zip(&exact) {
        a.extend_from_slice(x.data());
        c.extend_from_slice(y.data());
    }
    let params = rel_l2(&a, &c);
    // The same for the attack's input gradient (eval mode).
    let gx = attack_grad(
        spec,
        &mut model_on(spec, None),
        &b,
        &b.images,
        None,
        Precision::F32,
    );
    let gxr = attack_grad(spec, &mut store, &rb, &rb.images, None, Precision::F32);
    (params, rel_l2(gxr.data(), gx.data()))
}

#[test]
fn bf16_rounding_sensitivity_of_the_test_models() {
    for (name, spec) in [("R18-MPM", tiny_mpm()), ("R50-MPM", tiny_mpm50())] {
        let (p, x) = bf16_rounding_sensitivity(&spec);
        println!(
            "{name}: rounding only images and weights to bf16 moves the parameter gradients by \
             rel L2 {p:.2e} and the attack input gradient by {x:.2e}"
        );
        assert!(p.is_finite() && p > 0.0 && x.is_finite() && x > 0.0);
    }
}

#[test]
fn mpm_training_step_and_attack_step_bf16() {
    let Some((dev, _lock)) = gpu() else { return };
    model_parity("R18-MPM bf16", dev, &tiny_mpm(), Precision::Bf16);
    model_parity("R50-MPM bf16", dev, &tiny_mpm50(), Precision::Bf16);
}

/// After the first (warm-up) step, training and attack steps make no device allocation: the
/// caching allocator serves every buffer. Same model, same batch, three steps each.
#[test]
fn no_device_allocation_after_warm_up() {
    let Some((dev, _lock)) = gpu() else { return };
    for prec in [Precision::F32, Precision::Bf16] {
        let spec = tiny_mpm50();
        let b = batch(4, 64, spec.seg_classes);
        let mut store = model_on(&spec, Some(dev));
        let mut counts = Vec::new();
        for _ in 0..3 {
            train_step(&spec, &mut store, &b, Some(dev), prec);
            counts.push(mpm::cuda::malloc_count());
        }
        for _ in 0..3 {
            attack_grad(&spec, &mut store, &b, &b.images, Some(dev), prec);
            counts.push(mpm::cuda::malloc_count());
        }
        println!("{prec}: cuMemAlloc count after each step: {counts:?}");
        assert_eq!(
            counts[0], counts[2],
            "{prec}: training steps 2-3 allocated device memory: {counts:?}"
        );
        assert_eq!(
            counts[3], counts[5],
            "{prec}: attack steps 2-3 allocated device memory: {counts:?}"
        );
    }
}

/// Fused BN + activation (training path) against the CPU composition, and conv + folded BN +
/// activation (eval path, both implementations, shapes crossing the 64-wide tiles) against
/// conv2d -> batch_norm(eval) -> activation on the CPU, forward and input gradient.
#[test]
fn fused_bn_act_and_conv_bn_act() {
    let Some((dev, _lock)) = gpu() else { return };
    let x = rand_tensor(&[3, 6, 6, 5], 40, -2.0, 2.0);
    let g = rand_tensor(&[5], 41, 0.5, 1.5);
    let b = rand_tensor(&[5], 42, -0.5, 0.5);
    let rm0 = rand_tensor(&[5], 43, -0.2, 0.2);
    let rv0 = rand_tensor(&[5], 44, 0.5, 1.5);
    for dt in [DType::F32, DType::Bf16] {
        for a in [Act::Gelu, Act::Relu] {
            for mode in [BatchNormMode::Train { momentum: 0.1 }, BatchNormMode::Eval] {
                let (rm0, rv0) = (rm0.clone(), rv0.clone());
                parity(
                    &format!("batch_norm_act {a:?} {mode:?} {dt:?}"),
                    dev,
                    dt,
                    &[x.clone(), g.clone(), b.clone()],
                    move |t, v| {
                        let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
                        ops::batch_norm_act(
                            t,
                            v[0],
                            v[1],
                            v[2],
                            &mut rm,
                            &mut rv,
                            mode,
                            1e-5,
                            Some(a),
                        )
                    },
                );
            }
        }
    }
    let x = rand_tensor(&[2, 9, 9, 8], 45, -1.0, 1.0);
    for (name, o, k, p) in [
        ("3x3 s1", 70, 3, Conv2dParams::new(1, 1)),
        ("3x3 s2", 6, 3, Conv2dParams::new(2, 1)),
        ("1x1", 130, 1, Conv2dParams::new(1, 0)),
        ("7x7 s2 p3", 4, 7, Conv2dParams::new(2, 3)),
    ] {
        let w = rand_tensor(&[o, k, k, 8], 46, -0.3, 0.3);
        let g = rand_tensor(&[o], 47, 0.5, 1.5);
        let b = rand_tensor(&[o], 48, -0.5, 0.5);
        let rm = rand_tensor(&[o], 49, -0.2, 0.2);
        let rv = rand_tensor(&[o], 50, 0.5, 1.5);
        for imp in [ConvGeluImpl::Fused, ConvGeluImpl::Cudnn] {
            for dt in [DType::F32, DType::Bf16] {
                for a in [Act::Gelu, Act::Relu] {
                    set_conv_gelu_impl(Some(imp));
                    let (rm, rv) = (rm.clone(), rv.clone());
                    let key = format!("test.{name}");
                    // bf16 ReLU: the conv output is rounded to bf16 before the folded BN
                    // shift is added, so pre-activations within rounding of 0 can change
                    // sign and switch the ReLU mask; on this small case that alone gave an
                    // input-gradient rel L2 of 2.6e-2 (H200, 2026-11-28; GELU, smooth: 3.5e-3).
                    let tol = (dt == DType::Bf16 && matches!(a, Act::Relu)).then_some((BF16, 5e-2));
                    parity_tol(
                        &format!("conv_bn_act {name} {imp:?} {dt:?} {a:?}"),
                        dev,
                        dt,
                        &[x.clone(), w.clone(), g.clone(), b.clone()],
                        1,
                        tol,
                        move |t, v| {
                            if t.value(v[0]).is_cuda() {
                                return ops::conv_bn_act_eval(
                                    t, v[0], v[1], v[2], v[3], &rm, &rv, 1e-5, a, p, &key,
                                );
                            }
                            let y = ops::conv2d(t, v[0], v[1], None, p)?;
                            let (mut rm, mut rv) = (rm.clone(), rv.clone());
                            let y = ops::batch_norm(
                                t,
                                y,
                                v[2],
                                v[3],
                                &mut rm,
                                &mut rv,
                                BatchNormMode::Eval,
                                1e-5,
                            )?;
                            match a {
                                Act::Gelu => ops::try_gelu(t, y),
                                Act::Relu => ops::try_relu(t, y),
                            }
                        },
                    );
                    set_conv_gelu_impl(None);
                }
            }
        }
    }
    // Auto mode times both on first use of a shape and records the choice.
    let xg = x.to_device(dev).unwrap();
    let mut t = Tape::new(GradMode::NoGrad);
    let xv = t.input(xg, false);
    let w = t.constant(rand_tensor(&[16, 3, 3, 8], 51, -0.3, 0.3));
    let g = t.constant(Tensor::full(&[16], 1.0));
    let b = t.constant(Tensor::zeros(&[16]));
    ops::conv_bn_act_eval(
        &mut t,
        xv,
        w,
        g,
        b,
        &Tensor::zeros(&[16]),
        &Tensor::full(&[16], 1.0),
        1e-5,
        Act::Gelu,
        Conv2dParams::new(1, 1),
        "test.auto",
    )
    .unwrap();
    let table = mpm::cuda::fused::conv_gelu_table();
    println!("conv-GELU choices: {table:?}");
    assert!(table.iter().any(|r| r.geom.o == 16 && r.geom.c == 8));
}

#[test]
fn out_of_memory_error_names_sizes() {
    let Some((dev, _lock)) = gpu() else { return };
    let Device::Cuda(ord) = dev else { return };
    let g = mpm::cuda::gpu(ord).unwrap();
    let (free, _) = g.mem_info().unwrap();
    let e = g.alloc(free * 4).unwrap_err();
    assert!(mpm::cuda::is_out_of_memory(&e), "{e}");
    let e = mpm::cuda::with_batch(e, 256).to_string();
    println!("{e}");
    assert!(e.contains(&format!("asked for {}", free * 4)), "{e}");
    assert!(e.contains("free") && e.contains("batch size 256"), "{e}");
}

/// No GPU needed: the precision flag and the OOM helpers other binaries use.
#[test]
fn precision_flag_and_oom_helpers() {
    assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert_eq!("f32".parse::<Precision>().unwrap(), Precision::F32);
    assert_eq!("tf32".parse::<Precision>().unwrap(), Precision::Tf32);
    for p in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
    }
    // tf32 stores f32; only the library math mode differs.
    assert_eq!(Precision::Tf32.activation_dtype(), DType::F32);
    let e = "fp16".parse::<Precision>().unwrap_err().to_string();
    assert!(
        e.contains("--precision") && e.contains("f32, tf32 or bf16"),
        "{e}"
    );
    let oom = mpm::Error::Device {
        device: "cuda:0".into(),
        msg: "out of memory (CUDA_ERROR_OUT_OF_MEMORY): asked for 10 bytes".into(),
    };
    assert!(mpm::cuda::is_out_of_memory(&oom));
    let e = mpm::cuda::with_batch(oom, 256).to_string();
    assert!(e.contains("at batch size 256"), "{e}");
    let other = mpm::Error::Msg("x".into());
    assert!(!mpm::cuda::is_out_of_memory(&other));
    assert_eq!(mpm::cuda::with_batch(other, 3).to_string(), "x");
}
