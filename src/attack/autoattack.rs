//! AutoAttack (Croce & Hein, ICML 2020): attacks run in sequence, each on the points still
//! robust after the previous ones, as the reference's `run_standard_evaluation`. Version
//! "standard": APGD-CE, APGD-T, FAB-T, Square with the reference's parameters per norm.
//!
//! Every example an attack claims is first pulled strictly inside the ball as f32 measures it
//! (`norms::tighten`: one ulp for l-inf), then verified before it counts: finite, in [0, 1],
//! within eps of the clean image, and misclassified when the model is run again on the batch
//! the attack returned (as the reference re-evaluates it). Claims that fail are recorded as
//! rejected, never counted.

use super::apgd::{Apgd, ApgdConfig};
use super::fab::{FabConfig, FabT};
use super::model::{argmax, in_threat_model, Classifier, Dims, LossKind};
use super::norms::{tighten, Norm};
use super::pgd::{Pgd, PgdConfig};
use super::square::{Square, SquareConfig};
use crate::{Error, Result};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttackKind {
    ApgdCe,
    ApgdDlr,
    ApgdT,
    FabT,
    Square,
    Pgd,
    Fgsm,
}

impl AttackKind {
    pub const STANDARD: [AttackKind; 4] = [
        AttackKind::ApgdCe,
        AttackKind::ApgdT,
        AttackKind::FabT,
        AttackKind::Square,
    ];

    /// `list` as a model of `num_classes` classes can run it: APGD-T's targeted DLR loss needs
    /// 4 classes (it uses the 4 largest logits), so with 3 it becomes the untargeted APGD-DLR,
    /// and DLR needs 3, so with 2 it is left out. Toy runs (the demo, the sweep's CI test) use
    /// 2-3 classes; ImageNet models get `list` unchanged.
    pub fn fit_to_classes(list: &[AttackKind], num_classes: usize) -> Vec<AttackKind> {
        let mut out = Vec::new();
        for &a in list {
            let fitted = match a {
                AttackKind::ApgdT if num_classes >= 4 => Some(a),
                AttackKind::ApgdT | AttackKind::ApgdDlr if num_classes == 3 => {
                    Some(AttackKind::ApgdDlr)
                }
                AttackKind::ApgdT | AttackKind::ApgdDlr if num_classes < 3 => None,
                other => Some(other),
            };
            if let Some(f) = fitted {
                if !out.contains(&f) {
                    out.push(f);
                }
            }
        }
        out
    }

    pub fn name(self) -> &'static str {
        match self {
            AttackKind::ApgdCe => "apgd-ce",
            AttackKind::ApgdDlr => "apgd-dlr",
            AttackKind::ApgdT => "apgd-t",
            AttackKind::FabT => "fab-t",
            AttackKind::Square => "square",
            AttackKind::Pgd => "pgd",
            AttackKind::Fgsm => "fgsm",
        }
    }

    /// Random stream id (distinct per attack, so attacks do not share draws).
    fn stream(self) -> u64 {
        match self {
            AttackKind::ApgdCe => 1,
            AttackKind::ApgdDlr => 2,
            AttackKind::ApgdT => 3,
            AttackKind::FabT => 4,
            AttackKind::Square => 5,
            AttackKind::Pgd => 6,
            AttackKind::Fgsm => 7,
        }
    }

    /// Parses a comma-separated list (`apgd-ce,apgd-t,fab-t,square`).
    pub fn parse_list(s: &str) -> Result<Vec<AttackKind>> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let a: AttackKind = part
                .parse()
                .map_err(|e: String| Error::flag("--attacks", e))?;
            if out.contains(&a) {
                return Err(Error::flag(
                    "--attacks",
                    format!("'{part}' is listed twice"),
                ));
            }
            out.push(a);
        }
        if out.is_empty() {
            return Err(Error::flag("--attacks", "no attack given"));
        }
        Ok(out)
    }
}

impl std::str::FromStr for AttackKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "apgd-ce" => AttackKind::ApgdCe,
            "apgd-dlr" => AttackKind::ApgdDlr,
            "apgd-t" => AttackKind::ApgdT,
            "fab-t" => AttackKind::FabT,
            "square" => AttackKind::Square,
            "pgd" => AttackKind::Pgd,
            "fgsm" => AttackKind::Fgsm,
            _ => {
                return Err(format!(
                    "'{s}' is not an attack: expected apgd-ce, apgd-t, fab-t, square, apgd-dlr, pgd or fgsm"
                ))
            }
        })
    }
}

#[derive(Clone, Debug)]
pub struct AutoAttackConfig {
    pub norm: Norm,
    pub eps: f32,
    pub seed: u64,
    pub attacks: Vec<AttackKind>,
    /// APGD and FAB iterations (reference: 100).
    pub n_iter: usize,
    /// Square's query budget (reference: 5000).
    pub square_queries: usize,
    /// PGD steps and restarts when `pgd` is in the list.
    pub pgd_steps: usize,
    pub pgd_restarts: usize,
    /// Most images in one model pass. APGD and FAB-T run that many (sample, target/restart)
    /// pairs side by side, so a GPU makes fewer, larger passes; the results are the same as
    /// one run at a time (0, the reference's way).
    pub pass_batch: usize,
}

impl AutoAttackConfig {
    /// AutoAttack "standard" for `norm` at `eps`.
    pub fn standard(norm: Norm, eps: f32, seed: u64) -> Self {
        AutoAttackConfig {
            norm,
            eps,
            seed,
            attacks: AttackKind::STANDARD.to_vec(),
            n_iter: 100,
            square_queries: 5000,
            pgd_steps: 10,
            pgd_restarts: 1,
            pass_batch: 0,
        }
    }

    /// "standard" when the list and budgets are the reference's, else "custom".
    pub fn version(&self) -> &'static str {
        if self.attacks == AttackKind::STANDARD && self.n_iter == 100 && self.square_queries == 5000
        {
            "standard"
        } else {
            "custom"
        }
    }
}

/// The outcome for one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleResult {
    /// Index in the dataset.
    pub index: u64,
    pub label: usize,
    pub clean_correct: bool,
    /// Robust after each attack of the list, in order.
    pub robust_after: Vec<bool>,
    /// The attack whose (verified) example fooled the model.
    pub fooled_by: Option<AttackKind>,
    /// Attacks whose claimed example failed verification.
    pub rejected: Vec<AttackKind>,
    /// The verified adversarial example (NCHW), when one was found.
    pub adv: Option<Vec<f32>>,
}

impl SampleResult {
    pub fn robust(&self) -> bool {
        self.clean_correct && self.robust_after.last().copied().unwrap_or(true)
    }
}

/// Where one attack of the list spent its time on one batch.
#[derive(Clone, Copy, Debug)]
pub struct AttackTime {
    pub kind: AttackKind,
    /// Samples it attacked (those still robust when it started).
    pub images: usize,
    /// Wall seconds, verification included.
    pub seconds: f64,
    /// Of those, seconds inside the model's forward and backward passes.
    pub model_seconds: f64,
}

pub struct AutoAttack<'m> {
    pub cfg: AutoAttackConfig,
    pub model: &'m mut dyn Classifier,
}

impl AutoAttack<'_> {
    /// Runs one attack of the list on `x` and returns its (unverified) claims.
    pub fn run_one(
        &mut self,
        kind: AttackKind,
        x: &[f32],
        y: &[usize],
        ids: &[u64],
        dims: Dims,
    ) -> Result<(Vec<f32>, Vec<bool>)> {
        let c = &self.cfg;
        let (norm, eps, seed) = (c.norm, c.eps, c.seed);
        let stream = kind.stream();
        let model = &mut *self.model;
        match kind {
            AttackKind::ApgdCe | AttackKind::ApgdDlr | AttackKind::ApgdT => {
                let mut cfg = match kind {
                    AttackKind::ApgdT => ApgdConfig::standard_t(norm, eps, seed),
                    _ => ApgdConfig::standard_ce(norm, eps, seed),
                };
                if kind == AttackKind::ApgdDlr {
                    cfg.loss = LossKind::Dlr;
                }
                cfg.n_iter = c.n_iter;
                cfg.pass_batch = c.pass_batch;
                Apgd { cfg, model, stream }.perturb(x, y, ids, dims)
            }
            AttackKind::FabT => {
                let mut cfg = FabConfig::standard(norm, eps, seed);
                cfg.n_iter = c.n_iter;
                cfg.pass_batch = c.pass_batch;
                FabT { cfg, model, stream }.perturb(x, y, ids, dims)
            }
            AttackKind::Square => {
                let mut cfg = SquareConfig::standard(norm, eps, seed);
                cfg.n_queries = c.square_queries;
                Square { cfg, model, stream }.perturb(x, y, ids, dims)
            }
            AttackKind::Pgd => {
                let cfg = PgdConfig::pgd(norm, eps, c.pgd_steps, c.pgd_restarts, seed);
                Pgd { cfg, model, stream }.perturb(x, y, ids, dims)
            }
            AttackKind::Fgsm => {
                let cfg = PgdConfig::fgsm(norm, eps);
                Pgd { cfg, model, stream }.perturb(x, y, ids, dims)
            }
        }
    }

    /// Runs the attack list on one batch (`x`: `n` NCHW images, `ids`: dataset indices).
    pub fn run_batch(
        &mut self,
        x: &[f32],
        y: &[usize],
        ids: &[u64],
        dims: Dims,
    ) -> Result<Vec<SampleResult>> {
        Ok(self.run_batch_timed(x, y, ids, dims)?.0)
    }

    /// [`run_batch`](Self::run_batch), also returning where the time went: per attack of the
    /// list, its wall seconds and the part of them spent inside the model's passes (the rest
    /// is the attack's own logic, which is host code on every device).
    pub fn run_batch_timed(
        &mut self,
        x: &[f32],
        y: &[usize],
        ids: &[u64],
        dims: Dims,
    ) -> Result<(Vec<SampleResult>, Vec<AttackTime>)> {
        let mut times = Vec::new();
        let d = dims.len();
        let n = y.len();
        let k = self.model.num_classes();
        if let Some(bad) = y.iter().find(|&&c| c >= k) {
            return Err(Error::Msg(format!(
                "label {bad} is out of range for a model with {k} classes"
            )));
        }
        let z = self.model.logits(x, dims)?;
        let mut res: Vec<SampleResult> = (0..n)
            .map(|i| SampleResult {
                index: ids[i],
                label: y[i],
                clean_correct: argmax(&z[i * k..(i + 1) * k]) == y[i],
                robust_after: Vec::new(),
                fooled_by: None,
                rejected: Vec::new(),
                adv: None,
            })
            .collect();
        let attacks = self.cfg.attacks.clone();
        for kind in attacks {
            let active: Vec<usize> = (0..n)
                .filter(|&i| res[i].clean_correct && res[i].fooled_by.is_none())
                .collect();
            if !active.is_empty() {
                let (t0, m0) = (Instant::now(), self.model.model_seconds());
                let xs: Vec<f32> = active
                    .iter()
                    .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
                    .collect();
                let ys: Vec<usize> = active.iter().map(|&i| y[i]).collect();
                let is: Vec<u64> = active.iter().map(|&i| ids[i]).collect();
                let (mut adv, claimed) = self.run_one(kind, &xs, &ys, &is, dims)?;
                for (j, _) in claimed.iter().enumerate().filter(|(_, c)| **c) {
                    {
                        let r = j * d..(j + 1) * d;
                        tighten(self.cfg.norm, self.cfg.eps, &mut adv[r.clone()], &xs[r]);
                    }
                }
                let verified = self.verify(&adv, &xs, &ys, &claimed, dims)?;
                for (j, &i) in active.iter().enumerate() {
                    if verified[j] {
                        res[i].fooled_by = Some(kind);
                        res[i].adv = Some(adv[j * d..(j + 1) * d].to_vec());
                    } else if claimed[j] {
                        res[i].rejected.push(kind);
                    }
                }
                times.push(AttackTime {
                    kind,
                    images: active.len(),
                    seconds: t0.elapsed().as_secs_f64(),
                    model_seconds: self.model.model_seconds() - m0,
                });
            }
            for r in res.iter_mut() {
                let robust = r.clean_correct && r.fooled_by.is_none();
                r.robust_after.push(robust);
            }
        }
        Ok((res, times))
    }

    /// Which returned examples are in the threat model and misclassified on re-evaluation.
    /// Like the reference, the whole batch the attack returned is re-evaluated in one pass (the
    /// shape of the attack's own passes, so a GPU picks the same kernels and claims verify
    /// under the same arithmetic); an unclaimed row that turns out misclassified also counts,
    /// as it does in the reference. `claimed` only decides which failures are reported.
    pub fn verify(
        &mut self,
        adv: &[f32],
        x: &[f32],
        y: &[usize],
        claimed: &[bool],
        dims: Dims,
    ) -> Result<Vec<bool>> {
        let d = dims.len();
        let k = self.model.num_classes();
        let mut ok = vec![false; y.len()];
        if !claimed.iter().any(|c| *c) && adv == x {
            return Ok(ok);
        }
        let z = self.model.logits(adv, dims)?;
        for (j, v) in ok.iter_mut().enumerate() {
            let r = j * d..(j + 1) * d;
            *v = in_threat_model(self.cfg.norm, self.cfg.eps, &adv[r.clone()], &x[r])
                && argmax(&z[j * k..(j + 1) * k]) != y[j];
        }
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::AttackKind::{self, *};

    /// APGD-T needs 4 classes and DLR 3: smaller models get what they can run, in order,
    /// without duplicates; ImageNet-sized models get the list unchanged.
    #[test]
    fn attacks_fit_the_number_of_classes() {
        let std = AttackKind::STANDARD;
        assert_eq!(AttackKind::fit_to_classes(&std, 1000), std.to_vec());
        assert_eq!(AttackKind::fit_to_classes(&std, 4), std.to_vec());
        assert_eq!(
            AttackKind::fit_to_classes(&std, 3),
            vec![ApgdCe, ApgdDlr, FabT, Square]
        );
        assert_eq!(
            AttackKind::fit_to_classes(&[ApgdCe, ApgdDlr, ApgdT], 3),
            vec![ApgdCe, ApgdDlr]
        );
        assert_eq!(
            AttackKind::fit_to_classes(&std, 2),
            vec![ApgdCe, FabT, Square]
        );
    }
}
