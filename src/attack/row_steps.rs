//! The per-sample (row) arithmetic of the attacks' steps, shared by each host loop
//! (`apgd`, `fab`, `square`, rows in NCHW order) and by the CPU twin of its resident op
//! (`resident`, which hands each NHWC row over in NCHW order), so both give the same bits.
//! A leaf of the attack module: the attacks and `resident` use it; it uses neither.
//!
//! Dependency arrows (one way): `autoattack -> {apgd, fab, square, pgd} -> resident ->
//! row_steps -> {boundary, norms, rng, model::Dims}`; the attacks also use `row_steps`
//! directly.

use super::boundary::{dot, project_into, ProjScratch};
use super::model::Dims;
use super::norms::{l1_projection, linf_step, project_l2, sign_or_zero, Norm};
use super::rng::{below, sign, uniform, SampleRng};

/// APGD-L1's step for one sample (the reference's, without momentum): the `topk` fraction of
/// coordinates with the largest |g| (ties included) move by `step` in all along sign(g), then
/// the perturbation is projected onto the l1 ball of radius `eps` cut with the box
/// (`norms::l1_projection`): `out = x0 + du + dp`. Shared by the host loop and the CPU twin of
/// the resident step (`resident::apgd_l1_step`), so both give the same bits.
pub(crate) fn l1_sparse_step(
    xa: &[f32],
    g: &[f32],
    x0: &[f32],
    step: f32,
    topk: f32,
    eps: f32,
    out: &mut [f32],
) {
    let d = xa.len();
    let n_fts = d as f32;
    let mut mags: Vec<f32> = g.iter().map(|v| v.abs()).collect();
    let pos = (((1.0 - topk) * n_fts).clamp(0.0, n_fts - 1.0)) as usize;
    let (_, thr, _) = mags.select_nth_unstable_by(pos, |p, q| p.total_cmp(q));
    let thr = *thr;
    let s: Vec<f32> = g
        .iter()
        .map(|&v| if v.abs() >= thr { sign_or_zero(v) } else { 0.0 })
        .collect();
    let l1 = s.iter().map(|v| v.abs()).sum::<f32>() + 1e-10;
    let du: Vec<f32> = (0..d).map(|t| xa[t] + step * s[t] / l1 - x0[t]).collect();
    let dp = l1_projection(x0, &du, eps);
    for t in 0..d {
        out[t] = x0[t] + du[t] + dp[t];
    }
}

/// APGD's l-inf or l2 step with momentum `a` for one sample, the step of `Apgd`'s host loop and
/// of the CPU twin of the resident step (`resident::apgd_step`):
/// - l-inf, per element: `z1 = linf_step(x, x0, g, step, eps)` (the PGD step), then
///   `clip01(clip(x + (z1 - x) a + (x - x_old)(1 - a), x0 - eps, x0 + eps))`;
/// - l2: `z1 = P(x + step g / (||g|| + 1e-12))`, then `P(x + (z1 - x) a + (x - x_old)(1 - a))`,
///   `P` the projection onto the eps-ball around `x0` and the box (`norms::project_l2`).
///
/// l1 is `l1_sparse_step` (no momentum); here it is treated as l2 is not: callers route it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apgd_row_step(
    norm: Norm,
    xa: &[f32],
    xo: &[f32],
    g: &[f32],
    x0: &[f32],
    step: f32,
    eps: f32,
    a: f32,
    out: &mut [f32],
) {
    let d = xa.len();
    if norm == Norm::L2 {
        let gn = Norm::L2.of(g) + 1e-12;
        let mut z1: Vec<f32> = (0..d).map(|t| xa[t] + step * g[t] / gn).collect();
        project_l2(&mut z1, x0, eps);
        for t in 0..d {
            out[t] = xa[t] + (z1[t] - xa[t]) * a + (xa[t] - xo[t]) * (1.0 - a);
        }
        project_l2(out, x0, eps);
        return;
    }
    for (t, o) in out.iter_mut().enumerate() {
        let z1 = linf_step(xa[t], x0[t], g[t], step, eps);
        let mom = xa[t] - xo[t];
        *o = (xa[t] + (z1 - xa[t]) * a + mom * (1.0 - a))
            .max(x0[t] - eps)
            .min(x0[t] + eps)
            .clamp(0.0, 1.0);
    }
}

/// FAB's step parameters: the norm, the overshoot `eta` and the largest weight `alpha_max`
/// of the original image in the convex combination (`fab::FabConfig` converts into it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FabStep {
    pub norm: Norm,
    pub eta: f32,
    pub alpha_max: f32,
}

/// One FAB iteration for one row, in place on the iterate `xr`: both points (`xr` and the
/// original `ir`) projected onto the boundary linearised by `w` (the gradient of f_t - f_y at
/// `xr`) and `df` (f_t - f_y there), then the step biased towards the original image. Shared by
/// the host loop and the CPU twin of the resident step (`resident::fab_step`), so both give the
/// same bits. `d1`, `d2`: buffers of the row's length.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fab_row_step(
    cfg: FabStep,
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

/// The random part of one Square l2 / l1 candidate (one sample, one query), drawn from the
/// sample's stream in the reference's order: the corners of the window that receives the
/// mass (`w1`) and of the one that is emptied (`w2`), the transpose of the eta profile, one
/// sign per channel. `apply` makes the candidate on the host; the resident loop sends the
/// same draws to `resident::square_l2l1_candidates`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MassMove {
    pub s: usize,
    pub w1: (usize, usize),
    pub w2: (usize, usize),
    pub transpose: bool,
    /// One +-1 per channel.
    pub signs: Vec<f32>,
}

impl MassMove {
    pub fn draw(s: usize, dims: Dims, rng: &mut SampleRng) -> Self {
        let w1 = (below(rng, dims.h - s), below(rng, dims.w - s));
        let w2 = (below(rng, dims.h - s), below(rng, dims.w - s));
        // `eta`'s draw.
        let transpose = uniform(rng) > 0.5;
        let signs = (0..dims.c).map(|_| sign(rng)).collect();
        MassMove {
            s,
            w1,
            w2,
            transpose,
            signs,
        }
    }

    /// The candidate (NCHW row `out`) from the best point `xb` of the sample `xj`: in each
    /// channel, the window `w1` gets `eta * sign` plus its old content normalised, rescaled
    /// so that the channel keeps its share of the budget (the mass of both windows, plus the
    /// room left to eps spread over the channels); `w2` is emptied; then the perturbation is
    /// rescaled onto the eps-sphere (l2) or projected onto the l1 ball + box (l1) and the
    /// point clamped to [0, 1]. `profile` is `eta_profile(norm, s)`.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        norm: Norm,
        eps: f32,
        dims: Dims,
        profile: &[f32],
        xj: &[f32],
        xb: &[f32],
        out: &mut [f32],
    ) {
        let (c, h, w, d) = (dims.c, dims.h, dims.w, dims.len());
        let s = self.s;
        let w1 = Win {
            vh: self.w1.0,
            vw: self.w1.1,
            s,
        };
        let w2 = Win {
            vh: self.w2.0,
            vw: self.w2.1,
            s,
        };
        let eta = |r: usize, q: usize| {
            if self.transpose {
                profile[q * s + r]
            } else {
                profile[r * s + q]
            }
        };
        let mut delta: Vec<f32> = xb.iter().zip(xj).map(|(a, b)| a - b).collect();
        let l1 = norm == Norm::L1;
        let ni = norm.of(&delta);
        let mut new = vec![0f32; c * s * s];
        // The windows' bounding box, in raster order: the sums add the same terms in the
        // same order as a scan of the whole image would.
        let (r0, r1) = (w1.vh.min(w2.vh), w1.vh.max(w2.vh) + s);
        let (q0, q1) = (w1.vw.min(w2.vw), w1.vw.max(w2.vw) + s);
        for ch in 0..c {
            let sg = self.signs[ch];
            let (mut nw1, mut nws) = (0f32, 0f32);
            for r in r0..r1 {
                for q in q0..q1 {
                    let v = delta[(ch * h + r) * w + q];
                    let m = if l1 { v.abs() } else { v * v };
                    if w1.contains(r, q) {
                        nw1 += m;
                    }
                    if w1.contains(r, q) || w2.contains(r, q) {
                        nws += m;
                    }
                }
            }
            if !l1 {
                nw1 = nw1.sqrt();
                nws = nws.sqrt();
            }
            let nd = &mut new[ch * s * s..(ch + 1) * s * s];
            for r in 0..s {
                for q in 0..s {
                    let old = delta[(ch * h + w1.vh + r) * w + w1.vw + q];
                    nd[r * s + q] = eta(r, q) * sg + old / (1e-12 + nw1);
                }
            }
            let scale = if l1 {
                let t = Norm::L1.of(nd);
                ((eps - ni).max(0.0) / c as f32 + nws) * c as f32 / (1e-12 + t)
            } else {
                let t = Norm::L2.of(nd);
                ((eps * eps - ni * ni).max(0.0) / c as f32 + nws * nws).sqrt() / (1e-12 + t)
            };
            nd.iter_mut().for_each(|v| *v *= scale);
        }
        for ch in 0..c {
            for r in 0..s {
                for q in 0..s {
                    delta[(ch * h + w2.vh + r) * w + w2.vw + q] = 0.0;
                }
            }
            for r in 0..s {
                for q in 0..s {
                    delta[(ch * h + w1.vh + r) * w + w1.vw + q] = new[(ch * s + r) * s + q];
                }
            }
        }
        if l1 {
            // The projection keeps x + delta + r in the box in f64; the f32 sum can land a
            // rounding error outside it (the reference leaves it there). Clamping only
            // shortens the perturbation and keeps the example valid.
            let pr = l1_projection(xj, &delta, eps * (1.0 - 1e-6));
            for i in 0..d {
                out[i] = (xj[i] + delta[i] + pr[i]).clamp(0.0, 1.0);
            }
        } else {
            let t = Norm::L2.of(&delta) + 1e-12;
            for i in 0..d {
                out[i] = (xj[i] + delta[i] / t * eps).clamp(0.0, 1.0);
            }
        }
    }
}

/// A square window: top-left corner (`vh`, `vw`) and side `s`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Win {
    pub vh: usize,
    pub vw: usize,
    pub s: usize,
}

impl Win {
    pub fn contains(&self, r: usize, q: usize) -> bool {
        r >= self.vh && r < self.vh + self.s && q >= self.vw && q < self.vw + self.s
    }
}
