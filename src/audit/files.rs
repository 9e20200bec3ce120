//! Contract-A files: model flags + W/X safetensors in, Y safetensors out.

use super::parity::ParityInput;
use crate::io::{self, HostData, HostTensor, NamedTensors};
use crate::nn::{Act, Arch, Backbone, Head, LossConfig, ModelSpec, TorchTensor};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Model flags shared by `mpm-audit parity` and `mpm-attack` (contract A).
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Backbone architecture: resnet18, resnet34, resnet50 or resnext50_32x4d (any
    /// resnext50_<G>x<W>d).
    #[arg(long, value_parser = parse_arch_name)]
    pub arch: String,
    /// Backbone activation.
    #[arg(long, default_value = "gelu", value_parser = ["gelu", "relu"])]
    pub act: String,
    /// Number of object classes.
    #[arg(long)]
    pub num_classes: usize,
    /// Part head: none (plain ResNet), mpm or twostage.
    #[arg(long, default_value = "none", value_parser = ["none", "mpm", "twostage"])]
    pub head: String,
    /// Segmentation channels S = part classes + 1 (required with a head).
    #[arg(long)]
    pub seg_classes: Option<usize>,
    /// MPM supervision levels (1 = 7x7 only, 2 = +14x14, 3 = +28x28).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub levels: u8,
    /// MPM heads act on the compact features directly, without the top-down path.
    #[arg(long)]
    pub no_top_down: bool,
}

/// `--arch` values: the names `Arch` parses, checked when the flags are read.
fn parse_arch_name(s: &str) -> std::result::Result<String, String> {
    s.parse::<Arch>().map(|_| s.to_string())
}

#[derive(clap::Args, Debug, Clone)]
pub struct LossArgs {
    /// Weight of the segmentation loss.
    #[arg(long = "lambda", default_value_t = 1.0)]
    pub lambda: f32,
    /// Focal loss exponent.
    #[arg(long, default_value_t = 2.0)]
    pub gamma: f32,
    /// Label smoothing of the class targets.
    #[arg(long, default_value_t = 0.1)]
    pub smoothing: f32,
}

impl LossArgs {
    pub fn config(&self) -> LossConfig {
        LossConfig {
            lambda: self.lambda,
            gamma: self.gamma,
            smoothing: self.smoothing,
        }
    }
}

pub use crate::nn::checkpoint::to_state;

fn shape_of<'a>(state: &'a io::StatePreview, name: &str, path: &Path) -> Result<&'a [usize]> {
    match state.get(name) {
        Some(t) if !t.shape.is_empty() => Ok(&t.shape),
        _ => Err(Error::format(
            path,
            format!("expected tensor '{name}' (the flags describe a model that has it)"),
        )),
    }
}

/// The model the flags describe; widths that the flags do not give (base width, two-stage
/// hidden sizes) are read from the checkpoint's shapes (its preview: no data needed).
pub fn spec_from_args(a: &ModelArgs, state: &io::StatePreview, path: &Path) -> Result<ModelSpec> {
    let arch: Arch = a
        .arch
        .parse()
        .map_err(|e: String| Error::flag("--arch", e))?;
    let act: Act = a.act.parse().map_err(|e: String| Error::flag("--act", e))?;
    let seg = |_: ()| -> Result<usize> {
        a.seg_classes
            .ok_or_else(|| Error::flag("--seg-classes", format!("required with --head {}", a.head)))
    };
    let (head, seg_classes, prefix) = match a.head.as_str() {
        "none" => (Head::None, 0, ""),
        "mpm" => (
            Head::Mpm {
                levels: a.levels as usize,
                top_down: !a.no_top_down,
            },
            seg(())?,
            "segmenter.",
        ),
        "twostage" => {
            let hidden = shape_of(state, "classifer.1.weight", path)?[0];
            let fc_hidden = shape_of(state, "classifer.5.weight", path)?[0];
            (Head::TwoStage { hidden, fc_hidden }, seg(())?, "segmenter.")
        }
        other => return Err(Error::flag("--head", format!("unknown head '{other}'"))),
    };
    if a.head == "none" && a.seg_classes.is_some() {
        return Err(Error::flag(
            "--seg-classes",
            "only meaningful with --head mpm|twostage",
        ));
    }
    let width = shape_of(state, &format!("{prefix}conv1.weight"), path)?[0];
    arch.check_width(width)
        .map_err(|e| Error::format(path, format!("--arch: {e}")))?;
    Ok(ModelSpec {
        backbone: Backbone { arch, width, act },
        num_classes: a.num_classes,
        seg_classes,
        head,
    })
}

fn f32_tensor(t: &NamedTensors, name: &str, path: &Path) -> Result<TorchTensor> {
    match t.get(name) {
        Some(HostTensor {
            shape,
            data: HostData::F32(d),
        }) => Ok(TorchTensor {
            shape: shape.clone(),
            data: d.clone(),
        }),
        Some(_) => Err(Error::format(
            path,
            format!("'{name}' must be a float tensor"),
        )),
        None => Err(Error::format(path, format!("missing tensor '{name}'"))),
    }
}

/// Reads contract A's X file.
pub fn read_input(path: &Path, spec: &ModelSpec) -> Result<ParityInput> {
    let (t, _) = io::load_safetensors(path)?;
    let input = f32_tensor(&t, "input", path)?;
    if input.shape.len() != 4 || input.shape[1] != 3 {
        return Err(Error::format(
            path,
            format!("'input' must be [N, 3, H, W], got {:?}", input.shape),
        ));
    }
    let n = input.shape[0];
    let target: Vec<usize> = match t.get("target") {
        Some(HostTensor {
            shape,
            data: HostData::I64(d),
        }) if shape.as_slice() == [n] => d
            .iter()
            .map(|&v| {
                usize::try_from(v)
                    .ok()
                    .filter(|&c| c < spec.num_classes)
                    .ok_or_else(|| {
                        Error::format(
                            path,
                            format!("target {v} out of range for {} classes", spec.num_classes),
                        )
                    })
            })
            .collect::<Result<_>>()?,
        Some(other) => {
            return Err(Error::format(
                path,
                format!("'target' must be int64 [{n}], got shape {:?}", other.shape),
            ))
        }
        None => return Err(Error::format(path, "missing tensor 'target'")),
    };
    let mut seg_targets = Vec::new();
    let mut seg_weight = vec![1.0; n];
    if spec.head != Head::None {
        let levels = match spec.head {
            Head::Mpm { levels, .. } => levels,
            _ => 1,
        };
        for i in 0..levels {
            seg_targets.push(f32_tensor(&t, &format!("seg_target.{i}"), path)?);
        }
        let w = f32_tensor(&t, "seg_weight", path)?;
        if w.shape != [n] {
            return Err(Error::format(
                path,
                format!("'seg_weight' must be [{n}], got {:?}", w.shape),
            ));
        }
        seg_weight = w.data;
    }
    Ok(ParityInput {
        input,
        target,
        seg_targets,
        seg_weight,
    })
}

/// Loads W, builds the model the flags describe. The file's names and shapes are checked
/// against that model before any tensor data is read (a mis-fitting or hostile file is
/// refused without decompressing or allocating its storages).
pub fn load_model(weights: &Path, args: &ModelArgs) -> Result<(ModelSpec, crate::nn::ParamStore)> {
    let (spec, t) = io::load_state_dict_checked(weights, io::StateDictPick::Auto, |preview| {
        let spec = spec_from_args(args, preview, weights)?;
        spec.check_preview(preview)
            .map_err(|e| Error::format(weights, e.to_string()))?;
        Ok(spec)
    })?;
    let state = to_state(t, weights)?;
    let store = spec.load(&state)?;
    Ok((spec, store))
}

/// Writes Y (f32 tensors; scalars with shape []).
pub fn write_output(path: &Path, y: &BTreeMap<String, TorchTensor>) -> Result<()> {
    let t: NamedTensors = y
        .iter()
        .map(|(k, v)| (k.clone(), HostTensor::f32(v.shape.clone(), v.data.clone())))
        .collect();
    io::save_safetensors(path, &t, &BTreeMap::new())
}

/// Reads a Y file (for comparisons).
pub fn read_output(path: &Path) -> Result<BTreeMap<String, TorchTensor>> {
    let (t, _) = io::load_safetensors(path)?;
    t.keys()
        .map(|k| Ok((k.clone(), f32_tensor(&t, k, path)?)))
        .collect()
}
