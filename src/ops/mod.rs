//! Differentiable ops: one entry point per op. Each validates shapes (errors name the op and
//! both shapes), dispatches to the device kernel, and records its backward rule on the tape.
//! Activations are NHWC; weights use the engine layouts documented per op.

pub mod basic;
pub mod conv;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod resize;

pub use basic::{add, gelu, linear, normalize_input, relu, reshape, scale, softmax_channels, Act};
pub use conv::{conv2d, conv_bn_act_eval, Conv2dParams};
pub use loss::{cross_entropy_smooth, focal_loss, soft_cross_entropy};
pub use norm::{batch_norm, batch_norm_act, BatchNormMode};
pub use pool::{adaptive_avg_pool2d, max_pool2d};
pub use resize::resize_bilinear;

use crate::{Error, Result};

/// `[N, H, W, C]` of a rank-4 activation, or a shape error naming `op`.
pub(crate) fn nhwc(op: &'static str, shape: &[usize]) -> Result<[usize; 4]> {
    match shape {
        [n, h, w, c] => Ok([*n, *h, *w, *c]),
        _ => Err(Error::shape(
            op,
            format!("expected an NHWC activation [N, H, W, C], got shape {shape:?}"),
        )),
    }
}

/// Prefixes a GPU error with the op and its input shape, so a failed launch or allocation
/// says where it happened (`conv2d on input [128, 56, 56, 64] failed: ...`).
pub(crate) fn gpu_ctx<T>(op: &str, shape: &[usize], r: Result<T>) -> Result<T> {
    r.map_err(|e| Error::Device {
        device: "cuda".into(),
        msg: format!("{op} on input {shape:?} failed: {e}"),
    })
}
