//! Every binary that reads a kind of file, run on every item of the hostile-input corpus
//! (`tests/fixtures/hostile/`, written by `scripts/make_hostile_corpus.py`) under a 4 GiB
//! address-space cap: each run must end with a clean error (exit status 1 or 2), never an
//! abort, a signal, a panic or a stack overflow, and no payload may create its marker file
//! (`PWNED`, in the run's working directory).

use mpm::io::{self, HostTensor, NamedTensors};
use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec, StateValue};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const MEMORY_CAP: u64 = 4 << 30;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile")
}

fn items(ext: &[&str]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            ext.iter().any(|e| name.ends_with(e))
        })
        .collect();
    v.sort();
    v
}

/// A valid tiny model (ResNet-18, width 4, 10 classes) and 2 valid images.
fn valid_inputs(d: &Path) -> (PathBuf, PathBuf) {
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
    let store = spec.init(3).unwrap();
    let mut w = NamedTensors::new();
    for (k, v) in spec.state_dict(&store).unwrap() {
        let t = match v {
            StateValue::Float(t) => HostTensor::f32(t.shape, t.data),
            StateValue::Int(i) => HostTensor::i64(Vec::<usize>::new(), vec![i]),
        };
        w.insert(k, t);
    }
    let wp = d.join("w.safetensors");
    io::save_safetensors(&wp, &w, &io::no_metadata()).unwrap();
    let mut x = NamedTensors::new();
    x.insert(
        "input".into(),
        HostTensor::f32(vec![2, 3, 32, 32], vec![0.5; 2 * 3 * 32 * 32]),
    );
    x.insert("target".into(), HostTensor::i64(vec![2], vec![1, 2]));
    let xp = d.join("x.safetensors");
    io::save_safetensors(&xp, &x, &io::no_metadata()).unwrap();
    (wp, xp)
}

struct Outcome {
    code: Option<i32>,
    text: String,
}

/// Runs `bin` with `args` in a fresh empty directory under the memory cap; checks that no
/// marker file appeared there.
fn run_capped(bin: &str, args: &[&str], what: &str) -> Outcome {
    let cwd = tempfile::tempdir().unwrap();
    let mut c = Command::new(bin);
    c.args(args).current_dir(cwd.path());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: MEMORY_CAP,
                rlim_max: MEMORY_CAP,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let left: Vec<String> = std::fs::read_dir(cwd.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !left.iter().any(|n| n.contains("PWNED")),
        "{what}: a payload ran ({left:?})\n{text}"
    );
    Outcome {
        code: o.status.code(),
        text,
    }
}

/// A clean error that also names `file`: the run failed on the item, not on something else.
fn expect_error_naming(o: &Outcome, what: &str, file: &str) {
    expect_clean_error(o, what);
    assert!(
        o.text.contains(file),
        "{what}: the message does not name {file}\n{}",
        o.text
    );
}

fn expect_clean_error(o: &Outcome, what: &str) {
    assert!(
        matches!(o.code, Some(1) | Some(2)),
        "{what}: exit status {:?} (a signal when None), expected 1 or 2\n{}",
        o.code,
        o.text
    );
    for bad in [
        "panicked",
        "stack overflow",
        "memory allocation of",
        "RUST_BACKTRACE",
    ] {
        assert!(
            !o.text.contains(bad),
            "{what}: '{bad}' in the output\n{}",
            o.text
        );
    }
    assert!(
        !o.text.contains(" { ") && !o.text.contains("Some("),
        "{what}: Rust debug formatting in the message\n{}",
        o.text
    );
}

const ATTACK: &str = env!("CARGO_BIN_EXE_mpm-attack");
const AUDIT: &str = env!("CARGO_BIN_EXE_mpm-audit");
const TRAIN: &str = env!("CARGO_BIN_EXE_mpm-train");
const DATA: &str = env!("CARGO_BIN_EXE_mpm-data");

fn attack_args<'a>(w: &'a str, x: &'a str, report: &'a str) -> Vec<&'a str> {
    vec![
        "--weights",
        w,
        "--arch",
        "resnet18",
        "--act",
        "gelu",
        "--num-classes",
        "10",
        "--data",
        x,
        "--norm",
        "Linf",
        "--eps",
        "0.01",
        "--version",
        "custom",
        "--attacks",
        "apgd-ce",
        "--n-iter",
        "1",
        "--report",
        report,
    ]
}

/// A 2-class training set in the reference layout (synth, then labels); returns train.txt.
fn tiny_dataset(d: &Path) -> PathBuf {
    let src = d.join("syn");
    let out = d.join("pin");
    for args in [
        vec![
            "synth",
            "--out",
            src.to_str().unwrap(),
            "--classes",
            "2",
            "--images-per-class",
            "2",
            "--min-size",
            "32",
            "--max-size",
            "40",
        ],
        vec![
            "labels",
            "--json-dir",
            src.join("json").to_str().unwrap(),
            "--images",
            src.join("images").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ],
    ] {
        let o = Command::new(DATA).args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    out.join("train.txt")
}

#[test]
fn every_reader_refuses_every_hostile_item_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let train_txt = tiny_dataset(d.path());
    let train_txt = train_txt.to_str().unwrap();
    let (w, x) = valid_inputs(d.path());
    let (w, x) = (w.to_str().unwrap(), x.to_str().unwrap());
    let report = d.path().join("r.json");
    let report = report.to_str().unwrap();
    let y = d.path().join("y.safetensors");
    let y = y.to_str().unwrap();
    let mut runs = 0;

    // Checkpoints: every reader of model weights.
    for item in items(&[".pth", ".safetensors"]) {
        let p = item.to_str().unwrap();
        let name = item.file_name().unwrap().to_string_lossy().into_owned();
        let o = run_capped(
            ATTACK,
            &attack_args(p, x, report),
            &format!("attack --weights {name}"),
        );
        expect_error_naming(&o, &format!("mpm-attack --weights {name}"), &name);
        let o = run_capped(
            AUDIT,
            &[
                "parity",
                "--weights",
                p,
                "--input",
                x,
                "--out",
                y,
                "--arch",
                "resnet18",
                "--act",
                "gelu",
                "--num-classes",
                "10",
            ],
            &name,
        );
        expect_error_naming(&o, &format!("mpm-audit parity --weights {name}"), &name);
        let o = run_capped(
            TRAIN,
            &[
                "--init-checkpoint",
                p,
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
                "--train-dir",
                train_txt,
                "--output-dir",
                "run",
                "--no-progress",
            ],
            &name,
        );
        expect_error_naming(&o, &format!("mpm-train --init-checkpoint {name}"), &name);
        runs += 3;
    }

    // Data files: every reader of a tensor data file.
    for item in items(&[".safetensors", ".pth"]) {
        let p = item.to_str().unwrap();
        let name = item.file_name().unwrap().to_string_lossy().into_owned();
        let o = run_capped(ATTACK, &attack_args(w, p, report), &name);
        expect_error_naming(&o, &format!("mpm-attack --data {name}"), &name);
        let o = run_capped(
            AUDIT,
            &[
                "parity",
                "--weights",
                w,
                "--input",
                p,
                "--out",
                y,
                "--arch",
                "resnet18",
                "--act",
                "gelu",
                "--num-classes",
                "10",
            ],
            &name,
        );
        expect_error_naming(&o, &format!("mpm-audit parity --input {name}"), &name);
        runs += 2;
    }

    // Images: an ImageFolder of ten classes holding only the item, and a corruption job.
    for item in items(&[".png", ".jpg"]) {
        let name = item.file_name().unwrap().to_string_lossy().into_owned();
        let root = d.path().join(format!("folder-{name}"));
        for c in 0..10 {
            let cd = root.join(format!("c{c}"));
            std::fs::create_dir_all(&cd).unwrap();
            std::fs::copy(&item, cd.join(&name)).unwrap();
        }
        let r = root.to_str().unwrap();
        let o = run_capped(ATTACK, &attack_args(w, r, report), &name);
        expect_error_naming(&o, &format!("mpm-attack --data <folder of {name}>"), &name);
        let out = d.path().join(format!("corrupt-{name}"));
        let o = run_capped(
            DATA,
            &[
                "corrupt",
                "--images",
                root.join("c0").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--corruptions",
                "brightness",
                "--severities",
                "1",
                "--size",
                "0",
            ],
            &name,
        );
        expect_clean_error(&o, &format!("mpm-data corrupt --images <dir of {name}>"));
        runs += 2;
    }

    // List files, read by the attack (ImageFolder --list) and the corruption job.
    let folder = d.path().join("folder-list");
    for c in 0..10 {
        std::fs::create_dir_all(folder.join(format!("c{c}"))).unwrap();
    }
    for item in items(&[".txt"]) {
        let p = item.to_str().unwrap();
        let name = item.file_name().unwrap().to_string_lossy().into_owned();
        let mut args = attack_args(w, folder.to_str().unwrap(), report);
        args.extend(["--list", p]);
        let o = run_capped(ATTACK, &args, &name);
        expect_error_naming(&o, &format!("mpm-attack --list {name}"), &name);
        let out = d.path().join(format!("corrupt-{name}"));
        let o = run_capped(
            DATA,
            &[
                "corrupt",
                "--images",
                p,
                "--out",
                out.to_str().unwrap(),
                "--corruptions",
                "brightness",
                "--severities",
                "1",
            ],
            &name,
        );
        expect_clean_error(&o, &format!("mpm-data corrupt --images {name}"));
        runs += 2;
    }

    // Training configs.
    for item in items(&[".toml"]) {
        let name = item.file_name().unwrap().to_string_lossy().into_owned();
        let o = run_capped(
            TRAIN,
            &[
                "--config",
                item.to_str().unwrap(),
                "--train-dir",
                "/no/such/train",
                "--no-progress",
            ],
            &name,
        );
        expect_clean_error(&o, &format!("mpm-train --config {name}"));
        runs += 1;
    }
    assert!(runs >= 100, "only {runs} runs: is the corpus there?");
}
