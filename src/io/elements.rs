//! Tensor elements on the host, in one place:
//! - the `half` crate's `bf16` / `f16` types for every such value on the host, and its
//!   conversions (f16's slice conversions use the CPU's F16C instructions when present), except
//!   bf16 -> f32, which is the exact 16-bit shift PyTorch and the kernels do
//!   ([`from_bf16`]). f32 -> bf16 rounds to nearest, ties to even, and keeps a
//!   NaN a (quiet) NaN: bit for bit what the kernels' `store` (kernels/common.cuh) and
//!   PyTorch's `.to(torch.bfloat16)` do (tests/fixtures/io/half_rounding.tsv holds PyTorch's
//!   answers for the edge cases; the unit tests below and tests/kernels_emulated.rs check both
//!   this path and the kernel against it).
//! - little-endian file bytes <-> typed slices through `bytemuck` (a cast when the bytes are
//!   aligned, one copy when they are not), instead of per-element `from_le_bytes` loops.

use std::borrow::Cow;

use bytemuck::Pod;
use half::slice::HalfFloatSliceExt;
pub use half::{bf16, f16};
use rayon::prelude::*;

use super::host::HostData;

// Every format read or written here (safetensors, `.pth` storages, attack journals) is
// little-endian, and so is every GPU this crate drives; the casts below reinterpret bytes in the
// host's order, which is only right on a little-endian host. Refuse to build elsewhere rather
// than read checkpoints wrong.
#[cfg(not(target_endian = "little"))]
compile_error!("mpm casts little-endian tensor bytes directly; big-endian hosts are not supported");

/// Buffers at least this long are converted by all rayon threads, in [`CHUNK`]-element pieces;
/// shorter ones in one pass on the caller's thread (a thread hand-off costs more than they do).
const PARALLEL_MIN: usize = 1 << 20;
/// 64 Ki elements a piece: large enough that scheduling is noise, small enough to balance.
const CHUNK: usize = 1 << 16;

/// f32 -> bf16, round to nearest even (NaN stays NaN), as the kernels' `store`.
///
/// Element by element through `bf16::from_f32`: one pass that the compiler vectorises. (The
/// slice conversion `convert_from_f32_slice` needs a zeroed output first and measured 0.93x the
/// hand-written code it replaced.) Large buffers are split across the rayon threads; the
/// output starts as `vec![0u16; n]`, which the allocator hands out as fresh zero pages (no
/// zeroing pass), and is reinterpreted as `bf16` without a copy. Each element is rounded on
/// its own, so the split changes no bit.
pub fn to_bf16(src: &[f32]) -> Vec<bf16> {
    if src.len() < PARALLEL_MIN {
        return src.iter().map(|&v| bf16::from_f32(v)).collect();
    }
    let mut bits = vec![0u16; src.len()];
    bits.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(out, src)| {
            for (o, &v) in out.iter_mut().zip(src) {
                *o = bf16::from_f32(v).to_bits();
            }
        });
    bytemuck::allocation::cast_vec(bits)
}

/// bf16 -> f32: a bf16 is the top half of an f32, so the value is its bits shifted up, as
/// PyTorch's conversion and the kernels' `__bfloat162float` do (a signalling NaN keeps its
/// payload; `half`'s `to_f32` would quiet it, and its extra select measured 0.95-0.97x the
/// plain shift on a quiet machine). One thread: decoding is memory-bound, and the two-thread
/// split took 71.0 ms for 100M values against 53.3 ms for one (docs/benchmarks.md, 2026-12-03).
pub fn from_bf16(src: &[bf16]) -> Vec<f32> {
    src.iter()
        .map(|b| f32::from_bits(u32::from(b.to_bits()) << 16))
        .collect()
}

/// f32 -> IEEE binary16, round to nearest even (overflow to infinity, NaN stays NaN).
pub fn to_f16(src: &[f32]) -> Vec<f16> {
    let mut out = vec![f16::ZERO; src.len()];
    out.convert_from_f32_slice(src);
    out
}

/// IEEE binary16 -> f32 (exact, subnormals included).
pub fn from_f16(src: &[f16]) -> Vec<f32> {
    src.to_f32_vec()
}

/// Little-endian bytes as `T`s: borrowed when `bytes` is aligned for `T`, else copied once.
/// A trailing partial element is ignored (callers pass whole elements; formats check sizes).
pub fn le_slice<T: Pod>(bytes: &[u8]) -> Cow<'_, [T]> {
    let whole = bytes.len() / std::mem::size_of::<T>() * std::mem::size_of::<T>();
    let bytes = &bytes[..whole];
    match bytemuck::try_cast_slice(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            // Misaligned (an odd offset inside a file buffer): one copy into aligned memory.
            let mut v = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
            bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(bytes);
            Cow::Owned(v)
        }
    }
}

/// `T`s as their little-endian bytes, without a copy.
pub fn le_bytes<T: Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// How a tensor file stores its elements (safetensors dtypes, `.pth` storage types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    U32,
    I16,
    U16,
    I8,
    U8,
    Bool,
}

/// Widens stored little-endian elements to the host's two element types: floats to f32
/// (f64 rounds), integers and bools to i64.
pub(crate) fn decode(stored: Stored, b: &[u8]) -> HostData {
    fn ints<T: Pod + Into<i64>>(b: &[u8]) -> HostData {
        HostData::I64(le_slice::<T>(b).iter().map(|&v| v.into()).collect())
    }
    match stored {
        Stored::F32 => HostData::F32(le_slice::<f32>(b).into_owned()),
        Stored::F64 => HostData::F32(le_slice::<f64>(b).iter().map(|&v| v as f32).collect()),
        Stored::F16 => HostData::F32(from_f16(&le_slice::<f16>(b))),
        Stored::BF16 => HostData::F32(from_bf16(&le_slice::<bf16>(b))),
        Stored::I64 => HostData::I64(le_slice::<i64>(b).into_owned()),
        Stored::I32 => ints::<i32>(b),
        Stored::U32 => ints::<u32>(b),
        Stored::I16 => ints::<i16>(b),
        Stored::U16 => ints::<u16>(b),
        Stored::I8 => ints::<i8>(b),
        Stored::U8 => ints::<u8>(b),
        Stored::Bool => HostData::I64(b.iter().map(|&x| i64::from(x != 0)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of the PyTorch-made table: (f32 bits, bf16 bits, f16 bits, what the row tests).
    fn table() -> Vec<(u32, u16, u16, String)> {
        let text = include_str!("../../tests/fixtures/io/half_rounding.tsv");
        let hex32 = |s: &str| u32::from_str_radix(s, 16).expect("hex f32 bits");
        let hex16 = |s: &str| u16::from_str_radix(s, 16).expect("hex 16-bit bits");
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let c: Vec<&str> = l.split('\t').collect();
                assert_eq!(c.len(), 4, "fixture row {l:?}");
                (hex32(c[0]), hex16(c[1]), hex16(c[2]), c[3].to_string())
            })
            .collect()
    }

    /// A NaN's sign and payload carry no meaning and differ between implementations
    /// (PyTorch's vectorised CPU cast writes 0xffff for every NaN, the kernels and `half` keep
    /// the sign and the top payload bits): for NaN rows only "is a NaN" counts.
    fn same_bits16(got: u16, want: u16, exp_mask: u16, man_mask: u16) -> bool {
        let nan = |b: u16| b & exp_mask == exp_mask && b & man_mask != 0;
        if nan(want) {
            nan(got)
        } else {
            got == want
        }
    }

    #[test]
    fn bf16_matches_pytorch_bit_table() {
        let rows = table();
        assert!(rows.len() > 100, "fixture has {} rows", rows.len());
        let xs: Vec<f32> = rows.iter().map(|r| f32::from_bits(r.0)).collect();
        let got = to_bf16(&xs);
        let mut bad = Vec::new();
        for (r, g) in rows.iter().zip(&got) {
            if !same_bits16(g.to_bits(), r.1, 0x7f80, 0x007f) {
                bad.push(format!(
                    "{:08x} ({}): got {:04x}, torch {:04x}",
                    r.0,
                    r.3,
                    g.to_bits(),
                    r.1
                ));
            }
        }
        assert!(bad.is_empty(), "bf16 rounding differs:\n{}", bad.join("\n"));
        // Decoding is exact: bf16 -> f32 puts the bits in the top half.
        let back = from_bf16(&got);
        for (g, b) in got.iter().zip(&back) {
            assert_eq!(b.to_bits(), u32::from(g.to_bits()) << 16);
        }
        // A signalling NaN keeps its payload, as PyTorch's and the kernels' shift keep it.
        let snan = from_bf16(&[bf16::from_bits(0x7f81), bf16::from_bits(0xff81)]);
        assert_eq!(snan[0].to_bits(), 0x7f81_0000);
        assert_eq!(snan[1].to_bits(), 0xff81_0000);
    }

    #[test]
    fn f16_matches_pytorch_bit_table() {
        let rows = table();
        let xs: Vec<f32> = rows.iter().map(|r| f32::from_bits(r.0)).collect();
        let got = to_f16(&xs);
        let mut bad = Vec::new();
        for (r, g) in rows.iter().zip(&got) {
            if !same_bits16(g.to_bits(), r.2, 0x7c00, 0x03ff) {
                bad.push(format!(
                    "{:08x} ({}): got {:04x}, torch {:04x}",
                    r.0,
                    r.3,
                    g.to_bits(),
                    r.2
                ));
            }
        }
        assert!(bad.is_empty(), "f16 rounding differs:\n{}", bad.join("\n"));
    }

    #[test]
    fn the_table_covers_the_edge_cases() {
        let notes: Vec<String> = table().into_iter().map(|r| r.3).collect();
        for kind in ["tie", "subnormal", "nan", "inf", "overflow"] {
            assert!(
                notes.iter().any(|n| n.contains(kind)),
                "no '{kind}' row in the fixture"
            );
        }
    }

    #[test]
    fn known_values_and_exact_decoding() {
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0);
        // 1 + 3 * 2^-8 goes up to the even 1 + 2^-6.
        let got = to_bf16(&[1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), -5.0]);
        assert_eq!(
            got.iter().map(|b| b.to_bits()).collect::<Vec<_>>(),
            [0x3f80, 0x3f82, 0xc0a0]
        );
        let h = [0x3c00u16, 0xc000, 0x7bff, 0x0001, 0x8000, 0x7c00, 0x7e00];
        let f = from_f16(&h.map(f16::from_bits));
        assert_eq!(f[..4], [1.0, -2.0, 65504.0, 2f32.powi(-24)]);
        assert_eq!(f[4].to_bits(), (-0.0f32).to_bits());
        assert!(f[5].is_infinite() && f[5] > 0.0);
        assert!(f[6].is_nan());
    }

    /// The split path (buffers of at least `PARALLEL_MIN`) gives the same bits as one
    /// serial pass, including the chunk boundaries and a ragged last chunk.
    #[test]
    fn split_conversions_match_the_serial_pass() {
        let n = PARALLEL_MIN + CHUNK / 2 + 3;
        let xs: Vec<f32> = (0..n)
            .map(|i| f32::from_bits((i as u32).wrapping_mul(0x9e37_79b9)))
            .collect();
        let got = to_bf16(&xs);
        assert_eq!(got.len(), n);
        for (i, (g, &x)) in got.iter().zip(&xs).enumerate() {
            assert_eq!(g.to_bits(), bf16::from_f32(x).to_bits(), "element {i}");
        }
        let back = from_bf16(&got);
        assert_eq!(back.len(), n);
        for (i, (b, g)) in back.iter().zip(&got).enumerate() {
            assert_eq!(b.to_bits(), u32::from(g.to_bits()) << 16, "element {i}");
        }
    }

    #[test]
    fn unaligned_bytes_decode_like_aligned_ones() {
        let vals = [1.5f32, -2.25, 3.0e-39, f32::MAX];
        let mut bytes = vec![0u8];
        bytes.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        // Offset 1 is misaligned for f32 whatever the allocation's alignment.
        let HostData::F32(got) = decode(Stored::F32, &bytes[1..]) else {
            panic!("f32 decodes to f32")
        };
        assert_eq!(got, vals);
        assert!(matches!(le_slice::<f32>(&bytes[1..]), Cow::Owned(_)));
        let HostData::I64(ints) = decode(Stored::I16, &[0xff, 0xff, 0x02, 0x00, 0x00, 0x80]) else {
            panic!("i16 decodes to i64")
        };
        assert_eq!(ints, [-1, 2, -32768]);
        let HostData::I64(u) = decode(Stored::U32, &[0xff, 0xff, 0xff, 0xff]) else {
            panic!("u32 decodes to i64")
        };
        assert_eq!(u, [4_294_967_295]);
        let HostData::I64(b) = decode(Stored::Bool, &[0, 1, 7]) else {
            panic!("bool decodes to i64")
        };
        assert_eq!(b, [0, 1, 1]);
        assert_eq!(le_bytes(&[1.0f32]), 1.0f32.to_le_bytes());
    }
}
