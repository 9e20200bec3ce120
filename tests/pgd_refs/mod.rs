//! CPU references of the projected PGD steps, shared by the GPU parity tests and the kernel
//! emulator tests.

#![allow(dead_code)]

/// CPU reference of the Linf / L2 projected step (AutoAttack's formulas).
pub fn pgd_ref(x: &[f32], x0: &[f32], g: &[f32], eps: &[f32], step: &[f32], l2: bool) -> Vec<f32> {
    let d = x.len() / eps.len();
    let mut out = vec![0.0; x.len()];
    for n in 0..eps.len() {
        let r = n * d..(n + 1) * d;
        if !l2 {
            for i in r {
                let v = x[i] + step[n] * g[i].signum() * (g[i] != 0.0) as i32 as f32;
                out[i] = v.clamp(x0[i] - eps[n], x0[i] + eps[n]).clamp(0.0, 1.0);
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
