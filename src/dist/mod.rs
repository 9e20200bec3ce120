//! Data-parallel training across processes (issue #19): the authors' DDP run (8 GPUs x 64
//! images, no SyncBN, timm `distribute_bn`) as N ranks of this engine. See docs/distributed.md.
//!
//! - [`Communicator`]: the collectives a rank needs (all-reduce sum of f32 / f64 buffers,
//!   broadcast, all-gather, barrier), each bounded by a timeout so that a dead or hung rank
//!   stops the others with a message naming it.
//! - [`local`]: ranks as threads of one process (the stand-in the CPU tests run on).
//! - [`tcp`]: the rendezvous at `MASTER_ADDR:MASTER_PORT` and a star-shaped TCP communicator
//!   (host buffers; CPU runs over several processes and the hand-over of NCCL's unique id).
//! - [`nccl`]: NCCL through cudarc (GPU buffers), loaded at run time.
//! - [`env`]: the rank environment (torchrun and Slurm variables).
//! - [`launch`]: `mpm-train --nproc-per-node N`, N local rank processes.
//! - [`train`]: the DDP step, sharded evaluation and rank-0 checkpoints on top of `Trainer`.

pub mod env;
pub mod launch;
pub mod local;
pub mod nccl;
pub mod tcp;
pub mod train;

pub use env::RankEnv;
pub use train::Dist;

use crate::tensor::Tensor;
use crate::{Error, Result};
use std::time::Duration;

/// How long a collective waits for the other ranks before it gives up (torch's default
/// process-group timeout is also 10 minutes). `MPM_DIST_TIMEOUT_S` or `--dist-timeout`
/// change it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The environment variable that sets the collective timeout in seconds.
pub const TIMEOUT_ENV: &str = "MPM_DIST_TIMEOUT_S";

/// The timeout from `MPM_DIST_TIMEOUT_S` (seconds, may be fractional), else the default.
pub fn timeout_from_env() -> Result<Duration> {
    match std::env::var(TIMEOUT_ENV) {
        Err(_) => Ok(DEFAULT_TIMEOUT),
        Ok(v) => parse_timeout(&v).map_err(|m| Error::flag(TIMEOUT_ENV, m)),
    }
}

/// Seconds (> 0, may be fractional) as a duration.
pub fn parse_timeout(v: &str) -> std::result::Result<Duration, String> {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("'{v}' is not a positive number of seconds")),
    }
}

/// The collectives of one rank. Every rank must call the same collectives in the same order
/// with buffers of the same length. Sums are computed in rank order (0, 1, ..) by the host
/// communicators, so every rank gets the same bits; NCCL's ring or tree order differs.
/// A collective that cannot complete within the timeout returns an error that names the
/// missing rank(s); a rank whose communicator is dropped (the rank failed or exited) makes the
/// others' current and later collectives fail at once, naming it.
///
/// A rank's collectives may run on another thread than the trainer's (the gradient worker of
/// an overlapped step, `dist::train`), one at a time: the trainer calls no collective while
/// the worker has buckets in flight.
pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// What carries the collectives ("threads", "tcp", "nccl"), for logs.
    fn backend(&self) -> &'static str;
    /// `buf` becomes the element-wise sum of every rank's `buf`.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// The same in f64 (counts and metric sums: exact up to 2^53).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// `buf` becomes rank `root`'s `buf` on every rank.
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Every rank's `mine` (equal lengths), concatenated in rank order.
    fn all_gather_f32(&self, mine: &[f32]) -> Result<Vec<f32>>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// `buf` becomes the element-wise mean over the ranks (sum, then divided by the world).
    fn all_reduce_mean_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce_sum_f32(buf)?;
        let w = self.world() as f32;
        buf.iter_mut().for_each(|v| *v /= w);
        Ok(())
    }

    /// Sums a bucket of tensors over the ranks; each keeps its shape and device. This default
    /// stages through the host (one flat buffer per bucket); the NCCL communicator sums GPU
    /// tensors on the device.
    fn all_reduce_sum_tensors(&self, bucket: &mut [Tensor]) -> Result<()> {
        let mut flat = Vec::with_capacity(bucket.iter().map(Tensor::numel).sum());
        for t in bucket.iter() {
            flat.extend_from_slice(t.data());
        }
        self.all_reduce_sum_f32(&mut flat)?;
        let mut k = 0;
        for t in bucket.iter_mut() {
            let n = t.numel();
            let host = Tensor::from_vec(t.shape(), flat[k..k + n].to_vec())?;
            *t = host.to_device(t.device())?;
            k += n;
        }
        Ok(())
    }

    /// Called on the thread that computed `tensors` (the backward pass) when a bucket is
    /// complete, before it goes to the communication worker: whatever orders the worker's
    /// reduction after the work that produced the values. The host communicators need
    /// nothing (their values are complete when handed over).
    fn bucket_ready(&self, tensors: Vec<Tensor>) -> Result<Bucket> {
        Ok(Bucket {
            tensors,
            pending: None,
        })
    }

    /// Called on the communication worker's thread: sums the bucket over the ranks, in the
    /// order the buckets were handed over (the same on every rank), and returns once the sums
    /// are complete and safe to use from the trainer's thread.
    fn reduce_bucket(&self, bucket: &mut Bucket) -> Result<()> {
        self.all_reduce_sum_tensors(&mut bucket.tensors)
    }
}

/// A bucket of gradients on its way to the communication worker of an overlapped backward
/// pass (`dist::train`): handed over on the trainer's thread (`Communicator::bucket_ready`),
/// summed on the worker's (`Communicator::reduce_bucket`).
pub struct Bucket {
    pub tensors: Vec<Tensor>,
    /// What the communicator attached when the bucket was handed over (NCCL: the event that
    /// orders the reduction after the kernels that wrote the gradients); None for host ones.
    pub pending: Option<Box<dyn std::any::Any + Send>>,
}

/// Checks the equal-length rule of a collective: `lens[r]` is rank `r`'s buffer length.
pub(crate) fn check_lengths(what: &str, lens: &[usize]) -> Result<()> {
    if let Some((r, &n)) = lens.iter().enumerate().find(|(_, &n)| n != lens[0]) {
        return Err(Error::Msg(format!(
            "distributed {what}: rank {r} sent {n} values, rank 0 sent {}: the ranks do not run \
             the same model or configuration",
            lens[0]
        )));
    }
    Ok(())
}
