//! Device storage of a tensor: a buffer from the caching allocator, its element type, and a
//! host mirror filled on first host read (so `Tensor::data()` keeps working on a GPU tensor:
//! it downloads once and caches).

use super::context::{gpu, DevBuf, Gpu};
use crate::Result;
use std::sync::{Arc, Mutex, OnceLock};

/// Element type on the GPU: f32 (master weights, parity mode) or bf16 (activations in
/// mixed precision; arithmetic is f32 inside every kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    Bf16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 => 2,
        }
    }
    /// Kernel symbol suffix (`gelu_fwd_f32`, `gelu_fwd_bf16`).
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
        }
    }
}

pub struct CudaStorage {
    pub buf: DevBuf,
    pub dtype: DType,
    pub len: usize,
    host: OnceLock<Vec<f32>>,
    /// A copy of this (weight) storage in another dtype and the weight epoch it was made in
    /// (`cuda::ops::weight_as`); dropped with the storage.
    pub(crate) cast: Mutex<Option<(u64, crate::tensor::Tensor)>>,
    /// Unique per storage in this process (device pointers are reused by the cache).
    pub(crate) uid: u64,
}

static NEXT_UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaStorage({:?}, {} x {:?})",
            self.buf, self.len, self.dtype
        )
    }
}

impl CudaStorage {
    pub fn new(buf: DevBuf, dtype: DType, len: usize) -> Self {
        CudaStorage {
            buf,
            dtype,
            len,
            host: OnceLock::new(),
            cast: Mutex::new(None),
            uid: NEXT_UID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        self.buf.gpu()
    }

    pub fn ptr(&self) -> u64 {
        self.buf.ptr()
    }

    /// Uploads f32 host values as `dtype` (bf16 rounds to nearest even on the host).
    pub fn upload(ordinal: usize, data: &[f32], dtype: DType) -> Result<Self> {
        let g = gpu(ordinal)?;
        let buf = match dtype {
            DType::F32 => g.upload(data)?,
            DType::Bf16 => g.upload(&crate::io::elements::to_bf16(data))?,
        };
        Ok(CudaStorage::new(buf, dtype, data.len()))
    }

    /// The values as f32 on the host (downloaded once, then cached).
    pub fn host(&self) -> Result<&[f32]> {
        if let Some(h) = self.host.get() {
            return Ok(h);
        }
        let g = self.gpu();
        let v = match self.dtype {
            DType::F32 => g.download::<f32>(&self.buf, self.len)?,
            DType::Bf16 => {
                crate::io::elements::from_bf16(&g.download::<half::bf16>(&self.buf, self.len)?)
            }
        };
        Ok(self.host.get_or_init(|| v))
    }

    /// A device-side copy.
    pub fn try_clone(&self) -> Result<Self> {
        let g = self.gpu().clone();
        let bytes = self.len * self.dtype.size();
        let buf = g.alloc(bytes.max(1))?;
        g.bind()?;
        if bytes > 0 {
            // SAFETY: both buffers hold >= bytes bytes; async on the GPU's stream.
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(buf.ptr(), self.ptr(), bytes, g.stream())
            }
            .map_err(|e| crate::Error::Device {
                device: format!("cuda:{}", g.ordinal),
                msg: format!("cuMemcpyDtoD: {e:?}"),
            })?;
        }
        Ok(CudaStorage::new(buf, self.dtype, self.len))
    }
}
