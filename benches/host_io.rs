//! Host-side conversions on the checkpoint and GPU-transfer paths:
//! - bf16 encode (f32 -> bf16, round to nearest even: what `CudaStorage::upload` does before a
//!   bf16 upload) and decode (bf16 -> f32: what a bf16 download does) of a 100M-element buffer;
//! - `load_safetensors` of a ResNet-50 state dict (25.6M parameters + BN buffers), stored as
//!   f32 and as bf16, from a file in the page cache (the parse + convert cost, not the disk).
//!
//! Each figure is the best of `--repeats` runs (default 5). The conversions report the bytes
//! read + written per second against a plain copy of as many bytes measured in the same run;
//! the loads report the time to read the file alone next to them.
//!
//! Before / after in one run: the hand-written conversions and the per-element
//! `from_le_bytes` loader that `half` and `bytemuck` replaced (issue #22) are kept below as
//! the reference, checked to give the same bits, and timed alternately with the current code
//! (old, new, old, new, ...), so a busy machine slows both alike; the ratio is old / new time.
//!
//! Run: `cargo bench --bench host_io` (`-- --elements N --repeats R` to change the sizes).

use std::time::Instant;

use mpm::io::{load_safetensors, no_metadata, save_safetensors, HostTensor, NamedTensors};
use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Best wall times of `repeats` alternating calls of `old` and `new`, in seconds.
fn best_pair<A, B>(
    repeats: usize,
    mut old: impl FnMut() -> A,
    mut new: impl FnMut() -> B,
) -> (f64, f64) {
    let (mut a, mut b) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..repeats {
        a = a.min(best(1, &mut old));
        b = b.min(best(1, &mut new));
    }
    (a, b)
}

/// Best wall time of `repeats` calls of `f`, in seconds.
fn best<T>(repeats: usize, mut f: impl FnMut() -> T) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let t0 = Instant::now();
        let out = f();
        let dt = t0.elapsed().as_secs_f64();
        drop(std::hint::black_box(out));
        best = best.min(dt);
    }
    best
}

fn report(name: &str, secs: f64, bytes: usize, ceiling_secs: f64) {
    let gbs = bytes as f64 / secs / 1e9;
    let ceil = bytes as f64 / ceiling_secs / 1e9;
    println!(
        "{name:<44} {:>9.1} ms {:>7.2} GB/s  ({:.0}% of a {:.2} GB/s copy)",
        secs * 1e3,
        gbs,
        100.0 * gbs / ceil,
        ceil
    );
}

/// Deterministic values spread over many binades, with exact ties for bf16 rounding mixed in.
fn values(n: usize) -> Vec<f32> {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0;
            if i % 16 == 0 {
                // 1 + 2^-8 (and its neighbours in other binades) is a bf16 tie.
                f32::from_bits(0x3f80_8000 + ((i as u32 >> 4) % 64) * 0x0001_0000)
            } else {
                v
            }
        })
        .collect()
}

// ---- before: the hand-written code that half / bytemuck replaced (the reference) -----------

/// f32 -> bf16 bits, round to nearest even (NaN stays NaN): was `cuda::storage::f32_to_bf16`.
fn f32_to_bf16_old(v: f32) -> u16 {
    let u = v.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    let r = u.wrapping_add(0x7fff + ((u >> 16) & 1));
    (r >> 16) as u16
}

fn encode_bf16_old(src: &[f32]) -> Vec<u16> {
    src.iter().map(|&v| f32_to_bf16_old(v)).collect()
}

fn decode_bf16_old(src: &[u16]) -> Vec<f32> {
    src.iter()
        .map(|&b| f32::from_bits((b as u32) << 16))
        .collect()
}

/// The old `load_safetensors` for the two dtypes measured here: the file read whole, then
/// every element assembled from its bytes with `from_le_bytes`.
fn load_safetensors_old(path: &std::path::Path) -> NamedTensors {
    fn chunks<const N: usize, T>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
        b.chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    let bytes = std::fs::read(path).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let mut out = NamedTensors::new();
    for (name, v) in st.iter() {
        let b = v.data();
        let shape = v.shape().to_vec();
        let t = match v.dtype() {
            safetensors::Dtype::F32 => HostTensor::f32(shape, chunks(b, f32::from_le_bytes)),
            safetensors::Dtype::BF16 => HostTensor::f32(
                shape,
                chunks(b, |a| {
                    f32::from_bits(u32::from(u16::from_le_bytes(a)) << 16)
                }),
            ),
            safetensors::Dtype::I64 => HostTensor::i64(shape, chunks(b, i64::from_le_bytes)),
            other => panic!("reference loader: dtype {other:?} not in this bench"),
        };
        out.insert(name.to_string(), t);
    }
    out
}

// ---- after: the project's code --------------------------------------------------------------

fn encode_bf16(src: &[f32]) -> Vec<half::bf16> {
    mpm::io::elements::to_bf16(src)
}

fn decode_bf16(src: &[half::bf16]) -> Vec<f32> {
    mpm::io::elements::from_bf16(src)
}

// ------------------------------------------------------------------------------------------

fn resnet50_state() -> NamedTensors {
    let spec = ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet50,
            width: 64,
            act: Act::Gelu,
        },
        num_classes: 1000,
        seg_classes: 0,
        head: Head::None,
    };
    let d = spec.declare();
    let mut out = NamedTensors::new();
    for (name, shape, _) in &d.entries {
        let n: usize = shape.iter().product();
        out.insert(name.clone(), HostTensor::f32(shape.clone(), values(n)));
    }
    for p in &d.bn_prefixes {
        out.insert(
            format!("{p}.num_batches_tracked"),
            HostTensor::i64(Vec::<usize>::new(), vec![0]),
        );
    }
    out
}

/// The same state dict written with every float tensor as bf16 (as a mixed-precision
/// export would be), through the safetensors crate directly.
fn write_bf16_copy(state: &NamedTensors, path: &std::path::Path) {
    let bufs: Vec<(String, Vec<usize>, Vec<u8>, bool)> = state
        .iter()
        .map(|(k, t)| match t.as_f32() {
            Some(v) => {
                let bytes = mpm::io::elements::le_bytes(&encode_bf16(v)).to_vec();
                (k.clone(), t.shape.clone(), bytes, true)
            }
            None => {
                let v = t.as_i64().unwrap_or(&[]);
                let bytes = mpm::io::elements::le_bytes(v).to_vec();
                (k.clone(), t.shape.clone(), bytes, false)
            }
        })
        .collect();
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = bufs
        .iter()
        .map(|(k, shape, bytes, is_float)| {
            let dt = if *is_float {
                safetensors::Dtype::BF16
            } else {
                safetensors::Dtype::I64
            };
            let v = safetensors::tensor::TensorView::new(dt, shape.clone(), bytes).expect("view");
            (k.as_str(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write bf16 checkpoint");
}

fn main() {
    let n = arg("--elements", 100_000_000);
    let repeats = arg("--repeats", 5);
    println!(
        "host_io: {n} elements, best of {repeats}, {} rayon threads",
        rayon::current_num_threads()
    );

    let x = values(n);
    let copy_f32 = best(repeats, || x.clone());
    let bits = encode_bf16(&x);
    let bits_old = encode_bf16_old(&x);
    assert!(
        bits.iter().zip(&bits_old).all(|(a, b)| a.to_bits() == *b),
        "half and the old conversion round differently"
    );
    let copy_u16 = best(repeats, || bits_old.clone());

    let (enc_old, enc) = best_pair(repeats, || encode_bf16_old(&x), || encode_bf16(&x));
    let ceiling = copy_f32 * 6.0 / 8.0;
    report("bf16 encode (f32 -> bf16), before", enc_old, n * 6, ceiling);
    report("bf16 encode (f32 -> bf16), half", enc, n * 6, ceiling);
    println!(
        "{:<44} {:>9.2}x",
        "  encode speed-up (before / after time)",
        enc_old / enc
    );
    let (dec_old, dec) = best_pair(
        repeats,
        || decode_bf16_old(&bits_old),
        || decode_bf16(&bits),
    );
    assert_eq!(
        decode_bf16(&bits)
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>(),
        decode_bf16_old(&bits_old)
            .iter()
            .map(|v| v.to_bits())
            .collect::<Vec<_>>()
    );
    let ceiling = copy_u16 * 6.0 / 4.0;
    report("bf16 decode (bf16 -> f32), before", dec_old, n * 6, ceiling);
    report("bf16 decode (bf16 -> f32), half", dec, n * 6, ceiling);
    println!(
        "{:<44} {:>9.2}x",
        "  decode speed-up (before / after time)",
        dec_old / dec
    );
    drop((x, bits, bits_old));

    let dir = tempfile::tempdir().expect("temp dir");
    let state = resnet50_state();
    let params: usize = state.values().map(|t| t.numel()).sum();
    println!(
        "ResNet-50 state dict: {} tensors, {params} values",
        state.len()
    );
    let f32_path = dir.path().join("resnet50_f32.safetensors");
    save_safetensors(&f32_path, &state, &no_metadata()).expect("write f32 checkpoint");
    let bf16_path = dir.path().join("resnet50_bf16.safetensors");
    write_bf16_copy(&state, &bf16_path);
    for (label, path) in [("f32", &f32_path), ("bf16", &bf16_path)] {
        let file_bytes = std::fs::metadata(path).expect("stat").len() as usize;
        // Page-cache read of the same file: the ceiling for a loader that reads it whole.
        let read = best(repeats, || std::fs::read(path).expect("read"));
        let (new_state, _) = load_safetensors(path).expect("load");
        assert!(
            new_state == load_safetensors_old(path),
            "{label}: the loaders disagree"
        );
        let (old, new) = best_pair(
            repeats,
            || load_safetensors_old(path),
            || load_safetensors(path).expect("load"),
        );
        println!(
            "{:<44} {:>9.1} ms  ({:.1} MB file; reading it alone: {:.1} ms)",
            format!("load_safetensors ResNet-50 {label}, before"),
            old * 1e3,
            file_bytes as f64 / 1e6,
            read * 1e3
        );
        println!(
            "{:<44} {:>9.1} ms  ({:.2}x)",
            format!("load_safetensors ResNet-50 {label}, bytemuck"),
            new * 1e3,
            old / new
        );
    }
}
