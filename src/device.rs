//! Where tensors live and ops run: `cpu` or `cuda:N`.
//!
//! `auto` resolves to the first CUDA device that works, else the CPU, and says which it picked.

use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// What the user asked for on the command line (`--device auto|cpu|cuda[:N]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    #[default]
    Auto,
    Exact(Device),
}

impl FromStr for DeviceRequest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::flag(
                "--device",
                format!("'{s}' is not a device; expected auto, cpu, cuda or cuda:N"),
            )
        };
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Exact(Device::Cpu)),
            "cuda" => Ok(DeviceRequest::Exact(Device::Cuda(0))),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                let n: usize = n.parse().map_err(|_| bad())?;
                Ok(DeviceRequest::Exact(Device::Cuda(n)))
            }
        }
    }
}

impl DeviceRequest {
    /// Resolves the request to a usable device. `Auto` falls back to the CPU and reports why.
    pub fn resolve(self) -> Result<(Device, String)> {
        match self {
            DeviceRequest::Exact(Device::Cpu) => Ok((Device::Cpu, "cpu (requested)".into())),
            DeviceRequest::Exact(d @ Device::Cuda(n)) => match crate::cuda::unavailable_reason(n) {
                None => Ok((d, format!("{d} (requested): {}", describe(n)))),
                Some(msg) => Err(Error::Device {
                    device: d.to_string(),
                    msg,
                }),
            },
            DeviceRequest::Auto => match crate::cuda::unavailable_reason(0) {
                None => Ok((Device::Cuda(0), format!("cuda:0 (auto): {}", describe(0)))),
                Some(why) => Ok((Device::Cpu, format!("cpu (auto: no usable GPU: {why})"))),
            },
        }
    }
}

fn describe(n: usize) -> String {
    match crate::cuda::gpu(n) {
        Ok(g) => format!("{} (sm_{})", g.name, g.arch),
        Err(e) => e.to_string(),
    }
}

/// Why CUDA device 0 cannot be used, or an empty string when it can.
pub fn cuda_unavailable_reason() -> String {
    crate::cuda::unavailable_reason(0).unwrap_or_default()
}

/// Numerical precision of the GPU path (`--precision f32|bf16`); the CPU is always f32.
///
/// - `F32`: every tensor f32, no TF32 in cuBLAS/cuDNN: the parity mode (matches the CPU to
///   1e-4 / 1e-3).
/// - `Tf32`: f32 tensors, but cuBLAS GEMMs and cuDNN convolutions may use TF32 tensor cores
///   (10-bit mantissa products, f32 accumulation): what PyTorch does for convolutions by
///   default (`torch.backends.cudnn.allow_tf32`), so the fair f32 comparison with PyTorch code.
///   The math mode is process-wide (`cuda::set_tf32`), switched on by
///   `set_default_precision(Tf32)`; hand-written kernels are f32 either way.
/// - `Bf16`: mixed precision. The normalised input is cast to bf16 and activations stay bf16;
///   master weights stay f32 (each is cast to bf16 once per weight version, not per op);
///   arithmetic accumulates in f32 inside every kernel, cuBLAS and cuDNN; BN statistics (f64
///   partials), softmax / CE / focal loss arithmetic and the loss values are f32; gradients of
///   weights come back f32 for the optimiser, and the input gradient (attacks) is f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    Tf32,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Tf32 => "tf32",
        })
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "tf32" => Ok(Precision::Tf32),
            _ => Err(Error::flag(
                "--precision",
                format!("'{s}' is not a precision; expected f32, tf32 or bf16"),
            )),
        }
    }
}

impl Precision {
    /// Storage type of activations on the GPU.
    pub fn activation_dtype(self) -> crate::cuda::DType {
        match self {
            Precision::F32 | Precision::Tf32 => crate::cuda::DType::F32,
            Precision::Bf16 => crate::cuda::DType::Bf16,
        }
    }

    /// What runs on `device` in this precision, for a start-up line.
    pub fn describe(self, device: Device) -> String {
        match (device, self) {
            (Device::Cpu, _) => "f32 (the CPU path is always f32)".into(),
            (Device::Cuda(_), Precision::F32) => "f32 (parity mode, no TF32)".into(),
            (Device::Cuda(_), Precision::Tf32) => {
                "f32 tensors, TF32 tensor cores in cuBLAS/cuDNN (as PyTorch's convolutions)".into()
            }
            (Device::Cuda(_), Precision::Bf16) => {
                "bf16 activations, f32 master weights and accumulation".into()
            }
        }
    }
}

static DEFAULT_PRECISION: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Sets the precision every new forward context (`nn::Ctx::new`) starts with: what a binary
/// calls once after parsing `--precision` (see `parse_precision_flag`).
pub fn set_default_precision(p: Precision) {
    DEFAULT_PRECISION.store(p as u8, std::sync::atomic::Ordering::SeqCst);
    crate::cuda::set_tf32(p == Precision::Tf32);
}

/// The precision new forward contexts start with (`F32` unless set).
pub fn default_precision() -> Precision {
    match DEFAULT_PRECISION.load(std::sync::atomic::Ordering::SeqCst) {
        1 => Precision::Bf16,
        2 => Precision::Tf32,
        _ => Precision::F32,
    }
}

/// Parses a `--precision` value and makes it the process default; returns it. For binaries:
/// `let p = mpm::device::parse_precision_flag(&args.precision)?;`.
pub fn parse_precision_flag(s: &str) -> Result<Precision> {
    let p: Precision = s.parse()?;
    set_default_precision(p);
    Ok(p)
}
