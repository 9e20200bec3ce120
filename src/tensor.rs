//! `Tensor`: a shape, a storage and the device the storage lives on.
//!
//! Activations are NHWC (channels last) inside the engine; PyTorch layouts appear only at the
//! edges (`nn::layout`). Storage is shared (`Arc`) so recording a value on the tape is free;
//! writes go through `data_mut`, which copies only when the buffer is shared.
//!
//! A tensor on `cuda:N` holds a device buffer (`cuda::storage::CudaStorage`). Its host view
//! (`data()`) is downloaded on first use and cached, so code written for the CPU still reads
//! it; `data_mut()` on a GPU tensor moves it to the host (writes happen there).

use crate::cuda::storage::{CudaStorage, DType};
use crate::device::Device;
use crate::{Error, Result};
use std::sync::Arc;

#[derive(Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
    Cuda(CudaStorage),
}

impl Clone for Storage {
    fn clone(&self) -> Self {
        match self {
            Storage::Cpu(v) => Storage::Cpu(v.clone()),
            Storage::Cuda(c) => Storage::Cuda(
                c.try_clone()
                    .unwrap_or_else(|e| panic!("copying a GPU tensor failed: {e}")),
            ),
        }
    }
}

fn host_of(c: &CudaStorage) -> &[f32] {
    c.host()
        .unwrap_or_else(|e| panic!("reading a GPU tensor back to the host failed: {e}"))
}

#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Arc<Storage>,
}

impl Tensor {
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::shape(
                "Tensor::from_vec",
                format!("shape {shape:?} needs {numel} values, got {}", data.len()),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Arc::new(Storage::Cpu(data)),
        })
    }

    /// Builds a tensor whose element count is known to match (internal kernels).
    pub(crate) fn new_unchecked(shape: &[usize], data: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor {
            shape: shape.to_vec(),
            storage: Arc::new(Storage::Cpu(data)),
        }
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::new_unchecked(shape, vec![0.0; shape.iter().product()])
    }

    pub fn full(shape: &[usize], v: f32) -> Tensor {
        Tensor::new_unchecked(shape, vec![v; shape.iter().product()])
    }

    pub fn scalar(v: f32) -> Tensor {
        Tensor::new_unchecked(&[], vec![v])
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn device(&self) -> Device {
        match &*self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(c) => Device::Cuda(c.gpu().ordinal),
        }
    }

    pub fn is_cuda(&self) -> bool {
        matches!(*self.storage, Storage::Cuda(_))
    }

    /// The device storage of a GPU tensor.
    pub fn cuda(&self) -> Option<&CudaStorage> {
        match &*self.storage {
            Storage::Cuda(c) => Some(c),
            Storage::Cpu(_) => None,
        }
    }

    /// Wraps a device buffer (internal: launchers guarantee `storage.len == numel`).
    pub(crate) fn from_cuda(shape: &[usize], storage: CudaStorage) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), storage.len);
        Tensor {
            shape: shape.to_vec(),
            storage: Arc::new(Storage::Cuda(storage)),
        }
    }

    /// A copy on `device` (f32 on the GPU), or `self` (shared) when already there.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        self.to_device_as(device, DType::F32)
    }

    /// A copy on `device` with GPU element type `dtype` (ignored for the CPU).
    pub fn to_device_as(&self, device: Device, dtype: DType) -> Result<Tensor> {
        match (device, &*self.storage) {
            (Device::Cpu, Storage::Cpu(_)) => Ok(self.clone()),
            (Device::Cpu, Storage::Cuda(c)) => {
                Ok(Tensor::new_unchecked(&self.shape, c.host()?.to_vec()))
            }
            (Device::Cuda(n), Storage::Cuda(c)) if c.gpu().ordinal == n && c.dtype == dtype => {
                Ok(self.clone())
            }
            (Device::Cuda(n), _) => Ok(Tensor::from_cuda(
                &self.shape,
                CudaStorage::upload(n, self.data(), dtype)?,
            )),
        }
    }

    /// Host values. For a GPU tensor: downloaded on first call (waits for the GPU), then cached.
    pub fn data(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(v) => v,
            Storage::Cuda(c) => host_of(c),
        }
    }

    /// Mutable host values. A GPU tensor is first moved to the host.
    pub fn data_mut(&mut self) -> &mut [f32] {
        if let Storage::Cuda(c) = &*self.storage {
            self.storage = Arc::new(Storage::Cpu(host_of(c).to_vec()));
        }
        match Arc::make_mut(&mut self.storage) {
            Storage::Cpu(v) => v,
            Storage::Cuda(_) => unreachable!("moved to the host above"),
        }
    }

    pub fn into_vec(self) -> Vec<f32> {
        match Arc::try_unwrap(self.storage) {
            Ok(Storage::Cpu(v)) => v,
            Ok(Storage::Cuda(c)) => host_of(&c).to_vec(),
            Err(shared) => match &*shared {
                Storage::Cpu(v) => v.clone(),
                Storage::Cuda(c) => host_of(c).to_vec(),
            },
        }
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> f32 {
        self.data()[0]
    }

    /// Same storage, new shape with the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if numel != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("cannot view {:?} as {shape:?}", self.shape),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: self.storage.clone(),
        })
    }

    /// `self += other` (same shape). On the GPU when `self` is a GPU tensor.
    pub fn add_assign(&mut self, other: &Tensor) -> Result<()> {
        self.expect_shape("add_assign", other.shape())?;
        if self.is_cuda() {
            *self = crate::cuda::ops::axpby(self, other, 1.0, 1.0)?;
            return Ok(());
        }
        let o = other.data();
        for (a, b) in self.data_mut().iter_mut().zip(o) {
            *a += *b;
        }
        Ok(())
    }

    pub fn map(&self, f: impl Fn(f32) -> f32) -> Tensor {
        Tensor::new_unchecked(&self.shape, self.data().iter().map(|&v| f(v)).collect())
    }

    pub fn expect_shape(&self, op: &'static str, want: &[usize]) -> Result<()> {
        if self.shape != want {
            return Err(Error::shape(
                op,
                format!("expected shape {want:?}, got {:?}", self.shape),
            ));
        }
        Ok(())
    }

    pub fn all_finite(&self) -> bool {
        self.data().iter().all(|v| v.is_finite())
    }
}
