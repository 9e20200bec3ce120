//! FAB's exact minimum-norm projections onto a hyperplane `{z: w.z = b}` within the box
//! [0, 1]^n (l-inf, l2, l1), ported per row from the reference AutoAttack code. A leaf: the
//! FAB host loop and the CPU twin of the resident FAB step both reach them through
//! `row_steps::fab_row_step`.

use super::norms::Norm;
use super::radix::ArgSort;

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
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

/// Orients the hyperplane so that `t` lies on its non-negative side, as the reference does:
/// `w = sign * w0` with `sign` the sign of `w0.t - b0` (+1 at zero). Returns `(sign, w0.t - b0)`.
fn orient(t: &[f32], w0: &[f32], b0: f32, w: &mut Vec<f32>) -> (f32, f32) {
    let c0 = dot(w0, t) - b0;
    let sign = if c0 >= 0.0 { 1.0 } else { -1.0 };
    refill(w, w0.iter().map(|v| v * sign));
    (sign, c0)
}

/// The reference's bisection over sorted break points: `ceil(log2 n)` halvings of `[0, ub]`
/// at `floor((lb + ub) / 2)`, moving the lower end up while `above(mid)` holds. Returns the
/// final lower end (the reference keeps the midpoints as floats; so does this).
fn bisect(n: usize, ub: f32, mut above: impl FnMut(usize) -> bool) -> usize {
    let (mut lb, mut ub) = (0f32, ub);
    for _ in 0..(n as f32).log2().ceil() as usize {
        let mid = ((lb + ub) / 2.0).floor();
        if above(mid as usize) {
            lb = mid;
        } else {
            ub = mid;
        }
    }
    lb as usize
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
    let (sign, _) = orient(t, w0, b0, w);
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
        let lb = bisect(n, (n - 1) as f32, |ci| {
            let ind = indp[n - 1 - ci] as usize;
            b - (sb[ci] - s[ci] * p[ind]) > 0.0
        });
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
    let (sign, c0) = orient(t, w0, b0, w);
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
        let lb = bisect(n, (n - 1) as f32, |m| s[m] + c > 0.0);
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
    let (sign, c0) = orient(t, w0, b0, w);
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
        let lb2 = bisect(n, (n + 1) as f32, |m| s[m] > 0.0).min(n - 1);
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
