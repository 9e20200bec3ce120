//! Per-sample random streams. Every random draw of an attack on sample `i` comes from a stream
//! keyed by (seed, i, attack, phase), so a sample's result does not depend on the batch size,
//! on which other samples share its batch, or on whether the run was resumed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub type SampleRng = ChaCha8Rng;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stream of sample `index` for `(seed, stream)`; `stream` names the attack and phase.
pub fn sample_rng(seed: u64, index: u64, stream: u64) -> SampleRng {
    let k = splitmix(splitmix(splitmix(seed) ^ index) ^ stream.wrapping_mul(0xA24B_AED4_963E_E407));
    ChaCha8Rng::seed_from_u64(k)
}

/// Uniform in [0, 1).
pub fn uniform(rng: &mut SampleRng) -> f32 {
    // 24 random bits: exactly representable, never 1.0.
    (rng.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Standard normal (Box-Muller).
pub fn normal(rng: &mut SampleRng) -> f32 {
    let u1 = ((rng.next_u32() >> 8) as f32 + 1.0) * (1.0 / 16_777_217.0);
    let u2 = uniform(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// -1 or +1 with equal probability.
pub fn sign(rng: &mut SampleRng) -> f32 {
    if rng.next_u32() & 1 == 1 {
        1.0
    } else {
        -1.0
    }
}

/// Uniform integer in `0..high` (`0` when `high == 0`), as the reference's `random_int`.
pub fn below(rng: &mut SampleRng, high: usize) -> usize {
    if high == 0 {
        0
    } else {
        ((uniform(rng) * high as f32) as usize).min(high - 1)
    }
}
