//! ResNet-18/34/50 with torchvision v1.5 structure and names (stride in the 3x3 conv of the
//! bottleneck), any base width, GELU or ReLU. Input: NHWC images already normalised.

use super::layers::{act, bn, conv, conv_bn_act, Act, Ctx, Declared};
use crate::autograd::Var;
use crate::ops;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    ResNet18,
    ResNet34,
    ResNet50,
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "resnet18" => Ok(Arch::ResNet18),
            "resnet34" => Ok(Arch::ResNet34),
            "resnet50" => Ok(Arch::ResNet50),
            _ => Err(format!(
                "'{s}' is not a supported architecture: expected resnet18, resnet34 or resnet50"
            )),
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
        })
    }
}

impl Arch {
    pub fn blocks(self) -> [usize; 4] {
        match self {
            Arch::ResNet18 => [2, 2, 2, 2],
            Arch::ResNet34 | Arch::ResNet50 => [3, 4, 6, 3],
        }
    }
    pub fn bottleneck(self) -> bool {
        self == Arch::ResNet50
    }
    pub fn expansion(self) -> usize {
        if self.bottleneck() {
            4
        } else {
            1
        }
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
                    d.conv(&format!("{p}.conv1"), planes, inplanes, 1, false);
                    d.bn(&format!("{p}.bn1"), planes);
                    d.conv(&format!("{p}.conv2"), planes, planes, 3, false);
                    d.bn(&format!("{p}.bn2"), planes);
                    d.conv(&format!("{p}.conv3"), out, planes, 1, false);
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
            let y = conv_bn_act(ctx, y, &c2, &b2, stride, 1, self.act)?;
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
