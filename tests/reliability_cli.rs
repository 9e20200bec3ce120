//! Reliability of the command-line jobs (issue 14): attack journals keyed by content, one
//! run per run directory, full-disk errors that reach the exit status, and configuration
//! values refused with their flag before anything is allocated.

use mpm::io::{self, HostTensor, NamedTensors};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{classifier_spec, failed_cleanly, save_model, text};

fn tiny_model(seed: u64, path: &Path) {
    save_model(path, &classifier_spec(10, 4), seed);
}

fn data(path: &Path, reversed: bool) {
    let n = 3;
    let mut x: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|i| ((i * 37 % 101) as f32) / 101.0)
        .collect();
    let mut y = vec![1i64, 4, 7];
    if reversed {
        let d = 3 * 32 * 32;
        let rows: Vec<Vec<f32>> = x.chunks(d).rev().map(|c| c.to_vec()).collect();
        x = rows.concat();
        y.reverse();
    }
    let mut t = NamedTensors::new();
    t.insert("input".into(), HostTensor::f32(vec![n, 3, 32, 32], x));
    t.insert("target".into(), HostTensor::i64(vec![n], y));
    io::save_safetensors(path, &t, &io::no_metadata()).unwrap();
}

fn attack(w: &Path, x: &Path, report: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mpm-attack"))
        .args([
            "--weights",
            w.to_str().unwrap(),
            "--arch",
            "resnet18",
            "--act",
            "gelu",
            "--num-classes",
            "10",
            "--data",
            x.to_str().unwrap(),
            "--norm",
            "Linf",
            "--eps",
            "0.01",
            "--version",
            "custom",
            "--attacks",
            "apgd-ce",
            "--n-iter",
            "2",
            "--report",
            report.to_str().unwrap(),
        ])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn attack_journal_is_keyed_by_content() {
    let d = tempfile::tempdir().unwrap();
    let (w, x, r) = (
        d.path().join("model.safetensors"),
        d.path().join("x.safetensors"),
        d.path().join("r.json"),
    );
    tiny_model(1, &w);
    data(&x, false);
    let o = attack(&w, &x, &r, &[]);
    assert!(o.status.success(), "{}", text(&o));
    // Same command, same files: resumes everything.
    let o = attack(&w, &x, &r, &[]);
    assert!(text(&o).contains("resuming: 3 of 3"), "{}", text(&o));

    // Another model of the same architecture (same byte size) under the same name.
    let size = std::fs::metadata(&w).unwrap().len();
    tiny_model(2, &w);
    assert_eq!(std::fs::metadata(&w).unwrap().len(), size);
    let o = attack(&w, &x, &r, &[]);
    let t = text(&o);
    assert!(failed_cleanly(&o), "{t}");
    assert!(
        t.contains("weights_hash changed") && !t.contains("resuming"),
        "{t}"
    );
    assert!(
        !t.contains("data_hash changed"),
        "only the weights changed: {t}"
    );
    // --restart starts afresh with the new model.
    let o = attack(&w, &x, &r, &["--restart"]);
    assert!(o.status.success(), "{}", text(&o));

    // The same samples in another order.
    data(&x, true);
    let o = attack(&w, &x, &r, &[]);
    let t = text(&o);
    assert!(failed_cleanly(&o), "{t}");
    assert!(
        t.contains("data_hash changed") && !t.contains("weights_hash"),
        "{t}"
    );

    // A report path that is a directory fails before the evaluation.
    let o = attack(&w, &x, d.path(), &[]);
    let t = text(&o);
    assert!(
        t.contains("--report") && t.contains("is a directory"),
        "{t}"
    );
}

#[test]
fn attack_on_zero_images_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let (w, x, r) = (
        d.path().join("model.safetensors"),
        d.path().join("x.safetensors"),
        d.path().join("r.json"),
    );
    tiny_model(1, &w);
    data(&x, false);
    let o = attack(&w, &x, &r, &["--limit", "0"]);
    let t = text(&o);
    assert!(failed_cleanly(&o), "{t}");
    assert!(t.contains("no sample to attack") && !r.exists(), "{t}");
}

fn train() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mpm-train"))
}

/// A 2-class training set in the reference layout (synth, then labels); returns train.txt.
fn tiny_dataset(d: &Path) -> PathBuf {
    let src = d.join("syn");
    let out = d.join("pin");
    let o = mpm_data(&[
        "synth",
        "--out",
        src.to_str().unwrap(),
        "--classes",
        "2",
        "--images-per-class",
        "4",
        "--min-size",
        "32",
        "--max-size",
        "48",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = mpm_data(&[
        "labels",
        "--json-dir",
        src.join("json").to_str().unwrap(),
        "--images",
        src.join("images").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    out.join("train.txt")
}

#[test]
fn a_locked_run_directory_is_refused_and_a_stale_lock_taken_over() {
    let d = tempfile::tempdir().unwrap();
    let train_txt = tiny_dataset(d.path());
    let run = d.path().join("run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    let args = |c: &mut Command| {
        c.args([
            "--model",
            "resnet18",
            "--width",
            "4",
            "--num-classes",
            "2",
            "--partmodel-type",
            "vanilla",
            "--input-size",
            "32",
            "--batch-size",
            "2",
            "--epochs",
            "1",
            "--stop-after-steps",
            "1",
            "--no-progress",
            "--output-dir",
            run.to_str().unwrap(),
            "--train-dir",
            train_txt.to_str().unwrap(),
        ]);
    };
    // This test process is alive: its lock is not stale.
    let lock = run.join(io::RUN_LOCK_NAME);
    std::fs::write(
        &lock,
        format!("pid {}\nhost {}\n", std::process::id(), io::host_name()),
    )
    .unwrap();
    let mut c = train();
    args(&mut c);
    let o = c.output().unwrap();
    let t = text(&o);
    assert!(failed_cleanly(&o), "{t}");
    assert!(
        t.contains("in use by another run") && t.contains("--output-dir"),
        "{t}"
    );
    assert!(!run.join("config.toml").exists(), "{t}");
    // A dead process's lock, and a temp file of a killed checkpoint write: both cleared.
    std::fs::write(&lock, format!("pid 2147483632\nhost {}\n", io::host_name())).unwrap();
    let stale_tmp = run.join("checkpoints/.last.safetensors.tmp.2147483632.99");
    std::fs::write(&stale_tmp, b"half a checkpoint").unwrap();
    let mut c = train();
    args(&mut c);
    let o = c.output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("took over the stale lock"), "{t}");
    assert!(t.contains("removed 1 temp file"), "{t}");
    assert!(!stale_tmp.exists() && !lock.exists(), "{t}");
}

#[test]
fn nonsense_hyper_parameters_are_refused_with_their_flag() {
    for (flag, value) in [
        ("--min-lr", "-5"),
        ("--momentum", "-0.5"),
        ("--weight-decay", "-1"),
        ("--lambdas", "-3"),
        ("--gamma", "-1"),
        ("--color-jitter", "-1"),
        ("--hflip", "2"),
        ("--lr", "nan"),
        ("--input-size", "1000000"),
        ("--width", "100000"),
    ] {
        let o = train()
            .args([
                &format!("{flag}={value}"),
                "--train-dir",
                "/no/such/dir",
                "--no-progress",
            ])
            .output()
            .unwrap();
        let t = text(&o);
        assert!(failed_cleanly(&o), "{flag} {value}: {t}");
        assert!(t.contains(flag), "{flag} {value}: {t}");
        assert!(!t.contains("memory allocation"), "{t}");
    }
}

fn mpm_data(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mpm-data"))
        .args(args)
        .output()
        .unwrap()
}

/// `mpm-data labels` with a file-size limit (as a full disk does, writes past it fail):
/// the run must fail and say so, not report success over empty label maps.
#[test]
fn labels_on_a_full_disk_fail_loudly() {
    let d = tempfile::tempdir().unwrap();
    let src: PathBuf = d.path().join("syn");
    let out = d.path().join("pin");
    let o = mpm_data(&[
        "synth",
        "--out",
        src.to_str().unwrap(),
        "--classes",
        "2",
        "--images-per-class",
        "3",
        "--min-size",
        "96",
        "--max-size",
        "128",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let mut c = Command::new(env!("CARGO_BIN_EXE_mpm-data"));
    c.args([
        "labels",
        "--json-dir",
        src.join("json").to_str().unwrap(),
        "--images",
        src.join("images").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-images",
        "--quiet",
    ]);
    // SAFETY: signal and setrlimit are async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            // Past the limit a write fails with EFBIG instead of killing the process.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 400,
                rlim_max: 400,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = c.output().unwrap();
    let t = text(&o);
    assert!(failed_cleanly(&o), "{t}");
    assert!(t.contains("cannot write an output"), "{t}");
    // No label map that exists is empty or cut short.
    for class in std::fs::read_dir(out.join("seg"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(class.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".tmp."), "temp file left: {name}");
            let m = mpm::data::imageio::read_label_map(&f.path());
            assert!(m.is_ok(), "{name}: {:?}", m.err().map(|e| e.to_string()));
        }
    }
}

/// One undecodable image alone in its batch is dropped (another sample takes its place);
/// the run goes on to the end.
#[test]
fn an_undecodable_image_alone_in_its_batch_does_not_stop_training() {
    let d = tempfile::tempdir().unwrap();
    let train_txt = tiny_dataset(d.path());
    let list = std::fs::read_to_string(&train_txt).unwrap();
    let first = list
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let img = train_txt.parent().unwrap().join("img").join(first);
    let target = std::fs::canonicalize(&img).unwrap();
    std::fs::write(&target, b"\xff\xd8 not a jpeg").unwrap();
    let run = d.path().join("run");
    let o = train()
        .args([
            "--model",
            "resnet18",
            "--width",
            "4",
            "--num-classes",
            "2",
            "--partmodel-type",
            "vanilla",
            "--input-size",
            "64", // a 2x2 last feature map: batch norm on one image still has 4 values
            "--batch-size",
            "1",
            "--epochs",
            "1",
            "--no-progress",
            "--output-dir",
            run.to_str().unwrap(),
            "--train-dir",
            train_txt.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("skipped") && t.contains("takes its place"),
        "{t}"
    );
    assert!(!t.contains("Skip {"), "debug formatting: {t}");
}

/// Runs `c` with writes limited to `bytes` per file (as a full disk does: past it a write
/// fails with EFBIG instead of killing the process).
fn with_file_size_limit(c: &mut Command, bytes: u64) -> Output {
    // SAFETY: signal and setrlimit are async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.output().unwrap()
}

/// `mpm-data corrupt` on a full disk: a failed write is the job's error (exit 1, naming the
/// output), not a skipped image with exit 0; no partial output or temp file stays.
#[test]
fn corrupt_on_a_full_disk_fails_loudly() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("syn");
    let o = mpm_data(&[
        "synth",
        "--out",
        src.to_str().unwrap(),
        "--classes",
        "1",
        "--images-per-class",
        "2",
        "--min-size",
        "64",
        "--max-size",
        "64",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = d.path().join("c");
    let mut c = Command::new(env!("CARGO_BIN_EXE_mpm-data"));
    c.args([
        "corrupt",
        "--images",
        src.join("images").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--corruptions",
        "gaussian_noise",
        "--severities",
        "1",
        "--quiet",
    ]);
    let o = with_file_size_limit(&mut c, 400);
    let t = text(&o);
    assert!(failed_cleanly(&o), "{t}");
    assert!(t.contains("cannot write an output"), "{t}");
    let mut stack = vec![out];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".tmp."), "temp file left: {name}");
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                assert!(image::open(e.path()).is_ok(), "partial output {name}");
            }
        }
    }
}

/// `mpm-audit parity` whose outputs hold NaN (a NaN weight) exits non-zero and names them.
#[test]
fn parity_with_nan_outputs_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let w = d.path().join("w.safetensors");
    tiny_model(3, &w);
    let (mut t, meta) = io::load_safetensors(&w).unwrap();
    let mut bias = t["fc.bias"].as_f32().unwrap().to_vec();
    bias[0] = f32::NAN;
    t.insert("fc.bias".into(), HostTensor::f32(vec![bias.len()], bias));
    io::save_safetensors(&w, &t, &meta).unwrap();
    let x = d.path().join("x.safetensors");
    data(&x, false);
    let y = d.path().join("y.safetensors");
    let o = Command::new(env!("CARGO_BIN_EXE_mpm-audit"))
        .args(["parity", "--weights", w.to_str().unwrap(), "--input"])
        .args([x.to_str().unwrap(), "--out", y.to_str().unwrap()])
        .args(["--arch", "resnet18", "--act", "gelu", "--num-classes", "10"])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(failed_cleanly(&o), "{t}");
    assert!(
        t.contains("NaN or infinity") && t.contains("eval.logits"),
        "{t}"
    );
}

/// The flags of a tiny vanilla training run (ResNet-18 width 4, 64 px, 2 classes).
fn tiny_run_args<'a>(run: &'a Path, train_txt: &'a Path) -> Vec<&'a str> {
    vec![
        "--model",
        "resnet18",
        "--width",
        "4",
        "--num-classes",
        "2",
        "--partmodel-type",
        "vanilla",
        "--input-size",
        "64",
        "--batch-size",
        "2",
        "--no-progress",
        "--output-dir",
        run.to_str().unwrap(),
        "--train-dir",
        train_txt.to_str().unwrap(),
    ]
}

/// A training checkpoint edited by `edit` (tensors, metadata) into `path`.
fn edited_checkpoint(
    from: &Path,
    path: &Path,
    edit: impl FnOnce(&mut NamedTensors, &mut std::collections::BTreeMap<String, String>),
) {
    let (mut t, mut meta) = io::load_safetensors(from).unwrap();
    edit(&mut t, &mut meta);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    io::save_safetensors(path, &t, &meta).unwrap();
}

/// Resume refuses a checkpoint that lost a momentum buffer or whose position is
/// inconsistent, and export refuses a negative running variance; each names the problem.
#[test]
fn resume_and_export_refuse_inconsistent_checkpoints() {
    let d = tempfile::tempdir().unwrap();
    let train_txt = tiny_dataset(d.path());
    let run = d.path().join("run");
    let o = train()
        .args(tiny_run_args(&run, &train_txt))
        .args(["--epochs", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let last = run.join("checkpoints").join("last.safetensors");
    let resume = |ck: &Path| {
        train()
            .args([
                "--resume",
                ck.to_str().unwrap(),
                "--epochs",
                "2",
                "--no-progress",
            ])
            .output()
            .unwrap()
    };

    let ck = d
        .path()
        .join("a")
        .join("checkpoints")
        .join("last.safetensors");
    edited_checkpoint(&last, &ck, |t, _| {
        let k = t
            .keys()
            .find(|k| k.starts_with("momentum."))
            .unwrap()
            .clone();
        t.remove(&k);
    });
    let o = resume(&ck);
    let t = text(&o);
    assert!(failed_cleanly(&o), "{t}");
    assert!(
        t.contains("momentum buffer") && t.contains("cannot resume"),
        "{t}"
    );

    let ck = d
        .path()
        .join("b")
        .join("checkpoints")
        .join("last.safetensors");
    edited_checkpoint(&last, &ck, |_, meta| {
        let mut s: serde_json::Value = serde_json::from_str(&meta["state"]).unwrap();
        let g = s["position"]["global_step"].as_u64().unwrap();
        s["position"]["global_step"] = serde_json::json!(g + 3);
        meta.insert("state".into(), s.to_string());
    });
    let o = resume(&ck);
    let t = text(&o);
    assert!(failed_cleanly(&o), "{t}");
    assert!(t.contains("inconsistent position"), "{t}");

    let ck = d.path().join("c.safetensors");
    edited_checkpoint(&last, &ck, |t, _| {
        for (k, v) in t.iter_mut() {
            if k.ends_with("bn1.running_var") && (k.starts_with("model.") || k.starts_with("ema."))
            {
                let mut x = v.as_f32().unwrap().to_vec();
                x[0] = -0.25;
                *v = HostTensor::f32(v.shape.clone(), x);
            }
        }
    });
    let out = d.path().join("export");
    let o = train()
        .args(["export", "--checkpoint", ck.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(failed_cleanly(&o), "{t}");
    assert!(
        t.contains("negative variance") && t.contains("bn1.running_var"),
        "{t}"
    );
    assert!(!out.join("model.safetensors").exists());
}

/// An epoch's log lines are written after its checkpoint: when the checkpoint cannot be
/// written, train.log and metrics.jsonl hold no record of the epoch (a resumed run, which
/// redoes the epoch's end, would otherwise write them twice).
#[test]
fn epoch_records_follow_the_epoch_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let train_txt = tiny_dataset(d.path());
    let run = d.path().join("run");
    // A directory where the checkpoint goes: its rename fails.
    std::fs::create_dir_all(run.join("checkpoints").join("last.safetensors").join("x")).unwrap();
    let o = train()
        .args(tiny_run_args(&run, &train_txt))
        .args(["--epochs", "1"])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(failed_cleanly(&o), "{t}");
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains("start"), "{log}");
    assert!(
        !log.contains("epoch 1/1"),
        "epoch line before its checkpoint:\n{log}"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    assert!(!metrics.contains("\"train\""), "{metrics}");
}

/// With batch-norm groups of one image, an undecodable image alone in its group is dropped
/// and counted (another sample takes its place): the run ends normally.
#[test]
fn an_undecodable_image_alone_in_its_bn_group_is_dropped_and_counted() {
    let d = tempfile::tempdir().unwrap();
    let train_txt = tiny_dataset(d.path());
    let list = std::fs::read_to_string(&train_txt).unwrap();
    let first = list
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let img = train_txt.parent().unwrap().join("img").join(first);
    std::fs::write(std::fs::canonicalize(&img).unwrap(), b"\xff\xd8 not a jpeg").unwrap();
    let run = d.path().join("run");
    let o = train()
        .args(tiny_run_args(&run, &train_txt))
        .args(["--bn-group", "1", "--epochs", "1"])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("takes its place") && t.contains("dropped so far"),
        "{t}"
    );
}

/// A list file whose label is past --num-classes names the line, the label and the range.
#[test]
fn a_label_out_of_range_names_its_line_and_the_valid_range() {
    let d = tempfile::tempdir().unwrap();
    let train_txt = tiny_dataset(d.path());
    let mut list = std::fs::read_to_string(&train_txt).unwrap();
    let second = list.lines().nth(1).unwrap().to_string();
    let (name, _) = second.rsplit_once(' ').unwrap();
    list = list.replacen(&second, &format!("{name} 7"), 1);
    std::fs::write(&train_txt, list).unwrap();
    let run = d.path().join("run");
    let o = train()
        .args(tiny_run_args(&run, &train_txt))
        .args(["--epochs", "1"])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(failed_cleanly(&o), "{t}");
    assert!(
        t.contains("line 2: label 7 is out of range")
            && t.contains("allows labels 0 to 1")
            && t.contains("train.txt"),
        "{t}"
    );
    assert!(!t.contains("has 8 classes"), "{t}");
}

/// Images of a part model's training set without a label map are counted aloud (they train
/// with segmentation weight 0), not silently.
#[test]
fn missing_label_maps_are_counted() {
    let d = tempfile::tempdir().unwrap();
    let train_txt = tiny_dataset(d.path());
    let list = std::fs::read_to_string(&train_txt).unwrap();
    let first = list
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let (wnid, file) = first.split_once('/').unwrap();
    let stem = Path::new(file).file_stem().unwrap().to_str().unwrap();
    let map = train_txt
        .parent()
        .unwrap()
        .join("seg")
        .join(wnid)
        .join(format!("{stem}.png"));
    std::fs::remove_file(&map).unwrap();
    let run = d.path().join("run");
    let mut args = tiny_run_args(&run, &train_txt);
    let at = args.iter().position(|a| *a == "vanilla").unwrap();
    args[at] = "mpm";
    let o = train()
        .args(args)
        .args(["--epochs", "1", "--stop-after-steps", "1"])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(
        t.contains("images have no label map") && t.contains("segmentation weight 0"),
        "{t}"
    );
}

/// `index --check-maps` names the sizes of a map and its image as `WxH`, and an unreadable
/// image as such: no Rust debug output (`Some((8, 6))`, `None`) in the message.
#[test]
fn check_maps_size_messages_are_readable() {
    let d = tempfile::tempdir().unwrap();
    let (img, seg) = (d.path().join("img/n01"), d.path().join("seg/n01"));
    std::fs::create_dir_all(&img).unwrap();
    std::fs::create_dir_all(&seg).unwrap();
    image::RgbImage::from_pixel(8, 6, image::Rgb([10, 20, 30]))
        .save(img.join("a.png"))
        .unwrap();
    std::fs::write(img.join("b.png"), b"not an image").unwrap();
    let map = mpm::data::imageio::LabelMap {
        h: 4,
        w: 4,
        data: vec![1; 16],
    };
    for n in ["a.png", "b.png"] {
        mpm::data::imageio::write_label_map(&seg.join(n), &map).unwrap();
    }
    let (root, segs, out) = (
        d.path().join("img"),
        d.path().join("seg"),
        d.path().join("i.tsv"),
    );
    let o = mpm_data(&[
        "index",
        "--root",
        root.to_str().unwrap(),
        "--seg",
        segs.to_str().unwrap(),
        "--check-maps",
        "--out",
        out.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(t.contains("map left out: 4x4 vs image 8x6"), "{t}");
    assert!(
        t.contains("map left out: 4x4 vs an unreadable image"),
        "{t}"
    );
    assert!(!t.contains("Some(") && !t.contains("None"), "{t}");
}
