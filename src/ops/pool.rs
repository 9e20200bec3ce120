//! Max pooling and adaptive average pooling on NHWC activations.

use super::nhwc;
use crate::autograd::{Tape, Var};
use crate::cpu::pool as k;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::sync::Arc;

/// Max pool with a square `kernel`, `stride`, `padding` (ResNet stem: 3, 2, 1).
pub fn max_pool2d(
    t: &mut Tape,
    x: Var,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Var> {
    let [n, h, w, c] = nhwc("max_pool2d", t.shape(x))?;
    if kernel == 0 || stride == 0 || h + 2 * padding < kernel || w + 2 * padding < kernel {
        return Err(Error::shape(
            "max_pool2d",
            format!(
                "kernel {kernel} stride {stride} padding {padding} does not fit input {:?}",
                t.shape(x)
            ),
        ));
    }
    if 2 * padding > kernel {
        return Err(Error::shape(
            "max_pool2d",
            format!("padding {padding} must be at most half the kernel {kernel}"),
        ));
    }
    if t.value(x).is_cuda() {
        let (oh, ow) = (
            (h + 2 * padding - kernel) / stride + 1,
            (w + 2 * padding - kernel) / stride + 1,
        );
        let (y, arg) = super::gpu_ctx(
            "max_pool2d",
            t.shape(x),
            crate::cuda::ops::maxpool_fwd(t.value(x), n, h, w, c, kernel, stride, padding, oh, ow),
        )?;
        let arg = Arc::new(arg);
        return Ok(t.record(y, &[x], move |ctx| {
            let dx = crate::cuda::ops::maxpool_bwd(
                ctx.dout, &arg, n, h, w, c, kernel, stride, padding, oh, ow,
            )?;
            Ok(vec![Some(dx)])
        }));
    }
    let (y, arg, oh, ow) =
        k::max_pool_forward(t.value(x).data(), n, h, w, c, kernel, stride, padding);
    let arg = Arc::new(arg);
    let y = Tensor::new_unchecked(&[n, oh, ow, c], y);
    Ok(t.record(y, &[x], move |ctx| {
        let dx = k::max_pool_backward(ctx.dout.data(), &arg, n * h * w * c, n);
        Ok(vec![Some(Tensor::new_unchecked(&[n, h, w, c], dx))])
    }))
}

/// Adaptive average pool to `out_h x out_w` with PyTorch's window rule.
pub fn adaptive_avg_pool2d(t: &mut Tape, x: Var, out_h: usize, out_w: usize) -> Result<Var> {
    let [n, h, w, c] = nhwc("adaptive_avg_pool2d", t.shape(x))?;
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        return Err(Error::shape(
            "adaptive_avg_pool2d",
            format!("cannot pool {:?} to {out_h}x{out_w}", t.shape(x)),
        ));
    }
    if t.value(x).is_cuda() {
        let y = super::gpu_ctx(
            "adaptive_avg_pool2d",
            t.shape(x),
            crate::cuda::ops::avgpool(t.value(x), true, n, h, w, c, out_h, out_w),
        )?;
        return Ok(t.record(y, &[x], move |ctx| {
            let dx = crate::cuda::ops::avgpool(ctx.dout, false, n, h, w, c, out_h, out_w)?;
            Ok(vec![Some(dx)])
        }));
    }
    let y = k::adaptive_avg_pool_forward(t.value(x).data(), n, h, w, c, out_h, out_w);
    let y = Tensor::new_unchecked(&[n, out_h, out_w, c], y);
    Ok(t.record(y, &[x], move |ctx| {
        let dx = k::adaptive_avg_pool_backward(ctx.dout.data(), n, h, w, c, out_h, out_w);
        Ok(vec![Some(Tensor::new_unchecked(&[n, h, w, c], dx))])
    }))
}
