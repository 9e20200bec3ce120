//! `mpm-eval clean | corruptions | ood | human | table` end to end on a width-8 ResNet-18 and a
//! few images made here: ImageNet-C from a pre-generated tree and on the fly agree image for
//! image, resume keeps every finished image, bad images are counted skips, ImageNet-A-Plus
//! restricts to its 200 classes, ImageNet-V2's class-index folders are read as numbers, `clean
//! --list` scores exactly the listed images, the model-vs-human CSVs follow the benchmark's
//! format, and the table command puts the reports side by side.

use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec, StateValue, TorchTensor};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

fn model(dir: &Path, name: &str, classes: usize, seed: u64) {
    let spec = ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet18,
            width: 8,
            act: Act::Gelu,
        },
        num_classes: classes,
        seg_classes: 0,
        head: Head::None,
    };
    let store = spec.init(seed).unwrap();
    mpm::nn::checkpoint::save_state(
        &dir.join(name),
        &spec.state_dict(&store).unwrap(),
        &Default::default(),
    )
    .unwrap();
}

/// A plain ResNet-18 that answers `class` for every image (fc weights 0, a one-hot bias), so
/// an accuracy says which labels the images got.
fn constant_model(dir: &Path, name: &str, classes: usize, class: usize) {
    let spec = ModelSpec {
        backbone: Backbone {
            arch: Arch::ResNet18,
            width: 8,
            act: Act::Gelu,
        },
        num_classes: classes,
        seg_classes: 0,
        head: Head::None,
    };
    let mut state = spec.state_dict(&spec.init(5).unwrap()).unwrap();
    let features = spec.backbone.final_channels();
    state.insert(
        "fc.weight".into(),
        StateValue::Float(TorchTensor {
            shape: vec![classes, features],
            data: vec![0.0; classes * features],
        }),
    );
    let mut bias = vec![0.0; classes];
    bias[class] = 10.0;
    state.insert(
        "fc.bias".into(),
        StateValue::Float(TorchTensor {
            shape: vec![classes],
            data: bias,
        }),
    );
    mpm::nn::checkpoint::save_state(&dir.join(name), &state, &Default::default()).unwrap();
}

/// A smooth random-ish image (so that corruptions and resizes do something visible).
fn image(path: &Path, w: u32, h: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = |k: u32| ((x * (3 + seed + k) + y * (5 + 2 * seed + k) + seed * 31) % 256) as u8;
        image::Rgb([v(0), v(7), v(13)])
    });
    img.save(path).unwrap();
}

fn eval(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mpm-eval"))
        .current_dir(dir)
        .args(args)
        .args(
            ["--device", "cpu"]
                .iter()
                .filter(|_| !matches!(args.first(), Some(&"human-metrics") | Some(&"table"))),
        )
        .output()
        .expect("run mpm-eval")
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "mpm-eval failed: {err}");
    err
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// (subset, index, answers) of every finished image in a journal.
fn answers(journal: &Path) -> BTreeSet<(u64, u64, String)> {
    std::fs::read_to_string(journal)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["s"].as_u64().unwrap(),
                v["i"].as_u64().unwrap(),
                v["a"].to_string(),
            )
        })
        .collect()
}

const MODEL3: [&str; 6] = [
    "--weights",
    "m3.safetensors",
    "--arch",
    "resnet18",
    "--num-classes",
    "3",
];

#[test]
fn corruptions_pregenerated_and_on_the_fly_agree_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    model(d, "m3.safetensors", 3, 1);
    for (c, class) in ["a", "b", "c"].iter().enumerate() {
        for k in 0..2 {
            image(
                &d.join(format!("val/{class}/{k}.png")),
                60,
                48,
                (3 * c + k) as u32,
            );
        }
    }
    // The released layout, made by mpm-data corrupt (JPEG 85 at 224 px as ImageNet-C).
    let o = Command::new(env!("CARGO_BIN_EXE_mpm-data"))
        .current_dir(d)
        .args([
            "corrupt",
            "--images",
            "val",
            "--out",
            "inc",
            "--corruptions",
            "gaussian_noise,brightness",
            "--severities",
            "1,3",
            "--size",
            "224",
            "--format",
            "jpeg",
            "--seed",
            "5",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let common = [
        "--corruptions",
        "gaussian_noise,brightness",
        "--severities",
        "1,3",
    ];
    let mut a: Vec<&str> = vec!["corruptions"];
    a.extend(MODEL3);
    a.extend(["--data", "inc", "--json", "pre.json"]);
    a.extend(common);
    ok(&eval(d, &a));
    let mut b: Vec<&str> = vec!["corruptions"];
    b.extend(MODEL3);
    b.extend([
        "--data",
        "val",
        "--on-the-fly",
        "--seed",
        "5",
        "--json",
        "fly.json",
    ]);
    b.extend(common);
    ok(&eval(d, &b));
    let (pre, fly) = (json(&d.join("pre.json")), json(&d.join("fly.json")));
    assert_eq!(
        answers(&d.join("pre.json.journal")),
        answers(&d.join("fly.json.journal")),
        "the same images through both routes must get the same answers"
    );
    assert_eq!(answers(&d.join("pre.json.journal")).len(), 2 * 2 * 6);
    // Stronger than the answers: the model inputs themselves are identical.
    {
        use mpm::attack::imagefolder::EvalSet;
        use mpm::data::corrupt::Corruption;
        use mpm::eval::sets::{EvalTransform, Images};
        let t = EvalTransform::standard(224);
        let pre = Images::folder(&d.join("inc/gaussian_noise/3"), 3, t, "c").unwrap();
        let mut fly = Images::folder(&d.join("val"), 3, t, "v").unwrap();
        fly.corruption = Some((Corruption::GaussianNoise, 3, 5));
        let clean = Images::folder(&d.join("val"), 3, t, "v").unwrap();
        for i in 0..6 {
            let (a, b) = (pre.image(i).unwrap(), fly.image(i).unwrap());
            assert_eq!(a, b, "image {i}");
            let moved = a
                .iter()
                .zip(clean.image(i).unwrap())
                .filter(|(x, y)| *x != y)
                .count();
            assert!(moved > a.len() / 2, "the noise changed only {moved} values");
        }
    }
    for r in [&pre, &fly] {
        let g = &r["corruptions"]["gaussian_noise"];
        let s1 = g["per_severity"]["1"]["accuracy"].as_f64().unwrap();
        let s3 = g["per_severity"]["3"]["accuracy"].as_f64().unwrap();
        assert_eq!(g["per_severity"]["1"]["n"], 6);
        let acc = g["accuracy"].as_f64().unwrap();
        assert!((acc - (s1 + s3) / 2.0).abs() < 1e-12);
        assert!((g["ce"].as_f64().unwrap() - (1.0 - acc) / 0.886428).abs() < 1e-12);
        let b = r["corruptions"]["brightness"]["accuracy"].as_f64().unwrap();
        assert!((r["average_accuracy"].as_f64().unwrap() - (acc + b) / 2.0).abs() < 1e-12);
        let table = r["table"].as_str().unwrap();
        assert!(
            table.starts_with("| Model | Gauss | Bright | Avg | mCE |"),
            "{table}"
        );
        assert!(table.contains("not the standard figure"), "{table}");
    }
    assert_eq!(fly["mode"], "on-the-fly");
    assert!(d.join("pre.md").is_file());
    // Resume: a torn last line and a lost line are redone, the rest kept; same report.
    let j = d.join("fly.json.journal");
    let text = std::fs::read_to_string(&j).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines[..lines.len() - 2].join("\n") + "\n" + &lines[lines.len() - 2][..10];
    std::fs::write(&j, cut).unwrap();
    let log = ok(&eval(d, &b));
    assert!(log.contains("resuming"), "{log}");
    let again = json(&d.join("fly.json"));
    assert_eq!(again["corruptions"], fly["corruptions"]);
    assert_eq!(
        again["timing"]["images_this_run"], 2,
        "only the two lost images are redone"
    );
    // Another run's journal is refused.
    let mut c = b.clone();
    let seed_at = c.iter().position(|x| *x == "5").unwrap();
    c[seed_at] = "6";
    let o = eval(d, &c);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another run"));
    // A missing severity folder is named before any work.
    let mut m: Vec<&str> = vec!["corruptions"];
    m.extend(MODEL3);
    m.extend(["--data", "inc", "--json", "x.json", "--corruptions", "fog"]);
    let o = eval(d, &m);
    let s = String::from_utf8_lossy(&o.stderr);
    assert!(s.contains("missing ImageNet-C folder fog/1"), "{s}");
}

#[test]
fn clean_counts_undecodable_images_and_rejects_wrong_class_counts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    model(d, "m3.safetensors", 3, 2);
    for (c, class) in ["a", "b", "c"].iter().enumerate() {
        image(&d.join(format!("val/{class}/0.png")), 40, 40, c as u32);
    }
    std::fs::write(d.join("val/b/broken.png"), b"not a png").unwrap();
    let mut a: Vec<&str> = vec!["clean"];
    a.extend(MODEL3);
    a.extend(["--data", "val", "--crop", "32", "--json", "clean.json"]);
    let log = ok(&eval(d, &a));
    assert!(log.contains("broken.png"), "{log}");
    let r = json(&d.join("clean.json"));
    assert_eq!(r["result"]["n"], 3);
    assert_eq!(r["result"]["skipped"], 1);
    // ImageNet-R needs a 1,000-class model: said before any folder is read.
    let mut r: Vec<&str> = vec!["ood"];
    r.extend(MODEL3);
    r.extend([
        "--dataset",
        "imagenet-r",
        "--data",
        "nowhere",
        "--json",
        "r.json",
    ]);
    let o = eval(d, &r);
    let s = String::from_utf8_lossy(&o.stderr);
    assert!(
        s.contains("imagenet-r restricts") && s.contains("has 3 classes"),
        "{s}"
    );
    // Four class folders for a 3-class model.
    std::fs::create_dir_all(d.join("val/d")).unwrap();
    let o = eval(d, &[&a[..], &["--no-resume"]].concat());
    let s = String::from_utf8_lossy(&o.stderr);
    assert!(
        s.contains("4 class directories") && s.contains("--num-classes 3"),
        "{s}"
    );
}

#[test]
fn ood_human_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    model(d, "big.safetensors", 1000, 3);
    let wnids = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/eval/imagenet_a_wnids.txt"),
    )
    .unwrap();
    let wnids: Vec<&str> = wnids.lines().collect();
    for (k, w) in wnids.iter().enumerate() {
        std::fs::create_dir_all(d.join("inap").join(w)).unwrap();
        if k < 3 {
            image(&d.join(format!("inap/{w}/x.png")), 50, 30, k as u32);
        }
    }
    let big = [
        "--weights",
        "big.safetensors",
        "--arch",
        "resnet18",
        "--num-classes",
        "1000",
        "--crop",
        "32",
    ];
    let mut a: Vec<&str> = vec!["ood"];
    a.extend(big);
    a.extend([
        "--dataset",
        "imagenet-a-plus",
        "--data",
        "inap",
        "--json",
        "ap.json",
    ]);
    ok(&eval(d, &a));
    let r = json(&d.join("ap.json"));
    assert_eq!(r["result"]["n"], 3);
    assert_eq!(r["column"], "IN-A-Plus");
    assert!(r["transform"]
        .as_str()
        .unwrap()
        .contains("Resize((36, 36), bilinear)"));
    // Every answer is a position among the 200 classes.
    for (_, _, ans) in answers(&d.join("ap.json.journal")) {
        let v: Vec<u32> = serde_json::from_str(&ans).unwrap();
        assert!(v[0] < 200);
    }
    // A missing class folder is named.
    std::fs::remove_dir_all(d.join("inap").join(wnids[7])).unwrap();
    let o = eval(d, &[&a[..], &["--no-resume"]].concat());
    let s = String::from_utf8_lossy(&o.stderr);
    assert!(
        s.contains("199 class folders") && s.contains(wnids[7]),
        "{s}"
    );

    // model-vs-human stimuli: two datasets, 32-px images named as the benchmark's.
    for (k, (ds, name)) in [
        ("edge", "0001_edg_s01_0_oven_00_oven10.png"),
        ("edge", "0002_edg_s01_0_cat_00_cat3.png"),
        (
            "uniform-noise",
            "0001_nse_s01_0.03_knife_10_n03041632_82878.png",
        ),
        ("uniform-noise", "0002_nse_s01_0.90_bird_10_n01530575_1.png"),
        ("uniform-noise", "0003_nse_s01_0.0_car_10_n02814533_2.png"),
    ]
    .iter()
    .enumerate()
    {
        image(
            &d.join(format!("stim/{ds}/dnn/session-1/{name}")),
            32,
            32,
            k as u32,
        );
    }
    let mut h: Vec<&str> = vec!["human"];
    h.extend(big);
    h.extend([
        "--name",
        "tiny_net",
        "--data",
        "stim",
        "--out",
        "csv",
        "--datasets",
        "edge,uniform-noise",
        "--json",
        "human.json",
    ]);
    ok(&eval(d, &h));
    let csv = std::fs::read_to_string(d.join("csv/uniform-noise_tiny-net_session-1.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "subj,session,trial,rt,object_response,category,condition,imagename"
    );
    assert_eq!(lines.len(), 4);
    assert!(lines[1].starts_with("tiny_net,1,1,NaN,"), "{}", lines[1]);
    assert!(lines[1].ends_with(",knife,0.03,0001_nse_s01_0.03_knife_10_n03041632_82878.png"));
    let r = json(&d.join("human.json"));
    // OOD accuracy leaves out the excluded 0.0 and 0.9 conditions: one trial counts.
    assert_eq!(r["datasets"]["uniform-noise"]["ood_trials"], 1);
    assert_eq!(r["datasets"]["uniform-noise"]["n"], 3);
    let e = r["datasets"]["edge"]["ood_accuracy"].as_f64().unwrap();
    let u = r["datasets"]["uniform-noise"]["ood_accuracy"]
        .as_f64()
        .unwrap();
    assert!((r["ood_accuracy"].as_f64().unwrap() - (e + u) / 2.0).abs() < 1e-12);
    // A missing dataset is named.
    let mut h2: Vec<&str> = vec!["human"];
    h2.extend(big);
    h2.extend([
        "--data",
        "stim",
        "--out",
        "csv",
        "--datasets",
        "sketch",
        "--json",
        "h2.json",
    ]);
    let o = eval(d, &h2);
    let s = String::from_utf8_lossy(&o.stderr);
    assert!(s.contains("missing model-vs-human dataset 'sketch'"), "{s}");

    // The tables: two OOD-style reports of two "models" side by side, best marked.
    let mut r2 = json(&d.join("ap.json"));
    r2["model"] = "other".into();
    r2["accuracy"] = 0.9.into();
    std::fs::write(d.join("ap2.json"), r2.to_string()).unwrap();
    // An mpm-attack --threats paper report (its layout) for Table 2.
    let attack = serde_json::json!({
        "clean_accuracy": 0.6, "n": 10,
        "threats": {
            "linf4": {"norm": "Linf", "eps": 4.0 / 255.0, "robust_accuracy": 0.3, "clean_accuracy": 0.6},
            "l2_2": {"norm": "L2", "eps": 2.0, "robust_accuracy": 0.2, "clean_accuracy": 0.6},
        },
    });
    std::fs::write(d.join("other_attack.json"), attack.to_string()).unwrap();
    let o = eval(
        d,
        &[
            "table",
            "--runs",
            "ap.json,ap2.json,human.json,other_attack.json",
            "--out",
            "tables",
        ],
    );
    ok(&o);
    let t4 = std::fs::read_to_string(d.join("tables/table4.md")).unwrap();
    assert!(t4.contains("| other | **90.0** |"), "{t4}");
    assert!(t4.contains("DIN (model-vs-human OOD accuracy)"), "{t4}");
    assert!(d.join("tables/table4.png").is_file() && d.join("tables/table4.csv").is_file());
    assert!(!d.join("tables/table3.md").exists());
    let t2 = std::fs::read_to_string(d.join("tables/table2.md")).unwrap();
    assert!(
        t2.contains("| Model | Clean | L2 2 | Linf 4/255 | Avg |"),
        "{t2}"
    );
    // Avg = (60 + 20 + 30) / 3; the row is named after the report file (no model field).
    assert!(
        t2.contains("| other_attack | **60.0** | **20.0** | **30.0** | **36.7** |"),
        "{t2}"
    );
}

#[test]
fn imagenet_v2_labels_are_the_folder_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 12 classes: sorted as text the folders are 0, 1, 10, 11, 2, ...; as numbers 10 is class 10.
    constant_model(d, "m12.safetensors", 12, 10);
    for c in 0..12 {
        std::fs::create_dir_all(d.join(format!("v2/{c}"))).unwrap();
    }
    image(&d.join("v2/10/a.png"), 40, 36, 1);
    image(&d.join("v2/10/b.png"), 36, 40, 2);
    image(&d.join("v2/2/c.png"), 40, 40, 3);
    let args = |json: &'static str| -> Vec<&'static str> {
        vec![
            "ood",
            "--weights",
            "m12.safetensors",
            "--arch",
            "resnet18",
            "--num-classes",
            "12",
            "--crop",
            "32",
            "--dataset",
            "imagenet-v2",
            "--data",
            "v2",
            "--json",
            json,
        ]
    };
    ok(&eval(d, &args("v2.json")));
    let r = json(&d.join("v2.json"));
    assert_eq!(r["result"]["n"], 3, "{r}");
    assert_eq!(r["column"], "IN-V2");
    // Folder "10" is label 10 (right twice), folder "2" label 2 (wrong once).
    let acc = r["accuracy"].as_f64().unwrap();
    assert!((acc - 2.0 / 3.0).abs() < 1e-9, "{r}");
    // A folder that is not a class index is named.
    std::fs::create_dir_all(d.join("v2/x")).unwrap();
    std::fs::remove_dir_all(d.join("v2/11")).unwrap();
    let o = eval(d, &[&args("v2b.json")[..], &["--no-resume"]].concat());
    let s = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && s.contains("folder 'x' is not a class index"),
        "{s}"
    );
}

#[test]
fn clean_list_scores_exactly_the_listed_images() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    constant_model(d, "m3.safetensors", 3, 1);
    for (c, class) in ["a", "b", "c"].iter().enumerate() {
        for k in 0..2 {
            image(
                &d.join(format!("val/{class}/{k}.png")),
                40,
                40,
                (3 * c + k) as u32,
            );
        }
    }
    // The balanced-10K list's format, `<class>/<file> <label>`; a comment and a blank line.
    std::fs::write(
        d.join("list.txt"),
        "# three of six\na/0.png 0\n\nb/1.png 1\nb/0.png\n",
    )
    .unwrap();
    let mut a: Vec<&str> = vec!["clean"];
    a.extend(MODEL3);
    a.extend([
        "--data",
        "val",
        "--list",
        "list.txt",
        "--crop",
        "32",
        "--json",
        "clean.json",
    ]);
    ok(&eval(d, &a));
    let r = json(&d.join("clean.json"));
    assert_eq!(r["result"]["n"], 3, "{r}");
    // The model answers class 1 ('b'): the two listed 'b' images are right.
    let acc = r["clean_accuracy"].as_f64().unwrap();
    assert!((acc - 2.0 / 3.0).abs() < 1e-9, "{r}");
    assert_eq!(answers(&d.join("clean.json.journal")).len(), 3);
    // A label that contradicts the folder, and a listed file that does not exist, are named.
    for (text, want) in [
        ("a/0.png 1\n", "label 1 but 'a' is class 0"),
        ("c/5.png 2\n", "does not exist"),
        ("d/0.png\n", "class 'd' is not a directory"),
    ] {
        std::fs::write(d.join("bad.txt"), text).unwrap();
        let mut b: Vec<&str> = a
            .iter()
            .map(|&x| match x {
                "list.txt" => "bad.txt",
                "clean.json" => "bad.json",
                x => x,
            })
            .collect();
        b.push("--no-resume");
        let o = eval(d, &b);
        let s = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && s.contains(want), "{text}: {s}");
    }
}
