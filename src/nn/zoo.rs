//! Checkpoint layouts of the published adversarially trained ResNet-50s (the paper's Table 2
//! comparison rows), detected by content, converted to the engine's torchvision names, and the
//! input normalisation each one needs.
//!
//! | layout | how the file is saved (learnt from the project's public code) | normalisation |
//! |---|---|---|
//! | `torchvision/timm` | plain state dict (torchvision, timm, ARES 2.0) or a timm training checkpoint | ImageNet, by convention (contract A; override with `--mean/--std`) |
//! | `mpm`, `two-stage` | the paper's released checkpoints and `mpm-train` files | ImageNet (the paper's models normalise inside) |
//! | `robustness-library` | MadryLab `robustness`: `{'model': AttackerModel.state_dict()}`: `module.normalizer.new_{mean,std}`, `module.model.*`, `module.attacker.*` | read from the file |
//! | `robustbench` | RobustBench `normalize_model()`: `normalize.{mean,std}` + `model.*` | read from the file |
//! | `robustbench-model-only` | the wrapped model alone (`model.*`, no `normalize.*`) | not in the file: `--mean/--std` required |
//! | `bai2021-ghost-bn` | Bai et al. 2021: every BN an `EightBN`/`FourBN` (`bn0..bnK` ghost BNs + `aff.bnconv`) or a `GhostBN2D` | mean = std = 0.5 (their evaluation code) |
//!
//! A wrong normalisation guess is impossible by construction: a layout either carries its
//! normalisation (file buffers, or the layout's own code), or names the convention it follows,
//! or the loader refuses to run without `--mean/--std`.

use super::checkpoint::to_state;
use super::model::StateValue;
use super::params::TorchTensor;
use crate::io::{self, NamedTensors};
use crate::ops::basic::{IMAGENET_MEAN, IMAGENET_STD};
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Per-channel input normalisation `(x - mean) / std` of images in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InputNorm {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl InputNorm {
    pub const IMAGENET: InputNorm = InputNorm {
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };

    /// `mean (a, b, c) std (d, e, f)`.
    pub fn describe(&self) -> String {
        let f = |v: &[f32; 3]| {
            v.iter()
                .map(|x| format!("{x}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("mean ({}) std ({})", f(&self.mean), f(&self.std))
    }

    /// Equal up to float rounding of a stored buffer.
    pub fn same(&self, o: &InputNorm) -> bool {
        self.mean
            .iter()
            .chain(&self.std)
            .zip(o.mean.iter().chain(&o.std))
            .all(|(a, b)| (a - b).abs() <= 1e-6 * a.abs().max(1.0))
    }
}

/// The checkpoint layouts the loader knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    TorchvisionTimm,
    Mpm,
    TwoStage,
    RobustnessLib,
    RobustBench,
    RobustBenchModelOnly,
    Bai2021GhostBn,
}

impl Layout {
    pub const ALL: [Layout; 7] = [
        Layout::TorchvisionTimm,
        Layout::Mpm,
        Layout::TwoStage,
        Layout::RobustnessLib,
        Layout::RobustBench,
        Layout::RobustBenchModelOnly,
        Layout::Bai2021GhostBn,
    ];

    /// The name used in reports, `assets/zoo/table2.toml` and docs/zoo.md.
    pub fn name(self) -> &'static str {
        match self {
            Layout::TorchvisionTimm => "torchvision/timm",
            Layout::Mpm => "mpm",
            Layout::TwoStage => "two-stage",
            Layout::RobustnessLib => "robustness-library",
            Layout::RobustBench => "robustbench",
            Layout::RobustBenchModelOnly => "robustbench-model-only",
            Layout::Bai2021GhostBn => "bai2021-ghost-bn",
        }
    }

    pub fn parse(s: &str) -> Option<Layout> {
        Layout::ALL.into_iter().find(|l| l.name() == s)
    }

    /// One line: whose files these are.
    pub fn summary(self) -> &'static str {
        match self {
            Layout::TorchvisionTimm => {
                "torchvision/timm state dict (torchvision, timm, ARES 2.0 files; timm training \
                 checkpoints)"
            }
            Layout::Mpm => "the paper's MPM (released checkpoints, mpm-train)",
            Layout::TwoStage => "the two-stage part model (mpm-train, the paper's ablation)",
            Layout::RobustnessLib => {
                "MadryLab robustness-library checkpoint (Salman et al. 2020, Engstrom et al. 2019)"
            }
            Layout::RobustBench => "RobustBench normalize_model() wrapper (normalize.* + model.*)",
            Layout::RobustBenchModelOnly => {
                "RobustBench-style wrapped model without its normaliser (model.* only)"
            }
            Layout::Bai2021GhostBn => {
                "Bai et al. 2021 ghost-BN ResNet (ViTs-vs-CNNs: EightBN/FourBN/GhostBN2D)"
            }
        }
    }

    /// Top-level name groups that identify the layout (for "closest layout" hints).
    fn signature(self) -> &'static [&'static str] {
        match self {
            Layout::TorchvisionTimm => {
                &["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
            }
            Layout::Mpm => &[
                "segmenter",
                "cp1",
                "cp2",
                "cp3",
                "segmenter_head1",
                "segmenter_head2",
                "segmenter_head3",
                "up_layer1",
                "up_layer2",
                "classifer",
            ],
            Layout::TwoStage => &["segmenter", "segmenter_head", "classifer"],
            Layout::RobustnessLib => &["normalizer", "model", "attacker"],
            Layout::RobustBench => &["normalize", "model"],
            Layout::RobustBenchModelOnly => &["model"],
            Layout::Bai2021GhostBn => &[
                "conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc", "bn0", "proxy_bn",
                "aff",
            ],
        }
    }
}

/// Where the normalisation came from.
#[derive(Clone, Debug, PartialEq)]
pub enum NormSource {
    /// Buffers stored in the checkpoint (named).
    File(String),
    /// Fixed by the layout's own code (the reason).
    Layout(&'static str),
    /// The convention of a plain state dict: ImageNet's (contract A); flags may override.
    Convention,
    /// `--mean/--std`.
    Flags,
}

impl std::fmt::Display for NormSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NormSource::File(what) => write!(f, "read from the checkpoint ({what})"),
            NormSource::Layout(why) => write!(f, "fixed by the layout ({why})"),
            NormSource::Convention => f.write_str(
                "ImageNet's, the convention of plain torchvision/timm/mpm state dicts \
                 (DESIGN.md contract A); --mean/--std override it",
            ),
            NormSource::Flags => f.write_str("given by --mean/--std"),
        }
    }
}

/// A checkpoint in the engine's names, with what its layout says about normalisation.
#[derive(Debug)]
pub struct Converted {
    pub layout: Layout,
    pub state: BTreeMap<String, StateValue>,
    /// None: the file does not say (flags required).
    pub norm: Option<(InputNorm, NormSource)>,
    /// What the conversion did (printed and recorded in reports).
    pub notes: Vec<String>,
}

/// Detects the layout of `tensors` (as `io::load_state_dict` returns them: the chosen dict,
/// a leading `module.` stripped) and converts them to torchvision/mpm names.
pub fn convert(tensors: NamedTensors, path: &Path) -> Result<Converted> {
    let state = to_state(tensors, path)?;
    let has = |k: &str| state.contains_key(k);
    let any_prefix = |p: &str| state.keys().any(|k| k.starts_with(p));
    if has("normalizer.new_mean") && any_prefix("model.") {
        let norm = read_norm(&state, "normalizer.new_mean", "normalizer.new_std", path)?;
        let mut notes = vec![
            "took module.model.* (the attacker's copy module.attacker.* is the same network)"
                .to_string(),
        ];
        if let (Some(StateValue::Float(a)), Some(StateValue::Float(b))) = (
            state.get("model.fc.weight"),
            state.get("attacker.model.fc.weight"),
        ) {
            if a.data != b.data {
                notes
                    .push("warning: attacker.model.* differs from model.*; model.* is used".into());
            }
        }
        return Ok(Converted {
            layout: Layout::RobustnessLib,
            state: sub_dict(&state, "model."),
            norm: Some((
                norm,
                NormSource::File("normalizer.new_mean / normalizer.new_std".into()),
            )),
            notes,
        });
    }
    if has("normalize.mean") && has("normalize.std") && any_prefix("model.") {
        let norm = read_norm(&state, "normalize.mean", "normalize.std", path)?;
        return Ok(Converted {
            layout: Layout::RobustBench,
            state: sub_dict(&state, "model."),
            norm: Some((
                norm,
                NormSource::File("normalize.mean / normalize.std".into()),
            )),
            notes: vec!["took model.* (RobustBench's nn.Sequential(normalize, model))".into()],
        });
    }
    if has("model.conv1.weight") && !has("conv1.weight") {
        let inner = sub_dict(&state, "model.");
        let stray: Vec<&String> = state.keys().filter(|k| !k.starts_with("model.")).collect();
        if stray.is_empty() {
            // Bai et al.'s ghost-BN nets may sit inside the same wrapper.
            let mut c = convert_plain_or_ghost(inner, path)?;
            if c.layout == Layout::TorchvisionTimm {
                c.layout = Layout::RobustBenchModelOnly;
                c.norm = None;
                c.notes
                    .push("took model.* (a wrapped model without its normaliser)".into());
            }
            return Ok(c);
        }
    }
    convert_plain_or_ghost(state, path)
}

fn convert_plain_or_ghost(state: BTreeMap<String, StateValue>, path: &Path) -> Result<Converted> {
    if state.keys().any(|k| k.contains(".proxy_bn.")) {
        let (state, notes) = fold_ghost_bn(state, path)?;
        return Ok(Converted {
            layout: Layout::Bai2021GhostBn,
            state,
            norm: Some((
                InputNorm {
                    mean: [0.5; 3],
                    std: [0.5; 3],
                },
                NormSource::Layout(
                    "Bai et al. 2021 normalise with mean = std = 0.5 (test_autoattack.py)",
                ),
            )),
            notes,
        });
    }
    match convert_known(&state) {
        Some(layout) => Ok(Converted {
            layout,
            state,
            norm: Some((InputNorm::IMAGENET, NormSource::Convention)),
            notes: vec![],
        }),
        None => Err(unknown_layout(&state, path)),
    }
}

/// The engine's own layouts, by name.
fn convert_known(state: &BTreeMap<String, StateValue>) -> Option<Layout> {
    let has = |k: &str| state.contains_key(k);
    if has("cp1.0.weight") || state.keys().any(|k| k.starts_with("segmenter_head1.")) {
        Some(Layout::Mpm)
    } else if state.keys().any(|k| k.starts_with("segmenter_head.")) {
        Some(Layout::TwoStage)
    } else if has("conv1.weight") && has("bn1.weight") {
        Some(Layout::TorchvisionTimm)
    } else {
        None
    }
}

fn sub_dict(state: &BTreeMap<String, StateValue>, prefix: &str) -> BTreeMap<String, StateValue> {
    state
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
        .collect()
}

fn float<'a>(
    state: &'a BTreeMap<String, StateValue>,
    name: &str,
    path: &Path,
) -> Result<&'a TorchTensor> {
    match state.get(name) {
        Some(StateValue::Float(t)) => Ok(t),
        Some(StateValue::Int(_)) => Err(Error::format(
            path,
            format!("'{name}' is an integer, expected a float tensor"),
        )),
        None => Err(Error::format(path, format!("missing tensor '{name}'"))),
    }
}

fn read_norm(
    state: &BTreeMap<String, StateValue>,
    mean: &str,
    std: &str,
    path: &Path,
) -> Result<InputNorm> {
    let three = |name: &str| -> Result<[f32; 3]> {
        let t = float(state, name, path)?;
        match t.data.as_slice() {
            [a, b, c] if t.data.iter().all(|v| v.is_finite()) => Ok([*a, *b, *c]),
            _ => Err(Error::format(
                path,
                format!(
                    "'{name}' must hold 3 finite values (one per RGB channel), got shape {:?}",
                    t.shape
                ),
            )),
        }
    };
    let norm = InputNorm {
        mean: three(mean)?,
        std: three(std)?,
    };
    if norm.std.iter().any(|s| *s <= 0.0) {
        return Err(Error::format(
            path,
            format!("'{std}' must be positive, got {:?}", norm.std),
        ));
    }
    Ok(norm)
}

/// Bai et al.'s ghost BNs -> plain BNs with the statistics and affine that eval mode uses.
///
/// `EightBN`/`FourBN` (`P.bn0..bnK.proxy_bn.running_{mean,var}` over ratio*C channels,
/// affine-free, then `P.aff.bnconv` = depthwise 1x1 conv with bias): eval runs `bn0` (the
/// default `bn_type`) with the first C running statistics (`sync_stats=False`), then the
/// affine, so `P.running_* = bn0[:C]`, `P.weight = aff.bnconv.weight[:, 0, 0, 0]`,
/// `P.bias = aff.bnconv.bias`. `GhostBN2D` (`P.proxy_bn.*` + `P.weight/P.bias`): the same
/// first-C statistics with its own affine.
fn fold_ghost_bn(
    state: BTreeMap<String, StateValue>,
    path: &Path,
) -> Result<(BTreeMap<String, StateValue>, Vec<String>)> {
    const RM: &str = ".proxy_bn.running_mean";
    let proxies: Vec<String> = state
        .keys()
        .filter_map(|k| k.strip_suffix(RM).map(str::to_string))
        .collect();
    let mut out = state.clone();
    let mut multi = 0;
    let mut single = 0;
    let mut ratios = BTreeSet::new();
    for proxy in &proxies {
        // `P.bn0` inside a multi-BN wrapper, or `P` itself for a GhostBN2D.
        // A wrapper is told by its affine (`P.aff.bnconv`): a GhostBN2D may itself be named
        // `bn1` inside a block.
        let (bn, wrapper) = match proxy.rsplit_once('.') {
            Some((p, last))
                if last.starts_with("bn")
                    && last[2..].parse::<u32>().is_ok()
                    && state.contains_key(&format!("{p}.aff.bnconv.weight")) =>
            {
                if last != "bn0" {
                    continue; // bn1..bnK: training-time branches, unused in eval
                }
                (p.to_string(), true)
            }
            _ => (proxy.clone(), false),
        };
        let (weight, bias) = if wrapper {
            let w = float(&state, &format!("{bn}.aff.bnconv.weight"), path)?;
            let b = float(&state, &format!("{bn}.aff.bnconv.bias"), path)?;
            (w.clone(), b.clone())
        } else {
            let w = float(&state, &format!("{bn}.weight"), path)?;
            let b = float(&state, &format!("{bn}.bias"), path)?;
            (w.clone(), b.clone())
        };
        let c = bias.data.len();
        if weight.data.len() != c || c == 0 {
            return Err(Error::format(
                path,
                format!(
                    "ghost BN '{bn}': affine weight {:?} and bias {:?} do not match",
                    weight.shape, bias.shape
                ),
            ));
        }
        let mut stat = |what: &str| -> Result<Vec<f32>> {
            let t = float(&state, &format!("{proxy}.proxy_bn.running_{what}"), path)?;
            if t.data.len() % c != 0 {
                return Err(Error::format(
                    path,
                    format!(
                        "ghost BN '{proxy}': running_{what} has {} values, not a multiple of \
                         its {c} channels",
                        t.data.len()
                    ),
                ));
            }
            ratios.insert(t.data.len() / c);
            Ok(t.data[..c].to_vec())
        };
        let rm = stat("mean")?;
        let rv = stat("var")?;
        let counter = state.get(&format!("{proxy}.proxy_bn.num_batches_tracked"));
        out.retain(|k, _| !k.starts_with(&format!("{bn}.")));
        let put = |out: &mut BTreeMap<String, StateValue>, n: &str, d: Vec<f32>| {
            out.insert(
                format!("{bn}.{n}"),
                StateValue::Float(TorchTensor {
                    shape: vec![c],
                    data: d,
                }),
            );
        };
        put(&mut out, "running_mean", rm);
        put(&mut out, "running_var", rv);
        put(&mut out, "weight", weight.data);
        put(&mut out, "bias", bias.data);
        if let Some(v) = counter {
            out.insert(format!("{bn}.num_batches_tracked"), v.clone());
        }
        if wrapper {
            multi += 1;
        } else {
            single += 1;
        }
    }
    if let Some(k) = out
        .keys()
        .find(|k| k.contains(".proxy_bn.") || k.contains(".aff."))
    {
        return Err(Error::format(
            path,
            format!("ghost-BN tensor '{k}' left after folding: not a layout this loader knows"),
        ));
    }
    let mut notes = Vec::new();
    if multi > 0 {
        notes.push(format!(
            "{multi} multi-branch ghost BNs (bn0..bnK + aff.bnconv): bn0's running statistics \
             (first C of {ratios:?}x C, sync_stats=False) and the depthwise affine, as their \
             eval mode runs; bn1..bnK are training-time branches"
        ));
    }
    if single > 0 {
        notes.push(format!(
            "{single} GhostBN2D layers: first C of the proxy running statistics, own affine"
        ));
    }
    Ok((out, notes))
}

/// The error for a checkpoint of no known layout: its top-level name groups and the closest
/// known layout.
fn unknown_layout(state: &BTreeMap<String, StateValue>, path: &Path) -> Error {
    let mut groups: BTreeMap<&str, usize> = BTreeMap::new();
    for k in state.keys() {
        *groups.entry(k.split('.').next().unwrap_or(k)).or_default() += 1;
    }
    let all_parts: BTreeSet<&str> = state.keys().flat_map(|k| k.split('.')).collect();
    let top: BTreeSet<&str> = groups.keys().copied().collect();
    let (best, score) = Layout::ALL
        .iter()
        .map(|l| {
            let sig = l.signature();
            let hits = sig
                .iter()
                .filter(|s| top.contains(**s) || all_parts.contains(**s))
                .count();
            (
                *l,
                hits as f64 / (sig.len() + top.len() - hits).max(1) as f64,
            )
        })
        .fold((Layout::TorchvisionTimm, -1.0), |a, b| {
            if b.1 > a.1 {
                b
            } else {
                a
            }
        });
    let listed: Vec<String> = groups
        .iter()
        .take(20)
        .map(|(g, n)| format!("{g}.* ({n})"))
        .collect();
    let more = if groups.len() > 20 {
        format!(" and {} more", groups.len() - 20)
    } else {
        String::new()
    };
    let hint = if score > 0.0 {
        format!(
            "closest known layout: {} ({}), expected top-level names {:?}",
            best.name(),
            best.summary(),
            best.signature()
        )
    } else {
        "no known layout shares a name with it".to_string()
    };
    let prefix_hint = match groups.keys().next() {
        Some(only) if groups.len() == 1 => format!(
            "; every name starts with '{only}.': a wrapper this loader does not know (strip it \
             and save the inner state dict)"
        ),
        _ => String::new(),
    };
    Error::format(
        path,
        format!(
            "unknown checkpoint layout: top-level names {}{more}; {hint}{prefix_hint}. Known \
             layouts: {} (docs/zoo.md)",
            listed.join(", "),
            Layout::ALL
                .iter()
                .map(|l| l.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

/// `--mean/--std`: the input normalisation when the checkpoint does not carry one.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NormArgs {
    /// Input normalisation mean, R,G,B (e.g. 0.485,0.456,0.406). Needed when the checkpoint
    /// does not say (e.g. a RobustBench model-only file); must agree with a checkpoint that
    /// does. Give --std with it.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub mean: Option<Vec<f32>>,
    /// Input normalisation std, R,G,B (e.g. 0.229,0.224,0.225).
    #[arg(long, value_delimiter = ',')]
    pub std: Option<Vec<f32>>,
}

impl NormArgs {
    /// The flags as a normalisation (None when neither is given).
    pub fn parse(&self) -> Result<Option<InputNorm>> {
        let three = |flag: &str, v: &[f32]| -> Result<[f32; 3]> {
            match v {
                [a, b, c] if v.iter().all(|x| x.is_finite()) => Ok([*a, *b, *c]),
                _ => Err(Error::flag(
                    flag,
                    format!("expected three finite numbers R,G,B, got {v:?}"),
                )),
            }
        };
        match (&self.mean, &self.std) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(Error::flag("--std", "required with --mean")),
            (None, Some(_)) => Err(Error::flag("--mean", "required with --std")),
            (Some(m), Some(s)) => {
                let norm = InputNorm {
                    mean: three("--mean", m)?,
                    std: three("--std", s)?,
                };
                if norm.std.iter().any(|v| *v <= 0.0) {
                    return Err(Error::flag("--std", "values must be positive"));
                }
                Ok(Some(norm))
            }
        }
    }
}

/// The normalisation to run `c` with, given the flags: the layout's, the flags' where the
/// layout only follows a convention (or says nothing), and an error where they disagree or
/// neither says.
pub fn resolve_norm(
    c: &Converted,
    flags: Option<InputNorm>,
    path: &Path,
) -> Result<(InputNorm, NormSource)> {
    match (&c.norm, flags) {
        (Some((n, NormSource::Convention)), None) => Ok((*n, NormSource::Convention)),
        (Some((_, NormSource::Convention)), Some(f)) => Ok((f, NormSource::Flags)),
        (Some((n, src)), None) => Ok((*n, src.clone())),
        (Some((n, src)), Some(f)) if n.same(&f) => Ok((*n, src.clone())),
        (Some((n, src)), Some(f)) => Err(Error::flag(
            "--mean/--std",
            format!(
                "{}: the {} layout's normalisation is {} ({src}), but the flags say {}; drop \
                 the flags (the checkpoint knows its own normalisation)",
                path.display(),
                c.layout.name(),
                n.describe(),
                f.describe()
            ),
        )),
        (None, Some(f)) => Ok((f, NormSource::Flags)),
        (None, None) => Err(Error::flag(
            "--mean/--std",
            format!(
                "{}: a {} checkpoint ({}) does not record its input normalisation, and the \
                 engine will not guess it: give --mean and --std (for RobustBench's ImageNet \
                 ResNet-50s, ImageNet's: --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225; \
                 `mpm-attack zoo` lists each model's)",
                path.display(),
                c.layout.name(),
                c.layout.summary()
            ),
        )),
    }
}

/// The eval transform of an ImageFolder evaluation, by its RobustBench-style name.
pub fn transform_name(resize: u32, crop: u32, bilinear: bool) -> String {
    let filter = if bilinear { "bilinear" } else { "bicubic" };
    match (resize, crop, bilinear) {
        (256, 224, true) => "Res256Crop224 (bilinear resize 256, centre crop 224)".into(),
        (256, 224, false) => "BicubicRes256Crop224 (bicubic resize 256, centre crop 224)".into(),
        (0, c, _) => format!("Crop{c} (centre crop {c}, no resize)"),
        (r, c, _) => format!("resize {r} ({filter}), centre crop {c}"),
    }
}

/// What a loaded model's preprocessing is, for the console and the report.
#[derive(Clone, Debug)]
pub struct Preprocessing {
    pub layout: Layout,
    pub norm: InputNorm,
    pub norm_source: NormSource,
    pub notes: Vec<String>,
}

impl Preprocessing {
    /// `model: <layout> layout (<summary>), normalisation mean (..) std (..) <source>`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} layout ({}), normalisation {} {}",
            self.layout.name(),
            self.layout.summary(),
            self.norm.describe(),
            self.norm_source
        );
        for n in &self.notes {
            s.push_str(&format!("; {n}"));
        }
        s
    }

    /// The report's `preprocessing` object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "layout": self.layout.name(),
            "layout_detail": self.layout.summary(),
            "mean": self.norm.mean,
            "std": self.norm.std,
            "normalisation_from": self.norm_source.to_string(),
            "notes": self.notes,
        })
    }
}

/// A model ready for evaluation: spec, weights and preprocessing.
pub struct ZooModel {
    pub spec: super::ModelSpec,
    pub store: super::ParamStore,
    pub preprocessing: Preprocessing,
}

/// Loads `weights` in any known layout for the model the flags describe (`mpm-attack`,
/// `mpm-eval`): EMA weights preferred in training checkpoints, layout converted, normalisation
/// resolved (see [`resolve_norm`]).
pub fn load_for_eval(
    weights: &Path,
    args: &crate::audit::files::ModelArgs,
    norm: &NormArgs,
) -> Result<ZooModel> {
    let flags = norm.parse()?;
    let tensors = io::load_state_dict(weights, io::StateDictPick::Auto)?;
    let c = convert(tensors, weights)?;
    let (n, src) = resolve_norm(&c, flags, weights)?;
    // The layout is known only from the names, so this preview comes after the read (the
    // loaders of the engine's own layouts check theirs before it).
    let preview: io::StatePreview = c
        .state
        .iter()
        .filter_map(|(k, v)| match v {
            super::StateValue::Float(t) => Some((
                k.clone(),
                io::TensorInfo {
                    shape: t.shape.clone(),
                    dtype: "float32".into(),
                },
            )),
            super::StateValue::Int(_) => None,
        })
        .collect();
    let spec = crate::audit::files::spec_from_args(args, &preview, weights)?;
    let store = spec.load(&c.state).map_err(|e| match e {
        Error::Checkpoint(m) => Error::Checkpoint(format!(
            "{} ({} layout, {}): {m}",
            weights.display(),
            c.layout.name(),
            c.layout.summary()
        )),
        other => other,
    })?;
    Ok(ZooModel {
        spec,
        store,
        preprocessing: Preprocessing {
            layout: c.layout,
            norm: n,
            norm_source: src,
            notes: c.notes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::HostTensor;

    fn t(shape: &[usize], data: Vec<f32>) -> HostTensor {
        HostTensor::f32(shape.to_vec(), data)
    }

    #[test]
    fn ghost_bn2d_folds_first_channels_and_own_affine() {
        let mut n = NamedTensors::new();
        n.insert("conv1.weight".into(), t(&[2, 3, 1, 1], vec![0.0; 6]));
        // `layer1.0.bn1` is a GhostBN2D named like a wrapper's branch: told apart by the
        // absence of `aff.bnconv`.
        for p in ["bn1", "layer1.0.bn1"] {
            let rm = (0..8).map(|v| v as f32).collect();
            n.insert(format!("{p}.proxy_bn.running_mean"), t(&[8], rm));
            n.insert(format!("{p}.proxy_bn.running_var"), t(&[8], vec![2.0; 8]));
            n.insert(format!("{p}.weight"), t(&[2], vec![3.0, 4.0]));
            n.insert(format!("{p}.bias"), t(&[2], vec![5.0, 6.0]));
        }
        let c = convert(n, Path::new("x.pth")).unwrap();
        assert_eq!(c.layout, Layout::Bai2021GhostBn);
        for p in ["bn1", "layer1.0.bn1"] {
            match c.state.get(&format!("{p}.running_mean")) {
                Some(StateValue::Float(t)) => assert_eq!(t.data, vec![0.0, 1.0]),
                other => panic!("{p}: {other:?}"),
            }
        }
        assert!(
            c.state.keys().all(|k| !k.contains("proxy")),
            "{:?}",
            c.state.keys()
        );
    }

    #[test]
    fn unknown_layout_names_groups_and_closest() {
        let mut n = NamedTensors::new();
        n.insert("backbone.conv1.weight".into(), t(&[1], vec![0.0]));
        n.insert("backbone.layer1.0.conv1.weight".into(), t(&[1], vec![0.0]));
        let e = convert(n, Path::new("x.pth")).unwrap_err().to_string();
        assert!(e.contains("backbone.* (2)"), "{e}");
        assert!(e.contains("closest known layout: torchvision/timm"), "{e}");
        assert!(e.contains("every name starts with 'backbone.'"), "{e}");
    }

    #[test]
    fn flags_must_agree_with_a_stored_normalisation() {
        let c = Converted {
            layout: Layout::RobustBench,
            state: BTreeMap::new(),
            norm: Some((InputNorm::IMAGENET, NormSource::File("x".into()))),
            notes: vec![],
        };
        let other = InputNorm {
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        assert!(resolve_norm(&c, Some(other), Path::new("w")).is_err());
        assert!(resolve_norm(&c, Some(InputNorm::IMAGENET), Path::new("w")).is_ok());
        let none = Converted { norm: None, ..c };
        let e = resolve_norm(&none, None, Path::new("w"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("will not guess"), "{e}");
        assert_eq!(
            resolve_norm(&none, Some(other), Path::new("w")).unwrap().0,
            other
        );
    }
}
