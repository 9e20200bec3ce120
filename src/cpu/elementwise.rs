//! Element-wise activations and arithmetic.

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi)
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `exp(x)` to within 2 ulp for `x >= -87.3` (below, the smallest normal f32 instead of a
/// subnormal or 0), in operations a loop vectorises: Cody-Waite reduction `x = n ln2 + r`,
/// `|r| <= ln2 / 2`, Cephes' degree-7 polynomial for `exp(r)`, and `2^n` built in the exponent
/// bits. The libm call it replaces kept GELU scalar, and GELU forward and backward took a
/// quarter of a CPU attack step on a narrow ResNet-50 (`perf`, 2026-11-29).
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Round to nearest by the 1.5 * 2^23 trick (no libm call, vectorises).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_54, 88.376_26);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let e = p * (r * r) + r + 1.0;
    // 2^n from the integer `t` holds in its low mantissa bits (no float-to-int conversion,
    // which does not vectorise: Rust's `as` saturates).
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    e * f32::from_bits(biased << 23)
}

/// erf(x) to about 1.5e-7 absolute error (Abramowitz & Stegun 7.1.26 form:
/// `1 - (a1 t + ... + a5 t^5) exp(-x^2)`, `t = 1 / (1 + p |x|)`), returned together with
/// `exp(-x^2)` because GELU's derivative needs that factor too. libm's `erff` is as accurate
/// but about twice as slow here, and GELU runs over every activation twice per step.
#[inline(always)]
fn erf_and_gauss(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let g = exp_approx(-ax * ax);
    let e = 1.0 - poly * g;
    (if x < 0.0 { -e } else { e }, g)
}

/// Exact (erf) GELU: `x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))`.
#[inline(always)]
pub fn gelu_scalar(x: f32) -> f32 {
    let (e, _) = erf_and_gauss(x * FRAC_1_SQRT_2);
    0.5 * x * (1.0 + e)
}

/// d GELU / dx = Phi(x) + x phi(x), with phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
#[inline(always)]
pub fn gelu_grad_scalar(x: f32) -> f32 {
    let (e, g) = erf_and_gauss(x * FRAC_1_SQRT_2);
    0.5 * (1.0 + e) + x * INV_SQRT_2PI * g
}

/// `f(x_i)` element-wise, in parallel chunks, into fresh (not zeroed) memory.
pub fn map(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(yc, xc)| simd::map(yc, xc, &f));
    // SAFETY: the chunks above cover `0..x.len()` and `simd::map` writes every element.
    unsafe { y.set_len(x.len()) };
    y
}

/// `f(a_i, b_i)` element-wise, in parallel chunks, into fresh (not zeroed) memory. Panics
/// when the lengths differ (callers check shapes first).
pub fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "zip_map: operands of different lengths");
    let n = a.len();
    let mut y: Vec<f32> = Vec::with_capacity(n);
    y.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .zip(a[..n].par_chunks(CHUNK).zip(b[..n].par_chunks(CHUNK)))
        .for_each(|(yc, (ac, bc))| simd::zip_map(yc, ac, bc, &f));
    // SAFETY: the chunks above cover `0..n` and `simd::zip_map` writes every element.
    unsafe { y.set_len(n) };
    y
}

/// `y = x * scale[ch] + shift[ch]` (or `x * scale[ch]` without a shift) over rows of
/// `scale.len()` channels: BN's per-channel affine map, in parallel blocks of 64 rows, into
/// fresh (not zeroed) memory, with loops that vectorise.
pub fn channel_affine(x: &[f32], scale: &[f32], shift: Option<&[f32]>) -> Vec<f32> {
    if x.is_empty() {
        return Vec::new();
    }
    let c = scale.len();
    assert!(
        c > 0 && x.len() % c == 0 && shift.is_none_or(|b| b.len() == c),
        "channel_affine: {} values, {} scales, {:?} shifts",
        x.len(),
        scale.len(),
        shift.map(|b| b.len())
    );
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(c * 64)
        .zip(x.par_chunks(c * 64))
        .for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(c).zip(xc.chunks(c)) {
                match shift {
                    Some(b) => {
                        for (((o, v), s), t) in yr.iter_mut().zip(xr).zip(scale).zip(b) {
                            o.write(*v * *s + *t);
                        }
                    }
                    None => {
                        for ((o, v), s) in yr.iter_mut().zip(xr).zip(scale) {
                            o.write(*v * *s);
                        }
                    }
                }
            }
        });
    // SAFETY: the rows cover `0..x.len()` (a multiple of `c`) and each row is written whole:
    // the zips run over `c` outputs, `c` inputs, `c` scales and `c` shifts.
    unsafe { y.set_len(x.len()) };
    y
}

/// The element loops, compiled twice: for the build's baseline (SSE2) and, chosen at run time,
/// for AVX2. The arithmetic is the same IEEE operations in both (no FMA contraction), so the
/// results are the same bits on every x86-64 machine; only the vector width differs.
mod simd {
    use std::mem::MaybeUninit;

    #[inline(always)]
    fn map_body(y: &mut [MaybeUninit<f32>], x: &[f32], f: &impl Fn(f32) -> f32) {
        for (o, v) in y.iter_mut().zip(x) {
            o.write(f(*v));
        }
    }

    #[inline(always)]
    fn zip_body(y: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32], f: &impl Fn(f32, f32) -> f32) {
        for ((o, u), v) in y.iter_mut().zip(a).zip(b) {
            o.write(f(*u, *v));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn map_avx2(y: &mut [MaybeUninit<f32>], x: &[f32], f: &impl Fn(f32) -> f32) {
        map_body(y, x, f)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn zip_avx2(y: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32], f: &impl Fn(f32, f32) -> f32) {
        zip_body(y, a, b, f)
    }

    fn avx2() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            *HAS.get_or_init(|| std::is_x86_feature_detected!("avx2"))
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    pub fn map(y: &mut [MaybeUninit<f32>], x: &[f32], f: &impl Fn(f32) -> f32) {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 was detected on this CPU.
            return unsafe { map_avx2(y, x, f) };
        }
        map_body(y, x, f)
    }

    pub fn zip_map(y: &mut [MaybeUninit<f32>], a: &[f32], b: &[f32], f: &impl Fn(f32, f32) -> f32) {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: AVX2 was detected on this CPU.
            return unsafe { zip_avx2(y, a, b, f) };
        }
        zip_body(y, a, b, f)
    }
}

pub fn gelu_forward(x: &[f32]) -> Vec<f32> {
    map(x, gelu_scalar)
}

pub fn gelu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    zip_map(x, dy, |x, d| d * gelu_grad_scalar(x))
}

pub fn relu_forward(x: &[f32]) -> Vec<f32> {
    map(x, |v| v.max(0.0))
}

pub fn relu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    zip_map(x, dy, |x, d| if x > 0.0 { d } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two positive finite f32.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_approx_is_within_two_ulp() {
        let mut worst = (0u32, 0.0f32);
        let mut x = -87.3f32;
        while x < 88.3 {
            let want = (x as f64).exp() as f32;
            let u = ulps(exp_approx(x), want);
            if u > worst.0 {
                worst = (u, x);
            }
            x += 1.7e-3;
        }
        assert!(
            worst.0 <= 2,
            "exp_approx: {} ulp at x = {}",
            worst.0,
            worst.1
        );
        assert_eq!(exp_approx(0.0), 1.0);
        // Far below the normal range: the smallest normal f32 (GELU multiplies it by ~0).
        assert!(exp_approx(-200.0) > 0.0 && exp_approx(-200.0) < 1.2e-38);
    }

    /// GELU and its derivative against f64 references (erf by its Maclaurin series, 80 terms:
    /// about 1e-10 on the |x| < 4 used here), and the vector loops against the scalar
    /// functions, bit for bit.
    #[test]
    fn gelu_matches_f64_and_the_vector_path_the_scalar_one() {
        fn erf64(x: f64) -> f64 {
            let (mut sum, mut term) = (x, x);
            for n in 1..80 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        let xs: Vec<f32> = (0..6000).map(|i| -5.6 + i as f32 * 1.87e-3).collect();
        let (mut fwd, mut bwd) = (0.0f64, 0.0f64);
        for &x in &xs {
            let z = x as f64 / std::f64::consts::SQRT_2;
            let phi = 0.5 * (1.0 + erf64(z));
            let pdf = (-0.5 * (x as f64).powi(2)).exp() / (2.0 * std::f64::consts::PI).sqrt();
            fwd = fwd.max((gelu_scalar(x) as f64 - x as f64 * phi).abs());
            bwd = bwd.max((gelu_grad_scalar(x) as f64 - (phi + x as f64 * pdf)).abs());
        }
        assert!(
            fwd < 1e-6 && bwd < 1e-6,
            "GELU abs error {fwd:.2e}, derivative {bwd:.2e}"
        );
        let dy: Vec<f32> = xs.iter().map(|x| (x * 3.1).sin()).collect();
        let want: Vec<f32> = xs.iter().map(|x| gelu_scalar(*x)).collect();
        assert_eq!(
            gelu_forward(&xs),
            want,
            "the vector loop gives the scalar bits"
        );
        let want: Vec<f32> = xs
            .iter()
            .zip(&dy)
            .map(|(x, d)| d * gelu_grad_scalar(*x))
            .collect();
        assert_eq!(gelu_backward(&xs, &dy), want);
    }
}
