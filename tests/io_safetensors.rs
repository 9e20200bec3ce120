//! safetensors loading and saving. `dtypes.safetensors` and `float8.safetensors` are written by
//! `safetensors.torch.save_file` in `scripts/make_io_fixtures.py`; `dtypes.json` holds the
//! values as float32 / int64.

mod io_util;

use std::collections::BTreeMap;

use io_util::{assert_same, expected, fixture, scratch};
use mpm::io::{
    load_safetensors, load_state_dict, save_safetensors, HostTensor, NamedTensors, StateDictPick,
};

#[test]
fn every_dtype_converts_like_torch() {
    let (t, meta) = load_safetensors(&fixture("dtypes.safetensors")).expect("load");
    assert_same(&t, &expected("dtypes.json"));
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    assert_eq!(meta.get("note").map(String::as_str), Some("mpm fixture"));
    assert_eq!(t["module.num_batches_tracked"].shape, Vec::<usize>::new());
}

#[test]
fn load_state_dict_strips_module_prefix() {
    let t = load_state_dict(&fixture("dtypes.safetensors"), StateDictPick::Auto).expect("load");
    assert_eq!(t["num_batches_tracked"].as_i64(), Some(&[9i64][..]));
    assert!(!t.contains_key("module.num_batches_tracked"));
    assert_eq!(t.len(), expected("dtypes.json").len());
}

#[test]
fn unsupported_dtype_names_tensor_and_dtype() {
    let e = load_safetensors(&fixture("float8.safetensors")).expect_err("f8 must fail");
    let msg = e.to_string();
    assert!(msg.contains("'f8'") && msg.contains("F8_E4M3"), "{msg}");
}

#[test]
fn save_then_load_round_trips() {
    let dir = scratch("st_roundtrip");
    let mut t = NamedTensors::new();
    t.insert(
        "w".into(),
        HostTensor::f32(vec![2, 3], vec![1.0, -2.0, 0.5, f32::MAX, -0.0, 1e-40]),
    );
    t.insert("n".into(), HostTensor::i64(vec![], vec![i64::MIN]));
    t.insert("e".into(), HostTensor::f32(vec![3, 0], vec![]));
    let mut meta = BTreeMap::new();
    meta.insert("epoch".to_string(), "3".to_string());
    let p = dir.join("x.safetensors");
    save_safetensors(&p, &t, &meta).expect("save");
    let (back, m) = load_safetensors(&p).expect("load");
    assert_same(&back, &t);
    assert_eq!(m, meta);
    // Overwrite, empty metadata; dispatch by content even with a .pth name.
    save_safetensors(&p, &t, &BTreeMap::new()).expect("overwrite");
    assert!(load_safetensors(&p).expect("load").1.is_empty());
    let q = dir.join("x.pth");
    std::fs::copy(&p, &q).expect("copy");
    assert_same(
        &load_state_dict(&q, StateDictPick::Model).expect("sniffed"),
        &t,
    );
    let n = std::fs::read_dir(&dir).expect("dir").count();
    assert_eq!(n, 2, "temp files left behind");
}

#[test]
fn malformed_files_are_errors() {
    let dir = scratch("st_bad");
    let p = dir.join("bad.safetensors");
    let good = std::fs::read(fixture("dtypes.safetensors")).expect("fixture");
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend(b"{}");
    let mut long = 1_000_000u64.to_le_bytes().to_vec();
    long.extend(b"{\"a\":1}");
    let mut bad_json = 5u64.to_le_bytes().to_vec();
    bad_json.extend(b"{oops");
    let mut bad_offsets = Vec::new();
    let h = br#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#;
    bad_offsets.extend((h.len() as u64).to_le_bytes());
    bad_offsets.extend(h);
    bad_offsets.extend([0u8; 8]);
    let mut overflow = Vec::new();
    let h = br#"{"a":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,8]}}"#;
    overflow.extend((h.len() as u64).to_le_bytes());
    overflow.extend(h);
    overflow.extend([0u8; 8]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short", vec![1, 2, 3]),
        ("huge header length", huge),
        ("header longer than file", long),
        ("bad json", bad_json),
        ("shape/offset mismatch", bad_offsets),
        ("shape overflow", overflow),
        ("truncated data", good[..good.len() - 1].to_vec()),
    ];
    for (what, bytes) in cases {
        std::fs::write(&p, &bytes).expect("write");
        let e = load_safetensors(&p).expect_err(what);
        assert!(e.to_string().contains("bad.safetensors"), "{what}: {e}");
    }
    // Every truncation of a real file.
    for n in 0..good.len() {
        std::fs::write(&p, &good[..n]).expect("write");
        assert!(load_safetensors(&p).is_err(), "cut at {n}");
        assert!(
            load_state_dict(&p, StateDictPick::Auto).is_err(),
            "cut at {n}"
        );
    }
}

#[test]
fn save_rejects_inconsistent_tensor() {
    let dir = scratch("st_inconsistent");
    let mut t = NamedTensors::new();
    let mut bad = HostTensor::f32(vec![2], vec![1.0, 2.0]);
    bad.shape = vec![3];
    t.insert("bad".into(), bad);
    let e = save_safetensors(&dir.join("x.safetensors"), &t, &BTreeMap::new()).expect_err("bad");
    assert!(e.to_string().contains("'bad'"), "{e}");
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);
}

/// The same tensors and metadata give the same bytes every time: the crate writes
/// `__metadata__` from a `HashMap`, whose key order changed from one save to the next, and a
/// re-export then changed the content hash that attack journals key on.
#[test]
fn saving_is_byte_for_byte_reproducible() {
    let mut t = NamedTensors::new();
    t.insert("b".into(), HostTensor::f32(vec![2], vec![1.5, -2.0]));
    t.insert("a".into(), HostTensor::i64(Vec::<usize>::new(), vec![7]));
    let meta: BTreeMap<String, String> = (0..12)
        .map(|i| (format!("key{i}"), format!("value {i}")))
        .collect();
    let dir = scratch("reproducible");
    let first = dir.join("0.safetensors");
    save_safetensors(&first, &t, &meta).expect("save");
    let want = std::fs::read(&first).unwrap();
    for k in 1..16 {
        let p = dir.join(format!("{k}.safetensors"));
        save_safetensors(&p, &t, &meta).expect("save");
        assert_eq!(std::fs::read(&p).unwrap(), want, "save {k} differs");
    }
    // Still a valid file: same tensors and metadata back, header a multiple of 8 bytes.
    let (back, m) = load_safetensors(&first).expect("load");
    assert_eq!(m, meta);
    assert_eq!(back["b"].as_f32(), Some(&[1.5f32, -2.0][..]));
    let n = u64::from_le_bytes(want[..8].try_into().unwrap());
    assert_eq!(n % 8, 0);
}
