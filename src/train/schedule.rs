//! Learning-rate and attack-step schedules, as the reference code computes them.
//!
//! - Learning rate: timm `CosineLRScheduler` (k_decay 1, one cycle, no noise, no warm-up
//!   prefix) built by `create_scheduler_v2`. With `on_updates` (the reference's
//!   `--sched-on-updates`, default True in its `adv_train.py` and not overridden by its YAML
//!   files) the time unit is the optimiser update and every length is multiplied by the number
//!   of updates per epoch; otherwise it is the epoch. Update `u` of epoch `e` uses
//!   `lr(t)` with `t = e * updates_per_epoch + u` (per update) or `t = e` (per epoch).
//! - Base learning rate: `lr = lrb * global_batch / 512`.
//! - PGD step of adversarial training: `s = 2 * eps / t` ramped per epoch as
//!   `s * min(epoch, warmup_epochs) / (warmup_epochs + 1e-10)` (so epoch 0 uses step 0,
//!   i.e. the random start only). With `warmup_epochs = 0` the reference formula would give
//!   step 0 for ever (0 / 1e-10), silently turning AT into random noise; we use the full step
//!   then (the one deliberate deviation, documented in docs/train.md).

/// timm `CosineLRScheduler` in the configuration the paper uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineSchedule {
    /// Peak learning rate (timm's `base_values`).
    pub base_lr: f64,
    pub warmup_lr: f64,
    pub min_lr: f64,
    pub epochs: usize,
    pub warmup_epochs: usize,
    /// Step per optimiser update (true) or per epoch (false).
    pub on_updates: bool,
    pub updates_per_epoch: usize,
}

impl CosineSchedule {
    /// `(t_initial, warmup_t)` in the schedule's time unit.
    fn lengths(&self) -> (f64, f64) {
        let k = if self.on_updates {
            self.updates_per_epoch.max(1)
        } else {
            1
        };
        ((self.epochs * k) as f64, (self.warmup_epochs * k) as f64)
    }

    /// timm `CosineLRScheduler._get_lr(t)`.
    pub fn lr_at(&self, t: usize) -> f64 {
        let (t_initial, warmup_t) = self.lengths();
        let t = t as f64;
        if t < warmup_t {
            let step = (self.base_lr - self.warmup_lr) / warmup_t;
            return self.warmup_lr + t * step;
        }
        if t_initial <= 0.0 {
            return self.min_lr;
        }
        // One cycle (cycle_limit 1): i = t // t_initial; past the cycle, lr_min.
        let i = (t / t_initial).floor();
        if i >= 1.0 {
            return self.min_lr;
        }
        let t_curr = t - t_initial * i;
        self.min_lr
            + 0.5
                * (self.base_lr - self.min_lr)
                * (1.0 + (std::f64::consts::PI * t_curr / t_initial).cos())
    }

    /// The learning rate of update `update` (0-based, within the epoch) of `epoch`.
    pub fn lr(&self, epoch: usize, update: usize) -> f64 {
        if self.on_updates {
            self.lr_at(epoch * self.updates_per_epoch + update)
        } else {
            self.lr_at(epoch)
        }
    }
}

/// `lr = lrb * global_batch / 512` (the reference's linear scaling rule).
pub fn scaled_lr(lrb: f64, global_batch: usize) -> f64 {
    lrb * global_batch as f64 / 512.0
}

/// The PGD step size of adversarial training at `epoch`: `2 * eps / iterations`, ramped
/// linearly over the warm-up epochs exactly as the reference computes it.
pub fn attack_step(eps: f64, iterations: usize, epoch: usize, warmup_epochs: usize) -> f64 {
    if iterations == 0 {
        return 0.0;
    }
    let full = eps * 2.0 / iterations as f64;
    if warmup_epochs == 0 {
        return full;
    }
    full * epoch.min(warmup_epochs) as f64 / (warmup_epochs as f64 + 1e-10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paper(on_updates: bool, upe: usize) -> CosineSchedule {
        CosineSchedule {
            base_lr: scaled_lr(0.2, 512),
            warmup_lr: 1e-3,
            min_lr: 1e-2,
            epochs: 80,
            warmup_epochs: 2,
            on_updates,
            updates_per_epoch: upe,
        }
    }

    #[test]
    fn lr_scaling_rule() {
        assert_eq!(scaled_lr(0.2, 512), 0.2);
        assert!((scaled_lr(0.2, 64) - 0.025).abs() < 1e-15);
    }

    #[test]
    fn cosine_per_epoch_matches_timm() {
        let s = paper(false, 2502);
        // Values from timm 0.9 CosineLRScheduler(t_initial=80, lr_min=0.01, warmup_t=2,
        // warmup_lr_init=1e-3) on base lr 0.2: _get_lr(t) for t = 0, 1, 2, 40, 79, 80.
        let want = [
            (0, 0.001),
            (1, 0.1005),
            (
                2,
                0.01 + 0.5 * 0.19 * (1.0 + (std::f64::consts::PI * 2.0 / 80.0).cos()),
            ),
            (40, 0.105),
            (
                79,
                0.01 + 0.5 * 0.19 * (1.0 + (std::f64::consts::PI * 79.0 / 80.0).cos()),
            ),
            (80, 0.01),
        ];
        for (t, v) in want {
            assert!(
                (s.lr_at(t) - v).abs() < 1e-12,
                "t={t}: {} vs {v}",
                s.lr_at(t)
            );
        }
        // Per epoch: every update of an epoch uses the same value.
        assert_eq!(s.lr(1, 0), s.lr(1, 2501));
    }

    #[test]
    fn cosine_per_update_matches_timm() {
        let upe = 10;
        let s = paper(true, upe);
        // warmup_t = 20 updates: linear from 1e-3 to 0.2.
        assert!((s.lr(0, 0) - 0.001).abs() < 1e-15);
        assert!((s.lr(0, 5) - (0.001 + 5.0 * 0.199 / 20.0)).abs() < 1e-15);
        assert!((s.lr(1, 9) - (0.001 + 19.0 * 0.199 / 20.0)).abs() < 1e-15);
        // t = 20 leaves the warm-up: cosine at t_curr = 20 of t_initial = 800.
        let want = 0.01 + 0.5 * 0.19 * (1.0 + (std::f64::consts::PI * 20.0 / 800.0).cos());
        assert!((s.lr(2, 0) - want).abs() < 1e-15);
        assert!((s.lr(40, 0) - 0.105).abs() < 1e-12);
    }

    #[test]
    fn attack_step_ramp() {
        let eps = 4.0 / 255.0;
        // Epoch 0: step 0 (random start only); epoch 1: half; from epoch 2: 2*eps/t (up to
        // the reference's 1e-10 in the denominator).
        assert_eq!(attack_step(eps, 2, 0, 2), 0.0);
        assert!((attack_step(eps, 2, 1, 2) - eps / 2.0).abs() < 1e-12);
        assert!((attack_step(eps, 2, 2, 2) - eps).abs() < 1e-12);
        assert!((attack_step(eps, 2, 50, 2) - eps).abs() < 1e-12);
        assert!(attack_step(eps, 2, 2, 2) < eps, "the 1e-10 is kept");
        // No warm-up: the full step from epoch 0 (the reference would use 0 for ever).
        assert_eq!(attack_step(eps, 2, 0, 0), eps);
        assert!((attack_step(eps, 3, 5, 2) - 2.0 * eps / 3.0).abs() < 1e-12);
    }
}
