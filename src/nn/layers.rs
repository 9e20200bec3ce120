//! Forward context and the layers models are built from. A layer reads its tensors from the
//! parameter store by PyTorch name; the context records each parameter on the tape once.

use super::params::{Kind, ParamStore};
use crate::autograd::{GradMode, Tape, Var};
use crate::device::Precision;
use crate::ops::{self, BatchNormMode, Conv2dParams};
use crate::Result;
use std::collections::HashMap;

/// Activation of the backbone (defined with the ops that fuse it, so `ops` does not depend on
/// `nn`).
pub use crate::ops::Act;

/// A hook on named layer outputs, for audits (`mpm-audit grad --per-layer`): every output a
/// layer produces under its PyTorch module name (`conv1`, `layer2.1.bn2`, `layer3.0`, ...)
/// passes through `tap`, which returns the value the rest of the pass uses. Ordinary passes
/// have none, and then a named output costs one branch.
pub trait LayerTap {
    fn tap(&mut self, tape: &mut Tape, name: &str, y: Var) -> Result<Var>;
}

pub const BN_EPS: f32 = 1e-5;
pub const BN_MOMENTUM: f32 = 0.1;

/// One forward pass: the tape, the parameters, and whether BN uses batch statistics.
pub struct Ctx<'a> {
    pub tape: Tape,
    pub store: &'a mut ParamStore,
    /// BN in training mode (batch statistics, running-stat updates).
    pub train: bool,
    vars: HashMap<String, Var>,
    /// Parameters whose names start with one of these are recorded as constants.
    frozen: Vec<String>,
    /// GPU precision of this pass (ignored on the CPU); starts at
    /// `device::default_precision()`.
    pub precision: Precision,
    tap: Option<&'a mut dyn LayerTap>,
}

impl<'a> Ctx<'a> {
    pub fn new(store: &'a mut ParamStore, mode: GradMode, train: bool) -> Self {
        Ctx {
            tape: Tape::new(mode),
            store,
            train,
            vars: HashMap::new(),
            frozen: Vec::new(),
            precision: crate::device::default_precision(),
            tap: None,
        }
    }

    /// A context continuing an existing tape (e.g. one that already holds the inputs).
    pub fn from_tape(store: &'a mut ParamStore, tape: Tape, train: bool) -> Self {
        Ctx {
            tape,
            store,
            train,
            vars: HashMap::new(),
            frozen: Vec::new(),
            precision: crate::device::default_precision(),
            tap: None,
        }
    }

    /// Routes named layer outputs through `tap` for this pass (audits).
    pub fn with_tap(mut self, tap: &'a mut dyn LayerTap) -> Self {
        self.tap = Some(tap);
        self
    }

    /// A layer's output `y` under its module name: `y` itself unless a tap is set.
    #[inline]
    pub fn named(&mut self, name: &str, y: Var) -> Result<Var> {
        match self.tap.as_deref_mut() {
            None => Ok(y),
            Some(t) => t.tap(&mut self.tape, name, y),
        }
    }

    /// The same context with GPU precision `p`.
    pub fn with_precision(mut self, p: Precision) -> Self {
        self.precision = p;
        self
    }

    /// Ends the pass, keeping the tape.
    pub fn into_tape(self) -> Tape {
        self.tape
    }

    /// Records parameters under `prefix` as constants (e.g. a frozen backbone).
    pub fn freeze(&mut self, prefix: &str) {
        self.frozen.push(prefix.to_string());
    }

    /// The tape variable of parameter `name`, recorded on first use.
    pub fn p(&mut self, name: &str) -> Result<Var> {
        if let Some(v) = self.vars.get(name) {
            return Ok(*v);
        }
        let e = self.store.get(name)?;
        let t = e.tensor.clone();
        let v =
            if e.kind == Kind::Param && !self.frozen.iter().any(|f| name.starts_with(f.as_str())) {
                self.tape.param(t)
            } else {
                self.tape.constant(t)
            };
        self.vars.insert(name.to_string(), v);
        Ok(v)
    }

    /// Parameters used in this pass, by name.
    pub fn used_params(&self) -> &HashMap<String, Var> {
        &self.vars
    }

    pub fn has(&self, name: &str) -> bool {
        self.store.get(name).is_ok()
    }
}

/// Conv2d `{prefix}.weight` (+ `{prefix}.bias` when the store has one).
pub fn conv(
    ctx: &mut Ctx,
    x: Var,
    prefix: &str,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Var> {
    let w = ctx.p(&format!("{prefix}.weight"))?;
    let bname = format!("{prefix}.bias");
    let b = if ctx.has(&bname) {
        Some(ctx.p(&bname)?)
    } else {
        None
    };
    let y = ops::conv2d(
        &mut ctx.tape,
        x,
        w,
        b,
        Conv2dParams::new(stride, padding).groups(groups),
    )?;
    ctx.named(prefix, y)
}

/// BatchNorm over channels (2-d or 1-d), PyTorch defaults (eps 1e-5, momentum 0.1).
pub fn bn(ctx: &mut Ctx, x: Var, prefix: &str) -> Result<Var> {
    bn_act(ctx, x, prefix, None)
}

/// `act(bn(x))`: one fused BN-apply + activation pass (forward and backward) on the GPU, the
/// plain composition on the CPU.
pub fn bn_act(ctx: &mut Ctx, x: Var, prefix: &str, a: Option<Act>) -> Result<Var> {
    let g = ctx.p(&format!("{prefix}.weight"))?;
    let b = ctx.p(&format!("{prefix}.bias"))?;
    let mode = if ctx.train {
        BatchNormMode::Train {
            momentum: BN_MOMENTUM,
        }
    } else {
        BatchNormMode::Eval
    };
    let mut rm = ctx.store.tensor(&format!("{prefix}.running_mean"))?.clone();
    let mut rv = ctx.store.tensor(&format!("{prefix}.running_var"))?.clone();
    let y = ops::batch_norm_act(&mut ctx.tape, x, g, b, &mut rm, &mut rv, mode, BN_EPS, a)?;
    if ctx.train {
        ctx.store.get_mut(&format!("{prefix}.running_mean"))?.tensor = rm;
        ctx.store.get_mut(&format!("{prefix}.running_var"))?.tensor = rv;
        ctx.store.bump_counter(prefix);
    }
    ctx.named(prefix, y)
}

/// `act(bn(conv(x)))`, the ResNet pattern. CPU: exactly `conv`, `bn`, `act` (the spec). GPU,
/// training: cuDNN conv then the fused BN + activation kernel. GPU, eval mode with no
/// parameter gradient (evaluation, attacks): BN folded into the conv, fused conv-GELU kernel
/// or cuDNN + epilogue, whichever is faster for the shape (`cuda::fused`).
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_act(
    ctx: &mut Ctx,
    x: Var,
    conv_prefix: &str,
    bn_prefix: &str,
    stride: usize,
    padding: usize,
    a: Act,
) -> Result<Var> {
    conv_bn_act_grouped(ctx, x, conv_prefix, bn_prefix, stride, padding, 1, a)
}

/// [`conv_bn_act`] with a grouped convolution (ResNeXt's 3x3). The folded eval path keeps
/// the groups: BN folding is per output channel, and `cuda::fused` sends grouped shapes to
/// cuDNN.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_act_grouped(
    ctx: &mut Ctx,
    x: Var,
    conv_prefix: &str,
    bn_prefix: &str,
    stride: usize,
    padding: usize,
    groups: usize,
    a: Act,
) -> Result<Var> {
    // A tap (per-layer audit) needs the conv and BN outputs by name: the plain composition.
    if !ctx.tape.value(x).is_cuda() || ctx.tap.is_some() {
        let y = conv(ctx, x, conv_prefix, stride, padding, groups)?;
        let y = bn(ctx, y, bn_prefix)?;
        return act(ctx, y, a);
    }
    let has_bias = ctx.has(&format!("{conv_prefix}.bias"));
    if !ctx.train && !has_bias {
        let w = ctx.p(&format!("{conv_prefix}.weight"))?;
        let g = ctx.p(&format!("{bn_prefix}.weight"))?;
        let b = ctx.p(&format!("{bn_prefix}.bias"))?;
        if ![w, g, b].iter().any(|v| ctx.tape.requires_grad(*v)) {
            let rm = ctx
                .store
                .tensor(&format!("{bn_prefix}.running_mean"))?
                .clone();
            let rv = ctx
                .store
                .tensor(&format!("{bn_prefix}.running_var"))?
                .clone();
            return ops::conv_bn_act_eval(
                &mut ctx.tape,
                x,
                w,
                g,
                b,
                &rm,
                &rv,
                BN_EPS,
                a,
                Conv2dParams::new(stride, padding).groups(groups),
                conv_prefix,
            );
        }
    }
    let y = conv(ctx, x, conv_prefix, stride, padding, groups)?;
    bn_act(ctx, y, bn_prefix, Some(a))
}

/// The activation `a`; on the GPU a failed launch is an error naming the op and shape.
pub fn act(ctx: &mut Ctx, x: Var, a: Act) -> Result<Var> {
    match a {
        Act::Gelu => ops::gelu(&mut ctx.tape, x),
        Act::Relu => ops::relu(&mut ctx.tape, x),
    }
}

/// Separable conv: depthwise 3x3 (`{prefix}.conv1`, pad 1, no bias) then pointwise 1x1
/// (`{prefix}.pointwise`, no bias).
pub fn separable(ctx: &mut Ctx, x: Var, prefix: &str) -> Result<Var> {
    let c = *ctx.tape.shape(x).last().unwrap_or(&1);
    let y = conv(ctx, x, &format!("{prefix}.conv1"), 1, 1, c)?;
    conv(ctx, y, &format!("{prefix}.pointwise"), 1, 0, 1)
}

pub fn linear(ctx: &mut Ctx, x: Var, prefix: &str) -> Result<Var> {
    let w = ctx.p(&format!("{prefix}.weight"))?;
    let bname = format!("{prefix}.bias");
    let b = if ctx.has(&bname) {
        Some(ctx.p(&bname)?)
    } else {
        None
    };
    let y = ops::linear(&mut ctx.tape, x, w, b)?;
    ctx.named(prefix, y)
}

/// `[N, 1, 1, C]` (or any `[N, ...]`) -> `[N, C]`.
pub fn flatten(ctx: &mut Ctx, x: Var) -> Result<Var> {
    let s = ctx.tape.shape(x).to_vec();
    let n = s[0];
    let rest: usize = s[1..].iter().product();
    ops::reshape(&mut ctx.tape, x, &[n, rest])
}

/// Records the name, PyTorch shape and kind of every tensor a model needs (for
/// initialisation and for checking checkpoints).
#[derive(Default, Debug, Clone)]
pub struct Declared {
    pub entries: Vec<(String, Vec<usize>, Kind)>,
    pub bn_prefixes: Vec<String>,
}

impl Declared {
    pub fn conv(&mut self, prefix: &str, o: usize, i_per_group: usize, k: usize, bias: bool) {
        self.entries.push((
            format!("{prefix}.weight"),
            vec![o, i_per_group, k, k],
            Kind::Param,
        ));
        if bias {
            self.entries
                .push((format!("{prefix}.bias"), vec![o], Kind::Param));
        }
    }
    pub fn bn(&mut self, prefix: &str, c: usize) {
        for (n, k) in [
            ("weight", Kind::Param),
            ("bias", Kind::Param),
            ("running_mean", Kind::Buffer),
            ("running_var", Kind::Buffer),
        ] {
            self.entries.push((format!("{prefix}.{n}"), vec![c], k));
        }
        self.bn_prefixes.push(prefix.to_string());
    }
    pub fn linear(&mut self, prefix: &str, o: usize, i: usize) {
        self.entries
            .push((format!("{prefix}.weight"), vec![o, i], Kind::Param));
        self.entries
            .push((format!("{prefix}.bias"), vec![o], Kind::Param));
    }
    pub fn separable(&mut self, prefix: &str, c_in: usize, c_out: usize) {
        self.conv(&format!("{prefix}.conv1"), c_in, 1, 3, false);
        self.conv(&format!("{prefix}.pointwise"), c_out, c_in, 1, false);
    }
    /// Every name a checkpoint holds, `num_batches_tracked` included.
    pub fn state_dict_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.iter().map(|e| e.0.clone()).collect();
        v.extend(
            self.bn_prefixes
                .iter()
                .map(|p| format!("{p}.num_batches_tracked")),
        );
        v
    }
}
