//! `mpm-audit grad`: the model's input gradient, as attacks use it, against central finite
//! differences of the same per-sample loss along random directions.
//!
//! For sample `i` and a unit (l2) direction `v` = normalise(random unit + gradient / |gradient|): analytic `g_i . v` (one backward of
//! the loss seeded on the logits, exactly the attack path) vs numeric
//! `(L_i(x + h v) - L_i(x - h v)) / 2h` (two forwards). The engine is f32, so the step is a
//! compromise between rounding (`~1e-7 |L| / h`) and curvature (`~h^2`); the default
//! `h = 3e-3` in l2 units moves each of 3,072 values by ~5e-5 (on a demo GELU ResNet-18 the
//! median error is 7e-5 at 3e-3, 3e-4 at 1e-2 (curvature), 1e-2 at 1e-3 (rounding)). Errors are reported as
//! `|a - n| / max(|a|, |n|, floor)` with `floor = 1e-3 * mean |n|` (so directions along which
//! the loss is flat do not dominate), with their distribution.
//!
//! The default loss is a fixed random linear probe of the logits, `L_i = r_i . z_i` with
//! `r_i` random unit vectors: it runs the same backward through the network as an attack
//! step, but is well conditioned (a confident sample's cross-entropy is ~1e-7, below f32
//! resolution of its logits, so finite differences of it measure rounding, not the
//! gradient). `--loss ce|dlr|dlr-t` audits the attack losses themselves.

use crate::attack::model::{batch_loss, Classifier, Dims, LossKind};
use crate::attack::rng::{normal, sample_rng};
use crate::Result;
use serde_json::{json, Value};

/// What is differentiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditLoss {
    /// A fixed random linear function of the logits per sample.
    Probe,
    /// An attack loss.
    Attack(LossKind),
}

#[derive(Clone, Debug)]
pub struct GradAuditConfig {
    pub directions: usize,
    pub step: f32,
    pub loss: AuditLoss,
    pub seed: u64,
    /// Pass when this quantile of the relative errors is below `tolerance`.
    pub quantile: f64,
    pub tolerance: f64,
}

impl Default for GradAuditConfig {
    fn default() -> Self {
        GradAuditConfig {
            directions: 8,
            step: 3e-3,
            loss: AuditLoss::Probe,
            seed: 0,
            quantile: 0.95,
            tolerance: 1e-2,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GradAudit {
    pub rel_errors: Vec<f64>,
    pub analytic: Vec<f64>,
    pub numeric: Vec<f64>,
    pub nonfinite_grads: usize,
    pub zero_grads: usize,
    pub samples: usize,
    pub pass: bool,
    pub cfg_quantile: f64,
    pub cfg_tolerance: f64,
}

/// Quantile of sorted data (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1);
    sorted[i]
}

impl GradAudit {
    pub fn to_json(&self) -> Value {
        let mut s = self.rel_errors.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        json!({
            "samples": self.samples,
            "directions": self.rel_errors.len(),
            "nonfinite_gradients": self.nonfinite_grads,
            "zero_gradients": self.zero_grads,
            "rel_error": {"median": quantile(&s, 0.5), "p90": quantile(&s, 0.9),
                          "p95": quantile(&s, 0.95), "p99": quantile(&s, 0.99),
                          "max": s.last().copied().unwrap_or(f64::NAN)},
            "histogram_log10": histogram(&s),
            "pass_rule": format!("p{} of relative error < {:e}, gradients finite and non-zero",
                                 (self.cfg_quantile * 100.0).round(), self.cfg_tolerance),
            "pass": self.pass,
        })
    }

    pub fn summary(&self) -> String {
        let v = self.to_json();
        let e = &v["rel_error"];
        format!(
            "input gradient vs central differences: {} samples x {} directions: relative error \
             median {:.2e}, p90 {:.2e}, p99 {:.2e}, max {:.2e}; {} non-finite, {} zero gradients -> {}",
            self.samples,
            self.rel_errors.len() / self.samples.max(1),
            e["median"].as_f64().unwrap_or(f64::NAN),
            e["p90"].as_f64().unwrap_or(f64::NAN),
            e["p99"].as_f64().unwrap_or(f64::NAN),
            e["max"].as_f64().unwrap_or(f64::NAN),
            self.nonfinite_grads,
            self.zero_grads,
            if self.pass { "PASS" } else { "FAIL" }
        )
    }
}

/// Counts per decade of relative error, `"1e-4..1e-3": k`.
fn histogram(sorted: &[f64]) -> Value {
    let mut m = serde_json::Map::new();
    for e in -8..=1 {
        let lo = 10f64.powi(e);
        let hi = 10f64.powi(e + 1);
        let k = sorted.iter().filter(|&&v| v >= lo && v < hi).count();
        if k > 0 {
            m.insert(format!("1e{e}..1e{}", e + 1), json!(k));
        }
    }
    let below = sorted.iter().filter(|&&v| v < 1e-8).count();
    if below > 0 {
        m.insert("<1e-8".into(), json!(below));
    }
    Value::Object(m)
}

/// The probe vectors `r_i` (unit, one per sample) of `AuditLoss::Probe`, `[n, k]`.
pub(crate) fn logit_probe(seed: u64, n: usize, k: usize) -> Vec<f32> {
    unit_rows(seed, n, k, 999)
}

/// `n` rows of `k` values, each a random unit vector from stream `stream` of its sample.
pub(crate) fn unit_rows(seed: u64, n: usize, k: usize, stream: u64) -> Vec<f32> {
    let mut out = vec![0f32; n * k];
    for i in 0..n {
        let mut rng = sample_rng(seed, i as u64, stream);
        let r = &mut out[i * k..(i + 1) * k];
        r.iter_mut().for_each(|v| *v = normal(&mut rng));
        let t = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|v| *v /= t);
    }
    out
}

/// The runner-up class (or the top one when it is not the label): DLR-T's target.
pub(crate) fn runner_up_targets(z: &[f32], k: usize, y: &[usize]) -> Vec<usize> {
    (0..y.len())
        .map(|i| {
            let row = &z[i * k..(i + 1) * k];
            let r = crate::attack::model::ranked_class(row, 0);
            if r == y[i] {
                crate::attack::model::ranked_class(row, 1)
            } else {
                r
            }
        })
        .collect()
}

/// Per-sample loss values (f64) and `dL/dz` of logits `z` `[n, k]`.
pub(crate) fn eval_loss(
    loss: AuditLoss,
    z: &[f32],
    k: usize,
    y: &[usize],
    t: &[usize],
    probe: &[f32],
) -> (Vec<f64>, Vec<f32>) {
    match loss {
        AuditLoss::Probe => {
            let n = y.len();
            let l = (0..n)
                .map(|i| {
                    (0..k)
                        .map(|c| z[i * k + c] as f64 * probe[i * k + c] as f64)
                        .sum()
                })
                .collect();
            (l, probe.to_vec())
        }
        AuditLoss::Attack(kind) => {
            let (l, dz) = batch_loss(kind, z, k, y, t);
            (l.into_iter().map(f64::from).collect(), dz)
        }
    }
}

/// Runs the audit on `x` (`n` NCHW images in [0,1], labels `y`).
pub fn grad_audit(
    model: &mut dyn Classifier,
    x: &[f32],
    y: &[usize],
    dims: Dims,
    cfg: &GradAuditConfig,
) -> Result<GradAudit> {
    let d = dims.len();
    let n = y.len();
    let k = model.num_classes();
    let loss = cfg.loss;
    let probe = logit_probe(cfg.seed, n, k);
    // Targeted DLR: the runner-up class as target.
    let z0 = model.logits(x, dims)?;
    let targets = runner_up_targets(&z0, k, y);
    let (_, g) = model.logits_and_grad(x, dims, &mut |z| {
        eval_loss(loss, z, k, y, &targets, &probe).1
    })?;
    let mut nonfinite = 0;
    let mut zero = 0;
    for i in 0..n {
        let gi = &g[i * d..(i + 1) * d];
        if gi.iter().any(|v| !v.is_finite()) {
            nonfinite += 1;
        } else if gi.iter().all(|&v| v == 0.0) {
            zero += 1;
        }
    }
    let mut analytic = Vec::new();
    let mut numeric = Vec::new();
    for j in 0..cfg.directions {
        let mut v = vec![0f32; n * d];
        for i in 0..n {
            let mut rng = sample_rng(cfg.seed, i as u64, 1000 + j as u64);
            let vi = &mut v[i * d..(i + 1) * d];
            vi.iter_mut().for_each(|t| *t = normal(&mut rng));
            let nrm = vi.iter().map(|t| t * t).sum::<f32>().sqrt().max(1e-12);
            vi.iter_mut().for_each(|t| *t /= nrm);
            // Half random, half along the gradient: a purely random direction in d
            // dimensions sees only ~1/sqrt(d) of the gradient, and the check would then
            // measure f32 rounding rather than the gradient.
            let gi = &g[i * d..(i + 1) * d];
            let gn = gi.iter().map(|t| t * t).sum::<f32>().sqrt();
            if gn > 0.0 && gn.is_finite() {
                vi.iter_mut().zip(gi).for_each(|(t, q)| *t += q / gn);
                let nrm = vi.iter().map(|t| t * t).sum::<f32>().sqrt().max(1e-12);
                vi.iter_mut().for_each(|t| *t /= nrm);
            }
        }
        let h = cfg.step;
        let xp: Vec<f32> = x.iter().zip(&v).map(|(a, b)| a + h * b).collect();
        let xm: Vec<f32> = x.iter().zip(&v).map(|(a, b)| a - h * b).collect();
        let zp = model.logits(&xp, dims)?;
        let zm = model.logits(&xm, dims)?;
        let lp = eval_loss(loss, &zp, k, y, &targets, &probe).0;
        let lm = eval_loss(loss, &zm, k, y, &targets, &probe).0;
        for i in 0..n {
            let a: f64 = g[i * d..(i + 1) * d]
                .iter()
                .zip(&v[i * d..(i + 1) * d])
                .map(|(p, q)| *p as f64 * *q as f64)
                .sum();
            analytic.push(a);
            numeric.push((lp[i] - lm[i]) / (2.0 * h as f64));
        }
    }
    let mean_abs = numeric.iter().map(|v| v.abs()).sum::<f64>() / numeric.len().max(1) as f64;
    let floor = (1e-3 * mean_abs).max(1e-12);
    let rel: Vec<f64> = analytic
        .iter()
        .zip(&numeric)
        .map(|(a, b)| {
            let e = (a - b).abs() / a.abs().max(b.abs()).max(floor);
            if e.is_finite() {
                e
            } else {
                f64::INFINITY
            }
        })
        .collect();
    let mut s = rel.clone();
    s.sort_by(|a, b| a.total_cmp(b));
    let pass = nonfinite == 0 && zero == 0 && quantile(&s, cfg.quantile) < cfg.tolerance;
    Ok(GradAudit {
        rel_errors: rel,
        analytic,
        numeric,
        nonfinite_grads: nonfinite,
        zero_grads: zero,
        samples: n,
        pass,
        cfg_quantile: cfg.quantile,
        cfg_tolerance: cfg.tolerance,
    })
}
