//! Checkpoint formats: safetensors and PyTorch `.pth` (zip and legacy), read through a
//! restricted unpickler that never executes anything (see `pickle.rs`).
//!
//! Everything here is host-side and in PyTorch layout; the engine converts at the edge.
//! Writers are atomic: a temp file in the target directory, fsync, rename.

mod atomic;
mod digest;
pub mod elements;
mod host;
mod pickle;
mod preview;
mod pth;
mod run_lock;
mod safetensors;

use std::fs::File;
use std::io::Read;
use std::path::Path;

pub(crate) use atomic::process_alive;
pub use atomic::{
    remove_stale_temps, remove_stale_temps_tree, sync_dir, write_atomic, write_atomic_with,
    write_bytes_atomic, BulkDirs, Durability,
};
pub use digest::{hash_file, ContentHasher};
pub use host::{HostData, HostTensor, NamedTensors};
pub use preview::{StatePreview, TensorInfo};
pub use pth::{load_pth, save_pth};
pub use run_lock::{host_name, RunLock, RUN_LOCK_NAME};
pub use safetensors::{load_safetensors, save_safetensors};

use crate::{Error, Result};

/// Which weights [`load_state_dict`] takes from a training checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateDictPick {
    /// EMA weights when the file has them, else the model weights.
    #[default]
    Auto,
    /// `state_dict`, else `model`, else a top-level dict of tensors.
    Model,
    /// `state_dict_ema`, else `model_ema`; an error when neither exists.
    Ema,
}

const EMA_KEYS: &[&str] = &["state_dict_ema", "model_ema"];
const MODEL_KEYS: &[&str] = &["state_dict", "model"];

/// Loads model weights from a safetensors file or a PyTorch checkpoint, chosen by content
/// (zip magic, legacy pickle magic, safetensors header), not by extension.
///
/// For `.pth` training checkpoints (timm style: `{'state_dict', 'state_dict_ema', 'epoch',
/// 'optimizer', 'args', ...}`) `pick` selects the dict; a plain state dict is used as is.
/// A safetensors state dict is used as is; an `mpm-train` checkpoint (metadata `format`
/// `mpm-train/N`) gives its `ema.*` or `model.*` group by `pick`. A leading
/// `module.` (DataParallel, timm's EMA wrapper) is stripped from every name; scalar tensors
/// such as `num_batches_tracked` are kept. Non-tensor entries of the chosen dict are skipped.
pub fn load_state_dict(path: &Path, pick: StateDictPick) -> Result<NamedTensors> {
    Ok(load_state_dict_checked(path, pick, |_| Ok(()))?.1)
}

/// [`load_state_dict`] in two steps: `check` first gets the chosen state dict's names, shapes
/// and element types (a leading `module.` stripped), read without any tensor data (the
/// safetensors header, or the `.pth` pickle); only when it returns `Ok` are the tensors read.
/// A loader that knows its model refuses a file that does not fit it there, before a storage
/// is decompressed or allocated, and then reads exactly the model's size. Entries of a
/// training checkpoint other than the chosen dict (optimiser state, EMA when the model is
/// picked, arguments) are neither read nor counted.
pub fn load_state_dict_checked<T>(
    path: &Path,
    pick: StateDictPick,
    check: impl FnOnce(&StatePreview) -> Result<T>,
) -> Result<(T, NamedTensors)> {
    let (checked, tensors) = match sniff(path)? {
        Sniff::Pth => {
            let mut ck = pth::Checkpoint::open(path)?;
            let views = pick_from_pth(&ck, path, pick)?;
            let checked = check(&preview::strip_module(preview::of_views(path, &views)?))?;
            (checked, ck.materialize_all(views)?)
        }
        Sniff::Safetensors => {
            let (preview, meta) = preview::of_safetensors_with_metadata(path)?;
            let is_train_checkpoint = meta
                .get("format")
                .is_some_and(|f| f.starts_with(TRAIN_CHECKPOINT_FORMAT));
            if is_train_checkpoint {
                let group = train_checkpoint_group(path, preview.keys(), pick)?;
                let chosen: StatePreview = preview
                    .into_iter()
                    .filter_map(|(k, v)| k.strip_prefix(group).map(|n| (n.to_string(), v)))
                    .collect();
                let checked = check(&preview::strip_module(chosen))?;
                let tensors = load_safetensors(path)?
                    .0
                    .into_iter()
                    .filter_map(|(k, v)| k.strip_prefix(group).map(|n| (n.to_string(), v)))
                    .collect();
                (checked, tensors)
            } else {
                let checked = check(&preview::strip_module(preview))?;
                (checked, load_safetensors(path)?.0)
            }
        }
    };
    Ok((checked, strip_module_prefix(path, tensors)?))
}

/// The string keys of a `.pth` file's top-level dict that hold something (not `None`; empty
/// when the top level is not a dict), read from its pickle alone: no tensor data is read.
pub fn pth_top_level_keys(path: &Path) -> Result<Vec<String>> {
    let ck = pth::Checkpoint::open(path)?;
    Ok(ck
        .root
        .dict_items()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| match (k, v) {
            (_, pickle::Value::None) => None,
            (pickle::Value::Str(s), _) => Some(s.to_string()),
            _ => None,
        })
        .collect())
}

/// Does `path` start like a PyTorch checkpoint (zip or legacy pickle)? False when unreadable.
pub fn is_pytorch_file(path: &Path) -> bool {
    matches!(sniff(path), Ok(Sniff::Pth))
}

enum Sniff {
    Pth,
    Safetensors,
}

fn sniff(path: &Path) -> Result<Sniff> {
    let mut head = [0u8; 16];
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).map_err(|e| Error::io(path, e))? {
            0 => break,
            k => n += k,
        }
    }
    let head = &head[..n];
    if head.starts_with(b"PK") || head.starts_with(pth::LEGACY_MAGIC) {
        return Ok(Sniff::Pth);
    }
    if n >= 9 && head[8] == b'{' {
        return Ok(Sniff::Safetensors);
    }
    Err(Error::format(
        path,
        format!(
            "unrecognised checkpoint format (first bytes {}): expected a PyTorch zip, a \
             legacy torch.save file or safetensors",
            head[..n.min(8)]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    ))
}

/// Metadata `format` prefix of an `mpm-train` checkpoint (`train::checkpoint::FORMAT`).
const TRAIN_CHECKPOINT_FORMAT: &str = "mpm-train/";

/// An `mpm-train` checkpoint holds `model.*`, `ema.*` and `momentum.*` groups: `pick` chooses
/// the group's prefix as it chooses `state_dict` / `state_dict_ema` in a timm `.pth` (Auto =
/// EMA when stored), so every reader of weights (attacks, evaluations, the pseudo labeller)
/// takes such a file.
fn train_checkpoint_group<'a>(
    path: &Path,
    names: impl Iterator<Item = &'a String>,
    pick: StateDictPick,
) -> Result<&'static str> {
    let (mut has_ema, mut has_model) = (false, false);
    for n in names {
        has_ema |= n.starts_with("ema.");
        has_model |= n.starts_with("model.");
    }
    match pick {
        StateDictPick::Ema if !has_ema => Err(Error::format(
            path,
            "EMA weights requested, but this mpm-train checkpoint has no 'ema.*' tensors (EMA off)",
        )),
        StateDictPick::Ema => Ok("ema."),
        StateDictPick::Auto if has_ema => Ok("ema."),
        _ if !has_model => Err(Error::format(
            path,
            "an mpm-train checkpoint without 'model.*' tensors",
        )),
        _ => Ok("model."),
    }
}

/// The tensor views of the state dict `pick` selects (nothing read yet).
fn pick_from_pth(
    ck: &pth::Checkpoint,
    path: &Path,
    pick: StateDictPick,
) -> Result<Vec<(String, std::rc::Rc<pickle::TensorRef>)>> {
    let root = ck.root.clone();
    let Some(items) = root.dict_items() else {
        return Err(Error::format(
            path,
            format!("top-level object is {}, expected a dict", root.describe()),
        ));
    };
    let candidates: Vec<&str> = match pick {
        StateDictPick::Auto => EMA_KEYS.iter().chain(MODEL_KEYS).copied().collect(),
        StateDictPick::Model => MODEL_KEYS.to_vec(),
        StateDictPick::Ema => EMA_KEYS.to_vec(),
    };
    for key in candidates {
        if let Some(v) = root.dict_get(key) {
            if pick == StateDictPick::Auto && matches!(v, pickle::Value::None) {
                continue; // e.g. 'state_dict_ema': None when EMA was off
            }
            if v.dict_items().is_none() {
                return Err(Error::format(
                    path,
                    format!(
                        "checkpoint key '{key}' is {}, expected a dict of tensors",
                        v.describe()
                    ),
                ));
            }
            return pth::dict_views(ck, &v, key);
        }
    }
    if pth::holds_tensors(&root) {
        if pick != StateDictPick::Ema {
            return pth::dict_views(ck, &root, "top-level dict");
        }
        return Err(Error::format(
            path,
            "EMA weights requested, but the file is a plain state dict (no 'state_dict_ema' \
             or 'model_ema' key)",
        ));
    }
    let keys: Vec<String> = items
        .iter()
        .filter_map(|(k, _)| match k {
            pickle::Value::Str(s) => Some(format!("'{s}'")),
            _ => None,
        })
        .take(20)
        .collect();
    let wanted = match pick {
        StateDictPick::Ema => "EMA weights ('state_dict_ema' or 'model_ema')",
        _ => "weights ('state_dict', 'model' or top-level tensors)",
    };
    Err(Error::format(
        path,
        format!(
            "no {wanted} in checkpoint; top-level keys: [{}]",
            keys.join(", ")
        ),
    ))
}

fn strip_module_prefix(path: &Path, tensors: NamedTensors) -> Result<NamedTensors> {
    if !tensors.keys().any(|k| k.starts_with("module.")) {
        return Ok(tensors);
    }
    let mut out = NamedTensors::new();
    for (k, v) in tensors {
        let name = k.strip_prefix("module.").map(str::to_string).unwrap_or(k);
        if out.contains_key(&name) {
            return Err(Error::format(
                path,
                format!("'{name}' appears both with and without the 'module.' prefix"),
            ));
        }
        out.insert(name, v);
    }
    Ok(out)
}

/// An empty metadata map, for `save_safetensors` calls that have none to write.
pub fn no_metadata() -> std::collections::BTreeMap<String, String> {
    std::collections::BTreeMap::new()
}
