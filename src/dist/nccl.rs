//! NCCL through cudarc's `nccl` module, loaded at run time like the other CUDA libraries (a
//! machine without NCCL runs everything on one device and says why multi-GPU is unavailable).
//!
//! Rank 0 creates NCCL's unique id and hands it to the other ranks through the TCP rendezvous
//! (`tcp`); every rank then joins the NCCL communicator on its GPU (`LOCAL_RANK`). Gradient
//! buckets are summed on the device with `ncclAllReduce` (one NCCL group per bucket); the
//! small host-side collectives (BN running statistics, metric counts, barriers) go over the
//! TCP connections of the rendezvous.
//!
//! Overlap with the backward pass (`dist::train`): when a bucket is complete, the trainer's
//! thread allocates its output buffers and records an event on the compute stream after the
//! kernels that wrote its gradients (`bucket_ready`); the communication worker thread makes a
//! stream of its own wait for that event and queues the bucket's all-reduce there
//! (`reduce_bucket`), so NCCL runs while the compute stream goes on with the backward pass.
//! The worker waits for the communication stream before it reports the bucket done, so the
//! optimiser (on the compute stream, after every bucket) reads finished sums, and the input
//! gradients stay alive (not back in the caching allocator, which assumes one stream) until
//! NCCL has read them. Compiled only: this path has not run on a GPU yet.
//!
//! Faults: NCCL calls return at once and complete on the stream; a peer that died or hung
//! leaves the stream waiting forever. So every bucket is waited for by polling the stream and
//! NCCL's asynchronous error with the collective timeout; on timeout the communicator is
//! aborted and the error says that a rank stopped answering (NCCL does not say which: the
//! other ranks' own errors, through the TCP connections, name it).

use super::tcp::TcpComm;
use super::{Bucket, Communicator, RankEnv};
use crate::cuda::storage::CudaStorage;
use crate::cuda::{DType, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};
use cudarc::nccl::{result as nr, sys as ns};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why NCCL cannot be used on this machine, or None when `libnccl.so` loads.
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: only tries to open the library.
    if unsafe { ns::is_culib_present() } {
        return None;
    }
    let wheel = crate::cuda::libs::find("libnccl.so.2");
    Some(match wheel {
        Some(p) => format!(
            "libnccl.so is not on the library path; {} is: make a symlink named libnccl.so to \
             it in a folder on LD_LIBRARY_PATH (scripts/device-check.sh does)",
            p.display()
        ),
        None => "NCCL (libnccl.so) is not installed: multi-GPU training needs it (pip install \
                 nvidia-nccl-cu13, or the system's NCCL); one GPU works without it"
            .into(),
    })
}

fn nccl_err(what: &str, e: nr::NcclError) -> Error {
    Error::Device {
        device: "nccl".into(),
        msg: format!("{what}: {e:?}"),
    }
}

/// One rank's NCCL communicator on its GPU, with the TCP connections of the rendezvous for
/// host collectives (None for world size 1).
pub struct NcclComm {
    comm: ns::ncclComm_t,
    gpu: Arc<Gpu>,
    rank: usize,
    world: usize,
    host: Option<TcpComm>,
    timeout: Duration,
    /// Set once the communicator was aborted (after a timeout): not destroyed again.
    aborted: std::sync::atomic::AtomicBool,
    /// The communication stream of overlapped gradient buckets (created on first use).
    comm_stream: std::sync::OnceLock<usize>,
}

/// What `bucket_ready` hands the worker with a bucket of GPU gradients: the event recorded
/// on the compute stream after them, and the output buffers (allocated on the trainer's
/// thread, so that a buffer the compute stream freed is reused only after that event).
struct Pending {
    event: cudarc::driver::sys::CUevent,
    outs: Vec<CudaStorage>,
}

// SAFETY: the event handle belongs to the GPU's context, which is made current on the thread
// that uses it; CUDA events may be used from any thread.
unsafe impl Send for Pending {}

impl Drop for Pending {
    fn drop(&mut self) {
        // SAFETY: the event is not used after this; CUDA defers the release while a stream
        // still waits on it.
        unsafe {
            let _ = cudarc::driver::result::event::destroy(self.event);
        }
    }
}

// SAFETY: the NCCL communicator is used from one thread at a time (the trainer's); NCCL
// allows that from any thread once the GPU's context is current, which every call makes it.
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

impl NcclComm {
    /// Joins the job `env` describes on GPU `ordinal`: rendezvous (rank 0 creates the unique
    /// id), then `ncclCommInitRank`. World size 1 needs no rendezvous.
    pub fn init(env: &RankEnv, ordinal: usize, token: &[u8], timeout: Duration) -> Result<Self> {
        if let Some(why) = unavailable_reason() {
            return Err(Error::Device {
                device: format!("cuda:{ordinal}"),
                msg: format!("NCCL unavailable: {why}"),
            });
        }
        let gpu = crate::cuda::gpu(ordinal)?;
        gpu.bind()?;
        let (id, host) = if env.world == 1 {
            (
                nr::get_uniqueid().map_err(|e| nccl_err("ncclGetUniqueId", e))?,
                None,
            )
        } else if env.rank == 0 {
            let id = nr::get_uniqueid().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
            let bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
            let tcp = super::tcp::rendezvous(env, token, &bytes, timeout)?;
            (id, Some(tcp))
        } else {
            let tcp = super::tcp::rendezvous(env, token, &[], timeout)?;
            let p = tcp.payload();
            if p.len() != 128 {
                return Err(Error::Msg(format!(
                    "rendezvous: rank 0 sent {} bytes, not NCCL's 128-byte unique id (is rank 0 \
                     a GPU job?)",
                    p.len()
                )));
            }
            let mut internal = [0 as std::ffi::c_char; 128];
            for (d, s) in internal.iter_mut().zip(p) {
                *d = *s as std::ffi::c_char;
            }
            (ns::ncclUniqueId { internal }, Some(tcp))
        };
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is written by NCCL before it is read; rank < world (RankEnv checks).
        let comm = unsafe {
            nr::comm_init_rank(comm.as_mut_ptr(), env.world as i32, id, env.rank as i32)
                .map_err(|e| nccl_err("ncclCommInitRank", e))?;
            comm.assume_init()
        };
        Ok(NcclComm {
            comm,
            gpu,
            rank: env.rank,
            world: env.world,
            host,
            timeout,
            aborted: std::sync::atomic::AtomicBool::new(false),
            comm_stream: std::sync::OnceLock::new(),
        })
    }

    /// The communication stream (non-blocking, created once on this GPU; bound by the caller).
    fn comm_stream(&self) -> Result<cudarc::driver::sys::CUstream> {
        if let Some(&s) = self.comm_stream.get() {
            return Ok(s as cudarc::driver::sys::CUstream);
        }
        let s = cudarc::driver::result::stream::create(
            cudarc::driver::result::stream::StreamKind::NonBlocking,
        )
        .map_err(|e| Error::Device {
            device: format!("cuda:{}", self.gpu.ordinal),
            msg: format!("cuStreamCreate (communication stream): {e:?}"),
        })?;
        // Only the worker thread creates it, so no other stream is lost to a race.
        let _ = self.comm_stream.set(s as usize);
        Ok(self.comm_stream.get().copied().unwrap_or(s as usize) as cudarc::driver::sys::CUstream)
    }

    fn cu_err(&self, what: &str, e: cudarc::driver::DriverError) -> Error {
        Error::Device {
            device: format!("cuda:{}", self.gpu.ordinal),
            msg: format!("{what}: {e:?}"),
        }
    }

    /// Waits for the GPU's compute stream, polling NCCL's asynchronous error; aborts after
    /// the timeout.
    fn wait(&self, what: &str) -> Result<()> {
        self.wait_stream(self.gpu.stream(), what)
    }

    /// `wait` for `stream`.
    fn wait_stream(&self, stream: cudarc::driver::sys::CUstream, what: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            // SAFETY: the stream belongs to this GPU's context (bound by the caller).
            let r = unsafe { cudarc::driver::sys::cuStreamQuery(stream) };
            if r == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
                return Ok(());
            }
            if r != cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_READY {
                return Err(Error::Device {
                    device: format!("cuda:{}", self.gpu.ordinal),
                    msg: format!("{what}: stream error {r:?}"),
                });
            }
            let mut async_err = ns::ncclResult_t::ncclSuccess;
            // SAFETY: `comm` is alive; NCCL writes one enum value.
            unsafe { ns::ncclCommGetAsyncError(self.comm, &mut async_err) };
            if async_err != ns::ncclResult_t::ncclSuccess
                && async_err != ns::ncclResult_t::ncclInProgress
            {
                return Err(Error::Device {
                    device: "nccl".into(),
                    msg: format!(
                        "{what}: {async_err:?} (a rank failed; see the other ranks' errors)"
                    ),
                });
            }
            if start.elapsed() > self.timeout {
                // SAFETY: aborting makes the pending NCCL kernels return; the communicator is
                // not used again (`abort` is idempotent through `Drop`'s null check).
                if !self.aborted.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    unsafe {
                        let _ = nr::comm_abort(self.comm);
                    }
                }
                return Err(Error::Msg(format!(
                    "distributed {what} on NCCL did not complete within {:.1} s: a rank hung or \
                     died (rank {} stops; the timeout is --dist-timeout / MPM_DIST_TIMEOUT_S)",
                    self.timeout.as_secs_f64(),
                    self.rank
                )));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn host(&self) -> Option<&TcpComm> {
        self.host.as_ref()
    }
}

impl NcclComm {
    /// Queues the sum of `c` over the ranks into `out` (a buffer of `c.len` elements of
    /// `c.dtype` on this GPU) on `stream`, inside the caller's NCCL group. The caller orders
    /// `stream` after the kernels that wrote `c`.
    fn queue_sum(&self, c: &CudaStorage, out: u64, stream: ns::cudaStream_t) -> Result<()> {
        let dtype = match c.dtype {
            DType::F32 => ns::ncclDataType_t::ncclFloat32,
            DType::Bf16 => ns::ncclDataType_t::ncclBfloat16,
        };
        // SAFETY: both buffers hold `c.len` elements of `dtype` on this GPU (the caller's
        // contract for `out`), and the caller has ordered `stream` after `c`'s producers.
        unsafe {
            nr::all_reduce(
                c.ptr() as *const std::ffi::c_void,
                out as *mut std::ffi::c_void,
                c.len,
                dtype,
                ns::ncclRedOp_t::ncclSum,
                self.comm,
                stream,
            )
        }
        .map_err(|e| nccl_err("ncclAllReduce", e))?;
        Ok(())
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: the communicator is not used after this; destroy waits for pending work,
        // abort would not (a clean end of a run has none). An aborted one is already gone.
        if self.aborted.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        unsafe {
            let _ = nr::comm_destroy(self.comm);
        }
        if let Some(&s) = self.comm_stream.get() {
            // SAFETY: no bucket is in flight once the communicator is dropped.
            unsafe {
                let _ = cudarc::driver::result::stream::destroy(s as cudarc::driver::sys::CUstream);
            }
        }
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn backend(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        match self.host() {
            Some(h) => h.all_reduce_sum_f32(buf),
            None => Ok(()),
        }
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        match self.host() {
            Some(h) => h.all_reduce_sum_f64(buf),
            None => Ok(()),
        }
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        match self.host() {
            Some(h) => h.broadcast_f32(buf, root),
            None => Ok(()),
        }
    }
    fn all_gather_f32(&self, mine: &[f32]) -> Result<Vec<f32>> {
        match self.host() {
            Some(h) => h.all_gather_f32(mine),
            None => Ok(mine.to_vec()),
        }
    }
    fn barrier(&self) -> Result<()> {
        match self.host() {
            Some(h) => h.barrier(),
            None => Ok(()),
        }
    }

    /// GPU tensors are summed on the device (one NCCL group for the bucket, into fresh
    /// buffers so that no cached host copy of the old values survives); host tensors through
    /// the TCP connections.
    fn all_reduce_sum_tensors(&self, bucket: &mut [Tensor]) -> Result<()> {
        if bucket.iter().any(|t| !t.is_cuda()) {
            let mut flat: Vec<f32> = bucket.iter().flat_map(|t| t.data().to_vec()).collect();
            self.all_reduce_sum_f32(&mut flat)?;
            let mut k = 0;
            for t in bucket.iter_mut() {
                let n = t.numel();
                *t = Tensor::from_vec(t.shape(), flat[k..k + n].to_vec())?.to_device(t.device())?;
                k += n;
            }
            return Ok(());
        }
        self.gpu.bind()?;
        let mut outs = Vec::with_capacity(bucket.len());
        nr::group_start().map_err(|e| nccl_err("ncclGroupStart", e))?;
        for t in bucket.iter() {
            let Some(c) = t.cuda() else { continue };
            let out = self.gpu.alloc((c.len * c.dtype.size()).max(1))?;
            // On the GPU's stream, after the backward pass that wrote `c`.
            self.queue_sum(c, out.ptr(), self.gpu.stream() as ns::cudaStream_t)?;
            outs.push(CudaStorage::new(out, c.dtype, c.len));
        }
        nr::group_end().map_err(|e| nccl_err("ncclGroupEnd", e))?;
        self.wait("gradient all-reduce")?;
        for (t, s) in bucket.iter_mut().zip(outs) {
            *t = Tensor::from_cuda(t.shape(), s);
        }
        Ok(())
    }

    /// A bucket of GPU gradients: its output buffers, and an event on the compute stream
    /// after the kernels that wrote it (host tensors: nothing, the host path sums them).
    fn bucket_ready(&self, tensors: Vec<Tensor>) -> Result<Bucket> {
        if tensors.is_empty() || tensors.iter().any(|t| !t.is_cuda()) {
            return Ok(Bucket {
                tensors,
                pending: None,
            });
        }
        self.gpu.bind()?;
        let mut outs = Vec::with_capacity(tensors.len());
        for t in &tensors {
            if let Some(c) = t.cuda() {
                let buf = self.gpu.alloc((c.len * c.dtype.size()).max(1))?;
                outs.push(CudaStorage::new(buf, c.dtype, c.len));
            }
        }
        let event = cudarc::driver::result::event::create(
            cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING,
        )
        .map_err(|e| self.cu_err("cuEventCreate", e))?;
        let pending = Pending { event, outs };
        // SAFETY: the event and the compute stream belong to this GPU's context (bound).
        unsafe { cudarc::driver::result::event::record(pending.event, self.gpu.stream()) }
            .map_err(|e| self.cu_err("cuEventRecord (gradient bucket)", e))?;
        Ok(Bucket {
            tensors,
            pending: Some(Box::new(pending)),
        })
    }

    /// On the communication worker: the communication stream waits for the bucket's event,
    /// NCCL sums the bucket there, and the worker waits for it (with the collective timeout).
    fn reduce_bucket(&self, bucket: &mut Bucket) -> Result<()> {
        let mut pending = match bucket.pending.take().map(|p| p.downcast::<Pending>()) {
            Some(Ok(p)) => p,
            _ => return self.all_reduce_sum_tensors(&mut bucket.tensors),
        };
        self.gpu.bind()?;
        let stream = self.comm_stream()?;
        // SAFETY: the stream and the event belong to this GPU's context (bound above).
        unsafe {
            cudarc::driver::result::stream::wait_event(
                stream,
                pending.event,
                cudarc::driver::sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
            )
        }
        .map_err(|e| self.cu_err("cuStreamWaitEvent (gradient bucket)", e))?;
        nr::group_start().map_err(|e| nccl_err("ncclGroupStart", e))?;
        for (t, out) in bucket.tensors.iter().zip(&pending.outs) {
            let Some(c) = t.cuda() else { continue };
            // On the communication stream, after the event that follows the kernels that
            // wrote `c` and every earlier use of `out`'s memory.
            self.queue_sum(c, out.ptr(), stream as ns::cudaStream_t)?;
        }
        nr::group_end().map_err(|e| nccl_err("ncclGroupEnd", e))?;
        // The inputs are dropped (back to the cache) only after NCCL has read them.
        self.wait_stream(stream, "gradient all-reduce (overlapped)")?;
        let outs = std::mem::take(&mut pending.outs);
        drop(pending);
        for (t, s) in bucket.tensors.iter_mut().zip(outs) {
            *t = Tensor::from_cuda(t.shape(), s);
        }
        Ok(())
    }
}
