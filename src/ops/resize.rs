//! Bilinear resize, `align_corners=False` (PyTorch semantics), NHWC.

use super::nhwc;
use crate::autograd::{Tape, Var};
use crate::cpu::resize as k;
use crate::tensor::Tensor;
use crate::{Error, Result};

pub fn resize_bilinear(t: &mut Tape, x: Var, out_h: usize, out_w: usize) -> Result<Var> {
    let [n, h, w, c] = nhwc("resize_bilinear", t.shape(x))?;
    if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
        return Err(Error::shape(
            "resize_bilinear",
            format!("cannot resize {:?} to {out_h}x{out_w}", t.shape(x)),
        ));
    }
    if t.value(x).is_cuda() {
        let y = super::gpu_ctx(
            "resize_bilinear",
            t.shape(x),
            crate::cuda::ops::bilinear(t.value(x), true, n, h, w, c, out_h, out_w),
        )?;
        return Ok(t.record(y, &[x], move |ctx| {
            let dx = crate::cuda::ops::bilinear(ctx.dout, false, n, h, w, c, out_h, out_w)?;
            Ok(vec![Some(dx)])
        }));
    }
    let y = k::bilinear_forward(t.value(x).data(), n, h, w, c, out_h, out_w);
    let y = Tensor::new_unchecked(&[n, out_h, out_w, c], y);
    Ok(t.record(y, &[x], move |ctx| {
        let dx = k::bilinear_backward(ctx.dout.data(), n, h, w, c, out_h, out_w);
        Ok(vec![Some(Tensor::new_unchecked(&[n, h, w, c], dx))])
    }))
}
