//! Range checks for every numeric configuration key, in one place, before anything is
//! allocated or trained: finiteness for every float (a key added later is covered too),
//! the range each key makes sense in, and a memory estimate for the size keys, so that
//! `--width 100000` is an error naming the key instead of an allocation abort. The
//! cross-key rules (divisibility, head/class consistency) stay in `TrainConfig::validate`,
//! which calls [`check`] first.

use super::config::TrainConfig;
use crate::{Error, Result};

/// Inclusive or exclusive bound of a float range.
#[derive(Clone, Copy)]
enum Bound {
    Incl(f64),
    Excl(f64),
}

use Bound::{Excl, Incl};

/// `(key, lower bound, upper bound, what the value is)` for the float keys. Learning rates
/// have no upper bound: a huge one is a legitimate way to test divergence handling.
const FLOAT_RULES: &[(&str, Bound, Bound, &str)] = &[
    ("lambdas", Incl(0.0), Incl(1e3), "a loss weight"),
    ("gamma", Incl(0.0), Incl(20.0), "the focal exponent"),
    (
        "smoothing",
        Incl(0.0),
        Excl(1.0),
        "a label-smoothing fraction",
    ),
    ("momentum", Incl(0.0), Excl(1.0), "SGD momentum"),
    ("weight_decay", Incl(0.0), Incl(1.0), "an L2 coefficient"),
    ("lrb", Incl(0.0), Incl(f64::INFINITY), "a learning rate"),
    (
        "lr",
        Incl(0.0),
        Incl(f64::INFINITY),
        "a learning rate (0 = the lrb rule)",
    ),
    (
        "warmup_lr",
        Incl(0.0),
        Incl(f64::INFINITY),
        "a learning rate",
    ),
    ("min_lr", Incl(0.0), Incl(f64::INFINITY), "a learning rate"),
    ("color_jitter", Incl(0.0), Incl(1.0), "a jitter strength"),
    ("hflip", Incl(0.0), Incl(1.0), "a probability"),
    ("model_ema_decay", Incl(0.0), Excl(1.0), "an EMA decay"),
    (
        "attack_eps",
        Incl(0.0),
        Incl(1.0),
        "an l-inf radius on [0, 1] images",
    ),
];

/// Largest value each integer key may take (sizes beyond these are mistakes, not models).
const INT_MAX: &[(&str, i64, &str)] = &[
    ("width", 4096, "64x the paper's stem width"),
    ("input_size", 4096, "a square input side in pixels"),
    ("num_classes", 1_000_000, "classes"),
    ("seg_classes", 1_000_000, "part classes"),
    ("levels", 3, "MPM levels (1-3)"),
    ("twostage_hidden", 65_536, "a layer width"),
    ("twostage_fc_hidden", 65_536, "a layer width"),
    ("epochs", 100_000, "epochs"),
    ("warmup_epochs", 100_000, "epochs"),
    ("batch_size", 1 << 20, "images per update"),
    ("accum_steps", 1 << 20, "micro-batches per update"),
    ("bn_group", 1 << 20, "images per batch-norm group"),
    ("attack_it", 10_000, "PGD iterations"),
    ("eval_attack_it", 10_000, "PGD iterations"),
    ("prefetch_batches", 1_024, "batches held in memory"),
];

/// Values of `eval_metric`, the reference's names for what its saver keeps `model_best` by.
pub const EVAL_METRICS: &[(&str, &str)] = &[
    (
        "advtop1",
        "the EMA's PGD accuracy at attack_eps, the reference's AT runs",
    ),
    (
        "top1",
        "the EMA's clean accuracy, the reference's non-AT runs",
    ),
];

fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

fn in_bound(x: f64, lo: Bound, hi: Bound) -> bool {
    let above = match lo {
        Bound::Incl(l) => x >= l,
        Bound::Excl(l) => x > l,
    };
    let below = match hi {
        Bound::Incl(h) => x <= h,
        Bound::Excl(h) => x < h,
    };
    above && below
}

fn range_text(lo: Bound, hi: Bound) -> String {
    let (l, lb) = match lo {
        Bound::Incl(l) => (l, '['),
        Bound::Excl(l) => (l, '('),
    };
    let (h, hb) = match hi {
        Bound::Incl(h) => (h, ']'),
        Bound::Excl(h) => (h, ')'),
    };
    format!("{lb}{l}, {h}{hb}")
}

/// Checks every numeric key of `cfg`; the first problem is an error naming its flag.
pub fn check(cfg: &TrainConfig) -> Result<()> {
    // config.toml stores the seed as a TOML integer, which is signed 64-bit.
    if cfg.seed > i64::MAX as u64 {
        return Err(Error::flag(
            "--seed",
            format!("{} is above the largest seed, {}", cfg.seed, i64::MAX),
        ));
    }
    let table = match toml::Value::try_from(cfg) {
        Ok(toml::Value::Table(t)) => t,
        _ => return Err(Error::Msg("config: cannot serialise".into())),
    };
    // Every float, including keys without a rule below: NaN and infinities are never meant.
    for (key, v) in &table {
        if let toml::Value::Float(x) = v {
            if !x.is_finite() {
                return Err(Error::flag(
                    flag(key),
                    format!("{x} is not a finite number"),
                ));
            }
        }
    }
    for &(key, lo, hi, why) in FLOAT_RULES {
        let Some(toml::Value::Float(x)) = table.get(key) else {
            continue;
        };
        if !in_bound(*x, lo, hi) {
            return Err(Error::flag(
                flag(key),
                format!("{x} is outside {} ({why})", range_text(lo, hi)),
            ));
        }
    }
    for &(key, max, why) in INT_MAX {
        let Some(toml::Value::Integer(x)) = table.get(key) else {
            continue;
        };
        if *x > max {
            return Err(Error::flag(
                flag(key),
                format!("{x} is larger than {max} ({why})"),
            ));
        }
    }
    if !EVAL_METRICS.iter().any(|(v, _)| *v == cfg.eval_metric) {
        let allowed: Vec<String> = EVAL_METRICS
            .iter()
            .map(|(v, what)| format!("{v} ({what})"))
            .collect();
        return Err(Error::flag(
            flag("eval_metric"),
            format!(
                "eval_metric = '{}' is not a selection metric; expected {}",
                cfg.eval_metric,
                allowed.join(" or ")
            ),
        ));
    }
    check_memory(cfg, available_memory())
}

/// Bytes of memory this machine has available now (Linux `MemAvailable`), if known.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A lower bound of the host memory a training run of `cfg` needs: parameters with their
/// gradient, momentum and EMA copies, and one micro-batch's activations (a ResNet keeps
/// a few values per input value for the backward pass). Deliberately an underestimate:
/// it exists to turn impossible sizes into errors, not to predict peak use.
pub fn estimated_bytes(cfg: &TrainConfig) -> f64 {
    let w = cfg.width as f64;
    // ResNet-50 at stem width 64 has 25.6M parameters; they scale with the width squared.
    let backbone = 25.6e6 * (w / 64.0).powi(2);
    let final_ch = 32.0 * w; // 2048 at width 64
    let heads = final_ch / 4.0 * cfg.seg_classes as f64 * 3.0;
    let fc = final_ch * cfg.num_classes as f64;
    let params = backbone + heads + fc;
    let micro = cfg.micro_batch().max(1) as f64;
    let side = cfg.input_size as f64;
    let activations = micro * 3.0 * side * side * 2.0 * (w / 64.0);
    4.0 * (4.0 * params + activations)
}

fn check_memory(cfg: &TrainConfig, available: Option<u64>) -> Result<()> {
    let Some(avail) = available else {
        return Ok(());
    };
    let need = estimated_bytes(cfg);
    if need > avail as f64 {
        let gb = |b: f64| b / (1u64 << 30) as f64;
        return Err(Error::Msg(format!(
            "config: --width {}, --input-size {}, --batch-size {} (micro-batch {}), \
             --num-classes {} and --seg-classes {} need at least {:.1} GiB of memory; this \
             machine has {:.1} GiB available",
            cfg.width,
            cfg.input_size,
            cfg.batch_size,
            cfg.micro_batch(),
            cfg.num_classes,
            cfg.seg_classes,
            gb(need),
            gb(avail as f64)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(set: &[(&str, &str)]) -> String {
        let mut c = TrainConfig::default();
        for (k, v) in set {
            c.set(k, v).expect("settable");
        }
        check(&c).expect_err("must be refused").to_string()
    }

    #[test]
    fn defaults_pass() {
        check(&TrainConfig::default()).expect("defaults are valid");
    }

    #[test]
    fn the_reported_nonsense_is_refused_with_its_flag() {
        for (k, v, want) in [
            ("min_lr", "-5", "--min-lr"),
            ("momentum", "-0.5", "--momentum"),
            ("weight_decay", "-1", "--weight-decay"),
            ("lambdas", "-3", "--lambdas"),
            ("gamma", "-1", "--gamma"),
            ("color_jitter", "-1", "--color-jitter"),
            ("hflip", "2", "--hflip"),
            ("lr", "nan", "--lr"),
            ("lrb", "inf", "--lrb"),
            ("input_size", "1000000", "--input-size"),
            ("width", "100000", "--width"),
        ] {
            let e = err(&[(k, v)]);
            assert!(e.contains(want), "{k}={v}: {e}");
        }
        assert!(err(&[("lr", "nan")]).contains("not a finite number"));
    }

    #[test]
    fn eval_metric_is_one_of_the_reference_s_two() {
        for ok in ["advtop1", "top1"] {
            let mut c = TrainConfig::default();
            c.set("eval_metric", ok).unwrap();
            check(&c).expect(ok);
        }
        let e = err(&[("eval_metric", "top5")]);
        assert!(
            e.contains("--eval-metric")
                && e.contains("eval_metric = 'top5'")
                && e.contains("advtop1")
                && e.contains("top1 ("),
            "{e}"
        );
    }

    #[test]
    fn a_seed_that_config_toml_cannot_hold_is_refused_by_name() {
        let mut c = TrainConfig {
            seed: u64::MAX,
            ..TrainConfig::default()
        };
        let e = check(&c).unwrap_err().to_string();
        assert!(e.contains("--seed") && e.contains("largest seed"), "{e}");
        c.seed = i64::MAX as u64;
        check(&c).expect("the largest seed is valid");
        // Every group's seed of a ghost-BN run is one a rank's own config can hold.
        for g in 0..64 {
            assert!(crate::train::ghost_bn::group_seed(u64::MAX >> 1, g) <= i64::MAX as u64);
        }
        assert_eq!(crate::train::ghost_bn::group_seed(12345, 0), 12345);
    }

    #[test]
    fn impossible_sizes_are_refused_before_allocation() {
        let mut c = TrainConfig::default();
        c.set("width", "4096").unwrap();
        c.set("input_size", "4096").unwrap();
        let e = check_memory(&c, Some(8 << 30)).unwrap_err().to_string();
        assert!(e.contains("--width 4096") && e.contains("GiB"), "{e}");
        check_memory(&TrainConfig::default(), Some(64 << 30)).expect("defaults fit");
    }
}
