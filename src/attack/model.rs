//! What an attack needs from a model: logits, and the input gradient of a scalar function of
//! the logits. Losses are computed on the logits directly (per sample, with their gradient),
//! so the tape only ever runs `forward_logits` and one backward seeded with `dL/dlogits`.

use super::norms::Norm;
use crate::autograd::GradMode;
use crate::cuda::DType;
use crate::device::Device;
use crate::nn::layout::{nchw_to_nhwc, nhwc_to_nchw};
use crate::nn::zoo::InputNorm;
use crate::nn::{Ctx, ModelSpec, ParamStore};
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::time::Instant;

/// One image's geometry (NCHW without N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Dims {
    /// Values per image.
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A classifier on NCHW images in [0, 1] (`x` holds `n` images of `dims`, flattened).
pub trait Classifier {
    fn num_classes(&self) -> usize;

    /// Logits `[n, K]`, row-major.
    fn logits(&mut self, x: &[f32], dims: Dims) -> Result<Vec<f32>>;

    /// Logits `[n, K]` and the input gradient (NCHW, like `x`) of `sum(dlogits * logits)`,
    /// where `seed(logits)` returns `dlogits` `[n, K]` (the gradient of the caller's loss).
    fn logits_and_grad(
        &mut self,
        x: &[f32],
        dims: Dims,
        seed: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>)>;

    /// Forward and backward passes so far (for throughput figures).
    fn passes(&self) -> (u64, u64) {
        (0, 0)
    }

    /// Images as the model's input: `[n, H, W, C]` (NHWC) on the device the model runs on.
    /// Attacks that keep their iterates there (`attack::resident`) start from this.
    fn input_tensor(&mut self, x: &[f32], dims: Dims) -> Result<Tensor> {
        host_input(x, dims)
    }

    /// An input tensor back to NCHW host values.
    fn input_to_host(&mut self, t: &Tensor, dims: Dims) -> Result<Vec<f32>> {
        let n = input_rows(t, dims)?;
        Ok(nhwc_to_nchw(t.data(), n, dims.h, dims.w, dims.c))
    }

    /// Logits `[n, K]` of an input tensor (from `input_tensor` or an op on one).
    fn logits_of_input(&mut self, t: &Tensor, dims: Dims) -> Result<Vec<f32>> {
        let x = self.input_to_host(t, dims)?;
        self.logits(&x, dims)
    }

    /// Logits and the input gradient (as `logits_and_grad`) of an input tensor; the gradient
    /// comes back as an f32 tensor shaped and placed like `t`.
    fn logits_and_grad_of_input(
        &mut self,
        t: &Tensor,
        dims: Dims,
        seed: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> Result<(Vec<f32>, Tensor)> {
        let x = self.input_to_host(t, dims)?;
        let (z, g) = self.logits_and_grad(&x, dims, seed)?;
        let n = input_rows(t, dims)?;
        let g = Tensor::from_vec(t.shape(), nchw_to_nhwc(&g, n, dims.c, dims.h, dims.w))?;
        Ok((z, g.to_device(t.device())?))
    }

    /// Wall seconds spent inside `logits` and `logits_and_grad` so far, transfers included
    /// (so a profile can tell the model's time from the attacks' own logic).
    fn model_seconds(&self) -> f64 {
        0.0
    }
}

/// Any model of the engine, in eval mode (BN running statistics), input gradient only.
/// Inputs are normalised with `norm` (ImageNet's unless `with_input_norm` says otherwise: a
/// published model's own, `nn::zoo`). On a GPU (`on_device`) the weights stay resident there; each pass uploads the batch and
/// reads back the logits and the input gradient (the attacks' per-sample logic is host code).
pub struct EngineClassifier {
    pub spec: ModelSpec,
    pub store: ParamStore,
    norm: InputNorm,
    device: Device,
    forwards: u64,
    backwards: u64,
    seconds: f64,
}

impl EngineClassifier {
    pub fn new(spec: ModelSpec, store: ParamStore) -> Self {
        EngineClassifier {
            spec,
            store,
            norm: InputNorm::IMAGENET,
            device: Device::Cpu,
            forwards: 0,
            backwards: 0,
            seconds: 0.0,
        }
    }

    /// Normalises inputs with `norm` instead of ImageNet's mean/std.
    pub fn with_input_norm(mut self, norm: InputNorm) -> Self {
        self.norm = norm;
        self
    }

    /// The input normalisation in use.
    pub fn input_norm(&self) -> InputNorm {
        self.norm
    }

    /// Runs the model on `device` (moves the weights there once).
    pub fn on_device(mut self, device: Device) -> Result<Self> {
        self.store.to_device(device)?;
        self.device = device;
        Ok(self)
    }

    fn check(&self, logits: &Tensor, n: usize) -> Result<Vec<f32>> {
        let z = logits.data();
        if let Some(bad) = z.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!(
                "logits of image {} of a batch of {n} ({}): the model ({}) produced {}",
                bad / self.spec.num_classes,
                "forward_logits",
                self.spec.describe(),
                z[bad]
            )));
        }
        Ok(z.to_vec())
    }
}

/// NCHW host images as the engine's NHWC input tensor (on the host).
fn host_input(x: &[f32], dims: Dims) -> Result<Tensor> {
    let n = batch_of(x, dims)?;
    Tensor::from_vec(
        &[n, dims.h, dims.w, dims.c],
        nchw_to_nhwc(x, n, dims.c, dims.h, dims.w),
    )
}

/// Images in an NHWC input tensor of `dims`, or an error naming the shapes.
fn input_rows(t: &Tensor, dims: Dims) -> Result<usize> {
    match *t.shape() {
        [n, h, w, c] if (h, w, c) == (dims.h, dims.w, dims.c) => Ok(n),
        _ => Err(Error::shape(
            "attack input tensor",
            format!(
                "{:?} is not an (N, H, W, C) batch of {dims:?} images",
                t.shape()
            ),
        )),
    }
}

fn batch_of(x: &[f32], dims: Dims) -> Result<usize> {
    if dims.is_empty() || x.len() % dims.len() != 0 {
        return Err(Error::shape(
            "attack input",
            format!(
                "{} values are not a whole number of {dims:?} images",
                x.len()
            ),
        ));
    }
    Ok(x.len() / dims.len())
}

impl Classifier for EngineClassifier {
    fn num_classes(&self) -> usize {
        self.spec.num_classes
    }

    fn logits(&mut self, x: &[f32], dims: Dims) -> Result<Vec<f32>> {
        let t0 = Instant::now();
        let out = self.logits_untimed(x, dims);
        self.seconds += t0.elapsed().as_secs_f64();
        out
    }

    fn logits_and_grad(
        &mut self,
        x: &[f32],
        dims: Dims,
        seed: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let t0 = Instant::now();
        let out = self.logits_and_grad_untimed(x, dims, seed);
        self.seconds += t0.elapsed().as_secs_f64();
        out
    }

    fn passes(&self) -> (u64, u64) {
        (self.forwards, self.backwards)
    }

    fn model_seconds(&self) -> f64 {
        self.seconds
    }

    fn input_tensor(&mut self, x: &[f32], dims: Dims) -> Result<Tensor> {
        host_input(x, dims)?.to_device(self.device)
    }

    fn logits_of_input(&mut self, t: &Tensor, dims: Dims) -> Result<Vec<f32>> {
        let t0 = Instant::now();
        let out = input_rows(t, dims).and_then(|n| self.forward_nhwc(t.clone(), n));
        self.seconds += t0.elapsed().as_secs_f64();
        out
    }

    fn logits_and_grad_of_input(
        &mut self,
        t: &Tensor,
        dims: Dims,
        seed: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> Result<(Vec<f32>, Tensor)> {
        let t0 = Instant::now();
        let out = (|| {
            let n = input_rows(t, dims)?;
            if n == 0 {
                return Ok((Vec::new(), t.clone()));
            }
            let (z, g) = self.backward_nhwc(t.clone(), n, seed)?;
            let g = match g {
                // Mixed precision keeps activations (and so this gradient) in bf16: the
                // attack's state is f32.
                Some(g) if g.is_cuda() => crate::cuda::ops::to_dtype(g, DType::F32)?,
                Some(g) => g,
                None => Tensor::zeros(t.shape()).to_device(self.device)?,
            };
            Ok((z, g))
        })();
        self.seconds += t0.elapsed().as_secs_f64();
        out
    }
}

impl EngineClassifier {
    fn logits_untimed(&mut self, x: &[f32], dims: Dims) -> Result<Vec<f32>> {
        let n = batch_of(x, dims)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        self.forward_nhwc(host_input(x, dims)?, n)
    }

    /// Logits of `n` NHWC images (moved to the model's device when they are not there).
    fn forward_nhwc(&mut self, xt: Tensor, n: usize) -> Result<Vec<f32>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let xt = xt.to_device(self.device)?;
        let spec = self.spec;
        let norm = self.norm;
        let mut ctx = Ctx::new(&mut self.store, GradMode::NoGrad, false);
        let xin = ctx.tape.input(xt, false);
        let z = spec.forward_logits_normalized(&mut ctx, xin, norm.mean, norm.std)?;
        let zt = ctx.tape.value(z).clone();
        self.forwards += n as u64;
        self.check(&zt, n)
    }

    fn logits_and_grad_untimed(
        &mut self,
        x: &[f32],
        dims: Dims,
        seed: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = batch_of(x, dims)?;
        if n == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let (logits, g) = self.backward_nhwc(host_input(x, dims)?, n, seed)?;
        let g = match g {
            Some(g) => nhwc_to_nchw(g.data(), n, dims.h, dims.w, dims.c),
            None => vec![0.0; x.len()],
        };
        Ok((logits, g))
    }

    /// Logits of `n` NHWC images and the input gradient (NHWC, on the model's device; None
    /// when the input does not reach the loss).
    fn backward_nhwc(
        &mut self,
        xt: Tensor,
        n: usize,
        seed: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> Result<(Vec<f32>, Option<Tensor>)> {
        let xt = xt.to_device(self.device)?;
        let spec = self.spec;
        let norm = self.norm;
        let mut ctx = Ctx::new(&mut self.store, GradMode::InputGradOnly, false);
        let xin = ctx.tape.input(xt, true);
        let z = spec.forward_logits_normalized(&mut ctx, xin, norm.mean, norm.std)?;
        let zt = ctx.tape.value(z).clone();
        let logits = {
            let zz = zt.data();
            if let Some(bad) = zz.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite(format!(
                    "logits of image {} of a batch of {n}: the model ({}) produced {}",
                    bad / spec.num_classes,
                    spec.describe(),
                    zz[bad]
                )));
            }
            zz.to_vec()
        };
        let dz = seed(&logits);
        let dzt = Tensor::from_vec(zt.shape(), dz)?.to_device(self.device)?;
        let grads = ctx.tape.backward_with(z, dzt)?;
        let g = grads.get(xin).cloned();
        self.forwards += n as u64;
        self.backwards += n as u64;
        Ok((logits, g))
    }
}

/// The losses attacks maximise (per sample), as functions of one row of logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    /// Cross-entropy `logsumexp(z) - z_y`.
    Ce,
    /// Difference of logits ratio `-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12)`.
    Dlr,
    /// Targeted DLR `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2 + 1e-12)`.
    DlrTargeted,
}

/// Indices of the four largest logits, descending (ties: lower index first).
fn top4(z: &[f32]) -> [usize; 4] {
    let mut t = [usize::MAX; 4];
    for (i, &v) in z.iter().enumerate() {
        let mut k = 4;
        while k > 0 && (t[k - 1] == usize::MAX || v > z[t[k - 1]]) {
            k -= 1;
        }
        if k < 4 {
            for j in (k + 1..4).rev() {
                t[j] = t[j - 1];
            }
            t[k] = i;
        }
    }
    t
}

/// Loss value and `dloss/dz` for one row. `target` is used by `DlrTargeted` only.
pub fn loss_row(kind: LossKind, z: &[f32], y: usize, target: usize, dz: &mut [f32]) -> f32 {
    dz.iter_mut().for_each(|v| *v = 0.0);
    match kind {
        LossKind::Ce => {
            let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let s: f32 = z.iter().map(|&v| (v - m).exp()).sum();
            for (d, &v) in dz.iter_mut().zip(z) {
                *d = (v - m).exp() / s;
            }
            dz[y] -= 1.0;
            m + s.ln() - z[y]
        }
        LossKind::Dlr => {
            let t = top4(z);
            let other = if t[0] == y { t[1] } else { t[0] };
            let num = z[y] - z[other];
            let den = z[t[0]] - z[t[2]] + 1e-12;
            dz[y] -= 1.0 / den;
            dz[other] += 1.0 / den;
            let k = num / (den * den);
            dz[t[0]] += k;
            dz[t[2]] -= k;
            -num / den
        }
        LossKind::DlrTargeted => {
            let t = top4(z);
            let num = z[y] - z[target];
            let den = z[t[0]] - 0.5 * (z[t[2]] + z[t[3]]) + 1e-12;
            dz[y] -= 1.0 / den;
            dz[target] += 1.0 / den;
            let k = num / (den * den);
            dz[t[0]] += k;
            dz[t[2]] -= 0.5 * k;
            dz[t[3]] -= 0.5 * k;
            -num / den
        }
    }
}

/// `z_y - max_{i != y} z_i`: positive while the sample is classified correctly.
pub fn margin(z: &[f32], y: usize) -> f32 {
    let other = z
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != y)
        .fold(f32::NEG_INFINITY, |a, (_, &v)| a.max(v));
    z[y] - other
}

/// Index of the largest logit (first on ties, as `torch.max`).
pub fn argmax(z: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in z.iter().enumerate() {
        if v > z[best] {
            best = i;
        }
    }
    best
}

/// Class of rank `r` (0 = largest) of a row, ties broken as a stable ascending sort read
/// from the end (the reference's `sort()[1][:, -r-1]`).
pub fn ranked_class(z: &[f32], r: usize) -> usize {
    let mut idx: Vec<usize> = (0..z.len()).collect();
    idx.sort_by(|&a, &b| z[a].total_cmp(&z[b]));
    idx[z.len() - 1 - r.min(z.len() - 1)]
}

/// Per-sample losses and `dL/dz` for a batch of logits `[n, K]`.
pub fn batch_loss(
    kind: LossKind,
    logits: &[f32],
    k: usize,
    y: &[usize],
    targets: &[usize],
) -> (Vec<f32>, Vec<f32>) {
    let n = y.len();
    let mut dz = vec![0.0; n * k];
    let mut l = vec![0.0; n];
    for i in 0..n {
        let t = targets.get(i).copied().unwrap_or(0);
        l[i] = loss_row(
            kind,
            &logits[i * k..(i + 1) * k],
            y[i],
            t,
            &mut dz[i * k..(i + 1) * k],
        );
    }
    (l, dz)
}

/// Ball membership + box + finiteness: the check every returned example passes.
pub fn in_threat_model(norm: Norm, eps: f32, adv: &[f32], x: &[f32]) -> bool {
    adv.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v))
        && norm.dist(adv, x) <= eps + norm.tolerance(eps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(kind: LossKind, z: &[f32], y: usize, t: usize) {
        let mut dz = vec![0.0; z.len()];
        loss_row(kind, z, y, t, &mut dz);
        let mut scratch = vec![0.0; z.len()];
        for i in 0..z.len() {
            let h = 1e-3;
            let mut zp = z.to_vec();
            zp[i] += h;
            let mut zm = z.to_vec();
            zm[i] -= h;
            let num = (loss_row(kind, &zp, y, t, &mut scratch)
                - loss_row(kind, &zm, y, t, &mut scratch))
                / (2.0 * h);
            assert!(
                (num - dz[i]).abs() < 2e-3,
                "{kind:?} dz[{i}] {} vs fd {num}",
                dz[i]
            );
        }
    }

    #[test]
    fn loss_gradients_match_finite_differences() {
        let z = [0.3f32, 2.1, -0.7, 1.4, 0.9, -1.2];
        for y in [1, 3] {
            fd(LossKind::Ce, &z, y, 0);
            fd(LossKind::Dlr, &z, y, 0);
            fd(LossKind::DlrTargeted, &z, y, 4);
        }
    }

    #[test]
    fn ranks_and_margin() {
        let z = [0.3f32, 2.1, -0.7, 1.4];
        assert_eq!(ranked_class(&z, 0), 1);
        assert_eq!(ranked_class(&z, 1), 3);
        assert_eq!(top4(&z), [1, 3, 0, 2]);
        assert!((margin(&z, 1) - 0.7).abs() < 1e-6);
        assert_eq!(argmax(&z), 1);
    }
}
