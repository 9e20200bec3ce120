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

// ---- the conversions under test -------------------------------------------------------

fn encode_bf16(src: &[f32]) -> Vec<u16> {
    src.iter()
        .map(|&v| mpm::cuda::storage::f32_to_bf16(v))
        .collect()
}

fn decode_bf16(src: &[u16]) -> Vec<f32> {
    src.iter()
        .map(|&b| mpm::cuda::storage::bf16_to_f32(b))
        .collect()
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
                let bytes = encode_bf16(v)
                    .iter()
                    .flat_map(|b| b.to_le_bytes())
                    .collect();
                (k.clone(), t.shape.clone(), bytes, true)
            }
            None => {
                let v = t.as_i64().unwrap_or(&[]);
                let bytes = v.iter().flat_map(|b| b.to_le_bytes()).collect();
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
    let copy_u16 = best(repeats, || bits.clone());

    let enc = best(repeats, || encode_bf16(&x));
    report(
        "bf16 encode (f32 -> bf16), 100M",
        enc,
        n * 6,
        copy_f32 * 6.0 / 8.0,
    );
    let dec = best(repeats, || decode_bf16(&bits));
    report(
        "bf16 decode (bf16 -> f32), 100M",
        dec,
        n * 6,
        copy_u16 * 6.0 / 4.0,
    );

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
        let load = best(repeats, || load_safetensors(path).expect("load"));
        println!(
            "{:<44} {:>9.1} ms  ({:.1} MB file; reading it alone: {:.1} ms)",
            format!("load_safetensors ResNet-50 {label}"),
            load * 1e3,
            file_bytes as f64 / 1e6,
            read * 1e3
        );
    }
}
