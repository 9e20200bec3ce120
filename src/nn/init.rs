//! Initial weights of a model created from scratch, by the rules of the authors' code.
//!
//! The paper's models are timm ResNets plus new layers written in PyTorch:
//! - backbone convs: timm's `ResNet.init_weights`, Kaiming normal with `mode='fan_out'`,
//!   `nonlinearity='relu'` (std = sqrt(2 / fan_out), fan_out = out channels x kh x kw; the same
//!   for grouped convs, as PyTorch computes fan_out from the weight's first dimension), whatever
//!   the activation (GELU included);
//! - backbone BN: weight 1, bias 0; then, for a model created to be trained from scratch
//!   ([`Init::FromScratch`], what `mpm-train` uses), timm's `zero_init_last` (on by default in
//!   timm) sets the weight of the last BN of every residual branch to 0 (`bn2` of a basic block,
//!   `bn3` of a bottleneck; not the downsample BN), so each block starts as its shortcut;
//! - everything else (the plain model's `fc`, the MPM bypass layers `cp*`, `segmenter_head*`,
//!   `up_layer*`, `classifer.2`, the two-stage head and classifier): PyTorch's default for
//!   `nn.Conv2d` / `nn.Linear`, `kaiming_uniform_(a = sqrt(5))` for weights (bound
//!   gain x sqrt(3 / fan_in) with gain = sqrt(2 / (1 + a^2)), which is 1 / sqrt(fan_in)) and a
//!   bias uniform in +-1 / sqrt(fan_in), fan_in = in channels per group x kh x kw; BN weight 1,
//!   bias 0 (`nn.BatchNorm` defaults; BatchNorm1d of the two-stage classifier too).
//!
//! Running statistics start at mean 0, variance 1 and `num_batches_tracked` 0. One ChaCha8
//! stream seeded by `seed` draws the tensors in declaration order, so a seed gives one model.
//!
//! [`Init::Random`] leaves every BN weight at 1: a random model in which every layer passes a
//! gradient, which the gradient audits, attack tests and benchmarks need (with the branch-end
//! BNs at 0 no gradient reaches a residual branch's inner layers, so a broken backward there
//! could not be seen).

use super::layers::Declared;
use super::model::ModelSpec;
use super::params::{Kind, ParamStore, TorchTensor};
use crate::Result;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, HashSet};

/// Which model is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// The authors' model before training from scratch: [`Init::Random`] plus `zero_init_last`.
    FromScratch,
    /// The same distributions with every BN weight 1.
    Random,
}

/// How one tensor starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// Normal(0, std): Kaiming normal, fan-out mode, ReLU gain (timm ResNet convs).
    Normal { std: f32 },
    /// Uniform(-bound, bound): PyTorch's default for conv/linear weights and biases.
    Uniform { bound: f32 },
    /// Every element equal (BN weights and biases, running statistics).
    Constant(f32),
}

/// The bound of PyTorch's `kaiming_uniform_(w, a = sqrt(5))` for a weight with this fan-in
/// (`nn.Conv2d.reset_parameters`, `nn.Linear.reset_parameters`): 1 / sqrt(fan_in).
pub fn torch_default_bound(fan_in: usize) -> f32 {
    let a2 = 5.0f64;
    let gain = (2.0 / (1.0 + a2)).sqrt();
    (gain * (3.0 / fan_in.max(1) as f64).sqrt()) as f32
}

/// The std of `kaiming_normal_(w, mode='fan_out', nonlinearity='relu')`.
pub fn kaiming_fan_out_std(torch_shape: &[usize]) -> f32 {
    let fan_out: usize = torch_shape[0] * torch_shape[2..].iter().product::<usize>();
    (2.0 / fan_out.max(1) as f64).sqrt() as f32
}

/// BN prefixes whose weight starts at 0: the last BN (`bnK` with the largest K) of every
/// residual block `<prefix>layerS.B` among `backbone_bn`.
pub fn zero_init_last_bns(backbone_bn: &[String]) -> HashSet<String> {
    let mut last: BTreeMap<String, (u32, String)> = BTreeMap::new();
    for p in backbone_bn {
        let Some((block, leaf)) = p.rsplit_once('.') else {
            continue;
        };
        let Some(k) = leaf.strip_prefix("bn").and_then(|k| k.parse::<u32>().ok()) else {
            continue;
        };
        // Only residual blocks (`...layerS.B`): the stem's `bn1` is not a branch end.
        let in_block = block
            .rsplit_once('.')
            .is_some_and(|(stage, b)| stage.contains("layer") && b.parse::<usize>().is_ok());
        if !in_block {
            continue;
        }
        let e = last.entry(block.to_string()).or_insert((k, p.clone()));
        if k > e.0 {
            *e = (k, p.clone());
        }
    }
    last.into_values().map(|(_, p)| p).collect()
}

/// The rule of every tensor `spec` declares, in declaration order.
pub fn rules(spec: &ModelSpec, how: Init) -> Vec<(String, Vec<usize>, Kind, Rule)> {
    let d = spec.declare();
    let mut bb = Declared::default();
    spec.backbone.declare(&mut bb, spec.prefix());
    let backbone: HashSet<&str> = bb.entries.iter().map(|e| e.0.as_str()).collect();
    let zero_gamma = match how {
        Init::FromScratch => zero_init_last_bns(&bb.bn_prefixes),
        Init::Random => HashSet::new(),
    };
    let bn: HashSet<&str> = d.bn_prefixes.iter().map(|p| p.as_str()).collect();
    let shapes: BTreeMap<&str, &Vec<usize>> =
        d.entries.iter().map(|e| (e.0.as_str(), &e.1)).collect();
    d.entries
        .iter()
        .map(|(name, shape, kind)| {
            let (layer, leaf) = name.rsplit_once('.').unwrap_or(("", name.as_str()));
            let rule = if bn.contains(layer) {
                match leaf {
                    "weight" if zero_gamma.contains(layer) => Rule::Constant(0.0),
                    "weight" | "running_var" => Rule::Constant(1.0),
                    _ => Rule::Constant(0.0),
                }
            } else if leaf == "weight" && shape.len() == 4 && backbone.contains(name.as_str()) {
                Rule::Normal {
                    std: kaiming_fan_out_std(shape),
                }
            } else {
                // A weight's fan-in is its shape after the first dimension; a bias takes its
                // weight's.
                let w = if leaf == "bias" {
                    shapes
                        .get(format!("{layer}.weight").as_str())
                        .copied()
                        .unwrap_or(shape)
                } else {
                    shape
                };
                Rule::Uniform {
                    bound: torch_default_bound(w[1..].iter().product()),
                }
            };
            (name.clone(), shape.clone(), *kind, rule)
        })
        .collect()
}

/// A freshly initialised model (see the module docs).
pub fn init(spec: &ModelSpec, seed: u64, how: Init) -> Result<ParamStore> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut store = ParamStore::new();
    for (name, shape, kind, rule) in rules(spec, how) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match rule {
            Rule::Constant(v) => vec![v; n],
            Rule::Uniform { bound } => (0..n).map(|_| rng.random_range(-bound..bound)).collect(),
            Rule::Normal { std } => (0..n)
                .map(|_| {
                    // Box-Muller; u1 > 0 keeps the logarithm finite.
                    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
                    let u2: f32 = rng.random_range(0.0..1.0);
                    std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                })
                .collect(),
        };
        store.insert(&name, kind, TorchTensor { shape, data })?;
    }
    for p in &spec.declare().bn_prefixes {
        store.add_counter(p, 0);
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Act, Arch, Backbone, Head};

    fn spec(arch: Arch, head: Head) -> ModelSpec {
        ModelSpec {
            backbone: Backbone {
                arch,
                width: 16,
                act: Act::Gelu,
            },
            num_classes: 10,
            seg_classes: 7,
            head,
        }
    }

    fn values(store: &ParamStore, name: &str) -> Vec<f32> {
        store.export(name).unwrap().data
    }

    fn mean_std(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n;
        (m, var.sqrt())
    }

    /// Uniform(-b, b): every value inside, the extremes near the bound, std b / sqrt(3) within
    /// 5 standard errors (the std of a sample std is about std / sqrt(2n) for a normal; a
    /// uniform's is smaller, so this is loose enough never to fail by chance).
    fn assert_uniform(store: &ParamStore, name: &str, bound: f32) {
        let v = values(store, name);
        assert!(
            v.len() >= 64,
            "{name}: too few values ({}) to test",
            v.len()
        );
        let max = v.iter().fold(0f32, |a, &x| a.max(x.abs()));
        assert!(
            max <= bound,
            "{name}: |value| {max} above the bound {bound}"
        );
        assert!(
            max > 0.9 * bound,
            "{name}: max |value| {max}, bound {bound}"
        );
        let (m, s) = mean_std(&v);
        let want = bound as f64 / 3f64.sqrt();
        let tol = 5.0 * want / (2.0 * v.len() as f64).sqrt();
        assert!(
            (s - want).abs() < tol,
            "{name}: std {s}, want {want} +- {tol}"
        );
        assert!(
            m.abs() < 5.0 * want / (v.len() as f64).sqrt(),
            "{name}: mean {m}"
        );
    }

    fn assert_normal(store: &ParamStore, name: &str, std: f32) {
        let v = values(store, name);
        let (m, s) = mean_std(&v);
        let tol = 5.0 * std as f64 / (2.0 * v.len() as f64).sqrt();
        assert!(
            (s - std as f64).abs() < tol,
            "{name}: std {s}, want {std} +- {tol}"
        );
        assert!(
            m.abs() < 5.0 * std as f64 / (v.len() as f64).sqrt(),
            "{name}: mean {m}"
        );
        // A normal, not a uniform of the same std: values beyond 2 std exist (4.6% of them).
        let beyond = v.iter().filter(|&&x| x.abs() > 2.0 * std).count() as f64;
        assert!(beyond / v.len() as f64 > 0.02, "{name}: no tails");
    }

    #[test]
    fn pytorch_default_bound_is_one_over_sqrt_fan_in() {
        for fan_in in [1, 9, 64, 2048] {
            let want = 1.0 / (fan_in as f32).sqrt();
            assert!((torch_default_bound(fan_in) - want).abs() < 1e-6 * want.max(1.0));
        }
        assert!((kaiming_fan_out_std(&[64, 3, 7, 7]) - (2.0f32 / 3136.0).sqrt()).abs() < 1e-7);
    }

    #[test]
    fn backbone_convs_are_kaiming_normal_fan_out() {
        let s = spec(Arch::ResNet50, Head::None);
        let store = init(&s, 1, Init::Random).unwrap();
        // conv1 [16, 3, 7, 7]: fan_out 784; layer3.0.conv2 [64, 64, 3, 3]: fan_out 576.
        assert_normal(&store, "conv1.weight", (2.0f32 / 784.0).sqrt());
        assert_normal(&store, "layer3.0.conv2.weight", (2.0f32 / 576.0).sqrt());
        assert_normal(
            &store,
            "layer2.0.downsample.0.weight",
            (2.0f32 / 128.0).sqrt(),
        );
        // The plain model's fc is a new nn.Linear (timm leaves it at PyTorch's default).
        assert_uniform(&store, "fc.weight", 1.0 / 512f32.sqrt());
        let b = values(&store, "fc.bias");
        assert!(b.iter().all(|x| x.abs() <= 1.0 / 512f32.sqrt()) && b.iter().any(|&x| x != 0.0));
    }

    #[test]
    fn last_bn_of_every_block_starts_at_zero() {
        for (arch, last) in [(Arch::ResNet50, "bn3"), (Arch::ResNet18, "bn2")] {
            let s = spec(
                arch,
                Head::Mpm {
                    levels: 3,
                    top_down: true,
                },
            );
            let store = init(&s, 2, Init::FromScratch).unwrap();
            let mut zeroed = 0;
            for (stage, &nb) in arch.blocks().iter().enumerate() {
                for b in 0..nb {
                    let p = format!("segmenter.layer{}.{b}", stage + 1);
                    let w = values(&store, &format!("{p}.{last}.weight"));
                    assert!(w.iter().all(|&x| x == 0.0), "{p}.{last}.weight not zero");
                    assert!(values(&store, &format!("{p}.{last}.bias"))
                        .iter()
                        .all(|&x| x == 0.0));
                    assert!(values(&store, &format!("{p}.bn1.weight"))
                        .iter()
                        .all(|&x| x == 1.0));
                    zeroed += 1;
                }
            }
            assert_eq!(zeroed, arch.blocks().iter().sum::<usize>());
            // The random model keeps them at 1, and is otherwise the same model.
            let dense = init(&s, 2, Init::Random).unwrap();
            for name in dense.names() {
                let v = values(&dense, name);
                if name.ends_with(&format!(".{last}.weight")) && name.contains(".layer") {
                    assert!(v.iter().all(|&x| x == 1.0), "{name}");
                } else {
                    assert_eq!(v, values(&store, name), "{name}");
                }
            }
            // Not the stem, not the downsample BN, not the new layers' BN.
            for name in [
                "segmenter.bn1.weight",
                "segmenter.layer2.0.downsample.1.weight",
                "cp1.1.weight",
                "segmenter.layer1.0.bn1.running_var",
            ] {
                assert!(values(&store, name).iter().all(|&x| x == 1.0), "{name}");
            }
            assert!(values(&store, "segmenter.layer4.1.bn1.running_mean")
                .iter()
                .all(|&x| x == 0.0));
            assert!(store.counters().values().all(|&c| c == 0));
        }
    }

    #[test]
    fn mpm_bypass_layers_use_pytorch_defaults() {
        let s = spec(
            Arch::ResNet50,
            Head::Mpm {
                levels: 3,
                top_down: true,
            },
        );
        let store = init(&s, 3, Init::FromScratch).unwrap();
        // cp1.0: 1x1 conv from layer4's 512 channels (width 16) to 128: fan_in 512.
        assert_uniform(&store, "cp1.0.weight", 1.0 / 512f32.sqrt());
        assert_uniform(&store, "cp3.0.weight", 1.0 / 128f32.sqrt());
        // Depthwise 3x3: fan_in 1 x 3 x 3 = 9.
        assert_uniform(&store, "segmenter_head1.1.conv1.weight", 1.0 / 3.0);
        assert_uniform(
            &store,
            "segmenter_head1.1.pointwise.weight",
            1.0 / 128f32.sqrt(),
        );
        assert_uniform(&store, "up_layer1.1.pointwise.weight", 1.0 / 128f32.sqrt());
        assert_uniform(&store, "classifer.2.weight", 1.0 / 512f32.sqrt());
        // The backbone under the MPM keeps timm's rule.
        assert_normal(&store, "segmenter.conv1.weight", (2.0f32 / 784.0).sqrt());
    }

    #[test]
    fn two_stage_head_uses_pytorch_defaults() {
        let s = spec(
            Arch::ResNet18,
            Head::TwoStage {
                hidden: 32,
                fc_hidden: 64,
            },
        );
        let store = init(&s, 4, Init::FromScratch).unwrap();
        // classifer.1: conv 4x4 from S = 7 channels with a bias: fan_in 7 x 16 = 112.
        assert_uniform(&store, "classifer.1.weight", 1.0 / 112f32.sqrt());
        // Its bias takes the weight's fan-in (112), not the channel count (7).
        let b = values(&store, "classifer.1.bias");
        assert!(b.iter().all(|x| x.abs() <= 1.0 / 112f32.sqrt()));
        assert!(b.iter().any(|x| x.abs() > 0.5 / 112f32.sqrt()));
        assert_uniform(&store, "classifer.5.weight", 1.0 / 32f32.sqrt());
        assert_uniform(&store, "classifer.8.weight", 1.0 / 64f32.sqrt());
        assert_uniform(
            &store,
            "segmenter_head.2.pointwise.weight",
            1.0 / 128f32.sqrt(),
        );
        for bn in ["segmenter_head.1", "classifer.2", "classifer.6"] {
            assert!(values(&store, &format!("{bn}.weight"))
                .iter()
                .all(|&x| x == 1.0));
            assert!(values(&store, &format!("{bn}.bias"))
                .iter()
                .all(|&x| x == 0.0));
        }
    }

    #[test]
    fn a_seed_gives_one_model() {
        let s = spec(
            Arch::ResNet18,
            Head::Mpm {
                levels: 2,
                top_down: false,
            },
        );
        let (a, b, c) = (
            init(&s, 5, Init::Random).unwrap(),
            init(&s, 5, Init::Random).unwrap(),
            init(&s, 6, Init::Random).unwrap(),
        );
        let w = "segmenter.layer1.0.conv1.weight";
        assert_eq!(values(&a, w), values(&b, w));
        assert_ne!(values(&a, w), values(&c, w));
        assert_eq!(a.len(), s.declare().entries.len());
    }
}
