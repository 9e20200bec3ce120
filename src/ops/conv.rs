//! 2-D convolution. Input NHWC `[N, H, W, C]`, weight OHWI `[O, KH, KW, C/groups]`
//! (PyTorch's OIHW is converted at load time), optional bias `[O]`, output `[N, OH, OW, O]`.

use super::nhwc;
use crate::autograd::{Tape, Var};
use crate::cpu::conv::{self as k, ConvGeom};
use crate::tensor::Tensor;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }
}

impl Conv2dParams {
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dParams {
            stride,
            padding,
            ..Default::default()
        }
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = d;
        self
    }
}

pub(crate) fn geometry(xs: &[usize], ws: &[usize], p: Conv2dParams) -> Result<ConvGeom> {
    let [n, h, w, c] = nhwc("conv2d", xs)?;
    let [o, kh, kw, cg] = match ws {
        [o, kh, kw, cg] => [*o, *kh, *kw, *cg],
        _ => {
            return Err(Error::shape(
                "conv2d",
                format!("weight must be [O, KH, KW, C/groups], got {ws:?}"),
            ))
        }
    };
    if p.groups == 0 || p.stride == 0 || p.dilation == 0 {
        return Err(Error::shape(
            "conv2d",
            format!("stride, dilation and groups must be >= 1, got {p:?}"),
        ));
    }
    if c != cg * p.groups || o % p.groups != 0 {
        return Err(Error::shape(
            "conv2d",
            format!(
                "input {xs:?} (C = {c}) and weight {ws:?} do not fit with groups = {}: need C = {} and O divisible by groups",
                p.groups,
                cg * p.groups
            ),
        ));
    }
    let span = |size: usize, kk: usize| -> Option<usize> {
        let eff = p.dilation * (kk - 1) + 1;
        (size + 2 * p.padding)
            .checked_sub(eff)
            .map(|v| v / p.stride + 1)
    };
    let (Some(oh), Some(ow)) = (span(h, kh), span(w, kw)) else {
        return Err(Error::shape(
            "conv2d",
            format!(
                "kernel {kh}x{kw} (dilation {}) larger than padded input {xs:?}",
                p.dilation
            ),
        ));
    };
    Ok(ConvGeom {
        n,
        h,
        w,
        c,
        o,
        kh,
        kw,
        stride: p.stride,
        pad: p.padding,
        dilation: p.dilation,
        groups: p.groups,
        oh,
        ow,
    })
}

pub fn conv2d(t: &mut Tape, x: Var, w: Var, b: Option<Var>, p: Conv2dParams) -> Result<Var> {
    let g = geometry(t.shape(x), t.shape(w), p)?;
    if let Some(b) = b {
        t.value(b).expect_shape("conv2d (bias)", &[g.o])?;
    }
    if t.value(x).is_cuda() {
        let shape = t.shape(x).to_vec();
        return super::gpu_ctx("conv2d", &shape, conv2d_cuda(t, x, w, b, g));
    }
    let y = k::conv2d_forward(
        &g,
        t.value(x).data(),
        t.value(w).data(),
        b.map(|b| t.value(b).data()),
    );
    let inputs: Vec<Var> = [Some(x), Some(w), b].into_iter().flatten().collect();
    let y = Tensor::new_unchecked(&[g.n, g.oh, g.ow, g.o], y);
    Ok(t.record(y, &inputs, move |c| {
        let dy = c.dout.data();
        let dx = c.needs[0].then(|| {
            let dx = k::conv2d_backward_input(&g, dy, c.inputs[1].data());
            Tensor::new_unchecked(c.inputs[0].shape(), dx)
        });
        let dw = c.needs[1].then(|| {
            let dw = k::conv2d_backward_weight(&g, c.inputs[0].data(), dy);
            Tensor::new_unchecked(c.inputs[1].shape(), dw)
        });
        let mut out = vec![dx, dw];
        if c.inputs.len() == 3 {
            out.push(
                c.needs[2].then(|| Tensor::new_unchecked(&[g.o], k::conv2d_backward_bias(&g, dy))),
            );
        }
        Ok(out)
    }))
}

/// `conv2d` on the GPU: cuDNN forward / backward-data / backward-filter; the bias is a rank-1
/// cuBLAS update (ones[M] x b[O]) forward and a column sum backward.
fn conv2d_cuda(t: &mut Tape, x: Var, w: Var, b: Option<Var>, g: ConvGeom) -> Result<Var> {
    use crate::cuda::blas::{gemm, Mat};
    use crate::cuda::dnn::{conv, Pass};
    use crate::cuda::ops as cu;
    let xv = t.value(x).clone();
    let xs = cu::st("conv2d", &xv)?;
    let wv = cu::weight_as(t.value(w), xs, xs.dtype)?;
    let gpu = xs.gpu().clone();
    let m = g.n * g.oh * g.ow;
    let y = cu::empty(&gpu, m * g.o, xs.dtype)?;
    conv(&gpu, &g, Pass::Forward, xs, cu::st("conv2d", &wv)?, &y)?;
    if let Some(b) = b {
        let bv = cu::weight_as(t.value(b), xs, xs.dtype)?;
        let ones = cu::on_gpu_as(&Tensor::full(&[m], 1.0), xs, xs.dtype)?;
        let (bs, os) = (cu::st("conv2d", &bv)?, cu::st("conv2d", &ones)?);
        gemm(
            &gpu,
            Mat {
                s: os,
                rows: m,
                cols: 1,
                t: false,
            },
            Mat {
                s: bs,
                rows: 1,
                cols: g.o,
                t: false,
            },
            &y,
            true,
        )?;
    }
    let inputs: Vec<Var> = [Some(x), Some(w), b].into_iter().flatten().collect();
    let y = Tensor::from_cuda(&[g.n, g.oh, g.ow, g.o], y);
    Ok(t.record(y, &inputs, move |c| {
        let xs = cu::st("conv2d backward", c.inputs[0])?;
        let dy = cu::on_gpu_as(c.dout, xs, xs.dtype)?;
        let ds = cu::st("conv2d backward", &dy)?;
        let gpu = xs.gpu().clone();
        let dx = if c.needs[0] {
            let wv = cu::weight_as(c.inputs[1], xs, xs.dtype)?;
            let dx = cu::empty(&gpu, xs.len, xs.dtype)?;
            conv(
                &gpu,
                &g,
                Pass::BackwardData,
                ds,
                cu::st("conv2d", &wv)?,
                &dx,
            )?;
            Some(Tensor::from_cuda(c.inputs[0].shape(), dx))
        } else {
            None
        };
        let dw = if c.needs[1] {
            let n = c.inputs[1].numel();
            let dw = cu::empty(&gpu, n, xs.dtype)?;
            conv(&gpu, &g, Pass::BackwardFilter, xs, ds, &dw)?;
            // Weight gradients come back in the weight's own dtype (f32 master weights).
            Some(cu::to_dtype(
                Tensor::from_cuda(c.inputs[1].shape(), dw),
                cu::dtype_of(c.inputs[1]),
            )?)
        } else {
            None
        };
        let mut out = vec![dx, dw];
        if c.inputs.len() == 3 {
            out.push(if c.needs[2] {
                Some(cu::col_sums(&dy, g.o)?)
            } else {
                None
            });
        }
        Ok(out)
    }))
}

/// Evaluation-mode `act(batch_norm(conv2d(x, w)))` with BN running statistics folded into the
/// convolution, GPU only (the eval / attack path; `nn::layers::conv_bn_act` falls back to the
/// plain composition on the CPU, in training, and whenever a parameter needs a gradient).
/// One of two implementations per shape (`cuda::fused`): the fused kernel or cuDNN + an
/// epilogue. Backward gives the input gradient only: `dx = conv^T(act'(pre) * dy, wf)`.
/// `key` names the layer (the fold cache's key).
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_act_eval(
    t: &mut Tape,
    x: Var,
    w: Var,
    gamma: Var,
    beta: Var,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
    act: super::Act,
    p: Conv2dParams,
    key: &str,
) -> Result<Var> {
    use crate::cuda::dnn::{conv, Pass};
    use crate::cuda::fused;
    use crate::cuda::ops as cu;
    let g = geometry(t.shape(x), t.shape(w), p)?;
    for (what, v) in [
        ("weight", t.value(gamma).shape()),
        ("bias", t.value(beta).shape()),
        ("running_mean", running_mean.shape()),
        ("running_var", running_var.shape()),
    ] {
        if v != [g.o] {
            return Err(Error::shape(
                "conv_bn_act",
                format!("BN {what} has shape {v:?}, expected [{}]", g.o),
            ));
        }
    }
    if [w, gamma, beta].iter().any(|v| t.requires_grad(*v)) {
        return Err(Error::shape(
            "conv_bn_act",
            "the folded eval path gives no parameter gradients; use conv2d + batch_norm",
        ));
    }
    let code = match act {
        super::Act::Gelu => 1,
        super::Act::Relu => 2,
    };
    let kind = match act {
        super::Act::Gelu => "gelu",
        super::Act::Relu => "relu",
    };
    let shape = t.shape(x).to_vec();
    let want_pre = t.requires_grad(x);
    let r = (|| -> Result<(Tensor, Option<Tensor>, std::sync::Arc<fused::Folded>)> {
        let xv = t.value(x);
        let xs = cu::st("conv_bn_act", xv)?;
        let f = fused::folded(
            key,
            xs,
            t.value(w),
            t.value(gamma),
            t.value(beta),
            running_mean,
            running_var,
            eps,
            xs.dtype,
        )?;
        let imp = fused::choose(xs, &f, &g, code)?;
        let (y, pre) = fused::run_impl(imp, xs, &f, &g, code, want_pre)?;
        let out = [g.n, g.oh, g.ow, g.o];
        Ok((
            Tensor::from_cuda(&out, y),
            pre.map(|s| Tensor::from_cuda(&out, s)),
            f,
        ))
    })();
    let (y, pre, f) = super::gpu_ctx("conv_bn_act", &shape, r)?;
    Ok(t.record(y, &[x, w, gamma, beta], move |c| {
        let pre = pre.as_ref().ok_or_else(|| {
            Error::shape(
                "conv_bn_act backward",
                "no pre-activation kept (no gradient was expected)",
            )
        })?;
        let dpre = cu::act_bwd(kind, pre, c.dout)?;
        let xs = cu::st("conv_bn_act backward", c.inputs[0])?;
        let gpu = xs.gpu().clone();
        let dx = cu::empty(&gpu, xs.len, xs.dtype)?;
        conv(
            &gpu,
            &g,
            Pass::BackwardData,
            cu::st("conv_bn_act backward", &dpre)?,
            cu::st("conv_bn_act backward", &f.w_act)?,
            &dx,
        )?;
        Ok(vec![
            Some(Tensor::from_cuda(c.inputs[0].shape(), dx)),
            None,
            None,
            None,
        ])
    }))
}
