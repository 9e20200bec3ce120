//! Launch (issue #19 item 2): the TCP rendezvous at MASTER_ADDR:MASTER_PORT on localhost
//! (collectives, refused ranks, missing ranks, dead ranks: each error names the rank), and
//! `mpm-train --nproc-per-node 2` on the CPU: two rank processes over the TCP communicator,
//! rank 0 alone writing the run; a configuration that does not split fails in every rank with
//! the launcher's exit code; SIGTERM to the launcher reaches the ranks.

use mpm::dist::launch::free_port;
use mpm::dist::tcp::{join, serve, TcpComm};
use mpm::dist::Communicator;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

fn star(world: usize, timeout: Duration) -> Vec<TcpComm> {
    let port = free_port().unwrap();
    let others: Vec<_> = (1..world)
        .map(|r| std::thread::spawn(move || join("127.0.0.1", port, r, world, b"job", timeout)))
        .collect();
    let root = serve("127.0.0.1", port, world, b"job", b"payload", timeout).unwrap();
    let mut v = vec![root];
    for h in others {
        v.push(h.join().unwrap().unwrap());
    }
    v
}

#[test]
fn tcp_collectives_give_every_rank_the_same_rank_order_sums() {
    let comms = star(3, Duration::from_secs(20));
    assert!(comms[1..].iter().all(|c| c.payload() == b"payload"));
    let out: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let r = c.rank() as f32;
                    let mut a = vec![r + 0.1, -r];
                    c.all_reduce_sum_f32(&mut a).unwrap();
                    let mut d = vec![c.rank() as f64 * 1e15];
                    c.all_reduce_sum_f64(&mut d).unwrap();
                    let mut b = vec![r; 3];
                    c.broadcast_f32(&mut b, 1).unwrap();
                    let g = c.all_gather_f32(&[r]).unwrap();
                    c.barrier().unwrap();
                    (a, d, b, g)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (a, d, b, g) in out {
        assert_eq!(a, vec![(0.1f32 + 1.1) + 2.1, -3.0]);
        assert_eq!(d, vec![3e15]);
        assert_eq!(b, vec![1.0; 3]);
        assert_eq!(g, vec![0.0, 1.0, 2.0]);
    }
}

#[test]
fn rendezvous_errors_name_the_rank_and_the_address() {
    let t = Duration::from_millis(800);
    // Rank 2 of 3 never comes.
    let port = free_port().unwrap();
    let one =
        std::thread::spawn(move || join("127.0.0.1", port, 1, 3, b"job", Duration::from_secs(5)));
    let e = serve("127.0.0.1", port, 3, b"job", &[], t)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("rank(s) [2] of 3 did not connect within 0.8 s"),
        "{e}"
    );
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    let e1 = one.join().unwrap().err().unwrap().to_string();
    assert!(e1.contains("rank 0 refused rank 1"), "{e1}");
    // No rank 0 at all.
    let port = free_port().unwrap();
    let e = join("127.0.0.1", port, 1, 2, b"job", t)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("rank 1 could not reach rank 0 at 127.0.0.1"),
        "{e}"
    );
    // A rank started with another configuration.
    let port = free_port().unwrap();
    let bad =
        std::thread::spawn(move || join("127.0.0.1", port, 1, 2, b"other", Duration::from_secs(5)));
    let e = serve("127.0.0.1", port, 2, b"job", &[], Duration::from_secs(5))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("rank 1 runs a different configuration"), "{e}");
    assert!(bad.join().unwrap().is_err());
}

#[test]
fn a_dead_tcp_rank_is_named_by_rank_0_and_reported_to_the_others() {
    let mut comms = star(3, Duration::from_secs(20));
    drop(comms.pop()); // rank 2 exits
    let out: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .iter()
            .map(|c| s.spawn(move || c.barrier().unwrap_err().to_string()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(out[0].contains("rank 2 is gone"), "{}", out[0]);
    assert!(
        out[1].contains("rank 0 reports: rank 2 is gone"),
        "{}",
        out[1]
    );
}

/// A folder dataset: 3 classes x 4 PNG images of 32 px, the reference layout (`img/<wnid>/`).
fn image_folder(dir: &Path) {
    for c in 0..3 {
        let d = dir.join("img").join(format!("n0000000{c}"));
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..4 {
            let img = image::RgbImage::from_fn(32, 32, |x, y| {
                image::Rgb([(x * 8) as u8, (y * 8) as u8, (c * 80 + i * 10) as u8])
            });
            img.save(d.join(format!("img{i}.png"))).unwrap();
        }
    }
}

fn tmp(name: &str) -> PathBuf {
    common::tmp("launch", name)
}

fn train_args(data: &Path, out: &Path, batch: &str, epochs: &str) -> Vec<String> {
    [
        "--nproc-per-node",
        "2",
        "--model",
        "resnet18",
        "--width",
        "4",
        "--num-classes",
        "3",
        "--partmodel-type",
        "vanilla",
        "--input-size",
        "32",
        "--epochs",
        epochs,
        "--warmup-epochs",
        "0",
        "--batch-size",
        batch,
        "--attack-it",
        "1",
        "--device",
        "cpu",
        "--dist-timeout",
        "60",
        "--no-progress",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--train-dir".into(),
        data.display().to_string(),
        "--output-dir".into(),
        out.display().to_string(),
    ])
    .collect()
}

#[test]
fn nproc_per_node_runs_two_cpu_ranks_and_forwards_failures_and_signals() {
    let data = tmp("data");
    image_folder(&data);
    let out = tmp("run");
    let o = Command::new(env!("CARGO_BIN_EXE_mpm-train"))
        .args(train_args(&data, &out, "4", "1"))
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_NTASKS")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    assert!(text.contains("started 2 ranks"), "{text}");
    let log = std::fs::read_to_string(out.join("train.log")).unwrap();
    assert!(log.contains("distributed: 2 ranks over tcp"), "{log}");
    assert_eq!(log.matches("start ").count(), 1, "{log}");
    assert!(out.join("checkpoints/last.safetensors").is_file());

    // A global batch that does not split over 2 ranks: every rank fails, the launcher too.
    let o = Command::new(env!("CARGO_BIN_EXE_mpm-train"))
        .args(train_args(&data, &tmp("bad"), "3", "1"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("--batch-size"), "{text}");

    // SIGTERM to the launcher reaches the ranks (a long run: many epochs).
    let args = train_args(&data, &tmp("signal"), "4", "1000");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mpm-train"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let t0 = Instant::now();
    // SAFETY: signals the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(25), "{:?}", t0.elapsed());
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
}
