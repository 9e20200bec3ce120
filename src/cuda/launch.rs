//! Kernel argument packing and launch-shape helpers shared by the launchers.

use std::ffi::c_void;

/// Kernel arguments, each stored in its own 8-byte-aligned slot so the driver can copy it by
/// pointer. Values must be pushed in the order and with the exact types of the C signature.
#[derive(Default)]
pub struct Args {
    slots: Vec<Vec<u64>>,
}

impl Args {
    pub fn new() -> Self {
        Args::default()
    }
    /// Pushes one argument by value (a `u64` device pointer, `u32`, `f32`, a `#[repr(C)]`
    /// struct). `Pod` guarantees the value is plain bytes without padding, so copying those
    /// bytes is exactly what the kernel's by-value parameter expects.
    pub fn push<T: bytemuck::Pod>(mut self, v: T) -> Self {
        let bytes = bytemuck::bytes_of(&v);
        let mut slot = vec![0u64; bytes.len().div_ceil(8).max(1)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut slot)[..bytes.len()].copy_from_slice(bytes);
        self.slots.push(slot);
        self
    }
    /// Pointers to the argument slots, for cuLaunchKernel.
    pub fn ptrs(&mut self) -> Vec<*mut c_void> {
        self.slots
            .iter_mut()
            .map(|s| s.as_mut_ptr() as *mut c_void)
            .collect()
    }
}

/// Blocks of 256 threads for a grid-stride loop over `n` elements (capped: the loop covers
/// the rest; 65536 blocks keep every SM of an H200 busy many times over).
pub fn grid_for(n: usize) -> u32 {
    n.div_ceil(256).clamp(1, 1 << 16) as u32
}
