//! Element-wise and small ops: GELU, ReLU, add, scale, reshape, linear, softmax over
//! channels, input normalisation.

use crate::autograd::{Tape, Var};
use crate::cpu::{conv::sum_rows, elementwise as ew, gemm::matmul, gemm::MatRef, softmax_xent};
use crate::cuda::ops as cu;
use crate::tensor::Tensor;
use crate::{Error, Result};

use super::gpu_ctx;

/// Activation of the backbone (and of the fused conv / BN + activation ops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    Gelu,
    Relu,
}

impl std::str::FromStr for Act {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "gelu" => Ok(Act::Gelu),
            "relu" => Ok(Act::Relu),
            _ => Err(format!("'{s}' is not an activation: expected gelu or relu")),
        }
    }
}

/// Exact (erf) GELU; a failed GPU launch is an error naming the op and shape.
pub fn gelu(t: &mut Tape, x: Var) -> Result<Var> {
    if t.value(x).is_cuda() {
        let shape = t.shape(x).to_vec();
        let y = gpu_ctx("gelu", &shape, cu::act_fwd("gelu", t.value(x)))?;
        return Ok(t.record(y, &[x], move |c| {
            let dx = gpu_ctx(
                "gelu backward",
                &shape,
                cu::act_bwd("gelu", c.inputs[0], c.dout),
            )?;
            Ok(vec![Some(dx)])
        }));
    }
    let xv = t.value(x);
    let y = Tensor::new_unchecked(xv.shape(), ew::gelu_forward(xv.data()));
    Ok(t.record(y, &[x], |c| {
        let dx = ew::gelu_backward(c.inputs[0].data(), c.dout.data());
        Ok(vec![Some(Tensor::new_unchecked(c.inputs[0].shape(), dx))])
    }))
}

/// ReLU; a failed GPU launch is an error naming the op and shape.
pub fn relu(t: &mut Tape, x: Var) -> Result<Var> {
    if t.value(x).is_cuda() {
        let shape = t.shape(x).to_vec();
        let y = gpu_ctx("relu", &shape, cu::act_fwd("relu", t.value(x)))?;
        return Ok(t.record(y, &[x], move |c| {
            let dx = gpu_ctx(
                "relu backward",
                &shape,
                cu::act_bwd("relu", c.inputs[0], c.dout),
            )?;
            Ok(vec![Some(dx)])
        }));
    }
    let xv = t.value(x);
    let y = Tensor::new_unchecked(xv.shape(), ew::relu_forward(xv.data()));
    Ok(t.record(y, &[x], |c| {
        let dx = ew::relu_backward(c.inputs[0].data(), c.dout.data());
        Ok(vec![Some(Tensor::new_unchecked(c.inputs[0].shape(), dx))])
    }))
}

/// `a + b`, same shapes.
pub fn add(t: &mut Tape, a: Var, b: Var) -> Result<Var> {
    let (av, bv) = (t.value(a), t.value(b));
    if av.shape() != bv.shape() {
        return Err(Error::shape(
            "add",
            format!("shapes differ: {:?} vs {:?}", av.shape(), bv.shape()),
        ));
    }
    let y = if av.is_cuda() {
        gpu_ctx("add", av.shape(), cu::axpby(av, bv, 1.0, 1.0))?
    } else {
        Tensor::new_unchecked(av.shape(), ew::zip_map(av.data(), bv.data(), |x, y| x + y))
    };
    Ok(t.record(y, &[a, b], |c| {
        Ok(vec![
            c.needs[0].then(|| c.dout.clone()),
            c.needs[1].then(|| c.dout.clone()),
        ])
    }))
}

/// `k * x`; a failed GPU launch is an error naming the op and shape.
pub fn scale(t: &mut Tape, x: Var, k: f32) -> Result<Var> {
    if t.value(x).is_cuda() {
        let shape = t.shape(x).to_vec();
        let y = gpu_ctx("scale", &shape, cu::scale(t.value(x), k))?;
        return Ok(t.record(y, &[x], move |c| {
            let dx = gpu_ctx("scale backward", &shape, cu::scale(c.dout, k))?;
            Ok(vec![Some(dx)])
        }));
    }
    let y = t.value(x).map(|v| v * k);
    Ok(t.record(y, &[x], move |c| Ok(vec![Some(c.dout.map(|v| v * k))])))
}

/// Same values, new shape (e.g. flatten `[N,1,1,C]` -> `[N,C]`).
pub fn reshape(t: &mut Tape, x: Var, shape: &[usize]) -> Result<Var> {
    let y = t.value(x).reshape(shape)?;
    let in_shape = t.shape(x).to_vec();
    Ok(t.record(y, &[x], move |c| Ok(vec![Some(c.dout.reshape(&in_shape)?)])))
}

/// `y[N, O] = x[N, I] w[O, I]^T + b[O]` (PyTorch `nn.Linear` layout).
pub fn linear(t: &mut Tape, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
    let (xs, ws) = (t.shape(x).to_vec(), t.shape(w).to_vec());
    let (n, i, o) = match (xs.as_slice(), ws.as_slice()) {
        ([n, i], [o, i2]) if i == i2 => (*n, *i, *o),
        _ => {
            return Err(Error::shape(
                "linear",
                format!("input {xs:?} and weight {ws:?} do not fit: expected [N, I] and [O, I]"),
            ))
        }
    };
    if let Some(b) = b {
        t.value(b).expect_shape("linear (bias)", &[o])?;
    }
    if t.value(x).is_cuda() {
        return gpu_ctx("linear", &xs, linear_cuda(t, x, w, b, (n, i, o)));
    }
    let mut y = vec![0.0f32; n * o];
    matmul(
        MatRef::new(t.value(x).data(), n, i),
        MatRef::t(t.value(w).data(), i, o),
        &mut y,
        false,
    );
    if let Some(b) = b {
        let bv = t.value(b).data();
        for row in y.chunks_mut(o) {
            for (a, bb) in row.iter_mut().zip(bv) {
                *a += *bb;
            }
        }
    }
    let inputs: Vec<Var> = [Some(x), Some(w), b].into_iter().flatten().collect();
    Ok(
        t.record(Tensor::new_unchecked(&[n, o], y), &inputs, move |c| {
            let (xv, wv, dy) = (c.inputs[0].data(), c.inputs[1].data(), c.dout.data());
            let dx = c.needs[0].then(|| {
                let mut dx = vec![0.0f32; n * i];
                matmul(MatRef::new(dy, n, o), MatRef::new(wv, o, i), &mut dx, false);
                Tensor::new_unchecked(&[n, i], dx)
            });
            let dw = c.needs[1].then(|| {
                let mut dw = vec![0.0f32; o * i];
                matmul(MatRef::t(dy, o, n), MatRef::new(xv, n, i), &mut dw, false);
                Tensor::new_unchecked(&[o, i], dw)
            });
            let mut out = vec![dx, dw];
            if c.inputs.len() == 3 {
                out.push(c.needs[2].then(|| Tensor::new_unchecked(&[o], sum_rows(dy, o))));
            }
            Ok(out)
        }),
    )
}

/// `linear` on the GPU: cuBLAS GEMMs (y = x w^T; dx = dy w; dw = dy^T x), bias by a rank-1
/// GEMM with a ones vector (forward) and column sums (backward).
fn linear_cuda(
    t: &mut Tape,
    x: Var,
    w: Var,
    b: Option<Var>,
    (n, i, o): (usize, usize, usize),
) -> Result<Var> {
    use crate::cuda::blas::{gemm, Mat};
    let xv = t.value(x).clone();
    let xs = cu::st("linear", &xv)?;
    let wv = cu::weight_as(t.value(w), xs, xs.dtype)?;
    let ws = cu::st("linear", &wv)?;
    let g = xs.gpu().clone();
    let y = cu::empty(&g, n * o, xs.dtype)?;
    gemm(
        &g,
        Mat {
            s: xs,
            rows: n,
            cols: i,
            t: false,
        },
        Mat {
            s: ws,
            rows: i,
            cols: o,
            t: true,
        },
        &y,
        false,
    )?;
    if let Some(b) = b {
        let bv = cu::weight_as(t.value(b), xs, xs.dtype)?;
        let ones = cu::on_gpu_as(&Tensor::full(&[n], 1.0), xs, xs.dtype)?;
        let (bs, os) = (cu::st("linear", &bv)?, cu::st("linear", &ones)?);
        gemm(
            &g,
            Mat {
                s: os,
                rows: n,
                cols: 1,
                t: false,
            },
            Mat {
                s: bs,
                rows: 1,
                cols: o,
                t: false,
            },
            &y,
            true,
        )?;
    }
    let inputs: Vec<Var> = [Some(x), Some(w), b].into_iter().flatten().collect();
    Ok(t.record(Tensor::from_cuda(&[n, o], y), &inputs, move |c| {
        let xs = cu::st("linear backward", c.inputs[0])?;
        let dy = cu::on_gpu_as(c.dout, xs, xs.dtype)?;
        let ds = cu::st("linear backward", &dy)?;
        let g = xs.gpu().clone();
        let dx = if c.needs[0] {
            let wv = cu::weight_as(c.inputs[1], xs, xs.dtype)?;
            let dx = cu::empty(&g, n * i, xs.dtype)?;
            gemm(
                &g,
                Mat {
                    s: ds,
                    rows: n,
                    cols: o,
                    t: false,
                },
                Mat {
                    s: cu::st("linear", &wv)?,
                    rows: o,
                    cols: i,
                    t: false,
                },
                &dx,
                false,
            )?;
            Some(Tensor::from_cuda(&[n, i], dx))
        } else {
            None
        };
        let dw = if c.needs[1] {
            let dw = cu::empty(&g, o * i, xs.dtype)?;
            gemm(
                &g,
                Mat {
                    s: ds,
                    rows: o,
                    cols: n,
                    t: true,
                },
                Mat {
                    s: xs,
                    rows: n,
                    cols: i,
                    t: false,
                },
                &dw,
                false,
            )?;
            // Weight gradients come back in the weight's own dtype (f32 master weights).
            Some(cu::to_dtype(
                Tensor::from_cuda(&[o, i], dw),
                cu::dtype_of(c.inputs[1]),
            )?)
        } else {
            None
        };
        let mut out = vec![dx, dw];
        if c.inputs.len() == 3 {
            out.push(if c.needs[2] {
                Some(cu::col_sums(&dy, o)?)
            } else {
                None
            });
        }
        Ok(out)
    }))
}

/// Softmax over the last (channel) axis; a failed GPU launch is an error naming the op and
/// shape.
pub fn softmax_channels(t: &mut Tape, x: Var) -> Result<Var> {
    let xv = t.value(x);
    let cols = *xv.shape().last().unwrap_or(&1);
    if xv.is_cuda() {
        let shape = xv.shape().to_vec();
        let y = gpu_ctx("softmax", &shape, cu::softmax_rows(xv, cols, false))?;
        return Ok(t.record(y, &[x], move |c| {
            let dz = gpu_ctx(
                "softmax backward",
                &shape,
                cu::softmax_bwd_rows(c.output, c.dout, cols),
            )?;
            Ok(vec![Some(dz)])
        }));
    }
    let y = Tensor::new_unchecked(xv.shape(), softmax_xent::softmax(xv.data(), cols));
    Ok(t.record(y, &[x], move |c| {
        let dz = softmax_xent::softmax_backward(c.output.data(), c.dout.data(), cols);
        Ok(vec![Some(Tensor::new_unchecked(c.output.shape(), dz))])
    }))
}

/// ImageNet mean/std (RGB), applied inside the model to inputs in [0, 1].
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `(x - mean_c) / std_c` over the channel axis of an NHWC image batch.
pub fn normalize_input(t: &mut Tape, x: Var, mean: [f32; 3], std: [f32; 3]) -> Result<Var> {
    normalize_input_as(t, x, mean, std, crate::cuda::DType::F32)
}

/// `normalize_input` whose GPU output is stored as `out` (bf16: the start of the mixed-
/// precision path; one fused pass). The input gradient is f32 whatever `out` is. The CPU
/// ignores `out` (always f32).
pub fn normalize_input_as(
    t: &mut Tape,
    x: Var,
    mean: [f32; 3],
    std: [f32; 3],
    out: crate::cuda::DType,
) -> Result<Var> {
    let [_, _, _, ch] = super::nhwc("normalize_input", t.shape(x))?;
    if ch != 3 {
        return Err(Error::shape(
            "normalize_input",
            format!("expected 3 channels, got {:?}", t.shape(x)),
        ));
    }
    let xv = t.value(x);
    if xv.is_cuda() {
        let y = gpu_ctx(
            "normalize_input",
            xv.shape(),
            cu::normalize3(xv, mean, std, out),
        )?;
        return Ok(t.record(y, &[x], move |c| {
            Ok(vec![Some(cu::normalize3_bwd(c.dout, std)?)])
        }));
    }
    let mut y = xv.data().to_vec();
    for px in y.chunks_mut(3) {
        for k in 0..3 {
            px[k] = (px[k] - mean[k]) / std[k];
        }
    }
    let y = Tensor::new_unchecked(xv.shape(), y);
    Ok(t.record(y, &[x], move |c| {
        let mut dx = c.dout.data().to_vec();
        for px in dx.chunks_mut(3) {
            for k in 0..3 {
                px[k] /= std[k];
            }
        }
        Ok(vec![Some(Tensor::new_unchecked(c.dout.shape(), dx))])
    }))
}
