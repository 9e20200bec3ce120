//! Gaussian, shot and impulse noise.
//!
//! The package adds noise in float64 to `x / 255`, clips to [0, 1], scales by 255 and truncates
//! to uint8. Given the input grey level, the output grey level therefore has a discrete
//! distribution over 0..=255 that follows from the normal (or Poisson) law in closed form; we
//! tabulate it per input level once per severity and draw from it with an alias table (one
//! 64-bit draw per value). The distribution of every output value is exactly the package's;
//! only the random bit stream differs.

use std::sync::OnceLock;

use image::RgbImage;
use rand::Rng;

use super::draws::{stream, Alias256, Draws};
use super::par_rows;

const GAUSSIAN_SCALE: [f64; 5] = [0.08, 0.12, 0.18, 0.26, 0.38];
const SHOT_PHOTONS: [f64; 5] = [60.0, 25.0, 12.0, 5.0, 3.0];
const IMPULSE_AMOUNT: [f64; 5] = [0.03, 0.06, 0.09, 0.17, 0.27];

/// Standard normal CDF.
fn phi(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// P(output = k | input = v) for `trunc(255 * clip(v / 255 + scale * Z, 0, 1))`.
fn gaussian_levels(v: u8, scale: f64) -> [f64; 256] {
    let sigma = 255.0 * scale;
    let v = v as f64;
    let cdf = |k: f64| phi((k - v) / sigma);
    let mut p = [0.0; 256];
    p[0] = cdf(1.0);
    for (k, pk) in p.iter_mut().enumerate().take(255).skip(1) {
        *pk = cdf(k as f64 + 1.0) - cdf(k as f64);
    }
    p[255] = phi((v - 255.0) / sigma); // = 1 - cdf(255)
    p
}

/// P(output = k | input = v) for `trunc(255 * clip(Poisson(v / 255 * c) / c, 0, 1))`,
/// with the package's float64 order of operations for the level a count maps to.
fn shot_levels(v: u8, c: f64) -> [f64; 256] {
    let lambda = (v as f64 / 255.0) * c;
    let mut p = [0.0; 256];
    if lambda == 0.0 {
        p[0] = 1.0;
        return p;
    }
    let mut below = 0.0;
    let counts_below_one = c as usize; // n / c < 1 exactly for n < c (c is an integer)
    for n in 0..counts_below_one {
        let pmf = (-lambda + n as f64 * lambda.ln() - libm::lgamma(n as f64 + 1.0)).exp();
        let level = ((n as f64 / c).clamp(0.0, 1.0) * 255.0) as usize;
        p[level] += pmf;
        below += pmf;
    }
    p[255] += (1.0 - below).max(0.0);
    p
}

fn tables(
    cache: &'static [OnceLock<Vec<Alias256>>; 5],
    s: usize,
    levels: impl Fn(u8) -> [f64; 256],
) -> &'static [Alias256] {
    cache[s].get_or_init(|| (0..=255u8).map(|v| Alias256::new(&levels(v))).collect())
}

fn per_level_noise(img: &RgbImage, t: &[Alias256], draws: &Draws) -> RgbImage {
    let (w, h) = img.dimensions();
    let src = img.as_raw();
    let row = w as usize * 3;
    par_rows(w, h, |y, out| {
        let mut r = draws.stream(stream::PIXELS + y as u64);
        for (o, &v) in out.iter_mut().zip(&src[y * row..(y + 1) * row]) {
            *o = t[v as usize].sample(r.next_u64());
        }
    })
}

pub fn gaussian_noise(img: &RgbImage, s: usize, draws: &Draws) -> RgbImage {
    static CACHE: [OnceLock<Vec<Alias256>>; 5] = [const { OnceLock::new() }; 5];
    let t = tables(&CACHE, s, |v| gaussian_levels(v, GAUSSIAN_SCALE[s]));
    per_level_noise(img, t, draws)
}

pub fn shot_noise(img: &RgbImage, s: usize, draws: &Draws) -> RgbImage {
    static CACHE: [OnceLock<Vec<Alias256>>; 5] = [const { OnceLock::new() }; 5];
    let t = tables(&CACHE, s, |v| shot_levels(v, SHOT_PHOTONS[s]));
    per_level_noise(img, t, draws)
}

/// scikit-image's `random_noise(mode='s&p', amount=p)` (today's version): each value is
/// replaced with probability p, by 1 or 0 with equal odds; the rest stay as they are.
pub fn impulse_noise(img: &RgbImage, s: usize, draws: &Draws) -> RgbImage {
    let (w, h) = img.dimensions();
    let src = img.as_raw();
    let row = w as usize * 3;
    // Compare the top 53 bits with p; the lowest bit (independent of them) picks salt/pepper.
    let cut = (IMPULSE_AMOUNT[s] * (1u64 << 53) as f64) as u64;
    par_rows(w, h, |y, out| {
        let mut r = draws.stream(stream::PIXELS + y as u64);
        for (o, &v) in out.iter_mut().zip(&src[y * row..(y + 1) * row]) {
            let u = r.next_u64();
            *o = if (u >> 11) < cut {
                if u & 1 == 1 {
                    255
                } else {
                    0
                }
            } else {
                v
            };
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_distributions_sum_to_one() {
        for v in [0u8, 1, 77, 254, 255] {
            for s in 0..5 {
                let g: f64 = gaussian_levels(v, GAUSSIAN_SCALE[s]).iter().sum();
                let p: f64 = shot_levels(v, SHOT_PHOTONS[s]).iter().sum();
                assert!(
                    (g - 1.0).abs() < 1e-12 && (p - 1.0).abs() < 1e-9,
                    "{v} {s} {g} {p}"
                );
            }
        }
    }

    #[test]
    fn gaussian_level_mean_matches_a_direct_simulation() {
        // E[out | v = 128] at severity 5 by quadrature of the closed form vs Monte Carlo.
        let p = gaussian_levels(128, 0.38);
        let mean: f64 = p.iter().enumerate().map(|(k, q)| k as f64 * q).sum();
        let mut r = Draws::new(3, 0, 5).stream(0);
        let mut z = vec![0.0; 200_000];
        super::super::draws::fill_normal(&mut r, &mut z);
        let mc = z
            .iter()
            .map(|z| ((128.0 / 255.0 + 0.38 * z).clamp(0.0, 1.0) * 255.0).trunc())
            .sum::<f64>()
            / z.len() as f64;
        assert!(
            (mean - mc).abs() < 0.5,
            "closed form {mean} vs simulation {mc}"
        );
    }
}
