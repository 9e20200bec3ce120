//! safetensors files: an 8-byte little-endian header length, a JSON header (name -> dtype,
//! shape, byte range; optional `__metadata__` string map), then the raw little-endian data.
//! Parsing and validation of the header (size limit, offsets, shape overflow) is the
//! `safetensors` crate's; this file converts dtypes and writes atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ::safetensors::tensor::TensorView;
use ::safetensors::{Dtype, SafeTensors};
use rayon::prelude::*;

use super::elements::{decode, Stored};
use super::host::{HostData, HostTensor, NamedTensors};
use crate::{Error, Result};

/// Reads every tensor and the `__metadata__` map. f16/bf16/f64 become f32; bool, u8, i8, i16,
/// u16, i32, u32 become i64. Other dtypes (f8, f4, complex, u64) are an error naming the tensor.
pub fn load_safetensors(path: &Path) -> Result<(NamedTensors, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(path, format!("bad safetensors file: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, format!("bad safetensors file: {e}")))?;
    let metadata: BTreeMap<String, String> = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    // Tensors convert independently: spread them over the rayon threads (a ResNet-50 has 320,
    // from a few values to 2M), the file read above being the only serial part.
    let views = st.tensors();
    let converted = views
        .par_iter()
        .map(|(name, view)| {
            convert(view)
                .map(|t| (name.clone(), t))
                .map_err(|m| Error::format(path, format!("tensor '{name}': {m}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((converted.into_iter().collect(), metadata))
}

fn convert(v: &TensorView<'_>) -> std::result::Result<HostTensor, String> {
    let stored = match v.dtype() {
        Dtype::F32 => Stored::F32,
        Dtype::F64 => Stored::F64,
        Dtype::F16 => Stored::F16,
        Dtype::BF16 => Stored::BF16,
        Dtype::I64 => Stored::I64,
        Dtype::I32 => Stored::I32,
        Dtype::U32 => Stored::U32,
        Dtype::I16 => Stored::I16,
        Dtype::U16 => Stored::U16,
        Dtype::I8 => Stored::I8,
        Dtype::U8 => Stored::U8,
        Dtype::BOOL => Stored::Bool,
        other => {
            return Err(format!(
                "dtype {other:?} is not supported (use f32/f16/bf16/f64 or an integer type)"
            ))
        }
    };
    let shape = v.shape().to_vec();
    let data = decode(stored, v.data());
    let t = HostTensor { shape, data };
    t.checked_numel("")?;
    Ok(t)
}

/// Writes `tensors` (f32 -> F32, i64 -> I64) with `metadata` as `__metadata__`. Atomic: a temp
/// file in the same directory is written, fsynced and renamed over `path`.
pub fn save_safetensors(
    path: &Path,
    tensors: &NamedTensors,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        t.checked_numel(name).map_err(|m| Error::format(path, m))?;
        let dtype = match t.data {
            HostData::F32(_) => Dtype::F32,
            HostData::I64(_) => Dtype::I64,
        };
        buffers.push((name, dtype, t.shape.clone(), t.le_bytes()));
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
                .map_err(|e| Error::format(path, format!("tensor '{name}': {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: Option<HashMap<String, String>> = if metadata.is_empty() {
        None
    } else {
        Some(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    };
    let bytes = ::safetensors::serialize(views, meta)
        .map_err(|e| Error::format(path, format!("serializing safetensors: {e}")))?;
    let bytes = canonical_header(bytes).map_err(|m| Error::format(path, m))?;
    super::write_atomic(path, |f| {
        use std::io::Write;
        f.write_all(&bytes).map_err(|e| Error::io(path, e))?;
        f.sync_all().map_err(|e| Error::io(path, e))
    })
}

/// The `safetensors` crate writes `__metadata__` from a `HashMap`, so the order of its keys,
/// and with it the file's bytes, changed from one save to the next. The header is written
/// again with its keys sorted (serde_json's map is ordered) and padded with spaces to a
/// multiple of 8 bytes, as the crate pads it: the same tensors and metadata always give the
/// same file, so a re-export keeps the content hash that attack journals are keyed by.
fn canonical_header(bytes: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize)
        .filter(|&n| 8 + n <= bytes.len())
        .ok_or("serialized safetensors without a complete header")?;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])
        .map_err(|e| format!("serialized safetensors header: {e}"))?;
    let mut h = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}
