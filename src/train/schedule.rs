//! Learning-rate schedules: linear warm-up, then constant, linear or cosine decay, with MFTCoder's `min_lr`
//! floor. The factors are those of transformers' `get_scheduler` (a `LambdaLR` over optimizer steps):
//!
//!   warm-up (s < W):  λ(s) = s / max(1, W)
//!   linear:           λ(s) = max(0, (N − s) / max(1, N − W))
//!   cosine:           λ(s) = max(0, ½·(1 + cos(π·(s − W) / max(1, N − W))))
//!   constant:         λ(s) = 1                         ("constant" has no warm-up at all, even if W > 0)
//!
//! lr(s) = base·λ(s), and MFTCoder then floors it: after every `lr_scheduler.step()`,
//! `if lr <= min_lr: lr = min_lr` (reference §3). The floor also lifts the first warm-up steps.
//!
//! Semantics (reference §3, "recommended"): `s` counts optimizer steps, W is the warm-up in optimizer steps and
//! N the real number of optimizer steps, so the warm-up lasts W updates and the decay ends exactly at the last
//! one. MFTCoder under accelerate differs: it passes `num_warmup_steps = W·GA·P` and
//! `num_training_steps = M·GA` (GA = gradient accumulation, P = processes) and accelerate's prepared scheduler
//! advances P times per optimizer step, so with GA > 1 its warm-up lasts W·GA updates and only ≈1/GA of the
//! cosine is traversed. We do not reproduce that quirk; with GA = 1 on one process both agree.

use std::fmt;
use std::str::FromStr;

/// The `lr_scheduler_type` values we support (transformers' `SchedulerType` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrSchedule {
    /// "constant": λ = 1, no warm-up (transformers ignores `num_warmup_steps` for it).
    Constant,
    /// "constant_with_warmup": linear warm-up, then λ = 1.
    ConstantWithWarmup,
    /// "linear": linear warm-up, then linear decay to 0 at the last step.
    Linear,
    /// "cosine" (MFTCoder's default): linear warm-up, then half a cosine down to 0 at the last step.
    Cosine,
}

const NAMES: [(&str, LrSchedule); 4] = [
    ("constant", LrSchedule::Constant),
    ("constant_with_warmup", LrSchedule::ConstantWithWarmup),
    ("linear", LrSchedule::Linear),
    ("cosine", LrSchedule::Cosine),
];

impl FromStr for LrSchedule {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        NAMES.iter().find(|(n, _)| *n == name).map(|&(_, kind)| kind).ok_or_else(|| {
            let allowed: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
            format!("lr_scheduler_type {name:?} is not supported; allowed: {}", allowed.join(", "))
        })
    }
}

impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = NAMES.iter().find(|(_, k)| k == self).map(|(n, _)| *n).unwrap_or("?");
        f.write_str(name)
    }
}

// ANCHOR: learning_rate
/// The learning rate of optimizer step `step` (0-based): base·λ(step), the value transformers' scheduler holds
/// after `step` calls of `scheduler.step()`, floored at `min_lr` once at least one scheduler step was taken
/// (MFTCoder applies the floor after each `scheduler.step()`, so step 0 keeps base·λ(0), which is 0 during a
/// warm-up). With `min_lr = 0` this is exactly `get_scheduler(kind, opt, warmup_steps, total_steps)`.
pub fn learning_rate(
    kind: LrSchedule,
    base_lr: f64,
    min_lr: f64,
    step: usize,
    warmup_steps: usize,
    total_steps: usize,
) -> f64 {
    let (s, w, n) = (step as f64, warmup_steps as f64, total_steps as f64);
    let warming_up = step < warmup_steps && kind != LrSchedule::Constant;
    let factor = if warming_up {
        s / w.max(1.0)
    } else {
        let decay_steps = (total_steps as i64 - warmup_steps as i64).max(1) as f64;
        match kind {
            LrSchedule::Constant | LrSchedule::ConstantWithWarmup => 1.0,
            LrSchedule::Linear => ((n - s) / decay_steps).max(0.0),
            LrSchedule::Cosine => {
                let progress = (s - w) / decay_steps;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    };
    let lr = base_lr * factor;
    if step > 0 && lr <= min_lr { min_lr } else { lr }
}
// ANCHOR_END: learning_rate

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_allowed_ones() {
        for (name, kind) in NAMES {
            assert_eq!(name.parse::<LrSchedule>().unwrap(), kind);
            assert_eq!(kind.to_string(), name);
        }
        let err = "polynomial".parse::<LrSchedule>().unwrap_err();
        assert!(err.contains("polynomial") && err.contains("cosine"), "{err}");
    }

    #[test]
    fn warm_up_then_decay_to_zero_at_the_last_step() {
        let lr = |kind, s| learning_rate(kind, 1.0, 0.0, s, 4, 12);
        assert_eq!(lr(LrSchedule::Cosine, 0), 0.0);
        assert_eq!(lr(LrSchedule::Cosine, 2), 0.5);
        assert_eq!(lr(LrSchedule::Cosine, 4), 1.0);
        assert!((lr(LrSchedule::Cosine, 8) - 0.5).abs() < 1e-15);
        assert_eq!(lr(LrSchedule::Cosine, 12), 0.0);
        assert_eq!(lr(LrSchedule::Linear, 8), 0.5);
        assert_eq!(lr(LrSchedule::Linear, 13), 0.0);
        assert_eq!(lr(LrSchedule::ConstantWithWarmup, 1), 0.25);
        assert_eq!(lr(LrSchedule::Constant, 1), 1.0);
    }

    #[test]
    fn min_lr_floors_every_step_after_the_first() {
        let lr = |s| learning_rate(LrSchedule::Cosine, 1e-4, 1e-5, s, 10, 100);
        assert_eq!(lr(0), 0.0); // no scheduler.step() yet: MFTCoder's floor has not run
        assert_eq!(lr(1), 1e-5); // 1e-5 ≤ min_lr: floored
        assert_eq!(lr(5), 5e-5);
        assert_eq!(lr(100), 1e-5);
    }
}
