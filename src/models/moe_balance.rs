//! A mixture of experts' balance loss in training: computed over one forward's sparse routings, recomputed
//! for a flattened batch's rows, or shared by several forwards that stand for one batch (a preference pair's
//! chosen and rejected). Each cache keeps the loss and, per layer, its gradient with respect to the router's
//! probabilities, which [`Decoder::backward`](super::decoder::Decoder::backward) adds.

use super::decoder_config::{AuxLoss, Moe};
use super::decoder_train::TrainCache;
use crate::backend::Backend;
use crate::loss::moe_aux::{RouterRows, load_balancing_loss, sequence_balance_loss};
use crate::nn::moe_router::Routing;
use ndarray::Array2;

impl<B: Backend> TrainCache<'_, B> {
    /// The balance loss of this forward's routing (`None` without one). The training loss adds its
    /// [`AuxLoss::loss_weight`] times it, and `Decoder::backward` adds its gradient.
    pub fn aux_loss(&self) -> Option<f64> {
        self.aux.as_ref().map(|(aux, _)| *aux)
    }

    /// Recompute the balance loss for a flattened batch: the load-balancing loss counts only the rows of the
    /// collator's mask, DeepSeek-V2's per-sequence term balances each row on its own.
    pub fn set_router_rows(&mut self, moe: &Moe, rows: RouterRows<'_>) {
        if self.aux.is_some() {
            let sparse: Vec<&Routing> = self.routings.iter().flatten().collect();
            let t = self.seq.ids.len();
            let (aux, grads) = match moe.aux_loss {
                AuxLoss::LoadBalancing { .. } => load_balancing_loss(&sparse, moe.router.experts, Some(rows.mask)),
                AuxLoss::SequenceBalance { per_sequence: true, .. } => {
                    let sequences: Vec<_> =
                        (0..t).step_by(rows.row_len).map(|s| s..(s + rows.row_len).min(t)).collect();
                    sequence_balance_loss(&sparse, moe.router.experts, &sequences)
                }
                AuxLoss::SequenceBalance { per_sequence: false, .. } => {
                    sequence_balance_loss(&sparse, moe.router.experts, &[0..t])
                }
                AuxLoss::None => return,
            };
            self.aux = Some((aux, spread_over_layers(&self.routings, grads)));
        }
    }
}

/// The balance loss of one forward's sparse routings (every row counted, the whole forward one sequence).
pub(super) fn balance_loss(moe: &Moe, sparse: &[&Routing]) -> Option<(f64, Vec<Array2<f32>>)> {
    let rows = sparse.first().map_or(0, |r| r.probs.nrows());
    match moe.aux_loss {
        AuxLoss::LoadBalancing { .. } => Some(load_balancing_loss(sparse, moe.router.experts, None)),
        AuxLoss::SequenceBalance { .. } => Some(sequence_balance_loss(sparse, moe.router.experts, &[0..rows])),
        AuxLoss::None => None,
    }
}

/// Per-sparse-layer gradients back in layer order (None for dense layers).
pub(super) fn spread_over_layers(routings: &[Option<Routing>], grads: Vec<Array2<f32>>) -> Vec<Option<Array2<f32>>> {
    let mut grads = grads.into_iter();
    routings.iter().map(|r| r.as_ref().and_then(|_| grads.next())).collect()
}

// ANCHOR: joint_aux_loss
/// One balance loss over several forwards, as if their rows were one batch (TRL concatenates a preference
/// batch's chosen and rejected sequences into one forward): each cache gets its share of the gradient.
/// DeepSeek-V2's per-sequence term balances each forward on its own and averages. Returns the joint aux loss
/// (`None` without one).
pub fn joint_aux_loss<B: Backend>(caches: &mut [&mut TrainCache<'_, B>], moe: &Moe) -> Option<f64> {
    if caches.iter().all(|c| c.aux.is_none()) {
        return None;
    }
    if let AuxLoss::SequenceBalance { per_sequence: true, .. } = moe.aux_loss {
        let n = caches.len() as f64;
        let mut total = 0.0;
        for cache in caches.iter_mut() {
            let sparse: Vec<&Routing> = cache.routings.iter().flatten().collect();
            let (aux, grads) = balance_loss(moe, &sparse).expect("a balance loss");
            let grads = grads.into_iter().map(|g| g / n as f32).collect();
            total += aux / n;
            cache.aux = Some((aux, spread_over_layers(&cache.routings, grads)));
        }
        return Some(total);
    }
    // the rows of every forward, layer by layer, as one batch (the load-balancing loss concatenates them)
    let all: Vec<&Routing> = caches.iter().flat_map(|c| c.routings.iter().flatten()).collect();
    let (aux, grads) = match moe.aux_loss {
        AuxLoss::LoadBalancing { .. } => load_balancing_loss(&all, moe.router.experts, None),
        _ => joint_sequence_balance(caches, moe),
    };
    let mut grads = grads.into_iter();
    for cache in caches.iter_mut() {
        let n = cache.routings.iter().flatten().count();
        let own: Vec<Array2<f32>> = grads.by_ref().take(n).collect();
        cache.aux = Some((aux, spread_over_layers(&cache.routings, own)));
    }
    Some(aux)
}
// ANCHOR_END: joint_aux_loss

/// DeepSeek-V2's balance term without `seq_aux`: every forward's rows as one sequence, layer by layer. The
/// gradients come back forward by forward, each forward's sparse layers in order.
fn joint_sequence_balance<B: Backend>(caches: &[&mut TrainCache<'_, B>], moe: &Moe) -> (f64, Vec<Array2<f32>>) {
    let per_cache: Vec<Vec<&Routing>> = caches.iter().map(|c| c.routings.iter().flatten().collect()).collect();
    let stack = |layer: usize| {
        let part = |f: &dyn Fn(&Routing) -> ndarray::ArrayView2<'_, f32>| {
            let views: Vec<_> = per_cache.iter().map(|r| f(r[layer])).collect();
            ndarray::concatenate(ndarray::Axis(0), &views).expect("one width per layer")
        };
        let experts: Vec<_> = per_cache.iter().map(|r| r[layer].experts.view()).collect();
        Routing {
            probs: part(&|r| r.probs.view()),
            experts: ndarray::concatenate(ndarray::Axis(0), &experts).expect("one k per layer"),
            weights: part(&|r| r.weights.view()),
        }
    };
    let stacked: Vec<Routing> = (0..per_cache[0].len()).map(stack).collect();
    let rows: usize = stacked.first().map_or(0, |r| r.probs.nrows());
    let (aux, joint) = sequence_balance_loss(&stacked.iter().collect::<Vec<_>>(), moe.router.experts, &[0..rows]);
    let mut grads = Vec::new();
    let mut start = 0;
    for routings in &per_cache {
        let t = routings.first().map_or(0, |r| r.probs.nrows());
        grads.extend(joint.iter().map(|g| g.slice(ndarray::s![start..start + t, ..]).to_owned()));
        start += t;
    }
    (aux, grads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::models::decoder::{Decoder, DecoderConfig, RouterSpec, Selection, Sequence};

    /// Two forwards balanced jointly (DPO's chosen and rejected) give the balance loss and gradients of one
    /// forward over both as separate documents: per batch as one sequence, per sequence as two.
    #[test]
    fn joint_balance_of_two_forwards_is_that_of_one_flattened_forward() {
        for per_sequence in [false, true] {
            let mut config = DecoderConfig::with_shape(40, 16, 24, 2, 2, 2);
            config.moe = Some(Moe {
                router: RouterSpec {
                    experts: 4,
                    top_k: 2,
                    normalize: false,
                    scaling: 1.0,
                    selection: Selection::Greedy,
                },
                expert_intermediate_size: 8,
                sparse_layers: vec![true, true],
                shared_expert: None,
                aux_loss: AuxLoss::SequenceBalance { alpha: 0.1, per_sequence },
            });
            config.names = crate::models::qwen2_moe::NAMES;
            let model = Decoder::random(&Cpu, config, 3);
            let moe = model.config.moe.clone().unwrap();
            let (a, b): (Vec<u32>, Vec<u32>) = ((1..9).collect(), (20..28).collect());
            let positions: Vec<usize> = (0..8).collect();
            let seq = |ids| Sequence { ids, positions: &positions, segment_ids: None };
            let (_, mut ca) = model.forward_train(&Cpu, seq(&a)).unwrap();
            let (_, mut cb) = model.forward_train(&Cpu, seq(&b)).unwrap();
            let joint = joint_aux_loss(&mut [&mut ca, &mut cb], &moe).unwrap();

            let ids: Vec<u32> = a.iter().chain(&b).copied().collect();
            let both: Vec<usize> = (0..8).chain(0..8).collect();
            let segments: Vec<u32> = (0..16).map(|i| (i / 8) << 16).collect();
            let (_, mut flat) = model
                .forward_train(&Cpu, Sequence { ids: &ids, positions: &both, segment_ids: Some(&segments) })
                .unwrap();
            flat.set_router_rows(&moe, RouterRows { mask: &[1.0; 16], row_len: 8 });
            let (want, want_grads) = flat.aux.as_ref().unwrap();
            assert!((joint - want).abs() < 1e-5, "per_sequence {per_sequence}: {joint} vs {want}");
            for l in 0..2 {
                let want = want_grads[l].as_ref().unwrap();
                for (c, rows) in [(&ca, 0..8), (&cb, 8..16)] {
                    let got = c.aux.as_ref().unwrap().1[l].as_ref().unwrap();
                    let diff = (got - &want.slice(ndarray::s![rows, ..])).iter().fold(0.0f32, |m, d| m.max(d.abs()));
                    assert!(diff < 1e-6, "per_sequence {per_sequence}, layer {l}: gradients differ by {diff}");
                }
            }
        }
    }
}
