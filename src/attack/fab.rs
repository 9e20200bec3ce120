//! FAB-T: the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020,
//! arXiv:1907.02044) with AutoAttack's parameters: 100 iterations, alpha_max 0.1, eta 1.05,
//! beta 0.9, one restart per target, the 9 classes ranked 2nd..10th on the clean input.
//!
//! Each iteration linearises `f_t - f_y` at the current point, projects both the current
//! point and the original image onto that hyperplane within the box (`boundary::projection_*`,
//! exact minimum-norm projections, ported per row from the reference), and moves by a convex
//! combination biased towards the original image; once adversarial it records the point if
//! it is closer than the best so far and steps back towards the original (beta).

use super::boundary::ProjScratch;
use super::model::{argmax, ranked_class, Classifier, Dims};
use super::norms::Norm;
use super::resident::{copy_rows, fab_step, row_dist, shrink_rows};
use super::rng::{normal, sample_rng, uniform, SampleRng};
use super::row_steps::{fab_row_step, FabStep};
use super::schedule::RunGroups;
use crate::Result;
use rayon::prelude::*;

#[derive(Clone, Debug)]
pub struct FabConfig {
    pub norm: Norm,
    pub eps: f32,
    pub n_iter: usize,
    pub n_restarts: usize,
    pub n_target_classes: usize,
    pub alpha_max: f32,
    pub eta: f32,
    pub beta: f32,
    pub seed: u64,
    /// Most images in one model pass: runs (targets, restarts) that fit side by side share
    /// passes; results do not depend on it (see `ApgdConfig::pass_batch`).
    pub pass_batch: usize,
    /// Keep the iterates, originals, gradients and best points in the model's input tensors (on
    /// its device; `attack::resident`); same results as the host loop (false).
    pub resident: bool,
}

impl FabConfig {
    pub fn standard(norm: Norm, eps: f32, seed: u64) -> Self {
        FabConfig {
            norm,
            eps,
            n_iter: 100,
            n_restarts: 1,
            n_target_classes: 9,
            alpha_max: 0.1,
            eta: 1.05,
            beta: 0.9,
            seed,
            pass_batch: 0,
            resident: true,
        }
    }
}

impl From<&FabConfig> for FabStep {
    fn from(cfg: &FabConfig) -> Self {
        FabStep {
            norm: cfg.norm,
            eta: cfg.eta,
            alpha_max: cfg.alpha_max,
        }
    }
}

pub struct FabT<'m> {
    pub cfg: FabConfig,
    pub model: &'m mut dyn Classifier,
    pub stream: u64,
}

impl FabT<'_> {
    /// Same contract as `Apgd::perturb`: examples (clean where none found) and fooled flags
    /// (misclassified and within eps by the attack's own account).
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
        let n_targets = self.cfg.n_target_classes.min(k.saturating_sub(1));
        // (target rank, random start) per run, in the reference's order.
        let runs: Vec<(usize, bool)> = (2..n_targets + 2)
            .flat_map(|t| (0..self.cfg.n_restarts).map(move |r| (t, r > 0)))
            .collect();
        let mut groups = RunGroups::new(runs.len(), self.cfg.pass_batch);
        while let Some(g) = groups.next_group(&acc, x, y, d) {
            let (mut ranks, mut starts) = (Vec::new(), Vec::new());
            for &(target_rank, rand_start) in &runs[g.runs.clone()] {
                ranks.extend(std::iter::repeat_n(target_rank, g.active.len()));
                for &i in &g.active {
                    starts.push(rand_start.then(|| {
                        let rng = &mut rngs[i];
                        match self.cfg.norm {
                            Norm::Linf => (0..d).map(|_| 2.0 * uniform(rng) - 1.0).collect(),
                            _ => (0..d).map(|_| normal(rng)).collect(),
                        }
                    }));
                }
            }
            let cur = self.single_run(&g.tile(&g.xs), &g.tile(&g.ys), dims, &ranks, &starts)?;
            let z = self.model.logits(&cur, dims)?;
            for (row, j, i) in g.rows() {
                let a = &cur[row * d..(row + 1) * d];
                let still = argmax(&z[row * k..(row + 1) * k]) == g.ys[j];
                let far = self.cfg.norm.dist(a, &g.xs[j * d..(j + 1) * d]) > self.cfg.eps;
                if acc[i] && !(still || far) {
                    acc[i] = false;
                    fooled[i] = true;
                    adv[i * d..(i + 1) * d].copy_from_slice(a);
                }
            }
        }
        Ok((adv, fooled))
    }

    /// One FAB-T run per row: `target_ranks[j]` picks row j's target on its clean logits,
    /// `starts[j]` is its random start direction (None: start at the image).
    fn single_run(
        &mut self,
        x: &[f32],
        y: &[usize],
        dims: Dims,
        target_ranks: &[usize],
        starts: &[Option<Vec<f32>>],
    ) -> Result<Vec<f32>> {
        let d = dims.len();
        let k = self.model.num_classes();
        let cfg = self.cfg.clone();
        let z = self.model.logits(x, dims)?;
        let pred: Vec<usize> = (0..y.len())
            .filter(|&j| argmax(&z[j * k..(j + 1) * k]) == y[j])
            .collect();
        let mut adv_c = x.to_vec();
        if pred.is_empty() {
            return Ok(adv_c);
        }
        let bs = pred.len();
        let la2: Vec<usize> = pred.iter().map(|&j| y[j]).collect();
        let la_t: Vec<usize> = pred
            .iter()
            .map(|&j| ranked_class(&z[j * k..(j + 1) * k], target_ranks[j] - 1))
            .collect();
        let im2: Vec<f32> = pred
            .iter()
            .flat_map(|&j| x[j * d..(j + 1) * d].iter().copied())
            .collect();
        let mut res2 = vec![1e10f32; bs];
        let mut x1 = im2.clone();
        for (jj, &j) in pred.iter().enumerate() {
            if let Some(t) = &starts[j] {
                let scale = res2[jj].min(cfg.eps) / cfg.norm.of(t) * 0.5;
                for i in 0..d {
                    x1[jj * d + i] = (im2[jj * d + i] + scale * t[i]).clamp(0.0, 1.0);
                }
            }
        }
        let run = Targets { k, la2, la_t };
        let adv = if cfg.resident {
            self.iterate_resident(&run, &im2, x1, dims, &mut res2)?
        } else {
            self.iterate_host(&run, &im2, x1, dims, &mut res2)?
        };
        for (jj, &j) in pred.iter().enumerate() {
            if res2[jj] < 1e10 {
                adv_c[j * d..(j + 1) * d].copy_from_slice(&adv[jj * d..(jj + 1) * d]);
            }
        }
        Ok(adv_c)
    }

    /// FAB's iterations on the host: returns each row's closest adversarial point so far
    /// (`res2[j]` its distance, 1e10 where none was found).
    fn iterate_host(
        &mut self,
        run: &Targets,
        im2: &[f32],
        mut x1: Vec<f32>,
        dims: Dims,
        res2: &mut [f32],
    ) -> Result<Vec<f32>> {
        let (d, k, cfg) = (dims.len(), run.k, self.cfg.clone());
        let step = FabStep::from(&cfg);
        let mut adv = im2.to_vec();
        for _ in 0..cfg.n_iter {
            let (logits, g) = self
                .model
                .logits_and_grad(&x1, dims, &mut |_z| run.seed())?;
            // Per sample: both projections (a sort of d values each) and the step, in
            // parallel over samples, each worker reusing its buffers.
            x1.par_chunks_mut(d)
                .zip(im2.par_chunks(d))
                .zip(g.par_chunks(d))
                .enumerate()
                .for_each_init(
                    || (ProjScratch::default(), vec![0f32; d], vec![0f32; d]),
                    |(sc, d1, d2), (j, ((xr, ir), w))| {
                        fab_row_step(step, run.df(&logits, j), xr, ir, w, sc, d1, d2);
                    },
                );
            let z = self.model.logits(&x1, dims)?;
            for j in 0..res2.len() {
                if argmax(&z[j * k..(j + 1) * k]) != run.la2[j] {
                    let r = j * d..(j + 1) * d;
                    let t = cfg.norm.dist(&x1[r.clone()], &im2[r.clone()]);
                    if t < res2[j] {
                        adv[r.clone()].copy_from_slice(&x1[r.clone()]);
                        res2[j] = t;
                    }
                    for i in r {
                        x1[i] = im2[i] + (x1[i] - im2[i]) * cfg.beta;
                    }
                }
            }
        }
        Ok(adv)
    }

    /// `iterate_host` with the iterate, the originals, the gradients and the best points in
    /// the model's input tensors (`attack::resident`): per iteration only logits, boundary
    /// distances, distances and row lists cross to the host. Same decisions and, on the CPU,
    /// the same bits as the host loop.
    fn iterate_resident(
        &mut self,
        run: &Targets,
        im2: &[f32],
        x1: Vec<f32>,
        dims: Dims,
        res2: &mut [f32],
    ) -> Result<Vec<f32>> {
        let (k, cfg) = (run.k, self.cfg.clone());
        let im2d = self.model.input_tensor(im2, dims)?;
        let mut x1d = self.model.input_tensor(&x1, dims)?;
        let mut advd = im2d.clone();
        for _ in 0..cfg.n_iter {
            let (logits, g) = self
                .model
                .logits_and_grad_of_input(&x1d, dims, &mut |_z| run.seed())?;
            let df: Vec<f32> = (0..res2.len()).map(|j| run.df(&logits, j)).collect();
            x1d = fab_step(&x1d, &im2d, &g, &df, &cfg)?;
            let z = self.model.logits_of_input(&x1d, dims)?;
            let fooled: Vec<u32> = (0..res2.len())
                .filter(|&j| argmax(&z[j * k..(j + 1) * k]) != run.la2[j])
                .map(|j| j as u32)
                .collect();
            if fooled.is_empty() {
                continue;
            }
            let dist = row_dist(&x1d, &im2d, cfg.norm)?;
            let mut pairs = Vec::new();
            for &j in &fooled {
                let j = j as usize;
                if dist[j] < res2[j] {
                    pairs.extend([j as u32, j as u32]);
                    res2[j] = dist[j];
                }
            }
            advd = copy_rows(&advd, &x1d, &pairs)?;
            x1d = shrink_rows(&x1d, &im2d, &fooled, cfg.beta)?;
        }
        self.model.input_to_host(&advd, dims)
    }
}

/// The classes of one FAB-T run's rows: true (`la2`) and target (`la_t`), `k` classes.
struct Targets {
    k: usize,
    la2: Vec<usize>,
    la_t: Vec<usize>,
}

impl Targets {
    /// The backward seed of f_t - f_y for every row.
    fn seed(&self) -> Vec<f32> {
        let mut dz = vec![0f32; self.la2.len() * self.k];
        for j in 0..self.la2.len() {
            dz[j * self.k + self.la_t[j]] += 1.0;
            dz[j * self.k + self.la2[j]] -= 1.0;
        }
        dz
    }
    /// f_t - f_y of row `j` in `logits`.
    fn df(&self, logits: &[f32], j: usize) -> f32 {
        logits[j * self.k + self.la_t[j]] - logits[j * self.k + self.la2[j]]
    }
}
