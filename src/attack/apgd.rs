//! Auto-PGD (Croce & Hein, ICML 2020, arXiv:2003.01690), as the reference AutoAttack runs it:
//! momentum 0.75, step size 2*eps (l-inf, l2) or eps (l1), checkpoints at
//! `p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)` of the iterations (first at 22%), where
//! the step is halved and the iterate reset to the best point when the loss oscillated
//! (fewer than rho = 0.75 of the steps since the last checkpoint increased it) or the best
//! loss did not improve. l1: sparse steps along the top-k coordinates of the gradient with
//! adaptive k and step size (checked every 4% of the iterations), and AutoAttack's decreasing
//! eps schedule (3 eps, 2 eps, eps over 30/30/40% of the iterations).
//!
//! Batched: every array below is `[n, d]` or `[n]` over the samples still under attack.

use super::model::{argmax, batch_loss, Classifier, Dims, LossKind};
use super::norms::{l0_dist, l1_projection, Norm};
use super::resident::{apgd_l1_step, apgd_step, copy_rows, row_l0};
use super::rng::{normal, sample_rng, uniform, SampleRng};
use super::row_steps::{apgd_row_step, l1_sparse_step};
use super::schedule::RunGroups;
use crate::tensor::Tensor;
use crate::{Error, Result};
use rayon::prelude::*;

#[derive(Clone, Debug)]
pub struct ApgdConfig {
    pub norm: Norm,
    pub eps: f32,
    pub n_iter: usize,
    pub n_restarts: usize,
    /// Oscillation threshold of the checkpoints.
    pub rho: f32,
    pub loss: LossKind,
    /// APGD-T: the targets are the classes ranked 2nd .. (n_target_classes + 1)th on the
    /// clean input.
    pub n_target_classes: usize,
    /// l1: AutoAttack's decreasing-eps schedule.
    pub use_largereps: bool,
    pub seed: u64,
    /// Most images in one model pass: runs (targets, restarts) that fit side by side share
    /// passes; results do not depend on it. 0 or anything below the batch: one run at a time,
    /// as the reference does.
    pub pass_batch: usize,
    /// l-inf and l2: keep the iterates, the best points and the gradients in the model's input
    /// tensors (on its device; `attack::resident`), so a pass moves only logits and per-sample
    /// step sizes. Same results as the host loop (false), which l1 uses.
    pub resident: bool,
}

impl ApgdConfig {
    /// AutoAttack "standard" APGD-CE for `norm`.
    pub fn standard_ce(norm: Norm, eps: f32, seed: u64) -> Self {
        ApgdConfig {
            norm,
            eps,
            n_iter: 100,
            n_restarts: if norm == Norm::L1 { 5 } else { 1 },
            rho: 0.75,
            loss: LossKind::Ce,
            n_target_classes: 0,
            use_largereps: norm == Norm::L1,
            seed,
            pass_batch: 0,
            resident: true,
        }
    }
    /// AutoAttack "standard" APGD-T for `norm` (9 targets; 5 for l1).
    pub fn standard_t(norm: Norm, eps: f32, seed: u64) -> Self {
        ApgdConfig {
            n_restarts: 1,
            loss: LossKind::DlrTargeted,
            n_target_classes: if norm == Norm::L1 { 5 } else { 9 },
            ..Self::standard_ce(norm, eps, seed)
        }
    }
}

/// APGD-L1's sparsity state per sample: the fraction of coordinates each step moves (`topk`)
/// and the L0 norm of the best point at the last checkpoint (`sp_old`). Starts at 20% (or, from
/// a given start, at the start's L0 / 1.5), checkpoints every 4% of the iterations.
struct Sparsity {
    topk: Vec<f32>,
    sp_old: Vec<f32>,
    n_fts: f32,
}

impl Sparsity {
    fn new(
        start: &[f32],
        xs: &[f32],
        d: usize,
        given_init: bool,
        n_iter: usize,
        checkpoints: &mut Checkpoints,
    ) -> Self {
        let n = xs.len() / d.max(1);
        let n_fts = d as f32;
        checkpoints.k = ((0.04 * n_iter as f64) as usize).max(1);
        let (topk, sp_old) = if given_init {
            let l0: Vec<f32> = (0..n)
                .map(|j| l0_dist(&start[j * d..(j + 1) * d], &xs[j * d..(j + 1) * d]))
                .collect();
            (l0.iter().map(|v| v / n_fts / 1.5).collect(), l0)
        } else {
            (vec![0.2f32; n], vec![n_fts; n])
        };
        Sparsity {
            topk,
            sp_old,
            n_fts,
        }
    }

    /// The reference's l1 checkpoint from the best points' L0 norms `l0`: where sparsity fell
    /// by 5% or more the step goes back to `max_step` and the sample restarts from its best
    /// point (returned true), else the step shrinks by 1.5 (not below `max_step / 10`); the
    /// top-k fraction follows the sparsity.
    fn checkpoint(&mut self, l0: &[f32], step: &mut [f32], max_step: f32) -> Vec<bool> {
        l0.iter()
            .enumerate()
            .map(|(j, &sp_curr)| {
                let red = sp_curr / self.sp_old[j] < 0.95;
                self.topk[j] = sp_curr / self.n_fts / 1.5;
                if red {
                    step[j] = max_step;
                } else {
                    step[j] /= 1.5;
                }
                step[j] = step[j].clamp(max_step / 10.0, max_step);
                self.sp_old[j] = sp_curr;
                red
            })
            .collect()
    }
}

/// APGD's checkpoint schedule and per-sample checkpoint memory. Periods come from the
/// configured iteration count `n0` (the reference sets them in its constructor): the first
/// checkpoint after 22% of the iterations, then every max(previous - 3%, 6%) (l-inf, l2);
/// l1 uses a fixed period of 4% of this stage's iterations.
struct Checkpoints {
    /// Iterations between checkpoints now, and since the last one.
    k: usize,
    since: usize,
    size_decr: usize,
    k_min: usize,
    loss_best_last: Vec<f32>,
    reduced_last: Vec<bool>,
}

impl Checkpoints {
    fn new(n0: usize, loss_best: &[f32]) -> Self {
        let frac = |f: f64| ((f * n0 as f64) as usize).max(1);
        Checkpoints {
            k: frac(0.22),
            since: 0,
            size_decr: frac(0.03),
            k_min: frac(0.06),
            loss_best_last: loss_best.to_vec(),
            reduced_last: vec![true; loss_best.len()],
        }
    }

    /// Counts one iteration; true when it ends a period (a checkpoint is due).
    fn due(&mut self) -> bool {
        self.since += 1;
        let due = self.since == self.k;
        if due {
            self.since = 0;
        }
        due
    }

    /// The l-inf / l2 checkpoint after iteration `i`: a sample resets (back to its best
    /// point, step halved) when its loss rose in at most `rho * k` of the last `k` steps
    /// (`check_oscillation`) or its best loss did not improve since the last checkpoint while
    /// that one did not reset it either. `loss_steps[t][j]`: loss of sample `j` after
    /// iteration `t`; index -1 wraps to the last, not yet written (zero) row, as in the
    /// reference's first checkpoint. Then the period shrinks.
    fn resets(
        &mut self,
        loss_steps: &[Vec<f32>],
        i: usize,
        rho: f32,
        loss_best: &[f32],
        step: &mut [f32],
    ) -> Vec<bool> {
        let (k, n_iter) = (self.k, loss_steps.len() as isize);
        let at = |t: isize, j: usize| loss_steps[(if t < 0 { n_iter + t } else { t }) as usize][j];
        let reset: Vec<bool> = (0..loss_best.len())
            .map(|j| {
                let rises = (0..k as isize)
                    .filter(|&c| at(i as isize - c, j) > at(i as isize - c - 1, j))
                    .count();
                let osc = (rises as f32) <= k as f32 * rho;
                let no_impr = !self.reduced_last[j] && self.loss_best_last[j] >= loss_best[j];
                let reset = osc || no_impr;
                self.reduced_last[j] = reset;
                self.loss_best_last[j] = loss_best[j];
                if reset {
                    step[j] /= 2.0;
                }
                reset
            })
            .collect();
        self.k = self.k.saturating_sub(self.size_decr).max(self.k_min);
        reset
    }
}

/// Result of one run on a sub-batch.
struct Run {
    x_best: Vec<f32>,
    acc: Vec<bool>,
    x_best_adv: Vec<f32>,
}

pub struct Apgd<'m> {
    pub cfg: ApgdConfig,
    pub model: &'m mut dyn Classifier,
    /// Random stream id of this attack (distinguishes APGD-CE from APGD-T, etc.).
    pub stream: u64,
}

impl Apgd<'_> {
    /// Attacks `x` (`n` images, labels `y`, dataset indices `ids` for the random streams).
    /// Returns the adversarial examples (the clean image where none was found) and whether
    /// each sample was fooled (by the attack's own account: callers verify).
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
        let targeted = self.cfg.loss == LossKind::DlrTargeted;
        if targeted && k < 4 {
            return Err(Error::flag(
                "--attacks",
                format!("apgd-t needs at least 4 classes (its DLR loss uses the 4 largest logits), the model has {k}"),
            ));
        }
        if self.cfg.loss == LossKind::Dlr && k < 3 {
            return Err(Error::flag(
                "--attacks",
                format!("apgd-dlr needs at least 3 classes, the model has {k}"),
            ));
        }
        let z0 = self.model.logits(x, dims)?;
        let mut acc: Vec<bool> = (0..n)
            .map(|i| argmax(&z0[i * k..(i + 1) * k]) == y[i])
            .collect();
        let mut adv = x.to_vec();
        let mut fooled = vec![false; n];
        let mut rngs: Vec<SampleRng> = ids
            .iter()
            .map(|&id| sample_rng(self.cfg.seed, id, self.stream))
            .collect();
        let target_ranks: Vec<usize> = if targeted {
            (2..self.cfg.n_target_classes.min(k - 1) + 2).collect()
        } else {
            vec![0]
        };
        // The reference's runs, in its order: per target, its restarts; each on the samples
        // no earlier run fooled.
        let runs: Vec<usize> = target_ranks
            .iter()
            .flat_map(|&t| std::iter::repeat_n(t, self.cfg.n_restarts))
            .collect();
        let mut groups = RunGroups::new(runs.len(), self.cfg.pass_batch);
        while let Some(g) = groups.next_group(&acc, x, y, d) {
            let clean = if targeted {
                self.model.logits(&g.xs, dims)?
            } else {
                Vec::new()
            };
            let mut sub_rngs: Vec<&mut SampleRng> = rngs
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| acc[*i])
                .map(|(_, r)| r)
                .collect();
            let (mut tg, mut init) = (Vec::new(), Vec::new());
            for &target_rank in &runs[g.runs.clone()] {
                if targeted {
                    tg.extend((0..g.active.len()).map(|j| {
                        super::model::ranked_class(&clean[j * k..(j + 1) * k], target_rank - 1)
                    }));
                }
                init.extend(if self.cfg.use_largereps {
                    self.largereps_init(&g.xs, d, &mut sub_rngs)
                } else {
                    self.random_init(&g.xs, d, &mut sub_rngs)
                });
            }
            let (xg, yg) = (g.tile(&g.xs), g.tile(&g.ys));
            let run = if self.cfg.use_largereps {
                self.decr_eps(&xg, &yg, &tg, dims, init)?
            } else {
                self.single_run(
                    &xg,
                    &yg,
                    &tg,
                    dims,
                    init,
                    false,
                    self.cfg.eps,
                    self.cfg.n_iter,
                )?
            };
            for (row, _, i) in g.rows() {
                if !run.acc[row] && acc[i] {
                    acc[i] = false;
                    fooled[i] = true;
                    adv[i * d..(i + 1) * d]
                        .copy_from_slice(&run.x_best_adv[row * d..(row + 1) * d]);
                }
            }
        }
        Ok((adv, fooled))
    }

    /// The reference's random starting point (before clamping to the box).
    fn random_init(&self, xs: &[f32], d: usize, rngs: &mut [&mut SampleRng]) -> Vec<f32> {
        let eps = self.cfg.eps;
        let mut out = Vec::with_capacity(xs.len());
        for (j, rng) in rngs.iter_mut().enumerate() {
            let x = &xs[j * d..(j + 1) * d];
            match self.cfg.norm {
                Norm::Linf => {
                    let t: Vec<f32> = (0..d).map(|_| 2.0 * uniform(rng) - 1.0).collect();
                    let m = Norm::Linf.of(&t) + 1e-12;
                    out.extend(x.iter().zip(&t).map(|(a, b)| a + eps * b / m));
                }
                Norm::L2 => {
                    let t: Vec<f32> = (0..d).map(|_| normal(rng)).collect();
                    let m = Norm::L2.of(&t) + 1e-12;
                    out.extend(x.iter().zip(&t).map(|(a, b)| a + eps * b / m));
                }
                Norm::L1 => {
                    let t: Vec<f32> = (0..d).map(|_| normal(rng)).collect();
                    let p = l1_projection(x, &t, eps);
                    out.extend((0..d).map(|i| x[i] + t[i] + p[i]));
                }
            }
        }
        out
    }

    /// l1: eps 3e, 2e, e over ceil(0.3 n), ceil(0.3 n), the rest, each stage starting from
    /// the previous stage's best point projected onto the smaller ball.
    /// l1 with the decreasing-eps schedule: the reference's start, Gaussian noise projected
    /// onto the 3 eps ball.
    fn largereps_init(&self, xs: &[f32], d: usize, rngs: &mut [&mut SampleRng]) -> Vec<f32> {
        let e0 = 3.0 * self.cfg.eps;
        let mut x_init = Vec::with_capacity(xs.len());
        for (j, rng) in rngs.iter_mut().enumerate() {
            let x = &xs[j * d..(j + 1) * d];
            let t: Vec<f32> = (0..d).map(|_| normal(rng)).collect();
            let mut xi: Vec<f32> = x.iter().zip(&t).map(|(a, b)| a + b).collect();
            let y: Vec<f32> = xi.iter().zip(x).map(|(a, b)| a - b).collect();
            let p = l1_projection(x, &y, e0);
            xi.iter_mut().zip(&p).for_each(|(v, q)| *v += q);
            x_init.extend(xi);
        }
        x_init
    }

    /// l1: eps 3e, 2e, e over ceil(0.3 n), ceil(0.3 n), the rest, each stage starting from
    /// the previous stage's best point projected onto the smaller ball (`x_init` from
    /// [`largereps_init`](Self::largereps_init)).
    fn decr_eps(
        &mut self,
        xs: &[f32],
        ys: &[usize],
        targets: &[usize],
        dims: Dims,
        mut x_init: Vec<f32>,
    ) -> Result<Run> {
        let d = dims.len();
        let e = self.cfg.eps;
        let n_iter = self.cfg.n_iter;
        let epss = [3.0 * e, 2.0 * e, e];
        let a = (0.3f64 * n_iter as f64).ceil() as usize;
        let iters = [a, a, n_iter.saturating_sub(2 * a)];
        let mut last = None;
        for (&eps_s, &it_s) in epss.iter().zip(&iters) {
            for j in 0..ys.len() {
                let x = &xs[j * d..(j + 1) * d];
                let xi = &mut x_init[j * d..(j + 1) * d];
                let y: Vec<f32> = xi.iter().zip(x).map(|(a, b)| a - b).collect();
                let p = l1_projection(x, &y, eps_s);
                xi.iter_mut().zip(&p).for_each(|(v, q)| *v += q);
            }
            let run = self.single_run(xs, ys, targets, dims, x_init, true, eps_s, it_s.max(1))?;
            x_init = run.x_best.clone();
            last = Some(run);
        }
        last.ok_or_else(|| Error::Msg("apgd: empty eps schedule".into()))
    }

    fn grad_at(
        &mut self,
        x_adv: &[f32],
        ys: &[usize],
        targets: &[usize],
        dims: Dims,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let k = self.model.num_classes();
        let kind = self.cfg.loss;
        let mut losses = Vec::new();
        let (logits, grad) = self.model.logits_and_grad(x_adv, dims, &mut |z| {
            let (l, dz) = batch_loss(kind, z, k, ys, targets);
            losses = l;
            dz
        })?;
        Ok((logits, losses, grad))
    }

    #[allow(clippy::too_many_arguments)]
    fn single_run(
        &mut self,
        xs: &[f32],
        ys: &[usize],
        targets: &[usize],
        dims: Dims,
        init: Vec<f32>,
        given_init: bool,
        eps: f32,
        n_iter: usize,
    ) -> Result<Run> {
        if self.cfg.resident {
            return self.single_run_resident(xs, ys, targets, dims, init, given_init, eps, n_iter);
        }
        let d = dims.len();
        let n = ys.len();
        let k_cls = self.model.num_classes();
        let norm = self.cfg.norm;

        let mut x_adv: Vec<f32> = init.into_iter().map(|v| v.clamp(0.0, 1.0)).collect();
        let mut x_best = x_adv.clone();
        let mut x_best_adv = x_adv.clone();
        let mut loss_steps = vec![vec![0f32; n]; n_iter];

        let (logits, loss0, mut grad) = self.grad_at(&x_adv, ys, targets, dims)?;
        let mut grad_best = grad.clone();
        let mut acc: Vec<bool> = (0..n)
            .map(|j| argmax(&logits[j * k_cls..(j + 1) * k_cls]) == ys[j])
            .collect();
        let mut loss_best = loss0;
        let alpha = if norm == Norm::L1 { 1.0 } else { 2.0 };
        let mut step = vec![alpha * eps; n];
        let mut x_adv_old = x_adv.clone();
        let mut checkpoints = Checkpoints::new(self.cfg.n_iter, &loss_best);
        let mut sparsity = (norm == Norm::L1)
            .then(|| Sparsity::new(&x_adv, xs, d, given_init, n_iter, &mut checkpoints));

        for i in 0..n_iter {
            // Gradient step with momentum.
            let a = if i > 0 { 0.75f32 } else { 1.0 };
            let mut x_new = vec![0f32; n * d];
            // Per sample, in parallel (l1: a top-k selection and a projection each).
            x_new.par_chunks_mut(d).enumerate().for_each(|(j, out)| {
                let r = j * d..(j + 1) * d;
                let (xa, xo, g, x0) = (
                    &x_adv[r.clone()],
                    &x_adv_old[r.clone()],
                    &grad[r.clone()],
                    &xs[r.clone()],
                );
                match norm {
                    Norm::Linf | Norm::L2 => {
                        apgd_row_step(norm, xa, xo, g, x0, step[j], eps, a, out)
                    }
                    Norm::L1 => {
                        let topk = sparsity.as_ref().map_or(1.0, |sp| sp.topk[j]);
                        l1_sparse_step(xa, g, x0, step[j], topk, eps, out)
                    }
                }
            });
            x_adv_old = std::mem::replace(&mut x_adv, x_new);

            let (logits, loss, g) = self.grad_at(&x_adv, ys, targets, dims)?;
            grad = g;
            for j in 0..n {
                let pred = argmax(&logits[j * k_cls..(j + 1) * k_cls]) == ys[j];
                acc[j] &= pred;
                if !pred {
                    x_best_adv[j * d..(j + 1) * d].copy_from_slice(&x_adv[j * d..(j + 1) * d]);
                }
                loss_steps[i][j] = loss[j];
                if loss[j] > loss_best[j] {
                    x_best[j * d..(j + 1) * d].copy_from_slice(&x_adv[j * d..(j + 1) * d]);
                    grad_best[j * d..(j + 1) * d].copy_from_slice(&grad[j * d..(j + 1) * d]);
                    loss_best[j] = loss[j];
                }
            }

            if checkpoints.due() {
                let reset = match sparsity.as_mut() {
                    None => checkpoints.resets(&loss_steps, i, self.cfg.rho, &loss_best, &mut step),
                    Some(sp) => {
                        let l0: Vec<f32> = (0..n)
                            .map(|j| l0_dist(&x_best[j * d..(j + 1) * d], &xs[j * d..(j + 1) * d]))
                            .collect();
                        sp.checkpoint(&l0, &mut step, alpha * eps)
                    }
                };
                for (j, _) in reset.iter().enumerate().filter(|(_, r)| **r) {
                    {
                        let r = j * d..(j + 1) * d;
                        x_adv[r.clone()].copy_from_slice(&x_best[r.clone()]);
                        grad[r.clone()].copy_from_slice(&grad_best[r]);
                    }
                }
            }
        }
        Ok(Run {
            x_best,
            acc,
            x_best_adv,
        })
    }

    /// `single_run` for l-inf and l2 with its state in the model's input tensors: per
    /// iteration the step is one op on the device, only logits come back, and best points,
    /// fooled points and checkpoint resets move as row copies there. The per-sample decisions
    /// (losses, checkpoints, step sizes) and the step's arithmetic are the host loop's, so on
    /// the CPU the run is too (on a GPU the l2 norms' f64 sums run in another order).
    #[allow(clippy::too_many_arguments)]
    fn single_run_resident(
        &mut self,
        xs: &[f32],
        ys: &[usize],
        targets: &[usize],
        dims: Dims,
        init: Vec<f32>,
        given_init: bool,
        eps: f32,
        n_iter: usize,
    ) -> Result<Run> {
        let n = ys.len();
        let k_cls = self.model.num_classes();
        let kind = self.cfg.loss;
        let norm = self.cfg.norm;

        let x0 = self.model.input_tensor(xs, dims)?;
        let start: Vec<f32> = init.into_iter().map(|v| v.clamp(0.0, 1.0)).collect();
        let mut x_adv = self.model.input_tensor(&start, dims)?;
        let mut x_best = x_adv.clone();
        let mut x_best_adv = x_adv.clone();
        let mut loss_steps = vec![vec![0f32; n]; n_iter];
        let grad_at = |model: &mut dyn Classifier, x: &Tensor| {
            let mut losses = Vec::new();
            let (z, g) = model.logits_and_grad_of_input(x, dims, &mut |z| {
                let (l, dz) = batch_loss(kind, z, k_cls, ys, targets);
                losses = l;
                dz
            })?;
            Ok::<_, Error>((z, losses, g))
        };
        let (logits, loss0, mut grad) = grad_at(&mut *self.model, &x_adv)?;
        let mut grad_best = grad.clone();
        let mut acc: Vec<bool> = (0..n)
            .map(|j| argmax(&logits[j * k_cls..(j + 1) * k_cls]) == ys[j])
            .collect();
        let mut loss_best = loss0;
        let alpha = if norm == Norm::L1 { 1.0 } else { 2.0 };
        let mut step = vec![alpha * eps; n];
        let mut x_adv_old = x_adv.clone();
        let mut checkpoints = Checkpoints::new(self.cfg.n_iter, &loss_best);
        let mut sparsity = (norm == Norm::L1)
            .then(|| Sparsity::new(&start, xs, dims.len(), given_init, n_iter, &mut checkpoints));

        for i in 0..n_iter {
            let a = if i > 0 { 0.75f32 } else { 1.0 };
            let x_new = match &sparsity {
                Some(sp) => apgd_l1_step(&x_adv, &grad, &x0, &step, &sp.topk, eps)?,
                None => apgd_step(norm, &x_adv, &x_adv_old, &grad, &x0, &step, eps, a)?,
            };
            x_adv_old = std::mem::replace(&mut x_adv, x_new);

            let (logits, loss, g) = grad_at(&mut *self.model, &x_adv)?;
            grad = g;
            let (mut fooled_rows, mut improved_rows) = (Vec::new(), Vec::new());
            for j in 0..n {
                let pred = argmax(&logits[j * k_cls..(j + 1) * k_cls]) == ys[j];
                acc[j] &= pred;
                if !pred {
                    fooled_rows.extend([j as u32, j as u32]);
                }
                loss_steps[i][j] = loss[j];
                if loss[j] > loss_best[j] {
                    improved_rows.extend([j as u32, j as u32]);
                    loss_best[j] = loss[j];
                }
            }
            x_best_adv = copy_rows(&x_best_adv, &x_adv, &fooled_rows)?;
            x_best = copy_rows(&x_best, &x_adv, &improved_rows)?;
            grad_best = copy_rows(&grad_best, &grad, &improved_rows)?;

            if checkpoints.due() {
                let reset = match sparsity.as_mut() {
                    None => checkpoints.resets(&loss_steps, i, self.cfg.rho, &loss_best, &mut step),
                    Some(sp) => sp.checkpoint(&row_l0(&x_best, &x0)?, &mut step, alpha * eps),
                };
                let reset_rows: Vec<u32> = (0..n as u32)
                    .filter(|&j| reset[j as usize])
                    .flat_map(|j| [j, j])
                    .collect();
                x_adv = copy_rows(&x_adv, &x_best, &reset_rows)?;
                grad = copy_rows(&grad, &grad_best, &reset_rows)?;
            }
        }
        Ok(Run {
            x_best: self.model.input_to_host(&x_best, dims)?,
            acc,
            x_best_adv: self.model.input_to_host(&x_best_adv, dims)?,
        })
    }
}
