//! Helpers shared by tests/io_*.rs: fixture paths, expected-value JSON, scratch dirs, and a
//! tiny pickle/zip builder for hand-made malformed checkpoints.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use mpm::io::{HostData, HostTensor, NamedTensors};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/io")
        .join(name)
}

/// A fresh, empty scratch directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("io-{test}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// Reads `<fixture>.json` written by scripts/make_io_fixtures.py.
pub fn expected(name: &str) -> NamedTensors {
    let text = std::fs::read_to_string(fixture(name)).expect("read expected json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("parse expected json");
    let mut out = NamedTensors::new();
    for (k, t) in v.as_object().expect("object") {
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect();
        let vals = t["values"].as_array().expect("values");
        let ht = match t["dtype"].as_str().expect("dtype") {
            "f32" => HostTensor::f32(
                shape,
                vals.iter()
                    .map(|x| x.as_f64().expect("float") as f32)
                    .collect(),
            ),
            "i64" => HostTensor::i64(
                shape,
                vals.iter().map(|x| x.as_i64().expect("int")).collect(),
            ),
            d => panic!("unknown dtype {d}"),
        };
        out.insert(k.clone(), ht);
    }
    out
}

/// Exact comparison (bitwise for floats): every conversion in the loader is exact.
pub fn assert_same(got: &NamedTensors, want: &NamedTensors) {
    let gk: Vec<_> = got.keys().collect();
    let wk: Vec<_> = want.keys().collect();
    assert_eq!(gk, wk, "tensor names differ");
    for (k, w) in want {
        let g = &got[k];
        assert_eq!(g.shape, w.shape, "{k}: shape");
        match (&g.data, &w.data) {
            (HostData::F32(a), HostData::F32(b)) => {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!(x.to_bits() == y.to_bits(), "{k}[{i}]: got {x}, want {y}");
                }
                assert_eq!(a.len(), b.len(), "{k}: length");
            }
            (HostData::I64(a), HostData::I64(b)) => assert_eq!(a, b, "{k}: values"),
            _ => panic!("{k}: got {}, want {}", g.dtype_name(), w.dtype_name()),
        }
    }
}

/// A protocol-2 pickle of `{name: _rebuild_tensor_v2(storage, offset, shape, stride, ...)}`.
pub fn tensor_pickle(
    name: &str,
    storage_type: &str,
    numel: u32,
    offset: u32,
    shape: &[u32],
    stride: &[u32],
) -> Vec<u8> {
    let mut b = vec![0x80, 2, b'}', b'('];
    push_str(&mut b, name);
    b.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    b.push(b'(');
    push_str(&mut b, "storage");
    b.extend(format!("ctorch\n{storage_type}\n").as_bytes());
    push_str(&mut b, "0");
    push_str(&mut b, "cpu");
    push_int(&mut b, numel);
    b.extend(b"tQ");
    push_int(&mut b, offset);
    b.push(b'(');
    for &d in shape {
        push_int(&mut b, d);
    }
    b.push(b't');
    b.push(b'(');
    for &s in stride {
        push_int(&mut b, s);
    }
    b.push(b't');
    b.extend(b"\x89ccollections\nOrderedDict\n)RtRu.");
    b
}

pub fn push_str(b: &mut Vec<u8>, s: &str) {
    b.push(b'X');
    b.extend((s.len() as u32).to_le_bytes());
    b.extend(s.as_bytes());
}

pub fn push_int(b: &mut Vec<u8>, v: u32) {
    b.push(b'J');
    b.extend(v.to_le_bytes());
}

/// Writes a zip with the given (name, bytes) records, stored uncompressed.
pub fn write_zip(path: &Path, records: &[(&str, &[u8])]) {
    let f = std::fs::File::create(path).expect("create zip");
    let mut z = zip::ZipWriter::new(f);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in records {
        z.start_file(*name, opts).expect("start file");
        z.write_all(data).expect("write record");
    }
    z.finish().expect("finish zip");
}

/// The records of a zip file, in order.
pub fn read_zip(path: &Path) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let f = std::fs::File::open(path).expect("open zip");
    let mut z = zip::ZipArchive::new(f).expect("zip");
    (0..z.len())
        .map(|i| {
            let mut e = z.by_index(i).expect("entry");
            let mut v = Vec::new();
            e.read_to_end(&mut v).expect("read entry");
            (e.name().expect("entry name").to_string(), v)
        })
        .collect()
}
