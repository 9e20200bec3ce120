//! Training checkpoints: one safetensors file holding everything a run needs to continue
//! exactly.
//!
//! Tensors (PyTorch names and layouts): `model.<name>`, `ema.<name>` (with an EMA),
//! `momentum.<name>` (SGD buffers, for parameters that have had a gradient); BN counters as i64
//! scalars `model.<bn>.num_batches_tracked`; with batch-norm groups (`bn_group`) every group's
//! running statistics as `bnchain.{model,ema}.<group>.<bn>.running_{mean,var}`, while
//! `model.` / `ema.` hold their average (`ghost_bn`). Metadata: `format` = `mpm-train/1`, `config`
//! (the TrainConfig as JSON), `state` (position, epoch sums, updates per epoch as JSON).
//! The RNG state is a function of the position (see `trainer::step_rng`) and the data order a
//! function of `(seed, epoch)`, so the position is the whole of it.
//!
//! Writes are atomic (temp file, fsync, rename), so a failed write (disk full) leaves the
//! previous file intact; a model with a NaN or Inf is never written.

use super::config::TrainConfig;
use super::optim::{Sgd, SgdConfig};
use super::trainer::{schedule, EpochSums, Position, Trainer};
use crate::audit::files::to_state;
use crate::io::{self, HostTensor, NamedTensors};
use crate::nn::{layout, ParamStore, StateValue};
use crate::tensor::Tensor;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const FORMAT: &str = "mpm-train/1";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SavedState {
    position: Position,
    sums: EpochSums,
    updates_per_epoch: usize,
    /// How many `momentum.*` tensors the file holds: a resume refuses a file that lost one.
    /// Absent in checkpoints written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    momentum_buffers: Option<usize>,
}

impl SavedState {
    /// Refuses a position that training cannot have reached: a step past the epoch's
    /// updates, or a global step that is not `epoch * updates_per_epoch + step` (each update
    /// advances both; an epoch ends after exactly `updates_per_epoch`). A hand-edited or
    /// mixed-up file would otherwise resume with another learning rate and data order.
    fn check(&self, momentum_found: usize, momentum: f64) -> std::result::Result<(), String> {
        let (p, upe) = (self.position, self.updates_per_epoch);
        if upe == 0 {
            return Err("the saved state has 0 updates per epoch".into());
        }
        let expected = (p.epoch as u64)
            .checked_mul(upe as u64)
            .and_then(|g| g.checked_add(p.step as u64));
        if p.step > upe || expected != Some(p.global_step) {
            return Err(format!(
                "inconsistent position: epoch {}, step {} of {upe} updates per epoch, global \
                 step {} (expected {})",
                p.epoch,
                p.step,
                p.global_step,
                expected.map_or_else(|| "an overflow".to_string(), |g| g.to_string())
            ));
        }
        match self.momentum_buffers {
            Some(n) if n != momentum_found => Err(format!(
                "{n} momentum buffer(s) were saved but the file holds {momentum_found}: the \
                 optimiser state is incomplete"
            )),
            None if momentum > 0.0 && p.global_step > 0 && momentum_found == 0 => Err(format!(
                "no momentum buffer after {} updates with momentum {momentum}: the optimiser \
                 state is missing",
                p.global_step
            )),
            _ => Ok(()),
        }
    }
}

fn put_store(out: &mut NamedTensors, prefix: &str, state: BTreeMap<String, StateValue>) {
    for (k, v) in state {
        let t = match v {
            StateValue::Float(t) => HostTensor::f32(t.shape, t.data),
            StateValue::Int(i) => HostTensor::i64(Vec::<usize>::new(), vec![i]),
        };
        out.insert(format!("{prefix}{k}"), t);
    }
}

/// Writes the trainer's full state to `path` (atomic). Refuses a non-finite model.
pub fn save(trainer: &Trainer, path: &Path) -> Result<()> {
    if let Err(what) = trainer.all_finite() {
        return Err(Error::NonFinite(format!(
            "{what} is not finite; checkpoint {} not written",
            path.display()
        )));
    }
    let mut t = NamedTensors::new();
    // With batch-norm groups: `model.` / `ema.` hold the chains' average (a plain model for
    // export and init), `bnchain.` every chain (exact resume mid-epoch).
    let (model, ema) = trainer.stores_for_save()?;
    put_store(&mut t, "model.", trainer.spec.state_dict(&model)?);
    if let Some(e) = &ema {
        put_store(&mut t, "ema.", trainer.spec.state_dict(e)?);
    }
    if let Some(g) = &trainer.groups {
        super::ghost_bn::put_chains(&mut t, g);
    }
    for (name, buf) in &trainer.opt.buffers {
        // A GPU buffer is downloaded here (once per checkpoint).
        let torch = trainer.model.export_like(name, buf)?;
        t.insert(
            format!("momentum.{name}"),
            HostTensor::f32(torch.shape, torch.data),
        );
    }
    let state = SavedState {
        position: trainer.pos,
        sums: trainer.sums,
        updates_per_epoch: trainer.updates_per_epoch,
        momentum_buffers: Some(trainer.opt.buffers.len()),
    };
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("config".to_string(), trainer.cfg.to_json());
    meta.insert(
        "state".to_string(),
        serde_json::to_string(&state).map_err(|e| Error::Msg(e.to_string()))?,
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    io::save_safetensors(path, &t, &meta)
}

/// The configuration stored in a checkpoint.
pub fn read_config(path: &Path) -> Result<TrainConfig> {
    let (_, meta) = io::load_safetensors(path)?;
    config_from_meta(path, &meta)
}

fn config_from_meta(path: &Path, meta: &BTreeMap<String, String>) -> Result<TrainConfig> {
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(Error::format(
            path,
            format!(
                "not an mpm-train checkpoint (metadata 'format' is {}, expected '{FORMAT}')",
                meta.get("format")
                    .map_or_else(|| "absent".to_string(), |f| format!("'{f}'"))
            ),
        ));
    }
    let cfg = meta
        .get("config")
        .ok_or_else(|| Error::format(path, "checkpoint has no 'config' metadata"))?;
    TrainConfig::from_json(cfg).map_err(|e| Error::format(path, e.to_string()))
}

/// Rebuilds a trainer from a checkpoint. `cfg` overrides the stored configuration only in
/// the keys of `config::RUNTIME_KEYS` (and must otherwise agree).
pub fn load(path: &Path, overrides: Option<&TrainConfig>) -> Result<Trainer> {
    if io::is_pytorch_file(path) {
        return Err(Error::format(
            path,
            "this is a PyTorch .pth file (model weights), not a training checkpoint of \
             mpm-train (a .safetensors file in the run's checkpoints/); to start from these \
             weights use --init-checkpoint",
        ));
    }
    let (tensors, meta) = io::load_safetensors(path)?;
    let mut cfg = config_from_meta(path, &meta)?;
    if let Some(o) = overrides {
        let mut a = serde_json::to_value(&cfg).map_err(|e| Error::Msg(e.to_string()))?;
        let b = serde_json::to_value(o).map_err(|e| Error::Msg(e.to_string()))?;
        if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
            for (k, v) in b {
                if super::config::RUNTIME_KEYS.contains(&k.as_str()) {
                    a.insert(k.clone(), v.clone());
                } else if a.get(k) != Some(v) && k != "epochs" {
                    return Err(Error::flag(
                        format!("--{}", k.replace('_', "-")),
                        format!(
                            "the checkpoint {} was trained with {} = {}; a resumed run cannot \
                             change it (got {v})",
                            path.display(),
                            k,
                            a.get(k).map(|x| x.to_string()).unwrap_or_default()
                        ),
                    ));
                } else if k == "epochs" {
                    a.insert(k.clone(), v.clone());
                }
            }
        }
        cfg = serde_json::from_value(a).map_err(|e| Error::Msg(e.to_string()))?;
    }
    let state: SavedState = meta
        .get("state")
        .ok_or_else(|| Error::format(path, "checkpoint has no 'state' metadata"))
        .and_then(|s| {
            serde_json::from_str(s).map_err(|e| Error::format(path, format!("state: {e}")))
        })?;
    let spec = cfg.spec()?;
    let mut groups: BTreeMap<&str, NamedTensors> = BTreeMap::new();
    for (k, v) in tensors {
        let (group, name) = k
            .split_once('.')
            .ok_or_else(|| Error::format(path, format!("unexpected tensor '{k}'")))?;
        let group = match group {
            "model" => "model",
            "ema" => "ema",
            "momentum" => "momentum",
            "bnchain" => "bnchain",
            _ => return Err(Error::format(path, format!("unexpected tensor '{k}'"))),
        };
        groups.entry(group).or_default().insert(name.to_string(), v);
    }
    let momentum_found = groups.get("momentum").map_or(0, |g| g.len());
    state
        .check(momentum_found, cfg.momentum)
        .map_err(|m| Error::format(path, format!("cannot resume: {m}")))?;
    let wrap = |what: &str, e: Error| Error::format(path, format!("{what}: {e}"));
    let model = spec
        .load(&to_state(groups.remove("model").unwrap_or_default(), path)?)
        .map_err(|e| wrap("model", e))?;
    let ema: Option<ParamStore> = match groups.remove("ema") {
        Some(t) => Some(spec.load(&to_state(t, path)?).map_err(|e| wrap("ema", e))?),
        None if cfg.model_ema => {
            return Err(Error::format(
                path,
                "model_ema is on but the file has no EMA",
            ))
        }
        None => None,
    };
    let mut opt = Sgd::new(SgdConfig {
        momentum: cfg.momentum as f32,
        weight_decay: cfg.weight_decay as f32,
        nesterov: cfg.nesterov,
    });
    for (name, t) in groups.remove("momentum").unwrap_or_default() {
        let e = model.get(&name).map_err(|e| wrap("momentum", e))?;
        let data = t
            .as_f32()
            .ok_or_else(|| Error::format(path, format!("momentum.{name}: not f32")))?;
        if t.shape != e.torch_shape {
            return Err(Error::format(
                path,
                format!(
                    "momentum.{name}: shape {:?}, parameter {:?}",
                    t.shape, e.torch_shape
                ),
            ));
        }
        let v = if t.shape.len() == 4 {
            layout::oihw_to_ohwi(data, &t.shape)
        } else {
            data.to_vec()
        };
        opt.buffers
            .insert(name, Tensor::from_vec(e.tensor.shape(), v)?);
    }
    let sched = schedule(&cfg, state.updates_per_epoch);
    let groups = match groups.remove("bnchain") {
        Some(t) => Some(
            super::ghost_bn::read_chains(t, &cfg, &model, ema.as_ref())
                .map_err(|e| wrap("bnchain", e))?,
        ),
        None => None,
    };
    Ok(Trainer {
        cfg,
        spec,
        model,
        ema,
        opt,
        sched,
        pos: state.position,
        sums: state.sums,
        updates_per_epoch: state.updates_per_epoch,
        device: crate::device::Device::Cpu,
        groups,
    })
}

/// What an inference model must satisfy before it is written: every value finite, and every
/// batch-norm `running_var` non-negative (a variance below zero makes eval-mode BN take the
/// square root of a negative number: NaN logits in whoever loads the export).
fn check_exportable(t: &NamedTensors) -> Result<()> {
    for (k, v) in t {
        let Some(d) = v.as_f32() else { continue };
        if d.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite(format!("export: '{k}' is not finite")));
        }
        if k.ends_with(".running_var") {
            if let Some((i, x)) = d.iter().enumerate().find(|(_, x)| **x < 0.0) {
                return Err(Error::Msg(format!(
                    "export: '{k}' holds a negative variance ({x} at index {i}); the \
                     checkpoint is corrupt, nothing was written"
                )));
            }
        }
    }
    Ok(())
}

/// The inference model (EMA when present; MPM bypass dropped; torchvision names) as
/// `model.safetensors` and `model.pth` in `dir`. Returns the two paths.
pub fn export_inference(trainer: &Trainer, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    export_inference_as(trainer, dir, "checkpoint", Some(trainer.pos.epoch))
}

/// `export_inference`, recording in the safetensors metadata (`init::EXPORT_META`) the model,
/// which checkpoint it came from (`best`, `last`) and its epoch, so `init_checkpoint` and
/// readers can tell an export from a bare state dict.
pub fn export_inference_as(
    trainer: &Trainer,
    dir: &Path,
    which: &str,
    epoch: Option<usize>,
) -> Result<Vec<std::path::PathBuf>> {
    let store = trainer.eval_model();
    let state = match trainer.spec.inference_export(store) {
        Ok(s) => s,
        // The two-stage model has no plain form: export its full state dict.
        Err(_) => trainer.spec.state_dict(store)?,
    };
    let mut t = NamedTensors::new();
    put_store(&mut t, "", state);
    check_exportable(&t)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let st = dir.join("model.safetensors");
    let pth = dir.join("model.pth");
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let what = serde_json::json!({
        "model": trainer.spec.describe(),
        "weights": if trainer.ema.is_some() { "ema" } else { "model" },
        "which": which,
        "epoch": epoch,
    });
    meta.insert(super::init::EXPORT_META.to_string(), what.to_string());
    io::save_safetensors(&st, &t, &meta)?;
    io::save_pth(&pth, &t)?;
    Ok(vec![st, pth])
}
