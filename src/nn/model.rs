//! The models of the paper on one spec: a plain ResNet, the MPM (ResNet + multi-scale part
//! heads, DESIGN.md §1) and the two-stage part model. Names follow the paper's checkpoints.

use super::layers::{act, bn, conv, flatten, linear, separable, Act, Ctx, Declared};
use super::params::{Kind, ParamStore, TorchTensor};
use super::resnet::Backbone;
use crate::autograd::Var;
use crate::ops;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Plain classifier (torchvision names).
    None,
    /// Multi-scale part-supervised model: `levels` in 1..=3, optional top-down path.
    Mpm { levels: usize, top_down: bool },
    /// Sitawarin et al.'s two-stage part model.
    TwoStage { hidden: usize, fc_hidden: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    pub backbone: Backbone,
    pub num_classes: usize,
    /// S = part classes + 1 (background); unused without a head.
    pub seg_classes: usize,
    pub head: Head,
}

/// Output of a forward pass. `segs` are NHWC logits `[N, h, w, S]`, highest resolution first.
pub struct Output {
    pub logits: Var,
    pub segs: Vec<Var>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossConfig {
    pub lambda: f32,
    pub gamma: f32,
    pub smoothing: f32,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            lambda: 1.0,
            gamma: 2.0,
            smoothing: 0.1,
        }
    }
}

/// A checkpoint value: a float tensor in PyTorch layout, or an integer counter.
#[derive(Clone, Debug)]
pub enum StateValue {
    Float(TorchTensor),
    Int(i64),
}

/// Prefixes of the MPM bypass layers (training only).
const MPM_BYPASS: [&str; 3] = ["cp", "segmenter_head", "up_layer"];

impl ModelSpec {
    /// Prefix of the backbone's tensors.
    pub fn prefix(&self) -> &'static str {
        match self.head {
            Head::None => "",
            _ => "segmenter.",
        }
    }

    /// Compact width F of the MPM bypass layers (final channels / 4).
    pub fn compact(&self) -> usize {
        self.backbone.final_channels() / 4
    }

    pub fn declare(&self) -> Declared {
        let mut d = Declared::default();
        let bb = &self.backbone;
        bb.declare(&mut d, self.prefix());
        let s = self.seg_classes;
        let c4 = bb.final_channels();
        match self.head {
            Head::None => d.linear("fc", self.num_classes, c4),
            Head::Mpm { .. } => {
                let f = self.compact();
                let widths = [f, f / 2, f / 4];
                for (i, &w) in widths.iter().enumerate() {
                    let p = format!("cp{}", i + 1);
                    d.conv(&format!("{p}.0"), w, bb.stage_channels(3 - i), 1, false);
                    d.bn(&format!("{p}.1"), w);
                    d.separable(&format!("segmenter_head{}.1", i + 1), w, s);
                }
                for i in 0..2 {
                    d.separable(&format!("up_layer{}.1", i + 1), widths[i], widths[i + 1]);
                }
                d.linear("classifer.2", self.num_classes, c4);
            }
            Head::TwoStage { hidden, fc_hidden } => {
                d.bn("segmenter_head.1", c4);
                d.separable("segmenter_head.2", c4, s);
                d.conv("classifer.1", hidden, s, 4, true);
                d.bn("classifer.2", hidden);
                d.linear("classifer.5", fc_hidden, hidden);
                d.bn("classifer.6", fc_hidden);
                d.linear("classifer.8", self.num_classes, fc_hidden);
            }
        }
        d
    }

    /// Forward from NHWC images in [0, 1] (normalised inside the model).
    pub fn forward(&self, ctx: &mut Ctx, images: Var) -> Result<Output> {
        self.forward_normalized(
            ctx,
            images,
            ops::basic::IMAGENET_MEAN,
            ops::basic::IMAGENET_STD,
        )
    }

    /// `forward` with another input normalisation (published models that were trained with
    /// their own, `nn::zoo`).
    pub fn forward_normalized(
        &self,
        ctx: &mut Ctx,
        images: Var,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Result<Output> {
        let x = ops::basic::normalize_input_as(
            &mut ctx.tape,
            images,
            mean,
            std,
            ctx.precision.activation_dtype(),
        )?;
        let [_, l2, l3, l4] = self.backbone.forward(ctx, x, self.prefix())?;
        match self.head {
            Head::None => {
                let logits = self.pool_classify(ctx, l4, "fc")?;
                Ok(Output {
                    logits,
                    segs: vec![],
                })
            }
            Head::Mpm { levels, top_down } => {
                let segs = self.mpm_heads(ctx, [l4, l3, l2], levels, top_down)?;
                let logits = self.pool_classify(ctx, l4, "classifer.2")?;
                Ok(Output { logits, segs })
            }
            Head::TwoStage { .. } => self.two_stage(ctx, l4),
        }
    }

    /// Logits only, for evaluation and attacks: an MPM is then the plain ResNet (the bypass
    /// layers are not run); the two-stage model has no shortcut and runs whole.
    pub fn forward_logits(&self, ctx: &mut Ctx, images: Var) -> Result<Var> {
        self.forward_logits_normalized(
            ctx,
            images,
            ops::basic::IMAGENET_MEAN,
            ops::basic::IMAGENET_STD,
        )
    }

    /// `forward_logits` with another input normalisation (`nn::zoo`).
    pub fn forward_logits_normalized(
        &self,
        ctx: &mut Ctx,
        images: Var,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> Result<Var> {
        match self.head {
            Head::TwoStage { .. } => Ok(self.forward_normalized(ctx, images, mean, std)?.logits),
            Head::None | Head::Mpm { .. } => {
                let x = ops::basic::normalize_input_as(
                    &mut ctx.tape,
                    images,
                    mean,
                    std,
                    ctx.precision.activation_dtype(),
                )?;
                let [_, _, _, l4] = self.backbone.forward(ctx, x, self.prefix())?;
                let fc = if self.head == Head::None {
                    "fc"
                } else {
                    "classifer.2"
                };
                self.pool_classify(ctx, l4, fc)
            }
        }
    }

    fn pool_classify(&self, ctx: &mut Ctx, feat: Var, fc: &str) -> Result<Var> {
        let y = ops::adaptive_avg_pool2d(&mut ctx.tape, feat, 1, 1)?;
        let y = flatten(ctx, y)?;
        linear(ctx, y, fc)
    }

    /// `feats` = [layer4, layer3, layer2] outputs. Returns seg logits highest resolution
    /// first; only the levels in use are computed, so unused heads get no gradient.
    fn mpm_heads(
        &self,
        ctx: &mut Ctx,
        feats: [Var; 3],
        levels: usize,
        top_down: bool,
    ) -> Result<Vec<Var>> {
        if !(1..=3).contains(&levels) {
            return Err(Error::flag(
                "--levels",
                format!("must be 1, 2 or 3, got {levels}"),
            ));
        }
        // All three compact layers run whatever the levels, as in the paper's code: in train
        // mode their BN running statistics update even when a level is unused.
        let mut c = Vec::with_capacity(3);
        for (i, f) in feats.iter().enumerate() {
            let p = format!("cp{}", i + 1);
            let y = conv(ctx, *f, &format!("{p}.0"), 1, 0, 1)?;
            c.push(bn(ctx, y, &format!("{p}.1"))?);
        }
        c.truncate(levels);
        let mut m = vec![c[0]];
        if top_down {
            for i in 1..levels {
                let up = separable_gelu(ctx, m[i - 1], &format!("up_layer{i}.1"))?;
                let s = ctx.tape.shape(c[i]).to_vec();
                let up = ops::resize_bilinear(&mut ctx.tape, up, s[1], s[2])?;
                m.push(ops::add(&mut ctx.tape, up, c[i])?);
            }
        } else {
            m = c.clone();
        }
        let mut segs = Vec::with_capacity(levels);
        for (i, mi) in m.iter().enumerate() {
            segs.push(separable_gelu(
                ctx,
                *mi,
                &format!("segmenter_head{}.1", i + 1),
            )?);
        }
        segs.reverse();
        Ok(segs)
    }

    fn two_stage(&self, ctx: &mut Ctx, l4: Var) -> Result<Output> {
        let y = ops::gelu(&mut ctx.tape, l4)?;
        let y = bn(ctx, y, "segmenter_head.1")?;
        let seg = separable(ctx, y, "segmenter_head.2")?;
        let p = ops::softmax_channels(&mut ctx.tape, seg)?;
        let p = ops::adaptive_avg_pool2d(&mut ctx.tape, p, 4, 4)?;
        let y = conv(ctx, p, "classifer.1", 1, 0, 1)?;
        let y = bn(ctx, y, "classifer.2")?;
        let y = ops::gelu(&mut ctx.tape, y)?;
        let y = flatten(ctx, y)?;
        let y = linear(ctx, y, "classifer.5")?;
        let y = bn(ctx, y, "classifer.6")?;
        let y = ops::gelu(&mut ctx.tape, y)?;
        let logits = linear(ctx, y, "classifer.8")?;
        Ok(Output {
            logits,
            segs: vec![seg],
        })
    }

    /// `L = CE_smooth(logits, y) + lambda * mean over levels of focal(seg_i, t_i)`.
    /// `seg_targets` are NHWC `[N, h_i, w_i, S]`, highest resolution first, one per output.
    pub fn loss(
        &self,
        ctx: &mut Ctx,
        out: &Output,
        labels: &[usize],
        seg_targets: &[Tensor],
        seg_weights: &[f32],
        cfg: LossConfig,
    ) -> Result<Var> {
        let ce = ops::cross_entropy_smooth(&mut ctx.tape, out.logits, labels, cfg.smoothing)?;
        if out.segs.is_empty() || cfg.lambda == 0.0 {
            return Ok(ce);
        }
        if seg_targets.len() != out.segs.len() {
            return Err(Error::shape(
                "loss",
                format!(
                    "{} segmentation targets for {} segmentation outputs",
                    seg_targets.len(),
                    out.segs.len()
                ),
            ));
        }
        let mut total: Option<Var> = None;
        for (z, t) in out.segs.iter().zip(seg_targets) {
            let f = ops::focal_loss(&mut ctx.tape, *z, t, seg_weights, cfg.gamma)?;
            total = Some(match total {
                None => f,
                Some(acc) => ops::add(&mut ctx.tape, acc, f)?,
            });
        }
        let seg = total.ok_or_else(|| Error::shape("loss", "no segmentation output"))?;
        let k = cfg.lambda / out.segs.len() as f32;
        let seg = ops::scale(&mut ctx.tape, seg, k)?;
        ops::add(&mut ctx.tape, ce, seg)
    }

    /// A random model by the authors' distributions (timm's ResNet init, PyTorch's defaults for
    /// the new layers; `super::init`), every BN weight 1 (tests, audits, benchmarks).
    pub fn init(&self, seed: u64) -> Result<ParamStore> {
        super::init::init(self, seed, super::init::Init::Random)
    }

    /// The model a training run from scratch starts from: [`Self::init`] with timm's
    /// `zero_init_last` (the last BN of every residual block at weight 0).
    pub fn init_from_scratch(&self, seed: u64) -> Result<ParamStore> {
        super::init::init(self, seed, super::init::Init::FromScratch)
    }

    /// Checks a checkpoint's names, shapes and element types, read before its data
    /// (`io::load_state_dict_checked`), against this model, listing every missing,
    /// unexpected, mis-shaped or non-float tensor in one error: what [`ModelSpec::load`]
    /// checks, before anything is read.
    pub fn check_preview(&self, preview: &crate::io::StatePreview) -> Result<()> {
        let d = self.declare();
        let mut problems = Vec::new();
        let mut known = std::collections::HashSet::new();
        for (name, shape, _) in &d.entries {
            known.insert(name.clone());
            match preview.get(name) {
                None => problems.push(format!("  missing: {name} (expected shape {shape:?})")),
                Some(t) if !t.is_float() => problems.push(format!(
                    "  {name}: expected a float tensor {shape:?}, got {} {:?}",
                    t.dtype, t.shape
                )),
                Some(t) if &t.shape != shape => problems.push(format!(
                    "  mis-shaped: {name}: checkpoint {:?}, model {shape:?}",
                    t.shape
                )),
                Some(_) => {}
            }
        }
        for p in &d.bn_prefixes {
            let name = format!("{p}.num_batches_tracked");
            if let Some(t) = preview.get(&name) {
                if t.numel() != 1 {
                    problems.push(format!(
                        "  mis-shaped: {name}: expected a scalar, got {:?}",
                        t.shape
                    ));
                }
            }
            known.insert(name);
        }
        for name in preview.keys() {
            if !known.contains(name) {
                problems.push(format!("  unexpected: {name}"));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::Checkpoint(format!(
            "{} problem(s) for a {} model:\n{}",
            problems.len(),
            self.describe(),
            problems.join("\n")
        )))
    }

    /// Builds the parameter store from a checkpoint, listing every missing, unexpected or
    /// mis-shaped tensor in one error.
    pub fn load(&self, state: &BTreeMap<String, StateValue>) -> Result<ParamStore> {
        let d = self.declare();
        let mut problems = Vec::new();
        let mut store = ParamStore::new();
        let mut known = std::collections::HashSet::new();
        for (name, shape, kind) in &d.entries {
            known.insert(name.clone());
            match state.get(name) {
                None => problems.push(format!("  missing: {name} (expected shape {shape:?})")),
                Some(StateValue::Int(_)) => problems.push(format!(
                    "  {name}: expected a float tensor {shape:?}, got an integer"
                )),
                Some(StateValue::Float(t)) if &t.shape != shape => problems.push(format!(
                    "  mis-shaped: {name}: checkpoint {:?}, model {shape:?}",
                    t.shape
                )),
                Some(StateValue::Float(t)) => store.insert(name, *kind, t.clone())?,
            }
        }
        for p in &d.bn_prefixes {
            let name = format!("{p}.num_batches_tracked");
            known.insert(name.clone());
            match state.get(&name) {
                Some(StateValue::Int(v)) => store.add_counter(p, *v),
                Some(StateValue::Float(t)) if t.data.len() == 1 => {
                    store.add_counter(p, t.data[0] as i64)
                }
                Some(StateValue::Float(t)) => problems.push(format!(
                    "  mis-shaped: {name}: expected a scalar, got {:?}",
                    t.shape
                )),
                // Older checkpoints lack the counter; PyTorch tolerates that too.
                None => store.add_counter(p, 0),
            }
        }
        for name in state.keys() {
            if !known.contains(name) {
                problems.push(format!("  unexpected: {name}"));
            }
        }
        if !problems.is_empty() {
            return Err(Error::Checkpoint(format!(
                "{} problem(s) for a {} model:\n{}",
                problems.len(),
                self.describe(),
                problems.join("\n")
            )));
        }
        Ok(store)
    }

    pub fn describe(&self) -> String {
        let head = match self.head {
            Head::None => "plain".to_string(),
            Head::Mpm { levels, top_down } => format!(
                "MPM (levels {levels}, {}top-down, S = {})",
                if top_down { "" } else { "no " },
                self.seg_classes
            ),
            Head::TwoStage { .. } => format!("two-stage (S = {})", self.seg_classes),
        };
        format!(
            "{} width {} {:?}, {} classes, {head}",
            self.backbone.arch, self.backbone.width, self.backbone.act, self.num_classes
        )
    }

    /// The inference model of an MPM: the plain ResNet (bypass layers dropped), with
    /// torchvision names (`segmenter.X` -> `X`, `classifer.2` -> `fc`).
    pub fn inference_export(&self, store: &ParamStore) -> Result<BTreeMap<String, StateValue>> {
        let mut out = BTreeMap::new();
        let rename = |name: &str| -> Option<String> {
            match self.head {
                Head::None => Some(name.to_string()),
                Head::Mpm { .. } => {
                    if let Some(rest) = name.strip_prefix("segmenter.") {
                        Some(rest.to_string())
                    } else {
                        name.strip_prefix("classifer.2.").map(|r| format!("fc.{r}"))
                    }
                }
                Head::TwoStage { .. } => None,
            }
        };
        if matches!(self.head, Head::TwoStage { .. }) {
            return Err(Error::Msg(
                "the two-stage model has no plain-ResNet inference form".into(),
            ));
        }
        for name in store.names() {
            if MPM_BYPASS.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            if let Some(n) = rename(name) {
                out.insert(n, StateValue::Float(store.export(name)?));
            }
        }
        for (p, v) in store.counters() {
            if let Some(n) = rename(&format!("{p}.num_batches_tracked")) {
                if !MPM_BYPASS.iter().any(|b| p.starts_with(b)) {
                    out.insert(n, StateValue::Int(*v));
                }
            }
        }
        Ok(out)
    }

    /// Full state dict (PyTorch names and layouts) of a store built for this spec.
    pub fn state_dict(&self, store: &ParamStore) -> Result<BTreeMap<String, StateValue>> {
        let mut out = BTreeMap::new();
        for name in store.names() {
            out.insert(name.clone(), StateValue::Float(store.export(name)?));
        }
        for (p, v) in store.counters() {
            out.insert(format!("{p}.num_batches_tracked"), StateValue::Int(*v));
        }
        Ok(out)
    }

    /// Names of trainable parameters (the `train.grad.*` set).
    pub fn param_names(&self) -> Vec<String> {
        self.declare()
            .entries
            .into_iter()
            .filter(|e| e.2 == Kind::Param)
            .map(|e| e.0)
            .collect()
    }
}

/// GELU -> separable conv: the MPM head / up-layer shape (always GELU, whatever the
/// backbone's activation).
fn separable_gelu(ctx: &mut Ctx, x: Var, prefix: &str) -> Result<Var> {
    let y = act(ctx, x, Act::Gelu)?;
    separable(ctx, y, prefix)
}
