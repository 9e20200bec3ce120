//! FAB-T: the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020,
//! arXiv:1907.02044) with AutoAttack's parameters: 100 iterations, alpha_max 0.1, eta 1.05,
//! beta 0.9, one restart per target, the 9 classes ranked 2nd..10th on the clean input.
//!
//! Each iteration linearises `f_t - f_y` at the current point, projects both the current
//! point and the original image onto that hyperplane within the box (`projection_*`, exact
//! minimum-norm projections, ported per row from the reference), and moves by a convex
//! combination biased towards the original image; once adversarial it records the point if
//! it is closer than the best so far and steps back towards the original (beta).

use super::model::{argmax, ranked_class, Classifier, Dims};
use super::norms::Norm;
use super::radix::ArgSort;
use super::resident::{copy_rows, fab_step, row_dist, shrink_rows};
use super::rng::{normal, sample_rng, uniform, SampleRng};
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

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Reusable buffers of the projections (one per worker thread).
#[derive(Default, Clone, Debug)]
pub struct ProjScratch {
    w: Vec<f32>,
    a: Vec<f32>,
    d: Vec<f32>,
    p: Vec<f32>,
    s: Vec<f32>,
    sb: Vec<f32>,
    rs: Vec<f32>,
    rs2: Vec<f32>,
    ws: Vec<f32>,
    rank: Vec<u32>,
    sort: ArgSort,
}

fn refill(v: &mut Vec<f32>, it: impl Iterator<Item = f32>) {
    v.clear();
    v.extend(it);
}

/// Minimum l-inf step `d` taking `t` onto `{z: w.z = b}` within [0,1]^n.
pub fn projection_linf(t: &[f32], w0: &[f32], b0: f32) -> Vec<f32> {
    let mut out = vec![0f32; t.len()];
    projection_linf_into(t, w0, b0, &mut out, &mut ProjScratch::default());
    out
}

/// [`projection_linf`] into `out`, with reusable buffers.
pub fn projection_linf_into(t: &[f32], w0: &[f32], b0: f32, out: &mut [f32], sc: &mut ProjScratch) {
    let n = t.len();
    let ProjScratch {
        w,
        a,
        d,
        p,
        s,
        sb,
        sort,
        ..
    } = sc;
    let sign = if dot(w0, t) - b0 >= 0.0 { 1.0 } else { -1.0 };
    refill(w, w0.iter().map(|v| v * sign));
    let b = b0 * sign;
    refill(a, w.iter().map(|&v| (v < 0.0) as u8 as f32));
    let nz = |i: usize| (w[i] != 0.0) as u8 as f32;
    refill(d, (0..n).map(|i| (a[i] - t[i]) * nz(i)));
    refill(p, (0..n).map(|i| a[i] - t[i] * (2.0 * a[i] - 1.0)));
    let indp = sort.by_f32(p);
    let b = b - dot(w, t);
    let bz = dot(w, d);
    s.resize(n, 0.0);
    sb.resize(n, 0.0);
    let (mut cs, mut csb) = (0f32, 0f32);
    for j in 0..n {
        let i = indp[n - 1 - j] as usize;
        cs += w[i].abs();
        csb += -w[i] * d[i];
        s[j] = cs;
        sb[j] = csb + bz;
    }
    let b2 = sb[n - 1] - s[n - 1] * p[indp[0] as usize];
    let c_l = b - b2 > 0.0;
    let c2 = (b - bz > 0.0) && !c_l;
    let finite_or_zero = |v: f32| if v.is_finite() { v } else { 0.0 };
    if c_l {
        let l = finite_or_zero(((b - sb[n - 1]) / (-s[n - 1])).max(0.0));
        for i in 0..n {
            d[i] = (2.0 * a[i] - 1.0) * l;
        }
    } else if c2 {
        let (mut lb, mut ub) = (0f32, (n - 1) as f32);
        let nitermax = (n as f32).log2().ceil() as usize;
        for _ in 0..nitermax {
            let c4 = ((lb + ub) / 2.0).floor();
            let ci = c4 as usize;
            let ind = indp[n - 1 - ci] as usize;
            let b2 = sb[ci] - s[ci] * p[ind];
            if b - b2 > 0.0 {
                lb = c4;
            } else {
                ub = c4;
            }
        }
        let lb = lb as usize;
        let l = finite_or_zero(((b - sb[lb]) / (-s[lb])).max(0.0));
        for i in 0..n {
            d[i] = l.min(d[i]) * a[i] + (-l).max(d[i]) * (1.0 - a[i]);
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = d[i] * nz(i);
    }
}

/// Minimum l2 step taking `t` onto `{z: w.z = b}` within the box.
pub fn projection_l2(t: &[f32], w0: &[f32], b0: f32) -> Vec<f32> {
    let mut out = vec![0f32; t.len()];
    projection_l2_into(t, w0, b0, &mut out, &mut ProjScratch::default());
    out
}

/// [`projection_l2`] into `out`, with reusable buffers.
pub fn projection_l2_into(t: &[f32], w0: &[f32], b0: f32, out: &mut [f32], sc: &mut ProjScratch) {
    let n = t.len();
    let ProjScratch {
        w,
        a: r,
        d,
        s,
        rs,
        rs2,
        p: w3s,
        ws,
        sort,
        ..
    } = sc;
    let c0 = dot(w0, t) - b0;
    let sign = if c0 >= 0.0 { 1.0 } else { -1.0 };
    refill(w, w0.iter().map(|v| v * sign));
    let c = c0 * sign;
    let big = 1e12f32;
    refill(
        r,
        (0..n).map(|i| {
            if w[i].abs() < 1e-8 {
                return big;
            }
            let v = (t[i] / w[i]).max((t[i] - 1.0) / w[i]).clamp(-big, big);
            if v == -big {
                big
            } else {
                v
            }
        }),
    );
    let indr = sort.by_f32(r);
    refill(rs, indr.iter().map(|&i| r[i as usize]));
    refill(rs2, (0..n).map(|j| if j + 1 < n { rs[j + 1] } else { 0.0 }));
    rs.iter_mut().for_each(|v| {
        if *v == big {
            *v = 0.0
        }
    });
    rs2.iter_mut().for_each(|v| {
        if *v == big {
            *v = 0.0
        }
    });
    refill(w3s, indr.iter().map(|&i| w[i as usize] * w[i as usize]));
    let w5: f32 = w3s.iter().sum();
    ws.resize(n, 0.0);
    let mut acc = 0f32;
    for j in 0..n {
        acc += w3s[j];
        ws[j] = w5 - acc;
    }
    let mask = |i: usize| (w[i].abs() > 1e-8) as u8 as f32;
    refill(d, (0..n).map(|i| -(r[i] * w[i]) * mask(i)));
    s.resize(n + 1, 0.0);
    s[0] = -w5 * rs[0];
    let mut acc = 0f32;
    for j in 0..n {
        acc += (-rs2[j] + rs[j]) * ws[j];
        s[j + 1] = acc - w5 * rs[0];
    }
    let c4 = s[0] + c < 0.0;
    let c3 = dot(d, w) + c > 0.0;
    if c4 {
        let alpha = c / w5;
        for i in 0..n {
            d[i] = -alpha * w[i];
        }
    } else if !c3 {
        let (mut lb, mut ub) = (0f32, (n - 1) as f32);
        let nitermax = (n as f32).log2().ceil() as usize;
        for _ in 0..nitermax {
            let m = ((lb + ub) / 2.0).floor();
            if s[m as usize] + c > 0.0 {
                lb = m;
            } else {
                ub = m;
            }
        }
        let lb = lb as usize;
        let mut alpha = (s[lb] + c) / ws[lb] + rs[lb];
        if ws[lb] == 0.0 {
            alpha = 0.0;
        }
        for i in 0..n {
            if alpha <= r[i] {
                d[i] = -alpha * w[i];
            }
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = d[i] * mask(i);
    }
}

/// Minimum l1 step taking `t` onto `{z: w.z = b}` within the box.
pub fn projection_l1(t: &[f32], w0: &[f32], b0: f32) -> Vec<f32> {
    let mut out = vec![0f32; t.len()];
    projection_l1_into(t, w0, b0, &mut out, &mut ProjScratch::default());
    out
}

/// [`projection_l1`] into `out`, with reusable buffers.
pub fn projection_l1_into(t: &[f32], w0: &[f32], b0: f32, out: &mut [f32], sc: &mut ProjScratch) {
    let n = t.len();
    let ProjScratch {
        w,
        a: r,
        d,
        s,
        rank,
        sort,
        ..
    } = sc;
    let c0 = dot(w0, t) - b0;
    let sign = if c0 >= 0.0 { 1.0 } else { -1.0 };
    refill(w, w0.iter().map(|v| v * sign));
    let c = c0 * sign;
    refill(r, w.iter().map(|v| (1.0 / v).abs().min(1e12)));
    let indr = sort.by_f32(r);
    rank.resize(n, 0);
    for (j, &i) in indr.iter().enumerate() {
        rank[i as usize] = j as u32;
    }
    refill(
        d,
        (0..n).map(|i| (-t[i] + (w[i] < 0.0) as u8 as f32) * (w[i] != 0.0) as u8 as f32),
    );
    s.resize(n + 1, 0.0);
    s[0] = c;
    for j in 0..n {
        let i = indr[j] as usize;
        s[j + 1] = s[j] + (-w[i] * t[i]).min(w[i] * (1.0 - t[i]));
    }
    if s[n] < 0.0 {
        let (mut lb, mut ub) = (0f32, (n + 1) as f32);
        let nitermax = (n as f32).log2().ceil() as usize;
        for _ in 0..nitermax {
            let m = ((lb + ub) / 2.0).floor();
            if s[m as usize] > 0.0 {
                lb = m;
            } else {
                ub = m;
            }
        }
        let lb2 = (lb as usize).min(n - 1);
        let ind = indr[lb2] as usize;
        let alpha = -s[lb2] / w[ind];
        for i in 0..n {
            if rank[i] as usize >= lb2 {
                d[i] = 0.0;
            }
        }
        d[ind] = alpha;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = if w[i].abs() > 1e-8 { d[i] } else { 0.0 };
    }
}

/// The projection of `norm` into `out`.
pub fn project_into(
    norm: Norm,
    t: &[f32],
    w: &[f32],
    b: f32,
    out: &mut [f32],
    sc: &mut ProjScratch,
) {
    match norm {
        Norm::Linf => projection_linf_into(t, w, b, out, sc),
        Norm::L2 => projection_l2_into(t, w, b, out, sc),
        Norm::L1 => projection_l1_into(t, w, b, out, sc),
    }
}

#[cfg(test)]
fn project(norm: Norm, t: &[f32], w: &[f32], b: f32) -> Vec<f32> {
    let mut out = vec![0f32; t.len()];
    project_into(norm, t, w, b, &mut out, &mut ProjScratch::default());
    out
}

/// One FAB iteration for one row, in place on the iterate `xr`: both points (`xr` and the
/// original `ir`) projected onto the boundary linearised by `w` (the gradient of f_t - f_y at
/// `xr`) and `df` (f_t - f_y there), then the step biased towards the original image. Shared by
/// the host loop and the CPU twin of the resident step (`resident::fab_step`), so both give the
/// same bits. `d1`, `d2`: buffers of the row's length.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fab_row_step(
    cfg: &FabConfig,
    df: f32,
    xr: &mut [f32],
    ir: &[f32],
    w: &[f32],
    sc: &mut ProjScratch,
    d1: &mut [f32],
    d2: &mut [f32],
) {
    let (norm, eta, alpha_max) = (cfg.norm, cfg.eta, cfg.alpha_max);
    let b = -df + dot(w, xr);
    project_into(norm, xr, w, b, d1, sc);
    project_into(norm, ir, w, b, d2, sc);
    let a1 = norm.of(d1).max(1e-8);
    let a2 = norm.of(d2).max(1e-8);
    let alpha = (a1 / (a1 + a2)).max(0.0).min(alpha_max);
    for (i, xv) in xr.iter_mut().enumerate() {
        *xv = ((*xv + eta * d1[i]) * (1.0 - alpha) + (ir[i] + d2[i] * eta) * alpha).clamp(0.0, 1.0);
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
                        fab_row_step(&cfg, run.df(&logits, j), xr, ir, w, sc, d1, d2);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every projection lands on the hyperplane (or as close as the box allows) and in the box.
    #[test]
    fn projections_reach_the_hyperplane_in_the_box() {
        let n = 40;
        let t: Vec<f32> = (0..n).map(|i| ((i * 37) % 100) as f32 / 100.0).collect();
        let w: Vec<f32> = (0..n).map(|i| ((i * 13) % 7) as f32 - 3.0).collect();
        let b = dot(&w, &t) + 2.5;
        for norm in [Norm::Linf, Norm::L2, Norm::L1] {
            let d = project(norm, &t, &w, b);
            let z: Vec<f32> = t.iter().zip(&d).map(|(a, b)| a + b).collect();
            assert!(
                z.iter().all(|v| (-1e-5..=1.0 + 1e-5).contains(v)),
                "{norm}: outside the box"
            );
            let got = dot(&w, &z);
            assert!((got - b).abs() < 1e-3, "{norm}: w.z = {got}, b = {b}");
        }
    }

    /// Buffers reused across calls of every norm and size give the fresh-buffer result, bit
    /// for bit (the batched FAB loop reuses one scratch per worker).
    #[test]
    fn reused_scratch_gives_identical_projections() {
        let mut sc = ProjScratch::default();
        for (round, n) in [300usize, 40, 3072, 7, 300].into_iter().enumerate() {
            let t: Vec<f32> = (0..n)
                .map(|i| ((i * 37 + round) % 256) as f32 / 255.0)
                .collect();
            let w: Vec<f32> = (0..n)
                .map(|i| ((i * 13 + 5 * round) % 11) as f32 - 5.0)
                .collect();
            for off in [-40.0f32, 2.5, 300.0] {
                let b = dot(&w, &t) + off;
                for norm in [Norm::Linf, Norm::L2, Norm::L1] {
                    let mut out = vec![f32::NAN; n];
                    project_into(norm, &t, &w, b, &mut out, &mut sc);
                    let fresh = project(norm, &t, &w, b);
                    assert!(
                        out.iter()
                            .zip(&fresh)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{norm} n {n} offset {off}"
                    );
                }
            }
        }
    }
}
