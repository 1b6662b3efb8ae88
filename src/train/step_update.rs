//! The end of an optimizer step, as one backend call (`Backend::clipped_adamw_update`): the finiteness
//! checks, global-norm clipping and AdamW over every parameter, and one report back on the host with the
//! gradient norm, the step's token losses and whatever was not finite.
//!
//! The order is the trainer's: a step whose losses or gradients are not finite updates nothing (the caller
//! names the offender and stops); otherwise the gradients are clipped together to `max_norm` (torch's
//! `clip_grad_norm_`) and AdamW updates each parameter; a parameter the update made non-finite is reported, so
//! the run stops before it can be checkpointed.
//!
//! [`reference_update`] is that sequence op by op (the CPU backend's, so every CPU golden is unchanged); the
//! GPU does it in four launches and reads its report once (`backend/cuda/optim.rs`).

use crate::backend::Backend;
use crate::train::optim::{AdamWScalars, clip_grad_norm_on, first_non_finite};

/// What one step updates, and with what.
pub struct StepUpdate<'a, 'p, 'g, T> {
    /// Every trainable parameter, in parameter order.
    pub params: &'a mut [&'p mut T],
    /// AdamW's moments, one pair per parameter.
    pub m: &'a mut [T],
    pub v: &'a mut [T],
    /// The step's gradients, in the order the global norm adds them up (the gradient map's order, torch's
    /// order of `parameters()` being ours for the goldens).
    pub grads: &'a mut [&'g mut T],
    /// Parameter i's gradient is `grads[grad_of[i]]`; None: it has none this step (an expert no token reached),
    /// and it is left alone with its moments.
    pub grad_of: &'a [Option<usize>],
    /// AdamW's scalars per parameter (each has its own decay factor).
    pub scalars: &'a [AdamWScalars],
    /// The clipping threshold (∞: no clipping).
    pub max_norm: f32,
    /// The token losses of the step's micro-batches, where `Backend::cross_entropy_on_device` left them.
    pub losses: &'a [&'a T],
}

/// What the step did.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Updated,
    /// Some token loss is NaN or ∞: nothing was updated.
    NonFiniteLoss,
    /// The gradient of parameter i (the first in parameter order) is not finite: nothing was updated.
    NonFiniteGradient(usize),
    /// The update made parameter i (the first in parameter order) non-finite.
    NonFiniteParameter(usize),
}

/// The step's one read back.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// The global gradient norm before clipping (NaN when the step was refused for its losses).
    pub grad_norm: f32,
    /// Each micro-batch's token losses, in the order of `StepUpdate::losses`.
    pub token_losses: Vec<Vec<f32>>,
    pub outcome: Outcome,
}

impl<T> StepUpdate<'_, '_, '_, T> {
    /// The lists must line up: one moment pair, one `grad_of` and one set of scalars per parameter.
    pub fn check(&self) {
        let p = self.params.len();
        assert!(self.m.len() == p && self.v.len() == p, "clipped_adamw_update: {p} parameters, other moments");
        assert_eq!(self.grad_of.len(), p, "clipped_adamw_update: one gradient index per parameter");
        assert_eq!(self.scalars.len(), p, "clipped_adamw_update: one set of scalars per parameter");
        assert!(
            self.grad_of.iter().flatten().all(|&g| g < self.grads.len()),
            "clipped_adamw_update: a gradient index past the {} gradients",
            self.grads.len()
        );
    }
}

// ANCHOR: reference_update
/// The step's end op by op, on any backend: what the CPU runs, and what the GPU's fused version must equal.
pub fn reference_update<B: Backend>(b: &B, u: StepUpdate<'_, '_, '_, B::Tensor>) -> StepReport {
    u.check();
    let token_losses: Vec<Vec<f32>> = u.losses.iter().map(|l| b.download(l).iter().copied().collect()).collect();
    if token_losses.iter().flatten().any(|l| !l.is_finite()) {
        return StepReport { grad_norm: f32::NAN, token_losses, outcome: Outcome::NonFiniteLoss };
    }
    let non_finite_grad = u.grad_of.iter().position(|g| g.is_some_and(|g| !b.sum_squares(u.grads[g]).is_finite()));
    if let Some(i) = non_finite_grad {
        return StepReport { grad_norm: f32::NAN, token_losses, outcome: Outcome::NonFiniteGradient(i) };
    }
    let grad_norm = clip_grad_norm_on(b, u.grads, u.max_norm);
    for (i, p) in u.params.iter_mut().enumerate() {
        if let Some(g) = u.grad_of[i] {
            b.adamw_update(p, u.grads[g], &mut u.m[i], &mut u.v[i], &u.scalars[i]);
        }
    }
    let outcome = match first_non_finite(b, u.params.iter().enumerate().map(|(i, p)| (i, &**p))) {
        Some(i) => Outcome::NonFiniteParameter(i),
        None => Outcome::Updated,
    };
    StepReport { grad_norm, token_losses, outcome }
}
// ANCHOR_END: reference_update
