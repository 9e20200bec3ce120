//! Attack state that stays where the model runs. An attack whose iterates live in the model's
//! input tensors (NHWC, on the model's device: `Classifier::input_tensor`) updates them here,
//! so a GPU pass moves only per-sample scalars (window positions, signs, row lists) over PCIe
//! instead of the whole batch. Each op has a CPU twin below with the same arithmetic; the GPU
//! versions are `cuda::ops::{square_linf_candidates, copy_rows, apgd_step, row_l0}`
//! (kernels/attack_rows.cu), `cuda::ops::square_l2l1_candidates` (kernels/square_rows.cu)
//! and `cuda::ops::apgd_l1_step` (kernels/pgd_step.cu).

use super::boundary::ProjScratch;
use super::model::Dims;
use super::norms::{l0_dist, Norm};
use super::row_steps::{apgd_row_step, fab_row_step, l1_sparse_step, FabStep, MassMove};
use crate::tensor::Tensor;
use crate::{Error, Result};
use rayon::prelude::*;

/// One Square l-inf proposal per attacked row: the window's top-left corner, its side and
/// one sign per channel.
#[derive(Clone, Debug, Default)]
pub struct SquareProposals {
    /// Row of `best` / `x` each candidate starts from.
    pub rows: Vec<u32>,
    pub vh: Vec<u32>,
    pub vw: Vec<u32>,
    /// Window side (the same for every row of one iteration).
    pub s: u32,
    /// `[rows.len(), C]`, each +-1.
    pub signs: Vec<f32>,
}

fn nhwc(op: &'static str, t: &Tensor) -> Result<(usize, usize, usize, usize)> {
    match *t.shape() {
        [n, h, w, c] => Ok((n, h, w, c)),
        _ => Err(Error::shape(
            op,
            format!("expected an (N, H, W, C) batch, got {:?}", t.shape()),
        )),
    }
}

/// Square (l-inf) candidates: row `a` is row `p.rows[a]` of `best` with, inside its window,
/// every channel moved by `2 eps sign` and clipped to the eps-ball around `x` and to [0, 1].
pub fn square_linf_candidates(
    best: &Tensor,
    x: &Tensor,
    p: &SquareProposals,
    eps: f32,
) -> Result<Tensor> {
    let op = "square_linf_candidates";
    let (n, h, w, c) = nhwc(op, best)?;
    let na = p.rows.len();
    if x.shape() != best.shape()
        || p.vh.len() != na
        || p.vw.len() != na
        || p.signs.len() != na * c
        || p.rows.iter().any(|&r| r as usize >= n)
        || p.s as usize > h.min(w)
        || p.vh.iter().any(|&v| v as usize + p.s as usize > h)
        || p.vw.iter().any(|&v| v as usize + p.s as usize > w)
    {
        return Err(Error::shape(
            op,
            format!(
                "best {:?}, x {:?}, {na} rows (max {}), {} vh, {} vw, {} signs, window {}",
                best.shape(),
                x.shape(),
                p.rows.iter().max().copied().unwrap_or(0),
                p.vh.len(),
                p.vw.len(),
                p.signs.len(),
                p.s
            ),
        ));
    }
    if best.is_cuda() {
        return crate::cuda::ops::square_linf_candidates(
            best, x, &p.rows, &p.vh, &p.vw, p.s, &p.signs, eps,
        );
    }
    let d = h * w * c;
    let (bv, xv) = (best.data(), x.data());
    let s = p.s as usize;
    let mut out = Vec::with_capacity(na * d);
    for a in 0..na {
        let r0 = p.rows[a] as usize * d;
        let start = out.len();
        out.extend_from_slice(&bv[r0..r0 + d]);
        let row = &mut out[start..];
        let (vh, vw) = (p.vh[a] as usize, p.vw[a] as usize);
        for ch in 0..c {
            let v = 2.0 * eps * p.signs[a * c + ch];
            for r in vh..vh + s {
                for q in vw..vw + s {
                    let i = (r * w + q) * c + ch;
                    let xi = xv[r0 + i];
                    row[i] = (bv[r0 + i] + v).max(xi - eps).min(xi + eps).clamp(0.0, 1.0);
                }
            }
        }
    }
    Tensor::from_vec(&[na, h, w, c], out)
}

/// Square l2 / l1 proposals for one query, one per attacked row (the draws of
/// `row_steps::MassMove`, as arrays), and the query's eta profile.
#[derive(Clone, Debug, Default)]
pub struct SquareMoves {
    /// Row of `best` / `x` each candidate starts from.
    pub rows: Vec<u32>,
    /// Top-left corner of the window that gets the mass (`w1`).
    pub vh1: Vec<u32>,
    pub vw1: Vec<u32>,
    /// Top-left corner of the window that is emptied (`w2`).
    pub vh2: Vec<u32>,
    pub vw2: Vec<u32>,
    /// Whether the row's profile is transposed.
    pub transpose: Vec<bool>,
    /// Window side (the same for every row of one query).
    pub s: u32,
    /// `[s, s]` row-major: `square::eta_profile(norm, s)`.
    pub profile: Vec<f32>,
    /// `[rows.len(), C]`, each +-1.
    pub signs: Vec<f32>,
}

impl SquareMoves {
    /// No rows yet, window side `s` with its `profile`.
    pub fn new(s: usize, profile: Vec<f32>) -> Self {
        SquareMoves {
            s: s as u32,
            profile,
            ..Default::default()
        }
    }

    pub(crate) fn push(&mut self, row: usize, m: &MassMove) {
        self.rows.push(row as u32);
        self.vh1.push(m.w1.0 as u32);
        self.vw1.push(m.w1.1 as u32);
        self.vh2.push(m.w2.0 as u32);
        self.vw2.push(m.w2.1 as u32);
        self.transpose.push(m.transpose);
        self.signs.extend_from_slice(&m.signs);
    }

    fn get(&self, a: usize, c: usize) -> MassMove {
        MassMove {
            s: self.s as usize,
            w1: (self.vh1[a] as usize, self.vw1[a] as usize),
            w2: (self.vh2[a] as usize, self.vw2[a] as usize),
            transpose: self.transpose[a],
            signs: self.signs[a * c..(a + 1) * c].to_vec(),
        }
    }
}

/// Square l2 / l1 candidates: row `a` is the candidate that `square::MassMove::apply` makes
/// from row `p.rows[a]` of `best` and of the clean `x` with the draws of row `a`: the mass
/// of both windows moved into `w1` along the eta profile, `w2` emptied, the perturbation put
/// back on the eps-sphere (l2) or projected onto the l1 ball cut with the box (l1), clamped to
/// [0, 1]. The CPU twin runs `apply` on each row in its NCHW order, so the bits are the host
/// loop's (its f64 sums and the l1 projection's sort follow the coordinates' order); the GPU
/// version is `cuda::ops::square_l2l1_candidates` (same element arithmetic; f64 norm sums in
/// another order; l1: lambda by a bracketed search instead of a sort).
pub fn square_l2l1_candidates(
    best: &Tensor,
    x: &Tensor,
    p: &SquareMoves,
    norm: Norm,
    eps: f32,
) -> Result<Tensor> {
    let op = "square_l2l1_candidates";
    if norm == Norm::Linf {
        return Err(Error::Msg(format!(
            "{op}: l-inf candidates are square_linf_candidates"
        )));
    }
    let (n, h, w, c) = nhwc(op, best)?;
    let na = p.rows.len();
    let s = p.s as usize;
    let fits = |v: &[u32], side: usize| v.len() == na && v.iter().all(|&v| v as usize + s <= side);
    if x.shape() != best.shape()
        || s == 0
        || !fits(&p.vh1, h)
        || !fits(&p.vw1, w)
        || !fits(&p.vh2, h)
        || !fits(&p.vw2, w)
        || p.transpose.len() != na
        || p.signs.len() != na * c
        || p.profile.len() != s * s
        || p.rows.iter().any(|&r| r as usize >= n)
    {
        return Err(Error::shape(
            op,
            format!(
                "best {:?}, x {:?}, {na} rows (max {}), window {s} (profile of {}), corners \
                 {}/{}/{}/{} (max {:?}), {} transpose flags, {} signs",
                best.shape(),
                x.shape(),
                p.rows.iter().max().copied().unwrap_or(0),
                p.profile.len(),
                p.vh1.len(),
                p.vw1.len(),
                p.vh2.len(),
                p.vw2.len(),
                [&p.vh1, &p.vw1, &p.vh2, &p.vw2].map(|v| v.iter().max().copied().unwrap_or(0)),
                p.transpose.len(),
                p.signs.len()
            ),
        ));
    }
    if best.is_cuda() {
        return crate::cuda::ops::square_l2l1_candidates(
            best,
            x,
            &p.rows,
            [&p.vh1, &p.vw1, &p.vh2, &p.vw2],
            &p.transpose,
            p.s,
            &p.profile,
            &p.signs,
            norm == Norm::L1,
            eps,
        );
    }
    let d = h * w * c;
    let dims = Dims { c, h, w };
    let (bv, xv) = (best.data(), x.data());
    let mut out = vec![0f32; na * d];
    out.par_chunks_mut(d.max(1))
        .enumerate()
        .for_each(|(a, row)| {
            let j = p.rows[a] as usize;
            let (xr, br) = (nchw_row(xv, j, (h, w, c)), nchw_row(bv, j, (h, w, c)));
            let mut o = vec![0f32; d];
            p.get(a, c)
                .apply(norm, eps, dims, &p.profile, &xr, &br, &mut o);
            put_nchw_row(row, o, (h, w, c));
        });
    Tensor::from_vec(&[na, h, w, c], out)
}

/// `dst` with rows replaced, `out[pairs[2p]] = src[pairs[2p + 1]]`; `dst` itself is unchanged.
pub fn copy_rows(dst: &Tensor, src: &Tensor, pairs: &[u32]) -> Result<Tensor> {
    let op = "copy_rows";
    let (n, ..) = nhwc(op, dst)?;
    let (m, ..) = nhwc(op, src)?;
    let ok = pairs.len() % 2 == 0
        && dst.shape()[1..] == src.shape()[1..]
        && pairs
            .chunks(2)
            .all(|p| (p[0] as usize) < n && (p[1] as usize) < m);
    if !ok {
        return Err(Error::shape(
            op,
            format!(
                "dst {:?}, src {:?}, {} pair values",
                dst.shape(),
                src.shape(),
                pairs.len()
            ),
        ));
    }
    if pairs.is_empty() {
        return Ok(dst.clone());
    }
    if dst.is_cuda() {
        return crate::cuda::ops::copy_rows(dst, src, pairs);
    }
    let d = dst.numel() / n.max(1);
    let mut out = dst.clone();
    let sv = src.data();
    let ov = out.data_mut();
    for p in pairs.chunks(2) {
        let (to, from) = (p[0] as usize * d, p[1] as usize * d);
        ov[to..to + d].copy_from_slice(&sv[from..from + d]);
    }
    Ok(out)
}

/// APGD's step with momentum `a` for `norm` (l-inf or l2) on NHWC batches: row `j` is
/// `row_steps::apgd_row_step` with `step[j]` (the host loop's function; l-inf works per
/// element, so NHWC order gives the same bits; l2's norm sums follow NHWC order here).
#[allow(clippy::too_many_arguments)]
pub fn apgd_step(
    norm: Norm,
    x_adv: &Tensor,
    x_old: &Tensor,
    grad: &Tensor,
    x0: &Tensor,
    step: &[f32],
    eps: f32,
    a: f32,
) -> Result<Tensor> {
    let op = "apgd_step";
    if norm == Norm::L1 {
        return Err(Error::Msg(format!(
            "{op}: the l1 step (top-k, l1-ball projection) runs on the host"
        )));
    }
    let (n, ..) = nhwc(op, x_adv)?;
    if [x_old, grad, x0].iter().any(|t| t.shape() != x_adv.shape()) || step.len() != n {
        return Err(Error::shape(
            op,
            format!(
                "x {:?}, x_old {:?}, grad {:?}, x0 {:?}, {} step sizes",
                x_adv.shape(),
                x_old.shape(),
                grad.shape(),
                x0.shape(),
                step.len()
            ),
        ));
    }
    if x_adv.is_cuda() {
        return crate::cuda::ops::apgd_step(norm == Norm::L2, x_adv, x_old, grad, x0, step, eps, a);
    }
    let d = x_adv.numel() / n.max(1);
    let (xa, xo, g, x0) = (x_adv.data(), x_old.data(), grad.data(), x0.data());
    let mut out = vec![0f32; xa.len()];
    out.par_chunks_mut(d.max(1))
        .enumerate()
        .for_each(|(j, row)| {
            let r = j * d..(j + 1) * d;
            let (xa, xo, g, x0) = (&xa[r.clone()], &xo[r.clone()], &g[r.clone()], &x0[r]);
            apgd_row_step(norm, xa, xo, g, x0, step[j], eps, a, row);
        });
    Tensor::from_vec(x_adv.shape(), out)
}

/// APGD-L1's step on NHWC batches: row `j` is `row_steps::l1_sparse_step` with `step[j]` and the
/// top-k fraction `topk[j]` (no momentum, as the reference). The CPU twin runs the host loop's
/// function on each row in its NCHW order, so the bits are the host loop's (the l1 projection's
/// f64 sums follow the coordinates' order); the GPU version is `cuda::ops::apgd_l1_step` (the
/// PGD l1 kernels: same step, lambda by a bracketed search instead of a sort).
pub fn apgd_l1_step(
    x_adv: &Tensor,
    grad: &Tensor,
    x0: &Tensor,
    step: &[f32],
    topk: &[f32],
    eps: f32,
) -> Result<Tensor> {
    let op = "apgd_l1_step";
    let (n, ..) = nhwc(op, x_adv)?;
    if [grad, x0].iter().any(|t| t.shape() != x_adv.shape()) || step.len() != n || topk.len() != n {
        return Err(Error::shape(
            op,
            format!(
                "x {:?}, grad {:?}, x0 {:?}, {} step sizes, {} top-k fractions",
                x_adv.shape(),
                grad.shape(),
                x0.shape(),
                step.len(),
                topk.len()
            ),
        ));
    }
    if x_adv.is_cuda() {
        return crate::cuda::ops::apgd_l1_step(x_adv, grad, x0, step, topk, eps);
    }
    map_rows_nchw(&[x_adv, grad, x0], |j, r| {
        let mut o = vec![0f32; r[0].len()];
        l1_sparse_step(&r[0], &r[1], &r[2], step[j], topk[j], eps, &mut o);
        o
    })
}

/// Row `j` of an NHWC batch `(n, h, w, c)` as NCHW values.
fn nchw_row(t: &[f32], j: usize, (h, w, c): (usize, usize, usize)) -> Vec<f32> {
    let (d, hw) = (h * w * c, h * w);
    (0..d).map(|i| t[j * d + (i % hw) * c + i / hw]).collect()
}

/// Writes NCHW values `v` into the NHWC row `row` (the inverse of `nchw_row`).
fn put_nchw_row(row: &mut [f32], v: Vec<f32>, (h, w, c): (usize, usize, usize)) {
    let hw = h * w;
    for (i, x) in v.into_iter().enumerate() {
        row[(i % hw) * c + i / hw] = x;
    }
}

/// `f(j, rows)` on every row `j` of the NHWC batches `ins` (shaped alike), each row handed over
/// in NCHW order, f's NCHW output put back in NHWC: a CPU twin that reuses a host loop's per-row
/// function gets its bits exactly (the host loops work in NCHW, and their sums follow it).
fn map_rows_nchw(
    ins: &[&Tensor],
    f: impl Fn(usize, &[Vec<f32>]) -> Vec<f32> + Sync,
) -> Result<Tensor> {
    let (n, h, w, c) = nhwc("map_rows_nchw", ins[0])?;
    let d = h * w * c;
    let data: Vec<&[f32]> = ins.iter().map(|t| t.data()).collect();
    let mut out = vec![0f32; n * d];
    out.par_chunks_mut(d.max(1))
        .enumerate()
        .for_each(|(j, row)| {
            let rows: Vec<Vec<f32>> = data.iter().map(|t| nchw_row(t, j, (h, w, c))).collect();
            put_nchw_row(row, f(j, &rows), (h, w, c));
        });
    Tensor::from_vec(ins[0].shape(), out)
}

/// Per-row count of coordinates where `a` and `b` differ (APGD-L1's L0 norm of `x_best - x0`,
/// as `norms::l0_dist`); on the GPU `cuda::ops::row_l0`.
pub fn row_l0(a: &Tensor, b: &Tensor) -> Result<Vec<f32>> {
    let (n, ..) = nhwc("row_l0", a)?;
    if b.shape() != a.shape() {
        return Err(Error::shape(
            "row_l0",
            format!("a {:?}, b {:?}", a.shape(), b.shape()),
        ));
    }
    if a.is_cuda() {
        return crate::cuda::ops::row_l0(a, b);
    }
    let d = a.numel() / n.max(1);
    Ok((0..n)
        .map(|j| l0_dist(&a.data()[j * d..(j + 1) * d], &b.data()[j * d..(j + 1) * d]))
        .collect())
}

/// The kernels' norm argument: 0 l-inf, 1 l2, 2 l1.
fn norm_code(norm: Norm) -> u32 {
    match norm {
        Norm::Linf => 0,
        Norm::L2 => 1,
        Norm::L1 => 2,
    }
}

/// FAB's iteration on NHWC batches: row `j` of `x1` after `row_steps::fab_row_step` with the
/// original `im2`, the gradient `w` of f_t - f_y at `x1` and `df[j]` (f_t - f_y there). CPU twin:
/// the host loop's function in NCHW order (its bits); GPU: `cuda::ops::fab_step`.
pub fn fab_step(
    x1: &Tensor,
    im2: &Tensor,
    w: &Tensor,
    df: &[f32],
    cfg: impl Into<FabStep>,
) -> Result<Tensor> {
    let op = "fab_step";
    let cfg: FabStep = cfg.into();
    let (n, ..) = nhwc(op, x1)?;
    if [im2, w].iter().any(|t| t.shape() != x1.shape()) || df.len() != n {
        return Err(Error::shape(
            op,
            format!(
                "x1 {:?}, im2 {:?}, w {:?}, {} boundary distances",
                x1.shape(),
                im2.shape(),
                w.shape(),
                df.len()
            ),
        ));
    }
    if x1.is_cuda() {
        return crate::cuda::ops::fab_step(
            x1,
            im2,
            w,
            df,
            norm_code(cfg.norm),
            cfg.eta,
            cfg.alpha_max,
        );
    }
    map_rows_nchw(&[x1, im2, w], |j, r| {
        let d = r[0].len();
        let (mut x, mut d1, mut d2) = (r[0].clone(), vec![0f32; d], vec![0f32; d]);
        let mut sc = ProjScratch::default();
        fab_row_step(cfg, df[j], &mut x, &r[1], &r[2], &mut sc, &mut d1, &mut d2);
        x
    })
}

/// Per-row `norm` distances between NHWC batches `a` and `b` (as `Norm::dist` on the NCHW
/// rows, so the CPU gives the host loop's bits); on the GPU `cuda::ops::row_dist` (f64 sums).
pub fn row_dist(a: &Tensor, b: &Tensor, norm: Norm) -> Result<Vec<f32>> {
    let (n, h, w, c) = nhwc("row_dist", a)?;
    if b.shape() != a.shape() {
        return Err(Error::shape(
            "row_dist",
            format!("a {:?}, b {:?}", a.shape(), b.shape()),
        ));
    }
    if a.is_cuda() {
        return crate::cuda::ops::row_dist(a, b, norm_code(norm));
    }
    let (ad, bd) = (a.data(), b.data());
    Ok((0..n)
        .map(|j| norm.dist(&nchw_row(ad, j, (h, w, c)), &nchw_row(bd, j, (h, w, c))))
        .collect())
}

/// `x` with each listed row replaced by `c + (x - c) beta` (FAB's step back towards the
/// original once a point is adversarial); out of place.
pub fn shrink_rows(x: &Tensor, c: &Tensor, rows: &[u32], beta: f32) -> Result<Tensor> {
    let (n, ..) = nhwc("shrink_rows", x)?;
    if c.shape() != x.shape() || rows.iter().any(|&r| r as usize >= n) {
        return Err(Error::shape(
            "shrink_rows",
            format!("x {:?}, c {:?}, rows {rows:?}", x.shape(), c.shape()),
        ));
    }
    if rows.is_empty() {
        return Ok(x.clone());
    }
    if x.is_cuda() {
        return crate::cuda::ops::shrink_rows(x, c, rows, beta);
    }
    let d = x.numel() / n;
    let mut out = x.clone();
    let cv = c.data();
    let ov = out.data_mut();
    for &r in rows {
        for i in r as usize * d..(r as usize + 1) * d {
            ov[i] = cv[i] + (ov[i] - cv[i]) * beta;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_touch_only_the_window_and_stay_in_the_ball() {
        let (n, h, w, c) = (2, 5, 4, 3);
        let x: Vec<f32> = (0..n * h * w * c).map(|i| (i % 7) as f32 / 7.0).collect();
        let best: Vec<f32> = x.iter().map(|v| (v + 0.01).min(1.0)).collect();
        let xt = Tensor::from_vec(&[n, h, w, c], x.clone()).unwrap();
        let bt = Tensor::from_vec(&[n, h, w, c], best.clone()).unwrap();
        let p = SquareProposals {
            rows: vec![1],
            vh: vec![2],
            vw: vec![1],
            s: 2,
            signs: vec![1.0, -1.0, 1.0],
        };
        let eps = 0.05;
        let cand = square_linf_candidates(&bt, &xt, &p, eps).unwrap();
        assert_eq!(cand.shape(), &[1, h, w, c]);
        let d = h * w * c;
        let mut changed = 0;
        for r in 0..h {
            for q in 0..w {
                for ch in 0..c {
                    let i = (r * w + q) * c + ch;
                    let (cv, bv, xv) = (cand.data()[i], best[d + i], x[d + i]);
                    let inside = (2..4).contains(&r) && (1..3).contains(&q);
                    if inside {
                        let want = (bv + 2.0 * eps * p.signs[ch])
                            .max(xv - eps)
                            .min(xv + eps)
                            .clamp(0.0, 1.0);
                        assert_eq!(cv, want);
                        changed += (cv != bv) as usize;
                    } else {
                        assert_eq!(cv, bv, "outside the window at ({r}, {q}, {ch})");
                    }
                    assert!((cv - xv).abs() <= eps + 1e-7 && (0.0..=1.0).contains(&cv));
                }
            }
        }
        assert!(changed > 0);
        let bad = SquareProposals {
            vh: vec![4],
            ..p.clone()
        };
        assert!(square_linf_candidates(&bt, &xt, &bad, eps).is_err());
    }

    #[test]
    fn copy_rows_replaces_only_the_listed_rows() {
        let dst = Tensor::from_vec(&[3, 1, 1, 2], vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0]).unwrap();
        let src = Tensor::from_vec(&[2, 1, 1, 2], vec![7.0, 7.5, 8.0, 8.5]).unwrap();
        let out = copy_rows(&dst, &src, &[2, 0, 0, 1]).unwrap();
        assert_eq!(out.data(), &[8.0, 8.5, 1.0, 1.0, 7.0, 7.5]);
        assert_eq!(dst.data(), &[0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);
        assert!(copy_rows(&dst, &src, &[3, 0]).is_err());
    }

    /// Square l2 / l1 candidates, written out plainly on NHWC rows in f64 (the l1 projection
    /// by bisection on lambda): the reference `square_l2l1_candidates` must match.
    fn l2l1_reference(
        best: &[f32],
        x: &[f32],
        (h, w, c): (usize, usize, usize),
        p: &SquareMoves,
        a: usize,
        norm: Norm,
        eps: f32,
    ) -> Vec<f64> {
        let l1 = norm == Norm::L1;
        let s = p.s as usize;
        let at = |r: usize, q: usize, ch: usize| (r * w + q) * c + ch;
        let in_win = |r: usize, q: usize, vh: u32, vw: u32| {
            (vh as usize..vh as usize + s).contains(&r)
                && (vw as usize..vw as usize + s).contains(&q)
        };
        let (vh1, vw1, vh2, vw2) = (p.vh1[a], p.vw1[a], p.vh2[a], p.vw2[a]);
        let pw = |v: f64| if l1 { v.abs() } else { v * v };
        let root = |v: f64| if l1 { v } else { v.sqrt() };
        let mut delta: Vec<f64> = best.iter().zip(x).map(|(b, x)| (b - x) as f64).collect();
        let ni = root(delta.iter().map(|&v| pw(v)).sum());
        let eps = eps as f64;
        let mut new = vec![0f64; delta.len()];
        for ch in 0..c {
            let (mut n1, mut nu) = (0.0, 0.0);
            for r in 0..h {
                for q in 0..w {
                    let (i1, i2) = (in_win(r, q, vh1, vw1), in_win(r, q, vh2, vw2));
                    n1 += if i1 { pw(delta[at(r, q, ch)]) } else { 0.0 };
                    nu += if i1 || i2 {
                        pw(delta[at(r, q, ch)])
                    } else {
                        0.0
                    };
                }
            }
            let (n1, nu) = (root(n1), root(nu));
            let mut t = 0.0;
            for i in 0..s {
                for k in 0..s {
                    let e = if p.transpose[a] {
                        p.profile[k * s + i]
                    } else {
                        p.profile[i * s + k]
                    };
                    let j = at(vh1 as usize + i, vw1 as usize + k, ch);
                    new[j] = e as f64 * p.signs[a * c + ch] as f64 + delta[j] / n1;
                    t += pw(new[j]);
                }
            }
            let scale = if l1 {
                ((eps - ni).max(0.0) / c as f64 + nu) * c as f64 / t
            } else {
                ((eps * eps - ni * ni).max(0.0) / c as f64 + nu * nu).sqrt() / t.sqrt()
            };
            for r in 0..h {
                for q in 0..w {
                    let j = at(r, q, ch);
                    if in_win(r, q, vh1, vw1) {
                        delta[j] = new[j] * scale;
                    } else if in_win(r, q, vh2, vw2) {
                        delta[j] = 0.0;
                    }
                }
            }
        }
        if !l1 {
            let t = delta.iter().map(|v| v * v).sum::<f64>().sqrt();
            return (0..delta.len())
                .map(|j| (x[j] as f64 + delta[j] / t * eps).clamp(0.0, 1.0))
                .collect();
        }
        // |z_j - x_j| = min(max(|delta_j| - lambda, 0), room to the box), lambda >= 0 the
        // smallest with sum <= eps (1 - 1e-6).
        let e1 = eps * (1.0 - 1e-6);
        let cut = |lam: f64| -> Vec<f64> {
            (0..delta.len())
                .map(|j| {
                    let (d, xv) = (delta[j], x[j] as f64);
                    let room = if d > 0.0 { 1.0 - xv } else { xv };
                    (d.abs() - lam).max(0.0).min(room) * d.signum()
                })
                .collect()
        };
        let (mut lo, mut hi) = (0.0f64, delta.iter().fold(0.0f64, |m, v| m.max(v.abs())));
        if cut(0.0).iter().map(|v| v.abs()).sum::<f64>() > e1 {
            for _ in 0..200 {
                let mid = 0.5 * (lo + hi);
                if cut(mid).iter().map(|v| v.abs()).sum::<f64>() > e1 {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
        } else {
            hi = 0.0;
        }
        cut(hi)
            .iter()
            .zip(x)
            .map(|(d, &xv)| xv as f64 + d)
            .collect()
    }

    #[test]
    fn square_l2l1_candidates_match_a_plain_reference_and_stay_in_ball_and_box() {
        use crate::attack::square::eta_profile;
        let (n, h, w, c) = (3, 9, 11, 3);
        let d = h * w * c;
        let mut rng = crate::attack::rng::sample_rng(11, 12, 13);
        let u = |rng: &mut _| crate::attack::rng::uniform(rng);
        // Clean points with saturated pixels; best points a perturbation of them in the box.
        let x: Vec<f32> = (0..n * d)
            .map(|_| {
                let v = u(&mut rng);
                if v < 0.15 {
                    0.0
                } else if v > 0.85 {
                    1.0
                } else {
                    v
                }
            })
            .collect();
        let best: Vec<f32> = x
            .iter()
            .map(|&v| (v + 0.2 * (u(&mut rng) - 0.5)).clamp(0.0, 1.0))
            .collect();
        let xt = Tensor::from_vec(&[n, h, w, c], x.clone()).unwrap();
        let bt = Tensor::from_vec(&[n, h, w, c], best.clone()).unwrap();
        let s = 5usize;
        // Windows at every border and corner, overlapping (rows 0, 1), apart, identical (3).
        let (vh1, vw1, vh2, vw2) = (
            vec![0, 4, 2, 4],
            vec![0, 6, 3, 0],
            vec![2, 0, 4, 4],
            vec![3, 6, 0, 0],
        );
        let rows = vec![2, 0, 1, 1];
        for (norm, eps) in [
            (Norm::L2, 0.8f32),
            (Norm::L2, 3.0),
            (Norm::L1, 2.0),
            (Norm::L1, 25.0),
        ] {
            let p = SquareMoves {
                rows: rows.clone(),
                vh1: vh1.clone(),
                vw1: vw1.clone(),
                vh2: vh2.clone(),
                vw2: vw2.clone(),
                transpose: vec![false, true, true, false],
                s: s as u32,
                profile: eta_profile(norm, s),
                signs: (0..4 * c)
                    .map(|i| if i % 3 == 1 { -1.0 } else { 1.0 })
                    .collect(),
            };
            let cand = square_l2l1_candidates(&bt, &xt, &p, norm, eps).unwrap();
            assert_eq!(cand.shape(), &[4, h, w, c]);
            let mut projected = 0;
            for a in 0..4 {
                let r0 = p.rows[a] as usize * d;
                let (xr, br) = (&x[r0..r0 + d], &best[r0..r0 + d]);
                let got = &cand.data()[a * d..(a + 1) * d];
                let want = l2l1_reference(br, xr, (h, w, c), &p, a, norm, eps);
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
                assert!(err < 2e-6, "{norm} eps {eps}, row {a}: max |diff| {err}");
                assert!(got.iter().all(|v| (0.0..=1.0).contains(v)), "{norm}: box");
                let dist = norm.dist(got, xr);
                assert!(
                    dist <= eps * (1.0 + 1e-6),
                    "{norm}: ||z - x|| = {dist} > {eps}"
                );
                // Inside w2 only, the point is the clean one; outside both windows the
                // perturbation is the old one rescaled (l2, where not clamped) or shrunk
                // towards x (l1).
                let mut ratio = None;
                for r in 0..h {
                    for q in 0..w {
                        let in1 = (vh1[a]..vh1[a] + s as u32).contains(&(r as u32))
                            && (vw1[a]..vw1[a] + s as u32).contains(&(q as u32));
                        let in2 = (vh2[a]..vh2[a] + s as u32).contains(&(r as u32))
                            && (vw2[a]..vw2[a] + s as u32).contains(&(q as u32));
                        for ch in 0..c {
                            let j = (r * w + q) * c + ch;
                            let (dz, db) = ((got[j] - xr[j]) as f64, (br[j] - xr[j]) as f64);
                            if in2 && !in1 {
                                assert_eq!(got[j], xr[j], "{norm}: w2 not emptied");
                            } else if !in1
                                && norm == Norm::L2
                                && got[j] > 0.0
                                && got[j] < 1.0
                                && db.abs() > 1e-3
                            {
                                let k = dz / db;
                                let k0 = *ratio.get_or_insert(k);
                                assert!((k - k0).abs() < 1e-4 * k0.abs(), "{norm}: not a rescale");
                            } else if !in1 && norm == Norm::L1 {
                                assert!(dz.abs() <= db.abs() + 1e-6 && dz * db >= 0.0, "{norm}");
                                projected += (dz.abs() < db.abs() - 1e-6) as usize;
                            }
                        }
                    }
                }
            }
            if norm == Norm::L1 && eps < 10.0 {
                assert!(
                    projected > 0,
                    "the l1 projection should shrink the old perturbation"
                );
            }
        }
        // Shapes, windows and the norm are checked.
        let mut p = SquareMoves::new(s, eta_profile(Norm::L2, s));
        p.rows = vec![0];
        p.vh1 = vec![h as u32 - s as u32 + 1];
        p.vw1 = vec![0];
        p.vh2 = vec![0];
        p.vw2 = vec![0];
        p.transpose = vec![false];
        p.signs = vec![1.0; c];
        assert!(square_l2l1_candidates(&bt, &xt, &p, Norm::L2, 1.0).is_err());
        p.vh1 = vec![0];
        assert!(square_l2l1_candidates(&bt, &xt, &p, Norm::L2, 1.0).is_ok());
        assert!(square_l2l1_candidates(&bt, &xt, &p, Norm::Linf, 1.0).is_err());
        p.profile.pop();
        assert!(square_l2l1_candidates(&bt, &xt, &p, Norm::L2, 1.0).is_err());
    }
}
