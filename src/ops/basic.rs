//! Element-wise and small ops: GELU, ReLU, add, scale, reshape, linear, softmax over
//! channels, input normalisation.

use crate::autograd::{Tape, Var};
use crate::cpu::{conv::sum_rows, elementwise as ew, gemm::matmul, gemm::MatRef, softmax_xent};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Exact (erf) GELU.
pub fn gelu(t: &mut Tape, x: Var) -> Var {
    let xv = t.value(x);
    let y = Tensor::new_unchecked(xv.shape(), ew::gelu_forward(xv.data()));
    t.record(y, &[x], |c| {
        let dx = ew::gelu_backward(c.inputs[0].data(), c.dout.data());
        Ok(vec![Some(Tensor::new_unchecked(c.inputs[0].shape(), dx))])
    })
}

pub fn relu(t: &mut Tape, x: Var) -> Var {
    let xv = t.value(x);
    let y = Tensor::new_unchecked(xv.shape(), ew::relu_forward(xv.data()));
    t.record(y, &[x], |c| {
        let dx = ew::relu_backward(c.inputs[0].data(), c.dout.data());
        Ok(vec![Some(Tensor::new_unchecked(c.inputs[0].shape(), dx))])
    })
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
    let y = Tensor::new_unchecked(av.shape(), ew::zip_map(av.data(), bv.data(), |x, y| x + y));
    Ok(t.record(y, &[a, b], |c| {
        Ok(vec![
            c.needs[0].then(|| c.dout.clone()),
            c.needs[1].then(|| c.dout.clone()),
        ])
    }))
}

/// `k * x`.
pub fn scale(t: &mut Tape, x: Var, k: f32) -> Var {
    let y = t.value(x).map(|v| v * k);
    t.record(y, &[x], move |c| Ok(vec![Some(c.dout.map(|v| v * k))]))
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

/// Softmax over the last (channel) axis.
pub fn softmax_channels(t: &mut Tape, x: Var) -> Var {
    let xv = t.value(x);
    let cols = *xv.shape().last().unwrap_or(&1);
    let y = Tensor::new_unchecked(xv.shape(), softmax_xent::softmax(xv.data(), cols));
    t.record(y, &[x], move |c| {
        let dz = softmax_xent::softmax_backward(c.output.data(), c.dout.data(), cols);
        Ok(vec![Some(Tensor::new_unchecked(c.output.shape(), dz))])
    })
}

/// ImageNet mean/std (RGB), applied inside the model to inputs in [0, 1].
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `(x - mean_c) / std_c` over the channel axis of an NHWC image batch.
pub fn normalize_input(t: &mut Tape, x: Var, mean: [f32; 3], std: [f32; 3]) -> Result<Var> {
    let [_, _, _, ch] = super::nhwc("normalize_input", t.shape(x))?;
    if ch != 3 {
        return Err(Error::shape(
            "normalize_input",
            format!("expected 3 channels, got {:?}", t.shape(x)),
        ));
    }
    let xv = t.value(x);
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
