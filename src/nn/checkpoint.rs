//! Model checkpoints in PyTorch names and layouts: safetensors or `.pth` (zip + pickle, read
//! by `torch.load(weights_only=True)`), chosen by the file extension when saving and by the
//! content when loading.

use super::model::StateValue;
use super::params::TorchTensor;
use crate::io::{self, HostData, HostTensor, NamedTensors, StateDictPick};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Checkpoint tensors -> model state. An integer tensor of one element becomes a counter
/// (`num_batches_tracked`, stored as a scalar or as `[1]`); a larger integer tensor is refused,
/// naming it: model weights are floating point, and an int32 `conv1.weight` read as floats
/// gives logits of 1e10 instead of an error.
pub fn to_state(t: NamedTensors, path: &Path) -> Result<BTreeMap<String, StateValue>> {
    t.into_iter()
        .map(|(k, v)| {
            let sv = match v.data {
                HostData::I64(d) if d.len() == 1 => StateValue::Int(d[0]),
                HostData::I64(d) => {
                    return Err(Error::format(
                        path,
                        format!(
                            "tensor '{k}' holds integers (shape {:?}, {} values); weights must \
                             be floating point (f32, f16, bf16 or f64)",
                            v.shape,
                            d.len()
                        ),
                    ))
                }
                HostData::F32(d) => StateValue::Float(TorchTensor {
                    shape: v.shape,
                    data: d,
                }),
            };
            Ok((k, sv))
        })
        .collect()
}

/// Model state -> checkpoint tensors.
pub fn to_named(state: &BTreeMap<String, StateValue>) -> NamedTensors {
    state
        .iter()
        .map(|(k, v)| {
            let t = match v {
                StateValue::Float(t) => HostTensor::f32(t.shape.clone(), t.data.clone()),
                StateValue::Int(i) => HostTensor::i64(Vec::<usize>::new(), vec![*i]),
            };
            (k.clone(), t)
        })
        .collect()
}

/// Loads a state dict from safetensors or `.pth` (timm-style wrappers and `module.`
/// prefixes handled by `io::load_state_dict`).
pub fn load_state(path: &Path, pick: StateDictPick) -> Result<BTreeMap<String, StateValue>> {
    to_state(io::load_state_dict(path, pick)?, path)
}

/// Saves atomically; `.pth`/`.pt` -> PyTorch zip, `.safetensors` -> safetensors.
pub fn save_state(
    path: &Path,
    state: &BTreeMap<String, StateValue>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let named = to_named(state);
    match path.extension().and_then(|e| e.to_str()) {
        Some("pth") | Some("pt") => io::save_pth(path, &named),
        Some("safetensors") => io::save_safetensors(path, &named, metadata),
        _ => Err(Error::format(
            path,
            "unknown checkpoint extension: use .safetensors, .pth or .pt",
        )),
    }
}
