//! One GPU: its context and stream, loaded kernel modules, the caching allocator and the
//! cuBLAS / cuDNN handles. Everything runs on one stream, so buffers returned to the cache are
//! safe to hand out again at once (later work is ordered after earlier work).
//!
//! Memory: a caching allocator. Freed buffers go back to per-size free lists (sizes rounded:
//! powers of two up to 1 MiB, multiples of 2 MiB above), so after the first (warm-up) step a
//! training or attack step reuses buffers and makes no cuMemAlloc; `stats()` counts them.
//! Out of memory: the cache is released and the allocation retried once; if it still fails
//! the error names the bytes asked for, the bytes free, and the batch size set with
//! `set_batch_hint`.

use super::libs;
use super::modules;
use crate::{Error, Result};
use cudarc::driver::{result as dr, sys, CudaContext};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub struct Gpu {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability as "90".
    pub arch: String,
    ctx: Arc<CudaContext>,
    stream: sys::CUstream,
    modules: Mutex<HashMap<&'static str, usize>>,
    funcs: Mutex<HashMap<String, usize>>,
    pool: Mutex<Pool>,
    pub(crate) blas: Mutex<Option<usize>>,
    pub(crate) dnn: Mutex<Option<usize>>,
}

// SAFETY: the raw handles (stream, modules, functions, library handles) belong to this GPU's
// context, which every method makes current before use; CUDA allows their use from any thread
// and all mutation goes through the mutexes above.
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

#[derive(Default)]
struct Pool {
    free: BTreeMap<usize, Vec<sys::CUdeviceptr>>,
    cached_bytes: usize,
}

static MALLOCS: AtomicUsize = AtomicUsize::new(0);
static BATCH_HINT: AtomicUsize = AtomicUsize::new(0);
static WEIGHT_EPOCH: AtomicU64 = AtomicU64::new(0);

/// The weight version: bumped whenever a kernel that updates tensors in place runs (every
/// kernel of `kernels/optim.cu`: SGD, EMA, ...), or by `weights_changed`. Copies derived from
/// weights (bf16 casts, BN-folded conv weights) are valid only for the epoch they were made
/// in. Out-of-place ops never bump it: their outputs are new storages.
pub fn weight_epoch() -> u64 {
    WEIGHT_EPOCH.load(Ordering::SeqCst)
}

/// Declares that some device tensor was written in place by other means than our launchers
/// (drops every cached weight-derived copy at its next use).
pub fn weights_changed() {
    WEIGHT_EPOCH.fetch_add(1, Ordering::SeqCst);
}

/// Whether launching `symbol` writes some existing tensor in place (weights, momentum, EMA):
/// every kernel of kernels/optim.cu. Memoised per symbol (`file_of` scans the sources).
fn writes_in_place(symbol: &str) -> bool {
    static MEMO: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    let memo = MEMO.get_or_init(|| Mutex::new(HashMap::new()));
    if let Ok(m) = memo.lock() {
        if let Some(v) = m.get(symbol) {
            return *v;
        }
    }
    let v = modules::file_of(symbol).is_some_and(|k| k.name == "optim");
    if let Ok(mut m) = memo.lock() {
        m.insert(symbol.to_string(), v);
    }
    v
}

/// Adds the batch size to an out-of-memory error (any other error passes unchanged), for
/// callers that know it: `gpu_step().map_err(|e| mpm::cuda::with_batch(e, n))`.
pub fn with_batch(e: Error, batch: usize) -> Error {
    match e {
        Error::Device { device, msg } if msg.contains(OOM) && !msg.contains(" at batch size ") => {
            Error::Device {
                device,
                msg: format!("{msg} (at batch size {batch}: lower --batch-size)"),
            }
        }
        e => e,
    }
}

/// Whether `e` is a GPU out-of-memory error.
pub fn is_out_of_memory(e: &Error) -> bool {
    matches!(e, Error::Device { msg, .. } if msg.contains(OOM))
}

const OOM: &str = "out of memory";

/// The batch size an OOM error should name (set by training/attack loops and mpm-bench).
pub fn set_batch_hint(n: usize) {
    BATCH_HINT.store(n, Ordering::Relaxed);
}

/// Real device allocations (cuMemAlloc calls) so far, all GPUs: constant across training or
/// attack steps after the first (warm-up) one, which `tests/cuda_parity.rs` checks.
pub fn malloc_count() -> usize {
    MALLOCS.load(Ordering::Relaxed)
}

fn round_size(bytes: usize) -> usize {
    let b = bytes.max(256);
    if b <= 1 << 20 {
        b.next_power_of_two()
    } else {
        b.div_ceil(2 << 20) * (2 << 20)
    }
}

fn cu(what: &str, e: dr::DriverError) -> Error {
    Error::Device {
        device: "cuda".into(),
        msg: format!("{what}: {e:?}"),
    }
}

/// Why the CUDA driver cannot be used, or `None` when it loads and sees at least one GPU.
pub fn driver_problem() -> Option<String> {
    // SAFETY: only tries to open libcuda.
    if !unsafe { sys::is_culib_present() } {
        return Some("the CUDA driver library (libcuda.so) was not found".into());
    }
    if let Err(e) = dr::init() {
        return Some(format!("cuInit failed: {e:?}"));
    }
    match dr::device::get_count() {
        Ok(0) => Some("the CUDA driver sees no GPU".into()),
        Ok(_) => None,
        Err(e) => Some(format!("cuDeviceGetCount failed: {e:?}")),
    }
}

/// The GPU `ordinal`, opened once per process.
pub fn gpu(ordinal: usize) -> Result<Arc<Gpu>> {
    static GPUS: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();
    let map = GPUS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut m = map
        .lock()
        .map_err(|_| Error::Msg("GPU table poisoned".into()))?;
    if let Some(g) = m.get(&ordinal) {
        return Ok(g.clone());
    }
    let g = Arc::new(Gpu::open(ordinal)?);
    m.insert(ordinal, g.clone());
    Ok(g)
}

impl Gpu {
    fn open(ordinal: usize) -> Result<Gpu> {
        let dev = format!("cuda:{ordinal}");
        if let Some(p) = driver_problem() {
            return Err(Error::Device {
                device: dev,
                msg: p,
            });
        }
        let count = dr::device::get_count().map_err(|e| cu("cuDeviceGetCount", e))? as usize;
        if ordinal >= count {
            return Err(Error::Device {
                device: dev,
                msg: format!("only {count} GPU(s) present"),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| cu("cuCtxCreate", e))?;
        let (maj, min) = ctx
            .compute_capability()
            .map_err(|e| cu("compute capability", e))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        ctx.bind_to_thread().map_err(|e| cu("bind context", e))?;
        let stream = dr::stream::create(dr::stream::StreamKind::NonBlocking)
            .map_err(|e| cu("cuStreamCreate", e))?;
        libs::preload_math();
        Ok(Gpu {
            ordinal,
            name,
            arch: format!("{maj}{min}"),
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            funcs: Mutex::new(HashMap::new()),
            pool: Mutex::new(Pool::default()),
            blas: Mutex::new(None),
            dnn: Mutex::new(None),
        })
    }

    /// Makes this GPU's context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| cu("bind context", e))
    }

    pub fn stream(&self) -> sys::CUstream {
        self.stream
    }

    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: the stream belongs to this context and is alive for the life of `self`.
        unsafe { dr::stream::synchronize(self.stream) }.map_err(|e| cu("stream synchronize", e))
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        dr::mem_get_info().map_err(|e| cu("cuMemGetInfo", e))
    }

    /// The kernel `symbol` (an `extern "C"` name in kernels/*.cu), loading its module on first use.
    pub fn function(&self, symbol: &str) -> Result<sys::CUfunction> {
        if let Some(f) = self.funcs.lock().map_err(|_| poisoned())?.get(symbol) {
            return Ok(*f as sys::CUfunction);
        }
        let k = modules::file_of(symbol).ok_or_else(|| {
            Error::Msg(format!(
                "no kernel named {symbol} in kernels/*.cu (build.rs table)"
            ))
        })?;
        self.bind()?;
        let module = {
            let mut mods = self.modules.lock().map_err(|_| poisoned())?;
            match mods.get(k.name) {
                Some(m) => *m as sys::CUmodule,
                None => {
                    let image = modules::image(k, &self.arch).map_err(|msg| Error::Device {
                        device: format!("cuda:{}", self.ordinal),
                        msg,
                    })?;
                    // SAFETY: `image` is a complete CUBIN/fatbin, alive during the call.
                    let m = unsafe { dr::module::load_data(image.as_ptr() as *const _) }
                        .map_err(|e| cu(&format!("loading kernels/{}.cu", k.name), e))?;
                    mods.insert(k.name, m as usize);
                    m
                }
            }
        };
        let cname = std::ffi::CString::new(symbol).map_err(|e| Error::Msg(e.to_string()))?;
        // SAFETY: the module was loaded above and is never unloaded.
        let f = unsafe { dr::module::get_function(module, cname) }
            .map_err(|e| cu(&format!("kernel {symbol}"), e))?;
        self.funcs
            .lock()
            .map_err(|_| poisoned())?
            .insert(symbol.to_string(), f as usize);
        Ok(f)
    }

    /// A device buffer of at least `bytes` bytes (uninitialised), from the cache when possible.
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DevBuf> {
        let size = round_size(bytes);
        if let Some(ptr) = {
            let mut p = self.pool.lock().map_err(|_| poisoned())?;
            let got = p.free.get_mut(&size).and_then(|v| v.pop());
            if got.is_some() {
                p.cached_bytes -= size;
            }
            got
        } {
            return Ok(DevBuf {
                ptr,
                bytes: size,
                len_bytes: bytes,
                gpu: self.clone(),
            });
        }
        self.bind()?;
        // SAFETY: plain device allocation; the pointer is owned by the returned DevBuf.
        let first = unsafe { dr::malloc_sync(size) };
        let ptr = match first {
            Ok(p) => p,
            Err(_) => {
                self.release_cache()?;
                // SAFETY: as above.
                match unsafe { dr::malloc_sync(size) } {
                    Ok(p) => p,
                    Err(e) => {
                        let (free, total) = self.mem_info().unwrap_or((0, 0));
                        let batch = BATCH_HINT.load(Ordering::Relaxed);
                        return Err(Error::Device {
                            device: format!("cuda:{}", self.ordinal),
                            msg: format!(
                                "{OOM} ({e:?}): asked for {bytes} bytes ({size} reserved, {:.2} GiB) with {free} bytes ({:.2} GiB) free of {:.2} GiB{}; lower the batch size",
                                size as f64 / (1u64 << 30) as f64,
                                free as f64 / (1u64 << 30) as f64,
                                total as f64 / (1u64 << 30) as f64,
                                if batch > 0 { format!(" at batch size {batch}") } else { String::new() }
                            ),
                        });
                    }
                }
            }
        };
        MALLOCS.fetch_add(1, Ordering::Relaxed);
        Ok(DevBuf {
            ptr,
            bytes: size,
            len_bytes: bytes,
            gpu: self.clone(),
        })
    }

    /// Frees every cached (unused) buffer.
    pub fn release_cache(&self) -> Result<()> {
        self.synchronize()?;
        let mut p = self.pool.lock().map_err(|_| poisoned())?;
        for (_, v) in std::mem::take(&mut p.free) {
            for ptr in v {
                // SAFETY: cached buffers are owned by the pool and unused (stream synchronised).
                let _ = unsafe { dr::free_sync(ptr) };
            }
        }
        p.cached_bytes = 0;
        Ok(())
    }

    fn give_back(&self, ptr: sys::CUdeviceptr, bytes: usize) {
        if let Ok(mut p) = self.pool.lock() {
            p.free.entry(bytes).or_default().push(ptr);
            p.cached_bytes += bytes;
        }
    }

    /// Copies host floats/bytes to a new device buffer.
    pub fn upload<T: bytemuck::Pod>(self: &Arc<Self>, data: &[T]) -> Result<DevBuf> {
        let bytes = std::mem::size_of_val(data);
        let buf = self.alloc(bytes.max(1))?;
        if bytes > 0 {
            self.bind()?;
            // Stream-ordered, without draining the stream first: the buffer may come from the
            // cache while earlier work on the stream still reads its old contents, and an
            // async copy on the same stream runs after that work. `data` is pageable host
            // memory, for which cuMemcpyHtoDAsync returns only once it has been staged
            // (CUDA's "API synchronization behavior"), so the slice may be dropped on return.
            // Before, every small upload (per-sample eps/step vectors, ones vectors, packed
            // window metadata) synchronised the stream and left the GPU idle until the host
            // had queued the next kernel.
            // SAFETY: the buffer holds >= `bytes` bytes and lives until the copy has run (it
            // returns to the cache only when dropped, and reuse is ordered on this stream).
            unsafe {
                dr::memcpy_htod_async(buf.ptr, data, self.stream)
                    .map_err(|e| cu("cuMemcpyHtoDAsync", e))?;
            }
        }
        Ok(buf)
    }

    /// Copies a device buffer back to the host (waits for the stream first).
    pub fn download<T: bytemuck::Pod>(&self, buf: &DevBuf, len: usize) -> Result<Vec<T>> {
        let mut out = vec![T::zeroed(); len];
        if len == 0 {
            return Ok(out);
        }
        if len * std::mem::size_of::<T>() > buf.bytes {
            return Err(Error::Device {
                device: format!("cuda:{}", self.ordinal),
                msg: format!(
                    "download of {len} x {} bytes past a buffer of {} bytes",
                    std::mem::size_of::<T>(),
                    buf.bytes
                ),
            });
        }
        self.synchronize()?;
        // SAFETY: `out` has room for len elements; the buffer holds at least that many bytes
        // (asserted) and all work writing it has completed (synchronize above).
        unsafe { dr::memcpy_dtoh_sync(&mut out, buf.ptr) }.map_err(|e| cu("cuMemcpyDtoH", e))?;
        Ok(out)
    }

    /// Sets `bytes` bytes of `buf` to zero, on the stream.
    pub fn memset_zero(&self, buf: &DevBuf, bytes: usize) -> Result<()> {
        if bytes > buf.bytes {
            return Err(Error::Device {
                device: format!("cuda:{}", self.ordinal),
                msg: format!(
                    "memset of {bytes} bytes past a buffer of {} bytes",
                    buf.bytes
                ),
            });
        }
        self.bind()?;
        // SAFETY: `bytes` <= the buffer's size (checked above); async on our stream.
        unsafe { dr::memset_d8_async(buf.ptr, 0, bytes, self.stream) }
            .map_err(|e| cu("cuMemsetD8Async", e))
    }

    /// Launches `symbol` with `params` (pointers to each argument value, in order).
    ///
    /// # Safety
    /// `params` must match the kernel's C signature exactly (types and count), and every
    /// device pointer among them must be valid for the accesses the kernel makes.
    pub unsafe fn launch(
        &self,
        symbol: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared: u32,
        params: &mut [*mut std::ffi::c_void],
    ) -> Result<()> {
        let f = self.function(symbol)?;
        self.bind()?;
        if writes_in_place(symbol) {
            weights_changed();
        }
        if shared > 48 * 1024 {
            let _ = sys::cuFuncSetAttribute(
                f,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shared as i32,
            );
        }
        dr::launch_kernel(f, grid, block, shared, self.stream, params)
            .map_err(|e| cu(&format!("launching {symbol}"), e))
    }
}

fn poisoned() -> Error {
    Error::Msg("CUDA state lock poisoned by an earlier panic".into())
}

/// A device allocation from the caching allocator; returned to the cache on drop.
pub struct DevBuf {
    pub(crate) ptr: sys::CUdeviceptr,
    /// Rounded size actually reserved.
    pub(crate) bytes: usize,
    /// Size asked for.
    pub(crate) len_bytes: usize,
    pub(crate) gpu: Arc<Gpu>,
}

impl DevBuf {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn len_bytes(&self) -> usize {
        self.len_bytes
    }
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}

impl std::fmt::Debug for DevBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DevBuf(cuda:{}, {} bytes)",
            self.gpu.ordinal, self.len_bytes
        )
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        self.gpu.give_back(self.ptr, self.bytes);
    }
}
