//! Next-token prediction: the language-model loss every fine-tuning mode starts from.
//!
//! Token t predicts token t+1 of the same document. With a loss mask m (1 on supervised targets):
//!
//!   L = Σₜ mₜ·ℓₜ / Σₜ mₜ,    ℓₜ = −log p(yₜ | x≤ₜ)
//!
//! With labels = input ids and no mask this is transformers' `model(ids, labels=ids).loss` (mean over T−1).

use crate::backend::Backend;
use crate::loss::moe_aux::RouterRows;
use crate::models::decoder::{Decoder, Gradients, Sequence};
use anyhow::{Result, bail};

// ANCHOR: next_token_targets
/// targets[t] = ids[t+1] inside a document; the last token of each document (and of the row) predicts nothing
/// (weight 0). `loss_mask[t]`, if given, is the weight of predicting ids[t+1]... as MFTCoder stores it: aligned
/// with the *target* token, so target t uses `loss_mask[t + 1]`.
pub fn next_token_targets(ids: &[u32], segment_ids: Option<&[u32]>, loss_mask: Option<&[f32]>) -> (Vec<u32>, Vec<f32>) {
    let n = ids.len();
    let mut targets = vec![0u32; n];
    let mut weights = vec![0f32; n];
    for t in 0..n.saturating_sub(1) {
        let same_document = segment_ids.is_none_or(|s| s[t] == s[t + 1]);
        if same_document {
            targets[t] = ids[t + 1];
            weights[t] = loss_mask.map_or(1.0, |m| m[t + 1]);
        }
    }
    (targets, weights)
}
// ANCHOR_END: next_token_targets

/// The result of one forward + backward.
pub struct LossAndGrads<B: Backend> {
    /// Σ cₜ·ℓₜ, plus `router_aux_loss_coef`·aux for a mixture of experts (transformers' training loss)
    pub loss: f64,
    /// The load-balancing loss of a mixture of experts (before its coefficient)
    pub aux_loss: Option<f64>,
    /// ℓₜ for every row (0-weight rows included)
    pub token_losses: Vec<f32>,
    /// Σ mₜ (the number of tokens with a non-zero coefficient for `weighted_token_loss`)
    pub supervised: f64,
    pub grads: Gradients<B>,
}

// ANCHOR: mean_token_loss
/// Forward, L = Σₜ cₜ·ℓₜ for given coefficients c (every MFTCoder loss mode is of this form), backward. A mixture
/// of experts adds `router_aux_loss_coef`·aux, as MFTCoder does whatever the loss mode (its gradient comes
/// with [`Decoder::backward`]).
/// `router_rows` (a mixture of experts only): the rows of a flattened batch the balance loss counts and
/// balances (every row, as one sequence, when `None`).
pub fn weighted_token_loss<B: Backend>(
    model: &Decoder<B>,
    b: &B,
    seq: Sequence<'_>,
    targets: &[u32],
    coefficients: &[f32],
    router_rows: Option<RouterRows<'_>>,
) -> Result<LossAndGrads<B>> {
    let deferred = deferred_token_loss(model, b, seq, targets, coefficients, router_rows)?;
    let token_losses: Vec<f32> = b.download(&deferred.token_losses).iter().copied().collect();
    let DeferredLoss { aux_loss, aux_weight, grads, .. } = deferred;
    let loss = weighted_loss(&token_losses, coefficients, aux_weight * aux_loss.unwrap_or(0.0))?;
    let supervised = coefficients.iter().filter(|&&c| c != 0.0).count() as f64;
    Ok(LossAndGrads { loss, aux_loss, token_losses, supervised, grads })
}

/// A forward + backward whose token losses stay on the backend (`Backend::cross_entropy_on_device`): the
/// trainer reads them with the step's report, after the update, so nothing waits for the device mid-step.
pub struct DeferredLoss<B: Backend> {
    /// ℓₜ for every row, [T, 1], not yet read
    pub token_losses: B::Tensor,
    /// The load-balancing loss of a mixture of experts (before its coefficient; its router decides on the host,
    /// so this one is known at once)
    pub aux_loss: Option<f64>,
    /// `router_aux_loss_coef`, or 0 without experts
    pub aux_weight: f64,
    pub grads: Gradients<B>,
}

/// L = Σₜ cₜ·ℓₜ + `aux` (a mixture of experts' weighted balance loss, else 0) from token losses read back, or
/// the error a non-finite loss stops a run with.
pub fn weighted_loss(token_losses: &[f32], coefficients: &[f32], aux: f64) -> Result<f64> {
    let loss = token_losses.iter().zip(coefficients).map(|(&l, &c)| l as f64 * c as f64).sum::<f64>() + aux;
    if !loss.is_finite() {
        bail!("the loss is {loss} (not finite)");
    }
    Ok(loss)
}

// ANCHOR: deferred_token_loss
/// [`weighted_token_loss`] without reading the token losses: the forward to the head's input, the head and the
/// loss's gradient together in chunks of rows (`Decoder::head_loss`: the [T, vocab] logits are never whole),
/// the backward.
pub fn deferred_token_loss<B: Backend>(
    model: &Decoder<B>,
    b: &B,
    seq: Sequence<'_>,
    targets: &[u32],
    coefficients: &[f32],
    router_rows: Option<RouterRows<'_>>,
) -> Result<DeferredLoss<B>> {
    let mut cache = model.forward_train_hidden(b, seq)?;
    if let (Some(rows), Some(moe)) = (router_rows, &model.config.moe) {
        cache.set_router_rows(moe, rows);
    }
    // ℓₜ and dL/dlogits = c·(softmax − onehot), one chunk of rows at a time, straight into dh and dW
    let (token_losses, head) = model.head_loss(b, &cache, targets, coefficients);
    let aux_loss = cache.aux_loss();
    let aux_weight = model.config.moe.as_ref().map_or(0.0, |m| m.aux_loss.loss_weight() as f64);
    let grads = model.backward_from_hidden(b, cache, head);
    Ok(DeferredLoss { token_losses, aux_loss, aux_weight, grads })
}
// ANCHOR_END: deferred_token_loss

/// Masked mean cross-entropy: coefficients mₜ / Σ m (MFTCoder's case1; transformers' loss without a mask).
pub fn mean_token_loss<B: Backend>(
    model: &Decoder<B>,
    b: &B,
    seq: Sequence<'_>,
    targets: &[u32],
    weights: &[f32],
) -> Result<LossAndGrads<B>> {
    let supervised: f64 = weights.iter().map(|&w| w as f64).sum();
    if supervised <= 0.0 {
        bail!("no supervised token in this batch (every loss-mask weight is 0)");
    }
    let coefficients: Vec<f32> = weights.iter().map(|&w| (w as f64 / supervised) as f32).collect();
    let mut result = weighted_token_loss(model, b, seq, targets, &coefficients, None)?;
    result.supervised = supervised;
    Ok(result)
}
// ANCHOR_END: mean_token_loss

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_stay_inside_documents() {
        let (t, w) = next_token_targets(&[5, 6, 7, 8, 9], Some(&[0, 0, 0, 1, 1]), None);
        assert_eq!(t, vec![6, 7, 0, 9, 0]);
        assert_eq!(w, vec![1.0, 1.0, 0.0, 1.0, 0.0]);
        let (_, w) = next_token_targets(&[5, 6, 7], None, Some(&[0.0, 0.0, 1.0]));
        assert_eq!(w, vec![0.0, 1.0, 0.0]);
    }
}
