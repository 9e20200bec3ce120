//! Ghost batch norm (`bn_group`) against the run it stands for: `G` ordinary single-group
//! trainers side by side, driven as DDP drives its ranks (each rank's PGD with its own running
//! statistics and its own random start, best iterate per rank batch; gradients pre-divided by
//! the world size and summed rank after rank; the same SGD and EMA step everywhere; with
//! `broadcast_buffers` rank 0's buffers copied to every rank before each step; timm
//! `distribute_bn` averaging of model and EMA running statistics after each epoch).
//! - CPU: weights, EMA, every running-statistics chain and the BN counters agree bit for bit
//!   after every step of two epochs, with and without `broadcast_buffers` (both modes run the
//!   same kernels on the same images in the same order; the reference adds the scaled
//!   gradients in the same order as the trainer).
//! - GPU twin (prints `skipped` without one): the same comparison within a tolerance, since the
//!   reference sums the gradients on the host and the trainer on the device.
//! - `bn_group = batch_size` trains the same model as `bn_group = 0`, bit for bit.
//! - a run with groups stopped mid-epoch resumes exactly (every chain is in the checkpoint, the
//!   checkpoint's model holds their average); a changed group count says it is not exact.
//! - a `bn_group` that does not divide the batch is an error naming the key.

use mpm::device::Device;
use mpm::nn::{Kind, ParamStore};
use mpm::tensor::Tensor;
use mpm::train::ghost_bn::{self, Chain};
use mpm::train::sampler::{GroupLayout, GroupedSource};
use mpm::train::trainer::{Gradients, Trainer};
use mpm::train::{checkpoint, run, Batch, MemorySource, RunOptions, TrainConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;
use common::tiny_mpm_config;

fn tiny(batch: usize, bn_group: usize, broadcast: bool) -> TrainConfig {
    let mut c = tiny_mpm_config(&[
        ("eval_every", "1"),
        ("checkpoint_every", "0"),
        ("seed", "3"),
    ]);
    c.batch_size = batch;
    c.bn_group = bn_group;
    c.broadcast_buffers = broadcast;
    c
}

/// The reference: one ordinary trainer per rank (batch `b`, no groups), started from the
/// ghost trainer's weights, with rank `g`'s PGD generator (`ghost_bn::group_seed`).
struct Ddp {
    ranks: Vec<Trainer>,
    broadcast: bool,
}

impl Ddp {
    fn new(ghost: &Trainer, device: Device) -> Ddp {
        let g = ghost.cfg.bn_groups(1);
        let b = ghost.cfg.batch_size / g;
        let ranks = (0..g)
            .map(|r| {
                let mut cfg = ghost.cfg.clone();
                cfg.batch_size = b;
                cfg.bn_group = 0;
                cfg.seed = ghost_bn::group_seed(ghost.cfg.seed, r);
                // The lr rule uses the global batch: keep the ghost run's.
                cfg.lr = ghost.cfg.peak_lr();
                let mut t = Trainer::new(cfg, ghost.updates_per_epoch).unwrap();
                t.model = ghost.model.clone();
                t.ema = ghost.ema.clone();
                t.to_device(device).unwrap();
                t
            })
            .collect();
        Ddp {
            ranks,
            broadcast: ghost.cfg.broadcast_buffers,
        }
    }

    /// One DDP step; `batches[r]` is rank `r`'s batch.
    fn step(&mut self, batches: &[Batch]) {
        if self.broadcast {
            let c0 = ghost_bn::take_chain(&self.ranks[0].model);
            for t in &mut self.ranks[1..] {
                ghost_bn::put_chain(&mut t.model, &c0).unwrap();
            }
        }
        let w = self.ranks.len();
        let inv = 1.0 / w as f32;
        let mut sum: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        let (mut loss, mut ce, mut correct) = (0f64, 0f64, 0usize);
        for (t, b) in self.ranks.iter_mut().zip(batches) {
            let g = t.gradients(b).unwrap();
            loss += g.loss as f64;
            ce += g.ce as f64;
            correct += g.correct;
            for (n, v) in g.grads {
                let v: Vec<f32> = v.data().iter().map(|x| x * inv).collect();
                match sum.get_mut(&n) {
                    None => {
                        sum.insert(n, v);
                    }
                    Some(acc) => acc.iter_mut().zip(&v).for_each(|(a, x)| *a += *x),
                }
            }
        }
        let shapes: BTreeMap<String, Vec<usize>> = self.ranks[0]
            .model
            .iter()
            .map(|(n, e)| (n.clone(), e.tensor.shape().to_vec()))
            .collect();
        let grads: BTreeMap<String, Tensor> = sum
            .into_iter()
            .map(|(n, v)| {
                let t = Tensor::from_vec(&shapes[&n], v).unwrap();
                (n, t)
            })
            .collect();
        let g = Gradients {
            loss: (loss / w as f64) as f32,
            ce: (ce / w as f64) as f32,
            correct,
            grads,
        };
        let n = batches[0].len();
        for t in &mut self.ranks {
            t.apply_update(&g, n).unwrap();
        }
        if self.ranks[0].pos.step == self.ranks[0].updates_per_epoch {
            self.distribute_bn();
        }
    }

    /// timm `distribute_bn(reduce=True)` on the model and on the EMA: all-reduce sum, then
    /// divide by the world size.
    fn distribute_bn(&mut self) {
        let w = self.ranks.len() as f32;
        for which in 0..2 {
            let chains: Vec<Chain> = self
                .ranks
                .iter()
                .map(|t| {
                    ghost_bn::take_chain(if which == 0 {
                        &t.model
                    } else {
                        t.ema.as_ref().unwrap()
                    })
                })
                .collect();
            let mut avg = Chain::new();
            for (n, t0) in &chains[0] {
                let mut acc = t0.data().to_vec();
                for c in &chains[1..] {
                    acc.iter_mut().zip(c[n].data()).for_each(|(a, x)| *a += *x);
                }
                let v: Vec<f32> = acc.iter().map(|x| x / w).collect();
                let t = Tensor::from_vec(t0.shape(), v).unwrap();
                avg.insert(n.clone(), t.to_device(t0.device()).unwrap());
            }
            for t in &mut self.ranks {
                let store = if which == 0 {
                    &mut t.model
                } else {
                    t.ema.as_mut().unwrap()
                };
                ghost_bn::put_chain(store, &avg).unwrap();
            }
        }
    }
}

/// `a` and `b` agree: bit for bit when `exact`, else within 1e-4 + 1e-3 |b|.
fn same(what: &str, a: &Tensor, b: &Tensor, exact: bool) {
    assert_eq!(a.shape(), b.shape(), "{what}");
    for (i, (x, y)) in a.data().iter().zip(b.data()).enumerate() {
        let ok = if exact {
            x.to_bits() == y.to_bits()
        } else {
            (x - y).abs() <= 1e-4 + 1e-3 * y.abs()
        };
        assert!(ok, "{what}[{i}]: ghost {x}, reference {y}");
    }
}

fn same_params(what: &str, a: &ParamStore, b: &ParamStore, exact: bool) {
    for (n, e) in a.iter() {
        if e.kind == Kind::Param {
            same(
                &format!("{what} {n}"),
                &e.tensor,
                b.tensor(n).unwrap(),
                exact,
            );
        }
    }
    assert_eq!(a.counters(), b.counters(), "{what} BN counters");
}

fn same_chain(what: &str, a: &Chain, b: &Chain, exact: bool) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (n, t) in a {
        same(&format!("{what} {n}"), t, &b[n], exact);
    }
}

fn chains_differ(a: &Chain, b: &Chain) -> bool {
    a.iter().any(|(n, t)| t.data() != b[n].data())
}

/// Trains the ghost trainer and the reference side by side for two epochs and compares them
/// after every step. Returns the ghost trainer.
fn side_by_side(device: Device, broadcast: bool) -> Trainer {
    let exact = device == Device::Cpu;
    let (g, b) = (3, 2);
    let src = MemorySource::new(3, 4, 32, 11);
    let layout = GroupLayout {
        groups: g,
        per_group: b,
    };
    let steps = layout.steps(12);
    assert_eq!(steps, 2);
    let mut ghost = Trainer::new(tiny(g * b, b, broadcast), steps).unwrap();
    ghost.to_device(device).unwrap();
    let mut ddp = Ddp::new(&ghost, device);
    let all = GroupedSource {
        inner: &src,
        layout,
        first: 0,
        local: g,
    };
    for epoch in 0..2 {
        for k in 0..steps {
            let batch = all.step_batch(epoch, k).unwrap();
            let per_rank: Vec<Batch> = (0..g)
                .map(|r| {
                    GroupedSource {
                        inner: &src,
                        layout,
                        first: r,
                        local: 1,
                    }
                    .step_batch(epoch, k)
                    .unwrap()
                })
                .collect();
            let st = ghost.step(&batch).unwrap();
            ddp.step(&per_rank);
            let at = format!("epoch {epoch} step {k} (broadcast_buffers {broadcast})");
            assert_eq!(st.n, g * b);
            same_params(
                &format!("{at}: model"),
                &ghost.model,
                &ddp.ranks[0].model,
                exact,
            );
            same_params(
                &format!("{at}: EMA"),
                ghost.ema.as_ref().unwrap(),
                ddp.ranks[0].ema.as_ref().unwrap(),
                exact,
            );
            let gr = ghost.groups.as_ref().unwrap();
            for (r, t) in ddp.ranks.iter().enumerate() {
                same_chain(
                    &format!("{at}: model chain {r}"),
                    &gr.model[r],
                    &ghost_bn::take_chain(&t.model),
                    exact,
                );
                same_chain(
                    &format!("{at}: EMA chain {r}"),
                    &gr.ema[r],
                    &ghost_bn::take_chain(t.ema.as_ref().unwrap()),
                    exact,
                );
            }
            if k + 1 < steps {
                // Mid-epoch the groups' chains really are different (else this test would
                // prove nothing about them).
                assert!(chains_differ(&gr.ema[0], &gr.ema[1]), "{at}: EMA chains");
                assert!(
                    chains_differ(&gr.model[0], &gr.model[2]),
                    "{at}: model chains"
                );
            } else {
                // After the epoch's last step: one averaged chain everywhere, in the stores too.
                assert!(gr.model.iter().all(|c| !chains_differ(c, &gr.model[0])));
                assert!(gr.ema.iter().all(|c| !chains_differ(c, &gr.ema[0])));
                same_chain(
                    &format!("{at}: model store"),
                    &ghost_bn::take_chain(&ghost.model),
                    &gr.model[1],
                    true,
                );
                same_chain(
                    &format!("{at}: EMA store"),
                    &ghost_bn::take_chain(ghost.ema.as_ref().unwrap()),
                    &gr.ema[2],
                    true,
                );
            }
        }
        ghost.next_epoch();
        for t in &mut ddp.ranks {
            t.next_epoch();
        }
    }
    ghost
}

#[test]
fn groups_equal_separate_single_group_models_side_by_side_cpu() {
    let a = side_by_side(Device::Cpu, true);
    let b = side_by_side(Device::Cpu, false);
    // The two readings of DDP train different models (broadcast_buffers changes which
    // running statistics the other groups attack and update with).
    let w = "segmenter.layer1.0.conv1.weight";
    assert_ne!(
        a.model.tensor(w).unwrap().data(),
        b.model.tensor(w).unwrap().data()
    );
}

#[test]
fn groups_equal_separate_single_group_models_side_by_side_gpu() {
    match mpm::cuda::unavailable_reason(0) {
        Some(why) => println!("skipped: no usable GPU ({why})"),
        None => {
            side_by_side(Device::Cuda(0), true);
            side_by_side(Device::Cuda(0), false);
        }
    }
}

fn tmp(name: &str) -> PathBuf {
    common::tmp("ghost", name)
}

fn opts(dir: &Path, stop: Option<u64>, resume: Option<PathBuf>) -> RunOptions {
    RunOptions {
        run_dir: dir.to_path_buf(),
        stop_after_steps: stop,
        resume,
        progress: false,
        plots: false,
        eval_batch_size: 6,
    }
}

fn bits(t: &Trainer) -> Vec<(String, Vec<u32>)> {
    let mut v = Vec::new();
    let stores = [("model", Some(&t.model)), ("ema", t.ema.as_ref())];
    for (which, s) in stores {
        for (n, e) in s.unwrap().iter() {
            v.push((
                format!("{which}.{n}"),
                e.tensor.data().iter().map(|x| x.to_bits()).collect(),
            ));
        }
    }
    for (n, b) in &t.opt.buffers {
        v.push((
            format!("momentum.{n}"),
            b.data().iter().map(|x| x.to_bits()).collect(),
        ));
    }
    if let Some(g) = &t.groups {
        for (i, c) in g.model.iter().chain(g.ema.iter()).enumerate() {
            for (n, x) in c {
                v.push((
                    format!("chain{i}.{n}"),
                    x.data().iter().map(|x| x.to_bits()).collect(),
                ));
            }
        }
    }
    v
}

fn metric_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.retain(|k, _| !k.contains("per_s") && k != "data_wait_fraction");
            }
            v
        })
        .collect()
}

#[test]
fn one_group_of_the_whole_batch_equals_no_groups_bit_for_bit() {
    let train = MemorySource::new(3, 4, 32, 1);
    let val = MemorySource::new(3, 2, 32, 2);
    let a_dir = tmp("whole");
    let a = run(
        &tiny(6, 0, true),
        &train,
        Some(&val),
        &opts(&a_dir, None, None),
    )
    .unwrap();
    let b_dir = tmp("one-group");
    let b = run(
        &tiny(6, 6, true),
        &train,
        Some(&val),
        &opts(&b_dir, None, None),
    )
    .unwrap();
    assert!(a.finished && b.finished);
    assert_eq!(a.trainer.pos.global_step, 4);
    assert!(b.trainer.groups.is_none(), "one group needs no chains");
    assert_eq!(bits(&a.trainer), bits(&b.trainer));
    assert_eq!(metric_lines(&a_dir), metric_lines(&b_dir));
    let _ = std::fs::remove_dir_all(&a_dir);
    let _ = std::fs::remove_dir_all(&b_dir);
}

#[test]
fn a_run_with_groups_resumes_exactly_from_a_mid_epoch_checkpoint() {
    // 12 images, 3 groups of 2: 2 steps per epoch; stop after step 1 (mid-epoch, chains
    // differ), resume, and compare with the uninterrupted run.
    let cfg = tiny(6, 2, false);
    let train = MemorySource::new(3, 4, 32, 1);
    let val = MemorySource::new(3, 2, 32, 2);
    let a_dir = tmp("a");
    let a = run(&cfg, &train, Some(&val), &opts(&a_dir, None, None)).unwrap();
    assert!(a.finished);
    assert_eq!(a.trainer.pos.global_step, 4);
    let b_dir = tmp("b");
    let b = run(&cfg, &train, Some(&val), &opts(&b_dir, Some(1), None)).unwrap();
    assert!(!b.finished);
    let ck = b_dir.join("checkpoints/last.safetensors");
    // The checkpoint holds every chain, and its model holds their average.
    let (tensors, _) = mpm::io::load_safetensors(&ck).unwrap();
    let name = "segmenter.bn1.running_mean";
    let chains: Vec<&[f32]> = (0..3)
        .map(|g| {
            tensors[&format!("bnchain.model.{g}.{name}")]
                .as_f32()
                .unwrap()
        })
        .collect();
    assert_ne!(chains[0], chains[1], "mid-epoch chains differ");
    let avg: Vec<f32> = (0..chains[0].len())
        .map(|i| (chains[0][i] + chains[1][i] + chains[2][i]) / 3.0)
        .collect();
    assert_eq!(
        tensors[&format!("model.{name}")].as_f32().unwrap(),
        &avg[..]
    );
    assert!(tensors.contains_key(&format!("bnchain.ema.2.{name}")));
    let mid = b_dir.join("mid-epoch.safetensors");
    std::fs::copy(&ck, &mid).unwrap();
    drop(b);
    let b = run(
        &cfg,
        &train,
        Some(&val),
        &opts(&b_dir, None, Some(b_dir.clone())),
    )
    .unwrap();
    assert!(b.finished);
    assert_eq!(bits(&a.trainer), bits(&b.trainer));
    let log = std::fs::read_to_string(b_dir.join("train.log")).unwrap();
    assert!(!log.contains("not bit-exact"), "{log}");

    // Another bn_group is another model: refused, naming the key.
    let mut other = cfg.clone();
    other.bn_group = 3;
    let e = checkpoint::load(&mid, Some(&other))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--bn-group"), "{e}");
    // A changed number of groups (another world size with bn_group = 0) restarts the chains
    // from their average and says the run is not exact.
    let mut t = checkpoint::load(&mid, None).unwrap();
    let note = t.set_group_layout(2, 0, 2).unwrap().unwrap();
    assert!(
        note.contains("not bit-exact") && note.contains("3 to 2"),
        "{note}"
    );
    let gr = t.groups.as_ref().unwrap();
    assert_eq!(gr.local(), 2);
    assert_eq!(gr.model[1][name].data(), &avg[..]);
    let _ = std::fs::remove_dir_all(&a_dir);
    let _ = std::fs::remove_dir_all(&b_dir);
}

#[test]
fn bn_group_must_divide_the_batch_and_excludes_accumulation() {
    let c = tiny(6, 4, true);
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("--bn-group") && e.contains('4') && e.contains('6'),
        "{e}"
    );
    let mut c = tiny(8, 4, true);
    c.validate().unwrap();
    c.accum_steps = 2;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("--bn-group") && e.contains("accum"), "{e}");
    // bn_group = batch: one group; accumulation then keeps its meaning.
    let mut c = tiny(8, 8, true);
    c.accum_steps = 2;
    c.validate().unwrap();
}
