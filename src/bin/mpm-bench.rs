//! mpm-bench: kernel throughput against ceilings measured in the same run (device-to-device
//! copy bandwidth, cuBLAS bf16 GEMM rate), and end-to-end images/s of an MPM adversarial
//! training step (2 PGD steps + a training step) and of an attack gradient step.
//!
//! `mpm-bench [--device auto|cpu|cuda:N] [--precision bf16|f32] [--batch 128] [--size 224]
//!            [--seg-classes 3311] [--repeats 5] [--tiny] [--skip-kernels] [--ddp-overhead]`
//! `--ddp-overhead` times only the full training step through NCCL at world size 1 against the
//! plain step (issue #19: target < 3%; docs/distributed.md).
//! Without a GPU it says so and stops, unless `--tiny` (a CPU smoke run at small sizes).
//! After the attack-step timing it prints, per ResNet-50 conv -> BN -> GELU shape at the
//! benchmark batch, the time of the fused conv-GELU kernel and of cuDNN + epilogue, and which
//! one the model uses (both timed on first use; `MPM_CONV_GELU=fused|cudnn` forces one).

use clap::Parser;
use mpm::attack::norms::linf_step_slice;
use mpm::autograd::GradMode;
use mpm::cuda::{ops as cu, DType};
use mpm::device::{Device, DeviceRequest};
use mpm::nn::{Act, Arch, Backbone, Ctx, Head, LossConfig, ModelSpec};
use mpm::ops;
use mpm::tensor::Tensor;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Kernel and end-to-end throughput of the MPM engine")]
struct Args {
    #[arg(long, default_value = "auto")]
    device: String,
    /// GPU precision of the end-to-end steps: bf16 (mixed: bf16 activations, f32 master
    /// weights and accumulation), tf32 (f32 tensors, TF32 tensor cores in cuBLAS/cuDNN) or f32
    /// (the parity mode).
    #[arg(long, default_value = "bf16")]
    precision: String,
    /// Only the end-to-end steps (skip the kernel throughput section).
    #[arg(long)]
    skip_kernels: bool,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    #[arg(long, default_value_t = 224)]
    size: usize,
    #[arg(long, default_value_t = 3311)]
    seg_classes: usize,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Small sizes (batch 2, 64x64, ResNet-18 width 16): a smoke run, CPU included.
    #[arg(long)]
    tiny: bool,
    /// Only the data-parallel overhead: the full MPM training step (`Trainer`) through NCCL at
    /// world size 1 (`dist::Dist::step`) against the plain step, alternating, medians.
    #[arg(long)]
    ddp_overhead: bool,
}

/// The data-parallel step at world size 1 on NCCL against the plain training step: the same
/// trainer and batch, the two timed alternately (`repeats` each after a warm-up of each), so
/// clock drift and caches hit both. Prints the medians and the overhead in percent.
fn ddp_overhead(d: Device, a: &Args) -> mpm::Result<()> {
    let Device::Cuda(ordinal) = d else {
        return Err(mpm::Error::Msg(
            "--ddp-overhead measures NCCL and needs a GPU".into(),
        ));
    };
    if let Some(why) = mpm::dist::nccl::unavailable_reason() {
        return Err(mpm::Error::Msg(format!("NCCL unavailable: {why}")));
    }
    let (arch, width, classes, seg, size) = if a.tiny {
        ("resnet18", "16", "10", 7, 64)
    } else {
        ("resnet50", "64", "1000", a.seg_classes, a.size)
    };
    let batch = if a.tiny { 2 } else { a.batch };
    let mut cfg = mpm::train::TrainConfig::default();
    for (k, v) in [
        ("model", arch),
        ("width", width),
        ("num_classes", classes),
        ("partmodel_type", "mpm"),
        ("precision", a.precision.as_str()),
    ] {
        cfg.set(k, v)?;
    }
    cfg.seg_classes = seg;
    cfg.input_size = size;
    cfg.batch_size = batch;
    cfg.device = format!("cuda:{ordinal}");
    let src = mpm::train::MemorySource::new(8, batch.div_ceil(8), size, 1);
    let b = mpm::train::BatchSource::batch(&src, 0, 0, batch, true)?;
    let mut t = mpm::train::Trainer::new(cfg, 1_000_000)?;
    t.to_device(d)?;
    let comm = mpm::dist::nccl::NcclComm::init(
        &mpm::dist::RankEnv::single(),
        ordinal,
        b"mpm-bench",
        mpm::dist::DEFAULT_TIMEOUT,
    )?;
    let dist = mpm::dist::Dist::new(Box::new(comm));
    println!(
        "data-parallel overhead: {arch}+MPM (S = {seg}), batch {batch}, {size} px, {} PGD steps, \
         NCCL world size 1 ({} gradient values in buckets of {} MB)",
        t.cfg.attack_it,
        t.model
            .iter()
            .filter(|(_, e)| e.kind == mpm::nn::Kind::Param)
            .map(|(_, e)| e.tensor.numel())
            .sum::<usize>(),
        mpm::dist::train::BUCKET_BYTES >> 20
    );
    let (mut plain, mut ddp) = (Vec::new(), Vec::new());
    for i in 0..=a.repeats.max(1) {
        let t0 = Instant::now();
        t.step(&b)?;
        sync(d)?;
        let p = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        dist.step(&mut t, &b)?;
        sync(d)?;
        let q = t1.elapsed().as_secs_f64();
        // The first pair warms both paths up.
        if i > 0 {
            plain.push(p);
            ddp.push(q);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    let (p, q) = (med(&mut plain), med(&mut ddp));
    println!(
        "step: plain {:.1} ms ({:.0} img/s), NCCL ws=1 {:.1} ms ({:.0} img/s), overhead {:+.2}% \
         (target < 3%)",
        p * 1e3,
        batch as f64 / p,
        q * 1e3,
        batch as f64 / q,
        100.0 * (q / p - 1.0)
    );
    Ok(())
}

fn sync(d: Device) -> mpm::Result<()> {
    if let Device::Cuda(n) = d {
        mpm::cuda::gpu(n)?.synchronize()?;
    }
    Ok(())
}

/// Median seconds of `repeats` runs of `f` after one warm-up run.
fn time(d: Device, repeats: usize, mut f: impl FnMut() -> mpm::Result<()>) -> mpm::Result<f64> {
    f()?;
    sync(d)?;
    let mut ts = Vec::new();
    for _ in 0..repeats.max(1) {
        let t0 = Instant::now();
        f()?;
        sync(d)?;
        ts.push(t0.elapsed().as_secs_f64());
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    Ok(ts[ts.len() / 2])
}

fn rand(shape: &[usize], seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    let v = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(shape, v).expect("sizes computed from the shape")
}

fn kernels(d: Device, a: &Args) -> mpm::Result<()> {
    let Device::Cuda(ord) = d else { return Ok(()) };
    let g = mpm::cuda::gpu(ord)?;
    println!("GPU: {} (sm_{})", g.name, g.arch);
    // Ceiling 1: device-to-device copy (bytes read + written).
    let bytes = 1usize << 30;
    let src = g.alloc(bytes)?;
    let dst = g.alloc(bytes)?;
    let t = time(d, a.repeats, || {
        let mut args = mpm::cuda::launch::Args::new()
            .push(src.ptr())
            .push(dst.ptr())
            .push((bytes / 16) as u64);
        let mut p = args.ptrs();
        // SAFETY: copy_v4(const float4*, float4*, u64) with two 1 GiB buffers of 16-byte vectors.
        unsafe { g.launch("copy_v4", (132 * 8, 1, 1), (256, 1, 1), 0, &mut p) }
    })?;
    let copy_bw = 2.0 * bytes as f64 / t;
    println!(
        "copy bandwidth          {:8.1} GB/s (ceiling for memory-bound kernels)",
        copy_bw / 1e9
    );
    // Ceiling 2: bf16 GEMM through cuBLAS, 8192^3.
    let n = 8192;
    let x = rand(&[n, n], 1).to_device_as(d, DType::Bf16)?;
    let y = cu::empty(&g, n * n, DType::Bf16)?;
    let xs = cu::st("bench", &x)?;
    use mpm::cuda::blas::{gemm, Mat};
    let t = time(d, a.repeats, || {
        gemm(
            &g,
            Mat {
                s: xs,
                rows: n,
                cols: n,
                t: false,
            },
            Mat {
                s: xs,
                rows: n,
                cols: n,
                t: true,
            },
            &y,
            false,
        )
    })?;
    let gemm_rate = 2.0 * (n as f64).powi(3) / t;
    let _ = GEMM_RATE.set(gemm_rate);
    println!(
        "bf16 GEMM (cuBLAS)      {:8.1} TFLOP/s (ceiling for matrix work)",
        gemm_rate / 1e12
    );
    // Named kernels.
    let (b, s) = (a.batch, a.seg_classes);
    let report = |name: &str, bytes: f64, t: f64| {
        println!(
            "{name:<24}{:8.1} GB/s  {:5.1}% of copy  ({:.3} ms)",
            bytes / t / 1e9,
            100.0 * bytes / t / copy_bw,
            t * 1e3
        );
    };
    // Both focal-loss kernels (shared-memory rows, the default; register-staged rows, the
    // candidate), then back to what the environment chose for the end-to-end figures.
    let focal_default = cu::focal_impl();
    for (imp, tag) in [
        (cu::FocalImpl::Shared, "smem"),
        (cu::FocalImpl::Registers, "regs"),
    ] {
        if imp == cu::FocalImpl::Registers && s > cu::FOCAL_REGS_MAX_S {
            continue;
        }
        cu::set_focal_impl(imp);
        for dt in [DType::F32, DType::Bf16] {
            let z = rand(&[b, 28, 28, s], 2).to_device_as(d, dt)?;
            let tt = Tensor::full(&[b, 28, 28, s], 1.0 / s as f32).to_device_as(d, dt)?;
            let w = vec![1.0f32; b];
            let t = time(d, a.repeats, || {
                cu::focal_loss(&z, &tt, &w, 28 * 28, s, 2.0).map(|_| ())
            })?;
            report(
                &format!("focal {tag} 28x28 {dt:?}"),
                (b * 28 * 28 * s * 3 * dt.size()) as f64,
                t,
            );
        }
    }
    cu::set_focal_impl(focal_default);
    let img = [b, a.size, a.size, 3];
    let x = rand(&img, 3).to_device(d)?;
    let x0 = rand(&img, 4).to_device(d)?;
    let gr = rand(&img, 5).to_device(d)?;
    let eps = vec![4.0 / 255.0; b];
    let st = vec![2.0 / 255.0; b];
    let numel = (b * a.size * a.size * 3) as f64;
    // The l2 / l1 steps under both kernel choices (one thread-block cluster per sample where
    // it applies, the default; one block per sample), then back to what the environment chose.
    let pgd_default = cu::pgd_impl();
    for (name, norm, imps) in [
        ("PGD step Linf", cu::Norm::Linf, &[pgd_default][..]),
        (
            "PGD step L2",
            cu::Norm::L2,
            &[cu::PgdImpl::Cluster, cu::PgdImpl::Block][..],
        ),
        (
            "PGD step L1",
            cu::Norm::L1(0.05),
            &[cu::PgdImpl::Cluster, cu::PgdImpl::Block][..],
        ),
    ] {
        for &imp in imps {
            cu::set_pgd_impl(imp);
            let t = time(d, a.repeats, || {
                cu::pgd_step(&x, &x0, &gr, &eps, &st, norm).map(|_| ())
            })?;
            let max_d4 = match norm {
                cu::Norm::L1(_) => cu::PGD_CL_MAX_D4_L1,
                _ => cu::PGD_CL_MAX_D4_L2,
            };
            let tag = match norm {
                cu::Norm::Linf => "",
                _ if cu::pgd_uses_cluster(&g.arch, a.size * a.size * 3, max_d4) => " clust",
                _ => " block",
            };
            // x, x0, g read + the new iterate written: 16 bytes per element.
            report(&format!("{name}{tag}"), numel * 16.0, t);
        }
    }
    cu::set_pgd_impl(pgd_default);
    let act = rand(&[b, 56, 56, 256], 6).to_device_as(d, DType::Bf16)?;
    let t = time(d, a.repeats, || cu::act_fwd("gelu", &act).map(|_| ()))?;
    report("GELU fwd bf16", (act.numel() * 4) as f64, t);
    // Fused BN-apply + GELU (training path): reads x, writes y.
    let ch = |v: f32| -> mpm::Result<Tensor> { Tensor::full(&[256], v).to_device(d) };
    let (mean, invstd, gamma, beta) = (ch(0.1)?, ch(1.3)?, ch(0.9)?, ch(0.05)?);
    let (ms, is, gs, bs) = (
        cu::st("bench", &mean)?,
        cu::st("bench", &invstd)?,
        cu::st("bench", &gamma)?,
        cu::st("bench", &beta)?,
    );
    let t = time(d, a.repeats, || {
        cu::bn_apply(&act, ms, is, gs, bs, 256, 1).map(|_| ())
    })?;
    report("BN-apply+GELU fwd bf16", (act.numel() * 4) as f64, t);
    let dy = rand(&[b, 56, 56, 256], 8).to_device_as(d, DType::Bf16)?;
    let t = time(d, a.repeats, || {
        cu::bn_backward(&act, &dy, ms, is, gs, bs, 256, true, 1, true).map(|_| ())
    })?;
    // Two passes: sums (reads x, dy) and dx (reads x, dy, writes dx).
    report("BN+GELU bwd bf16", (act.numel() * 10) as f64, t);
    let labels: Vec<u16> = (0..b * a.size * a.size).map(|i| (i % s) as u16).collect();
    let target_bytes = ((b * s * (28 * 28 + 14 * 14 + 7 * 7)) * 2) as f64;
    // With the label map's upload from pageable memory on every call (the op as training
    // calls it), and the kernels alone on a map already on the GPU: the upload can take
    // longer than writing the targets.
    let lab = g.upload(&labels)?;
    for (name, resident) in [("mask bf16 +upload", false), ("mask bf16 kernels", true)] {
        let t = time(d, a.repeats, || {
            let (n, hw, base) = (b, a.size, 28);
            let r = if resident {
                cu::mask_targets_resident(&g, &lab, n, hw, hw, s, base, &[14, 7], 0.1, DType::Bf16)
            } else {
                cu::mask_targets(&g, &labels, n, hw, hw, s, base, &[14, 7], 0.1, DType::Bf16)
            };
            r.map(|_| ())
        })?;
        report(name, target_bytes, t);
    }
    println!("cuMemAlloc calls so far: {}", mpm::cuda::malloc_count());
    Ok(())
}

fn end_to_end(d: Device, a: &Args) -> mpm::Result<()> {
    let (batch, size, width, arch, s) = if a.tiny {
        (2, 64, 16, Arch::ResNet18, 64)
    } else {
        (a.batch, a.size, 64, Arch::ResNet50, a.seg_classes)
    };
    mpm::cuda::set_batch_hint(batch);
    let spec = ModelSpec {
        backbone: Backbone {
            arch,
            width,
            act: Act::Gelu,
        },
        num_classes: 1000,
        seg_classes: s,
        head: Head::Mpm {
            levels: 3,
            top_down: true,
        },
    };
    let mut store = spec.init(0)?;
    for (_, e) in store.iter_mut() {
        e.tensor = e.tensor.to_device(d)?;
    }
    let images = rand(&[batch, size, size, 3], 7)
        .map(|v| 0.5 + 0.5 * v)
        .to_device(d)?;
    let labels: Vec<usize> = (0..batch).map(|i| i * 7 % 1000).collect();
    let targets: Vec<Tensor> = [size / 8, size / 16, size / 32]
        .iter()
        .map(|&h| Tensor::full(&[batch, h, h, s], 1.0 / s as f32))
        .collect::<Vec<_>>();
    let targets: Vec<Tensor> = targets
        .iter()
        .map(|t| t.to_device(d))
        .collect::<mpm::Result<_>>()?;
    let weights = vec![1.0f32; batch];
    let eps = vec![4.0 / 255.0; batch];
    let step = vec![2.0 / 255.0; batch];
    let attack_grad = |store: &mut mpm::nn::ParamStore, x: &Tensor| -> mpm::Result<Tensor> {
        let mut ctx = Ctx::new(store, GradMode::InputGradOnly, false);
        let xv = ctx.tape.input(x.clone(), true);
        let logits = spec.forward_logits(&mut ctx, xv)?;
        let loss = ops::cross_entropy_smooth(&mut ctx.tape, logits, &labels, 0.1)?;
        let mut g = ctx.tape.backward(loss)?;
        g.take(xv)
            .ok_or_else(|| mpm::Error::Msg("no input gradient".into()))
    };
    let t_attack = time(d, a.repeats, || {
        attack_grad(&mut store, &images).map(|_| ())
    })?;
    let t_at = time(d, a.repeats, || {
        let mut x = images.clone();
        for _ in 0..2 {
            let g = attack_grad(&mut store, &x)?;
            x = match d {
                Device::Cuda(_) => cu::pgd_step(&x, &images, &g, &eps, &step, cu::Norm::Linf)?,
                Device::Cpu => {
                    let mut x = x;
                    linf_step_slice(x.data_mut(), images.data(), g.data(), step[0], eps[0]);
                    x
                }
            };
        }
        let mut ctx = Ctx::new(&mut store, GradMode::Full, true);
        let xv = ctx.tape.input(x, false);
        let out = spec.forward(&mut ctx, xv)?;
        let loss = spec.loss(
            &mut ctx,
            &out,
            &labels,
            &targets,
            &weights,
            LossConfig::default(),
        )?;
        ctx.tape.backward(loss).map(|_| ())
    })?;
    println!(
        "{} at batch {batch}, {size}x{size}, S = {s}, {}:",
        spec.describe(),
        mpm::device::default_precision().describe(d)
    );
    println!(
        "attack gradient step    {:8.1} images/s ({:.1} ms)",
        batch as f64 / t_attack,
        t_attack * 1e3
    );
    println!(
        "MPM AT step (2 PGD + train) {:4.1} images/s ({:.1} ms)",
        batch as f64 / t_at,
        t_at * 1e3
    );
    conv_gelu_report();
    if let Device::Cuda(_) = d {
        println!(
            "cuMemAlloc calls after the timed steps: {}",
            mpm::cuda::malloc_count()
        );
    }
    Ok(())
}

/// cuBLAS bf16 GEMM FLOP/s measured by `kernels` (the ceiling for matrix work).
static GEMM_RATE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// The per-shape choice between the fused conv-GELU kernel and cuDNN + epilogue, as timed
/// on first use by the eval (attack) forward passes above.
fn conv_gelu_report() {
    use mpm::cuda::fused::{conv_gelu_table, forced_impl};
    if let Some(i) = forced_impl() {
        println!("conv-GELU: forced to {i:?} (MPM_CONV_GELU); no per-shape timing");
        return;
    }
    let table = conv_gelu_table();
    if table.is_empty() {
        return;
    }
    println!("conv + folded BN + GELU per layer shape (eval/attack path), ms per forward;");
    println!("TFLOP/s of the winner (2*M*O*K FLOPs), % of the bf16 GEMM rate measured above:");
    println!(
        "{:<34} {:>5} {:>10} {:>10}  {:<6} {:>8} {:>6}",
        "input NHWC -> O, kernel/stride",
        "dtype",
        "fused",
        "cuDNN+epi",
        "winner",
        "TFLOP/s",
        "%GEMM"
    );
    let (mut fused_wins, mut total) = (0, 0);
    for r in &table {
        let g = &r.geom;
        let shape = format!(
            "[{},{},{},{}] -> {}, {}x{}/{}",
            g.n, g.h, g.w, g.c, g.o, g.kh, g.kw, g.stride
        );
        let flops = 2.0 * (g.n * g.oh * g.ow * g.o * g.kh * g.kw * g.c) as f64;
        let rate = flops / r.fused_s.min(r.cudnn_s);
        let pct = GEMM_RATE
            .get()
            .map_or("-".to_string(), |c| format!("{:.1}", 100.0 * rate / c));
        println!(
            "{shape:<34} {:>5} {:>10.3} {:>10.3}  {:<6} {:>8.1} {:>6}",
            r.dtype.suffix(),
            r.fused_s * 1e3,
            r.cudnn_s * 1e3,
            format!("{:?}", r.pick),
            rate / 1e12,
            pct
        );
        total += 1;
        fused_wins += (r.pick == mpm::cuda::fused::ConvGeluImpl::Fused) as usize;
    }
    println!("fused kernel wins {fused_wins} of {total} shapes");
}

fn main() {
    let a = Args::parse();
    let precision = match mpm::device::parse_precision_flag(&a.precision) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let req: DeviceRequest = match a.device.parse() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let (d, why) = match req.resolve() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    println!("device: {why}");
    println!("precision: {}", precision.describe(d));
    if d == Device::Cpu && !a.tiny {
        eprintln!("mpm-bench measures GPU kernels and needs a GPU ({why}); pass --tiny for a small CPU smoke run");
        std::process::exit(2);
    }
    let batch = if a.tiny { 2 } else { a.batch };
    if a.ddp_overhead {
        if let Err(e) = ddp_overhead(d, &a) {
            eprintln!("mpm-bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    let r = if a.skip_kernels {
        Ok(())
    } else {
        kernels(d, &a)
    }
    .and_then(|_| end_to_end(d, &a))
    .map_err(|e| mpm::cuda::with_batch(e, batch));
    if let Err(e) = r {
        eprintln!("mpm-bench: {e}");
        std::process::exit(1);
    }
}
