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

    /// Little-endian bytes of the buffer, as both file formats store them.
    pub(crate) fn to_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            HostData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            HostData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
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

/// IEEE binary16 -> f32 (exact).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    match exp {
        // Zero and subnormals: man * 2^-24.
        0 => sign * (man as f32) * (1.0 / 16_777_216.0),
        0x1f => f32::from_bits((u32::from(h & 0x8000) << 16) | 0x7f80_0000 | (man << 13)),
        _ => f32::from_bits((u32::from(h & 0x8000) << 16) | ((exp + 112) << 23) | (man << 13)),
    }
}

/// bfloat16 -> f32 (exact: bf16 is the top half of an f32).
pub(crate) fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc0a0), -5.0);
    }

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
