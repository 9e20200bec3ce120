//! ResNet-18/34/50 and ResNeXt-50 with torchvision v1.5 structure and names (stride in the 3x3
//! conv of the bottleneck), any base width, GELU or ReLU. Input: NHWC images already normalised.
//!
//! ResNeXt (Xie et al. 2017, torchvision's `resnext50_32x4d`) is the ResNet-50 bottleneck with a
//! grouped 3x3 convolution and a wider inner width: `int(planes * width_per_group / 64) * groups`
//! where `planes` = 64, 128, 256, 512 per stage (twice ResNet-50's inner width for 32x4d). The
//! parameter names are ResNet-50's; only the shapes differ (`conv2.weight` is
//! `[width, width / groups, 3, 3]`).

use super::layers::{act, bn, conv, conv_bn_act, conv_bn_act_grouped, Act, Ctx, Declared};
use crate::autograd::Var;
use crate::ops;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    ResNet18,
    ResNet34,
    ResNet50,
    /// `resnext50_{groups}x{width_per_group}d`; torchvision's is 32x4d.
    ResNeXt50 {
        groups: usize,
        width_per_group: usize,
    },
}

/// The architecture names every `--arch` / `model` value accepts (ResNeXt-50 also as any
/// `resnext50_<G>x<W>d`, e.g. the reduced test fixtures).
pub const ARCH_NAMES: [&str; 4] = ["resnet18", "resnet34", "resnet50", "resnext50_32x4d"];

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "resnet18" => return Ok(Arch::ResNet18),
            "resnet34" => return Ok(Arch::ResNet34),
            "resnet50" => return Ok(Arch::ResNet50),
            _ => {}
        }
        let bad = || {
            format!(
                "'{s}' is not a supported architecture: expected {} (or resnext50_<G>x<W>d: G \
                 groups of W channels per 64 planes)",
                ARCH_NAMES.join(", ")
            )
        };
        let gw = s.strip_prefix("resnext50_").ok_or_else(bad)?;
        let (g, w) = gw
            .strip_suffix('d')
            .and_then(|r| r.split_once('x'))
            .ok_or_else(bad)?;
        let (Ok(groups), Ok(width_per_group)) = (g.parse::<usize>(), w.parse::<usize>()) else {
            return Err(bad());
        };
        if groups == 0 || width_per_group == 0 {
            return Err(bad());
        }
        Ok(Arch::ResNeXt50 {
            groups,
            width_per_group,
        })
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arch::ResNet18 => f.write_str("resnet18"),
            Arch::ResNet34 => f.write_str("resnet34"),
            Arch::ResNet50 => f.write_str("resnet50"),
            Arch::ResNeXt50 {
                groups,
                width_per_group,
            } => write!(f, "resnext50_{groups}x{width_per_group}d"),
        }
    }
}

impl Arch {
    /// torchvision's `resnext50_32x4d`.
    pub const RESNEXT50_32X4D: Arch = Arch::ResNeXt50 {
        groups: 32,
        width_per_group: 4,
    };

    pub fn blocks(self) -> [usize; 4] {
        match self {
            Arch::ResNet18 => [2, 2, 2, 2],
            Arch::ResNet34 | Arch::ResNet50 | Arch::ResNeXt50 { .. } => [3, 4, 6, 3],
        }
    }
    pub fn bottleneck(self) -> bool {
        matches!(self, Arch::ResNet50 | Arch::ResNeXt50 { .. })
    }
    pub fn expansion(self) -> usize {
        if self.bottleneck() {
            4
        } else {
            1
        }
    }
    /// Groups of the bottleneck's 3x3 convolution (1 for ResNets).
    pub fn groups(self) -> usize {
        match self {
            Arch::ResNeXt50 { groups, .. } => groups,
            _ => 1,
        }
    }
    /// Inner width of a bottleneck whose stage has `planes` planes (torchvision's
    /// `int(planes * (base_width / 64.)) * groups`; ResNet-50: `planes`).
    pub fn inner_width(self, planes: usize) -> usize {
        match self {
            Arch::ResNeXt50 {
                groups,
                width_per_group,
            } => planes * width_per_group / 64 * groups,
            _ => planes,
        }
    }
    /// Checks that a stem width `width` gives every bottleneck at least one channel per group
    /// (a ResNeXt needs `width * width_per_group >= 64`).
    pub fn check_width(self, width: usize) -> std::result::Result<(), String> {
        if let Arch::ResNeXt50 {
            width_per_group, ..
        } = self
        {
            if self.inner_width(width) == 0 {
                return Err(format!(
                    "{self} with stem width {width}: the first stage's bottleneck would have \
                     int({width} * {width_per_group} / 64) = 0 channels per group; need width * \
                     {width_per_group} >= 64"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backbone {
    pub arch: Arch,
    /// Stem width (64 for the standard models; smaller for test fixtures).
    pub width: usize,
    pub act: Act,
}

impl Backbone {
    /// Output channels of stage `i` (0..4).
    pub fn stage_channels(&self, i: usize) -> usize {
        self.width * (1 << i) * self.arch.expansion()
    }

    pub fn final_channels(&self) -> usize {
        self.stage_channels(3)
    }

    fn block_prefix(prefix: &str, stage: usize, block: usize) -> String {
        format!("{prefix}layer{}.{block}", stage + 1)
    }

    /// Declares every tensor under `prefix` (e.g. "" or "segmenter.").
    pub fn declare(&self, d: &mut Declared, prefix: &str) {
        let w = self.width;
        d.conv(&format!("{prefix}conv1"), w, 3, 7, false);
        d.bn(&format!("{prefix}bn1"), w);
        let mut inplanes = w;
        for (stage, &nb) in self.arch.blocks().iter().enumerate() {
            let planes = w << stage;
            for b in 0..nb {
                let p = Self::block_prefix(prefix, stage, b);
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let out = planes * self.arch.expansion();
                if self.arch.bottleneck() {
                    let inner = self.arch.inner_width(planes);
                    let groups = self.arch.groups();
                    d.conv(&format!("{p}.conv1"), inner, inplanes, 1, false);
                    d.bn(&format!("{p}.bn1"), inner);
                    d.conv(&format!("{p}.conv2"), inner, inner / groups, 3, false);
                    d.bn(&format!("{p}.bn2"), inner);
                    d.conv(&format!("{p}.conv3"), out, inner, 1, false);
                    d.bn(&format!("{p}.bn3"), out);
                } else {
                    d.conv(&format!("{p}.conv1"), planes, inplanes, 3, false);
                    d.bn(&format!("{p}.bn1"), planes);
                    d.conv(&format!("{p}.conv2"), planes, planes, 3, false);
                    d.bn(&format!("{p}.bn2"), planes);
                }
                if stride != 1 || inplanes != out {
                    d.conv(&format!("{p}.downsample.0"), out, inplanes, 1, false);
                    d.bn(&format!("{p}.downsample.1"), out);
                }
                inplanes = out;
            }
        }
    }

    /// Forward from normalised NHWC images; returns the outputs of layer1..layer4.
    pub fn forward(&self, ctx: &mut Ctx, x: Var, prefix: &str) -> Result<[Var; 4]> {
        let s = ctx.tape.shape(x).to_vec();
        if s.len() != 4 || s[3] != 3 {
            return Err(Error::shape(
                "resnet",
                format!("input must be NHWC images [N, H, W, 3], got {s:?}"),
            ));
        }
        let y = conv_bn_act(
            ctx,
            x,
            &format!("{prefix}conv1"),
            &format!("{prefix}bn1"),
            2,
            3,
            self.act,
        )?;
        let y = ops::max_pool2d(&mut ctx.tape, y, 3, 2, 1)?;
        let mut y = ctx.named(&format!("{prefix}maxpool"), y)?;
        let mut outs = Vec::with_capacity(4);
        for (stage, &nb) in self.arch.blocks().iter().enumerate() {
            for b in 0..nb {
                let p = Self::block_prefix(prefix, stage, b);
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                y = self.block(ctx, y, &p, stride)?;
            }
            outs.push(y);
        }
        Ok([outs[0], outs[1], outs[2], outs[3]])
    }

    fn block(&self, ctx: &mut Ctx, x: Var, p: &str, stride: usize) -> Result<Var> {
        let y = if self.arch.bottleneck() {
            let (c1, b1) = (format!("{p}.conv1"), format!("{p}.bn1"));
            let y = conv_bn_act(ctx, x, &c1, &b1, 1, 0, self.act)?;
            let (c2, b2) = (format!("{p}.conv2"), format!("{p}.bn2"));
            let g = self.arch.groups();
            let y = conv_bn_act_grouped(ctx, y, &c2, &b2, stride, 1, g, self.act)?;
            let y = conv(ctx, y, &format!("{p}.conv3"), 1, 0, 1)?;
            bn(ctx, y, &format!("{p}.bn3"))?
        } else {
            let (c1, b1) = (format!("{p}.conv1"), format!("{p}.bn1"));
            let y = conv_bn_act(ctx, x, &c1, &b1, stride, 1, self.act)?;
            let y = conv(ctx, y, &format!("{p}.conv2"), 1, 1, 1)?;
            bn(ctx, y, &format!("{p}.bn2"))?
        };
        let ds = format!("{p}.downsample.0.weight");
        let shortcut = if ctx.has(&ds) {
            let s = conv(ctx, x, &format!("{p}.downsample.0"), stride, 0, 1)?;
            bn(ctx, s, &format!("{p}.downsample.1"))?
        } else {
            x
        };
        let y = ops::add(&mut ctx.tape, y, shortcut)?;
        let y = act(ctx, y, self.act)?;
        ctx.named(p, y)
    }
}
