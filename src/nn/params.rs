//! Named parameter store: every tensor of a model under its PyTorch state_dict name.
//! Conv weights are held in the engine layout (OHWI); `export`/`import` convert at the edge.

use super::layout;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Trainable parameter.
    Param,
    /// Running statistic (not trained by gradients).
    Buffer,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub tensor: Tensor,
    pub kind: Kind,
    /// PyTorch shape (differs from `tensor.shape()` for conv weights).
    pub torch_shape: Vec<usize>,
}

impl Entry {
    pub fn is_conv_weight(&self) -> bool {
        self.torch_shape.len() == 4
    }
}

/// A tensor in PyTorch layout, as read from or written to a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    entries: BTreeMap<String, Entry>,
    /// `*.num_batches_tracked` counters of BN layers, by BN prefix.
    counters: BTreeMap<String, i64>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tensor given in PyTorch layout.
    pub fn insert(&mut self, name: &str, kind: Kind, torch: TorchTensor) -> Result<()> {
        let tensor = if torch.shape.len() == 4 {
            Tensor::from_vec(
                &layout::ohwi_shape(&torch.shape),
                layout::oihw_to_ohwi(&torch.data, &torch.shape),
            )?
        } else {
            Tensor::from_vec(&torch.shape, torch.data)?
        };
        self.entries.insert(
            name.to_string(),
            Entry {
                tensor,
                kind,
                torch_shape: torch.shape,
            },
        );
        Ok(())
    }

    pub fn add_counter(&mut self, bn_prefix: &str, value: i64) {
        self.counters.insert(bn_prefix.to_string(), value);
    }

    pub fn get(&self, name: &str) -> Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| Error::Msg(format!("model has no tensor named '{name}'")))
    }

    pub fn get_mut(&mut self, name: &str) -> Result<&mut Entry> {
        self.entries
            .get_mut(name)
            .ok_or_else(|| Error::Msg(format!("model has no tensor named '{name}'")))
    }

    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        Ok(&self.get(name)?.tensor)
    }

    pub fn counter(&self, bn_prefix: &str) -> Option<i64> {
        self.counters.get(bn_prefix).copied()
    }

    pub fn bump_counter(&mut self, bn_prefix: &str) {
        *self.counters.entry(bn_prefix.to_string()).or_insert(0) += 1;
    }

    pub fn counters(&self) -> &BTreeMap<String, i64> {
        &self.counters
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Entry)> {
        self.entries.iter_mut()
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.kind == Kind::Param)
            .map(|e| e.tensor.numel())
            .sum()
    }

    /// A tensor converted back to PyTorch layout.
    pub fn export(&self, name: &str) -> Result<TorchTensor> {
        let e = self.get(name)?;
        Ok(to_torch(e, &e.tensor))
    }

    /// Converts an engine-layout tensor shaped like entry `name` (e.g. its gradient) to
    /// PyTorch layout.
    pub fn export_like(&self, name: &str, t: &Tensor) -> Result<TorchTensor> {
        let e = self.get(name)?;
        t.expect_shape("export_like", e.tensor.shape())?;
        Ok(to_torch(e, t))
    }

    /// Moves every tensor (parameters and BN buffers) to `device`, as f32 on a GPU, so that a
    /// forward pass there reads weights already resident instead of uploading them per op.
    /// A no-op for tensors already there.
    pub fn to_device(&mut self, device: crate::device::Device) -> Result<()> {
        for e in self.entries.values_mut() {
            e.tensor = e.tensor.to_device(device)?;
        }
        Ok(())
    }

    /// Keeps only the entries for which `keep(name)` holds (e.g. dropping MPM bypass layers).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.entries.retain(|k, _| keep(k));
        self.counters
            .retain(|k, _| keep(&format!("{k}.num_batches_tracked")));
    }
}

fn to_torch(e: &Entry, t: &Tensor) -> TorchTensor {
    let data = if e.is_conv_weight() {
        layout::ohwi_to_oihw(t.data(), t.shape())
    } else {
        t.data().to_vec()
    };
    TorchTensor {
        shape: e.torch_shape.clone(),
        data,
    }
}
