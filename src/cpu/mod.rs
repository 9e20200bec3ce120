//! CPU reference kernels: plain loops on slices, f32, rayon on outer loops only.
//! Each file is one concern; the CUDA twin lives in `kernels/<same name>.cu`.

pub mod batch_norm;
pub mod conv;
pub mod elementwise;
pub mod focal_loss;
pub mod gemm;
pub mod pool;
pub mod resize;
pub mod softmax_xent;
