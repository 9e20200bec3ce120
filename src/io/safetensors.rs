//! safetensors files: an 8-byte little-endian header length, a JSON header (name -> dtype,
//! shape, byte range; optional `__metadata__` string map), then the raw little-endian data.
//! Parsing and validation of the header (size limit, offsets, shape overflow) is the
//! `safetensors` crate's; this file converts dtypes and writes atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ::safetensors::tensor::TensorView;
use ::safetensors::{Dtype, SafeTensors};

use super::host::{bf16_to_f32, f16_to_f32, HostData, HostTensor, NamedTensors};
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
    let mut out = NamedTensors::new();
    for (name, view) in st.iter() {
        let t = convert(&view).map_err(|m| Error::format(path, format!("tensor '{name}': {m}")))?;
        out.insert(name.to_string(), t);
    }
    Ok((out, metadata))
}

fn convert(v: &TensorView<'_>) -> std::result::Result<HostTensor, String> {
    let b = v.data();
    let shape = v.shape().to_vec();
    fn chunks<const N: usize, T>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        b.chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    let data = match v.dtype() {
        Dtype::F32 => HostData::F32(chunks(b, f32::from_le_bytes)),
        Dtype::F64 => HostData::F32(chunks(b, |a| f64::from_le_bytes(a) as f32)),
        Dtype::F16 => HostData::F32(chunks(b, |a| f16_to_f32(u16::from_le_bytes(a)))),
        Dtype::BF16 => HostData::F32(chunks(b, |a| bf16_to_f32(u16::from_le_bytes(a)))),
        Dtype::I64 => HostData::I64(chunks(b, i64::from_le_bytes)),
        Dtype::I32 => HostData::I64(chunks(b, |a| i64::from(i32::from_le_bytes(a)))),
        Dtype::U32 => HostData::I64(chunks(b, |a| i64::from(u32::from_le_bytes(a)))),
        Dtype::I16 => HostData::I64(chunks(b, |a| i64::from(i16::from_le_bytes(a)))),
        Dtype::U16 => HostData::I64(chunks(b, |a| i64::from(u16::from_le_bytes(a)))),
        Dtype::I8 => HostData::I64(b.iter().map(|&x| i64::from(x as i8)).collect()),
        Dtype::U8 => HostData::I64(b.iter().map(|&x| i64::from(x)).collect()),
        Dtype::BOOL => HostData::I64(b.iter().map(|&x| i64::from(x != 0)).collect()),
        other => {
            return Err(format!(
                "dtype {other:?} is not supported (use f32/f16/bf16/f64 or an integer type)"
            ))
        }
    };
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
        buffers.push((name, dtype, t.shape.clone(), t.to_le_bytes()));
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
    super::write_atomic(path, |f| {
        use std::io::Write;
        f.write_all(&bytes).map_err(|e| Error::io(path, e))?;
        f.sync_all().map_err(|e| Error::io(path, e))
    })
}
