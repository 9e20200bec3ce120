//! SGD with momentum and Nesterov, PyTorch `torch.optim.SGD` semantics (dampening 0), as timm's
//! `create_optimizer_v2(opt="sgd")` builds it: two parameter groups, weight decay on tensors
//! with more than one dimension (conv and linear weights) and none on biases and BN parameters
//! (timm `param_groups_weight_decay`: `ndim <= 1 or name.endswith(".bias")` -> no decay).
//!
//! Per parameter `p` with gradient `g` (PyTorch's update, f32, in this order):
//! ```text
//! g = g + wd * p                       (decay group only)
//! buf = g                (first step)  |  buf = momentum * buf + g
//! g = g + momentum * buf (Nesterov)    |  g = buf (plain momentum)
//! p = p - lr * g
//! ```
//! A parameter without a gradient in a step (frozen, or not on the loss path) is left
//! untouched: no decay, no momentum update (PyTorch skips `p.grad is None`).

use crate::nn::{Kind, ParamStore};
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// The optimiser state: one momentum buffer per parameter that has had a gradient, in the
/// engine layout, on the device of its parameter (host for a CPU run, GPU for a CUDA run).
#[derive(Clone, Debug, Default)]
pub struct Sgd {
    pub cfg: Option<SgdConfig>,
    pub buffers: BTreeMap<String, Tensor>,
}

/// timm's rule: weight decay applies to tensors of rank > 1 that are not biases.
pub fn decays(name: &str, torch_rank: usize) -> bool {
    torch_rank > 1 && !name.ends_with(".bias")
}

impl Sgd {
    pub fn new(cfg: SgdConfig) -> Sgd {
        Sgd {
            cfg: Some(cfg),
            buffers: BTreeMap::new(),
        }
    }

    fn config(&self) -> SgdConfig {
        self.cfg.unwrap_or(SgdConfig {
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: true,
        })
    }

    /// Moves every momentum buffer to `device` (f32 on a GPU).
    pub fn to_device(&mut self, device: crate::device::Device) -> Result<()> {
        for b in self.buffers.values_mut() {
            *b = b.to_device(device)?;
        }
        Ok(())
    }

    /// One update with learning rate `lr` from `grads` (engine layout, by parameter name).
    /// A parameter that lives on a GPU is updated there (`cuda::ops::sgd_nesterov`, the same
    /// arithmetic rounded the same way); its gradient and buffer are moved there if needed.
    pub fn step(
        &mut self,
        store: &mut ParamStore,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
    ) -> Result<()> {
        let cfg = self.config();
        let lr = lr as f32;
        for (name, g) in grads {
            let e = store.get_mut(name)?;
            if e.kind != Kind::Param {
                return Err(Error::Msg(format!(
                    "optimiser: '{name}' is a buffer, not a trainable parameter"
                )));
            }
            g.expect_shape("sgd step", e.tensor.shape())?;
            let wd = if decays(name, e.torch_shape.len()) {
                cfg.weight_decay
            } else {
                0.0
            };
            if e.tensor.is_cuda() {
                let (w, buf) = step_cuda(&e.tensor, g, self.buffers.get(name), lr, wd, cfg)?;
                e.tensor = w;
                if let Some(b) = buf {
                    self.buffers.insert(name.clone(), b);
                }
                continue;
            }
            let p = e.tensor.data_mut();
            let mut d: Vec<f32> = g.data().to_vec();
            if wd != 0.0 {
                for (di, pi) in d.iter_mut().zip(p.iter()) {
                    *di += wd * *pi;
                }
            }
            if cfg.momentum != 0.0 {
                match self.buffers.get_mut(name) {
                    None => {
                        self.buffers
                            .insert(name.clone(), Tensor::from_vec(g.shape(), d.clone())?);
                    }
                    Some(buf) => {
                        for (b, di) in buf.data_mut().iter_mut().zip(&d) {
                            *b = cfg.momentum * *b + *di;
                        }
                    }
                }
                let buf = self.buffers[name].data();
                if cfg.nesterov {
                    for (di, b) in d.iter_mut().zip(buf) {
                        *di += cfg.momentum * *b;
                    }
                } else {
                    d.copy_from_slice(buf);
                }
            }
            for (pi, di) in p.iter_mut().zip(&d) {
                *pi -= lr * *di;
            }
        }
        Ok(())
    }
}

/// The GPU update of one parameter: new weight and (with momentum) new buffer tensors.
fn step_cuda(
    w: &Tensor,
    g: &Tensor,
    buf: Option<&Tensor>,
    lr: f32,
    wd: f32,
    cfg: SgdConfig,
) -> Result<(Tensor, Option<Tensor>)> {
    use crate::cuda::{ops as cu, DType};
    let ws = cu::st("sgd", w)?;
    let g = cu::on_gpu_as(g, ws, DType::F32)?;
    let b = buf.map(|b| cu::on_gpu_as(b, ws, DType::F32)).transpose()?;
    let bs = b.as_ref().map(|b| cu::st("sgd", b)).transpose()?;
    let (w2, b2) = cu::sgd_nesterov(
        ws,
        cu::st("sgd", &g)?,
        bs,
        lr,
        cfg.momentum,
        wd,
        cfg.nesterov,
    )?;
    Ok((
        Tensor::from_cuda(w.shape(), w2),
        b2.map(|b| Tensor::from_cuda(w.shape(), b)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::TorchTensor;

    fn store() -> ParamStore {
        let mut s = ParamStore::new();
        let t = |shape: Vec<usize>, data: Vec<f32>| TorchTensor { shape, data };
        s.insert("fc.weight", Kind::Param, t(vec![1, 2], vec![1.0, -2.0]))
            .unwrap();
        s.insert("fc.bias", Kind::Param, t(vec![1], vec![0.5]))
            .unwrap();
        s.insert("bn1.weight", Kind::Param, t(vec![1], vec![1.0]))
            .unwrap();
        s.insert("conv1.weight", Kind::Param, t(vec![1, 1, 1, 1], vec![2.0]))
            .unwrap();
        s
    }

    #[test]
    fn decay_only_on_conv_and_linear_weights() {
        assert!(decays("conv1.weight", 4));
        assert!(decays("layer1.0.downsample.0.weight", 4));
        assert!(decays("fc.weight", 2));
        assert!(decays("classifer.2.weight", 2));
        assert!(!decays("fc.bias", 1));
        assert!(!decays("bn1.weight", 1));
        assert!(!decays("bn1.bias", 1));
        assert!(!decays("classifer.1.bias", 1));
    }

    /// Two Nesterov steps by hand, as PyTorch's SGD(lr, momentum=0.9, weight_decay=0.1,
    /// nesterov=True) computes them (the fc.weight entry):
    ///   step 1: g = 0.5 + 0.1*1 = 0.6; buf = 0.6; g = 0.6 + 0.9*0.6 = 1.14; p = 1 - 0.1*1.14 = 0.886
    ///   step 2: g = 0.5 + 0.1*0.886 = 0.5886; buf = 0.9*0.6 + 0.5886 = 1.1286;
    ///           g = 0.5886 + 0.9*1.1286 = 1.60434; p = 0.886 - 0.2*1.60434 = 0.565132
    #[test]
    fn nesterov_matches_pytorch_by_hand() {
        let mut s = store();
        let mut opt = Sgd::new(SgdConfig {
            momentum: 0.9,
            weight_decay: 0.1,
            nesterov: true,
        });
        let mut grads = BTreeMap::new();
        grads.insert(
            "fc.weight".to_string(),
            Tensor::from_vec(&[1, 2], vec![0.5, 0.5]).unwrap(),
        );
        grads.insert(
            "fc.bias".to_string(),
            Tensor::from_vec(&[1], vec![0.5]).unwrap(),
        );
        opt.step(&mut s, &grads, 0.1).unwrap();
        let w = s.tensor("fc.weight").unwrap().data().to_vec();
        assert!((w[0] - 0.886).abs() < 1e-6, "{w:?}");
        // bias: no decay: g = 0.5, buf = 0.5, g = 0.95, p = 0.5 - 0.095 = 0.405
        assert!((s.tensor("fc.bias").unwrap().item() - 0.405).abs() < 1e-6);
        opt.step(&mut s, &grads, 0.2).unwrap();
        let w = s.tensor("fc.weight").unwrap().data().to_vec();
        assert!((w[0] - 0.565132).abs() < 1e-6, "{w:?}");
        // Untouched: no gradient, no decay.
        assert_eq!(s.tensor("bn1.weight").unwrap().item(), 1.0);
        assert_eq!(s.tensor("conv1.weight").unwrap().item(), 2.0);
        assert!(!opt.buffers.contains_key("conv1.weight"));
    }

    #[test]
    fn plain_momentum_uses_the_buffer() {
        let mut s = store();
        let mut opt = Sgd::new(SgdConfig {
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
        });
        let mut grads = BTreeMap::new();
        grads.insert(
            "fc.bias".to_string(),
            Tensor::from_vec(&[1], vec![1.0]).unwrap(),
        );
        opt.step(&mut s, &grads, 0.1).unwrap();
        opt.step(&mut s, &grads, 0.1).unwrap();
        // p = 0.5 - 0.1*1 - 0.1*1.9 = 0.21
        assert!((s.tensor("fc.bias").unwrap().item() - 0.21).abs() < 1e-6);
    }
}
