//! What a checkpoint's selected state dict holds (names, shapes, element types), read without
//! its data: the safetensors JSON header, or the `.pth` pickle alone. Loaders check it against
//! the model before a storage is read ([`super::load_state_dict_checked`]), so a file whose
//! names or shapes do not fit is refused without reading, decompressing or allocating its
//! tensors, and what is then read is exactly the model's size.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use super::pickle::TensorRef;
use crate::{Error, Result};

/// Name, shape and element type of one tensor, as the file declares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub shape: Vec<usize>,
    /// PyTorch's name of the element type: `float32`, `bfloat16`, `int64`, ...
    pub dtype: String,
}

impl TensorInfo {
    /// A floating-point element type (what model weights must be).
    pub fn is_float(&self) -> bool {
        matches!(
            self.dtype.as_str(),
            "float32" | "float64" | "float16" | "bfloat16"
        )
    }

    /// Number of elements (saturating: a preview is not validated yet).
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }
}

/// The tensors of a state dict by name, without their data.
pub type StatePreview = BTreeMap<String, TensorInfo>;

/// The preview of `.pth` views (the selected dict's tensors).
pub(crate) fn of_views(path: &Path, views: &[(String, Rc<TensorRef>)]) -> Result<StatePreview> {
    views
        .iter()
        .map(|(name, t)| {
            let shape = t
                .shape
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<std::result::Result<Vec<usize>, _>>()
                .map_err(|_| {
                    Error::format(path, format!("tensor '{name}': a dimension is too large"))
                })?;
            Ok((
                name.clone(),
                TensorInfo {
                    shape,
                    dtype: t.elem.name().to_string(),
                },
            ))
        })
        .collect()
}

/// Largest safetensors header read (the `safetensors` crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The preview of a safetensors file from its header alone (8-byte length + JSON); the data
/// after it is not read. The full load validates the offsets later.
/// With it, the header's `__metadata__` strings (an `mpm-train` checkpoint says its format there).
pub(crate) fn of_safetensors_with_metadata(
    path: &Path,
) -> Result<(StatePreview, BTreeMap<String, String>)> {
    let bad = |m: String| Error::format(path, format!("bad safetensors file: {m}"));
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad("shorter than its 8-byte header length".into()))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header of {n} bytes, the limit is {MAX_HEADER_BYTES}"
        )));
    }
    let mut header = Vec::new();
    f.take(n)
        .read_to_end(&mut header)
        .map_err(|e| Error::io(path, e))?;
    if header.len() as u64 != n {
        return Err(bad(format!(
            "header declares {n} bytes, the file holds {}",
            header.len()
        )));
    }
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let mut out = StatePreview::new();
    let mut metadata = BTreeMap::new();
    for (name, v) in json {
        if name == "__metadata__" {
            if let Some(m) = v.as_object() {
                for (k, v) in m {
                    if let Some(v) = v.as_str() {
                        metadata.insert(k.clone(), v.to_string());
                    }
                }
            }
            continue;
        }
        let dtype = v["dtype"]
            .as_str()
            .ok_or_else(|| bad(format!("tensor '{name}' has no dtype")))?;
        let shape = v["shape"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect::<Option<Vec<usize>>>()
            })
            .ok_or_else(|| bad(format!("tensor '{name}' has no valid shape")))?;
        out.insert(
            name,
            TensorInfo {
                shape,
                dtype: torch_dtype_name(dtype).to_string(),
            },
        );
    }
    Ok((out, metadata))
}

/// PyTorch's name of a safetensors dtype (`F32` -> `float32`), so both formats read alike.
fn torch_dtype_name(st: &str) -> &str {
    match st {
        "F64" => "float64",
        "F32" => "float32",
        "F16" => "float16",
        "BF16" => "bfloat16",
        "I64" => "int64",
        "I32" => "int32",
        "I16" => "int16",
        "I8" => "int8",
        "U8" => "uint8",
        "U16" => "uint16",
        "U32" => "uint32",
        "U64" => "uint64",
        "BOOL" => "bool",
        other => other,
    }
}

/// The preview with a leading `module.` stripped, by the rule of the loaded tensors.
pub(crate) fn strip_module(p: StatePreview) -> StatePreview {
    if !p.keys().any(|k| k.starts_with("module.")) {
        return p;
    }
    p.into_iter()
        .map(|(k, v)| match k.strip_prefix("module.") {
            Some(rest) => (rest.to_string(), v),
            None => (k, v),
        })
        .collect()
}
