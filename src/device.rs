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
