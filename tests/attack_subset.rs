//! Class-subset and super-category evaluation (issue 21 item 3) end to end on a toy model:
//! `mpm-attack --class-subset / --super-classes` attack the masked model (the adversarial
//! examples fool it on the subset's logits, no claim is rejected, a sample whose unmasked
//! argmax lies outside the subset still counts as correct), and `mpm-eval clean` scores the
//! regrouped logits.

use mpm::attack::{Classifier, Dims, EngineClassifier};
use mpm::io::{self, HostTensor, NamedTensors};
use rand::{RngExt, SeedableRng};
use std::process::Command;

mod common;
use common::{classifier_spec as spec, image, journal_answers as answers, json, ok, save_model};

const DIMS: Dims = Dims { c: 3, h: 32, w: 32 };

/// Position of the largest of `cols` in row `z` (first on ties).
fn best_of(z: &[f32], cols: &[usize]) -> usize {
    let mut b = 0;
    for (j, &c) in cols.iter().enumerate() {
        if z[c] > z[cols[b]] {
            b = j;
        }
    }
    b
}

#[test]
fn attacks_run_on_the_masked_model() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sp = spec(10, 4);
    save_model(&d.join("w.safetensors"), &sp, 5);
    let n = 6;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    let x: Vec<f32> = (0..n * DIMS.len())
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let mut model = EngineClassifier::new(sp, sp.init(5).unwrap());
    let z = model.logits(&x, DIMS).unwrap();
    // The subset leaves out image 0's (unmasked) prediction.
    let top0 = mpm::attack::model::argmax(&z[..10]);
    let subset: Vec<usize> = (0..10).filter(|&c| c != top0).take(4).collect();
    let supers = ["A", "A", "B", "B"];
    // Labels: the prediction among the subset's classes (model class indices).
    let y: Vec<i64> = z
        .chunks(10)
        .map(|r| subset[best_of(r, &subset)] as i64)
        .collect();
    let mut t = NamedTensors::new();
    t.insert("input".into(), HostTensor::f32(vec![n, 3, 32, 32], x));
    t.insert("target".into(), HostTensor::i64(vec![n], y.clone()));
    io::save_safetensors(&d.join("x.safetensors"), &t, &io::no_metadata()).unwrap();
    let list: String = subset.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(d.join("subset.txt"), list).unwrap();
    let sup: String = subset
        .iter()
        .zip(supers)
        .map(|(c, s)| format!("{c} {s}\n"))
        .collect();
    std::fs::write(d.join("supers.txt"), format!("# toy\n{sup}")).unwrap();

    let attack = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "--weights",
            "w.safetensors",
            "--arch",
            "resnet18",
            "--num-classes",
            "10",
            "--data",
            "x.safetensors",
            "--version",
            "custom",
            "--attacks",
            "apgd-ce,apgd-t,fab-t,square",
            "--n-iter",
            "5",
            "--square-queries",
            "20",
            "--norm",
            "Linf",
            "--eps",
            "0.0627451",
            "--device",
            "cpu",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        Command::new(env!("CARGO_BIN_EXE_mpm-attack"))
            .current_dir(d)
            .args(a)
            .output()
            .unwrap()
    };
    // Without the subset, image 0 is misclassified (its prediction is outside the subset).
    ok(attack(&["--report", "plain.json"]));
    assert_eq!(json(&d.join("plain.json"))["clean"][0], false);

    for (flag, file, groups) in [
        (
            "--class-subset",
            "subset.txt",
            vec![vec![0], vec![1], vec![2], vec![3]],
        ),
        (
            "--super-classes",
            "supers.txt",
            vec![vec![0, 1], vec![2, 3]],
        ),
    ] {
        let rep_path = d.join(format!("{file}.json"));
        let adv_path = d.join(format!("{file}.adv.safetensors"));
        ok(attack(&[
            flag,
            file,
            "--report",
            rep_path.to_str().unwrap(),
            "--adv-out",
            adv_path.to_str().unwrap(),
        ]));
        let rep = json(&rep_path);
        assert_eq!(rep["n"], 6, "{flag}");
        assert_eq!(
            rep["clean_accuracy"], 1.0,
            "{flag}: masked before the argmax"
        );
        assert_eq!(
            rep["rejected_claims"], 0,
            "{flag}: every claim holds on the masked model"
        );
        assert_eq!(rep["classes"]["flag"], flag);
        let robust: Vec<bool> = rep["robust"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect();
        assert!(
            robust.iter().any(|r| !r),
            "{flag}: eps large enough to fool some"
        );
        let (adv, _) = io::load_safetensors(&adv_path).unwrap();
        let HostTensor {
            data: io::HostData::F32(a),
            ..
        } = &adv["adv"]
        else {
            panic!("adv is not f32")
        };
        let za = model.logits(a, DIMS).unwrap();
        let group_of = |pos: usize| groups.iter().position(|g| g.contains(&pos)).unwrap();
        for (i, r) in za.chunks(10).enumerate() {
            // The masked prediction on the adversarial example: a subset class, in the
            // true group exactly when the sample is robust.
            let pred = group_of(best_of(r, &subset));
            let truth = group_of(subset.iter().position(|&c| c as i64 == y[i]).unwrap());
            assert_eq!(pred == truth, robust[i], "{flag} sample {i}");
        }
        let names: Vec<&String> = rep["per_class"].as_object().unwrap().keys().collect();
        if flag == "--super-classes" {
            assert!(names.iter().all(|k| *k == "A" || *k == "B"), "{names:?}");
        }
    }
}

#[test]
fn mpm_eval_scores_the_regrouped_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    save_model(&d.join("m3.safetensors"), &spec(3, 8), 4);
    for (c, class) in ["a", "b", "c"].iter().enumerate() {
        for k in 0..3 {
            image(&d.join(format!("val/{class}/{k}.png")), (3 * c + k) as u32);
        }
    }
    std::fs::write(d.join("sup.txt"), "0 x\n1 x\n2 y\n").unwrap();
    std::fs::write(d.join("sub.txt"), "0\n2\n").unwrap();
    let eval = |extra: &[&str]| {
        let mut a = vec![
            "clean",
            "--weights",
            "m3.safetensors",
            "--arch",
            "resnet18",
            "--num-classes",
            "3",
            "--data",
            "val",
            "--crop",
            "32",
            "--device",
            "cpu",
        ];
        a.extend(extra);
        Command::new(env!("CARGO_BIN_EXE_mpm-eval"))
            .current_dir(d)
            .args(a)
            .output()
            .unwrap()
    };
    ok(eval(&["--json", "plain.json"]));
    ok(eval(&["--super-classes", "sup.txt", "--json", "sup.json"]));
    ok(eval(&["--class-subset", "sub.txt", "--json", "sub.json"]));
    let plain = answers(&d.join("plain.json.journal"));
    assert_eq!(plain.len(), 9);
    // Super-categories over all three classes: the group of the top-1 class.
    let group = |c: u64| if c < 2 { 0 } else { 1 };
    let sup = answers(&d.join("sup.json.journal"));
    assert_eq!(
        sup,
        plain
            .iter()
            .map(|&(i, a)| (i, group(a)))
            .collect::<Vec<_>>()
    );
    let want = plain
        .iter()
        .filter(|&&(i, a)| group(a) == group(i / 3))
        .count();
    let r = json(&d.join("sup.json"));
    assert_eq!(r["result"]["correct"], want);
    assert_eq!(r["classes"]["groups"], 2);
    // Subset {0, 2}: only the images of a and c, answers are positions in the subset.
    let sub = answers(&d.join("sub.json.journal"));
    assert_eq!(sub.len(), 6);
    assert!(sub.iter().all(|&(_, a)| a < 2));
    // Index i of the mapped set: a's images then c's; where the unmasked top-1 is a subset
    // class, the masked answer is that class.
    for (k, &(i, a)) in sub.iter().enumerate() {
        let orig = if k < 3 { k as u64 } else { 6 + (k as u64 - 3) };
        assert_eq!(i, k as u64);
        let p = plain[orig as usize].1;
        if p != 1 {
            assert_eq!(a, if p == 0 { 0 } else { 1 }, "image {orig}");
        }
    }
    assert_eq!(json(&d.join("sub.json"))["result"]["n"], 6);
}
