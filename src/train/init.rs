//! `init_checkpoint`: what a run may start from, and how each kind of file is read.
//!
//! The paper's runs chain: torchvision's ResNet-50 -> head warm-up -> AT run (and its
//! ablations), torchvision's ResNet-50 -> vanilla / two-stage AT. So a run must accept
//! - an `mpm-train` checkpoint (`RUN/checkpoints/{last,best}.safetensors`): its raw `model.*`
//!   group, not `ema.*`, as the authors' `adv_train.py` loads the checkpoint's `state_dict`;
//! - an `mpm-train export` (`RUN/export/model.{safetensors,pth}`);
//! - a timm training checkpoint `.pth` (`state_dict` and `state_dict_ema`): `state_dict`, for
//!   the same reason;
//! - a plain PyTorch state dict `.pth` (torchvision's `resnet50-11ad3fa6.pth`) or a safetensors
//!   state dict.
//!
//! The kind is decided by content, not by extension, and printed. A file of the wrong kind or
//! model is an error that names what it is and what the configuration expects; a missing file
//! is an error that names what produces it (the shipped config or the download).

use super::checkpoint::FORMAT;
use super::config::TrainConfig;
use crate::audit::files::to_state;
use crate::io::{self, NamedTensors};
use crate::nn::{Head, ModelSpec, StateValue};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Safetensors metadata key of an `mpm-train export` (JSON: model, which, epoch).
pub const EXPORT_META: &str = "mpm_export";

/// The file name of torchvision's ResNet-50 weights (the paper's starting point).
pub const TORCHVISION_RESNET50: &str = "resnet50-11ad3fa6.pth";

/// What kind of file `init_checkpoint` named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitKind {
    /// An `mpm-train` checkpoint; `model` describes the stored configuration's model.
    TrainCheckpoint { model: String },
    /// An `mpm-train export` (the EMA inference model).
    Export { what: String },
    /// A timm-style training checkpoint `.pth`; `has_ema` when it also held `state_dict_ema`.
    TimmCheckpoint { has_ema: bool },
    /// A plain PyTorch state dict (`.pth`, e.g. torchvision's files).
    PthStateDict,
    /// A safetensors state dict.
    SafetensorsStateDict,
}

impl std::fmt::Display for InitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InitKind::TrainCheckpoint { model } => write!(
                f,
                "an mpm-train checkpoint ({model}); taking its raw model weights (model.*), \
                 not the EMA, as the reference loads state_dict"
            ),
            InitKind::Export { what } => write!(f, "an mpm-train export ({what})"),
            InitKind::TimmCheckpoint { has_ema: true } => f.write_str(
                "a timm training checkpoint; taking 'state_dict' (not 'state_dict_ema'), as the \
                 reference does",
            ),
            InitKind::TimmCheckpoint { has_ema: false } => {
                f.write_str("a timm training checkpoint; taking 'state_dict'")
            }
            InitKind::PthStateDict => f.write_str("a PyTorch state dict (.pth)"),
            InitKind::SafetensorsStateDict => f.write_str("a safetensors state dict"),
        }
    }
}

/// Which model a state dict holds, read from its tensor names and shapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// torchvision / timm ResNet names (`conv1.weight`, `layer1.0...`, `fc.*`).
    Plain,
    /// The MPM (`segmenter.*`, `cp1.*`, `segmenter_head1.*`, ...).
    Mpm,
    /// The two-stage part model (`segmenter.*`, `segmenter_head.*`, `classifer.*`).
    TwoStage,
}

impl Layout {
    fn of(state: &BTreeMap<String, StateValue>) -> Option<Layout> {
        let has = |k: &str| state.contains_key(k);
        if has("cp1.0.weight") || state.keys().any(|k| k.starts_with("segmenter_head1.")) {
            Some(Layout::Mpm)
        } else if state.keys().any(|k| k.starts_with("segmenter_head.")) {
            Some(Layout::TwoStage)
        } else if has("conv1.weight") {
            Some(Layout::Plain)
        } else {
            None
        }
    }

    fn of_spec(spec: &ModelSpec) -> Layout {
        match spec.head {
            Head::None => Layout::Plain,
            Head::Mpm { .. } => Layout::Mpm,
            Head::TwoStage { .. } => Layout::TwoStage,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Layout::Plain => "a plain ResNet",
            Layout::Mpm => "an MPM",
            Layout::TwoStage => "a two-stage part model",
        }
    }
}

/// The weights read from `init_checkpoint`.
pub struct InitWeights {
    pub kind: InitKind,
    pub layout: Layout,
    pub state: BTreeMap<String, StateValue>,
}

impl InitWeights {
    /// One line: the kind and the model found (what `mpm-train` prints).
    pub fn describe(&self, path: &Path) -> String {
        format!(
            "init_checkpoint {}: {}; holds {} ({})",
            path.display(),
            self.kind,
            self.layout.name(),
            describe_state(&self.state, &self.layout)
        )
    }
}

/// Reads `path` and tells what it is. The model is not checked here (see `check_expected`).
pub fn read(path: &Path) -> Result<InitWeights> {
    let (kind, tensors) = read_tensors(path)?;
    let state = to_state(tensors, path)?;
    let layout = Layout::of(&state).ok_or_else(|| {
        let keys: Vec<&str> = state.keys().take(8).map(String::as_str).collect();
        Error::format(
            path,
            format!(
                "{kind}, but its tensors are not a ResNet, MPM or two-stage model (first names: \
                 {keys:?}; expected 'conv1.weight' or 'segmenter.conv1.weight')"
            ),
        )
    })?;
    Ok(InitWeights {
        kind,
        layout,
        state,
    })
}

/// The kind of file and the tensors a run starts from (the raw model group of a training
/// checkpoint; a leading `module.` stripped), before any check of the model.
pub fn read_tensors(path: &Path) -> Result<(InitKind, NamedTensors)> {
    if !path.exists() {
        return Err(missing(path));
    }
    let (kind, tensors) = if is_safetensors(path)? {
        let (tensors, meta) = io::load_safetensors(path)?;
        if meta.get("format").map(String::as_str) == Some(FORMAT) {
            let cfg = meta
                .get("config")
                .and_then(|c| TrainConfig::from_json(c).ok());
            let model = cfg
                .and_then(|c| c.spec().ok())
                .map(|s| s.describe())
                .unwrap_or_else(|| "configuration unreadable".into());
            let raw: NamedTensors = tensors
                .into_iter()
                .filter_map(|(k, v)| k.strip_prefix("model.").map(|n| (n.to_string(), v)))
                .collect();
            if raw.is_empty() {
                return Err(Error::format(
                    path,
                    "an mpm-train checkpoint without 'model.*' tensors",
                ));
            }
            (InitKind::TrainCheckpoint { model }, raw)
        } else if let Some(what) = meta.get(EXPORT_META) {
            (InitKind::Export { what: what.clone() }, tensors)
        } else {
            (InitKind::SafetensorsStateDict, tensors)
        }
    } else {
        // `.pth` (zip or legacy): the raw model's dict only ('state_dict', else 'model', else
        // the top-level tensors). The EMA, optimiser state and other entries are neither read
        // nor counted against the load's limits.
        let keys = io::pth_top_level_keys(path)?;
        let tensors = io::load_state_dict(path, io::StateDictPick::Model)?;
        if keys.iter().any(|k| k == "state_dict") {
            let has_ema = keys.iter().any(|k| k == "state_dict_ema");
            (InitKind::TimmCheckpoint { has_ema }, tensors)
        } else {
            (InitKind::PthStateDict, tensors)
        }
    };
    Ok((kind, strip_module(tensors)))
}

/// Checks that `w` can initialise the model of `cfg`: with `full_pretrain` the whole model
/// (same kind), else a backbone (a plain ResNet, or the `segmenter.*` of a part model).
/// Returns the state to load: as is (`full_pretrain`) or the backbone in torchvision names.
pub fn check_expected(
    w: InitWeights,
    cfg: &TrainConfig,
    spec: &ModelSpec,
    path: &Path,
) -> Result<BTreeMap<String, StateValue>> {
    let want = Layout::of_spec(spec);
    let found = format!(
        "{} holding {} ({})",
        w.kind,
        w.layout.name(),
        describe_state(&w.state, &w.layout)
    );
    if cfg.full_pretrain {
        if w.layout != want {
            let hint = if w.layout == Layout::Plain && want != Layout::Plain {
                "; to take only its backbone, set full_pretrain = false (as \
                 configs/mpm_init_in1k.toml does with torchvision's file)"
            } else {
                ""
            };
            return Err(Error::flag(
                "--init-checkpoint",
                format!(
                    "{}: {found}, but this configuration (partmodel_type = {}, full_pretrain = \
                     true) expects the whole of {} ({}){hint}",
                    path.display(),
                    cfg.partmodel_type,
                    want.name(),
                    spec.describe()
                ),
            ));
        }
        return Ok(w.state);
    }
    match w.layout {
        Layout::Plain => Ok(w.state),
        Layout::Mpm | Layout::TwoStage => Ok(w
            .state
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix("segmenter.").map(|n| (n.to_string(), v)))
            .collect()),
    }
}

/// The error for a missing `init_checkpoint`: what produces the file.
pub fn missing(path: &Path) -> Error {
    Error::flag(
        "--init-checkpoint",
        format!("{}: no such file; {}", path.display(), producer_hint(path)),
    )
}

/// What writes the file at `path`: torchvision's download, or the shipped config whose
/// `output_dir` holds it (`runs/<name>/...` is written by `configs/<name>.toml`).
pub fn producer_hint(path: &Path) -> String {
    let text = path.to_string_lossy().replace('\\', "/");
    if path
        .file_name()
        .is_some_and(|n| n.to_string_lossy() == TORCHVISION_RESNET50)
    {
        return format!(
            "it is torchvision's ResNet-50 (IMAGENET1K_V2): download \
             https://download.pytorch.org/models/{TORCHVISION_RESNET50} to {text} \
             (docs/reproduce.md)"
        );
    }
    let parts: Vec<&str> = text.split('/').collect();
    if let Some(i) = parts.iter().position(|&p| p == "runs") {
        if let Some(name) = parts.get(i + 1) {
            let run = parts[..=i + 1].join("/");
            let config = format!("configs/{name}.toml");
            let shipped = if Path::new(&config).exists() {
                ""
            } else {
                " (run from the project folder, where configs/ is)"
            };
            return format!(
                "it is written by the run with output_dir = {run}: run `mpm-train --config \
                 {config}` first{shipped} (the order is in docs/reproduce.md)"
            );
        }
    }
    "give a checkpoint that exists (an mpm-train checkpoint or export, a torchvision/timm .pth \
     or a safetensors state dict), or \"\" for a random initialisation"
        .into()
}

fn is_safetensors(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 9];
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]).map_err(|e| Error::io(path, e))? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n == 9 && head[8] == b'{')
}

fn strip_module(t: NamedTensors) -> NamedTensors {
    if !t.keys().all(|k| k.starts_with("module.")) {
        return t;
    }
    t.into_iter()
        .map(|(k, v)| (k["module.".len()..].to_string(), v))
        .collect()
}

/// Architecture, width, classes and S as far as the names and shapes tell.
fn describe_state(state: &BTreeMap<String, StateValue>, layout: &Layout) -> String {
    let prefix = match layout {
        Layout::Plain => "",
        _ => "segmenter.",
    };
    let shape = |k: &str| match state.get(k) {
        Some(StateValue::Float(t)) => Some(t.shape.clone()),
        _ => None,
    };
    let blocks: Vec<usize> = (1..=4)
        .map(|l| {
            let p = format!("{prefix}layer{l}.");
            state
                .keys()
                .filter_map(|k| k.strip_prefix(&p)?.split('.').next()?.parse::<usize>().ok())
                .max()
                .map_or(0, |m| m + 1)
        })
        .collect();
    let bottleneck = state.contains_key(&format!("{prefix}layer1.0.conv3.weight"));
    // A ResNeXt's grouped 3x3 has fewer input channels per filter than filters.
    let grouped = shape(&format!("{prefix}layer1.0.conv2.weight"))
        .is_some_and(|s| s.len() == 4 && s[1] != s[0]);
    let arch = match (blocks.as_slice(), bottleneck) {
        ([2, 2, 2, 2], false) => "resnet18".to_string(),
        ([3, 4, 6, 3], false) => "resnet34".to_string(),
        ([3, 4, 6, 3], true) if grouped => "resnext50 (grouped 3x3)".to_string(),
        ([3, 4, 6, 3], true) => "resnet50".to_string(),
        (b, true) => format!("bottleneck ResNet with blocks {b:?}"),
        (b, false) => format!("basic-block ResNet with blocks {b:?}"),
    };
    let width = shape(&format!("{prefix}conv1.weight"))
        .and_then(|s| s.first().copied())
        .map_or("?".to_string(), |w| w.to_string());
    let classes = ["fc.weight", "classifer.2.weight", "classifer.8.weight"]
        .iter()
        .find_map(|k| shape(k))
        .and_then(|s| s.first().copied());
    let seg = [
        "segmenter_head1.1.pointwise.weight",
        "segmenter_head.2.pointwise.weight",
    ]
    .iter()
    .find_map(|k| shape(k))
    .and_then(|s| s.first().copied());
    let mut s = format!("{arch} width {width}");
    match classes {
        Some(c) => s += &format!(", {c} classes"),
        None => s += ", no classifier",
    }
    if let Some(sc) = seg {
        s += &format!(", S = {sc}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_hints_name_the_download_and_the_config() {
        let h = producer_hint(Path::new("pretrained/resnet50-11ad3fa6.pth"));
        assert!(
            h.contains("download.pytorch.org/models/resnet50-11ad3fa6.pth"),
            "{h}"
        );
        let h = producer_hint(Path::new("runs/mpm_init_in1k/checkpoints/last.safetensors"));
        assert!(
            h.contains("mpm-train --config configs/mpm_init_in1k.toml")
                && h.contains("output_dir = runs/mpm_init_in1k"),
            "{h}"
        );
        let h = producer_hint(Path::new("/x/y.pth"));
        assert!(h.contains("random initialisation"), "{h}");
    }
}
