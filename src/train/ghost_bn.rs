//! Ghost batch norm (`bn_group`): the batch statistics of the paper's DDP run on one device.
//!
//! The authors train with DDP on 8 GPUs x 64 images and no SyncBN. Each GPU normalises with the
//! statistics of its own 64 images and updates its own copy of the BN running statistics;
//! timm's `distribute_bn(..., reduce=True)` averages those copies across GPUs at the end of
//! every epoch, for the model and for the EMA. A one-device run with `bn_group = 64` reproduces
//! that: the global batch is cut into `G = batch_size / bn_group` groups, each run as its own
//! pass (PGD in eval mode, then forward and backward in train mode with that group's batch
//! statistics), and each group keeps its own running-statistics chain for the model and for
//! the EMA. Group `g` plays rank `g`:
//! - its PGD start is drawn from the generator of `(seed, global step, g)`;
//! - its PGD keeps the best iterate by the mean loss over its own images (per GPU batch);
//! - the gradient is the mean over groups (DDP's all-reduce average);
//! - SGD and the EMA weights update once; the EMA's BN buffers update per chain from that
//!   group's model chain (`ModelEmaV2` runs on every rank with its rank's buffers);
//! - the BN counters advance once per step (each rank counts its own forward passes);
//! - after the last step of an epoch the chains are averaged (sum over groups, then divided by
//!   G, as `all_reduce(SUM)` then `/= world_size`), model and EMA, before evaluation and the
//!   epoch's checkpoint.
//!
//! `broadcast_buffers` (on by default) is the other half of the authors' run: PyTorch's DDP is
//! built with `broadcast_buffers=True` unless told otherwise, and then every forward pass that
//! follows a gradient-recording one starts by copying rank 0's buffers to all ranks. In a step
//! (PGD passes, then the training pass) every rank therefore attacks with rank 0's running
//! statistics and updates its copy from rank 0's value; the copies differ only by that last
//! update until the next step overwrites them. So with `broadcast_buffers` every model chain is
//! reset to chain 0 at the start of each step; the EMA chains (the EMA is not wrapped in DDP)
//! stay separate all epoch. With `broadcast_buffers = false` (DDP built with
//! `broadcast_buffers=False`) each group keeps its own model chain for the whole epoch and its
//! attack uses it.
//!
//! A process may run only some of the groups (`first .. first + local`: one rank of a
//! data-parallel run); `total` counts them all.

use crate::nn::ParamStore;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::collections::BTreeMap;

/// One running-statistics chain: every `*.running_mean` / `*.running_var` of a model by name.
pub type Chain = BTreeMap<String, Tensor>;

/// The batch-norm groups one process runs, and their chains.
#[derive(Clone, Debug)]
pub struct BnGroups {
    /// Groups in the whole batch (all processes): the divisor of the averages.
    pub total: usize,
    /// Images per group.
    pub per_group: usize,
    /// Global index of this process's first group.
    pub first: usize,
    /// Model chains of this process's groups (`local` of them).
    pub model: Vec<Chain>,
    /// EMA chains (empty without an EMA).
    pub ema: Vec<Chain>,
    /// DDP's `broadcast_buffers`: every step starts from group 0's model chain.
    pub broadcast: bool,
}

/// True for the tensors a chain holds.
pub fn is_running_stat(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// The running statistics of `store`.
pub fn take_chain(store: &ParamStore) -> Chain {
    store
        .iter()
        .filter(|(n, _)| is_running_stat(n))
        .map(|(n, e)| (n.clone(), e.tensor.clone()))
        .collect()
}

/// Makes `chain` the running statistics of `store`.
pub fn put_chain(store: &mut ParamStore, chain: &Chain) -> Result<()> {
    for (n, t) in chain {
        let e = store.get_mut(n)?;
        if e.tensor.shape() != t.shape() {
            return Err(Error::shape(
                "put_chain",
                format!(
                    "'{n}' is {:?} in the model, {:?} in the chain",
                    e.tensor.shape(),
                    t.shape()
                ),
            ));
        }
        e.tensor = t.clone();
    }
    Ok(())
}

impl BnGroups {
    /// `local` groups starting at global group `first`, every chain a copy of the running
    /// statistics of `model` (and `ema`).
    pub fn new(
        total: usize,
        per_group: usize,
        first: usize,
        local: usize,
        broadcast: bool,
        model: &ParamStore,
        ema: Option<&ParamStore>,
    ) -> BnGroups {
        let m = take_chain(model);
        let e = ema.map(take_chain);
        BnGroups {
            total,
            per_group,
            first,
            model: vec![m; local],
            ema: e.map(|e| vec![e; local]).unwrap_or_default(),
            broadcast,
        }
    }

    pub fn local(&self) -> usize {
        self.model.len()
    }

    /// Start of a step with `broadcast`: every model chain becomes chain 0 (the caller of a
    /// multi-process run has already put rank 0's chain 0 there).
    pub fn start_step(&mut self) {
        if self.broadcast {
            let c0 = self.model[0].clone();
            for c in self.model.iter_mut().skip(1) {
                *c = c0.clone();
            }
        }
    }

    /// The sum over this process's chains, model chains then EMA chains, each flattened in
    /// name order (host f32, added group after group, left to right). Summed again over
    /// processes (an all-reduce), it is what `set_average` divides.
    pub fn sum_local(&self) -> Vec<f32> {
        let mut out = sum_chains(&self.model);
        out.extend(sum_chains(&self.ema));
        out
    }

    /// Sets every chain of each kind, and the running statistics of `model` / `ema`, to
    /// `sums / total` (`sums` as `sum_local` makes it, added over all processes). Tensors
    /// keep their device. timm divides the all-reduced sum by the world size; so does this.
    pub fn set_average(
        &mut self,
        sums: &[f32],
        model: &mut ParamStore,
        ema: Option<&mut ParamStore>,
    ) -> Result<()> {
        let lm = chain_len(&self.model[0]);
        let le = self.ema.first().map_or(0, chain_len);
        if sums.len() != lm + le {
            return Err(Error::shape(
                "bn chain average",
                format!("{} sums for chains of {} values", sums.len(), lm + le),
            ));
        }
        let avg = chain_from_flat(&self.model[0], &sums[..lm], self.total as f32)?;
        put_chain(model, &avg)?;
        self.model.iter_mut().for_each(|c| *c = avg.clone());
        if let Some(first) = self.ema.first() {
            let avg = chain_from_flat(first, &sums[lm..], self.total as f32)?;
            if let Some(e) = ema {
                put_chain(e, &avg)?;
            }
            self.ema.iter_mut().for_each(|c| *c = avg.clone());
        }
        Ok(())
    }

    /// The average over this process's chains of each kind (model, EMA), computed as
    /// `set_average` computes it, without changing anything.
    pub fn local_average(&self) -> Result<(Chain, Option<Chain>)> {
        let div = self.local() as f32;
        let m = chain_from_flat(&self.model[0], &sum_chains(&self.model), div)?;
        let e = match self.ema.first() {
            Some(first) => Some(chain_from_flat(first, &sum_chains(&self.ema), div)?),
            None => None,
        };
        Ok((m, e))
    }

    /// Moves every chain to `device`.
    pub fn to_device(&mut self, device: crate::device::Device) -> Result<()> {
        for c in self.model.iter_mut().chain(self.ema.iter_mut()) {
            for t in c.values_mut() {
                *t = t.to_device(device)?;
            }
        }
        Ok(())
    }

    /// The name of the first non-finite value, if any.
    pub fn first_non_finite(&self) -> Option<String> {
        for (i, c) in self.model.iter().chain(self.ema.iter()).enumerate() {
            for (n, t) in c {
                if !t.all_finite() {
                    let (kind, g) = if i < self.model.len() {
                        ("model", i)
                    } else {
                        ("EMA", i - self.model.len())
                    };
                    return Some(format!(
                        "{kind} BN chain of group {} tensor '{n}'",
                        self.first + g
                    ));
                }
            }
        }
        None
    }
}

/// Writes every chain as `bnchain.{model,ema}.<global group>.<name>` (host f32).
pub fn put_chains(out: &mut crate::io::NamedTensors, g: &BnGroups) {
    for (kind, chains) in [("model", &g.model), ("ema", &g.ema)] {
        for (l, c) in chains.iter().enumerate() {
            for (n, t) in c {
                out.insert(
                    format!("bnchain.{kind}.{}.{n}", g.first + l),
                    crate::io::HostTensor::f32(t.shape().to_vec(), t.data().to_vec()),
                );
            }
        }
    }
}

/// The chains of a checkpoint (`put_chains` wrote them under `bnchain.`, here without that
/// prefix) as the groups of one process running all of them. Every group must hold every
/// running statistic of the model (and of the EMA when there is one), shaped as in it.
pub fn read_chains(
    tensors: crate::io::NamedTensors,
    cfg: &super::config::TrainConfig,
    model: &ParamStore,
    ema: Option<&ParamStore>,
) -> Result<BnGroups> {
    let mut kinds: [BTreeMap<usize, Chain>; 2] = Default::default();
    for (k, v) in tensors {
        let bad = || Error::Msg(format!("unexpected tensor 'bnchain.{k}'"));
        let (kind, rest) = k.split_once('.').ok_or_else(bad)?;
        let (group, name) = rest.split_once('.').ok_or_else(bad)?;
        let which = match kind {
            "model" => 0,
            "ema" => 1,
            _ => return Err(bad()),
        };
        let group: usize = group.parse().map_err(|_| bad())?;
        let data = v
            .as_f32()
            .ok_or_else(|| Error::Msg(format!("'bnchain.{k}' is not f32")))?;
        let t = Tensor::from_vec(&v.shape, data.to_vec())?;
        kinds[which]
            .entry(group)
            .or_default()
            .insert(name.to_string(), t);
    }
    let [m, e] = kinds;
    let total = m.len();
    let check = |what: &str, chains: &BTreeMap<usize, Chain>, store: &ParamStore| {
        let want = take_chain(store);
        for (i, (g, c)) in chains.iter().enumerate() {
            if *g != i {
                return Err(Error::Msg(format!(
                    "{what} chains are numbered {:?}, expected 0..{}",
                    chains.keys().collect::<Vec<_>>(),
                    chains.len()
                )));
            }
            let names_match = c.len() == want.len()
                && want
                    .iter()
                    .all(|(n, t)| c.get(n).is_some_and(|x| x.shape() == t.shape()));
            if !names_match {
                return Err(Error::Msg(format!(
                    "{what} chain of group {g} does not hold the model's {} running statistics",
                    want.len()
                )));
            }
        }
        Ok(())
    };
    if total == 0 {
        return Err(Error::Msg("EMA chains without model chains".into()));
    }
    check("model", &m, model)?;
    match ema {
        Some(es) if e.len() == total => check("EMA", &e, es)?,
        Some(_) => {
            return Err(Error::Msg(format!(
                "{total} model chains but {} EMA chains",
                e.len()
            )))
        }
        None if !e.is_empty() => return Err(Error::Msg("EMA chains without an EMA".into())),
        None => {}
    }
    Ok(BnGroups {
        total,
        per_group: cfg.batch_size / total,
        first: 0,
        model: m.into_values().collect(),
        ema: e.into_values().collect(),
        broadcast: cfg.broadcast_buffers,
    })
}

fn chain_len(c: &Chain) -> usize {
    c.values().map(Tensor::numel).sum()
}

/// The chains' sum, flattened in name order, added chain after chain (left to right).
fn sum_chains(chains: &[Chain]) -> Vec<f32> {
    let Some(first) = chains.first() else {
        return Vec::new();
    };
    let mut out: Vec<f32> = first.values().flat_map(|t| t.data().to_vec()).collect();
    for c in &chains[1..] {
        let vals = c.values().flat_map(|t| t.data().iter().copied());
        for (o, v) in out.iter_mut().zip(vals) {
            *o += v;
        }
    }
    out
}

/// A chain shaped like `template` holding `vals / div` (on the template's devices).
fn chain_from_flat(template: &Chain, vals: &[f32], div: f32) -> Result<Chain> {
    let mut out = Chain::new();
    let mut k = 0;
    for (n, t) in template {
        let len = t.numel();
        let v: Vec<f32> = vals[k..k + len].iter().map(|x| x / div).collect();
        k += len;
        out.insert(
            n.clone(),
            Tensor::from_vec(t.shape(), v)?.to_device(t.device())?,
        );
    }
    Ok(out)
}

/// The seed whose `pgd::step_rng` is group `group`'s PGD generator (group 0: `seed`). Kept
/// below 2^63, like every seed a config accepts (TOML integers are signed 64-bit), so the
/// rank of a DDP run this group stands for has a valid config of its own.
pub fn group_seed(seed: u64, group: usize) -> u64 {
    (seed ^ (group as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) & (i64::MAX as u64)
}

/// The PGD generator of group `group` at `global_step`: group 0's is `pgd::step_rng`, so a
/// one-group run draws exactly what a run without groups draws.
pub fn group_rng(seed: u64, global_step: u64, group: usize) -> rand_chacha::ChaCha8Rng {
    super::pgd::step_rng(group_seed(seed, group), global_step)
}

/// `ema = decay * ema + (1 - decay) * model` over a chain, with the arithmetic of
/// `ema::update` (f32, `decay` and `1 - decay` rounded from f64; on the GPU its kernel).
pub fn ema_update_chain(ema: &mut Chain, model: &Chain, decay: f64) -> Result<()> {
    for (n, e) in ema.iter_mut() {
        let m = model
            .get(n)
            .ok_or_else(|| Error::Msg(format!("EMA chain: the model chain has no '{n}'")))?;
        super::ema::update_tensor(n, e, m, decay)?;
    }
    Ok(())
}
