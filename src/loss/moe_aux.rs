//! The load-balancing loss of a mixture of experts (Switch Transformer, eqs. 4–6), as transformers'
//! `load_balancing_loss_func` computes it and MFTCoder adds it (`loss += router_aux_loss_coef · aux`).
//!
//! Over the N = L·T routed rows of every MoE layer (masked rows left out, N counting only the kept ones), with
//! cₑ the number of (row, slot) pairs that selected expert e and Sₑ = Σ_rows pₑ:
//!
//!   aux = E · Σₑ (cₑ/N)·(Sₑ/N)
//!
//! cₑ is a count of discrete choices and carries no gradient; the loss reaches the router through Sₑ:
//!
//!   ∂aux/∂p_{row,e} = E·cₑ/N²   (times the row's mask)
//!
//! A perfectly balanced router (cₑ = kN/E, pₑ = 1/E) gives aux = k. Each cₑ/N is at most 1 (a row picks an
//! expert once) and the Sₑ/N sum to 1, so aux never exceeds E, which a top-1 router collapsed onto one expert
//! reaches.
//!
//! DeepSeek-V2's own gates (its model code, which MFTCoder trains it with) balance each layer on its own, and
//! each sequence b of S tokens on its own (`seq_aux`), normalised so that balanced routing gives 1:
//!
//!   aux_l = (1/B)·Σ_b Σₑ (cₑᵇ·E/(S·k))·(Sₑᵇ/S),     ∂aux_l/∂p_{t,e} = cₑᵇ⁽ᵗ⁾·E/(B·S²·k)
//!
//! (without `seq_aux` the whole batch is one "sequence"). Its gradient, times `aux_loss_alpha`, joins the
//! backward of every layer, while the loss the model reports stays the cross-entropy.

use crate::nn::moe_router::Routing;
use ndarray::Array2;
use std::ops::Range;

/// The rows of a flattened batch the balance losses need: MFTCoder's collator mask (each row's tokens up to
/// its last supervised one; the load-balancing loss counts only those) and the row length (DeepSeek-V2's
/// per-sequence term balances each row on its own).
#[derive(Clone, Copy, Debug)]
pub struct RouterRows<'a> {
    pub mask: &'a [f32],
    pub row_len: usize,
}

// ANCHOR: load_balancing
/// The aux loss of the routings of every MoE layer of one forward, and ∂aux/∂p for each layer ([T, E]).
/// `mask[t]` (1 keeps row t, 0 drops it; transformers' attention mask) applies to every layer alike.
pub fn load_balancing_loss(routings: &[&Routing], experts: usize, mask: Option<&[f32]>) -> (f64, Vec<Array2<f32>>) {
    let mut counts = vec![0.0f64; experts];
    let mut prob_sums = vec![0.0f64; experts];
    let mut rows = 0.0f64;
    for routing in routings {
        let t = routing.probs.nrows();
        for row in 0..t {
            let m = mask.map_or(1.0, |m| m[row] as f64);
            for &e in routing.experts.row(row) {
                counts[e] += m;
            }
            for (e, &p) in routing.probs.row(row).iter().enumerate() {
                prob_sums[e] += m * p as f64;
            }
            rows += m;
        }
    }
    if routings.is_empty() || rows == 0.0 {
        return (0.0, routings.iter().map(|r| Array2::zeros(r.probs.raw_dim())).collect());
    }
    let e = experts as f64;
    let aux = e * counts.iter().zip(&prob_sums).map(|(c, s)| (c / rows) * (s / rows)).sum::<f64>();
    let grads = routings
        .iter()
        .map(|routing| {
            Array2::from_shape_fn(routing.probs.raw_dim(), |(row, j)| {
                let m = mask.map_or(1.0, |m| m[row] as f64);
                (e * counts[j] / (rows * rows) * m) as f32
            })
        })
        .collect();
    (aux, grads)
}
// ANCHOR_END: load_balancing

// ANCHOR: sequence_balance
/// DeepSeek-V2's balance term, summed over the sparse layers, and ∂/∂p for each layer ([T, E]). Each layer's
/// T routed rows are cut into `sequences` (every row in one of them); each sequence is balanced on its own and
/// the layer's term is their mean.
pub fn sequence_balance_loss(
    routings: &[&Routing],
    experts: usize,
    sequences: &[Range<usize>],
) -> (f64, Vec<Array2<f32>>) {
    let e = experts as f64;
    let b = sequences.len() as f64;
    let mut total = 0.0;
    let grads = routings
        .iter()
        .map(|routing| {
            let k = routing.experts.ncols() as f64;
            let mut grad = Array2::zeros(routing.probs.raw_dim());
            for rows in sequences {
                let s = rows.len() as f64;
                let (mut counts, mut prob_sums) = (vec![0.0f64; experts], vec![0.0f64; experts]);
                for t in rows.clone() {
                    routing.experts.row(t).iter().for_each(|&x| counts[x] += 1.0);
                    routing.probs.row(t).iter().enumerate().for_each(|(x, &p)| prob_sums[x] += p as f64);
                }
                // cₑ·E/(S·k): 1 for every expert under balanced routing
                let load: Vec<f64> = counts.iter().map(|c| c * e / (s * k)).collect();
                total += load.iter().zip(&prob_sums).map(|(l, p)| l * p / s).sum::<f64>() / b;
                for t in rows.clone() {
                    for (x, l) in load.iter().enumerate() {
                        grad[[t, x]] = (l / (s * b)) as f32;
                    }
                }
            }
            grad
        })
        .collect();
    (total, grads)
}
// ANCHOR_END: sequence_balance

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::moe_router::{RouterSpec, Selection, route};
    use crate::rng::Rng;

    fn spec(experts: usize, top_k: usize) -> RouterSpec {
        RouterSpec { experts, top_k, normalize: true, scaling: 1.0, selection: Selection::Greedy }
    }

    #[test]
    fn balanced_routing_gives_k_and_collapse_gives_more() {
        // four rows, each preferring a different one of four experts by a wide margin
        let balanced = Array2::from_shape_fn((4, 4), |(t, e)| if t == e { 20.0 } else { 0.0 });
        let r = route(balanced.view(), &spec(4, 1));
        let (aux, _) = load_balancing_loss(&[&r], 4, None);
        assert!((aux - 1.0).abs() < 1e-6, "balanced top-1: aux = k = 1, got {aux}");
        let collapsed = Array2::from_shape_fn((4, 4), |(_, e)| if e == 0 { 20.0 } else { 0.0 });
        let (aux, _) = load_balancing_loss(&[&route(collapsed.view(), &spec(4, 1))], 4, None);
        assert!((aux - 4.0).abs() < 1e-6, "collapsed top-1: aux = E = 4, got {aux}");
    }

    #[test]
    fn gradient_matches_finite_differences_in_the_probabilities() {
        // aux is bilinear in (counts, probability sums): with the selection held, it is linear in each p
        let mut rng = Rng::new(3);
        let z: Vec<Array2<f32>> = (0..2).map(|_| Array2::from_shape_fn((5, 6), |_| rng.normal() as f32)).collect();
        let routings: Vec<_> = z.iter().map(|z| route(z.view(), &spec(6, 2))).collect();
        let refs: Vec<&Routing> = routings.iter().collect();
        let mask = [1.0, 1.0, 0.0, 1.0, 1.0];
        let (aux, grads) = load_balancing_loss(&refs, 6, Some(&mask));
        for (l, (routing, grad)) in routings.iter().zip(&grads).enumerate() {
            for (row, j) in [(0, 0), (2, 3), (4, 5)] {
                let mut moved = routing.clone();
                moved.probs[[row, j]] += 1e-3;
                let mut others: Vec<&Routing> = refs.clone();
                others[l] = &moved;
                let (aux2, _) = load_balancing_loss(&others, 6, Some(&mask));
                let fd = (aux2 - aux) / 1e-3;
                assert!(
                    (fd - grad[[row, j]] as f64).abs() < 1e-5,
                    "layer {l} [{row}, {j}]: {fd} vs {}",
                    grad[[row, j]]
                );
            }
        }
        assert_eq!(grads[0][[2, 3]], 0.0, "a masked row gets no gradient");
    }

    #[test]
    fn the_sequence_balance_is_one_when_balanced_and_its_gradient_matches_finite_differences() {
        let balanced = Array2::from_shape_fn((4, 4), |(t, e)| if t == e { 20.0 } else { 0.0 });
        let r = route(balanced.view(), &spec(4, 1));
        let (aux, _) = sequence_balance_loss(&[&r], 4, &[0..4]);
        assert!((aux - 1.0).abs() < 1e-6, "balanced: {aux}");
        let mut rng = Rng::new(5);
        let z: Vec<Array2<f32>> = (0..2).map(|_| Array2::from_shape_fn((6, 5), |_| rng.normal() as f32)).collect();
        let routings: Vec<_> = z.iter().map(|z| route(z.view(), &spec(5, 2))).collect();
        let refs: Vec<&Routing> = routings.iter().collect();
        let sequences = [0..2, 2..6];
        let (aux, grads) = sequence_balance_loss(&refs, 5, &sequences);
        for (l, (routing, grad)) in routings.iter().zip(&grads).enumerate() {
            for (row, j) in [(0, 0), (3, 2), (5, 4)] {
                let mut moved = routing.clone();
                moved.probs[[row, j]] += 1e-3;
                let mut others = refs.clone();
                others[l] = &moved;
                let fd = (sequence_balance_loss(&others, 5, &sequences).0 - aux) / 1e-3;
                assert!(
                    (fd - grad[[row, j]] as f64).abs() < 1e-5,
                    "layer {l} [{row}, {j}]: {fd} vs {}",
                    grad[[row, j]]
                );
            }
        }
    }
}
