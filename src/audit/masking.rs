//! `mpm-audit masking`: the standard gradient-masking sanity checks (Athalye et al. 2018;
//! Carlini et al. 2019, "On Evaluating Adversarial Robustness"; AutoAttack's own checks),
//! each with its figures and a pass/fail:
//!
//! 1. `gradients`: input gradients are finite and non-zero on every sample.
//! 2. `smooth_loss`: along the (normalised) gradient direction the loss rises as the gradient
//!    predicts for a small step, and its profile over [0, eps] has no jumps (second
//!    differences small against first differences).
//! 3. `monotone_eps`: APGD-CE robust accuracy does not rise as eps grows (eps x 1/4..4).
//! 4. `unbounded`: APGD-CE then APGD-T with eps = the box's diameter reach 0%.
//! 5. `iterative_vs_single`: APGD-CE is at least as strong as FGSM.
//! 6. `more_steps`, `more_restarts`: 4x the iterations, 3x the PGD restarts never raise
//!    robust accuracy.
//! 7. `square_vs_whitebox`: Square, run after APGD-CE + APGD-T, does not lower robust
//!    accuracy by more than 0.2% (AutoAttack's `check_square_sr` threshold): a black-box
//!    attack beating white-box ones means the gradients are not informative.
//!
//! Random effects: each attack is seeded, so a check is reproducible; checks 3, 5 and 6
//! allow `slack` samples (default 1) of noise.

use crate::attack::autoattack::{AttackKind, AutoAttack, AutoAttackConfig};
use crate::attack::model::{argmax, batch_loss, Classifier, Dims, LossKind};
use crate::attack::norms::{sign_or_zero, Norm};
use crate::attack::rng::{sample_rng, sign};
use crate::Result;
use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub struct MaskingConfig {
    pub norm: Norm,
    pub eps: f32,
    pub seed: u64,
    /// APGD iterations (reference 100).
    pub n_iter: usize,
    pub square_queries: usize,
    pub eps_factors: Vec<f32>,
    /// Samples of noise allowed where two attacks are compared.
    pub slack: usize,
    /// Points of the loss profile along the gradient.
    pub profile_points: usize,
}

impl MaskingConfig {
    pub fn new(norm: Norm, eps: f32) -> Self {
        MaskingConfig {
            norm,
            eps,
            seed: 0,
            n_iter: 100,
            square_queries: 1000,
            eps_factors: vec![0.25, 0.5, 1.0, 2.0, 4.0],
            slack: 1,
            profile_points: 16,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub pass: bool,
    pub summary: String,
    pub figures: Value,
}

/// A deliberately masked model: the input is quantised to `levels` grey levels before the
/// inner model, and the gradient is the true derivative of rounding: zero (a "shattered
/// gradient" defence). Used to show that the audit flags masking.
pub struct QuantizedInput<'a> {
    pub inner: &'a mut dyn Classifier,
    pub levels: f32,
}

impl QuantizedInput<'_> {
    fn q(&self, x: &[f32]) -> Vec<f32> {
        let l = self.levels;
        x.iter().map(|v| (v * l).round() / l).collect()
    }
}

impl Classifier for QuantizedInput<'_> {
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn logits(&mut self, x: &[f32], dims: Dims) -> Result<Vec<f32>> {
        let xq = self.q(x);
        self.inner.logits(&xq, dims)
    }
    fn logits_and_grad(
        &mut self,
        x: &[f32],
        dims: Dims,
        seed: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let z = self.logits(x, dims)?;
        let _ = seed(&z);
        Ok((z, vec![0.0; x.len()]))
    }
}

fn robust_acc(
    model: &mut dyn Classifier,
    x: &[f32],
    y: &[usize],
    dims: Dims,
    cfg: AutoAttackConfig,
) -> Result<(usize, Vec<Vec<bool>>)> {
    let ids: Vec<u64> = (0..y.len() as u64).collect();
    let res = AutoAttack { cfg, model }.run_batch(x, y, &ids, dims)?;
    let robust = res.iter().filter(|r| r.robust()).count();
    Ok((robust, res.into_iter().map(|r| r.robust_after).collect()))
}

fn pct(k: usize, n: usize) -> f64 {
    100.0 * k as f64 / n.max(1) as f64
}

/// The audited batch and the attack settings every check shares.
struct Audit<'a> {
    model: &'a mut dyn Classifier,
    x: &'a [f32],
    y: &'a [usize],
    dims: Dims,
    cfg: &'a MaskingConfig,
    /// Images, values per image, classes.
    n: usize,
    d: usize,
    k: usize,
}

/// Runs every check on `x` (`n` NCHW images, labels `y`).
pub fn masking_audit(
    model: &mut dyn Classifier,
    x: &[f32],
    y: &[usize],
    dims: Dims,
    cfg: &MaskingConfig,
) -> Result<Vec<Check>> {
    let (n, d, k) = (y.len(), dims.len(), model.num_classes());
    let mut a = Audit {
        model,
        x,
        y,
        dims,
        cfg,
        n,
        d,
        k,
    };
    let z0 = a.model.logits(x, dims)?;
    let clean = (0..n)
        .filter(|&i| argmax(&z0[i * k..(i + 1) * k]) == y[i])
        .count();
    let (gradients, g) = a.gradients()?;
    let smooth = a.smooth_loss(&g)?;
    let (monotone, accs) = a.monotone_eps(clean)?;
    // APGD-CE at eps itself, from the eps sweep.
    let r_apgd = accs[cfg.eps_factors.iter().position(|&f| f == 1.0).unwrap_or(0)];
    Ok(vec![
        gradients,
        smooth,
        monotone,
        a.unbounded()?,
        a.iterative_vs_single(r_apgd)?,
        a.more_steps(r_apgd)?,
        a.more_restarts()?,
        a.square_vs_whitebox()?,
    ])
}

impl Audit<'_> {
    /// AutoAttack's config for `attacks` at `eps`, with the audit's seed, iterations and
    /// queries.
    fn base(&self, attacks: Vec<AttackKind>, eps: f32) -> AutoAttackConfig {
        let cfg = self.cfg;
        let mut c = AutoAttackConfig::standard(cfg.norm, eps, cfg.seed);
        c.attacks = attacks;
        c.n_iter = cfg.n_iter;
        c.square_queries = cfg.square_queries;
        c
    }

    fn robust_acc(&mut self, cfg: AutoAttackConfig) -> Result<(usize, Vec<Vec<bool>>)> {
        robust_acc(self.model, self.x, self.y, self.dims, cfg)
    }

    /// APGD-CE, plus APGD-T where there are enough classes for its targets.
    fn white_box(&self) -> Vec<AttackKind> {
        let mut atts = vec![AttackKind::ApgdCe];
        if self.k >= 4 {
            atts.push(AttackKind::ApgdT);
        }
        atts
    }

    /// Check 1: input gradients finite and non-zero on every sample; returns the gradients too.
    fn gradients(&mut self) -> Result<(Check, Vec<f32>)> {
        let (n, d, k, y) = (self.n, self.d, self.k, self.y);
        let (_, g) = self.model.logits_and_grad(self.x, self.dims, &mut |z| {
            batch_loss(LossKind::Ce, z, k, y, &[]).1
        })?;
        let mut nonfinite = 0;
        let mut zero = 0;
        let mut norms = Vec::with_capacity(n);
        for i in 0..n {
            let gi = &g[i * d..(i + 1) * d];
            if gi.iter().any(|v| !v.is_finite()) {
                nonfinite += 1;
            } else if gi.iter().all(|&v| v == 0.0) {
                zero += 1;
            }
            norms.push(Norm::L2.of(gi) as f64);
        }
        let check = Check {
            name: "gradients",
            pass: nonfinite == 0 && zero == 0,
            summary: format!(
                "{nonfinite} non-finite and {zero} all-zero input gradients out of {n}"
            ),
            figures: json!({"nonfinite": nonfinite, "zero": zero, "l2_norms": norms}),
        };
        Ok((check, g))
    }

    /// Per sample: the unit step direction of the threat model along the gradient `g` (a
    /// random sign direction where the gradient is zero or not finite) and the loss slope the
    /// gradient predicts along it.
    fn directions(&self, g: &[f32]) -> (Vec<f32>, Vec<f64>) {
        let (n, d, cfg) = (self.n, self.d, self.cfg);
        let mut dirs = vec![0f32; n * d];
        let mut slopes = vec![0f64; n];
        for i in 0..n {
            let gi = &g[i * d..(i + 1) * d];
            let di = &mut dirs[i * d..(i + 1) * d];
            let gz = gi.iter().all(|&v| v == 0.0) || gi.iter().any(|v| !v.is_finite());
            if gz {
                let mut rng = sample_rng(cfg.seed, i as u64, 2000);
                di.iter_mut().for_each(|v| *v = sign(&mut rng));
                if cfg.norm != Norm::Linf {
                    let t = cfg.norm.of(di);
                    di.iter_mut().for_each(|v| *v /= t);
                }
                continue;
            }
            match cfg.norm {
                Norm::Linf => di
                    .iter_mut()
                    .zip(gi)
                    .for_each(|(v, &q)| *v = sign_or_zero(q)),
                Norm::L2 => {
                    let t = Norm::L2.of(gi);
                    di.iter_mut().zip(gi).for_each(|(v, &q)| *v = q / t);
                }
                Norm::L1 => {
                    let j = (0..d).fold(0, |b, t| if gi[t].abs() > gi[b].abs() { t } else { b });
                    di[j] = gi[j].signum();
                }
            }
            slopes[i] = gi
                .iter()
                .zip(di.iter())
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
        }
        (dirs, slopes)
    }

    /// Check 2: along the gradient direction the loss rises as the gradient predicts for a small
    /// step, and its profile over [0, eps] has no jumps.
    fn smooth_loss(&mut self, g: &[f32]) -> Result<Check> {
        let (n, k, cfg) = (self.n, self.k, self.cfg);
        let m = cfg.profile_points.max(3);
        let (dirs, slopes) = self.directions(g);
        let mut profiles = vec![vec![0f64; m + 1]; n];
        for s in 0..=m {
            let t = cfg.eps * s as f32 / m as f32;
            let xs: Vec<f32> = self
                .x
                .iter()
                .zip(&dirs)
                .map(|(a, b)| (a + t * b).clamp(0.0, 1.0))
                .collect();
            let z = self.model.logits(&xs, self.dims)?;
            let l = batch_loss(LossKind::Ce, &z, k, self.y, &[]).0;
            for (p, &li) in profiles.iter_mut().zip(&l) {
                p[s] = li as f64;
            }
        }
        let dt = cfg.eps as f64 / m as f64;
        let mut taylor_ok = 0;
        let mut rough = Vec::with_capacity(n);
        for i in 0..n {
            let p = &profiles[i];
            let actual = p[1] - p[0];
            let pred = slopes[i] * dt;
            let ok = slopes[i] > 0.0
                && (actual - pred).abs()
                    <= 0.5 * actual.abs().max(pred.abs()) + 1e-6 * (1.0 + p[0].abs());
            taylor_ok += ok as usize;
            let d1 = (0..m).map(|s| (p[s + 1] - p[s]).abs()).fold(0.0, f64::max);
            let d2 = (1..m)
                .map(|s| (p[s + 1] - 2.0 * p[s] + p[s - 1]).abs())
                .fold(0.0, f64::max);
            rough.push(if d1 > 0.0 { d2 / d1 } else { f64::INFINITY });
        }
        let mut rs = rough.clone();
        rs.sort_by(|a, b| a.total_cmp(b));
        let med_rough = rs[rs.len() / 2];
        let need = (0.8 * n as f64).ceil() as usize;
        Ok(Check {
            name: "smooth_loss",
            pass: taylor_ok >= need && med_rough < 0.5,
            summary: format!(
                "first-order prediction of the loss along the gradient holds on {taylor_ok}/{n} \
                 samples (need {need}); median roughness (max 2nd / max 1st difference over \
                 {m} steps to eps) {med_rough:.3} (need < 0.5)"
            ),
            figures: json!({"taylor_agree": taylor_ok, "roughness": rough,
                            "profiles": profiles}),
        })
    }

    /// Check 3: APGD-CE robust accuracy does not rise as eps grows; returns the robust counts per
    /// eps factor too.
    fn monotone_eps(&mut self, clean: usize) -> Result<(Check, Vec<usize>)> {
        let (n, cfg) = (self.n, self.cfg);
        let mut accs = Vec::new();
        for &f in &cfg.eps_factors {
            let (r, _) = self.robust_acc(self.base(vec![AttackKind::ApgdCe], cfg.eps * f))?;
            accs.push(r);
        }
        let rises: Vec<(f32, f32)> = accs
            .windows(2)
            .zip(cfg.eps_factors.windows(2))
            .filter(|(a, _)| a[1] > a[0] + cfg.slack)
            .map(|(_, f)| (f[0], f[1]))
            .collect();
        let check = Check {
            name: "monotone_eps",
            pass: rises.is_empty(),
            summary: format!(
                "APGD-CE robust accuracy at eps x {:?}: {} (clean {:.1}%)",
                cfg.eps_factors,
                accs.iter()
                    .map(|&r| format!("{:.1}%", pct(r, n)))
                    .collect::<Vec<_>>()
                    .join(", "),
                pct(clean, n)
            ),
            figures: json!({"eps": cfg.eps_factors.iter().map(|f| f * cfg.eps).collect::<Vec<_>>(),
                            "robust": accs, "n": n}),
        };
        Ok((check, accs))
    }

    /// Check 4: the white-box attacks with eps = the box's diameter reach 0%.
    fn unbounded(&mut self) -> Result<Check> {
        let n = self.n;
        let diam = self.cfg.norm.diameter(self.d);
        let (r_unb, _) = self.robust_acc(self.base(self.white_box(), diam))?;
        Ok(Check {
            name: "unbounded",
            pass: r_unb == 0,
            summary: format!(
                "APGD-CE + APGD-T at eps = {diam} (the whole box): robust {:.1}% (need 0%)",
                pct(r_unb, n)
            ),
            figures: json!({"eps": diam, "robust": r_unb, "n": n}),
        })
    }

    /// Check 5: APGD-CE (robust count `r_apgd`) is at least as strong as FGSM.
    fn iterative_vs_single(&mut self, r_apgd: usize) -> Result<Check> {
        let (n, cfg) = (self.n, self.cfg);
        let (r_fgsm, _) = self.robust_acc(self.base(vec![AttackKind::Fgsm], cfg.eps))?;
        Ok(Check {
            name: "iterative_vs_single",
            pass: r_apgd <= r_fgsm + cfg.slack,
            summary: format!(
                "FGSM {:.1}% vs APGD-CE {:.1}%",
                pct(r_fgsm, n),
                pct(r_apgd, n)
            ),
            figures: json!({"fgsm": r_fgsm, "apgd_ce": r_apgd, "n": n}),
        })
    }

    /// Check 6a: 4x the APGD-CE iterations never raise robust accuracy (`r_apgd` the full run's).
    fn more_steps(&mut self, r_apgd: usize) -> Result<Check> {
        let (n, cfg) = (self.n, self.cfg);
        let mut few = self.base(vec![AttackKind::ApgdCe], cfg.eps);
        few.n_iter = (cfg.n_iter / 4).max(1);
        let (r_few, _) = self.robust_acc(few)?;
        Ok(Check {
            name: "more_steps",
            pass: r_apgd <= r_few + cfg.slack,
            summary: format!(
                "APGD-CE {} iterations {:.1}% vs {} iterations {:.1}%",
                (cfg.n_iter / 4).max(1),
                pct(r_few, n),
                cfg.n_iter,
                pct(r_apgd, n)
            ),
            figures: json!({"few": r_few, "many": r_apgd, "n": n}),
        })
    }

    /// Check 6b: 3 PGD-10 restarts never raise robust accuracy over one.
    fn more_restarts(&mut self) -> Result<Check> {
        let (n, cfg) = (self.n, self.cfg);
        let mut p1 = self.base(vec![AttackKind::Pgd], cfg.eps);
        p1.pgd_steps = 10;
        p1.pgd_restarts = 1;
        let mut p3 = p1.clone();
        p3.pgd_restarts = 3;
        let (r_p1, _) = self.robust_acc(p1)?;
        let (r_p3, _) = self.robust_acc(p3)?;
        Ok(Check {
            name: "more_restarts",
            pass: r_p3 <= r_p1 + cfg.slack,
            summary: format!(
                "PGD-10 1 restart {:.1}% vs 3 restarts {:.1}%",
                pct(r_p1, n),
                pct(r_p3, n)
            ),
            figures: json!({"one": r_p1, "three": r_p3, "n": n}),
        })
    }

    /// Check 7: Square, run after the white-box attacks, lowers robust accuracy by at most 0.2%.
    fn square_vs_whitebox(&mut self) -> Result<Check> {
        let (n, cfg) = (self.n, self.cfg);
        let mut sq = self.white_box();
        sq.push(AttackKind::Square);
        let (_, after) = self.robust_acc(self.base(sq, cfg.eps))?;
        let white = after.iter().filter(|a| a[a.len() - 2]).count();
        let black = after.iter().filter(|a| a[a.len() - 1]).count();
        let drop = white.saturating_sub(black) as f64 / n.max(1) as f64;
        Ok(Check {
            name: "square_vs_whitebox",
            pass: drop <= 0.002,
            summary: format!(
                "white-box {:.1}%, then Square ({} queries) {:.1}%: Square fooled {} points the \
                 gradient attacks could not (allowed: 0.2%)",
                pct(white, n),
                cfg.square_queries,
                pct(black, n),
                white.saturating_sub(black)
            ),
            figures: json!({"whitebox": white, "after_square": black, "n": n}),
        })
    }
}

/// JSON report of a list of checks.
pub fn checks_json(checks: &[Check]) -> Value {
    json!({
        "pass": checks.iter().all(|c| c.pass),
        "checks": checks.iter().map(|c| json!({"name": c.name, "pass": c.pass,
            "summary": c.summary, "figures": c.figures})).collect::<Vec<_>>(),
    })
}
