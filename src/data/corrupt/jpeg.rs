//! JPEG compression: the lossy part of a baseline JPEG round trip exactly as Pillow runs it
//! through libjpeg-turbo (`img.save(f, 'JPEG', quality=q)` then decode), without the entropy
//! coding, which is lossless and so changes no pixel:
//!
//! 1. RGB -> YCbCr in libjpeg's 16-bit fixed point (`jccolor.c`);
//! 2. 4:2:0 chroma (libjpeg's default, which Pillow keeps): 2x2 averages with the alternating
//!    rounding bias 1, 2 (`h2v2_downsample`); edges padded by replication to whole blocks;
//! 3. per 8x8 block: level shift, the "islow" integer forward DCT (Loeffler-Ligtenberg-Moschytz,
//!    13-bit constants, 2 extra bits after pass 1), quantisation by `round(|c| / (8 q)) * sign`
//!    with the Annex K tables scaled by libjpeg's quality rule (clamped to 255: baseline);
//! 4. dequantisation and the "islow" inverse DCT, + 128, clamped;
//! 5. "fancy" (triangle) chroma upsampling (`h2v2_fancy_upsample`) and YCbCr -> RGB in fixed
//!    point (`jdcolor.c`).
//!
//! Every step is integer arithmetic, so the result is the same bits as libjpeg-turbo's when
//! its steps are the ones above (its SIMD paths are bit-exact with its C code).

// The lane helpers index fixed-size arrays in plain loops on purpose (they vectorise).
#![allow(clippy::needless_range_loop)]

use image::RgbImage;
use rayon::prelude::*;

const QUALITY: [u32; 5] = [25, 18, 15, 10, 7];

/// ITU-T T.81 Annex K tables, row-major.
const LUMA_Q: [u32; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
];
const CHROMA_Q: [u32; 64] = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
];

/// libjpeg's `jpeg_set_quality(q, force_baseline=TRUE)`.
fn scaled_table(base: &[u32; 64], quality: u32) -> [i32; 64] {
    let scale = if quality < 50 {
        5000 / quality
    } else {
        200 - 2 * quality
    };
    base.map(|b| ((b * scale + 50) / 100).clamp(1, 255) as i32)
}

const CONST_BITS: i32 = 13;
const PASS1_BITS: i32 = 2;
const F_0_298: i32 = 2446;
const F_0_390: i32 = 3196;
const F_0_541: i32 = 4433;
const F_0_765: i32 = 6270;
const F_0_899: i32 = 7373;
const F_1_175: i32 = 9633;
const F_1_501: i32 = 12299;
const F_1_847: i32 = 15137;
const F_1_961: i32 = 16069;
const F_2_053: i32 = 16819;
const F_2_562: i32 = 20995;
const F_3_072: i32 = 25172;

#[cfg(test)]
#[inline(always)]
fn descale(x: i32, n: i32) -> i32 {
    (x + (1 << (n - 1))) >> n
}

/// One 1-D forward DCT (LL&M, 12 multiplies) on 8 values `v[o + k * stride]`; `pass1`
/// selects the first pass's scaling (outputs scaled up by PASS1_BITS) or the second's.
#[cfg(test)]
#[inline(always)]
fn fdct_1d(v: &mut [i32; 64], o: usize, stride: usize, pass1: bool) {
    let d = |k: usize| v[o + k * stride];
    let (tmp0, tmp7) = (d(0) + d(7), d(0) - d(7));
    let (tmp1, tmp6) = (d(1) + d(6), d(1) - d(6));
    let (tmp2, tmp5) = (d(2) + d(5), d(2) - d(5));
    let (tmp3, tmp4) = (d(3) + d(4), d(3) - d(4));
    let (tmp10, tmp13) = (tmp0 + tmp3, tmp0 - tmp3);
    let (tmp11, tmp12) = (tmp1 + tmp2, tmp1 - tmp2);
    let (even_shift, out_bits) = if pass1 {
        (PASS1_BITS, CONST_BITS - PASS1_BITS)
    } else {
        (0, CONST_BITS + PASS1_BITS)
    };
    let (o0, o4) = if pass1 {
        ((tmp10 + tmp11) << even_shift, (tmp10 - tmp11) << even_shift)
    } else {
        (
            descale(tmp10 + tmp11, PASS1_BITS),
            descale(tmp10 - tmp11, PASS1_BITS),
        )
    };
    let z1 = (tmp12 + tmp13) * F_0_541;
    let o2 = descale(z1 + tmp13 * F_0_765, out_bits);
    let o6 = descale(z1 - tmp12 * F_1_847, out_bits);
    let z1 = tmp4 + tmp7;
    let z2 = tmp5 + tmp6;
    let z3 = tmp4 + tmp6;
    let z4 = tmp5 + tmp7;
    let z5 = (z3 + z4) * F_1_175;
    let t4 = tmp4 * F_0_298;
    let t5 = tmp5 * F_2_053;
    let t6 = tmp6 * F_3_072;
    let t7 = tmp7 * F_1_501;
    let z1 = -z1 * F_0_899;
    let z2 = -z2 * F_2_562;
    let z3 = -z3 * F_1_961 + z5;
    let z4 = -z4 * F_0_390 + z5;
    v[o] = o0;
    v[o + 4 * stride] = o4;
    v[o + 2 * stride] = o2;
    v[o + 6 * stride] = o6;
    v[o + 7 * stride] = descale(t4 + z1 + z3, out_bits);
    v[o + 5 * stride] = descale(t5 + z2 + z4, out_bits);
    v[o + 3 * stride] = descale(t6 + z2 + z3, out_bits);
    v[o + stride] = descale(t7 + z1 + z4, out_bits);
}

/// `jpeg_fdct_islow`: rows, then columns; output scaled up by 8 (scalar reference).
#[cfg(test)]
fn fdct(block: &mut [i32; 64]) {
    for r in 0..8 {
        fdct_1d(block, r * 8, 1, true);
    }
    for c in 0..8 {
        fdct_1d(block, c, 8, false);
    }
}

/// One 1-D inverse DCT on 8 values; returns the 8 outputs before the final descale.
#[cfg(test)]
#[inline(always)]
fn idct_1d(d: [i32; 8]) -> [i32; 8] {
    let (z2, z3) = (d[2], d[6]);
    let z1 = (z2 + z3) * F_0_541;
    let tmp2 = z1 - z3 * F_1_847;
    let tmp3 = z1 + z2 * F_0_765;
    let tmp0 = (d[0] + d[4]) << CONST_BITS;
    let tmp1 = (d[0] - d[4]) << CONST_BITS;
    let (tmp10, tmp13) = (tmp0 + tmp3, tmp0 - tmp3);
    let (tmp11, tmp12) = (tmp1 + tmp2, tmp1 - tmp2);
    let (t0, t1, t2, t3) = (d[7], d[5], d[3], d[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * F_1_175;
    let z1 = -z1 * F_0_899;
    let z2 = -z2 * F_2_562;
    let z3 = -z3 * F_1_961 + z5;
    let z4 = -z4 * F_0_390 + z5;
    let t0 = t0 * F_0_298 + z1 + z3;
    let t1 = t1 * F_2_053 + z2 + z4;
    let t2 = t2 * F_3_072 + z2 + z3;
    let t3 = t3 * F_1_501 + z1 + z4;
    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

/// `jpeg_idct_islow` on dequantised coefficients: columns, then rows; + 128 and clamp (scalar
/// reference, with libjpeg's all-zero-AC shortcuts).
#[cfg(test)]
fn idct(coef: &[i32; 64], out: &mut [u8; 64]) {
    let mut ws = [0i32; 64];
    for c in 0..8 {
        let col: [i32; 8] = std::array::from_fn(|k| coef[k * 8 + c]);
        if col[1..].iter().all(|&v| v == 0) {
            for k in 0..8 {
                ws[k * 8 + c] = col[0] << PASS1_BITS;
            }
            continue;
        }
        let o = idct_1d(col);
        for k in 0..8 {
            ws[k * 8 + c] = descale(o[k], CONST_BITS - PASS1_BITS);
        }
    }
    for r in 0..8 {
        let row: [i32; 8] = std::array::from_fn(|k| ws[r * 8 + k]);
        let o = if row[1..].iter().all(|&v| v == 0) {
            [descale(row[0], PASS1_BITS + 3); 8]
        } else {
            idct_1d(row).map(|v| descale(v, CONST_BITS + PASS1_BITS + 3))
        };
        for k in 0..8 {
            out[r * 8 + k] = (o[k] + 128).clamp(0, 255) as u8;
        }
    }
}

// Lane-parallel versions: the same integer operations on 8 rows or columns at once (so they
// vectorise), checked equal to the scalar versions above in the unit tests.
type V8 = [i32; 8];
// Plain indexed loops (not `array::from_fn` / `map`, which perf showed left as out-of-line
// calls): LLVM turns each into one vector instruction.
#[inline(always)]
fn vadd(a: V8, b: V8) -> V8 {
    let mut r = [0; 8];
    for i in 0..8 {
        r[i] = a[i] + b[i];
    }
    r
}
#[inline(always)]
fn vsub(a: V8, b: V8) -> V8 {
    let mut r = [0; 8];
    for i in 0..8 {
        r[i] = a[i] - b[i];
    }
    r
}
#[inline(always)]
fn vmul(a: V8, c: i32) -> V8 {
    let mut r = [0; 8];
    for i in 0..8 {
        r[i] = a[i] * c;
    }
    r
}
#[inline(always)]
fn vshl(a: V8, n: i32) -> V8 {
    let mut r = [0; 8];
    for i in 0..8 {
        r[i] = a[i] << n;
    }
    r
}
#[inline(always)]
fn vdescale(a: V8, n: i32) -> V8 {
    let mut r = [0; 8];
    for i in 0..8 {
        r[i] = (a[i] + (1 << (n - 1))) >> n;
    }
    r
}
#[inline(always)]
fn transpose(m: &[V8; 8]) -> [V8; 8] {
    let mut t = [[0; 8]; 8];
    for r in 0..8 {
        for c in 0..8 {
            t[r][c] = m[c][r];
        }
    }
    t
}

/// The 1-D forward DCT along the vector index, for 8 lanes at once.
#[inline(always)]
fn fdct_lanes(v: &mut [V8; 8], pass1: bool) {
    let (tmp0, tmp7) = (vadd(v[0], v[7]), vsub(v[0], v[7]));
    let (tmp1, tmp6) = (vadd(v[1], v[6]), vsub(v[1], v[6]));
    let (tmp2, tmp5) = (vadd(v[2], v[5]), vsub(v[2], v[5]));
    let (tmp3, tmp4) = (vadd(v[3], v[4]), vsub(v[3], v[4]));
    let (tmp10, tmp13) = (vadd(tmp0, tmp3), vsub(tmp0, tmp3));
    let (tmp11, tmp12) = (vadd(tmp1, tmp2), vsub(tmp1, tmp2));
    let out_bits = if pass1 {
        CONST_BITS - PASS1_BITS
    } else {
        CONST_BITS + PASS1_BITS
    };
    if pass1 {
        v[0] = vshl(vadd(tmp10, tmp11), PASS1_BITS);
        v[4] = vshl(vsub(tmp10, tmp11), PASS1_BITS);
    } else {
        v[0] = vdescale(vadd(tmp10, tmp11), PASS1_BITS);
        v[4] = vdescale(vsub(tmp10, tmp11), PASS1_BITS);
    }
    let z1 = vmul(vadd(tmp12, tmp13), F_0_541);
    v[2] = vdescale(vadd(z1, vmul(tmp13, F_0_765)), out_bits);
    v[6] = vdescale(vsub(z1, vmul(tmp12, F_1_847)), out_bits);
    let z1 = vadd(tmp4, tmp7);
    let z2 = vadd(tmp5, tmp6);
    let z3 = vadd(tmp4, tmp6);
    let z4 = vadd(tmp5, tmp7);
    let z5 = vmul(vadd(z3, z4), F_1_175);
    let t4 = vmul(tmp4, F_0_298);
    let t5 = vmul(tmp5, F_2_053);
    let t6 = vmul(tmp6, F_3_072);
    let t7 = vmul(tmp7, F_1_501);
    let z1 = vmul(z1, -F_0_899);
    let z2 = vmul(z2, -F_2_562);
    let z3 = vadd(vmul(z3, -F_1_961), z5);
    let z4 = vadd(vmul(z4, -F_0_390), z5);
    v[7] = vdescale(vadd(vadd(t4, z1), z3), out_bits);
    v[5] = vdescale(vadd(vadd(t5, z2), z4), out_bits);
    v[3] = vdescale(vadd(vadd(t6, z2), z3), out_bits);
    v[1] = vdescale(vadd(vadd(t7, z1), z4), out_bits);
}

/// The 1-D inverse DCT along the vector index for 8 lanes, before the final descale.
#[inline(always)]
fn idct_lanes(d: &[V8; 8]) -> [V8; 8] {
    let (z2, z3) = (d[2], d[6]);
    let z1 = vmul(vadd(z2, z3), F_0_541);
    let tmp2 = vsub(z1, vmul(z3, F_1_847));
    let tmp3 = vadd(z1, vmul(z2, F_0_765));
    let tmp0 = vshl(vadd(d[0], d[4]), CONST_BITS);
    let tmp1 = vshl(vsub(d[0], d[4]), CONST_BITS);
    let (tmp10, tmp13) = (vadd(tmp0, tmp3), vsub(tmp0, tmp3));
    let (tmp11, tmp12) = (vadd(tmp1, tmp2), vsub(tmp1, tmp2));
    let (t0, t1, t2, t3) = (d[7], d[5], d[3], d[1]);
    let z1 = vadd(t0, t3);
    let z2 = vadd(t1, t2);
    let z3 = vadd(t0, t2);
    let z4 = vadd(t1, t3);
    let z5 = vmul(vadd(z3, z4), F_1_175);
    let z1 = vmul(z1, -F_0_899);
    let z2 = vmul(z2, -F_2_562);
    let z3 = vadd(vmul(z3, -F_1_961), z5);
    let z4 = vadd(vmul(z4, -F_0_390), z5);
    let t0 = vadd(vadd(vmul(t0, F_0_298), z1), z3);
    let t1 = vadd(vadd(vmul(t1, F_2_053), z2), z4);
    let t2 = vadd(vadd(vmul(t2, F_3_072), z2), z3);
    let t3 = vadd(vadd(vmul(t3, F_1_501), z1), z4);
    [
        vadd(tmp10, t3),
        vadd(tmp11, t2),
        vadd(tmp12, t1),
        vadd(tmp13, t0),
        vsub(tmp13, t0),
        vsub(tmp12, t1),
        vsub(tmp11, t2),
        vsub(tmp10, t3),
    ]
}

/// `jpeg_fdct_islow` on a block of rows `b[r][c]` (level-shifted samples): rows then columns.
#[inline(always)]
fn fdct_v(b: &[V8; 8]) -> [V8; 8] {
    let mut t = transpose(b);
    fdct_lanes(&mut t, true);
    let mut p = transpose(&t);
    fdct_lanes(&mut p, false);
    p
}

/// `jpeg_idct_islow` on dequantised coefficients `c[v][u]`: columns then rows; + 128, clamped.
/// (libjpeg's all-zero-AC shortcuts give the same values as the full computation.)
#[inline(always)]
fn idct_v(c: &[V8; 8]) -> [V8; 8] {
    let mut w = idct_lanes(c);
    for v in w.iter_mut() {
        *v = vdescale(*v, CONST_BITS - PASS1_BITS);
    }
    let wt = transpose(&w);
    let mut o = idct_lanes(&wt);
    for v in o.iter_mut() {
        *v = vdescale(*v, CONST_BITS + PASS1_BITS + 3);
        for x in v.iter_mut() {
            *x = (*x + 128).clamp(0, 255);
        }
    }
    transpose(&o)
}

/// Exact `(x + d / 2) / d` for 0 <= x < 2^16, 8 <= d < 2^12 by multiply-shift (the magic
/// number fits 32 bits, so the product is one 32x32->64 multiply per lane).
#[derive(Clone, Copy)]
struct Divisor {
    half: u32,
    magic: u32,
}

impl Divisor {
    fn new(d: u32) -> Self {
        Divisor {
            half: d / 2,
            magic: ((1u64 << 32) / d as u64 + 1) as u32,
        }
    }
    #[cfg(test)]
    #[inline(always)]
    fn quantise(self, x: i32) -> i32 {
        let q = (((x.unsigned_abs() + self.half) as u64 * self.magic as u64) >> 32) as i32;
        if x < 0 {
            -q
        } else {
            q
        }
    }
}

/// Per coefficient row: the quantiser's halves, magic numbers and the table (dequantisation).
struct QuantRows {
    half: [[u32; 8]; 8],
    magic: [[u32; 8]; 8],
    table: [V8; 8],
}

impl QuantRows {
    fn new(table: &[i32; 64]) -> Self {
        let mut q = QuantRows {
            half: [[0; 8]; 8],
            magic: [[0; 8]; 8],
            table: [[0; 8]; 8],
        };
        for i in 0..64 {
            let d = Divisor::new(8 * table[i] as u32);
            q.half[i / 8][i % 8] = d.half;
            q.magic[i / 8][i % 8] = d.magic;
            q.table[i / 8][i % 8] = table[i];
        }
        q
    }

    /// Quantise then dequantise one row of coefficients: `round(c / 8q) * q`, sign kept.
    #[inline(always)]
    fn requantise(&self, r: usize, f: V8) -> V8 {
        let mut out = [0; 8];
        for i in 0..8 {
            let a = f[i].unsigned_abs() + self.half[r][i];
            let q = ((a as u64 * self.magic[r][i] as u64) >> 32) as i32;
            let q = if f[i] < 0 { -q } else { q };
            out[i] = q * self.table[r][i];
        }
        out
    }
}

/// Encodes and decodes the 8-row band of blocks `band` (`w` wide) in place.
#[inline(always)]
fn round_trip_band(band: &mut [u8], w: usize, q: &QuantRows) {
    for bx in 0..w / 8 {
        let mut b = [[0i32; 8]; 8];
        for (r, br) in b.iter_mut().enumerate() {
            let px = &band[r * w + bx * 8..r * w + bx * 8 + 8];
            for c in 0..8 {
                br[c] = px[c] as i32 - 128;
            }
        }
        let f = fdct_v(&b);
        let mut coef = [[0i32; 8]; 8];
        for r in 0..8 {
            coef[r] = q.requantise(r, f[r]);
        }
        let px = idct_v(&coef);
        for (r, row) in px.iter().enumerate() {
            let o = &mut band[r * w + bx * 8..r * w + bx * 8 + 8];
            for c in 0..8 {
                o[c] = row[c] as u8;
            }
        }
    }
}

/// The same block round trip in AVX2 intrinsics: LLVM left the portable lane code above
/// mostly scalar (perf showed scalar multiplies and spills), so the DCTs, the quantiser and
/// the transposes are spelled out, operation for operation as the portable version (which
/// stays the reference and the fallback without AVX2).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{
        QuantRows, CONST_BITS, F_0_298, F_0_390, F_0_541, F_0_765, F_0_899, F_1_175, F_1_501,
        F_1_847, F_1_961, F_2_053, F_2_562, F_3_072, PASS1_BITS,
    };

    type R = [__m256i; 8];

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn add(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(a, b)
    }
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn sub(a: __m256i, b: __m256i) -> __m256i {
        _mm256_sub_epi32(a, b)
    }
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn mul(a: __m256i, c: i32) -> __m256i {
        _mm256_mullo_epi32(a, _mm256_set1_epi32(c))
    }
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn shl(a: __m256i, n: i32) -> __m256i {
        _mm256_sll_epi32(a, _mm_cvtsi32_si128(n))
    }
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn descale(a: __m256i, n: i32) -> __m256i {
        _mm256_sra_epi32(
            _mm256_add_epi32(a, _mm256_set1_epi32(1 << (n - 1))),
            _mm_cvtsi32_si128(n),
        )
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn transpose(r: &R) -> R {
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        [
            _mm256_permute2x128_si256::<0x20>(u0, u4),
            _mm256_permute2x128_si256::<0x20>(u1, u5),
            _mm256_permute2x128_si256::<0x20>(u2, u6),
            _mm256_permute2x128_si256::<0x20>(u3, u7),
            _mm256_permute2x128_si256::<0x31>(u0, u4),
            _mm256_permute2x128_si256::<0x31>(u1, u5),
            _mm256_permute2x128_si256::<0x31>(u2, u6),
            _mm256_permute2x128_si256::<0x31>(u3, u7),
        ]
    }

    /// `super::fdct_lanes`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn fdct_lanes(v: &mut R, pass1: bool) {
        let (tmp0, tmp7) = (add(v[0], v[7]), sub(v[0], v[7]));
        let (tmp1, tmp6) = (add(v[1], v[6]), sub(v[1], v[6]));
        let (tmp2, tmp5) = (add(v[2], v[5]), sub(v[2], v[5]));
        let (tmp3, tmp4) = (add(v[3], v[4]), sub(v[3], v[4]));
        let (tmp10, tmp13) = (add(tmp0, tmp3), sub(tmp0, tmp3));
        let (tmp11, tmp12) = (add(tmp1, tmp2), sub(tmp1, tmp2));
        let out_bits = if pass1 {
            CONST_BITS - PASS1_BITS
        } else {
            CONST_BITS + PASS1_BITS
        };
        if pass1 {
            v[0] = shl(add(tmp10, tmp11), PASS1_BITS);
            v[4] = shl(sub(tmp10, tmp11), PASS1_BITS);
        } else {
            v[0] = descale(add(tmp10, tmp11), PASS1_BITS);
            v[4] = descale(sub(tmp10, tmp11), PASS1_BITS);
        }
        let z1 = mul(add(tmp12, tmp13), F_0_541);
        v[2] = descale(add(z1, mul(tmp13, F_0_765)), out_bits);
        v[6] = descale(sub(z1, mul(tmp12, F_1_847)), out_bits);
        let z1 = add(tmp4, tmp7);
        let z2 = add(tmp5, tmp6);
        let z3 = add(tmp4, tmp6);
        let z4 = add(tmp5, tmp7);
        let z5 = mul(add(z3, z4), F_1_175);
        let t4 = mul(tmp4, F_0_298);
        let t5 = mul(tmp5, F_2_053);
        let t6 = mul(tmp6, F_3_072);
        let t7 = mul(tmp7, F_1_501);
        let z1 = mul(z1, -F_0_899);
        let z2 = mul(z2, -F_2_562);
        let z3 = add(mul(z3, -F_1_961), z5);
        let z4 = add(mul(z4, -F_0_390), z5);
        v[7] = descale(add(add(t4, z1), z3), out_bits);
        v[5] = descale(add(add(t5, z2), z4), out_bits);
        v[3] = descale(add(add(t6, z2), z3), out_bits);
        v[1] = descale(add(add(t7, z1), z4), out_bits);
    }

    /// `super::idct_lanes`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn idct_lanes(d: &R) -> R {
        let (z2, z3) = (d[2], d[6]);
        let z1 = mul(add(z2, z3), F_0_541);
        let tmp2 = sub(z1, mul(z3, F_1_847));
        let tmp3 = add(z1, mul(z2, F_0_765));
        let tmp0 = shl(add(d[0], d[4]), CONST_BITS);
        let tmp1 = shl(sub(d[0], d[4]), CONST_BITS);
        let (tmp10, tmp13) = (add(tmp0, tmp3), sub(tmp0, tmp3));
        let (tmp11, tmp12) = (add(tmp1, tmp2), sub(tmp1, tmp2));
        let (t0, t1, t2, t3) = (d[7], d[5], d[3], d[1]);
        let z1 = add(t0, t3);
        let z2 = add(t1, t2);
        let z3 = add(t0, t2);
        let z4 = add(t1, t3);
        let z5 = mul(add(z3, z4), F_1_175);
        let z1 = mul(z1, -F_0_899);
        let z2 = mul(z2, -F_2_562);
        let z3 = add(mul(z3, -F_1_961), z5);
        let z4 = add(mul(z4, -F_0_390), z5);
        let t0 = add(add(mul(t0, F_0_298), z1), z3);
        let t1 = add(add(mul(t1, F_2_053), z2), z4);
        let t2 = add(add(mul(t2, F_3_072), z2), z3);
        let t3 = add(add(mul(t3, F_1_501), z1), z4);
        [
            add(tmp10, t3),
            add(tmp11, t2),
            add(tmp12, t1),
            add(tmp13, t0),
            sub(tmp13, t0),
            sub(tmp12, t1),
            sub(tmp11, t2),
            sub(tmp10, t3),
        ]
    }

    /// `QuantRows::requantise` on one row: `|f| + half`, times the 32-bit magic keeping the
    /// high 32 bits of the 64-bit product (even and odd lanes separately), sign of `f`, times
    /// the table entry.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn requantise(f: __m256i, half: __m256i, magic: __m256i, table: __m256i) -> __m256i {
        let a = _mm256_add_epi32(_mm256_abs_epi32(f), half);
        let even = _mm256_srli_epi64::<32>(_mm256_mul_epu32(a, magic));
        let odd = _mm256_mul_epu32(_mm256_srli_epi64::<32>(a), _mm256_srli_epi64::<32>(magic));
        let q = _mm256_blend_epi32::<0b1010_1010>(even, odd);
        // sign_epi32 zeroes where f == 0, where q is 0 anyway (half < divisor).
        _mm256_mullo_epi32(_mm256_sign_epi32(q, f), table)
    }

    /// `super::round_trip_band`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn round_trip_band(band: &mut [u8], w: usize, q: &QuantRows) {
        assert!(band.len() >= 8 * w);
        let ld = |a: &[u32; 8]| _mm256_loadu_si256(a.as_ptr() as *const __m256i);
        let half: R = std::array::from_fn(|r| ld(&q.half[r]));
        let magic: R = std::array::from_fn(|r| ld(&q.magic[r]));
        let table: R =
            std::array::from_fn(|r| _mm256_loadu_si256(q.table[r].as_ptr() as *const __m256i));
        let c128 = _mm256_set1_epi32(128);
        let zero = _mm256_setzero_si256();
        let max = _mm256_set1_epi32(255);
        let base = band.as_mut_ptr();
        for bx in 0..w / 8 {
            let mut b: R = [zero; 8];
            for (r, v) in b.iter_mut().enumerate() {
                // In bounds: r * w + bx * 8 + 8 <= 8 * w (asserted above).
                let p = base.add(r * w + bx * 8) as *const __m128i;
                *v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p)), c128);
            }
            // Forward DCT: rows (as lanes after a transpose), then columns.
            let mut t = transpose(&b);
            fdct_lanes(&mut t, true);
            let mut f = transpose(&t);
            fdct_lanes(&mut f, false);
            let mut coef: R = [zero; 8];
            for r in 0..8 {
                coef[r] = requantise(f[r], half[r], magic[r], table[r]);
            }
            // Inverse DCT: columns, then rows; + 128 and clamp.
            let mut wv = idct_lanes(&coef);
            for v in wv.iter_mut() {
                *v = descale(*v, CONST_BITS - PASS1_BITS);
            }
            let wt = transpose(&wv);
            let mut o = idct_lanes(&wt);
            for v in o.iter_mut() {
                let x = descale(*v, CONST_BITS + PASS1_BITS + 3);
                *v = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(x, c128), zero), max);
            }
            let px = transpose(&o);
            for r in (0..8).step_by(2) {
                // Two rows of 8 values (0..=255) to bytes: [r0 | r1] as u16, lanes in order.
                let p16 =
                    _mm256_permute4x64_epi64::<0b1101_1000>(_mm256_packus_epi32(px[r], px[r + 1]));
                let p8 = _mm256_packus_epi16(p16, p16);
                let d0 = base.add(r * w + bx * 8) as *mut __m128i;
                let d1 = base.add((r + 1) * w + bx * 8) as *mut __m128i;
                _mm_storel_epi64(d0, _mm256_castsi256_si128(p8));
                _mm_storel_epi64(d1, _mm256_extracti128_si256::<1>(p8));
            }
        }
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| std::is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Encodes and decodes one component plane (`w` a multiple of 8, whole 8-row bands) in place.
fn round_trip_plane(plane: &mut [u8], w: usize, table: &[i32; 64]) {
    let q = QuantRows::new(table);
    plane.par_chunks_mut(8 * w).for_each(|band| {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: AVX2 was detected on this CPU (same integer operations, wider vectors).
            return unsafe { avx2::round_trip_band(band, w, &q) };
        }
        round_trip_band(band, w, &q)
    });
}

const SCALEBITS: i32 = 16;
const ONE_HALF: i32 = 1 << (SCALEBITS - 1);

const fn fix(x: f64) -> i32 {
    (x * (1i64 << SCALEBITS) as f64 + 0.5) as i32
}

#[inline(always)]
fn rgb_to_ycc(r: i32, g: i32, b: i32) -> (u8, u8, u8) {
    const CBCR_OFFSET: i32 = 128 << SCALEBITS;
    let y = (fix(0.29900) * r + fix(0.58700) * g + fix(0.11400) * b + ONE_HALF) >> SCALEBITS;
    let cb = (-fix(0.16874) * r - fix(0.33126) * g + fix(0.50000) * b + CBCR_OFFSET + ONE_HALF - 1)
        >> SCALEBITS;
    let cr = (fix(0.50000) * r - fix(0.41869) * g - fix(0.08131) * b + CBCR_OFFSET + ONE_HALF - 1)
        >> SCALEBITS;
    (y as u8, cb as u8, cr as u8)
}

#[inline(always)]
fn ycc_to_rgb(y: i32, cb: i32, cr: i32) -> [u8; 3] {
    let (x_cb, x_cr) = (cb - 128, cr - 128);
    let r = y + ((fix(1.40200) * x_cr + ONE_HALF) >> SCALEBITS);
    let g = y + ((-fix(0.34414) * x_cb + ONE_HALF - fix(0.71414) * x_cr) >> SCALEBITS);
    let b = y + ((fix(1.77200) * x_cb + ONE_HALF) >> SCALEBITS);
    [
        r.clamp(0, 255) as u8,
        g.clamp(0, 255) as u8,
        b.clamp(0, 255) as u8,
    ]
}

/// Pillow's JPEG save at the severity's quality, then decode.
pub fn jpeg_compression(img: &RgbImage, s: usize) -> RgbImage {
    let q = QUALITY[s];
    let (lq, cq) = (scaled_table(&LUMA_Q, q), scaled_table(&CHROMA_Q, q));
    let (w, h) = img.dimensions();
    let (wu, hu) = (w as usize, h as usize);
    let src = img.as_raw();
    // Y: whole blocks, edges replicated.
    let (yw, yh) = (wu.div_ceil(8) * 8, hu.div_ceil(8) * 8);
    // Chroma: ceil(w / 2) x ceil(h / 2) samples, blocks of the 16x16 MCU grid.
    let (cw_real, ch_real) = (wu.div_ceil(2), hu.div_ceil(2));
    let (cw, ch) = (wu.div_ceil(16) * 8, ch_real.div_ceil(8) * 8);
    // Full-resolution chroma rows are 2 * cw wide (>= yw), the image replicated to the right.
    let fw = 2 * cw;
    let mut yp = vec![0u8; yw * yh];
    let mut cb_full = vec![0u8; fw * hu];
    let mut cr_full = vec![0u8; fw * hu];
    yp[..yw * hu]
        .par_chunks_mut(yw)
        .zip(cb_full.par_chunks_mut(fw))
        .zip(cr_full.par_chunks_mut(fw))
        .enumerate()
        .for_each(|(y, ((yr, cbr), crr))| {
            let sr = &src[y * wu * 3..(y + 1) * wu * 3];
            for (((p, yv), cbv), crv) in sr
                .chunks_exact(3)
                .zip(yr.iter_mut())
                .zip(cbr.iter_mut())
                .zip(crr.iter_mut())
            {
                (*yv, *cbv, *crv) = rgb_to_ycc(p[0] as i32, p[1] as i32, p[2] as i32);
            }
            let (ly, lcb, lcr) = (yr[wu - 1], cbr[wu - 1], crr[wu - 1]);
            yr[wu..].fill(ly);
            cbr[wu..].fill(lcb);
            crr[wu..].fill(lcr);
        });
    // Rows below the image repeat its last row.
    let (done, pad) = yp.split_at_mut(yw * hu);
    for r in pad.chunks_exact_mut(yw) {
        r.copy_from_slice(&done[(hu - 1) * yw..]);
    }
    // 2x2 averages with libjpeg's alternating bias; chroma rows past the last real one repeat
    // it (libjpeg pads the iMCU that way); an odd last image row pairs with itself.
    let mut cbp = vec![0u8; cw * ch];
    let mut crp = vec![0u8; cw * ch];
    cbp.par_chunks_mut(cw)
        .zip(crp.par_chunks_mut(cw))
        .enumerate()
        .for_each(|(cy, (cb_row, cr_row))| {
            let r0 = 2 * cy.min(ch_real - 1);
            let r1 = (r0 + 1).min(hu - 1);
            for (plane, out) in [(&cb_full, cb_row), (&cr_full, cr_row)] {
                let (a, b) = (
                    &plane[r0 * fw..(r0 + 1) * fw],
                    &plane[r1 * fw..(r1 + 1) * fw],
                );
                for (cx, ((o, pa), pb)) in out
                    .iter_mut()
                    .zip(a.chunks_exact(2))
                    .zip(b.chunks_exact(2))
                    .enumerate()
                {
                    let bias = 1 + (cx as u32 & 1);
                    let sum = pa[0] as u32 + pa[1] as u32 + pb[0] as u32 + pb[1] as u32;
                    *o = ((sum + bias) >> 2) as u8;
                }
            }
        });
    round_trip_plane(&mut yp, yw, &lq);
    round_trip_plane(&mut cbp, cw, &cq);
    round_trip_plane(&mut crp, cw, &cq);
    // Triangle upsampling: column sums 3 * nearer row + farther row, then 3:1 across columns.
    let row = wu * 3;
    let mut out = vec![0u8; hu * row];
    out.par_chunks_mut(row).enumerate().for_each_init(
        || {
            (
                vec![0i32; cw_real],
                vec![0i32; 2 * cw_real],
                vec![0i32; 2 * cw_real],
            )
        },
        |(sums, cb_up, cr_up), (y, o)| {
            let i = y / 2;
            let far = if y % 2 == 0 {
                i.saturating_sub(1)
            } else {
                (i + 1).min(ch_real - 1)
            };
            for (plane, up) in [(&cbp, &mut *cb_up), (&crp, &mut *cr_up)] {
                let (near_r, far_r) = (&plane[i * cw..i * cw + cw_real], &plane[far * cw..]);
                for ((sv, &n), &f) in sums.iter_mut().zip(near_r).zip(far_r) {
                    *sv = 3 * n as i32 + f as i32;
                }
                // Even columns lean on the left neighbour, odd ones on the right; the edge
                // columns use themselves.
                let last = cw_real - 1;
                for j in 0..cw_real {
                    let (l, r) = (sums[j.saturating_sub(1)], sums[(j + 1).min(last)]);
                    up[2 * j] = (sums[j] * 3 + l + 8) >> 4;
                    up[2 * j + 1] = (sums[j] * 3 + r + 7) >> 4;
                }
            }
            let yr = &yp[y * yw..y * yw + wu];
            for (((px, &yv), &cb), &cr) in o.chunks_exact_mut(3).zip(yr).zip(&*cb_up).zip(&*cr_up) {
                px.copy_from_slice(&ycc_to_rgb(yv as i32, cb, cr));
            }
        },
    );
    // The buffer has exactly w * h * 3 bytes.
    RgbImage::from_raw(w, h, out).unwrap_or_else(|| RgbImage::new(w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_tables_follow_libjpeg() {
        // quality 7: scale 714; 16 * 714 / 100 -> 114; large entries clamp to 255 (baseline).
        let t = scaled_table(&LUMA_Q, 7);
        assert_eq!(t[0], 114);
        assert_eq!(t[63], 255);
        assert_eq!(scaled_table(&LUMA_Q, 25)[0], 32);
    }

    #[test]
    fn quantiser_is_exact_division() {
        for d in [8u32, 88, 2040] {
            let q = Divisor::new(d);
            for x in (-40000i32..40000).step_by(7) {
                let want = ((x.unsigned_abs() + d / 2) / d) as i32 * x.signum();
                assert_eq!(q.quantise(x), want, "x {x} d {d}");
            }
        }
    }

    #[test]
    fn dct_round_trip_of_a_flat_block_is_exact() {
        let mut b = [37i32 - 128; 64];
        fdct(&mut b);
        assert_eq!(b[0], (37 - 128) * 64); // DC scaled by 8 * 8
        assert!(b[1..].iter().all(|&v| v == 0));
        let mut px = [0u8; 64];
        let coef: [i32; 64] = std::array::from_fn(|i| if i == 0 { (37 - 128) * 8 } else { 0 });
        idct(&coef, &mut px);
        assert!(px.iter().all(|&v| v == 37));
    }

    #[test]
    fn lane_parallel_dct_equals_the_scalar_reference() {
        let mut seed = 12345u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for trial in 0..20000 {
            let blk: [i32; 64] = std::array::from_fn(|_| match trial % 3 {
                0 => (rnd() % 256) as i32 - 128,
                1 => {
                    if rnd() % 2 == 0 {
                        -128
                    } else {
                        127
                    }
                }
                _ => (rnd() % 16) as i32 + (trial % 200) - 128,
            });
            let mut reference = blk;
            fdct(&mut reference);
            let v: [V8; 8] = std::array::from_fn(|r| std::array::from_fn(|c| blk[r * 8 + c]));
            let f = fdct_v(&v);
            assert!(
                (0..64).all(|i| f[i / 8][i % 8] == reference[i]),
                "fdct {trial}"
            );
            let coef: [i32; 64] = std::array::from_fn(|i| {
                if (trial % 2 == 0 && i > 0) || rnd() % 3 != 0 {
                    0
                } else {
                    (rnd() % 2000) as i32 - 1000
                }
            });
            let mut px = [0u8; 64];
            idct(&coef, &mut px);
            let cv: [V8; 8] = std::array::from_fn(|r| std::array::from_fn(|c| coef[r * 8 + c]));
            let o = idct_v(&cv);
            assert!(
                (0..64).all(|i| o[i / 8][i % 8] == px[i] as i32),
                "idct {trial}"
            );
        }
    }

    #[test]
    fn colour_conversion_round_trips_greys() {
        for v in [0, 1, 128, 200, 255] {
            let (y, cb, cr) = rgb_to_ycc(v, v, v);
            assert_eq!((y as i32, cb, cr), (v, 128, 128));
            assert_eq!(ycc_to_rgb(y as i32, 128, 128), [v as u8; 3]);
        }
    }
}
