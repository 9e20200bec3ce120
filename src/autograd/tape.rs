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
        let seed = self.scalar_seed(root)?;
        self.backward_with(root, seed)
    }

    /// Backward from `root` with an explicit output gradient.
    pub fn backward_with(&self, root: Var, seed: Tensor) -> Result<Gradients> {
        self.sweep(root, seed, None)
    }

    /// `backward` that hands each leaf's gradient to `ready` as soon as it is final, while the
    /// rest of the backward pass is still to run: data-parallel training starts summing a
    /// bucket of weight gradients over the ranks while the earlier layers' gradients are
    /// computed (`dist::train`). A leaf's gradient is final once the reverse sweep has
    /// processed the leaf's first consumer (the lowest-indexed node that takes it as an
    /// input): every other consumer comes later on the tape and was processed before.
    ///
    /// `ready(leaf, gradient, nodes_left)` is called exactly once for every leaf that requires
    /// a gradient and receives one, in the order the gradients become final (fixed by the
    /// graph); `nodes_left` is the number of backward rules still to run at that moment. The
    /// gradients are those of `backward`, bit for bit (the same rules in the same order); the
    /// returned `Gradients` holds none of the reported leaves. An error from `ready` stops the
    /// sweep and is returned.
    pub fn backward_hooked(
        &self,
        root: Var,
        ready: &mut dyn FnMut(Var, Tensor, usize) -> Result<()>,
    ) -> Result<Gradients> {
        let seed = self.scalar_seed(root)?;
        self.sweep(root, seed, Some(ready))
    }

    fn scalar_seed(&self, root: Var) -> Result<Tensor> {
        if self.value(root).numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!(
                    "root must be a scalar, got shape {:?}",
                    self.value(root).shape()
                ),
            ));
        }
        Ok(Tensor::full(self.value(root).shape(), 1.0))
    }

    /// Leaves that require a gradient, with the index of their first consumer at or below
    /// `root`, sorted by that index from the highest (the order of the reverse sweep).
    fn leaf_deadlines(&self, root: usize) -> Vec<(usize, usize)> {
        let mut first = vec![usize::MAX; root + 1];
        for (i, node) in self.nodes[..=root].iter().enumerate() {
            for &j in &node.inputs {
                first[j] = first[j].min(i);
            }
        }
        let mut out: Vec<(usize, usize)> = (0..=root)
            .filter(|&j| {
                let n = &self.nodes[j];
                n.requires_grad && n.backward.is_none() && first[j] != usize::MAX
            })
            .map(|j| (first[j], j))
            .collect();
        // Highest consumer first; among leaves final at the same node, the lower index first.
        out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        out
    }

    /// The reverse sweep. With `ready`, each leaf's gradient is moved out to it as soon as it
    /// is final; without, exactly the plain backward pass.
    fn sweep(
        &self,
        root: Var,
        seed: Tensor,
        mut ready: Option<&mut dyn FnMut(Var, Tensor, usize) -> Result<()>>,
    ) -> Result<Gradients> {
        seed.expect_shape("backward seed", self.value(root).shape())?;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        if !self.nodes[root.0].requires_grad {
            return Ok(Gradients { grads });
        }
        grads[root.0] = Some(seed);
        // With a hook: leaves in the order they become final, and the number of backward
        // rules at or below each index (what is left of the sweep after a node).
        let (deadlines, rules_below) = if ready.is_some() {
            let mut below = Vec::with_capacity(root.0 + 1);
            let mut n = 0;
            for node in &self.nodes[..=root.0] {
                below.push(n);
                n += node.backward.is_some() as usize;
            }
            (self.leaf_deadlines(root.0), below)
        } else {
            (Vec::new(), Vec::new())
        };
        let mut next = 0;
        for i in (0..=root.0).rev() {
            self.sweep_node(i, &mut grads)?;
            if let Some(f) = ready.as_mut() {
                while next < deadlines.len() && deadlines[next].0 == i {
                    let leaf = deadlines[next].1;
                    next += 1;
                    if let Some(g) = grads[leaf].take() {
                        f(Var(leaf), g, rules_below[i])?;
                    }
                }
            }
        }
        // A root that is itself a leaf has no consumer: its gradient is the seed.
        if let Some(f) = ready.as_mut() {
            let n = &self.nodes[root.0];
            if n.backward.is_none() {
                if let Some(g) = grads[root.0].take() {
                    f(root, g, 0)?;
                }
            }
        }
        // Leaves have no rule, so their accumulated gradients were never taken: they remain
        // (unless handed to `ready`). Interior gradients were dropped as soon as they were used.
        Ok(Gradients { grads })
    }

    /// Runs node `i`'s backward rule (if it has one and received a gradient) and adds its
    /// input gradients to `grads`.
    fn sweep_node(&self, i: usize, grads: &mut [Option<Tensor>]) -> Result<()> {
        let node = &self.nodes[i];
        let Some(rule) = &node.backward else {
            return Ok(());
        };
        let Some(dout) = grads[i].take() else {
            return Ok(());
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_vec(&[v.len()], v.to_vec()).unwrap()
    }

    /// a, b, c leaves; p = a * b; q = p + a (a used twice); r = q * c; loss = sum(r) + sum(b).
    /// Every rule logs its node name when it runs.
    fn graph(log: &Arc<Mutex<Vec<String>>>) -> (Tape, Vec<Var>, Var) {
        let mut tape = Tape::new(GradMode::Full);
        let a = tape.param(t(&[1.0, 2.0]));
        let b = tape.param(t(&[3.0, -1.0]));
        let c = tape.param(t(&[0.5, 4.0]));
        let k = tape.constant(t(&[7.0, 7.0]));
        let mul = |x: &Tensor, y: &Tensor| {
            t(&x.data()
                .iter()
                .zip(y.data())
                .map(|(p, q)| p * q)
                .collect::<Vec<_>>())
        };
        let l = log.clone();
        let pv = mul(tape.value(a), tape.value(b));
        let p = tape.record(pv, &[a, b], move |ctx| {
            l.lock().unwrap().push("p".into());
            Ok(vec![
                Some(mul(ctx.dout, ctx.inputs[1])),
                Some(mul(ctx.dout, ctx.inputs[0])),
            ])
        });
        let l = log.clone();
        let mut qv = tape.value(p).clone();
        qv.add_assign(tape.value(a)).unwrap();
        qv.add_assign(tape.value(k)).unwrap();
        let q = tape.record(qv, &[p, a, k], move |ctx| {
            l.lock().unwrap().push("q".into());
            Ok(vec![Some(ctx.dout.clone()), Some(ctx.dout.clone()), None])
        });
        let l = log.clone();
        let rv = mul(tape.value(q), tape.value(c));
        let r = tape.record(rv, &[q, c], move |ctx| {
            l.lock().unwrap().push("r".into());
            Ok(vec![
                Some(mul(ctx.dout, ctx.inputs[1])),
                Some(mul(ctx.dout, ctx.inputs[0])),
            ])
        });
        let l = log.clone();
        let s: f32 =
            tape.value(r).data().iter().sum::<f32>() + tape.value(b).data().iter().sum::<f32>();
        let loss = tape.record(t(&[s]), &[r, b], move |ctx| {
            l.lock().unwrap().push("loss".into());
            let g = ctx.dout.data()[0];
            Ok(vec![
                Some(Tensor::full(&[2], g)),
                Some(Tensor::full(&[2], g)),
            ])
        });
        (tape, vec![a, b, c], loss)
    }

    #[test]
    fn hooked_backward_reports_each_leaf_once_after_its_last_contribution() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tape, leaves, loss) = graph(&log);
        let plain = tape.backward(loss).unwrap();
        log.lock().unwrap().clear();
        let mut seen: Vec<(Var, Vec<f32>, usize, Vec<String>)> = Vec::new();
        let rest = tape
            .backward_hooked(loss, &mut |v, g, left| {
                seen.push((v, g.data().to_vec(), left, log.lock().unwrap().clone()));
                Ok(())
            })
            .unwrap();
        // Each of a, b, c once; the constant never.
        let mut vars: Vec<Var> = seen.iter().map(|s| s.0).collect();
        vars.sort_by_key(|v| v.0);
        assert_eq!(vars, leaves);
        for (v, g, left, ran) in &seen {
            // Bit-identical to the plain backward pass, and not left in the result.
            let want: Vec<u32> = plain
                .get(*v)
                .unwrap()
                .data()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let got: Vec<u32> = g.iter().map(|x| x.to_bits()).collect();
            assert_eq!(got, want, "leaf {v:?}");
            assert!(rest.get(*v).is_none());
            // Every rule that adds to this leaf had run when it was reported.
            let consumers: &[&str] = match v.0 {
                0 => &["p", "q"],
                1 => &["p", "loss"],
                _ => &["r"],
            };
            for c in consumers {
                assert!(
                    ran.iter().any(|r| r == c),
                    "leaf {v:?} reported before {c}: {ran:?}"
                );
            }
            assert_eq!(*left, 4 - ran.len(), "rules left when {v:?} was reported");
        }
        // c is final after r, while p and q are still to run: reported first, early.
        assert_eq!(seen[0].0, leaves[2]);
        assert_eq!(seen[0].2, 2);
        // a and b become final together at p (a is used by q too, which ran before).
        assert_eq!(seen[1].0, leaves[0]);
        assert_eq!(seen[2].0, leaves[1]);
    }

    #[test]
    fn hooked_backward_errors_stop_the_sweep_and_plain_backward_keeps_leaves() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tape, leaves, loss) = graph(&log);
        let plain = tape.backward(loss).unwrap();
        for v in &leaves {
            assert!(plain.get(*v).is_some());
        }
        log.lock().unwrap().clear();
        let err = tape
            .backward_hooked(loss, &mut |_, _, _| Err(Error::Msg("stop".into())))
            .err()
            .unwrap();
        assert!(err.to_string().contains("stop"));
        // Stopped after r (c's first consumer): p and q never ran.
        assert_eq!(
            *log.lock().unwrap(),
            vec!["loss".to_string(), "r".to_string()]
        );
    }

    #[test]
    fn a_leaf_root_is_reported_with_its_seed() {
        let mut tape = Tape::new(GradMode::Full);
        let a = tape.param(t(&[2.0]));
        let mut got = Vec::new();
        tape.backward_hooked(a, &mut |v, g, left| {
            got.push((v, g.data().to_vec(), left));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![(a, vec![1.0], 0)]);
    }
}
