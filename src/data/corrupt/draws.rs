//! Random streams for the corruptions: ChaCha8 keyed by `(seed, corruption, severity)`, one
//! stream per purpose (and per row where rows are drawn in parallel), so outputs do not depend
//! on the thread count. Also the two samplers the package's distributions need beyond uniform
//! numbers: normal deviates (Box-Muller) and an alias table for exact discrete distributions.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Stream ids (the high bits say what a stream is for; rows add the low bits).
pub mod stream {
    pub const PIXELS: u64 = 1 << 40;
    pub const GLASS_SHUFFLE: u64 = 2 << 40;
    pub const ANGLE: u64 = 3 << 40;
    pub const SNOW_LAYER: u64 = 4 << 40;
    pub const FROST_PICK: u64 = 5 << 40;
    pub const PLASMA: u64 = 6 << 40;
    pub const ELASTIC_DX: u64 = 7 << 40;
    pub const ELASTIC_DY: u64 = 8 << 40;
}

/// The random source of one `(seed, corruption, severity)` call.
#[derive(Clone, Debug)]
pub struct Draws {
    key: [u8; 32],
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Draws {
    pub fn new(seed: u64, corruption: u64, severity: u8) -> Self {
        let mut key = [0u8; 32];
        let mut z = splitmix(seed) ^ splitmix(0xC0AA_0000 + (corruption << 8) + severity as u64);
        for chunk in key.chunks_mut(8) {
            z = splitmix(z);
            chunk.copy_from_slice(&z.to_le_bytes());
        }
        Draws { key }
    }

    /// An independent stream.
    pub fn stream(&self, id: u64) -> ChaCha8Rng {
        let mut r = ChaCha8Rng::from_seed(self.key);
        r.set_stream(id);
        r
    }
}

/// Uniform in [0, 1) with 53 random bits.
#[inline(always)]
pub fn uniform(r: &mut ChaCha8Rng) -> f64 {
    (r.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform in [lo, hi).
#[inline(always)]
pub fn uniform_in(r: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * uniform(r)
}

/// Uniform integer in [0, n) (n small; Lemire's multiply-shift on 64 bits: bias < n / 2^64).
#[inline(always)]
pub fn below(r: &mut ChaCha8Rng, n: u64) -> u64 {
    ((r.next_u64() as u128 * n as u128) >> 64) as u64
}

/// Fills `out` with independent standard normal deviates (Marsaglia's polar method on pairs).
pub fn fill_normal(r: &mut ChaCha8Rng, out: &mut [f64]) {
    let mut chunks = out.chunks_exact_mut(2);
    for pair in &mut chunks {
        let (a, b) = box_muller(r);
        pair[0] = a;
        pair[1] = b;
    }
    if let [last] = chunks.into_remainder() {
        *last = box_muller(r).0;
    }
}

#[inline(always)]
fn box_muller(r: &mut ChaCha8Rng) -> (f64, f64) {
    // Polar form: a uniform point in the unit disc (rejecting ~21%), no trigonometry.
    loop {
        let u = 2.0 * uniform(r) - 1.0;
        let v = 2.0 * uniform(r) - 1.0;
        let s = u * u + v * v;
        if s > 0.0 && s < 1.0 {
            let m = (-2.0 * s.ln() / s).sqrt();
            return (u * m, v * m);
        }
    }
}

/// Walker's alias table over the 256 grey levels: one 64-bit draw picks a slot (8 bits) and
/// compares 56 bits against the slot's threshold. Used where the package's output, after its
/// clipping and `uint8` truncation, is a discrete distribution per input grey level (gaussian
/// and shot noise): sampling it directly is exact and needs one draw per value.
#[derive(Clone, Debug)]
pub struct Alias256 {
    threshold: [u64; 256],
    alias: [u8; 256],
}

impl Alias256 {
    /// `p`: probabilities of the 256 levels (need not be normalised exactly; they are rescaled).
    pub fn new(p: &[f64; 256]) -> Self {
        let total: f64 = p.iter().sum();
        let mut scaled: Vec<f64> = p.iter().map(|&v| v / total * 256.0).collect();
        let mut small: Vec<usize> = Vec::new();
        let mut large: Vec<usize> = Vec::new();
        for (i, &v) in scaled.iter().enumerate() {
            if v < 1.0 {
                small.push(i)
            } else {
                large.push(i)
            }
        }
        let mut threshold = [u64::MAX >> 8; 256];
        let mut alias = [0u8; 256];
        for (i, a) in alias.iter_mut().enumerate() {
            *a = i as u8;
        }
        const ONE: f64 = (1u64 << 56) as f64;
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            threshold[s] = (scaled[s] * ONE) as u64;
            alias[s] = l as u8;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Leftovers (rounding) keep probability 1 in their own slot.
        for i in small.into_iter().chain(large) {
            threshold[i] = 1u64 << 56;
            alias[i] = i as u8;
        }
        Alias256 { threshold, alias }
    }

    #[inline(always)]
    pub fn sample(&self, bits: u64) -> u8 {
        let slot = (bits >> 56) as usize;
        if (bits & ((1u64 << 56) - 1)) < self.threshold[slot] {
            slot as u8
        } else {
            self.alias[slot]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_table_reproduces_its_distribution() {
        let mut p = [0.0; 256];
        p[3] = 0.5;
        p[200] = 0.25;
        p[255] = 0.25;
        let t = Alias256::new(&p);
        let mut r = Draws::new(1, 2, 3).stream(0);
        let mut counts = [0usize; 256];
        let n = 200_000;
        for _ in 0..n {
            counts[t.sample(r.next_u64()) as usize] += 1;
        }
        assert_eq!(counts.iter().sum::<usize>(), n);
        assert_eq!(counts[3] + counts[200] + counts[255], n);
        assert!((counts[3] as f64 / n as f64 - 0.5).abs() < 0.01);
        assert!((counts[200] as f64 / n as f64 - 0.25).abs() < 0.01);
    }

    #[test]
    fn normal_deviates_have_unit_variance() {
        let mut r = Draws::new(7, 0, 1).stream(stream::PIXELS);
        let mut v = vec![0.0; 100_001];
        fill_normal(&mut r, &mut v);
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64;
        assert!(
            m.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "mean {m} var {var}"
        );
    }

    #[test]
    fn streams_differ_by_seed_corruption_severity_and_id() {
        let a = Draws::new(1, 0, 1).stream(0).next_u64();
        assert_eq!(a, Draws::new(1, 0, 1).stream(0).next_u64());
        assert_ne!(a, Draws::new(2, 0, 1).stream(0).next_u64());
        assert_ne!(a, Draws::new(1, 1, 1).stream(0).next_u64());
        assert_ne!(a, Draws::new(1, 0, 2).stream(0).next_u64());
        assert_ne!(a, Draws::new(1, 0, 1).stream(1).next_u64());
    }
}
