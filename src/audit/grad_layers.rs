//! `mpm-audit grad --per-layer`: the tape's gradient at each named layer output against
//! central finite differences, to localise a wrong backward rule.
//!
//! For layer `l` with output `a_l` (named by its PyTorch module name: `conv1`, `bn1`,
//! `maxpool`, `layer2.1.conv2`, `layer3.0` for a block's output, `fc`, the MPM's `cp1.0`,
//! `segmenter_head2.1.pointwise`, ...) and sample `i`: analytic `<dL_i/da_l, v>` read from one
//! backward in which a zero tensor was added to every chosen output as a tape input, vs
//! numeric `(L_i(a_l + h v) - L_i(a_l - h v)) / 2h`, two forwards with `+-h v` added at that
//! output only. `L_i` is the input audit's function (`grad.rs`: the random linear probe of the
//! logits, or an attack loss), plus, for a model whose forward has segmentation outputs (MPM
//! heads, two-stage), a random linear probe of each (so the heads' backward rules are
//! audited too; `heads: false` audits the attack path only). The model runs in eval mode (BN
//! running statistics), so every sample's loss depends on its own activations only.
//!
//! Directions are per sample, as in the input audit: `v = normalise(r/|r| + g/|g|)` with `r`
//! random. The step is relative: `h = step * mean_i |a_l,i|` (l2 over one sample's output),
//! so a layer moves by the same fraction of its size whatever its scale. Each difference is
//! taken at `h` (default `1e-3` relative) and `0.03 h` and the better error kept; where
//! neither central difference agrees, a one-sided difference at `0.03 h` that does marks a
//! kink or a tie at the point (see `layer_audit`). On the demo ResNet-18 with one step, max
//! pool kinks gave p95 1.4e-2 at conv1/bn1 whatever the step in 1e-4..1e-3, and f32 rounding
//! made most layers fail at 1e-5; with the two steps every output is below 1.5e-3.
//!
//! Localisation: in forward order, the deepest failing layer `k` is where, walking back from
//! the loss, the gradient first goes wrong; everything after it passes, so the faulty rule is
//! the backward of an op that reads `a_k` (between `a_k` and the next audited outputs).

use super::grad::{eval_loss, logit_probe, quantile, runner_up_targets, unit_rows, AuditLoss};
use crate::attack::rng::{normal, sample_rng};
use crate::attack::{Dims, EngineClassifier};
use crate::autograd::{GradMode, Tape, Var};
use crate::nn::layers::LayerTap;
use crate::nn::layout::nchw_to_nhwc;
use crate::nn::Ctx;
use crate::ops;
use crate::tensor::Tensor;
use crate::{Error, Result};
use serde_json::{json, Value};

/// Which layers: comma-separated glob patterns (`*` any run, `?` one character) on PyTorch
/// module names. A pattern matches a backbone name with or without the `segmenter.` prefix
/// of MPM / two-stage checkpoints.
#[derive(Clone, Debug)]
pub struct LayerSelect {
    patterns: Vec<String>,
}

impl LayerSelect {
    pub fn all() -> Self {
        LayerSelect {
            patterns: vec!["*".into()],
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let patterns: Vec<String> = s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        if patterns.is_empty() {
            return Err(Error::flag(
                "--layers",
                "no pattern given (e.g. 'layer2.*,fc' or 'conv1,bn1')",
            ));
        }
        Ok(LayerSelect { patterns })
    }

    pub fn matches(&self, name: &str) -> bool {
        let short = strip(name);
        self.patterns
            .iter()
            .any(|p| glob(p.as_bytes(), name.as_bytes()) || glob(p.as_bytes(), short.as_bytes()))
    }

    pub fn describe(&self) -> String {
        self.patterns.join(",")
    }
}

fn strip(name: &str) -> &str {
    name.strip_prefix("segmenter.").unwrap_or(name)
}

/// Glob match with `*` and `?`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A deliberate bug at one layer's output, to see the audit find it (demonstrations, tests).
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// Forward rounds to a grid of this step, backward passes the gradient through
    /// unchanged (straight-through): a non-differentiable step whose gradient is wrong.
    Quantize(f32),
    /// Forward unchanged, backward multiplies the gradient by this factor: a wrong
    /// backward rule.
    ScaleGrad(f32),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub layer: String,
    pub kind: FaultKind,
}

impl std::str::FromStr for Fault {
    type Err = String;
    /// `quantize[=STEP]@LAYER` (step 0.25 by default) or `scale-grad[=K]@LAYER` (0.5).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let usage = "expected quantize[=STEP]@LAYER or scale-grad[=K]@LAYER, e.g. \
                     scale-grad=0.5@layer2.1.conv2";
        let (kind, layer) = s.split_once('@').ok_or(format!("'{s}': {usage}"))?;
        let (k, val) = match kind.split_once('=') {
            Some((k, v)) => (
                k,
                Some(
                    v.parse::<f32>()
                        .map_err(|_| format!("'{v}' is not a number: {usage}"))?,
                ),
            ),
            None => (kind, None),
        };
        let kind = match k {
            "quantize" => {
                let q = val.unwrap_or(0.25);
                if !(q > 0.0 && q.is_finite()) {
                    return Err(format!("quantize step must be positive, got {q}"));
                }
                FaultKind::Quantize(q)
            }
            "scale-grad" => FaultKind::ScaleGrad(val.unwrap_or(0.5)),
            _ => return Err(format!("'{k}' is not a fault kind: {usage}")),
        };
        if layer.is_empty() {
            return Err(format!("no layer: {usage}"));
        }
        Ok(Fault {
            layer: layer.to_string(),
            kind,
        })
    }
}

impl Fault {
    fn matches(&self, name: &str) -> bool {
        name == self.layer || strip(name) == self.layer
    }

    fn apply(&self, tape: &mut Tape, y: Var) -> Var {
        match self.kind {
            FaultKind::Quantize(q) => {
                let v = tape.value(y).map(|a| (a / q).round() * q);
                tape.record(v, &[y], |c| Ok(vec![Some(c.dout.clone())]))
            }
            FaultKind::ScaleGrad(k) => {
                let v = tape.value(y).clone();
                tape.record(v, &[y], move |c| Ok(vec![Some(c.dout.map(|g| g * k))]))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self.kind {
            FaultKind::Quantize(q) => format!(
                "quantise {} to steps of {q} with a straight-through gradient",
                self.layer
            ),
            FaultKind::ScaleGrad(k) => format!("gradient of {} scaled by {k}", self.layer),
        }
    }
}

/// A named output seen by the probe during a pass.
struct Seen {
    name: String,
    shape: Vec<usize>,
    /// The zero input added to it (gradient pass, chosen layers).
    var: Option<Var>,
    /// Its value (gradient pass, chosen layers).
    value: Option<Tensor>,
}

/// The audit's tap: zero inputs at the chosen outputs (gradient pass) or a perturbation at
/// one output (finite-difference pass), and the optional fault.
struct Probe<'s> {
    select: Option<&'s LayerSelect>,
    target: Option<(&'s str, &'s Tensor)>,
    fault: Option<&'s Fault>,
    seen: Vec<Seen>,
}

impl LayerTap for Probe<'_> {
    fn tap(&mut self, tape: &mut Tape, name: &str, y: Var) -> Result<Var> {
        let mut y = y;
        if let Some(f) = self.fault {
            if f.matches(name) {
                y = f.apply(tape, y);
            }
        }
        // A name produced twice (none in the models here) is probed at its first output.
        if self.seen.iter().any(|s| s.name == name) {
            return Ok(y);
        }
        let shape = tape.shape(y).to_vec();
        let (mut var, mut value) = (None, None);
        if self.select.is_some_and(|s| s.matches(name)) {
            value = Some(tape.value(y).clone());
            let p = tape.input(Tensor::zeros(&shape), true);
            y = ops::add(tape, y, p)?;
            var = Some(p);
        }
        if let Some((t, d)) = self.target {
            if t == name {
                let p = tape.constant(d.clone());
                y = ops::add(tape, y, p)?;
            }
        }
        self.seen.push(Seen {
            name: name.to_string(),
            shape,
            var,
            value,
        });
        Ok(y)
    }
}

#[derive(Clone, Debug)]
pub struct LayerAuditConfig {
    pub directions: usize,
    /// Finite-difference step relative to the mean l2 norm of one sample's layer output.
    pub step: f32,
    pub loss: AuditLoss,
    pub seed: u64,
    pub quantile: f64,
    pub tolerance: f64,
    pub select: LayerSelect,
    /// Add a probe of the segmentation outputs (MPM heads, two-stage) to the loss.
    pub heads: bool,
    pub fault: Option<Fault>,
}

impl Default for LayerAuditConfig {
    fn default() -> Self {
        LayerAuditConfig {
            directions: 8,
            step: 1e-3,
            loss: AuditLoss::Probe,
            seed: 0,
            quantile: 0.95,
            tolerance: 1e-2,
            select: LayerSelect::all(),
            heads: true,
            fault: None,
        }
    }
}

/// One audited output.
#[derive(Clone, Debug)]
pub struct LayerRow {
    pub name: String,
    /// Per-sample shape in PyTorch order (`[C, H, W]` or `[K]`).
    pub shape: Vec<usize>,
    /// Finite-difference step used (absolute l2 length).
    pub step: f64,
    /// Mean l2 norm of one sample's gradient at this output.
    pub grad_norm: f64,
    pub analytic: Vec<f64>,
    pub numeric: Vec<f64>,
    pub rel_errors: Vec<f64>,
    pub nonfinite_grads: usize,
    pub zero_grads: usize,
    /// Directions where only a one-sided difference agreed (a kink or a tie at the point).
    pub one_sided: usize,
    pub pass: bool,
}

impl LayerRow {
    fn sorted(&self) -> Vec<f64> {
        let mut s = self.rel_errors.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        s
    }
    pub fn median(&self) -> f64 {
        quantile(&self.sorted(), 0.5)
    }
    pub fn p(&self, q: f64) -> f64 {
        quantile(&self.sorted(), q)
    }
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// Where the gradient first goes wrong, walking back from the loss.
#[derive(Clone, Debug, PartialEq)]
pub struct Localisation {
    /// Deepest (last in forward order) failing output.
    pub deepest_failing: String,
    /// The outputs right after it in forward order (all pass), up to three.
    pub next_passing: Vec<String>,
    /// Failing outputs before it / outputs before it.
    pub upstream_failing: usize,
    pub upstream: usize,
}

#[derive(Clone, Debug)]
pub struct LayerAudit {
    /// `input` (the images) first, then the chosen layers in forward order.
    pub rows: Vec<LayerRow>,
    pub samples: usize,
    pub directions: usize,
    pub loss: String,
    pub heads: bool,
    pub fault: Option<String>,
    pub localisation: Option<Localisation>,
    pub pass: bool,
    pub cfg_quantile: f64,
    pub cfg_tolerance: f64,
    pub cfg_step: f32,
}

fn shape_torch(s: &[usize]) -> Vec<usize> {
    match s.len() {
        4 => vec![s[3], s[1], s[2]],
        _ => s[1..].to_vec(),
    }
}

fn shape_str(s: &[usize]) -> String {
    s.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

impl LayerAudit {
    pub fn localise(rows: &[LayerRow]) -> Option<Localisation> {
        let k = rows.iter().rposition(|r| !r.pass)?;
        Some(Localisation {
            deepest_failing: rows[k].name.clone(),
            next_passing: rows[k + 1..]
                .iter()
                .take(3)
                .map(|r| r.name.clone())
                .collect(),
            upstream_failing: rows[..k].iter().filter(|r| !r.pass).count(),
            upstream: k,
        })
    }

    /// The localisation in words.
    pub fn verdict(&self) -> String {
        let Some(l) = &self.localisation else {
            return format!(
                "every audited output passes ({} outputs): no wrong backward rule found",
                self.rows.len()
            );
        };
        let mut s = if l.next_passing.is_empty() {
            format!(
                "the gradient is already wrong at the last audited output, {}: the faulty \
                 backward rule is after it (pooling, classifier, heads or the loss seed)",
                l.deepest_failing
            )
        } else {
            format!(
                "the gradient first goes wrong (walking back from the loss) at the output of {}; \
                 every output after it passes ({}{}): the faulty backward rule is in an op that \
                 reads {}'s output, between it and {}",
                l.deepest_failing,
                l.next_passing.join(", "),
                if self.rows.len() > l.upstream + 1 + l.next_passing.len() {
                    ", ..."
                } else {
                    ""
                },
                l.deepest_failing,
                l.next_passing[0]
            )
        };
        if l.upstream > 0 {
            s += &format!(
                "; {} of the {} outputs before it fail too{}",
                l.upstream_failing,
                l.upstream,
                if l.upstream_failing * 2 < l.upstream {
                    " (isolated failures upstream of a sound gradient are more likely \
                     finite-difference noise: rerun with more --directions or another --step)"
                } else {
                    " (as expected: a wrong gradient propagates upstream)"
                }
            );
        }
        s
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<36} {:>14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5}  result\n",
            "output", "shape", "step", "|dL/da|", "median", "p95", "max", "1-sd"
        );
        for r in &self.rows {
            out += &format!(
                "{:<36} {:>14} {:>9.2e} {:>9.2e} {:>9.2e} {:>9.2e} {:>9.2e} {:>5}  {}{}\n",
                r.name,
                shape_str(&r.shape),
                r.step,
                r.grad_norm,
                r.median(),
                r.p(self.cfg_quantile),
                r.max(),
                r.one_sided,
                if r.pass { "PASS" } else { "FAIL" },
                if r.nonfinite_grads + r.zero_grads > 0 {
                    format!(
                        " ({} non-finite, {} zero gradients)",
                        r.nonfinite_grads, r.zero_grads
                    )
                } else {
                    String::new()
                }
            );
        }
        out
    }

    pub fn summary(&self) -> String {
        let failing = self.rows.iter().filter(|r| !r.pass).count();
        format!(
            "per-layer gradient vs central differences: {} outputs x {} samples x {} directions \
             (loss {}{}; PASS when p{} of relative error < {:e}): {} fail -> {}\n{}",
            self.rows.len(),
            self.samples,
            self.directions,
            self.loss,
            if self.heads {
                " + probe of the segmentation outputs"
            } else {
                ""
            },
            (self.cfg_quantile * 100.0).round(),
            self.cfg_tolerance,
            failing,
            if self.pass { "PASS" } else { "FAIL" },
            self.verdict()
        )
    }

    pub fn to_json(&self) -> Value {
        let layers: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "shape": r.shape,
                    "step": r.step,
                    "grad_norm": r.grad_norm,
                    "rel_error": {"median": r.median(), "p95": r.p(0.95),
                                  "max": r.max()},
                    "nonfinite_gradients": r.nonfinite_grads,
                    "zero_gradients": r.zero_grads,
                    "one_sided": r.one_sided,
                    "pass": r.pass,
                })
            })
            .collect();
        json!({
            "samples": self.samples,
            "directions": self.directions,
            "loss": self.loss,
            "segmentation_probe": self.heads,
            "relative_step": self.cfg_step,
            "injected_fault": self.fault,
            "pass_rule": format!("per output: p{} of relative error < {:e}, gradients finite and non-zero",
                                 (self.cfg_quantile * 100.0).round(), self.cfg_tolerance),
            "layers": layers,
            "localisation": self.localisation.as_ref().map(|l| json!({
                "deepest_failing": l.deepest_failing,
                "next_passing": l.next_passing,
                "upstream_failing": l.upstream_failing,
                "upstream": l.upstream,
            })),
            "verdict": self.verdict(),
            "pass": self.pass,
        })
    }
}

/// The outputs of one eval-mode pass.
struct Pass {
    tape: Tape,
    images: Var,
    logits: Var,
    segs: Vec<Var>,
    seen: Vec<Seen>,
}

fn forward(
    model: &mut EngineClassifier,
    x: &Tensor,
    mode: GradMode,
    heads: bool,
    mut probe: Probe,
) -> Result<Pass> {
    let spec = model.spec;
    let mut ctx = Ctx::new(&mut model.store, mode, false).with_tap(&mut probe);
    let images = ctx.tape.input(x.clone(), mode != GradMode::NoGrad);
    let (logits, segs) = if heads {
        let o = spec.forward(&mut ctx, images)?;
        (o.logits, o.segs)
    } else {
        (spec.forward_logits(&mut ctx, images)?, vec![])
    };
    let tape = ctx.into_tape();
    Ok(Pass {
        tape,
        images,
        logits,
        segs,
        seen: probe.seen,
    })
}

/// Per-sample `L_i` (f64): the logit loss plus the segmentation probes.
fn loss_values(
    p: &Pass,
    loss: AuditLoss,
    k: usize,
    y: &[usize],
    targets: &[usize],
    probe: &[f32],
    seg_probes: &[Tensor],
) -> Vec<f64> {
    let z = p.tape.value(p.logits).data();
    let mut l = eval_loss(loss, z, k, y, targets, probe).0;
    let n = y.len();
    for (s, r) in p.segs.iter().zip(seg_probes) {
        let v = p.tape.value(*s).data();
        let m = v.len() / n;
        for (i, li) in l.iter_mut().enumerate() {
            *li += v[i * m..(i + 1) * m]
                .iter()
                .zip(&r.data()[i * m..(i + 1) * m])
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>();
        }
    }
    l
}

fn per_sample_norms(v: &[f32], n: usize) -> Vec<f64> {
    let m = v.len() / n.max(1);
    (0..n)
        .map(|i| {
            v[i * m..(i + 1) * m]
                .iter()
                .map(|t| *t as f64 * *t as f64)
                .sum::<f64>()
                .sqrt()
        })
        .collect()
}

/// The second finite-difference step, as a fraction of the first.
pub const SMALL: f32 = 0.03;

/// The loss's fixed parts, chosen at the clean point by the gradient pass: the runner-up
/// targets, the logit probe, the segmentation probes and whether the heads are in the loss;
/// plus `L_i` at the unperturbed point (for the one-sided differences).
struct LossParts {
    k: usize,
    loss: AuditLoss,
    targets: Vec<usize>,
    probe: Vec<f32>,
    seg_probes: Vec<Tensor>,
    heads: bool,
    l0: Vec<f64>,
}

impl LossParts {
    /// Per-sample `L_i` of a pass.
    fn of(&self, p: &Pass, y: &[usize]) -> Vec<f64> {
        loss_values(
            p,
            self.loss,
            self.k,
            y,
            &self.targets,
            &self.probe,
            &self.seg_probes,
        )
    }
}

/// One output to audit: its name, engine shape, value and the tape's gradient there.
struct Output {
    name: String,
    shape: Vec<usize>,
    value: Tensor,
    grad: Option<Tensor>,
}

/// Runs the per-layer audit on `x` (`n` NCHW images in [0,1], labels `y`). `progress` is
/// called after each output with its row.
pub fn layer_audit(
    model: &mut EngineClassifier,
    x: &[f32],
    y: &[usize],
    dims: Dims,
    cfg: &LayerAuditConfig,
    progress: &mut dyn FnMut(usize, usize, &LayerRow),
) -> Result<LayerAudit> {
    let n = y.len();
    if n == 0 || x.len() != n * dims.len() {
        return Err(Error::shape(
            "grad --per-layer",
            format!("{} values for {n} images of {dims:?}", x.len()),
        ));
    }
    let xt = Tensor::from_vec(
        &[n, dims.h, dims.w, dims.c],
        nchw_to_nhwc(x, n, dims.c, dims.h, dims.w),
    )?;
    let (outputs, parts) = gradient_pass(model, &xt, y, cfg)?;
    let total = outputs.len();
    let mut rows = Vec::with_capacity(total);
    for (li, out) in outputs.into_iter().enumerate() {
        let row = audit_output(model, &xt, y, cfg, &parts, li, out)?;
        progress(li, total, &row);
        rows.push(row);
    }
    let localisation = LayerAudit::localise(&rows);
    Ok(LayerAudit {
        pass: localisation.is_none(),
        localisation,
        rows,
        samples: n,
        directions: cfg.directions,
        loss: match cfg.loss {
            AuditLoss::Probe => "probe".into(),
            AuditLoss::Attack(k) => format!("{k:?}").to_lowercase(),
        },
        heads: parts.heads,
        fault: cfg.fault.as_ref().map(|f| f.describe()),
        cfg_quantile: cfg.quantile,
        cfg_tolerance: cfg.tolerance,
        cfg_step: cfg.step,
    })
}

/// The gradient pass: a zero input at every chosen output, one backward of `L = sum_i L_i`.
/// Returns the outputs to audit (the input images first, then the chosen layers in forward
/// order) with the tape's gradients, and the loss's parts. Errors name the flag when the fault
/// or the layer patterns match no output.
fn gradient_pass(
    model: &mut EngineClassifier,
    xt: &Tensor,
    y: &[usize],
    cfg: &LayerAuditConfig,
) -> Result<(Vec<Output>, LossParts)> {
    let (n, k) = (y.len(), model.spec.num_classes);
    let fault = cfg.fault.as_ref();
    let mut p = forward(
        model,
        xt,
        GradMode::InputGradOnly,
        cfg.heads,
        Probe {
            select: Some(&cfg.select),
            target: None,
            fault,
            seen: Vec::new(),
        },
    )?;
    if let Some(f) = fault {
        if !p.seen.iter().any(|s| f.matches(&s.name)) {
            return Err(Error::flag(
                "--inject-fault",
                format!("no output named '{}'; outputs: {}", f.layer, names(&p.seen)),
            ));
        }
    }
    if !p.seen.iter().any(|s| s.var.is_some()) {
        return Err(Error::flag(
            "--layers",
            format!(
                "'{}' matches no output; outputs: {}",
                cfg.select.describe(),
                names(&p.seen)
            ),
        ));
    }
    let z0 = p.tape.value(p.logits).data().to_vec();
    let targets = runner_up_targets(&z0, k, y);
    let probe = logit_probe(cfg.seed, n, k);
    let seg_probes: Vec<Tensor> = p
        .segs
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let shape = p.tape.shape(*s).to_vec();
            let m: usize = shape[1..].iter().product();
            Tensor::from_vec(&shape, unit_rows(cfg.seed, n, m, 2000 + j as u64))
        })
        .collect::<Result<_>>()?;
    let dz = eval_loss(cfg.loss, &z0, k, y, &targets, &probe).1;
    let mut seeds = vec![Tensor::from_vec(&[n, k], dz)?];
    seeds.extend(seg_probes.iter().cloned());
    let mut roots = vec![p.logits];
    roots.extend(p.segs.iter().copied());
    // L = sum_i L_i as one scalar node: its backward seeds each output with its dL/d(output).
    let root = p.tape.record(Tensor::scalar(0.0), &roots, move |c| {
        let d = c.dout.data()[0];
        Ok(seeds.iter().map(|s| Some(s.map(|v| v * d))).collect())
    });
    let grads = p.tape.backward(root)?;
    let mut outputs = vec![Output {
        name: "input".into(),
        shape: xt.shape().to_vec(),
        value: xt.clone(),
        grad: grads.get(p.images).cloned(),
    }];
    for s in p.seen.iter_mut() {
        if let (Some(v), Some(value)) = (s.var, s.value.take()) {
            outputs.push(Output {
                name: s.name.clone(),
                shape: s.shape.clone(),
                value,
                grad: grads.get(v).cloned(),
            });
        }
    }
    drop(grads);
    let mut parts = LossParts {
        k,
        loss: cfg.loss,
        targets,
        probe,
        seg_probes,
        heads: cfg.heads && !p.segs.is_empty(),
        l0: Vec::new(),
    };
    // L at the unperturbed point (the zero inputs change nothing): one-sided differences.
    parts.l0 = parts.of(&p, y);
    Ok((outputs, parts))
}

/// The finite-difference direction of direction `j` at output `li` for every sample: a random
/// unit vector plus the unit gradient, normalised (half along the gradient, as in the input
/// audit: a random direction sees only ~1/sqrt(d) of it). `g` the gradient, `gnorms` its
/// per-sample l2 norms.
fn direction(cfg: &LayerAuditConfig, li: usize, j: usize, g: &[f32], gnorms: &[f64]) -> Vec<f32> {
    let n = gnorms.len();
    let d = g.len() / n;
    let mut v = vec![0f32; g.len()];
    for i in 0..n {
        let stream = 1_000_000 + li as u64 * 1000 + j as u64;
        let mut rng = sample_rng(cfg.seed, i as u64, stream);
        let vi = &mut v[i * d..(i + 1) * d];
        vi.iter_mut().for_each(|t| *t = normal(&mut rng));
        let nrm = vi.iter().map(|t| t * t).sum::<f32>().sqrt().max(1e-12);
        vi.iter_mut().for_each(|t| *t /= nrm);
        let gi = &g[i * d..(i + 1) * d];
        let gn = gnorms[i] as f32;
        if gn > 0.0 && gn.is_finite() {
            vi.iter_mut().zip(gi).for_each(|(t, q)| *t += q / gn);
            let nrm = vi.iter().map(|t| t * t).sum::<f32>().sqrt().max(1e-12);
            vi.iter_mut().for_each(|t| *t /= nrm);
        }
    }
    v
}

/// `L_i` with `+-h v` and `+-SMALL h v` added at output `out` (in that order): four eval-mode
/// forwards without a tape.
#[allow(clippy::too_many_arguments)]
fn perturbed_losses(
    model: &mut EngineClassifier,
    xt: &Tensor,
    y: &[usize],
    cfg: &LayerAuditConfig,
    parts: &LossParts,
    out: &Output,
    v: &[f32],
    h: f32,
) -> Result<Vec<Vec<f64>>> {
    let fault = cfg.fault.as_ref();
    let mut l_pm = Vec::with_capacity(4);
    for (hs, sign) in [(h, 1f32), (h, -1.0), (h * SMALL, 1.0), (h * SMALL, -1.0)] {
        let dv = Tensor::from_vec(&out.shape, v.iter().map(|t| sign * hs * t).collect())?;
        let pass = if out.name == "input" {
            let xp = Tensor::from_vec(
                &out.shape,
                xt.data()
                    .iter()
                    .zip(dv.data())
                    .map(|(a, b)| a + b)
                    .collect(),
            )?;
            let probe = Probe {
                select: None,
                target: None,
                fault,
                seen: Vec::new(),
            };
            forward(model, &xp, GradMode::NoGrad, parts.heads, probe)?
        } else {
            let probe = Probe {
                select: None,
                target: Some((&out.name, &dv)),
                fault,
                seen: Vec::new(),
            };
            forward(model, xt, GradMode::NoGrad, parts.heads, probe)?
        };
        l_pm.push(parts.of(&pass, y));
    }
    Ok(l_pm)
}

/// The relative error of each (analytic, numeric quotients) pair and the quotient it was
/// measured against, and how many were taken one-sided.
///
/// The better of the two central steps: a wrong gradient is wrong at both; a kink crossed
/// (max pool, ReLU) at the large step is rarely crossed at the small one, and rounding that
/// spoils the small step does not touch the large one. Where neither agrees but a one-sided
/// difference at the small step does, the point is a kink or a tie (max pool over equal
/// values: flat image regions), where the tape's gradient is one side's derivative, as
/// PyTorch's: counted as `one_sided`, not as an error. A wrong rule matches neither side (a
/// tie's gradient sent to both elements, or to neither, fails).
fn score(analytic: &[f64], numeric: &[[f64; 4]], tolerance: f64) -> (Vec<f64>, Vec<f64>, usize) {
    let mean_abs = numeric.iter().map(|v| v[0].abs()).sum::<f64>() / numeric.len().max(1) as f64;
    let floor = (1e-3 * mean_abs).max(1e-12);
    let err = |a: f64, b: f64| {
        let e = (a - b).abs() / a.abs().max(b.abs()).max(floor);
        if e.is_finite() {
            e
        } else {
            f64::INFINITY
        }
    };
    let mut one_sided = 0;
    let mut rel = Vec::with_capacity(analytic.len());
    let mut best = Vec::with_capacity(analytic.len());
    for (a, b) in analytic.iter().zip(numeric) {
        let e: Vec<f64> = b.iter().map(|v| err(*a, *v)).collect();
        let mut j = if e[0] <= e[1] { 0 } else { 1 };
        if e[j] >= tolerance {
            let o = if e[2] <= e[3] { 2 } else { 3 };
            if e[o] < tolerance {
                j = o;
                one_sided += 1;
            }
        }
        rel.push(e[j]);
        best.push(b[j]);
    }
    (rel, best, one_sided)
}

/// The audit of one output (`li`-th): gradient health, `cfg.directions` directional
/// derivatives against finite differences, and the verdict.
fn audit_output(
    model: &mut EngineClassifier,
    xt: &Tensor,
    y: &[usize],
    cfg: &LayerAuditConfig,
    parts: &LossParts,
    li: usize,
    out: Output,
) -> Result<LayerRow> {
    let n = y.len();
    let numel = out.value.numel();
    let d = numel / n;
    let g: Vec<f32> = match &out.grad {
        Some(t) => t.data().to_vec(),
        None => vec![0.0; numel],
    };
    let gnorms = per_sample_norms(&g, n);
    let (mut nonfinite, mut zero) = (0, 0);
    for i in 0..n {
        let gi = &g[i * d..(i + 1) * d];
        if gi.iter().any(|v| !v.is_finite()) {
            nonfinite += 1;
        } else if gi.iter().all(|&v| v == 0.0) {
            zero += 1;
        }
    }
    let anorm = per_sample_norms(out.value.data(), n).iter().sum::<f64>() / n as f64;
    let h = (cfg.step as f64 * anorm).max(1e-12) as f32;
    let mut analytic = Vec::new();
    // Per (direction, sample): the difference quotient at each step.
    let mut numeric: Vec<[f64; 4]> = Vec::new();
    let l0 = &parts.l0;
    for j in 0..cfg.directions {
        let v = direction(cfg, li, j, &g, &gnorms);
        let l_pm = perturbed_losses(model, xt, y, cfg, parts, &out, &v, h)?;
        for i in 0..n {
            let a: f64 = g[i * d..(i + 1) * d]
                .iter()
                .zip(&v[i * d..(i + 1) * d])
                .map(|(p, q)| *p as f64 * *q as f64)
                .sum();
            analytic.push(a);
            let hs = (h * SMALL) as f64;
            numeric.push([
                (l_pm[0][i] - l_pm[1][i]) / (2.0 * h as f64),
                (l_pm[2][i] - l_pm[3][i]) / (2.0 * hs),
                (l_pm[2][i] - l0[i]) / hs,
                (l0[i] - l_pm[3][i]) / hs,
            ]);
        }
    }
    let (rel, numeric, one_sided) = score(&analytic, &numeric, cfg.tolerance);
    let mut s = rel.clone();
    s.sort_by(|a, b| a.total_cmp(b));
    let pass = nonfinite == 0 && zero == 0 && quantile(&s, cfg.quantile) < cfg.tolerance;
    Ok(LayerRow {
        name: out.name,
        shape: shape_torch(&out.shape),
        step: h as f64,
        grad_norm: gnorms.iter().sum::<f64>() / n as f64,
        analytic,
        numeric,
        rel_errors: rel,
        nonfinite_grads: nonfinite,
        zero_grads: zero,
        one_sided,
        pass,
    })
}

fn names(seen: &[Seen]) -> String {
    seen.iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob(b"layer2.*", b"layer2.1.conv2"));
        assert!(glob(b"*.conv?", b"layer2.1.conv2"));
        assert!(!glob(b"layer2.*", b"layer3.0"));
        assert!(glob(b"fc", b"fc"));
        assert!(!glob(b"fc", b"fc2"));
        assert!(glob(b"*", b""));
        let s = LayerSelect::parse("conv1, layer3.?").unwrap();
        assert!(s.matches("segmenter.conv1"));
        assert!(s.matches("layer3.1"));
        assert!(!s.matches("layer3.1.bn1"));
    }

    #[test]
    fn fault_flags() {
        let f: Fault = "scale-grad=0.25@layer2.1.conv2".parse().unwrap();
        assert_eq!(f.kind, FaultKind::ScaleGrad(0.25));
        assert_eq!(f.layer, "layer2.1.conv2");
        let f: Fault = "quantize@bn1".parse().unwrap();
        assert_eq!(f.kind, FaultKind::Quantize(0.25));
        assert!("bogus@bn1".parse::<Fault>().is_err());
        assert!("quantize".parse::<Fault>().is_err());
        assert!("quantize=-1@bn1".parse::<Fault>().is_err());
    }
}
