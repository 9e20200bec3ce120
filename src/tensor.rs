//! `Tensor`: a shape, a storage and the device the storage lives on.
//!
//! Activations are NHWC (channels last) inside the engine; PyTorch layouts appear only at the
//! edges (`nn::layout`). Storage is shared (`Arc`) so recording a value on the tape is free;
//! writes go through `data_mut`, which copies only when the buffer is shared.

use crate::device::Device;
use crate::{Error, Result};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
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
        match *self.storage {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    pub fn data(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(v) => v,
        }
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        match Arc::make_mut(&mut self.storage) {
            Storage::Cpu(v) => v,
        }
    }

    pub fn into_vec(self) -> Vec<f32> {
        match Arc::try_unwrap(self.storage) {
            Ok(Storage::Cpu(v)) => v,
            Err(shared) => match &*shared {
                Storage::Cpu(v) => v.clone(),
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

    /// `self += other` (same shape).
    pub fn add_assign(&mut self, other: &Tensor) -> Result<()> {
        self.expect_shape("add_assign", other.shape())?;
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
