//! PGD (Madry et al., 2018) with random start and restarts, and FGSM (one step of size eps,
//! no random start), for l-inf, l2 and l1, maximising the cross-entropy. The l1 step moves
//! along the signs of the top 20% gradient coordinates (as APGD-l1's first step) and is
//! followed by the exact l1-ball + box projection.

use super::model::{argmax, batch_loss, Classifier, Dims, LossKind};
use super::norms::{l1_projection, linf_step_slice, project, sign_or_zero, Norm};
use super::rng::{normal, sample_rng, uniform, SampleRng};
use crate::Result;

#[derive(Clone, Debug)]
pub struct PgdConfig {
    pub norm: Norm,
    pub eps: f32,
    pub steps: usize,
    /// Absolute step size (in the norm's units).
    pub step_size: f32,
    pub restarts: usize,
    pub random_start: bool,
    pub seed: u64,
}

impl PgdConfig {
    /// `steps` steps of `2.5 eps / steps` from a random start (Madry et al.'s rule).
    pub fn pgd(norm: Norm, eps: f32, steps: usize, restarts: usize, seed: u64) -> Self {
        PgdConfig {
            norm,
            eps,
            steps: steps.max(1),
            step_size: 2.5 * eps / steps.max(1) as f32,
            restarts: restarts.max(1),
            random_start: true,
            seed,
        }
    }
    /// FGSM: one step of size eps from the clean image.
    pub fn fgsm(norm: Norm, eps: f32) -> Self {
        PgdConfig {
            norm,
            eps,
            steps: 1,
            step_size: eps,
            restarts: 1,
            random_start: false,
            seed: 0,
        }
    }
}

/// One steepest-ascent step of size `a` along `g` in `norm` (l1: top-20% sparse signs).
pub fn ascent_step(norm: Norm, xa: &mut [f32], g: &[f32], a: f32) {
    let sgn = sign_or_zero;
    match norm {
        Norm::Linf => xa.iter_mut().zip(g).for_each(|(x, &v)| *x += a * sgn(v)),
        Norm::L2 => {
            let n = Norm::L2.of(g) + 1e-12;
            xa.iter_mut().zip(g).for_each(|(x, &v)| *x += a * v / n);
        }
        Norm::L1 => {
            let d = g.len();
            let mut mags: Vec<f32> = g.iter().map(|v| v.abs()).collect();
            let pos = ((0.8 * d as f32) as usize).min(d - 1);
            let (_, thr, _) = mags.select_nth_unstable_by(pos, |p, q| p.total_cmp(q));
            let thr = *thr;
            let s: Vec<f32> = g
                .iter()
                .map(|&v| if v.abs() >= thr { sgn(v) } else { 0.0 })
                .collect();
            let cnt = s.iter().map(|v| v.abs()).sum::<f32>() + 1e-10;
            xa.iter_mut().zip(&s).for_each(|(x, &v)| *x += a * v / cnt);
        }
    }
}

pub struct Pgd<'m> {
    pub cfg: PgdConfig,
    pub model: &'m mut dyn Classifier,
    pub stream: u64,
}

impl Pgd<'_> {
    /// Same contract as `Apgd::perturb`.
    pub fn perturb(
        &mut self,
        x: &[f32],
        y: &[usize],
        ids: &[u64],
        dims: Dims,
    ) -> Result<(Vec<f32>, Vec<bool>)> {
        let d = dims.len();
        let n = y.len();
        let k = self.model.num_classes();
        let cfg = self.cfg.clone();
        let z0 = self.model.logits(x, dims)?;
        let mut robust: Vec<bool> = (0..n)
            .map(|i| argmax(&z0[i * k..(i + 1) * k]) == y[i])
            .collect();
        let mut adv = x.to_vec();
        let mut fooled = vec![false; n];
        let mut rngs: Vec<SampleRng> = ids
            .iter()
            .map(|&id| sample_rng(cfg.seed, id, self.stream))
            .collect();
        for _ in 0..cfg.restarts {
            let active: Vec<usize> = (0..n).filter(|&i| robust[i]).collect();
            if active.is_empty() {
                break;
            }
            let xs: Vec<f32> = active
                .iter()
                .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
                .collect();
            let ys: Vec<usize> = active.iter().map(|&i| y[i]).collect();
            let mut xa = xs.clone();
            if cfg.random_start {
                for (j, &i) in active.iter().enumerate() {
                    let rng = &mut rngs[i];
                    let x0 = &xs[j * d..(j + 1) * d];
                    let a = &mut xa[j * d..(j + 1) * d];
                    match cfg.norm {
                        Norm::Linf => a
                            .iter_mut()
                            .for_each(|v| *v += cfg.eps * (2.0 * uniform(rng) - 1.0)),
                        Norm::L2 => {
                            let t: Vec<f32> = (0..d).map(|_| normal(rng)).collect();
                            let r = cfg.eps * uniform(rng) / (Norm::L2.of(&t) + 1e-12);
                            a.iter_mut().zip(&t).for_each(|(v, q)| *v += r * q);
                        }
                        Norm::L1 => {
                            let t: Vec<f32> = (0..d).map(|_| normal(rng)).collect();
                            let p = l1_projection(x0, &t, cfg.eps);
                            for q in 0..d {
                                a[q] += t[q] + p[q];
                            }
                        }
                    }
                    project(cfg.norm, a, x0, cfg.eps);
                }
            }
            let mut found = vec![false; active.len()];
            for _ in 0..cfg.steps {
                let (logits, g) = self.model.logits_and_grad(&xa, dims, &mut |z| {
                    batch_loss(LossKind::Ce, z, k, &ys, &[]).1
                })?;
                for j in 0..active.len() {
                    if !found[j] && argmax(&logits[j * k..(j + 1) * k]) != ys[j] {
                        found[j] = true;
                        adv[active[j] * d..(active[j] + 1) * d]
                            .copy_from_slice(&xa[j * d..(j + 1) * d]);
                    }
                    let r = j * d..(j + 1) * d;
                    if cfg.norm == Norm::Linf {
                        // The step and the projection in one (the same arithmetic).
                        linf_step_slice(
                            &mut xa[r.clone()],
                            &xs[r.clone()],
                            &g[r],
                            cfg.step_size,
                            cfg.eps,
                        );
                        continue;
                    }
                    ascent_step(cfg.norm, &mut xa[r.clone()], &g[r.clone()], cfg.step_size);
                    project(cfg.norm, &mut xa[r.clone()], &xs[r], cfg.eps);
                }
            }
            let z = self.model.logits(&xa, dims)?;
            for (j, &i) in active.iter().enumerate() {
                if !found[j] && argmax(&z[j * k..(j + 1) * k]) != ys[j] {
                    found[j] = true;
                    adv[i * d..(i + 1) * d].copy_from_slice(&xa[j * d..(j + 1) * d]);
                }
                if found[j] {
                    robust[i] = false;
                    fooled[i] = true;
                }
            }
        }
        Ok((adv, fooled))
    }
}
