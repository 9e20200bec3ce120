//! Tensor-level CUDA ops: one function per kernel launch family, named like the kernels in
//! `kernels/<file>.cu`. Each checks what the kernel assumes (same GPU, same element type,
//! sizes), allocates outputs from the caching allocator and launches on the GPU's stream.
//! `src/ops/*.rs` calls these when its inputs live on a GPU; the CPU twins are `src/cpu/*`.

use super::context::{DevBuf, Gpu};
use super::launch::{grid_for, Args};
use super::storage::{CudaStorage, DType};
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::sync::Arc;

fn dev_err(op: &str, msg: impl Into<String>) -> Error {
    Error::Device {
        device: "cuda".into(),
        msg: format!("{op}: {}", msg.into()),
    }
}

/// The device storage of `t`, or an error naming `op` when `t` lives on the host.
pub fn st<'a>(op: &str, t: &'a Tensor) -> Result<&'a CudaStorage> {
    t.cuda().ok_or_else(|| {
        dev_err(
            op,
            format!("expected a GPU tensor, got one on {}", t.device()),
        )
    })
}

/// `t` on the GPU of `like` with element type `dtype` (uploads or casts when needed).
pub fn on_gpu_as(t: &Tensor, like: &CudaStorage, dtype: DType) -> Result<Tensor> {
    if let Some(c) = t.cuda() {
        if c.dtype == dtype && Arc::ptr_eq(c.gpu(), like.gpu()) {
            return Ok(t.clone());
        }
        if c.dtype != dtype && Arc::ptr_eq(c.gpu(), like.gpu()) {
            return cast(t, dtype);
        }
    }
    t.to_device_as(crate::device::Device::Cuda(like.gpu().ordinal), dtype)
}

/// A weight `t` (f32 master copy) on the GPU of `like` as `dtype`. A cast of a device weight is
/// made once and kept with the weight's storage for as long as the weight epoch
/// (`context::weight_epoch`) does not move, so the bf16 copy of each parameter is made once
/// per optimiser step, not once per op of every pass. Host weights are uploaded (uncached).
pub fn weight_as(t: &Tensor, like: &CudaStorage, dtype: DType) -> Result<Tensor> {
    if let Some(c) = t.cuda() {
        if c.dtype != dtype && Arc::ptr_eq(c.gpu(), like.gpu()) {
            let epoch = super::context::weight_epoch();
            let mut slot = c
                .cast
                .lock()
                .map_err(|_| dev_err("weight cast cache", "lock poisoned"))?;
            if let Some((e, copy)) = &*slot {
                if *e == epoch && copy.cuda().is_some_and(|s| s.dtype == dtype) {
                    return copy.reshape(t.shape());
                }
            }
            let copy = cast(t, dtype)?;
            *slot = Some((epoch, copy.clone()));
            return Ok(copy);
        }
    }
    on_gpu_as(t, like, dtype)
}

/// Element type of a tensor as the GPU path sees it (host tensors are f32).
pub fn dtype_of(t: &Tensor) -> DType {
    t.cuda().map_or(DType::F32, |s| s.dtype)
}

/// `t` as `dtype` on its GPU (no-op when it already is).
pub fn to_dtype(t: Tensor, dtype: DType) -> Result<Tensor> {
    if dtype_of(&t) == dtype && t.is_cuda() {
        Ok(t)
    } else {
        cast(&t, dtype)
    }
}

/// A fresh uninitialised output of `len` elements on `gpu`.
pub fn empty(gpu: &Arc<Gpu>, len: usize, dtype: DType) -> Result<CudaStorage> {
    Ok(CudaStorage::new(
        gpu.alloc((len * dtype.size()).max(1))?,
        dtype,
        len,
    ))
}

fn run(
    g: &Gpu,
    sym: &str,
    grid: (u32, u32, u32),
    block: u32,
    shared: u32,
    mut a: Args,
) -> Result<()> {
    let mut p = a.ptrs();
    // SAFETY: every launcher in this file builds `a` in the order and with the types of the
    // kernel's C signature (see the kernel named `sym`), with device pointers from live
    // CudaStorage buffers sized for the element counts passed alongside them.
    unsafe { g.launch(sym, grid, (block, 1, 1), shared, &mut p) }
}

fn run1(g: &Gpu, sym: &str, n: usize, a: Args) -> Result<()> {
    run(g, sym, (grid_for(n), 1, 1), 256, 0, a)
}

// ---------------------------------------------------------------- elementwise.cu

pub fn cast(x: &Tensor, to: DType) -> Result<Tensor> {
    let xs = st("cast", x)?;
    if xs.dtype == to {
        return Ok(x.clone());
    }
    let g = xs.gpu();
    let y = empty(g, xs.len, to)?;
    let sym = match to {
        DType::Bf16 => "cast_f32_bf16",
        DType::F32 => "cast_bf16_f32",
    };
    run1(
        g,
        sym,
        xs.len,
        Args::new().push(xs.ptr()).push(y.ptr()).push(xs.len as u64),
    )?;
    Ok(Tensor::from_cuda(x.shape(), y))
}

/// `alpha * a + beta * b` (the tape's gradient accumulation, `add`).
pub fn axpby(a: &Tensor, b: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    let asg = st("axpby", a)?;
    let b = on_gpu_as(b, asg, asg.dtype)?;
    let bs = st("axpby", &b)?;
    let g = asg.gpu();
    let y = empty(g, asg.len, asg.dtype)?;
    let sym = format!("axpby_{}", asg.dtype.suffix());
    run1(
        g,
        &sym,
        asg.len,
        Args::new()
            .push(asg.ptr())
            .push(bs.ptr())
            .push(y.ptr())
            .push(alpha)
            .push(beta)
            .push(asg.len as u64),
    )?;
    Ok(Tensor::from_cuda(a.shape(), y))
}

pub fn scale(x: &Tensor, k: f32) -> Result<Tensor> {
    let xs = st("scale", x)?;
    let g = xs.gpu();
    let y = empty(g, xs.len, xs.dtype)?;
    let sym = format!("scale_{}", xs.dtype.suffix());
    run1(
        g,
        &sym,
        xs.len,
        Args::new()
            .push(xs.ptr())
            .push(y.ptr())
            .push(k)
            .push(xs.len as u64),
    )?;
    Ok(Tensor::from_cuda(x.shape(), y))
}

/// `gelu`/`relu` forward: `kind` is "gelu" or "relu".
pub fn act_fwd(kind: &str, x: &Tensor) -> Result<Tensor> {
    let xs = st(kind, x)?;
    let g = xs.gpu();
    let y = empty(g, xs.len, xs.dtype)?;
    let sym = format!("{kind}_fwd_{}", xs.dtype.suffix());
    run1(
        g,
        &sym,
        xs.len,
        Args::new().push(xs.ptr()).push(y.ptr()).push(xs.len as u64),
    )?;
    Ok(Tensor::from_cuda(x.shape(), y))
}

pub fn act_bwd(kind: &str, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let xs = st(kind, x)?;
    let dy = on_gpu_as(dy, xs, xs.dtype)?;
    let ds = st(kind, &dy)?;
    let g = xs.gpu();
    let dx = empty(g, xs.len, xs.dtype)?;
    let sym = format!("{kind}_bwd_{}", xs.dtype.suffix());
    run1(
        g,
        &sym,
        xs.len,
        Args::new()
            .push(xs.ptr())
            .push(ds.ptr())
            .push(dx.ptr())
            .push(xs.len as u64),
    )?;
    Ok(Tensor::from_cuda(x.shape(), dx))
}

/// Mirrors `struct Norm3` of kernels/elementwise.cu (passed by value).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Norm3 {
    mean: [f32; 3],
    inv_std: [f32; 3],
}
const _: () = assert!(std::mem::size_of::<Norm3>() == 6 * 4);

/// `(x - mean_c) / std_c` over 3 channels; `x` f32, output in `out` dtype.
pub fn normalize3(x: &Tensor, mean: [f32; 3], std: [f32; 3], out: DType) -> Result<Tensor> {
    let xs = st("normalize_input", x)?;
    let x32;
    let xs = if xs.dtype == DType::F32 {
        xs
    } else {
        x32 = cast(x, DType::F32)?;
        st("normalize_input", &x32)?
    };
    let g = xs.gpu();
    let y = empty(g, xs.len, out)?;
    // Division, as the CPU does, is kept exact by passing 1/std only when it is exact... the
    // CPU divides; (x - m) * (1/s) can differ in the last bit, well inside every tolerance.
    let p = Norm3 {
        mean,
        inv_std: [1.0 / std[0], 1.0 / std[1], 1.0 / std[2]],
    };
    let sym = format!("normalize3_fwd_{}", out.suffix());
    run1(
        g,
        &sym,
        xs.len,
        Args::new()
            .push(xs.ptr())
            .push(y.ptr())
            .push(p)
            .push(xs.len as u64),
    )?;
    Ok(Tensor::from_cuda(x.shape(), y))
}

pub fn normalize3_bwd(dy: &Tensor, std: [f32; 3]) -> Result<Tensor> {
    let ds = st("normalize_input backward", dy)?;
    let g = ds.gpu();
    let dx = empty(g, ds.len, DType::F32)?;
    let p = Norm3 {
        mean: [0.0; 3],
        inv_std: [1.0 / std[0], 1.0 / std[1], 1.0 / std[2]],
    };
    let sym = format!("normalize3_bwd_{}", ds.dtype.suffix());
    run1(
        g,
        &sym,
        ds.len,
        Args::new()
            .push(ds.ptr())
            .push(dx.ptr())
            .push(p)
            .push(ds.len as u64),
    )?;
    Ok(Tensor::from_cuda(dy.shape(), dx))
}

// ---------------------------------------------------------------- reduce.cu

/// Sum of all elements (deterministic, f64 partials).
pub fn sum_all(x: &Tensor, scale: f32) -> Result<f32> {
    let xs = st("sum", x)?;
    let g = xs.gpu();
    let blocks = grid_for(xs.len).min(1024);
    let part = empty(g, blocks as usize * 2, DType::F32)?; // f64 slots
    let out = empty(g, 1, DType::F32)?;
    let sym = format!("sum_partial_{}", xs.dtype.suffix());
    run(
        g,
        &sym,
        (blocks, 1, 1),
        256,
        0,
        Args::new()
            .push(xs.ptr())
            .push(part.ptr())
            .push(xs.len as u64),
    )?;
    run(
        g,
        "sum_finish",
        (1, 1, 1),
        256,
        0,
        Args::new()
            .push(part.ptr())
            .push(blocks)
            .push(scale)
            .push(out.ptr()),
    )?;
    Ok(g.download::<f32>(&out.buf, 1)?[0])
}

const ROWS_PER_CHUNK: usize = 256;

/// Column moments of (M, C): power 1 (sum) or 2 (sum of squares about `center`), times `scale`.
pub fn col_moment(
    x: &CudaStorage,
    m: usize,
    c: usize,
    center: Option<&CudaStorage>,
    power: u32,
    scale: f64,
) -> Result<CudaStorage> {
    let g = x.gpu();
    let chunks = m.div_ceil(ROWS_PER_CHUNK).max(1);
    let part = empty(g, chunks * c * 2, DType::F32)?; // f64
    let out = empty(g, c, DType::F32)?;
    let sym = format!("col_partial_{}", x.dtype.suffix());
    let cx = (c.div_ceil(128)) as u32;
    run(
        g,
        &sym,
        (cx, chunks as u32, 1),
        128,
        0,
        Args::new()
            .push(x.ptr())
            .push(center.map_or(0, |s| s.ptr()))
            .push(m as u32)
            .push(c as u32)
            .push(ROWS_PER_CHUNK as u32)
            .push(power)
            .push(part.ptr()),
    )?;
    run(
        g,
        "col_finish",
        (cx, 1, 1),
        128,
        0,
        Args::new()
            .push(part.ptr())
            .push(chunks as u32)
            .push(c as u32)
            .push(scale)
            .push(out.ptr()),
    )?;
    Ok(out)
}

/// Per-column sums of `dy` viewed as (M, C): bias gradients.
pub fn col_sums(dy: &Tensor, c: usize) -> Result<Tensor> {
    let ds = st("bias gradient", dy)?;
    let m = ds.len / c.max(1);
    Ok(Tensor::from_cuda(&[c], col_moment(ds, m, c, None, 1, 1.0)?))
}

// ---------------------------------------------------------------- softmax_xent.cu

pub fn softmax_rows(x: &Tensor, cols: usize, log: bool) -> Result<Tensor> {
    let xs = st("softmax", x)?;
    let g = xs.gpu();
    let rows = xs.len / cols.max(1);
    let y = empty(g, xs.len, xs.dtype)?;
    let sym = format!("softmax_rows_{}", xs.dtype.suffix());
    run(
        g,
        &sym,
        (rows as u32, 1, 1),
        256,
        0,
        Args::new()
            .push(xs.ptr())
            .push(y.ptr())
            .push(cols as u32)
            .push(log as u32),
    )?;
    Ok(Tensor::from_cuda(x.shape(), y))
}

pub fn softmax_bwd_rows(y: &Tensor, dy: &Tensor, cols: usize) -> Result<Tensor> {
    let ys = st("softmax backward", y)?;
    let dy = on_gpu_as(dy, ys, ys.dtype)?;
    let ds = st("softmax backward", &dy)?;
    let g = ys.gpu();
    let rows = ys.len / cols.max(1);
    let dz = empty(g, ys.len, ys.dtype)?;
    let sym = format!("softmax_bwd_rows_{}", ys.dtype.suffix());
    run(
        g,
        &sym,
        (rows as u32, 1, 1),
        256,
        0,
        Args::new()
            .push(ys.ptr())
            .push(ds.ptr())
            .push(dz.ptr())
            .push(cols as u32),
    )?;
    Ok(Tensor::from_cuda(y.shape(), dz))
}

/// Mean soft-target CE over rows and its gradient `dz` (already divided by rows).
pub fn soft_cross_entropy(z: &Tensor, t: &Tensor, cols: usize) -> Result<(f32, Tensor)> {
    let zs = st("soft_cross_entropy", z)?;
    let t = on_gpu_as(t, zs, DType::F32)?;
    let ts = st("soft_cross_entropy", &t)?;
    let g = zs.gpu();
    let rows = zs.len / cols.max(1);
    let dz = empty(g, zs.len, zs.dtype)?;
    let row_loss = empty(g, rows, DType::F32)?;
    let sym = format!("soft_xent_rows_{}", zs.dtype.suffix());
    run(
        g,
        &sym,
        (rows as u32, 1, 1),
        256,
        0,
        Args::new()
            .push(zs.ptr())
            .push(ts.ptr())
            .push(dz.ptr())
            .push(row_loss.ptr())
            .push(cols as u32)
            .push(1.0f32 / rows as f32),
    )?;
    let loss = sum_all(&Tensor::from_cuda(&[rows], row_loss), 1.0 / rows as f32)?;
    Ok((loss, Tensor::from_cuda(z.shape(), dz)))
}

// ---------------------------------------------------------------- focal_loss.cu

/// The focal-loss kernels of kernels/focal_loss.cu: `Shared` stages each pixel's row in shared
/// memory (the default, measured on the H200); `Registers` keeps it in registers (S <= 4096; a
/// candidate until mpm-bench has timed it on a GPU). Chosen process-wide by
/// `set_focal_impl` or the environment variable `MPM_FOCAL_KERNEL=shared|registers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FocalImpl {
    Shared,
    Registers,
}

/// Largest S the register-staged kernel takes (128 threads x FOCAL_ITEMS).
pub const FOCAL_REGS_MAX_S: usize = 128 * 32;

/// A process-wide choice between two implementations of a kernel: forced by `set`, else the
/// environment variable `env` (its value `alt` picks the second), else the first.
struct KernelSwitch {
    forced: std::sync::atomic::AtomicU8,
    env: &'static str,
    alt: &'static str,
}

impl KernelSwitch {
    const fn new(env: &'static str, alt: &'static str) -> Self {
        KernelSwitch {
            forced: std::sync::atomic::AtomicU8::new(0),
            env,
            alt,
        }
    }
    fn set(&self, second: bool) {
        let v = if second { 2 } else { 1 };
        self.forced.store(v, std::sync::atomic::Ordering::Relaxed);
    }
    fn second(&self) -> bool {
        match self.forced.load(std::sync::atomic::Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => std::env::var(self.env).is_ok_and(|v| v == self.alt),
        }
    }
}

static FOCAL_SWITCH: KernelSwitch = KernelSwitch::new("MPM_FOCAL_KERNEL", "registers");

/// Forces the focal-loss kernel for this process (tests, mpm-bench).
pub fn set_focal_impl(i: FocalImpl) {
    FOCAL_SWITCH.set(i == FocalImpl::Registers);
}

/// The focal-loss kernel in use (the environment decides until `set_focal_impl` is called).
pub fn focal_impl() -> FocalImpl {
    if FOCAL_SWITCH.second() {
        FocalImpl::Registers
    } else {
        FocalImpl::Shared
    }
}

/// Focal loss over NHWC logits `z` (pixels, S) with soft targets `t`, per-image `weights`.
/// Returns the mean loss and `dz` (scaled by the weights and 1/(N*h*w)).
pub fn focal_loss(
    z: &Tensor,
    t: &Tensor,
    weights: &[f32],
    ppi: usize,
    s: usize,
    gamma: f32,
) -> Result<(f32, Tensor)> {
    let zs = st("focal_loss", z)?;
    let t = on_gpu_as(t, zs, zs.dtype)?;
    let ts = st("focal_loss", &t)?;
    let g = zs.gpu();
    let pixels = zs.len / s.max(1);
    let w = g.upload(weights)?;
    let dz = empty(g, zs.len, zs.dtype)?;
    let pl = empty(g, pixels, DType::F32)?;
    let inv_total = 1.0 / (weights.len() * ppi) as f32;
    let regs = focal_impl() == FocalImpl::Registers && s <= FOCAL_REGS_MAX_S;
    let shared = if regs { 0 } else { (2 * s * 4) as u32 };
    if shared > 227 * 1024 {
        return Err(dev_err(
            "focal_loss",
            format!(
                "S = {s} channels need {shared} bytes of shared memory per block (max 227 KiB)"
            ),
        ));
    }
    let sym = format!(
        "focal_loss_{}{}",
        if regs { "regs_" } else { "" },
        zs.dtype.suffix()
    );
    run(
        g,
        &sym,
        (pixels as u32, 1, 1),
        128,
        shared,
        Args::new()
            .push(zs.ptr())
            .push(ts.ptr())
            .push(w.ptr())
            .push(dz.ptr())
            .push(pl.ptr())
            .push(s as u32)
            .push(ppi as u32)
            .push(gamma)
            .push(inv_total),
    )?;
    let loss = sum_all(&Tensor::from_cuda(&[pixels], pl), inv_total)?;
    Ok((loss, Tensor::from_cuda(z.shape(), dz)))
}

// ---------------------------------------------------------------- bn_gelu.cu

/// Batch statistics of (M, C): (mean, biased variance), two passes in f64 like the CPU.
pub fn bn_stats(x: &CudaStorage, m: usize, c: usize) -> Result<(CudaStorage, CudaStorage)> {
    let mean = col_moment(x, m, c, None, 1, 1.0 / m as f64)?;
    let var = col_moment(x, m, c, Some(&mean), 2, 1.0 / m as f64)?;
    Ok((mean, var))
}

/// Training: updates running stats in place and returns invstd; eval: invstd of running var.
#[allow(clippy::too_many_arguments)]
pub fn bn_finalize(
    mean: Option<&CudaStorage>,
    var: Option<&CudaStorage>,
    rmean: &CudaStorage,
    rvar: &CudaStorage,
    c: usize,
    momentum: f32,
    unbias: f32,
    eps: f32,
) -> Result<CudaStorage> {
    let g = rmean.gpu();
    let invstd = empty(g, c, DType::F32)?;
    let train = mean.is_some() as u32;
    run(
        g,
        "bn_finalize",
        ((c as u32).div_ceil(128), 1, 1),
        128,
        0,
        Args::new()
            .push(mean.map_or(0, |s| s.ptr()))
            .push(var.map_or(0, |s| s.ptr()))
            .push(rmean.ptr())
            .push(rvar.ptr())
            .push(invstd.ptr())
            .push(c as u32)
            .push(momentum)
            .push(unbias)
            .push(eps)
            .push(train),
    )?;
    Ok(invstd)
}

/// y = act(x * invstd * gamma + beta - mean * invstd * gamma); act 0 none, 1 GELU, 2 ReLU.
#[allow(clippy::too_many_arguments)]
pub fn bn_apply(
    x: &Tensor,
    mean: &CudaStorage,
    invstd: &CudaStorage,
    gamma: &CudaStorage,
    beta: &CudaStorage,
    c: usize,
    act: u32,
) -> Result<Tensor> {
    let xs = st("batch_norm", x)?;
    let g = xs.gpu();
    let y = empty(g, xs.len, xs.dtype)?;
    let sym = format!("bn_apply_{}", xs.dtype.suffix());
    run1(
        g,
        &sym,
        xs.len,
        Args::new()
            .push(xs.ptr())
            .push(y.ptr())
            .push(mean.ptr())
            .push(invstd.ptr())
            .push(gamma.ptr())
            .push(beta.ptr())
            .push(xs.len as u64)
            .push(c as u32)
            .push(act),
    )?;
    Ok(Tensor::from_cuda(x.shape(), y))
}

/// BN backward: (dx or None, sum dpre, sum dpre*xhat); `train` picks the batch-stat formula.
#[allow(clippy::too_many_arguments)]
pub fn bn_backward(
    x: &Tensor,
    dy: &Tensor,
    mean: &CudaStorage,
    invstd: &CudaStorage,
    gamma: &CudaStorage,
    beta: &CudaStorage,
    c: usize,
    train: bool,
    act: u32,
    need_dx: bool,
) -> Result<(Option<Tensor>, Tensor, Tensor)> {
    let xs = st("batch_norm backward", x)?;
    let dy = on_gpu_as(dy, xs, xs.dtype)?;
    let ds = st("batch_norm backward", &dy)?;
    let g = xs.gpu();
    let m = xs.len / c.max(1);
    let chunks = m.div_ceil(ROWS_PER_CHUNK).max(1);
    let part = empty(g, 2 * chunks * c * 2, DType::F32)?; // 2 x chunks x c f64
    let cx = (c as u32).div_ceil(128);
    let sym = format!("bn_bwd_partial_{}", xs.dtype.suffix());
    run(
        g,
        &sym,
        (cx, chunks as u32, 1),
        128,
        0,
        Args::new()
            .push(xs.ptr())
            .push(ds.ptr())
            .push(mean.ptr())
            .push(invstd.ptr())
            .push(gamma.ptr())
            .push(beta.ptr())
            .push(m as u32)
            .push(c as u32)
            .push(ROWS_PER_CHUNK as u32)
            .push(act)
            .push(chunks as u32)
            .push(part.ptr()),
    )?;
    let s1 = empty(g, c, DType::F32)?;
    let s2 = empty(g, c, DType::F32)?;
    run(
        g,
        "col_finish",
        (cx, 1, 1),
        128,
        0,
        Args::new()
            .push(part.ptr())
            .push(chunks as u32)
            .push(c as u32)
            .push(1.0f64)
            .push(s1.ptr()),
    )?;
    let second = part.ptr() + (chunks * c * 8) as u64;
    run(
        g,
        "col_finish",
        (cx, 1, 1),
        128,
        0,
        Args::new()
            .push(second)
            .push(chunks as u32)
            .push(c as u32)
            .push(1.0f64)
            .push(s2.ptr()),
    )?;
    let dx = if need_dx {
        let dx = empty(g, xs.len, xs.dtype)?;
        let sym = format!("bn_bwd_input_{}", xs.dtype.suffix());
        run1(
            g,
            &sym,
            xs.len,
            Args::new()
                .push(xs.ptr())
                .push(ds.ptr())
                .push(dx.ptr())
                .push(mean.ptr())
                .push(invstd.ptr())
                .push(gamma.ptr())
                .push(beta.ptr())
                .push(s1.ptr())
                .push(s2.ptr())
                .push(xs.len as u64)
                .push(m as u32)
                .push(c as u32)
                .push(train as u32)
                .push(act),
        )?;
        Some(Tensor::from_cuda(x.shape(), dx))
    } else {
        None
    };
    Ok((dx, Tensor::from_cuda(&[c], s1), Tensor::from_cuda(&[c], s2)))
}

// ---------------------------------------------------------------- pool.cu, resize.cu

/// Max pool: (y, argmax indices as a u32 buffer).
#[allow(clippy::too_many_arguments)]
pub fn maxpool_fwd(
    x: &Tensor,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    s: usize,
    p: usize,
    oh: usize,
    ow: usize,
) -> Result<(Tensor, CudaStorage)> {
    let xs = st("max_pool2d", x)?;
    let g = xs.gpu();
    let len = n * oh * ow * c;
    let y = empty(g, len, xs.dtype)?;
    let arg = empty(g, len, DType::F32)?; // u32 slots, 4 bytes each
    let sym = format!("maxpool_fwd_{}", xs.dtype.suffix());
    let dims = [n, h, w, c, k, s, p, oh, ow].map(|v| v as u32);
    let mut a = Args::new().push(xs.ptr()).push(y.ptr()).push(arg.ptr());
    for d in dims {
        a = a.push(d);
    }
    run1(g, &sym, len, a)?;
    Ok((Tensor::from_cuda(&[n, oh, ow, c], y), arg))
}

#[allow(clippy::too_many_arguments)]
pub fn maxpool_bwd(
    dy: &Tensor,
    arg: &CudaStorage,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    s: usize,
    p: usize,
    oh: usize,
    ow: usize,
) -> Result<Tensor> {
    let ds = st("max_pool2d backward", dy)?;
    let g = ds.gpu();
    let len = n * h * w * c;
    let dx = empty(g, len, ds.dtype)?;
    let sym = format!("maxpool_bwd_{}", ds.dtype.suffix());
    let mut a = Args::new().push(ds.ptr()).push(arg.ptr()).push(dx.ptr());
    for d in [n, h, w, c, k, s, p, oh, ow].map(|v| v as u32) {
        a = a.push(d);
    }
    run1(g, &sym, len, a)?;
    Ok(Tensor::from_cuda(&[n, h, w, c], dx))
}

/// Adaptive average pool (`fwd`) or its backward; `x` is the input or dy.
#[allow(clippy::too_many_arguments)]
pub fn avgpool(
    x: &Tensor,
    fwd: bool,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
) -> Result<Tensor> {
    let xs = st("adaptive_avg_pool2d", x)?;
    let g = xs.gpu();
    let (len, shape) = if fwd {
        (n * oh * ow * c, [n, oh, ow, c])
    } else {
        (n * h * w * c, [n, h, w, c])
    };
    let y = empty(g, len, xs.dtype)?;
    let sym = format!(
        "avgpool_{}_{}",
        if fwd { "fwd" } else { "bwd" },
        xs.dtype.suffix()
    );
    let mut a = Args::new().push(xs.ptr()).push(y.ptr());
    for d in [n, h, w, c, oh, ow].map(|v| v as u32) {
        a = a.push(d);
    }
    run1(g, &sym, len, a)?;
    Ok(Tensor::from_cuda(&shape, y))
}

#[allow(clippy::too_many_arguments)]
pub fn bilinear(
    x: &Tensor,
    fwd: bool,
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
) -> Result<Tensor> {
    let xs = st("resize_bilinear", x)?;
    let g = xs.gpu();
    if fwd {
        let len = n * oh * ow * c;
        let y = empty(g, len, xs.dtype)?;
        let sym = format!("bilinear_fwd_{}", xs.dtype.suffix());
        let mut a = Args::new().push(xs.ptr()).push(y.ptr());
        for d in [n, h, w, c, oh, ow].map(|v| v as u32) {
            a = a.push(d);
        }
        run1(g, &sym, len, a)?;
        Ok(Tensor::from_cuda(&[n, oh, ow, c], y))
    } else {
        // Scatter with f32 atomics: accumulate in f32, cast back for bf16.
        let dy = if xs.dtype == DType::F32 {
            x.clone()
        } else {
            cast(x, DType::F32)?
        };
        let ds = st("resize_bilinear backward", &dy)?;
        let len = n * h * w * c;
        let dx = empty(g, len, DType::F32)?;
        g.memset_zero(&dx.buf, len * 4)?;
        let mut a = Args::new().push(ds.ptr()).push(dx.ptr());
        for d in [n, h, w, c, oh, ow].map(|v| v as u32) {
            a = a.push(d);
        }
        run1(g, "bilinear_bwd_f32", ds.len, a)?;
        let dx = Tensor::from_cuda(&[n, h, w, c], dx);
        if xs.dtype == DType::F32 {
            Ok(dx)
        } else {
            cast(&dx, xs.dtype)
        }
    }
}

// ---------------------------------------------------------------- conv_gelu.cu

/// Mirrors `struct ConvParams` of kernels/conv_gelu.cu (12 x u32, passed by value).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ConvParams {
    n: u32,
    h: u32,
    w: u32,
    c: u32,
    o: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    dilation: u32,
    oh: u32,
    ow: u32,
}
const _: () = assert!(std::mem::size_of::<ConvParams>() == 12 * 4);

/// BN folded into conv weights: `wf` (O, K) f32 = w * scale, `shift` (O) f32. `w` is the
/// (O, KH, KW, C) f32 weight on the GPU; BN tensors f32 (C = O) on the same GPU.
#[allow(clippy::too_many_arguments)]
pub fn bn_fold(
    w: &CudaStorage,
    gamma: &CudaStorage,
    beta: &CudaStorage,
    rmean: &CudaStorage,
    rvar: &CudaStorage,
    o: usize,
    eps: f32,
) -> Result<(CudaStorage, CudaStorage)> {
    let ok = o > 0
        && w.len % o == 0
        && [gamma, beta, rmean, rvar]
            .iter()
            .all(|s| s.len == o && s.dtype == DType::F32)
        && w.dtype == DType::F32;
    if !ok {
        return Err(dev_err(
            "bn_fold",
            format!(
                "weight of {} values with BN tensors of {o} channels (all f32)",
                w.len
            ),
        ));
    }
    let k = w.len / o;
    let g = w.gpu();
    let wf = empty(g, w.len, DType::F32)?;
    let shift = empty(g, o, DType::F32)?;
    run1(
        g,
        "bn_fold",
        w.len,
        Args::new()
            .push(w.ptr())
            .push(gamma.ptr())
            .push(beta.ptr())
            .push(rmean.ptr())
            .push(rvar.ptr())
            .push(wf.ptr())
            .push(shift.ptr())
            .push(o as u32)
            .push(k as u32)
            .push(eps),
    )?;
    Ok((wf, shift))
}

/// The fused kernel: `y = act(conv(x, wf) + shift)` and, when `want_pre`, `pre = conv + shift`.
/// `x` (N, H, W, C) f32 or bf16; `wf` (O, KH, KW, C) f32; groups must be 1.
pub fn conv_bn_act(
    x: &CudaStorage,
    wf: &CudaStorage,
    shift: &CudaStorage,
    g: &crate::cpu::conv::ConvGeom,
    act: u32,
    want_pre: bool,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    let m = g.n * g.oh * g.ow;
    let k = g.kh * g.kw * g.c;
    let fits = g.groups == 1
        && x.len == g.n * g.h * g.w * g.c
        && wf.len == g.o * k
        && wf.dtype == DType::F32
        && shift.len == g.o
        && m.max(g.n * g.h * g.w * g.c).max(m * g.o) < (1usize << 31);
    if !fits {
        return Err(dev_err(
            "conv_bn_act",
            format!(
                "geometry {g:?} does not fit x ({} values) / wf ({} values, {:?}) / shift ({}), or groups != 1",
                x.len, wf.len, wf.dtype, shift.len
            ),
        ));
    }
    let gpu = x.gpu();
    let y = empty(gpu, m * g.o, x.dtype)?;
    let pre = if want_pre {
        Some(empty(gpu, m * g.o, x.dtype)?)
    } else {
        None
    };
    let p = ConvParams {
        n: g.n as u32,
        h: g.h as u32,
        w: g.w as u32,
        c: g.c as u32,
        o: g.o as u32,
        kh: g.kh as u32,
        kw: g.kw as u32,
        stride: g.stride as u32,
        pad: g.pad as u32,
        dilation: g.dilation as u32,
        oh: g.oh as u32,
        ow: g.ow as u32,
    };
    let grid = (m.div_ceil(64) as u32, g.o.div_ceil(64) as u32, 1);
    run(
        gpu,
        &format!("conv_bn_act_{}", x.dtype.suffix()),
        grid,
        256,
        0,
        Args::new()
            .push(x.ptr())
            .push(wf.ptr())
            .push(shift.ptr())
            .push(y.ptr())
            .push(pre.as_ref().map_or(0, |s| s.ptr()))
            .push(p)
            .push(act),
    )?;
    Ok((y, pre))
}

/// The unfused epilogue after a cuDNN convolution `z` (M, C): `y = act(z + shift)` and, when
/// `want_pre`, `pre = z + shift`.
pub fn shift_act(
    z: &CudaStorage,
    shift: &CudaStorage,
    c: usize,
    act: u32,
    want_pre: bool,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    if c == 0 || z.len % c != 0 || shift.len != c || shift.dtype != DType::F32 {
        return Err(dev_err(
            "shift_act",
            format!(
                "{} values with a shift of {} channels, C = {c}",
                z.len, shift.len
            ),
        ));
    }
    let g = z.gpu();
    let y = empty(g, z.len, z.dtype)?;
    let pre = if want_pre {
        Some(empty(g, z.len, z.dtype)?)
    } else {
        None
    };
    run1(
        g,
        &format!("shift_act_{}", z.dtype.suffix()),
        z.len,
        Args::new()
            .push(z.ptr())
            .push(y.ptr())
            .push(pre.as_ref().map_or(0, |s| s.ptr()))
            .push(shift.ptr())
            .push(z.len as u64)
            .push(c as u32)
            .push(act),
    )?;
    Ok((y, pre))
}

// ---------------------------------------------------------------- pgd_step.cu

/// Attack norm of a projected step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Norm {
    Linf,
    L2,
    /// APGD-L1 sparse step; the field is the top-k fraction (0, 1].
    L1(f32),
}

/// Blocks per thread-block cluster of the sm_90 per-sample kernels (`PGD_CL` in pgd_step.cu),
/// and the most float4 vectors per sample they hold (`PGD_CL_THREADS` x `PGD_L2_V` /
/// `PGD_L1_V` per block).
const PGD_CL: usize = 8;
pub const PGD_CL_MAX_D4_L2: usize = PGD_CL * 1024 * 8;
pub const PGD_CL_MAX_D4_L1: usize = PGD_CL * 1024 * 5;
/// Below this many values per sample one block per sample keeps each sample in L2 and the
/// batch fills the GPU; the cluster kernels pay off from here (a 224x224x3 image is 150,528).
const PGD_CL_MIN_D: usize = 32 * 1024;

/// The l2 / l1 step kernels of kernels/pgd_step.cu: `Cluster` runs one thread-block cluster
/// per sample where it applies (sm_90+, 224 px images; see `pgd_uses_cluster`), else one block
/// per sample (the default); `Block` always runs one block per sample (the kernels measured
/// before the cluster ones, for comparison). Chosen process-wide by `set_pgd_impl` or
/// `MPM_PGD_KERNEL=cluster|block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgdImpl {
    Cluster,
    Block,
}

static PGD_SWITCH: KernelSwitch = KernelSwitch::new("MPM_PGD_KERNEL", "block");

/// Forces the l2 / l1 step kernels for this process (tests, mpm-bench).
pub fn set_pgd_impl(i: PgdImpl) {
    PGD_SWITCH.set(i == PgdImpl::Block);
}

/// The l2 / l1 step kernels in use (the environment decides until `set_pgd_impl` is called).
pub fn pgd_impl() -> PgdImpl {
    if PGD_SWITCH.second() {
        PgdImpl::Block
    } else {
        PgdImpl::Cluster
    }
}

/// Whether `pgd_step` runs the cluster kernel for `d` values per sample on a GPU of compute
/// capability `arch` ("90"): sm_90+, `d % 4 == 0`, `d` large enough to pay and small enough
/// for the kernel's register slices.
pub fn pgd_uses_cluster(arch: &str, d: usize, max_d4: usize) -> bool {
    pgd_impl() == PgdImpl::Cluster
        && arch.parse::<u32>().is_ok_and(|a| a >= 90)
        && d % 4 == 0
        && d >= PGD_CL_MIN_D
        && d / 4 <= max_d4
}

/// One projected step of `x` (N, D...) towards the gradient, given clean `x0` and per-sample
/// `eps`, `step`; out of place (x, x0 and the gradient are read once, the new iterate written
/// once: a fresh f32 buffer).
pub fn pgd_step(
    x: &Tensor,
    x0: &Tensor,
    grad: &Tensor,
    eps: &[f32],
    step: &[f32],
    norm: Norm,
) -> Result<Tensor> {
    let topk = match norm {
        Norm::L1(k) if !(k > 0.0 && k <= 1.0) => {
            return Err(Error::flag("topk", format!("must be in (0, 1], got {k}")))
        }
        Norm::L1(k) => vec![k; eps.len()],
        _ => Vec::new(),
    };
    pgd_rows("pgd_step", x, x0, grad, eps, step, norm, &topk)
}

/// APGD-L1's sparse step on GPU f32 batches (N, H, W, C), the GPU twin of
/// `attack::resident::apgd_l1_step`: row `j` moves its `topk[j]` fraction of largest-gradient
/// coordinates by `step[j]` in all, then is projected onto the l1 ball of radius `eps` cut with
/// the box (the PGD l1 kernels with a per-sample fraction; lambda by a bracketed search where
/// the CPU projects exactly).
pub fn apgd_l1_step(
    x_adv: &Tensor,
    grad: &Tensor,
    x0: &Tensor,
    step: &[f32],
    topk: &[f32],
    eps: f32,
) -> Result<Tensor> {
    let eps = vec![eps; step.len()];
    pgd_rows(
        "apgd_l1_step",
        x_adv,
        x0,
        grad,
        &eps,
        step,
        Norm::L1(0.0),
        topk,
    )
}

/// `pgd_step` with the l1 top-k fraction per sample (`topk`, used when `norm` is l1).
#[allow(clippy::too_many_arguments)]
fn pgd_rows(
    op: &'static str,
    x: &Tensor,
    x0: &Tensor,
    grad: &Tensor,
    eps: &[f32],
    step: &[f32],
    norm: Norm,
    topk: &[f32],
) -> Result<Tensor> {
    let xs = st(op, x)?;
    let n = eps.len();
    let l1 = matches!(norm, Norm::L1(_));
    if n == 0
        || xs.len % n != 0
        || step.len() != n
        || (l1 && topk.len() != n)
        || x0.shape() != x.shape()
        || grad.shape() != x.shape()
    {
        return Err(Error::shape(
            op,
            format!(
                "x {:?}, x0 {:?}, grad {:?}, {} eps, {} steps, {} top-k fractions",
                x.shape(),
                x0.shape(),
                grad.shape(),
                eps.len(),
                step.len(),
                topk.len()
            ),
        ));
    }
    // Any fraction works (the kernels clamp the rank to the sample, as AutoAttack); NaN not.
    if let Some(k) = topk.iter().find(|k| k.is_nan()) {
        return Err(Error::flag("topk", format!("must be a number, got {k}")));
    }
    let g = xs.gpu().clone();
    let xf = on_gpu_as(x, xs, DType::F32)?;
    let x0 = on_gpu_as(x0, xs, DType::F32)?;
    let gr = on_gpu_as(grad, xs, DType::F32)?;
    let (xp, x0p, gp) = (st(op, &xf)?.ptr(), st(op, &x0)?.ptr(), st(op, &gr)?.ptr());
    // eps, step (and the top-k fractions) in one upload.
    let es = g.upload(&[eps, step, topk].concat())?;
    let (ep, sp, kp) = (es.ptr(), es.ptr() + 4 * n as u64, es.ptr() + 8 * n as u64);
    let out = empty(&g, xs.len, DType::F32)?;
    let d = xs.len / n;
    let args = || {
        Args::new()
            .push(out.ptr())
            .push(xp)
            .push(x0p)
            .push(gp)
            .push(ep)
            .push(sp)
    };
    let clusters = ((n * PGD_CL) as u32, 1, 1);
    match norm {
        Norm::Linf if d % 4 == 0 => {
            let total4 = xs.len / 4;
            run1(
                &g,
                "pgd_linf4_f32",
                total4,
                args().push((d / 4) as u32).push(total4 as u64),
            )?
        }
        Norm::Linf => run1(
            &g,
            "pgd_linf_f32",
            xs.len,
            args().push(d as u32).push(xs.len as u64),
        )?,
        Norm::L2 if pgd_uses_cluster(&g.arch, d, PGD_CL_MAX_D4_L2) => run(
            &g,
            "pgd_l2_cl_f32",
            clusters,
            1024,
            0,
            args().push((d / 4) as u32),
        )?,
        Norm::L2 => run(
            &g,
            "pgd_l2_f32",
            (n as u32, 1, 1),
            1024,
            0,
            args().push(d as u32),
        )?,
        Norm::L1(_) if pgd_uses_cluster(&g.arch, d, PGD_CL_MAX_D4_L1) => run(
            &g,
            "pgd_l1_cl_f32",
            clusters,
            1024,
            0,
            args().push(kp).push((d / 4) as u32),
        )?,
        Norm::L1(_) => run(
            &g,
            "pgd_l1_f32",
            (n as u32, 1, 1),
            1024,
            0,
            args().push(kp).push(d as u32),
        )?,
    }
    Ok(Tensor::from_cuda(x.shape(), out))
}

// ---------------------------------------------------------------- mask_targets.cu

/// Soft segmentation targets from u16 label maps (N, H, W): nearest to `base` x `base`
/// one-hot with smoothing, then bilinear to each of `coarser`. NHWC outputs, highest first.
#[allow(clippy::too_many_arguments)]
pub fn mask_targets(
    gpu: &Arc<Gpu>,
    labels: &[u16],
    n: usize,
    h: usize,
    w: usize,
    s: usize,
    base: usize,
    coarser: &[usize],
    smoothing: f32,
    dtype: DType,
) -> Result<Vec<Tensor>> {
    if labels.len() != n * h * w || h == 0 || w == 0 || base == 0 {
        return Err(Error::shape(
            "mask_targets",
            format!("{} labels for N={n} H={h} W={w}, base {base}", labels.len()),
        ));
    }
    let lab = gpu.upload(labels)?;
    mask_targets_resident(gpu, &lab, n, h, w, s, base, coarser, smoothing, dtype)
}

/// `mask_targets` on a label map already on the GPU (`labels`: N*H*W u16): the kernels alone,
/// without the host-to-device copy of the map (mpm-bench times both).
#[allow(clippy::too_many_arguments)]
pub fn mask_targets_resident(
    gpu: &Arc<Gpu>,
    lab: &DevBuf,
    n: usize,
    h: usize,
    w: usize,
    s: usize,
    base: usize,
    coarser: &[usize],
    smoothing: f32,
    dtype: DType,
) -> Result<Vec<Tensor>> {
    if lab.len_bytes < n * h * w * 2 || h == 0 || w == 0 || base == 0 {
        return Err(Error::shape(
            "mask_targets",
            format!(
                "{} label bytes for N={n} H={h} W={w}, base {base}",
                lab.len_bytes
            ),
        ));
    }
    let bad = gpu.upload(&[0u32])?;
    let off = smoothing / s as f32;
    let on = 1.0 - smoothing + off;
    let mut outs = Vec::new();
    let len = n * base * base * s;
    let y = empty(gpu, len, dtype)?;
    run(
        gpu,
        &format!("mask_nearest_{}", dtype.suffix()),
        ((n * base * base) as u32, 1, 1),
        128,
        0,
        Args::new()
            .push(lab.ptr())
            .push(y.ptr())
            .push(h as u32)
            .push(w as u32)
            .push(base as u32)
            .push(base as u32)
            .push(s as u32)
            .push(on)
            .push(off)
            .push(bad.ptr()),
    )?;
    outs.push(Tensor::from_cuda(&[n, base, base, s], y));
    for &o in coarser {
        let y = empty(gpu, n * o * o * s, dtype)?;
        run(
            gpu,
            &format!("mask_bilinear_{}", dtype.suffix()),
            ((n * o * o) as u32, 1, 1),
            128,
            0,
            Args::new()
                .push(lab.ptr())
                .push(y.ptr())
                .push(h as u32)
                .push(w as u32)
                .push(base as u32)
                .push(base as u32)
                .push(o as u32)
                .push(o as u32)
                .push(s as u32)
                .push(on)
                .push(off),
        )?;
        outs.push(Tensor::from_cuda(&[n, o, o, s], y));
    }
    let nbad = gpu.download::<u32>(&bad, 1)?[0];
    if nbad > 0 {
        return Err(Error::shape(
            "mask_targets",
            format!("{nbad} base-grid pixels hold a label >= S = {s}"),
        ));
    }
    Ok(outs)
}

// ---------------------------------------------------------------- optim.cu

/// One SGD step on device f32 buffers, the GPU twin of `train::optim::Sgd::step` (torch SGD,
/// dampening 0): `d = g (+ wd * w)`; with momentum, `buf' = d` on the first step (`buf` None)
/// else `momentum * buf + d`, and `d = d + momentum * buf'` (Nesterov) or `buf'`;
/// `w' = w - lr * d`. Out of place: returns `(w', buf')` (`buf'` None when momentum is 0) and
/// leaves the inputs untouched. Each operation is rounded as on the CPU (no FMA), so the
/// result is bit-identical to the CPU's for the same inputs.
#[allow(clippy::too_many_arguments)]
pub fn sgd_nesterov(
    w: &CudaStorage,
    grad: &CudaStorage,
    buf: Option<&CudaStorage>,
    lr: f32,
    momentum: f32,
    wd: f32,
    nesterov: bool,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    let f32s = w.dtype == DType::F32
        && grad.dtype == DType::F32
        && buf.is_none_or(|b| b.dtype == DType::F32);
    if w.len != grad.len || buf.is_some_and(|b| b.len != w.len) || !f32s {
        return Err(dev_err(
            "sgd",
            "weights, gradient and momentum differ in length or are not f32",
        ));
    }
    let same_gpu =
        Arc::ptr_eq(w.gpu(), grad.gpu()) && buf.is_none_or(|b| Arc::ptr_eq(w.gpu(), b.gpu()));
    if !same_gpu {
        return Err(dev_err(
            "sgd",
            "weights, gradient and momentum are on different GPUs",
        ));
    }
    let g = w.gpu();
    let w_out = empty(g, w.len, DType::F32)?;
    let buf_out = if momentum != 0.0 {
        Some(empty(g, w.len, DType::F32)?)
    } else {
        None
    };
    run1(
        g,
        "sgd_nesterov_f32",
        w.len,
        Args::new()
            .push(w.ptr())
            .push(grad.ptr())
            .push(buf.map_or(0u64, |b| b.ptr()))
            .push(w_out.ptr())
            .push(buf_out.as_ref().map_or(0u64, |b| b.ptr()))
            .push(lr)
            .push(momentum)
            .push(wd)
            .push(i32::from(buf.is_none()))
            .push(i32::from(nesterov))
            .push(w.len as u64),
    )?;
    Ok((w_out, buf_out))
}

/// `decay * ema + one_minus_decay * w` as a new buffer (timm ModelEmaV2; the caller passes
/// `one_minus_decay = (1 - decay as f64) as f32`, as `train::ema::update` uses). Each
/// operation rounded as on the CPU (no FMA), so the result is bit-identical to the CPU's.
pub fn ema_update(
    ema: &CudaStorage,
    w: &CudaStorage,
    decay: f32,
    one_minus_decay: f32,
) -> Result<CudaStorage> {
    if ema.len != w.len || w.dtype != DType::F32 || ema.dtype != DType::F32 {
        return Err(dev_err("ema", "lengths differ or not f32"));
    }
    if !Arc::ptr_eq(ema.gpu(), w.gpu()) {
        return Err(dev_err("ema", "EMA and model are on different GPUs"));
    }
    let g = w.gpu();
    let out = empty(g, w.len, DType::F32)?;
    run1(
        g,
        "ema_update_f32",
        w.len,
        Args::new()
            .push(ema.ptr())
            .push(w.ptr())
            .push(out.ptr())
            .push(decay)
            .push(one_minus_decay)
            .push(w.len as u64),
    )?;
    Ok(out)
}

// ---------------------------------------------------------------- attack_rows.cu

/// Square (l-inf) candidates on the GPU: row `a` of the result is row `rows[a]` of `best`
/// (N, H, W, C) with the window `vh[a]..+s` x `vw[a]..+s` of each channel `ch` set to
/// `clip01(clip(best + 2 eps signs[a*C+ch], x - eps, x + eps))`; `x` is the clean batch.
/// The CPU twin is `attack::resident::square_linf_candidates`.
#[allow(clippy::too_many_arguments)]
pub fn square_linf_candidates(
    best: &Tensor,
    x: &Tensor,
    rows: &[u32],
    vh: &[u32],
    vw: &[u32],
    s: u32,
    signs: &[f32],
    eps: f32,
) -> Result<Tensor> {
    let bs = st("square_linf_candidates", best)?;
    let xs = st("square_linf_candidates", x)?;
    let sh = best.shape();
    let (na, h, w, c) = (rows.len(), sh[1], sh[2], sh[3]);
    if bs.dtype != DType::F32 || xs.dtype != DType::F32 || !Arc::ptr_eq(bs.gpu(), xs.gpu()) {
        return Err(dev_err(
            "square_linf_candidates",
            "best and x must be f32 on the same GPU",
        ));
    }
    let g = bs.gpu().clone();
    let mut meta: Vec<u32> = Vec::with_capacity(3 * na + signs.len());
    meta.extend_from_slice(rows);
    meta.extend_from_slice(vh);
    meta.extend_from_slice(vw);
    // The kernel reads the f32 signs as raw words of the same u32 array.
    meta.extend_from_slice(bytemuck::cast_slice(signs));
    let m = g.upload(&meta)?;
    let total = na * h * w * c;
    let y = empty(&g, total, DType::F32)?;
    if total > 0 {
        run1(
            &g,
            "square_linf_cand_f32",
            total,
            Args::new()
                .push(y.ptr())
                .push(bs.ptr())
                .push(xs.ptr())
                .push(m.ptr())
                .push(na as u32)
                .push(h as u32)
                .push(w as u32)
                .push(c as u32)
                .push(s)
                .push(eps)
                .push(total as u64),
        )?;
    }
    Ok(Tensor::from_cuda(&[na, h, w, c], y))
}

/// `dst` with rows replaced: `out[pairs[2p]] = src[pairs[2p+1]]` (rows of `dst.numel()/N`
/// values). Out of place (a device copy of `dst`, then the scatter), so tensors sharing `dst`
/// keep their values. The CPU twin is `attack::resident::copy_rows`.
pub fn copy_rows(dst: &Tensor, src: &Tensor, pairs: &[u32]) -> Result<Tensor> {
    let ds = st("copy_rows", dst)?;
    let ss = st("copy_rows", src)?;
    if ds.dtype != DType::F32 || ss.dtype != DType::F32 || !Arc::ptr_eq(ds.gpu(), ss.gpu()) {
        return Err(dev_err(
            "copy_rows",
            "dst and src must be f32 on the same GPU",
        ));
    }
    let g = ds.gpu().clone();
    let out = ds.try_clone()?;
    let d = dst.numel() / dst.shape()[0].max(1);
    let np = pairs.len() / 2;
    if np > 0 && d > 0 {
        let p = g.upload(pairs)?;
        run1(
            &g,
            "copy_rows_f32",
            np * d,
            Args::new()
                .push(out.ptr())
                .push(ss.ptr())
                .push(p.ptr())
                .push(d as u32)
                .push((np * d) as u64),
        )?;
    }
    Ok(Tensor::from_cuda(dst.shape(), out))
}

/// The f32 device pointers of APGD's step inputs (all on `x_adv`'s GPU), or an error.
fn apgd_inputs(op: &str, ts: [&Tensor; 4]) -> Result<(Arc<Gpu>, [u64; 4])> {
    let g = st(op, ts[0])?.gpu().clone();
    let mut ptrs = [0u64; 4];
    for (p, t) in ptrs.iter_mut().zip(ts) {
        let s = st(op, t)?;
        if s.dtype != DType::F32 || !Arc::ptr_eq(s.gpu(), &g) {
            return Err(dev_err(op, "every batch must be f32 on the same GPU"));
        }
        *p = s.ptr();
    }
    Ok((g, ptrs))
}

/// APGD's step with momentum `a` on GPU f32 batches (N, H, W, C), the GPU twin of
/// `attack::resident::apgd_step`: l-inf one thread per element (same rounding as the CPU, no
/// FMA), l2 (`l2`) one block of 1024 threads per row (f64 norm sums like the CPU's).
#[allow(clippy::too_many_arguments)]
pub fn apgd_step(
    l2: bool,
    x_adv: &Tensor,
    x_old: &Tensor,
    grad: &Tensor,
    x0: &Tensor,
    step: &[f32],
    eps: f32,
    a: f32,
) -> Result<Tensor> {
    let (g, p) = apgd_inputs("apgd_step", [x_adv, x_old, grad, x0])?;
    let n = step.len();
    let total = x_adv.numel();
    let d = total / n.max(1);
    let sv = g.upload(step)?;
    let y = empty(&g, total, DType::F32)?;
    if total > 0 {
        let args = Args::new()
            .push(y.ptr())
            .push(p[0])
            .push(p[1])
            .push(p[2])
            .push(p[3])
            .push(sv.ptr())
            .push(eps)
            .push(a)
            .push(d as u32);
        if l2 {
            run(&g, "apgd_l2_step_f32", (n as u32, 1, 1), 1024, 0, args)?;
        } else {
            run1(&g, "apgd_linf_step_f32", total, args.push(total as u64))?;
        }
    }
    Ok(Tensor::from_cuda(x_adv.shape(), y))
}

/// Per-row count of coordinates where `a` and `b` (N, ...) differ, on the GPU (APGD-L1's L0
/// norm of `x_best - x0`); the CPU twin is `attack::resident::row_l0`.
pub fn row_l0(a: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    let (g, p) = apgd_inputs("row_l0", [a, b, a, b])?;
    let n = a.shape().first().copied().unwrap_or(0);
    if n == 0 || a.shape() != b.shape() {
        return Err(Error::shape(
            "row_l0",
            format!("a {:?}, b {:?}", a.shape(), b.shape()),
        ));
    }
    let d = a.numel() / n;
    let out = empty(&g, n, DType::F32)?;
    run(
        &g,
        "row_l0_f32",
        (n as u32, 1, 1),
        256,
        0,
        Args::new()
            .push(out.ptr())
            .push(p[0])
            .push(p[1])
            .push(d as u32),
    )?;
    g.download(&out.buf, n)
}

// ---------------------------------------------------------------- fab_step.cu

/// FAB's step on GPU f32 batches (N, H, W, C), `norm` 0 l-inf, 1 l2, 2 l1: the GPU twin of
/// `attack::resident::fab_step` (row `n` projected from `x1` and from `im2` onto the boundary
/// linearised by `w` and `df[n]`, then the biased step; l-inf / l2 find the projections' roots
/// by a bracketed search and l1 its crossing coordinate by a radix select, where the CPU sorts).
pub fn fab_step(
    x1: &Tensor,
    im2: &Tensor,
    w: &Tensor,
    df: &[f32],
    norm: u32,
    eta: f32,
    alpha_max: f32,
) -> Result<Tensor> {
    let (g, p) = apgd_inputs("fab_step", [x1, im2, w, x1])?;
    let n = df.len();
    let total = x1.numel();
    let dv = g.upload(df)?;
    let out = empty(&g, total, DType::F32)?;
    if n > 0 && total > 0 {
        run(
            &g,
            "fab_step_f32",
            (n as u32, 1, 1),
            1024,
            0,
            Args::new()
                .push(out.ptr())
                .push(p[0])
                .push(p[1])
                .push(p[2])
                .push(dv.ptr())
                .push(norm)
                .push(eta)
                .push(alpha_max)
                .push((total / n) as u32),
        )?;
    }
    Ok(Tensor::from_cuda(x1.shape(), out))
}

/// Per-row distances between GPU batches `a`, `b` (N, ...): `norm` 0 l-inf, 1 l2, 2 l1 (f64
/// sums); the CPU twin is `attack::resident::row_dist`.
pub fn row_dist(a: &Tensor, b: &Tensor, norm: u32) -> Result<Vec<f32>> {
    let (g, p) = apgd_inputs("row_dist", [a, b, a, b])?;
    let n = a.shape().first().copied().unwrap_or(0);
    if n == 0 {
        return Ok(Vec::new());
    }
    let out = empty(&g, n, DType::F32)?;
    run(
        &g,
        "row_dist_f32",
        (n as u32, 1, 1),
        256,
        0,
        Args::new()
            .push(out.ptr())
            .push(p[0])
            .push(p[1])
            .push(norm)
            .push((a.numel() / n) as u32),
    )?;
    g.download(&out.buf, n)
}

/// `x` with rows `rows` replaced by `c + (x - c) beta` (out of place), on the GPU; the CPU
/// twin is `attack::resident::shrink_rows`.
pub fn shrink_rows(x: &Tensor, c: &Tensor, rows: &[u32], beta: f32) -> Result<Tensor> {
    let (g, p) = apgd_inputs("shrink_rows", [x, c, x, c])?;
    let out = st("shrink_rows", x)?.try_clone()?;
    let n = x.shape().first().copied().unwrap_or(0);
    if !rows.is_empty() && n > 0 {
        let d = x.numel() / n;
        let r = g.upload(rows)?;
        let total = rows.len() * d;
        run1(
            &g,
            "shrink_rows_f32",
            total,
            Args::new()
                .push(out.ptr())
                .push(p[1])
                .push(r.ptr())
                .push(beta)
                .push(d as u32)
                .push(total as u64),
        )?;
    }
    Ok(Tensor::from_cuda(x.shape(), out))
}

// ---------------------------------------------------------------- square_rows.cu

/// Most channels the Square l2 / l1 kernels handle (their per-channel sums and scales sit in
/// shared memory: `SQ_MAX_C` in square_rows.cu).
pub const SQUARE_MAX_C: usize = 16;

/// The per-query upload of the Square l2 / l1 kernels (`SqRow` in square_rows.cu): `[rows,
/// vh1, vw1, vh2, vw2, transpose (NA each), sign bits (NA, C), profile bits (s, s)]`.
pub fn square_l2l1_meta(
    rows: &[u32],
    windows: [&[u32]; 4],
    transpose: &[bool],
    signs: &[f32],
    profile: &[f32],
) -> Vec<u32> {
    let mut meta: Vec<u32> = Vec::with_capacity(6 * rows.len() + signs.len() + profile.len());
    meta.extend_from_slice(rows);
    for v in windows {
        meta.extend_from_slice(v);
    }
    meta.extend(transpose.iter().map(|&t| t as u32));
    // f32 values travel as their bit patterns inside the u32 array (`SqRow` reads them back).
    meta.extend_from_slice(bytemuck::cast_slice(signs));
    meta.extend_from_slice(bytemuck::cast_slice(profile));
    meta
}

/// Square l2 / l1 candidates on the GPU, the GPU twin of
/// `attack::resident::square_l2l1_candidates`: row `a` of the result (NA, H, W, C) is made
/// from row `rows[a]` of `best` and of the clean `x` (N, H, W, C), with the window corners
/// `windows = [vh1, vw1, vh2, vw2]` (w1 gets the mass, w2 is emptied), the eta `profile`
/// (s x s, transposed for the rows flagged in `transpose`) and one sign per channel
/// (`signs`, NA x C); `l1` picks the l1 projection over the l2 rescale. One block of 1024
/// threads per row; every per-row input goes up in one upload.
#[allow(clippy::too_many_arguments)]
pub fn square_l2l1_candidates(
    best: &Tensor,
    x: &Tensor,
    rows: &[u32],
    windows: [&[u32]; 4],
    transpose: &[bool],
    s: u32,
    profile: &[f32],
    signs: &[f32],
    l1: bool,
    eps: f32,
) -> Result<Tensor> {
    let op = "square_l2l1_candidates";
    let bs = st(op, best)?;
    let xs = st(op, x)?;
    let sh = best.shape();
    let (na, h, w, c) = (rows.len(), sh[1], sh[2], sh[3]);
    if bs.dtype != DType::F32 || xs.dtype != DType::F32 || !Arc::ptr_eq(bs.gpu(), xs.gpu()) {
        return Err(dev_err(op, "best and x must be f32 on the same GPU"));
    }
    if c > SQUARE_MAX_C || windows.iter().any(|v| v.len() != na) || transpose.len() != na {
        return Err(Error::shape(
            op,
            format!(
                "{c} channels (at most {SQUARE_MAX_C}), {na} rows, {:?} corners, {} transpose flags",
                windows.map(|v| v.len()),
                transpose.len()
            ),
        ));
    }
    let g = bs.gpu().clone();
    let total = na * h * w * c;
    let y = empty(&g, total, DType::F32)?;
    if total > 0 {
        let m = g.upload(&square_l2l1_meta(rows, windows, transpose, signs, profile))?;
        run(
            &g,
            if l1 {
                "square_l1_cand_f32"
            } else {
                "square_l2_cand_f32"
            },
            (na as u32, 1, 1),
            1024,
            0,
            Args::new()
                .push(y.ptr())
                .push(bs.ptr())
                .push(xs.ptr())
                .push(m.ptr())
                .push(na as u32)
                .push(h as u32)
                .push(w as u32)
                .push(c as u32)
                .push(s)
                .push(eps),
        )?;
    }
    Ok(Tensor::from_cuda(&[na, h, w, c], y))
}
