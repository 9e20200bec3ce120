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
use super::rng::{normal, sample_rng, uniform, SampleRng};
use crate::Result;

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
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn argsort(v: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    idx
}

/// Minimum l-inf step `d` taking `t` onto `{z: w.z = b}` within [0,1]^n.
pub fn projection_linf(t: &[f32], w0: &[f32], b0: f32) -> Vec<f32> {
    let n = t.len();
    let sign = if dot(w0, t) - b0 >= 0.0 { 1.0 } else { -1.0 };
    let w: Vec<f32> = w0.iter().map(|v| v * sign).collect();
    let b = b0 * sign;
    let a: Vec<f32> = w.iter().map(|&v| (v < 0.0) as u8 as f32).collect();
    let nz = |i: usize| (w[i] != 0.0) as u8 as f32;
    let mut d: Vec<f32> = (0..n).map(|i| (a[i] - t[i]) * nz(i)).collect();
    let p: Vec<f32> = (0..n).map(|i| a[i] - t[i] * (2.0 * a[i] - 1.0)).collect();
    let indp = argsort(&p);
    let b = b - dot(&w, t);
    let bz = dot(&w, &d);
    let mut s = vec![0f32; n];
    let mut sb = vec![0f32; n];
    let (mut cs, mut csb) = (0f32, 0f32);
    for j in 0..n {
        let i = indp[n - 1 - j];
        cs += w[i].abs();
        csb += -w[i] * d[i];
        s[j] = cs;
        sb[j] = csb + bz;
    }
    let b2 = sb[n - 1] - s[n - 1] * p[indp[0]];
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
            let ind = indp[n - 1 - ci];
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
    (0..n).map(|i| d[i] * nz(i)).collect()
}

/// Minimum l2 step taking `t` onto `{z: w.z = b}` within the box.
pub fn projection_l2(t: &[f32], w0: &[f32], b0: f32) -> Vec<f32> {
    let n = t.len();
    let c0 = dot(w0, t) - b0;
    let sign = if c0 >= 0.0 { 1.0 } else { -1.0 };
    let w: Vec<f32> = w0.iter().map(|v| v * sign).collect();
    let c = c0 * sign;
    let big = 1e12f32;
    let r: Vec<f32> = (0..n)
        .map(|i| {
            if w[i].abs() < 1e-8 {
                return big;
            }
            let v = (t[i] / w[i]).max((t[i] - 1.0) / w[i]).clamp(-big, big);
            if v == -big {
                big
            } else {
                v
            }
        })
        .collect();
    let indr = argsort(&r);
    let mut rs: Vec<f32> = indr.iter().map(|&i| r[i]).collect();
    let mut rs2: Vec<f32> = (0..n)
        .map(|j| if j + 1 < n { rs[j + 1] } else { 0.0 })
        .collect();
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
    let w3s: Vec<f32> = indr.iter().map(|&i| w[i] * w[i]).collect();
    let w5: f32 = w3s.iter().sum();
    let mut ws = vec![0f32; n];
    let mut acc = 0f32;
    for j in 0..n {
        acc += w3s[j];
        ws[j] = w5 - acc;
    }
    let mask = |i: usize| (w[i].abs() > 1e-8) as u8 as f32;
    let mut d: Vec<f32> = (0..n).map(|i| -(r[i] * w[i]) * mask(i)).collect();
    let mut s = vec![0f32; n + 1];
    s[0] = -w5 * rs[0];
    let mut acc = 0f32;
    for j in 0..n {
        acc += (-rs2[j] + rs[j]) * ws[j];
        s[j + 1] = acc - w5 * rs[0];
    }
    let c4 = s[0] + c < 0.0;
    let c3 = dot(&d, &w) + c > 0.0;
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
    (0..n).map(|i| d[i] * mask(i)).collect()
}

/// Minimum l1 step taking `t` onto `{z: w.z = b}` within the box.
pub fn projection_l1(t: &[f32], w0: &[f32], b0: f32) -> Vec<f32> {
    let n = t.len();
    let c0 = dot(w0, t) - b0;
    let sign = if c0 >= 0.0 { 1.0 } else { -1.0 };
    let w: Vec<f32> = w0.iter().map(|v| v * sign).collect();
    let c = c0 * sign;
    let r: Vec<f32> = w.iter().map(|v| (1.0 / v).abs().min(1e12)).collect();
    let indr = argsort(&r);
    let mut rank = vec![0usize; n];
    for (j, &i) in indr.iter().enumerate() {
        rank[i] = j;
    }
    let mut d: Vec<f32> = (0..n)
        .map(|i| (-t[i] + (w[i] < 0.0) as u8 as f32) * (w[i] != 0.0) as u8 as f32)
        .collect();
    let mut s = vec![0f32; n + 1];
    s[0] = c;
    for j in 0..n {
        let i = indr[j];
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
        let ind = indr[lb2];
        let alpha = -s[lb2] / w[ind];
        for i in 0..n {
            if rank[i] >= lb2 {
                d[i] = 0.0;
            }
        }
        d[ind] = alpha;
    }
    (0..n)
        .map(|i| if w[i].abs() > 1e-8 { d[i] } else { 0.0 })
        .collect()
}

fn project(norm: Norm, t: &[f32], w: &[f32], b: f32) -> Vec<f32> {
    match norm {
        Norm::Linf => projection_linf(t, w, b),
        Norm::L2 => projection_l2(t, w, b),
        Norm::L1 => projection_l1(t, w, b),
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
        for target_rank in 2..n_targets + 2 {
            for restart in 0..self.cfg.n_restarts {
                let active: Vec<usize> = (0..n).filter(|&i| acc[i]).collect();
                if active.is_empty() {
                    break;
                }
                let xs: Vec<f32> = active
                    .iter()
                    .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
                    .collect();
                let ys: Vec<usize> = active.iter().map(|&i| y[i]).collect();
                let mut sub: Vec<&mut SampleRng> = rngs
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| acc[*i])
                    .map(|(_, r)| r)
                    .collect();
                let cur = self.single_run(&xs, &ys, dims, target_rank, restart > 0, &mut sub)?;
                let z = self.model.logits(&cur, dims)?;
                for (j, &i) in active.iter().enumerate() {
                    let a = &cur[j * d..(j + 1) * d];
                    let still = argmax(&z[j * k..(j + 1) * k]) == ys[j];
                    let far = self.cfg.norm.dist(a, &xs[j * d..(j + 1) * d]) > self.cfg.eps;
                    if !(still || far) {
                        acc[i] = false;
                        fooled[i] = true;
                        adv[i * d..(i + 1) * d].copy_from_slice(a);
                    }
                }
            }
        }
        Ok((adv, fooled))
    }

    fn single_run(
        &mut self,
        x: &[f32],
        y: &[usize],
        dims: Dims,
        target_rank: usize,
        rand_start: bool,
        rngs: &mut [&mut SampleRng],
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
            .map(|&j| ranked_class(&z[j * k..(j + 1) * k], target_rank - 1))
            .collect();
        let im2: Vec<f32> = pred
            .iter()
            .flat_map(|&j| x[j * d..(j + 1) * d].iter().copied())
            .collect();
        let mut adv = im2.clone();
        let mut res2 = vec![1e10f32; bs];
        let mut x1 = im2.clone();
        if rand_start {
            for (jj, &j) in pred.iter().enumerate() {
                let rng = &mut *rngs[j];
                let t: Vec<f32> = match cfg.norm {
                    Norm::Linf => (0..d).map(|_| 2.0 * uniform(rng) - 1.0).collect(),
                    _ => (0..d).map(|_| normal(rng)).collect(),
                };
                let scale = res2[jj].min(cfg.eps) / cfg.norm.of(&t) * 0.5;
                for i in 0..d {
                    x1[jj * d + i] = (im2[jj * d + i] + scale * t[i]).clamp(0.0, 1.0);
                }
            }
        }
        for _ in 0..cfg.n_iter {
            let (logits, g) = self.model.logits_and_grad(&x1, dims, &mut |_z| {
                let mut dz = vec![0f32; bs * k];
                for j in 0..bs {
                    dz[j * k + la_t[j]] += 1.0;
                    dz[j * k + la2[j]] -= 1.0;
                }
                dz
            })?;
            for j in 0..bs {
                let r = j * d..(j + 1) * d;
                let df = logits[j * k + la_t[j]] - logits[j * k + la2[j]];
                let w = &g[r.clone()];
                let b = -df + dot(w, &x1[r.clone()]);
                let d1 = project(cfg.norm, &x1[r.clone()], w, b);
                let d2 = project(cfg.norm, &im2[r.clone()], w, b);
                let a1 = cfg.norm.of(&d1).max(1e-8);
                let a2 = cfg.norm.of(&d2).max(1e-8);
                let alpha = (a1 / (a1 + a2)).max(0.0).min(cfg.alpha_max);
                for (i, t) in r.enumerate() {
                    x1[t] = ((x1[t] + cfg.eta * d1[i]) * (1.0 - alpha)
                        + (im2[t] + d2[i] * cfg.eta) * alpha)
                        .clamp(0.0, 1.0);
                }
            }
            let z = self.model.logits(&x1, dims)?;
            for j in 0..bs {
                if argmax(&z[j * k..(j + 1) * k]) != la2[j] {
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
        for (jj, &j) in pred.iter().enumerate() {
            if res2[jj] < 1e10 {
                adv_c[j * d..(j + 1) * d].copy_from_slice(&adv[jj * d..(jj + 1) * d]);
            }
        }
        Ok(adv_c)
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
}
