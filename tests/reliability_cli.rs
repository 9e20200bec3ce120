//! Reliability of the command-line jobs (issue 14): attack journals keyed by content, one
//! run per run directory, full-disk errors that reach the exit status, and configuration
//! values refused with their flag before anything is allocated.

use mpm::io::{self, HostTensor, NamedTensors};
use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec, StateValue};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Exit status 1 or 2 (the binaries' error codes), not a signal or success.
fn failed_cleanly(o: &Output) -> bool {
    matches!(o.status.code(), Some(1) | Some(2))
}

fn tiny_model(seed: u64, path: &Path) {
    let spec = ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet18,
            width: 4,
            act: Act::Gelu,
        },
        num_classes: 10,
        seg_classes: 0,
        head: Head::None,
    };
    let store = spec.init(seed).unwrap();
    let mut w = NamedTensors::new();
    for (k, v) in spec.state_dict(&store).unwrap() {
        let t = match v {
            StateValue::Float(t) => HostTensor::f32(t.shape, t.data),
            StateValue::Int(i) => HostTensor::i64(Vec::<usize>::new(), vec![i]),
        };
        w.insert(k, t);
    }
    io::save_safetensors(path, &w, &io::no_metadata()).unwrap();
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
