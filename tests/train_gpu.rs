//! The GPU-resident training state against the CPU (needs a working CUDA device; prints
//! `skipped: ...` and passes where there is none):
//! - `Sgd::step` on GPU tensors (kernels/optim.cu) gives the CPU's bits: first-step buffer,
//!   decay group, Nesterov and plain momentum, momentum 0;
//! - `ema::update` on GPU tensors gives the CPU's bits, BN buffers included;
//! - a training run with accumulation on the GPU keeps model, EMA and momentum on the device
//!   and ends close to the CPU run (GPU convolutions round differently: not bit-exact).

use mpm::device::Device;
use mpm::nn::{Kind, ParamStore, TorchTensor};
use mpm::tensor::Tensor;
use mpm::train::optim::{Sgd, SgdConfig};
use mpm::train::{ema, run, MemorySource, RunOptions, TrainConfig};
use std::collections::BTreeMap;

fn gpu() -> Option<Device> {
    match mpm::cuda::unavailable_reason(0) {
        None => Some(Device::Cuda(0)),
        Some(why) => {
            println!("skipped: no usable GPU ({why})");
            None
        }
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(97));
            (x % 20011) as f32 / 10005.5 - 1.0
        })
        .collect()
}

fn store() -> ParamStore {
    let mut s = ParamStore::new();
    let t = |shape: Vec<usize>, seed| TorchTensor {
        data: values(shape.iter().product(), seed),
        shape,
    };
    s.insert("conv1.weight", Kind::Param, t(vec![8, 3, 3, 3], 1))
        .unwrap();
    s.insert("fc.weight", Kind::Param, t(vec![5, 7], 2))
        .unwrap();
    s.insert("fc.bias", Kind::Param, t(vec![5], 3)).unwrap();
    s.insert("bn1.weight", Kind::Param, t(vec![8], 4)).unwrap();
    s.insert("bn1.running_mean", Kind::Buffer, t(vec![8], 5))
        .unwrap();
    s.insert("bn1.running_var", Kind::Buffer, t(vec![8], 6))
        .unwrap();
    s.add_counter("bn1", 3);
    s
}

fn grads(s: &ParamStore, seed: u32) -> BTreeMap<String, Tensor> {
    s.iter()
        .filter(|(_, e)| e.kind == Kind::Param)
        .map(|(n, e)| {
            let sh = e.tensor.shape().to_vec();
            let v = values(sh.iter().product(), seed + n.len() as u32);
            (n.clone(), Tensor::from_vec(&sh, v).unwrap())
        })
        .collect()
}

fn bits(s: &ParamStore) -> Vec<(String, Vec<u32>)> {
    s.iter()
        .map(|(n, e)| {
            (
                n.clone(),
                e.tensor.data().iter().map(|v| v.to_bits()).collect(),
            )
        })
        .collect()
}

#[test]
fn gpu_sgd_and_ema_give_the_cpu_bits() {
    let Some(dev) = gpu() else { return };
    for (momentum, nesterov) in [(0.9f32, true), (0.9, false), (0.0, true)] {
        let cfg = SgdConfig {
            momentum,
            weight_decay: 0.05,
            nesterov,
        };
        let (mut cpu, mut gpu_s) = (store(), store());
        gpu_s.to_device(dev).unwrap();
        let (mut ocpu, mut ogpu) = (Sgd::new(cfg), Sgd::new(cfg));
        let (mut ecpu, mut egpu) = (store(), store());
        egpu.to_device(dev).unwrap();
        for step in 0..3u32 {
            let g = grads(&cpu, 10 + step);
            // fc.bias gets no gradient in step 1: untouched, no buffer update.
            let mut g2 = g.clone();
            if step == 1 {
                g2.remove("fc.bias");
            }
            let gd: BTreeMap<String, Tensor> = g2
                .iter()
                .map(|(n, t)| (n.clone(), t.to_device(dev).unwrap()))
                .collect();
            ocpu.step(&mut cpu, &g2, 0.1 + step as f64).unwrap();
            ogpu.step(&mut gpu_s, &gd, 0.1 + step as f64).unwrap();
            assert!(gpu_s.tensor("fc.weight").unwrap().is_cuda());
            assert_eq!(
                bits(&cpu),
                bits(&gpu_s),
                "momentum {momentum} nesterov {nesterov} step {step}"
            );
            assert_eq!(ocpu.buffers.len(), ogpu.buffers.len());
            for (n, b) in &ocpu.buffers {
                let gb = &ogpu.buffers[n];
                assert!(gb.is_cuda());
                let (x, y): (Vec<u32>, Vec<u32>) = (
                    b.data().iter().map(|v| v.to_bits()).collect(),
                    gb.data().iter().map(|v| v.to_bits()).collect(),
                );
                assert_eq!(x, y, "momentum buffer {n}");
            }
            ema::update(&mut ecpu, &cpu, 0.9998).unwrap();
            ema::update(&mut egpu, &gpu_s, 0.9998).unwrap();
            assert!(egpu.tensor("bn1.running_var").unwrap().is_cuda());
            assert_eq!(bits(&ecpu), bits(&egpu), "EMA step {step}");
            assert_eq!(ecpu.counters(), egpu.counters());
        }
    }
}

#[test]
fn gpu_run_with_accumulation_keeps_state_on_the_device_and_tracks_the_cpu() {
    let Some(_) = gpu() else { return };
    let mut cfg = TrainConfig::default();
    for (k, v) in [
        ("model", "resnet18"),
        ("width", "8"),
        ("num_classes", "3"),
        ("seg_classes", "7"),
        ("epochs", "1"),
        ("warmup_epochs", "1"),
        ("batch_size", "6"),
        ("accum_steps", "2"),
        ("input_size", "32"),
        ("model_ema_decay", "0.9"),
    ] {
        cfg.set(k, v).unwrap();
    }
    let train = MemorySource::new(3, 4, 32, 1);
    let mut out = Vec::new();
    for device in ["cpu", "cuda"] {
        let mut c = cfg.clone();
        c.set("device", device).unwrap();
        let dir =
            std::env::temp_dir().join(format!("mpm-gpu-train-{}-{device}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = run(
            &c,
            &train,
            None,
            &RunOptions {
                run_dir: dir.clone(),
                stop_after_steps: None,
                resume: None,
                progress: false,
                plots: false,
                eval_batch_size: 6,
            },
        )
        .unwrap_or_else(|e| panic!("{device}: {e}"));
        assert_eq!(s.trainer.pos.global_step, 2);
        if device == "cuda" {
            let t = &s.trainer;
            assert!(
                t.model.iter().all(|(_, e)| e.tensor.is_cuda()),
                "model left the GPU"
            );
            assert!(t
                .ema
                .as_ref()
                .unwrap()
                .iter()
                .all(|(_, e)| e.tensor.is_cuda()));
            assert!(t.opt.buffers.values().all(|b| b.is_cuda()));
        }
        out.push(s.trainer);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (a, b) = (&out[0], &out[1]);
    for (name, e) in a.model.iter() {
        let x = e.tensor.data();
        let y = b.model.tensor(name).unwrap().data();
        let num: f64 = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
        let den: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum();
        let rel = (num / den.max(1e-30)).sqrt();
        assert!(
            rel < 1e-2,
            "{name}: relative L2 difference CPU vs GPU {rel}"
        );
    }
}
