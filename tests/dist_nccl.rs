//! NCCL at world size 1 on one GPU (issue #19, the one-GPU check of scripts/device-check.sh):
//! the data-parallel step through NCCL (`Dist::step`: bucketed `ncclAllReduce` of the
//! gradients on the device, metric sums) trains the same model as the plain step. With one
//! rank the all-reduce is a copy, so the weights must agree bit for bit. Without a GPU or
//! without NCCL it prints `skipped` and why (and that reason must say what to install).

use mpm::device::Device;
use mpm::dist::{nccl, Dist, RankEnv};
use mpm::train::{BatchSource, MemorySource, TrainConfig, Trainer};

fn tiny() -> TrainConfig {
    let mut c = TrainConfig::default();
    for (k, v) in [
        ("model", "resnet18"),
        ("width", "8"),
        ("num_classes", "3"),
        ("seg_classes", "7"),
        ("partmodel_type", "mpm"),
        ("input_size", "32"),
        ("batch_size", "4"),
        ("seed", "4"),
    ] {
        c.set(k, v).unwrap();
    }
    c
}

#[test]
fn nccl_world_size_1_trains_the_plain_model_on_one_gpu() {
    if let Some(why) = mpm::cuda::unavailable_reason(0) {
        println!("skipped: no usable GPU ({why})");
        return;
    }
    if let Some(why) = nccl::unavailable_reason() {
        assert!(why.contains("libnccl"), "{why}");
        println!("skipped: {why}");
        return;
    }
    let src = MemorySource::new(3, 4, 32, 1);
    let mut plain = Trainer::new(tiny(), 100).unwrap();
    plain.to_device(Device::Cuda(0)).unwrap();
    let mut ranked = Trainer::new(tiny(), 100).unwrap();
    ranked.to_device(Device::Cuda(0)).unwrap();
    let comm = nccl::NcclComm::init(
        &RankEnv::single(),
        0,
        b"test",
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let dist = Dist::new(Box::new(comm));
    for k in 0..3 {
        let b = src.batch(0, k, 4, true).unwrap();
        let a = plain.step(&b).unwrap();
        let d = dist.step(&mut ranked, &b).unwrap();
        assert_eq!(a.loss.to_bits(), d.loss.to_bits(), "step {k} loss");
    }
    for (n, e) in plain.model.iter() {
        let o = ranked.model.tensor(n).unwrap();
        assert_eq!(e.tensor.data(), o.data(), "{n}");
    }
    println!("NCCL world size 1: 3 steps, weights equal to the plain step's");
}

#[test]
fn without_nccl_the_reason_is_clear() {
    match nccl::unavailable_reason() {
        Some(why) => assert!(why.contains("libnccl") || why.contains("NCCL"), "{why}"),
        None => println!("NCCL is available here"),
    }
}
