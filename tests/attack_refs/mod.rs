//! CPU references of the projected PGD steps and the Square test cases, shared by the GPU
//! parity tests and the kernel emulator tests.

#![allow(dead_code)]

/// CPU reference of the Linf / L2 projected step (AutoAttack's formulas).
pub fn pgd_ref(x: &[f32], x0: &[f32], g: &[f32], eps: &[f32], step: &[f32], l2: bool) -> Vec<f32> {
    let d = x.len() / eps.len();
    let mut out = vec![0.0; x.len()];
    for n in 0..eps.len() {
        let r = n * d..(n + 1) * d;
        if !l2 {
            // The library's one copy of the l-inf step (sign(0) = 0), which the kernels must
            // reproduce bit for bit.
            for i in r {
                out[i] = mpm::attack::norms::linf_step(x[i], x0[i], g[i], step[n], eps[n]);
            }
        } else {
            let gn = g[r.clone()].iter().map(|v| v * v).sum::<f32>().sqrt() + 1e-12;
            let delta: Vec<f32> = r
                .clone()
                .map(|i| x[i] + step[n] * g[i] / gn - x0[i])
                .collect();
            let dn = delta.iter().map(|v| v * v).sum::<f32>().sqrt();
            let f = eps[n].min(dn) / (dn + 1e-12);
            for (k, i) in r.enumerate() {
                out[i] = (x0[i] + delta[k] * f).clamp(0.0, 1.0);
            }
        }
    }
    out
}

/// CPU reference of the APGD-L1 sparse step and its l1-ball-with-box projection: tau the
/// rank-`floor((1 - k) d)` smallest |g| (by sorting), lambda by bisection in f64 to the last
/// bit of f32 (the kernels search a bracket in f32 and stop 1e-5 of eps inside the ball).
pub fn pgd_l1_ref(x: &[f32], x0: &[f32], g: &[f32], eps: &[f32], step: &[f32], k: f32) -> Vec<f32> {
    let d = x.len() / eps.len();
    let mut out = vec![0.0; x.len()];
    for n in 0..eps.len() {
        let r = n * d..(n + 1) * d;
        let mut mags: Vec<f32> = g[r.clone()].iter().map(|v| v.abs()).collect();
        mags.sort_by(f32::total_cmp);
        let rank = (((1.0 - k) * d as f32) as i64).clamp(0, d as i64 - 1) as usize;
        let tau = mags[rank];
        let u: Vec<f32> = g[r.clone()]
            .iter()
            .map(|&v| {
                if v.abs() >= tau {
                    v.signum() * (v != 0.0) as i32 as f32
                } else {
                    0.0
                }
            })
            .collect();
        let cnt = u.iter().filter(|v| **v != 0.0).count() as f32;
        let st = step[n] / (cnt + 1e-10);
        let v: Vec<f32> = r
            .clone()
            .zip(&u)
            .map(|(i, ui)| x[i] + st * ui - x0[i])
            .collect();
        let room = |vi: f32, c: f32| if vi > 0.0 { 1.0 - c } else { c } as f64;
        let s = |lam: f64| -> f64 {
            r.clone()
                .zip(&v)
                .map(|(i, &vi)| (vi.abs() as f64 - lam).max(0.0).min(room(vi, x0[i])))
                .sum()
        };
        let e = eps[n] as f64;
        let mut lambda = 0.0;
        if s(0.0) > e {
            let (mut lo, mut hi) = (0.0, v.iter().fold(0f64, |m, vi| m.max(vi.abs() as f64)));
            for _ in 0..200 {
                let mid = 0.5 * (lo + hi);
                if s(mid) > e {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lambda = hi;
        }
        for (i, &vi) in r.zip(&v) {
            let a = ((vi.abs() as f64 - lambda).max(0.0).min(room(vi, x0[i]))) as f32;
            out[i] = (x0[i] + if vi > 0.0 { a } else { -a }).clamp(0.0, 1.0);
        }
    }
    out
}

/// Square's l2 / l1 test cases (`cuda_parity::square_l2l1_candidate_kernels` and its emulated
/// twin) on an (N, H, W, C) batch with window side `s`: rows with w1 at the top-left and w2 at
/// the bottom-right corner; identical windows; overlapping ones at the right border; w1
/// bottom-left and w2 in the middle; both profile orientations; and the (norm, eps) pairs
/// (l2: a third to three times the start's norm; l1: a small and a large budget).
pub fn square_cases(
    shape: [usize; 4],
    s: u32,
) -> Vec<(mpm::attack::Norm, f32, mpm::attack::resident::SquareMoves)> {
    use mpm::attack::square::eta_profile;
    use mpm::attack::Norm;
    let (n, h, w, c) = (shape[0], shape[1] as u32, shape[2] as u32, shape[3]);
    let d = shape[1] * shape[2] * c;
    let (hm, wm) = (h - s, w - s);
    [
        (Norm::L2, 0.02f32),
        (Norm::L2, 0.2),
        (Norm::L1, 0.01),
        (Norm::L1, 0.2),
    ]
    .into_iter()
    .map(|(norm, eps_per)| {
        let eps = if norm == Norm::L2 {
            eps_per * (d as f32).sqrt()
        } else {
            eps_per * d as f32
        };
        let moves = mpm::attack::resident::SquareMoves {
            rows: vec![n as u32 - 1, 0, 1, n as u32 - 1],
            vh1: vec![0, hm / 2, hm, hm],
            vw1: vec![0, wm / 3, wm, 0],
            vh2: vec![hm, hm / 2, hm.saturating_sub(2), hm / 2],
            vw2: vec![wm, wm / 3, wm.saturating_sub(1), wm / 2],
            transpose: vec![false, true, false, true],
            s,
            profile: eta_profile(norm, s as usize),
            signs: (0..4 * c)
                .map(|i| if i % 5 < 2 { -1.0 } else { 1.0 })
                .collect(),
        };
        (norm, eps, moves)
    })
    .collect()
}

/// Square's l-inf test case (`cuda_parity::attack_row_kernels` and its emulated twin) on a
/// (5, 11, 9, 3) batch: windows of side 4 at the borders, signs per row and channel.
pub fn square_linf_case() -> mpm::attack::resident::SquareProposals {
    mpm::attack::resident::SquareProposals {
        rows: vec![4, 0, 2],
        vh: vec![0, 7, 3],
        vw: vec![5, 0, 2],
        s: 4,
        signs: vec![1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0],
    }
}
