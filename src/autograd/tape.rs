//! The tape: a flat list of nodes in creation order. Each node holds its value, whether a
//! gradient must flow to it, the nodes it was computed from, and the rule that maps the output
//! gradient to input gradients. Backward walks the list in reverse once.
//!
//! Modes:
//! - `Full`: parameters and inputs marked `requires_grad` get gradients (training).
//! - `InputGradOnly`: parameters are recorded as constants, so no weight gradient is ever
//!   computed (a conv backward then skips the backward-filter GEMM entirely): attacks.
//! - `NoGrad`: nothing is recorded for backward (evaluation).

use crate::tensor::Tensor;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradMode {
    Full,
    InputGradOnly,
    NoGrad,
}

/// A handle to a value recorded on a tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub(crate) usize);

/// What a backward rule sees.
pub struct BackwardCtx<'a> {
    pub inputs: Vec<&'a Tensor>,
    pub output: &'a Tensor,
    pub dout: &'a Tensor,
    /// `needs[i]`: input `i` requires a gradient; rules skip work for the others.
    pub needs: Vec<bool>,
}

type BackwardFn = Box<dyn Fn(&BackwardCtx) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

struct Node {
    value: Tensor,
    requires_grad: bool,
    inputs: Vec<usize>,
    backward: Option<BackwardFn>,
}

pub struct Tape {
    mode: GradMode,
    nodes: Vec<Node>,
}

/// Gradients of one backward pass, indexed by `Var`.
pub struct Gradients {
    grads: Vec<Option<Tensor>>,
}

impl Gradients {
    pub fn get(&self, v: Var) -> Option<&Tensor> {
        self.grads.get(v.0).and_then(|g| g.as_ref())
    }
    pub fn take(&mut self, v: Var) -> Option<Tensor> {
        self.grads.get_mut(v.0).and_then(|g| g.take())
    }
}

impl Tape {
    pub fn new(mode: GradMode) -> Tape {
        crate::keep_freed_memory();
        Tape {
            mode,
            nodes: Vec::new(),
        }
    }

    pub fn mode(&self) -> GradMode {
        self.mode
    }

    fn leaf(&mut self, value: Tensor, requires_grad: bool) -> Var {
        self.nodes.push(Node {
            value,
            requires_grad,
            inputs: Vec::new(),
            backward: None,
        });
        Var(self.nodes.len() - 1)
    }

    /// An input (e.g. images). It gets a gradient when asked for, unless the tape is `NoGrad`.
    pub fn input(&mut self, value: Tensor, requires_grad: bool) -> Var {
        let rg = requires_grad && self.mode != GradMode::NoGrad;
        self.leaf(value, rg)
    }

    /// A trainable parameter: gets a gradient only in `Full` mode.
    pub fn param(&mut self, value: Tensor) -> Var {
        let rg = self.mode == GradMode::Full;
        self.leaf(value, rg)
    }

    /// A value that never gets a gradient (frozen parameters, targets).
    pub fn constant(&mut self, value: Tensor) -> Var {
        self.leaf(value, false)
    }

    pub fn value(&self, v: Var) -> &Tensor {
        &self.nodes[v.0].value
    }

    pub fn shape(&self, v: Var) -> &[usize] {
        self.nodes[v.0].value.shape()
    }

    pub fn requires_grad(&self, v: Var) -> bool {
        self.nodes[v.0].requires_grad
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Records `value = f(inputs)`. The backward rule is kept only when a gradient can flow.
    pub fn record<F>(&mut self, value: Tensor, inputs: &[Var], backward: F) -> Var
    where
        F: Fn(&BackwardCtx) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    {
        let rg = self.mode != GradMode::NoGrad && inputs.iter().any(|v| self.requires_grad(*v));
        self.nodes.push(Node {
            value,
            requires_grad: rg,
            inputs: inputs.iter().map(|v| v.0).collect(),
            backward: if rg { Some(Box::new(backward)) } else { None },
        });
        Var(self.nodes.len() - 1)
    }

    /// Backward from a scalar `root` (seeded with 1).
    pub fn backward(&self, root: Var) -> Result<Gradients> {
        let seed = Tensor::full(self.value(root).shape(), 1.0);
        if self.value(root).numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!(
                    "root must be a scalar, got shape {:?}",
                    self.value(root).shape()
                ),
            ));
        }
        self.backward_with(root, seed)
    }

    /// Backward from `root` with an explicit output gradient.
    pub fn backward_with(&self, root: Var, seed: Tensor) -> Result<Gradients> {
        seed.expect_shape("backward seed", self.value(root).shape())?;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        if !self.nodes[root.0].requires_grad {
            return Ok(Gradients { grads });
        }
        grads[root.0] = Some(seed);
        for i in (0..=root.0).rev() {
            let node = &self.nodes[i];
            let Some(rule) = &node.backward else { continue };
            let Some(dout) = grads[i].take() else {
                continue;
            };
            let needs: Vec<bool> = node
                .inputs
                .iter()
                .map(|&j| self.nodes[j].requires_grad)
                .collect();
            let ctx = BackwardCtx {
                inputs: node.inputs.iter().map(|&j| &self.nodes[j].value).collect(),
                output: &node.value,
                dout: &dout,
                needs,
            };
            let dins = rule(&ctx)?;
            for (k, din) in dins.into_iter().enumerate() {
                let j = node.inputs[k];
                let Some(din) = din else { continue };
                if !self.nodes[j].requires_grad {
                    continue;
                }
                din.expect_shape("backward (gradient shape)", self.nodes[j].value.shape())?;
                match &mut grads[j] {
                    Some(g) => g.add_assign(&din)?,
                    slot @ None => *slot = Some(din),
                }
            }
        }
        // Leaves have no rule, so their accumulated gradients were never taken: they remain.
        // Interior gradients were dropped as soon as they were used.
        Ok(Gradients { grads })
    }
}
