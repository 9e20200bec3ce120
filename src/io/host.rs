//! Host-side tensors as they come out of (and go into) checkpoint files: a shape and a flat
//! row-major buffer in PyTorch layout (NCHW weights, `[O, I, kh, kw]` convolutions).

use std::collections::BTreeMap;

/// Element storage of a [`HostTensor`]. Floating dtypes (f16, bf16, f32, f64) are widened or
/// narrowed to `F32`; integer and bool dtypes are widened to `I64`.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A dense, contiguous, row-major tensor on the host. Scalars have `shape == []` and one element.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

/// Tensors by name, sorted by name (the order `save_*` writes them in).
pub type NamedTensors = BTreeMap<String, HostTensor>;

impl HostTensor {
    /// An f32 tensor. Panics if `data.len()` differs from the product of `shape`: this is a
    /// programming error on the caller's side, not a property of an input file.
    pub fn f32(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Self {
        let shape = shape.into();
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "HostTensor::f32: shape {shape:?} does not match {} elements",
            data.len()
        );
        HostTensor {
            shape,
            data: HostData::F32(data),
        }
    }

    /// An i64 tensor. Panics on a shape/length mismatch, like [`HostTensor::f32`].
    pub fn i64(shape: impl Into<Vec<usize>>, data: Vec<i64>) -> Self {
        let shape = shape.into();
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "HostTensor::i64: shape {shape:?} does not match {} elements",
            data.len()
        );
        HostTensor {
            shape,
            data: HostData::I64(data),
        }
    }

    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        match &self.data {
            HostData::F32(v) => v.len(),
            HostData::I64(v) => v.len(),
        }
    }

    /// The values as f32 (i64 values are converted with `as`, exact up to 2^24).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The f32 buffer, or `None` for an integer tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            HostData::F32(v) => Some(v),
            HostData::I64(_) => None,
        }
    }

    /// The i64 buffer, or `None` for a float tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            HostData::I64(v) => Some(v),
            HostData::F32(_) => None,
        }
    }

    /// Short dtype name used in messages: `"f32"` or `"i64"`.
    pub fn dtype_name(&self) -> &'static str {
        match &self.data {
            HostData::F32(_) => "f32",
            HostData::I64(_) => "i64",
        }
    }

    /// The buffer as little-endian bytes, as both file formats store them (no copy).
    pub(crate) fn le_bytes(&self) -> &[u8] {
        match &self.data {
            HostData::F32(v) => super::elements::le_bytes(v),
            HostData::I64(v) => super::elements::le_bytes(v),
        }
    }

    /// Checks that the shape's element count matches the buffer (the fields are public, so a
    /// caller can break this) and returns it.
    pub(crate) fn checked_numel(&self, name: &str) -> Result<usize, String> {
        let n = self
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("tensor '{name}': shape {:?} overflows", self.shape))?;
        if n != self.numel() {
            return Err(format!(
                "tensor '{name}': shape {:?} needs {n} elements but the buffer holds {}",
                self.shape,
                self.numel()
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numel_and_views() {
        let t = HostTensor::i64(vec![], vec![7]);
        assert_eq!(t.numel(), 1);
        assert_eq!(t.to_f32_vec(), vec![7.0]);
        assert!(t.as_f32().is_none());
        let t = HostTensor::f32(vec![2, 0], vec![]);
        assert_eq!(t.numel(), 0);
    }
}
