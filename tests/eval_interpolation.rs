//! `mpm-eval`'s data commands: `--interpolation bilinear` (RobustBench's Res256Crop224
//! resize) reaches the model's inputs, is recorded in the report and keys the journal (a
//! resume with the other filter is refused, naming it); and every output path is checked
//! before the model loads, the error naming its flag. A width-8 ResNet-18 at 32 px on
//! noise images made here.

mod common;

use common::json;
use mpm::attack::{Classifier, Dims, EngineClassifier};
use mpm::eval::sets::EvalTransform;
use mpm::nn::ModelSpec;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn spec() -> ModelSpec {
    common::classifier_spec(2, 8)
}

/// Pixel noise: the filters' different supports give visibly different resized images.
fn noise_image(path: &Path, w: u32, h: u32, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        let mut px = [0u8; 3];
        for c in &mut px {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *c = (s >> 56) as u8;
        }
        image::Rgb(px)
    });
    img.save(path).unwrap();
}

/// The model and a two-class ImageFolder; returns the images in the set's order.
fn fixture(d: &Path) -> Vec<PathBuf> {
    let spec = spec();
    let store = spec.init(3).unwrap();
    mpm::nn::checkpoint::save_state(
        &d.join("m.safetensors"),
        &spec.state_dict(&store).unwrap(),
        &Default::default(),
    )
    .unwrap();
    let mut files = Vec::new();
    for (c, class) in ["a", "b"].iter().enumerate() {
        for k in 0..3u64 {
            let p = d.join(format!("val/{class}/{k}.png"));
            let (w, h) = if k % 2 == 0 { (120, 90) } else { (77, 101) };
            noise_image(&p, w, h, 10 * c as u64 + k);
            files.push(p);
        }
    }
    files
}

/// The model's inputs and argmax answers for `files` through `t`, computed here.
fn expected(files: &[PathBuf], t: EvalTransform) -> (Vec<f32>, Vec<f32>, Vec<u64>) {
    let mut x = Vec::new();
    for f in files {
        let img = image::open(f).unwrap().to_rgb8();
        x.extend(t.apply(&img).unwrap());
    }
    let spec = spec();
    let store = spec.init(3).unwrap();
    let mut m =
        EngineClassifier::new(spec, store).with_input_norm(mpm::nn::zoo::InputNorm::IMAGENET);
    let logits = m.logits(&x, Dims { c: 3, h: 32, w: 32 }).unwrap();
    let answers = logits
        .chunks(2)
        .map(|z| if z[1] > z[0] { 1 } else { 0 })
        .collect();
    (x, logits, answers)
}

fn eval(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mpm-eval"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run mpm-eval")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    let err = stderr(o);
    assert!(o.status.success(), "mpm-eval failed: {err}");
    err
}

/// The journal's answers in image order.
fn answers(journal: &Path) -> Vec<u64> {
    common::journal_answers(journal)
        .into_iter()
        .map(|x| x.1)
        .collect()
}

const CLEAN: [&str; 11] = [
    "clean",
    "--weights",
    "m.safetensors",
    "--arch",
    "resnet18",
    "--num-classes",
    "2",
    "--crop",
    "32",
    "--device",
    "cpu",
];

fn clean(d: &Path, extra: &[&str]) -> Output {
    let mut a: Vec<&str> = CLEAN.to_vec();
    a.extend(["--data", "val"]);
    a.extend(extra);
    eval(d, &a)
}

#[test]
fn interpolation_reaches_the_inputs_the_report_and_the_journal_key() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let files = fixture(d);
    let bicubic = EvalTransform::standard(32);
    let bilinear = bicubic.with_bilinear(true);
    let (x_cubic, z_cubic, a_cubic) = expected(&files, bicubic);
    let (x_lin, z_lin, a_lin) = expected(&files, bilinear);
    // The filters give other inputs, hence other logits.
    let dx = x_cubic
        .iter()
        .zip(&x_lin)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(dx > 0.05, "bicubic and bilinear inputs differ by only {dx}");
    assert!(z_cubic
        .iter()
        .zip(&z_lin)
        .any(|(a, b)| (a - b).abs() > 1e-4));

    // The default is bicubic, as before.
    ok(&clean(d, &["--json", "cubic.json"]));
    assert_eq!(answers(&d.join("cubic.json.journal")), a_cubic);
    let r = json(&d.join("cubic.json"));
    assert_eq!(r["preprocessing"]["interpolation"], "bicubic", "{r}");
    assert!(
        r["transform"]
            .as_str()
            .unwrap()
            .contains("Resize(36, bicubic)"),
        "{r}"
    );

    // Bilinear: the answers of the bilinear inputs, and the report says so.
    ok(&clean(
        d,
        &["--interpolation", "bilinear", "--json", "lin.json"],
    ));
    assert_eq!(answers(&d.join("lin.json.journal")), a_lin);
    let r = json(&d.join("lin.json"));
    assert_eq!(r["preprocessing"]["interpolation"], "bilinear", "{r}");
    assert!(
        r["transform"]
            .as_str()
            .unwrap()
            .contains("Resize(36, bilinear)"),
        "{r}"
    );

    // Resuming a journal with the other filter is refused, naming what changed, both ways.
    for (json_path, flags) in [
        ("cubic.json", vec!["--interpolation", "bilinear"]),
        ("lin.json", vec!["--interpolation", "bicubic"]),
    ] {
        let mut a = flags.clone();
        a.extend(["--json", json_path]);
        let o = clean(d, &a);
        let e = stderr(&o);
        assert!(!o.status.success(), "{json_path} {flags:?}: {e}");
        assert!(
            e.contains("another run") && e.contains("interpolation changed"),
            "{json_path} {flags:?}: {e}"
        );
    }
    // The journals are untouched and a fresh start is still possible.
    assert_eq!(answers(&d.join("cubic.json.journal")), a_cubic);
    ok(&clean(
        d,
        &[
            "--interpolation",
            "bilinear",
            "--json",
            "cubic.json",
            "--no-resume",
        ],
    ));
    assert_eq!(answers(&d.join("cubic.json.journal")), a_lin);
}

#[test]
fn output_paths_fail_before_the_model_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fixture(d);
    std::fs::write(d.join("file.txt"), "not a folder").unwrap();
    let started = |e: &str| e.contains("device:") || e.contains("model:") || e.contains("data:");
    let cat = |parts: &[&[&'static str]]| -> Vec<&'static str> { parts.concat() };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            cat(&[
                &CLEAN,
                &["--data", "val", "--json", "/nonexistent_dir/x.json"],
            ]),
            "--json",
        ),
        (
            cat(&[&CLEAN, &["--data", "val", "--json", "val"]]),
            "--json",
        ),
        (
            cat(&[
                &CLEAN,
                &["--data", "val", "--json", "r.json"],
                &["--journal", "/nonexistent_dir/j"],
            ]),
            "--journal",
        ),
        (
            cat(&[
                &["human"],
                &CLEAN[1..],
                &[
                    "--data",
                    "stimuli",
                    "--out",
                    "file.txt/csv",
                    "--json",
                    "h.json",
                ],
            ]),
            "--out",
        ),
        (
            vec![
                "human-metrics",
                "--model-csv",
                "csv",
                "--human-data",
                "raw",
                "--json",
                "/nonexistent_dir/hm.json",
            ],
            "--json",
        ),
        (
            vec!["merge", "s0.json", "--json", "/nonexistent_dir/m.json"],
            "--json",
        ),
    ];
    for (args, flag) in cases {
        let o = eval(d, &args);
        let e = stderr(&o);
        assert!(!o.status.success(), "{args:?}: {e}");
        assert!(
            e.contains(flag),
            "{args:?}: the error must name {flag}: {e}"
        );
        assert!(!started(&e), "{args:?}: the evaluation started: {e}");
    }
    assert!(!d.join("r.json").exists() && !d.join("r.json.journal").exists());
}

#[test]
fn zoo_names_the_model_and_notes_another_transform() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fixture(d);
    // A listed model whose normalisation and activation match: it names the report's model,
    // and a transform other than the listed one (BicubicRes256Crop224) is a note.
    let err = ok(&clean(
        d,
        &[
            "--act",
            "gelu",
            "--zoo",
            "Vanilla_R50_GELU",
            "--interpolation",
            "bilinear",
            "--json",
            "z.json",
        ],
    ));
    assert!(
        err.contains("note: Vanilla_R50_GELU is evaluated with BicubicRes256Crop224")
            && err.contains("this run uses --crop 32 --interpolation bilinear"),
        "{err}"
    );
    let r = json(&d.join("z.json"));
    assert_eq!(r["model"], "Vanilla_R50_GELU", "{r}");
    // Another activation than the listed one is an error naming --act.
    let o = clean(
        d,
        &[
            "--act",
            "relu",
            "--zoo",
            "Vanilla_R50_GELU",
            "--json",
            "z2.json",
        ],
    );
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(e.contains("--act") && e.contains("gelu activations"), "{e}");
}
