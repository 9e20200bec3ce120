//! Attack invariants on a tiny ResNet-18 (base width 4, 32x32, random init, labels = the
//! model's own predictions so every sample starts correctly classified): every returned
//! example lies in the eps-ball and the box, claims are verified, the AutoAttack sequence
//! only lowers robustness, results are seeded and independent of the batch, and the journal
//! resumes exactly.

use mpm::attack::autoattack::{AttackKind, AutoAttack, AutoAttackConfig};
use mpm::attack::model::{argmax, in_threat_model};
use mpm::attack::report::Journal;
use mpm::attack::{Classifier, Dims, EngineClassifier, Norm};
use mpm::nn::{Act, Arch, Backbone, Head, ModelSpec};
use rand::{RngExt, SeedableRng};

const DIMS: Dims = Dims { c: 3, h: 32, w: 32 };

fn tiny() -> EngineClassifier {
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
    let store = spec.init(7).unwrap();
    EngineClassifier::new(spec, store)
}

fn images(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n * DIMS.len())
        .map(|_| rng.random_range(0.0..1.0))
        .collect()
}

fn predictions(m: &mut dyn Classifier, x: &[f32]) -> Vec<usize> {
    let k = m.num_classes();
    let z = m.logits(x, DIMS).unwrap();
    z.chunks(k).map(argmax).collect()
}

fn cfg(norm: Norm, eps: f32, attacks: Vec<AttackKind>) -> AutoAttackConfig {
    let mut c = AutoAttackConfig::standard(norm, eps, 3);
    c.attacks = attacks;
    c.n_iter = 6;
    c.square_queries = 30;
    c
}

fn eps_for(norm: Norm) -> f32 {
    match norm {
        Norm::Linf => 8.0 / 255.0,
        Norm::L2 => 0.5,
        Norm::L1 => 8.0,
    }
}

#[test]
fn every_attack_returns_examples_in_the_threat_model() {
    let mut m = tiny();
    let x = images(3, 1);
    let y = predictions(&mut m, &x);
    let ids = [0u64, 1, 2];
    let d = DIMS.len();
    for norm in [Norm::Linf, Norm::L2, Norm::L1] {
        let eps = eps_for(norm);
        for kind in [
            AttackKind::ApgdCe,
            AttackKind::ApgdT,
            AttackKind::ApgdDlr,
            AttackKind::FabT,
            AttackKind::Square,
            AttackKind::Pgd,
            AttackKind::Fgsm,
        ] {
            let mut aa = AutoAttack {
                cfg: cfg(norm, eps, vec![kind]),
                model: &mut m,
            };
            let (adv, fooled) = aa.run_one(kind, &x, &y, &ids, DIMS).unwrap();
            let z = aa.model.logits(&adv, DIMS).unwrap();
            for i in 0..3 {
                let a = &adv[i * d..(i + 1) * d];
                assert!(
                    in_threat_model(norm, eps, a, &x[i * d..(i + 1) * d]),
                    "{kind:?} {norm}: sample {i} outside the ball/box: dist {}",
                    norm.dist(a, &x[i * d..(i + 1) * d])
                );
                if fooled[i] {
                    assert_ne!(
                        argmax(&z[i * 10..(i + 1) * 10]),
                        y[i],
                        "{kind:?} {norm}: claimed but not fooled"
                    );
                } else {
                    assert_eq!(
                        a,
                        &x[i * d..(i + 1) * d],
                        "{kind:?}: non-fooled sample must be returned clean"
                    );
                }
            }
        }
    }
}

#[test]
fn autoattack_sequence_only_lowers_robustness_and_is_batch_invariant() {
    let mut m = tiny();
    let n = 4;
    let x = images(n, 2);
    let mut y = predictions(&mut m, &x);
    y[3] = (y[3] + 1) % 10; // one sample misclassified from the start
    let ids: Vec<u64> = (10..10 + n as u64).collect();
    let c = cfg(Norm::Linf, 2.0 / 255.0, AttackKind::STANDARD.to_vec());
    let all = AutoAttack {
        cfg: c.clone(),
        model: &mut m,
    }
    .run_batch(&x, &y, &ids, DIMS)
    .unwrap();
    assert!(!all[3].clean_correct && !all[3].robust());
    assert!(all[3].robust_after.iter().all(|r| !r));
    let d = DIMS.len();
    for r in &all {
        assert_eq!(r.robust_after.len(), 4);
        for w in r.robust_after.windows(2) {
            assert!(
                w[1] <= w[0],
                "robust after a later attack but not an earlier one"
            );
        }
        if let (Some(_), Some(a)) = (r.fooled_by, &r.adv) {
            let i = (r.index - 10) as usize;
            assert!(in_threat_model(
                Norm::Linf,
                2.0 / 255.0,
                a,
                &x[i * d..(i + 1) * d]
            ));
        }
    }
    // One at a time: same outcome (per-sample random streams, eval-mode BN).
    for i in 0..n {
        let one = AutoAttack {
            cfg: c.clone(),
            model: &mut m,
        }
        .run_batch(&x[i * d..(i + 1) * d], &y[i..i + 1], &ids[i..i + 1], DIMS)
        .unwrap();
        assert_eq!(one[0].robust_after, all[i].robust_after, "sample {i}");
        assert_eq!(one[0].fooled_by, all[i].fooled_by, "sample {i}");
    }
    // Same seed: bitwise the same examples.
    let again = AutoAttack {
        cfg: c,
        model: &mut m,
    }
    .run_batch(&x, &y, &ids, DIMS)
    .unwrap();
    assert_eq!(again, all);
}

#[test]
fn unbounded_apgd_fools_every_sample_and_verification_rejects_bad_claims() {
    let mut m = tiny();
    let x = images(3, 3);
    let y = predictions(&mut m, &x);
    let mut aa = AutoAttack {
        cfg: cfg(Norm::Linf, 1.0, vec![AttackKind::ApgdCe, AttackKind::ApgdT]),
        model: &mut m,
    };
    let res = aa.run_batch(&x, &y, &[0, 1, 2], DIMS).unwrap();
    assert!(
        res.iter().all(|r| !r.robust()),
        "eps = 1 must fool every sample"
    );

    // The returned batch is re-evaluated whole, as the reference does: a misclassified example
    // in the ball counts even when the attack did not claim it.
    let d = DIMS.len();
    let advs: Vec<f32> = res
        .iter()
        .flat_map(|r| r.adv.clone().expect("fooled samples carry their example"))
        .collect();
    let v = aa.verify(&advs, &x, &y, &[false; 3], DIMS).unwrap();
    assert_eq!(
        v,
        vec![true; 3],
        "unclaimed but misclassified examples count"
    );

    // A claim outside the ball, and a claim that does not fool the model, are both rejected.
    aa.cfg.eps = 1.0 / 255.0;
    let mut bad = x.clone();
    bad[0] = (x[0] + 0.5).min(1.0);
    let v = aa.verify(&bad, &x, &y, &[true, true, false], DIMS).unwrap();
    assert!(!v[0], "outside the ball");
    assert!(!v[1], "clean image is not misclassified");
    assert!(!v[2], "not claimed");
    let _ = d;
}

#[test]
fn journal_resumes_and_ignores_a_torn_line() {
    let dir = std::env::temp_dir().join(format!("mpm_journal_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("r.journal");
    let mut m = tiny();
    let x = images(2, 4);
    let y = predictions(&mut m, &x);
    let c = cfg(Norm::Linf, 1.0, vec![AttackKind::ApgdCe]);
    let res = AutoAttack {
        cfg: c.clone(),
        model: &mut m,
    }
    .run_batch(&x, &y, &[5, 6], DIMS)
    .unwrap();
    let fp = serde_json::json!({"run": 1});
    let d = DIMS.len();
    {
        let (mut j, done) = Journal::open(&path, &fp, d, &c.attacks, true).unwrap();
        assert!(done.is_empty());
        j.append(&res).unwrap();
    }
    // A crash in the middle of a line.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    write!(f, "{{\"i\": 7, \"y\": 1, \"cle").unwrap();
    drop(f);
    let (_, done) = Journal::open(&path, &fp, d, &c.attacks, true).unwrap();
    assert_eq!(done.len(), 2);
    assert_eq!(done[&5], res[0]);
    assert_eq!(done[&6], res[1]);
    // Another run's journal is refused.
    let other = serde_json::json!({"run": 2});
    assert!(Journal::open(&path, &other, d, &c.attacks, true).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

/// The per-sample loops run in parallel (FAB's projections, APGD's steps): the examples
/// found must not depend on the number of threads, bit for bit.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let x = images(4, 5);
    let ids = [0u64, 1, 2, 3];
    for norm in [Norm::Linf, Norm::L2, Norm::L1] {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut m = tiny();
                let y = predictions(&mut m, &x);
                let mut aa = AutoAttack {
                    cfg: cfg(
                        norm,
                        eps_for(norm),
                        vec![AttackKind::ApgdCe, AttackKind::FabT, AttackKind::Square],
                    ),
                    model: &mut m,
                };
                [AttackKind::ApgdCe, AttackKind::FabT, AttackKind::Square].map(|kind| {
                    let (adv, fooled) = aa.run_one(kind, &x, &y, &ids, DIMS).unwrap();
                    (
                        adv.iter().map(|v| v.to_bits()).collect::<Vec<u32>>(),
                        fooled,
                    )
                })
            })
        };
        assert!(
            run(1) == run(3),
            "{norm}: results differ between 1 and 3 threads"
        );
    }
}

/// Asserts two attack outcomes (examples, fooled flags) are the same bit for bit, naming the
/// first sample that differs.
fn assert_same_outcome(what: &str, a: &(Vec<f32>, Vec<bool>), b: &(Vec<f32>, Vec<bool>)) {
    assert_eq!(a.1, b.1, "{what}: fooled flags");
    let d = DIMS.len();
    for i in 0..a.1.len() {
        let r = i * d..(i + 1) * d;
        let diff = a.0[r.clone()]
            .iter()
            .zip(&b.0[r])
            .filter(|(p, q)| p != q)
            .count();
        assert_eq!(diff, 0, "{what}: sample {i}: {diff} values differ");
    }
}

/// A linear classifier computed row by row: unlike the engine's CPU convolutions (whose
/// summation order, hence last bits, depend on the batch), its outputs do not depend on
/// what else is in the batch, so attacks on it can be compared bit for bit across batchings.
/// Counts its passes, to show that side-by-side runs make fewer of them.
struct RowLinear {
    w: Vec<f32>,
    k: usize,
    calls: usize,
}

impl RowLinear {
    fn new(k: usize, d: usize) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(77);
        let w = (0..k * d)
            .map(|_| rng.random_range(-1.0..1.0) * 0.05)
            .collect();
        RowLinear { w, k, calls: 0 }
    }
    fn row(&self, x: &[f32]) -> Vec<f32> {
        self.w
            .chunks(x.len())
            .map(|wr| wr.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }
}

impl Classifier for RowLinear {
    fn num_classes(&self) -> usize {
        self.k
    }
    fn logits(&mut self, x: &[f32], dims: Dims) -> mpm::Result<Vec<f32>> {
        self.calls += 1;
        Ok(x.chunks(dims.len()).flat_map(|r| self.row(r)).collect())
    }
    fn logits_and_grad(
        &mut self,
        x: &[f32],
        dims: Dims,
        seed: &mut dyn FnMut(&[f32]) -> Vec<f32>,
    ) -> mpm::Result<(Vec<f32>, Vec<f32>)> {
        let z = self.logits(x, dims)?;
        let dz = seed(&z);
        let d = dims.len();
        let mut g = vec![0f32; x.len()];
        for (i, gr) in g.chunks_mut(d).enumerate() {
            for c in 0..self.k {
                let s = dz[i * self.k + c];
                for (gv, wv) in gr.iter_mut().zip(&self.w[c * d..(c + 1) * d]) {
                    *gv += s * wv;
                }
            }
        }
        Ok((z, g))
    }
}

#[test]
fn side_by_side_targets_and_restarts_give_the_sequential_results() {
    use mpm::attack::apgd::{Apgd, ApgdConfig};
    use mpm::attack::fab::{FabConfig, FabT};
    let n = 6;
    let d = DIMS.len();
    let x = images(n, 9);
    let mut m = RowLinear::new(10, d);
    let y = predictions(&mut m, &x);
    let ids: Vec<u64> = (40..40 + n as u64).collect();
    for norm in [Norm::Linf, Norm::L2, Norm::L1] {
        // An eps that some samples survive through the early targets, so later runs matter.
        let eps = match norm {
            Norm::Linf => 0.2 / 255.0,
            Norm::L2 => 0.04,
            Norm::L1 => 0.5,
        };
        let mut outcomes = Vec::new();
        for pass_batch in [0, 1000] {
            m.calls = 0;
            let mut apgd_t = ApgdConfig::standard_t(norm, eps, 5);
            apgd_t.n_iter = 5;
            apgd_t.n_restarts = 2;
            apgd_t.pass_batch = pass_batch;
            let a = Apgd {
                cfg: apgd_t,
                model: &mut m,
                stream: 3,
            }
            .perturb(&x, &y, &ids, DIMS)
            .unwrap();
            let mut apgd_ce = ApgdConfig::standard_ce(norm, eps, 5);
            apgd_ce.n_iter = 5;
            apgd_ce.n_restarts = 3;
            apgd_ce.pass_batch = pass_batch;
            let c = Apgd {
                cfg: apgd_ce,
                model: &mut m,
                stream: 1,
            }
            .perturb(&x, &y, &ids, DIMS)
            .unwrap();
            let mut fab = FabConfig::standard(norm, eps, 5);
            fab.n_iter = 4;
            fab.n_restarts = 2;
            fab.pass_batch = pass_batch;
            let f = FabT {
                cfg: fab,
                model: &mut m,
                stream: 4,
            }
            .perturb(&x, &y, &ids, DIMS)
            .unwrap();
            outcomes.push((a, c, f, m.calls));
        }
        let (seq, par) = (&outcomes[0], &outcomes[1]);
        for (what, a, b) in [
            ("apgd-t", &seq.0, &par.0),
            ("apgd-ce restarts", &seq.1, &par.1),
            ("fab-t", &seq.2, &par.2),
        ] {
            assert_same_outcome(&format!("{norm}: {what}"), a, b);
            let fooled = a.1.iter().filter(|f| **f).count();
            eprintln!("{norm}: {what} fooled {fooled}/{n}");
        }
        eprintln!(
            "{norm}: model calls {} one run at a time, {} side by side",
            seq.3, par.3
        );
        assert!(
            par.3 * 3 < seq.3,
            "{norm}: side by side should make far fewer passes ({} vs {})",
            par.3,
            seq.3
        );
    }
}

#[test]
fn square_linf_with_resident_iterates_gives_the_host_loop_results() {
    use mpm::attack::square::{Square, SquareConfig};
    let mut m = tiny();
    let n = 4;
    let x = images(n, 12);
    let y = predictions(&mut m, &x);
    let ids: Vec<u64> = (70..70 + n as u64).collect();
    let mut out = Vec::new();
    for resident in [false, true] {
        let mut cfg = SquareConfig::standard(Norm::Linf, 2.0 / 255.0, 2);
        cfg.n_queries = 150;
        cfg.resident = resident;
        out.push(
            Square {
                cfg,
                model: &mut m,
                stream: 5,
            }
            .perturb(&x, &y, &ids, DIMS)
            .unwrap(),
        );
    }
    assert_same_outcome("square l-inf", &out[0], &out[1]);
    // Not vacuous: some samples are fooled part-way (their examples are the end of a chain
    // of accepted queries), others survive all 150 queries.
    let fooled = out[1].1.iter().filter(|f| **f).count();
    assert!(0 < fooled && fooled < n, "fooled {fooled}/{n}");
}

/// l2 and l1: the candidates made from the iterates in the model's input tensors
/// (`resident::square_l2l1_candidates`, NHWC) are the host loop's (NCHW) bit for bit on the
/// CPU. 32 x 32 images and 150 queries: window sides 29, 21, 15 and 11, windows at the border
/// and overlapping ones among the draws.
#[test]
fn square_l2_l1_with_resident_iterates_give_the_host_loop_results() {
    use mpm::attack::square::{Square, SquareConfig};
    let mut m = tiny();
    let n = 4;
    let x = images(n, 14);
    let y = predictions(&mut m, &x);
    let ids: Vec<u64> = (80..80 + n as u64).collect();
    for (norm, eps) in [(Norm::L2, 1.0), (Norm::L1, 2.0)] {
        let mut out = Vec::new();
        for resident in [false, true] {
            let mut cfg = SquareConfig::standard(norm, eps, 2);
            cfg.n_queries = 150;
            cfg.resident = resident;
            out.push(
                Square {
                    cfg,
                    model: &mut m,
                    stream: 5,
                }
                .perturb(&x, &y, &ids, DIMS)
                .unwrap(),
            );
        }
        assert_same_outcome(&format!("square {norm}"), &out[0], &out[1]);
        let fooled = out[1].1.iter().filter(|f| **f).count();
        eprintln!("square {norm}: fooled {fooled}/{n}");
        assert!(0 < fooled && fooled < n, "{norm}: fooled {fooled}/{n}");
    }
}

#[test]
fn apgd_with_resident_iterates_gives_the_host_loop_results() {
    use mpm::attack::apgd::{Apgd, ApgdConfig};
    let mut m = tiny();
    let n = 5;
    let x = images(n, 13);
    let y = predictions(&mut m, &x);
    let ids: Vec<u64> = (90..90 + n as u64).collect();
    for (norm, eps, targeted) in [
        (Norm::Linf, 1.0 / 255.0, false),
        (Norm::Linf, 1.0 / 255.0, true),
        (Norm::L2, 0.1, false),
        (Norm::L2, 0.1, true),
        (Norm::L1, 1.0, false),
        (Norm::L1, 1.0, true),
    ] {
        let mut out = Vec::new();
        for resident in [false, true] {
            let mut cfg = if targeted {
                ApgdConfig::standard_t(norm, eps, 4)
            } else {
                ApgdConfig::standard_ce(norm, eps, 4)
            };
            cfg.n_iter = 30; // checkpoints at iterations 6, 11, 15, ...: resets happen
            cfg.n_target_classes = 3;
            cfg.resident = resident;
            out.push(
                Apgd {
                    cfg,
                    model: &mut m,
                    stream: 1,
                }
                .perturb(&x, &y, &ids, DIMS)
                .unwrap(),
            );
        }
        assert_same_outcome(
            &format!("apgd {norm}, targeted {targeted}"),
            &out[0],
            &out[1],
        );
        let fooled = out[1].1.iter().filter(|f| **f).count();
        eprintln!("{norm} targeted {targeted}: fooled {fooled}/{n}");
        assert!(
            0 < fooled && fooled < n,
            "targeted {targeted}: fooled {fooled}/{n}"
        );
    }
}

#[test]
fn fab_with_resident_iterates_gives_the_host_loop_results() {
    use mpm::attack::fab::{FabConfig, FabT};
    let mut m = tiny();
    let n = 5;
    let x = images(n, 14);
    let y = predictions(&mut m, &x);
    let ids: Vec<u64> = (110..110 + n as u64).collect();
    for (norm, eps) in [(Norm::Linf, 0.5 / 255.0), (Norm::L2, 0.05), (Norm::L1, 2.0)] {
        let mut out = Vec::new();
        for resident in [false, true] {
            let mut cfg = FabConfig::standard(norm, eps, 6);
            cfg.n_iter = 12;
            cfg.n_target_classes = 3;
            cfg.n_restarts = 2; // random starts too
            cfg.resident = resident;
            out.push(
                FabT {
                    cfg,
                    model: &mut m,
                    stream: 4,
                }
                .perturb(&x, &y, &ids, DIMS)
                .unwrap(),
            );
        }
        assert_same_outcome(&format!("fab-t {norm}"), &out[0], &out[1]);
        let fooled = out[1].1.iter().filter(|f| **f).count();
        eprintln!("fab-t {norm}: fooled {fooled}/{n}");
        assert!(
            0 < fooled && fooled < n,
            "fab-t {norm}: fooled {fooled}/{n}"
        );
    }
}

/// FAB's resident step on the CPU with a zero-gradient row and a boundary out of reach: finite
/// values in the box (the GPU kernel is compared with these in `cuda_parity::fab_row_kernels`).
#[test]
fn fab_step_twin_handles_zero_gradients_and_unreachable_boundaries() {
    use mpm::attack::fab::FabConfig;
    use mpm::attack::resident::fab_step;
    let shape = [3, 5, 4, 3];
    let d = 60;
    let grid = |k: usize| -> Vec<f32> {
        (0..3 * d)
            .map(|i| ((i * k + 7) % 97) as f32 / 96.0)
            .collect()
    };
    let x1 = mpm::tensor::Tensor::from_vec(&shape, grid(13)).unwrap();
    let im2 = mpm::tensor::Tensor::from_vec(&shape, grid(29)).unwrap();
    let mut wv: Vec<f32> = grid(31).iter().map(|v| v - 0.5).collect();
    wv[..d].iter_mut().for_each(|v| *v = 0.0);
    let w = mpm::tensor::Tensor::from_vec(&shape, wv).unwrap();
    for norm in [Norm::Linf, Norm::L2, Norm::L1] {
        let cfg = FabConfig::standard(norm, 0.1, 0);
        let out = fab_step(&x1, &im2, &w, &[0.5, -0.8, 1e6], &cfg).unwrap();
        assert!(
            out.data()
                .iter()
                .all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
            "{norm}: {:?}",
            &out.data()[..8]
        );
        assert_ne!(out.data(), x1.data(), "{norm}: the step moved nothing");
    }
}
