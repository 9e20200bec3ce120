//! Exponential moving average of a model, timm `ModelEmaV2` semantics: every state-dict entry
//! (weights, biases, BN running mean/var, and the integer `num_batches_tracked` counters) is
//! updated after each optimiser step as
//! ```text
//! ema = decay * ema + (1 - decay) * model
//! ```
//! in f32 with `decay` and `1 - decay` (computed in f64) rounded to f32, as PyTorch does for a
//! Python scalar times an f32 tensor. For the i64 counters PyTorch computes the same expression
//! in f32 and `copy_` truncates it back to an integer; we do the same (so the EMA counter stays
//! near 0 for a long time, as in the reference checkpoints). The EMA starts as a copy of the
//! model when training starts (after loading any init checkpoint).
//!
//! When EMA and model live on a GPU the tensors are updated there
//! (`cuda::ops::ema_update`, rounded as here); the counters stay on the host.

use crate::nn::ParamStore;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// One EMA update of `ema` towards `model` (same entries).
pub fn update(ema: &mut ParamStore, model: &ParamStore, decay: f64) -> Result<()> {
    let d = decay as f32;
    let om = (1.0 - decay) as f32;
    for (name, e) in ema.iter_mut() {
        let m = model.get(name)?;
        update_tensor(name, &mut e.tensor, &m.tensor, decay)?;
    }
    let counters: Vec<(String, i64)> = model
        .counters()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for (p, mv) in counters {
        let ev = ema.counter(&p).unwrap_or(0);
        let v = d * ev as f32 + om * mv as f32;
        ema.add_counter(&p, v as i64);
    }
    Ok(())
}

/// One EMA update of tensor `name`: `e = decay * e + (1 - decay) * m` (f32; on the GPU when
/// both live there).
pub fn update_tensor(name: &str, e: &mut Tensor, m: &Tensor, decay: f64) -> Result<()> {
    let d = decay as f32;
    let om = (1.0 - decay) as f32;
    if m.shape() != e.shape() {
        return Err(Error::Msg(format!(
            "EMA: '{name}' is {:?} in the EMA but {:?} in the model",
            e.shape(),
            m.shape()
        )));
    }
    if let (Some(es), Some(ms)) = (e.cuda(), m.cuda()) {
        // Both on a GPU: the same arithmetic there (kernels/optim.cu), into a new buffer.
        let out = crate::cuda::ops::ema_update(es, ms, d, om)?;
        *e = Tensor::from_cuda(m.shape(), out);
        return Ok(());
    }
    let mv = m.data();
    for (a, b) in e.data_mut().iter_mut().zip(mv) {
        *a = d * *a + om * *b;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Kind, TorchTensor};

    fn store(w: f32, rm: f32, rv: f32, n: i64) -> ParamStore {
        let mut s = ParamStore::new();
        let t = |v: f32| TorchTensor {
            shape: vec![1],
            data: vec![v],
        };
        s.insert("bn1.weight", Kind::Param, t(w)).unwrap();
        s.insert("bn1.running_mean", Kind::Buffer, t(rm)).unwrap();
        s.insert("bn1.running_var", Kind::Buffer, t(rv)).unwrap();
        s.add_counter("bn1", n);
        s
    }

    #[test]
    fn ema_updates_weights_and_bn_buffers() {
        let mut ema = store(1.0, 0.0, 1.0, 0);
        let model = store(2.0, 4.0, 3.0, 10);
        update(&mut ema, &model, 0.75).unwrap();
        assert_eq!(ema.tensor("bn1.weight").unwrap().item(), 1.25);
        assert_eq!(ema.tensor("bn1.running_mean").unwrap().item(), 1.0);
        assert_eq!(ema.tensor("bn1.running_var").unwrap().item(), 1.5);
        // 0.75 * 0 + 0.25 * 10 = 2.5 -> truncated to 2, as PyTorch's copy_ into an i64.
        assert_eq!(ema.counter("bn1"), Some(2));
    }

    #[test]
    fn paper_decay_rounding() {
        let mut ema = store(1.0, 0.0, 1.0, 0);
        let model = store(0.0, 1.0, 1.0, 1);
        update(&mut ema, &model, 0.9998).unwrap();
        let want = 0.9998f32 * 1.0 + (1.0f64 - 0.9998) as f32 * 0.0;
        assert_eq!(ema.tensor("bn1.weight").unwrap().item(), want);
        assert_eq!(
            ema.tensor("bn1.running_mean").unwrap().item(),
            (1.0f64 - 0.9998) as f32
        );
        assert_eq!(ema.counter("bn1"), Some(0));
    }
}
