//! Threat models: l-inf, l2 and l1 balls intersected with the [0, 1] box.
//!
//! Vectors here are one sample's flattened image (any layout: every function is
//! layout-free). `l1_projection` is Croce & Hein's exact projection onto the l1 ball
//! intersected with the box (AutoAttack's `L1_projection`), per sample.

use super::radix::{f64_key, ArgSort};
use crate::{Error, Result};
use std::cell::RefCell;

thread_local! {
    static SORT: RefCell<ArgSort> = RefCell::new(ArgSort::default());
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Norm {
    Linf,
    L2,
    L1,
}

impl std::str::FromStr for Norm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "linf" | "l-inf" | "inf" => Ok(Norm::Linf),
            "l2" => Ok(Norm::L2),
            "l1" => Ok(Norm::L1),
            _ => Err(format!("'{s}' is not a norm: expected Linf, L2 or L1")),
        }
    }
}

impl std::fmt::Display for Norm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Norm::Linf => "Linf",
            Norm::L2 => "L2",
            Norm::L1 => "L1",
        })
    }
}

impl Norm {
    /// `||v||` in this norm.
    pub fn of(self, v: &[f32]) -> f32 {
        // Sums in f64: at d = 150,528 an f32 sum drifts by ~1e-5 relative.
        match self {
            Norm::Linf => v.iter().fold(0.0f32, |m, x| m.max(x.abs())),
            Norm::L2 => v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32,
            Norm::L1 => v.iter().map(|x| x.abs() as f64).sum::<f64>() as f32,
        }
    }

    /// The dual norm (the one FAB divides by): l1 for l-inf, l2 for l2, l-inf for l1.
    pub fn dual(self) -> Norm {
        match self {
            Norm::Linf => Norm::L1,
            Norm::L2 => Norm::L2,
            Norm::L1 => Norm::Linf,
        }
    }

    /// `||a - b||`.
    pub fn dist(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Norm::Linf => a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs())),
            Norm::L2 => a
                .iter()
                .zip(b)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum::<f64>()
                .sqrt() as f32,
            Norm::L1 => a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() as f64)
                .sum::<f64>() as f32,
        }
    }

    /// Largest distance between two points of [0,1]^d: eps at or above it means "unbounded".
    pub fn diameter(self, d: usize) -> f32 {
        match self {
            Norm::Linf => 1.0,
            Norm::L2 => (d as f32).sqrt(),
            Norm::L1 => d as f32,
        }
    }

    /// Slack allowed when checking that a returned example lies in the ball: f32 rounding of
    /// `x + delta - x` (one ulp near 1.0 for l-inf) and of the norm's own sum (l2, l1).
    pub fn tolerance(self, eps: f32) -> f32 {
        match self {
            Norm::Linf => 1e-6,
            Norm::L2 | Norm::L1 => 1e-5 * eps.max(1.0),
        }
    }

    /// Checks `--eps` for this norm and an input of `d` values: finite, positive, and not
    /// above the box's diameter (which usually means a mistyped value such as `4` for
    /// `4/255`).
    pub fn validate_eps(self, eps: f32, d: usize) -> Result<()> {
        if !eps.is_finite() || eps <= 0.0 {
            return Err(Error::flag(
                "--eps",
                format!("must be a positive finite number, got {eps}"),
            ));
        }
        let diam = self.diameter(d);
        if eps > diam {
            let hint = if self == Norm::Linf && eps >= 1.0 {
                format!(" (pixel units? {eps}/255 = {:.8})", eps / 255.0)
            } else {
                String::new()
            };
            return Err(Error::flag(
                "--eps",
                format!(
                    "{eps} is larger than the largest {self} distance between two images of \
                     {d} values in [0, 1] ({diam}){hint}"
                ),
            ));
        }
        Ok(())
    }

    /// `v / (||v|| + 1e-12)` in place (the reference's `normalize`).
    pub fn normalize(self, v: &mut [f32]) {
        let t = self.of(v) + 1e-12;
        for x in v.iter_mut() {
            *x /= t;
        }
    }
}

/// The sign the l-inf steps move along: +1, -1, and 0 for a zero gradient (and for NaN), as
/// the reference's `torch.sign` and the kernels (kernels/pgd_step.cu, attack_rows.cu) have it.
/// Not `f32::signum`, which maps +0 to +1 and so moves coordinates the loss does not depend
/// on (pixels a max-pool or a clamp cut off).
pub fn sign_or_zero(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// One l-inf PGD step of one coordinate: `clip01(clip(x + step sign(g), x0 - eps, x0 + eps))`,
/// `sign` = [`sign_or_zero`]. The one copy of the rule: training PGD (`train::pgd`), attack
/// PGD and APGD (`attack::pgd`, `attack::row_steps`), `mpm-bench`'s CPU loop and the tests'
/// CPU twin of the `pgd_linf_f32` / `pgd_linf4_f32` kernels, which do the same float
/// operations in the same order (so CPU and GPU steps agree bit for bit).
#[inline]
pub fn linf_step(x: f32, x0: f32, g: f32, step: f32, eps: f32) -> f32 {
    (x + step * sign_or_zero(g))
        .max(x0 - eps)
        .min(x0 + eps)
        .clamp(0.0, 1.0)
}

/// [`linf_step`] on every coordinate of `x` (in place), around `x0` with gradient `g`.
pub fn linf_step_slice(x: &mut [f32], x0: &[f32], g: &[f32], step: f32, eps: f32) {
    for ((xi, &ci), &gi) in x.iter_mut().zip(x0).zip(g) {
        *xi = linf_step(*xi, ci, gi, step, eps);
    }
}

/// Projects `adv` onto {z : ||z - x||_inf <= eps} ∩ [0,1]^d in place.
pub fn project_linf(adv: &mut [f32], x: &[f32], eps: f32) {
    for (a, &xi) in adv.iter_mut().zip(x) {
        *a = a.max(xi - eps).min(xi + eps).clamp(0.0, 1.0);
    }
}

/// `x + (adv - x) / ||adv - x|| * min(eps, ||adv - x||)`, then clamped to [0,1]: the
/// reference's l2 projection (clamping after scaling only shrinks the perturbation).
pub fn project_l2(adv: &mut [f32], x: &[f32], eps: f32) {
    let n = Norm::L2.dist(adv, x);
    let s = eps.min(n) / (n + 1e-12);
    for (a, &xi) in adv.iter_mut().zip(x) {
        *a = (xi + (*a - xi) * s).clamp(0.0, 1.0);
    }
}

/// Croce & Hein's `L1_projection(x, y, eps)`: returns `delta` such that
/// `||y + delta||_1 <= eps` and `0 <= x + y + delta <= 1`, where `x` is the centre and `y` the
/// current perturbation (so the projected point is `x + y + delta`).
pub fn l1_projection(x: &[f32], y: &[f32], eps: f32) -> Vec<f32> {
    // Same algorithm as the reference, accumulated in f64: its cumulative sums run over 2d
    // breakpoints, and f32 there lets the result exceed eps by ~1e-5 relative at d = 3,072.
    let n = x.len();
    let eps = eps as f64;
    // u <= 0: how far x + y is outside the box (coordinate-wise, with sign folded in).
    let u: Vec<f64> = x
        .iter()
        .zip(y)
        .map(|(&xi, &yi)| {
            let (xi, yi) = (xi as f64, yi as f64);
            (1.0 - xi - yi).min(xi + yi).min(0.0)
        })
        .collect();
    let l: Vec<f64> = y.iter().map(|v| -(v.abs() as f64)).collect();
    let sigma = |v: f32| {
        if v > 0.0 {
            1.0
        } else if v < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    let s1: f64 = -u.iter().sum::<f64>();
    let c = eps + l.iter().sum::<f64>();
    if s1 + c >= 0.0 {
        // Inside the ball once clipped to the box: the box correction alone.
        return u
            .iter()
            .zip(y)
            .map(|(&d, &yi)| (sigma(yi) * d) as f32)
            .collect();
    }
    // Sort the 2n breakpoints (-u then -l = |y|) ascending, remembering which set each is from.
    let val = |i: u32| -> f64 {
        let i = i as usize;
        if i < n {
            -u[i]
        } else {
            -l[i - n]
        }
    };
    // Stable, in `total_cmp` order (radix: this sort was most of the projection's time).
    let idx: Vec<u32> = SORT.with(|s| {
        s.borrow_mut()
            .sort(2 * n, |i| f64_key(val(i as u32)))
            .to_vec()
    });
    let bs: Vec<f64> = idx.iter().map(|&i| val(i)).collect();
    let m = 2 * n;
    let bs2 = |k: usize| if k + 1 < m { bs[k + 1] } else { 0.0 };
    let mut size1 = vec![0f64; m];
    let mut acc = 0f64;
    for k in 0..m {
        acc += if (idx[k] as usize) < n { 1.0 } else { -1.0 };
        size1[k] = acc;
    }
    let mut s = vec![0f64; m];
    let mut cum = 0f64;
    for k in 0..m {
        cum += (bs2(k) - bs[k]) * size1[k];
        s[k] = s1 + cum;
    }
    let mut lb = 0f64;
    let mut ub = (m - 1) as f64;
    let nitermax = (m as f64).log2().ceil() as usize;
    for _ in 0..nitermax {
        let mid = ((lb + ub) / 2.0).floor();
        if s[mid as usize] + c < 0.0 {
            lb = mid;
        } else {
            ub = mid;
        }
    }
    let k = (lb as usize).min(m - 2);
    let alpha = (-s[k] - c) / size1[k + 1] + bs2(k);
    (0..n)
        .map(|i| {
            let d = -(-u[i]).max(alpha).min(-l[i]);
            (sigma(y[i]) * d) as f32
        })
        .collect()
}

/// `x + y + l1_projection(x, y, eps)` in place on `adv` (where `y = adv - x`).
pub fn project_l1(adv: &mut [f32], x: &[f32], eps: f32) {
    let y: Vec<f32> = adv.iter().zip(x).map(|(a, b)| a - b).collect();
    let d = l1_projection(x, &y, eps);
    for i in 0..adv.len() {
        adv[i] = x[i] + y[i] + d[i];
    }
}

/// Projection onto the threat model's ball ∩ box, by norm.
pub fn project(norm: Norm, adv: &mut [f32], x: &[f32], eps: f32) {
    match norm {
        Norm::Linf => project_linf(adv, x, eps),
        Norm::L2 => project_l2(adv, x, eps),
        Norm::L1 => project_l1(adv, x, eps),
    }
}

/// Pulls a returned example strictly inside the ball as f32 arithmetic measures it, so that
/// an external checker computing `|adv - x|` in f32 (PyTorch) finds `<= eps` with no
/// tolerance: l-inf coordinates at `eps` plus one ulp move one ulp back towards `x`; an l2 or
/// l1 perturbation longer than `eps (1 - 1e-6)` is scaled onto it. Every coordinate is first
/// clamped to the box [0, 1] (an attack's f32 arithmetic can leave it by a rounding error; with
/// `x` in the box, clamping only shortens the perturbation).
pub fn tighten(norm: Norm, eps: f32, adv: &mut [f32], x: &[f32]) {
    adv.iter_mut().for_each(|a| *a = a.clamp(0.0, 1.0));
    match norm {
        Norm::Linf => {
            for (a, &xi) in adv.iter_mut().zip(x) {
                let mut k = 0;
                while (*a - xi).abs() > eps && k < 8 {
                    *a = ulp_toward(*a, xi);
                    k += 1;
                }
            }
        }
        Norm::L2 | Norm::L1 => {
            let target = eps * (1.0 - 1e-6);
            let dist = norm.dist(adv, x);
            if dist > target {
                let s = target / dist;
                for (a, &xi) in adv.iter_mut().zip(x) {
                    *a = (xi + (*a - xi) * s).clamp(0.0, 1.0);
                }
            }
        }
    }
}

/// The f32 next to `a` in the direction of `t` (`a`, `t` in [0, 1]).
fn ulp_toward(a: f32, t: f32) -> f32 {
    let a = if a == 0.0 { 0.0 } else { a }; // -0.0 -> +0.0
    if a > t {
        f32::from_bits(a.to_bits() - 1)
    } else if a < t {
        f32::from_bits(a.to_bits() + 1)
    } else {
        a
    }
}

/// Number of non-zero entries of `a - b` (the reference's `L0_norm`).
pub fn l0_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linf_step_keeps_sign_of_zero_at_zero() {
        assert_eq!(sign_or_zero(0.0), 0.0);
        assert_eq!(sign_or_zero(-0.0), 0.0);
        assert_eq!(sign_or_zero(f32::NAN), 0.0);
        assert_eq!(sign_or_zero(1e-30), 1.0);
        assert_eq!(sign_or_zero(-3.0), -1.0);
        // A zero gradient leaves the coordinate where it is (`f32::signum` would move it by
        // +step: 0.5 -> 0.55).
        assert_eq!(linf_step(0.5, 0.5, 0.0, 0.05, 0.1), 0.5);
        assert_eq!(linf_step(0.5, 0.5, -0.0, 0.05, 0.1), 0.5);
        assert_ne!(
            linf_step(0.5, 0.5, 0.0, 0.05, 0.1),
            0.5 + 0.05 * 0.0f32.signum()
        );
        // Moves by the step, then the ball around x0, then the box.
        assert_eq!(linf_step(0.5, 0.5, 2.0, 0.05, 0.1), 0.5f32 + 0.05);
        assert_eq!(linf_step(0.58, 0.5, 2.0, 0.05, 0.1), 0.5f32 + 0.1);
        assert_eq!(linf_step(0.42, 0.5, -2.0, 0.05, 0.1), 0.5f32 - 0.1);
        assert_eq!(linf_step(0.98, 0.95, 1.0, 0.05, 0.1), 1.0);
        assert_eq!(linf_step(0.01, 0.02, -1.0, 0.05, 0.1), 0.0);
        let mut x = vec![0.5, 0.5, 0.5];
        linf_step_slice(&mut x, &[0.5; 3], &[1.0, 0.0, -1.0], 0.05, 0.1);
        assert_eq!(x, vec![0.5f32 + 0.05, 0.5, 0.5f32 - 0.05]);
    }

    #[test]
    fn tighten_puts_rounding_spill_back_in_the_box() {
        let x = [0.0f32, 1.0, 0.5, 0.0];
        for norm in [Norm::Linf, Norm::L2, Norm::L1] {
            let mut adv = [-1e-8f32, 1.000_000_1, 0.52, 0.01];
            tighten(norm, 0.1, &mut adv, &x);
            assert!(
                adv.iter().all(|v| (0.0..=1.0).contains(v)),
                "{norm}: {adv:?}"
            );
            assert!(norm.dist(&adv, &x) <= 0.1, "{norm}");
            assert_eq!(adv[2], 0.52, "{norm}: coordinates in the box stay");
        }
    }

    #[test]
    fn l1_projection_lands_in_ball_and_box() {
        let x: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37) % 1.0).collect();
        let y: Vec<f32> = (0..50).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.2).collect();
        for eps in [0.5f32, 2.0, 5.0, 100.0] {
            let d = l1_projection(&x, &y, eps);
            let z: Vec<f32> = (0..50).map(|i| x[i] + y[i] + d[i]).collect();
            assert!(z.iter().all(|v| (-1e-6..=1.0 + 1e-6).contains(v)), "{z:?}");
            let n = Norm::L1.dist(&z, &x);
            assert!(n <= eps * (1.0 + 1e-5) + 1e-5, "eps {eps}: norm {n}");
        }
    }
}
