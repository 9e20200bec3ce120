//! `.pth` loading and saving against files written by PyTorch 2.15.
//!
//! Fixtures and their expected values (`*.json`) come from `scripts/make_io_fixtures.py`
//! (`torch.save` of a module state_dict with f32/f16/bf16/f64/int/bool tensors, views with
//! offsets, transposes, stride-0 expansion and a Parameter; a timm-style training checkpoint
//! with `module.` prefixes, EMA weights, SGD state and an `argparse.Namespace`; the same state
//! dict in the legacy format; two pickles that call `os.system` / `eval`).

mod io_util;

use std::path::Path;

use io_util::{assert_same, expected, fixture, read_zip, scratch, tensor_pickle, write_zip};
use mpm::io::{load_pth, load_state_dict, save_pth, HostTensor, NamedTensors, StateDictPick};
use mpm::Error;

fn err_text(r: mpm::Result<NamedTensors>) -> String {
    match r {
        Ok(t) => panic!("expected an error, got {} tensors", t.len()),
        Err(e) => e.to_string(),
    }
}

/// `prefix.name` entries of a flattened map, prefix and a leading `module.` removed.
fn sub(flat: &NamedTensors, prefix: &str) -> NamedTensors {
    flat.iter()
        .filter_map(|(k, v)| {
            let k = k.strip_prefix(prefix)?.strip_prefix('.')?;
            Some((
                k.strip_prefix("module.").unwrap_or(k).to_string(),
                v.clone(),
            ))
        })
        .collect()
}

#[test]
fn plain_state_dict_matches_torch() {
    let got = load_pth(&fixture("plain.pth")).expect("load plain.pth");
    assert_same(&got, &expected("plain.json"));
    // Spot checks that the fixture covers what it claims.
    assert_eq!(got["1.num_batches_tracked"].shape, Vec::<usize>::new());
    assert_eq!(
        got["1.num_batches_tracked"].as_i64(),
        Some(&[12_345_678_901i64][..])
    );
    assert_eq!(got["transposed"].shape, vec![5, 3]);
    assert_eq!(
        got["shared.window"].as_f32(),
        Some(&[1.5f32, 1.75, 2.0, 2.25, 2.5, 2.75][..])
    );
    assert_eq!(got["half"].as_f32().map(|v| v[2]), Some(65504.0));
    assert_eq!(got["empty"].shape, vec![0, 3]);
    // The same through load_state_dict: a plain state dict is used as is.
    let sd = load_state_dict(&fixture("plain.pth"), StateDictPick::Auto).expect("state dict");
    assert_same(&sd, &expected("plain.json"));
}

#[test]
fn legacy_format_matches_torch() {
    let got = load_pth(&fixture("legacy.pth")).expect("load legacy.pth");
    assert_same(&got, &expected("legacy.json"));
    let sd = load_state_dict(&fixture("legacy.pth"), StateDictPick::Model).expect("state dict");
    assert_same(&sd, &expected("legacy.json"));
}

#[test]
fn timm_checkpoint_flattens_every_tensor() {
    // Namespace args, a PosixPath, a numpy scalar and a 2**70 int sit next to the weights.
    let got = load_pth(&fixture("timm.pth")).expect("load timm.pth");
    let want = expected("timm.json");
    assert_same(&got, &want);
    assert!(got.contains_key("state_dict.module.0.weight"));
    assert!(got.contains_key("optimizer.state.0.momentum_buffer"));
}

#[test]
fn timm_checkpoint_picks_ema_or_model_and_strips_module() {
    let want = expected("timm.json");
    let path = fixture("timm.pth");
    let ema = load_state_dict(&path, StateDictPick::Ema).expect("ema");
    assert_same(&ema, &sub(&want, "state_dict_ema"));
    let auto = load_state_dict(&path, StateDictPick::Auto).expect("auto");
    assert_same(&auto, &sub(&want, "state_dict_ema"));
    let model = load_state_dict(&path, StateDictPick::Model).expect("model");
    assert_same(&model, &sub(&want, "state_dict"));
    assert!(model.contains_key("1.num_batches_tracked"));
    assert!(model.keys().all(|k| !k.starts_with("module.")));
    assert_ne!(model["0.weight"], ema["0.weight"]);
}

#[test]
fn ema_pick_without_ema_weights_is_an_error() {
    let e = err_text(load_state_dict(&fixture("plain.pth"), StateDictPick::Ema));
    assert!(
        e.contains("state_dict_ema") && e.contains("plain.pth"),
        "{e}"
    );
}

#[test]
fn malicious_pickles_are_refused() {
    for (file, global) in [
        ("malicious_system.pth", "posix.system"),
        ("malicious_eval.pth", "builtins.eval"),
    ] {
        let path = fixture(file);
        for e in [
            err_text(load_pth(&path)),
            err_text(load_state_dict(&path, StateDictPick::Auto)),
        ] {
            assert!(e.contains(global), "{file}: {e}");
            assert!(
                e.contains(file),
                "{file}: message should name the file: {e}"
            );
        }
    }
}

#[test]
fn unknown_class_is_refused_not_instantiated() {
    let dir = scratch("unknown_class");
    let p = dir.join("x.pth");
    let pkl = b"\x80\x02}(X\x01\x00\x00\x00acmymodule\nConfig\n)\x81u.";
    write_zip(&p, &[("x/data.pkl", pkl)]);
    let e = err_text(load_pth(&p));
    assert!(
        e.contains("mymodule.Config") && e.contains("allow-list"),
        "{e}"
    );
}

#[test]
fn truncated_files_are_errors_not_panics() {
    let dir = scratch("truncated");
    for name in ["plain.pth", "legacy.pth", "timm.pth"] {
        let bytes = std::fs::read(fixture(name)).expect("fixture");
        let p = dir.join(name);
        let step = (bytes.len() / 400).max(1);
        let mut n = 0;
        while n < bytes.len() {
            std::fs::write(&p, &bytes[..n]).expect("write");
            assert!(load_pth(&p).is_err(), "{name} cut at {n} loaded");
            assert!(
                load_state_dict(&p, StateDictPick::Auto).is_err(),
                "{name} cut at {n}"
            );
            n += if n < 64 || bytes.len() - n < 64 {
                1
            } else {
                step
            };
        }
    }
}

#[test]
fn corrupted_pickles_are_errors_not_panics() {
    // Every byte of data.pkl replaced by a few values; the archive itself stays valid.
    let dir = scratch("corrupted");
    let records = read_zip(&fixture("plain.pth"));
    let pkl_i = records
        .iter()
        .position(|(n, _)| n.ends_with("data.pkl"))
        .expect("data.pkl");
    let p = dir.join("c.pth");
    let mut loaded = 0;
    for i in 0..records[pkl_i].1.len() {
        for val in [0x00u8, 0xff, b'(', b'R'] {
            let mut recs = records.clone();
            recs[pkl_i].1[i] = val;
            let refs: Vec<(&str, &[u8])> = recs
                .iter()
                .map(|(n, d)| (n.as_str(), d.as_slice()))
                .collect();
            write_zip(&p, &refs);
            // Ok or Err are both fine (some bytes are data); a panic fails the test.
            if load_pth(&p).is_ok() {
                loaded += 1;
            }
            let _ = load_state_dict(&p, StateDictPick::Auto);
        }
    }
    assert!(loaded > 0);
}

#[test]
fn storage_too_short_or_out_of_bounds_is_an_error() {
    let dir = scratch("short_storage");
    let p = dir.join("s.pth");
    // Record shorter than the storage's declared 10 floats.
    let pkl = tensor_pickle("w", "FloatStorage", 10, 0, &[10], &[1]);
    write_zip(&p, &[("a/data.pkl", &pkl), ("a/data/0", &[0u8; 8])]);
    let e = err_text(load_pth(&p));
    assert!(e.contains("a/data/0") && e.contains("expected 40"), "{e}");
    // Storage of 6 floats, view reaching element 2 + 2*3 + 1*1 = 9.
    let pkl = tensor_pickle("w", "FloatStorage", 6, 2, &[3, 2], &[3, 1]);
    write_zip(&p, &[("a/data.pkl", &pkl), ("a/data/0", &[0u8; 24])]);
    let e = err_text(load_pth(&p));
    assert!(e.contains("'w'") && e.contains("too short"), "{e}");
    // Offset past the end.
    let pkl = tensor_pickle("w", "FloatStorage", 6, 6, &[], &[]);
    write_zip(&p, &[("a/data.pkl", &pkl), ("a/data/0", &[0u8; 24])]);
    assert!(err_text(load_pth(&p)).contains("too short"));
    // Missing storage record.
    let pkl = tensor_pickle("w", "FloatStorage", 6, 0, &[6], &[1]);
    write_zip(&p, &[("a/data.pkl", &pkl)]);
    assert!(err_text(load_pth(&p)).contains("a/data/0"));
    // Shape/stride rank mismatch and a huge broadcast.
    let pkl = tensor_pickle("w", "FloatStorage", 6, 0, &[6, 1], &[1]);
    write_zip(&p, &[("a/data.pkl", &pkl), ("a/data/0", &[0u8; 24])]);
    assert!(err_text(load_pth(&p)).contains("dims"));
    let pkl = tensor_pickle("w", "FloatStorage", 1, 0, &[1 << 20, 1 << 20], &[0, 0]);
    write_zip(&p, &[("a/data.pkl", &pkl), ("a/data/0", &[0u8; 4])]);
    assert!(err_text(load_pth(&p)).contains("broadcast"));
}

#[test]
fn unsupported_dtype_names_tensor_and_dtype() {
    let dir = scratch("dtype");
    let p = dir.join("c.pth");
    let pkl = tensor_pickle("z", "ComplexFloatStorage", 2, 0, &[2], &[1]);
    write_zip(&p, &[("a/data.pkl", &pkl), ("a/data/0", &[0u8; 16])]);
    let e = err_text(load_pth(&p));
    assert!(e.contains("'z'") && e.contains("ComplexFloat"), "{e}");
}

#[test]
fn not_a_checkpoint_is_an_error() {
    let dir = scratch("not_ckpt");
    let p = dir.join("junk.pth");
    for bytes in [
        &b""[..],
        b"hello world, not a checkpoint",
        b"PK\x03\x04garbage",
        b"\x80\x02}.",
    ] {
        std::fs::write(&p, bytes).expect("write");
        assert!(load_pth(&p).is_err());
        assert!(load_state_dict(&p, StateDictPick::Auto).is_err());
    }
    // A zip without data.pkl, and a data.pkl that is not a pickle.
    write_zip(&p, &[("a/other", b"x")]);
    assert!(err_text(load_pth(&p)).contains("data.pkl"));
    write_zip(&p, &[("a/data.pkl", b"not a pickle")]);
    assert!(err_text(load_pth(&p)).contains("pickle"));
    match load_pth(&dir.join("missing.pth")) {
        Err(Error::Io { .. }) => {}
        other => panic!("expected Io error, got {other:?}"),
    }
}

fn roundtrip_tensors() -> NamedTensors {
    let mut t = NamedTensors::new();
    t.insert(
        "a.weight".into(),
        HostTensor::f32(
            vec![2, 3, 4],
            (0..24).map(|i| i as f32 * 0.5 - 3.0).collect(),
        ),
    );
    t.insert("b.scalar".into(), HostTensor::f32(vec![], vec![1.25]));
    t.insert(
        "c.long".into(),
        HostTensor::i64(vec![3], vec![-5, 0, 1 << 40]),
    );
    t.insert("d.empty".into(), HostTensor::f32(vec![0, 2], vec![]));
    t.insert(
        "e.big".into(),
        HostTensor::f32(vec![70000], (0..70000).map(|i| i as f32).collect()),
    );
    t
}

/// save_pth -> load_pth, load_state_dict (content sniffing, whatever the extension).
///
/// Checked against PyTorch 2.15 by hand: `MPM_TORCH_CHECK=1 cargo test --test io_pth
/// save_pth_is_read_by_torch` runs `python3 scripts/make_io_fixtures.py --check-pth <file>`,
/// which asserts `torch.load(file, weights_only=True)` returns the same names, dtypes,
/// shapes and values (it passed on 2026-11-28). CI has no PyTorch, so it is opt-in.
#[test]
fn save_pth_is_read_by_torch() {
    let dir = scratch("save_pth");
    let t = roundtrip_tensors();
    let p = dir.join("w.pth");
    save_pth(&p, &t).expect("save");
    assert_same(&load_pth(&p).expect("load"), &t);
    let q = dir.join("w.safetensors");
    std::fs::copy(&p, &q).expect("copy");
    assert_same(
        &load_state_dict(&q, StateDictPick::Auto).expect("sniffed"),
        &t,
    );
    // Overwrite in place; no temp files left behind.
    save_pth(&p, &t).expect("overwrite");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    if std::env::var_os("MPM_TORCH_CHECK").is_some() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_io_fixtures.py");
        let out = std::process::Command::new("python3")
            .arg(script)
            .arg("--check-pth")
            .arg(&p)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn save_pth_errors_leave_nothing_behind() {
    let dir = scratch("save_err");
    let mut t = roundtrip_tensors();
    // Into a directory that does not exist.
    assert!(save_pth(&dir.join("no/such/dir/w.pth"), &t).is_err());
    // Shape that does not match the buffer (fields are public).
    t.get_mut("a.weight").expect("a").shape = vec![5];
    let p = dir.join("w.pth");
    let e = save_pth(&p, &t).expect_err("bad shape");
    assert!(e.to_string().contains("a.weight"), "{e}");
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);
}

#[test]
fn cyclic_dicts_terminate() {
    // d = {}; d['a'] = d; d['b'] = d: without cycle detection 2^64 paths.
    let dir = scratch("cyclic");
    let p = dir.join("c.pth");
    let pkl = b"\x80\x02}q\x00(X\x01\x00\x00\x00ah\x00X\x01\x00\x00\x00bh\x00u.";
    write_zip(&p, &[("a/data.pkl", pkl)]);
    assert!(load_pth(&p).expect("loads").is_empty());
    assert!(load_state_dict(&p, StateDictPick::Auto).is_err());
}

#[test]
fn tensor_subclass_rebuild_is_unwrapped() {
    // {'w': torch._tensor._rebuild_from_type_v2(_rebuild_tensor_v2, torch.Tensor, (...), {})}
    let dir = scratch("from_type");
    let p = dir.join("t.pth");
    let tp = tensor_pickle("w", "FloatStorage", 2, 0, &[2], &[1]);
    let g: &[u8] = b"ctorch._utils\n_rebuild_tensor_v2\n";
    let i = tp.windows(g.len()).position(|w| w == g).expect("global");
    let args = &tp[i + g.len()..tp.len() - 3]; // "(...t", before "Ru."
    let mut pkl = tp[..i].to_vec();
    pkl.extend(b"ctorch._tensor\n_rebuild_from_type_v2\n(");
    pkl.extend(g);
    pkl.extend(b"ctorch\nTensor\n");
    pkl.extend(args);
    pkl.extend(b"}tRu.");
    let data: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    write_zip(&p, &[("a/data.pkl", &pkl), ("a/data/0", &data)]);
    let t = load_pth(&p).expect("loads");
    assert_eq!(t["w"].as_f32(), Some(&[1.5f32, -2.0][..]));
}

#[test]
fn auto_skips_a_none_ema_entry() {
    // {'state_dict_ema': None, 'state_dict': {'module.w': tensor([1., 2.])}}
    let dir = scratch("none_ema");
    let p = dir.join("n.pth");
    let tp = tensor_pickle("module.w", "FloatStorage", 2, 0, &[2], &[1]);
    let mut pkl = b"\x80\x02}(".to_vec();
    io_util::push_str(&mut pkl, "state_dict_ema");
    pkl.push(b'N');
    io_util::push_str(&mut pkl, "state_dict");
    pkl.extend(&tp[2..tp.len() - 1]);
    pkl.extend(b"u.");
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    write_zip(&p, &[("a/data.pkl", &pkl), ("a/data/0", &data)]);
    let t = load_state_dict(&p, StateDictPick::Auto).expect("auto");
    assert_eq!(t["w"].as_f32(), Some(&[1.0f32, 2.0][..]));
    let e = err_text(load_state_dict(&p, StateDictPick::Ema));
    assert!(e.contains("'state_dict_ema' is None"), "{e}");
}

/// What a loader returned for a file with one flipped byte.
#[derive(Debug, PartialEq)]
enum FlipOutcome {
    Error,
    /// The same tensors, bit for bit (a byte the loader does not use: a timestamp, a local
    /// header field the central directory overrides, ...).
    Identical,
    /// Same names, shapes and dtypes, other values: a flip inside a raw storage payload.
    ValuesOnly,
    /// Other names, shapes or dtypes: a flip inside the pickle, read without a checksum.
    Layout,
}

fn flip_outcome(got: mpm::Result<NamedTensors>, want: &NamedTensors) -> FlipOutcome {
    let Ok(got) = got else {
        return FlipOutcome::Error;
    };
    // Whatever loaded is well formed: as many values as the shape says.
    for (k, t) in &got {
        let n = match &t.data {
            mpm::io::HostData::F32(v) => v.len(),
            mpm::io::HostData::I64(v) => v.len(),
        };
        assert_eq!(n, t.shape.iter().product::<usize>(), "{k:?}: {:?}", t.shape);
    }
    let same_layout = got.len() == want.len()
        && got.iter().zip(want).all(|((gk, g), (wk, w))| {
            gk == wk && g.shape == w.shape && g.dtype_name() == w.dtype_name()
        });
    if !same_layout {
        return FlipOutcome::Layout;
    }
    // Bitwise (NaN-safe) comparison of every value.
    let bits = |t: &HostTensor| -> Vec<u64> {
        match &t.data {
            mpm::io::HostData::F32(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
            mpm::io::HostData::I64(v) => v.iter().map(|x| *x as u64).collect(),
        }
    };
    if got
        .values()
        .zip(want.values())
        .all(|(g, w)| bits(g) == bits(w))
    {
        FlipOutcome::Identical
    } else {
        FlipOutcome::ValuesOnly
    }
}

#[test]
fn corrupted_archive_bytes_are_errors_not_panics() {
    // Byte flips over the zip structure itself (local headers, central directory, EOCD), the
    // pickles and the storages. The zip format (torch.save since 1.6) has a CRC-32 per record,
    // which the loader checks, so every flip must be an error or leave the tensors identical.
    // The legacy format has no checksum at all: a flip in a storage's bytes loads other values
    // and one in the pickle can load another name or shape (PyTorch loads those too); there
    // the test requires no panic and well-formed tensors, and that both kinds occur (so the
    // loop does reach the payload and the pickle).
    let dir = scratch("corrupt_zip");
    let p = dir.join("z.pth");
    for (name, checksummed) in [("plain.pth", true), ("legacy.pth", false)] {
        let bytes = std::fs::read(fixture(name)).expect("fixture");
        let want = load_pth(&fixture(name)).expect("original loads");
        let want_sd = load_state_dict(&fixture(name), StateDictPick::Auto).expect("original");
        let n = bytes.len();
        let mut seen = std::collections::BTreeMap::new();
        for i in 0..n {
            if i >= 128 && i + 384 < n && i % 17 != 0 {
                continue;
            }
            for val in [0x00u8, 0xff] {
                if bytes[i] == val {
                    continue;
                }
                let mut b = bytes.clone();
                b[i] = val;
                std::fs::write(&p, &b).expect("write");
                let o1 = flip_outcome(load_pth(&p), &want);
                let o2 = flip_outcome(load_state_dict(&p, StateDictPick::Auto), &want_sd);
                if checksummed {
                    let what = format!("{name}, byte {i} set to {val:#04x}");
                    for (o, via) in [(&o1, "load_pth"), (&o2, "load_state_dict")] {
                        assert!(
                            matches!(o, FlipOutcome::Error | FlipOutcome::Identical),
                            "{what}: {via} loaded other tensors ({o:?}) without an error"
                        );
                    }
                }
                *seen.entry(format!("{o1:?}")).or_insert(0usize) += 1;
            }
        }
        eprintln!("{name}: outcomes of the flips {seen:?}");
        let count = |k: &str| seen.get(k).copied().unwrap_or(0);
        assert!(
            count("Error") > 0 && count("Identical") > 0,
            "{name}: {seen:?}"
        );
        if !checksummed {
            assert!(
                count("ValuesOnly") > 0 && count("Layout") > 0,
                "{name}: {seen:?}"
            );
        }
    }
}
