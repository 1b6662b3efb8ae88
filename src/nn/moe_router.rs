//! The router of a mixture-of-experts layer: which experts each token goes to, and with what weight.
//!
//! For a token with router logits z ∈ ℝᴱ (one per expert, z = W_gate·x):
//!
//!   p = softmax(z)                               (in f32, over all E experts)
//!   S = the k experts of largest p               (torch.topk: ties to the lower index)
//!   wⱼ = s·pⱼ / Σ_{i∈S} pᵢ   (j ∈ S)             with `normalize` (Mixtral; Qwen2-MoE's `norm_topk_prob`)
//!   wⱼ = s·pⱼ                (j ∈ S)             without it; s = DeepSeek-V2's `routed_scaling_factor`, else 1
//!
//! DeepSeek-V2's group-limited greedy first keeps the `top_groups` of `groups` equal groups of experts whose
//! best p is largest, then picks the k largest p among the kept experts.
//!
//! The selection is piecewise constant, so the gradient reaches z only through the weights:
//!
//!   ∂L/∂pⱼ = s·(∂L/∂wⱼ − Σ_{i∈S} ∂L/∂wᵢ·wᵢ/s) / Σ_{i∈S} pᵢ   (normalize)    ∂L/∂pⱼ = s·∂L/∂wⱼ   (otherwise)
//!   ∂L/∂z = p ⊙ (∂L/∂p − ⟨∂L/∂p, p⟩)                                         (softmax)
//!
//! Routing runs on the host: its decisions pick which rows each expert's product reads.

use ndarray::{Array2, ArrayView2};

// ANCHOR: router_spec
/// How a router picks experts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouterSpec {
    pub experts: usize,
    pub top_k: usize,
    /// Renormalise the k selected probabilities to sum to one.
    pub normalize: bool,
    /// Multiplies every combine weight (DeepSeek-V2's `routed_scaling_factor`; 1 elsewhere).
    pub scaling: f32,
    pub selection: Selection,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The k largest probabilities.
    Greedy,
    /// The k largest among the experts of the `top_groups` best of `groups` groups (DeepSeek-V2).
    GroupLimited { groups: usize, top_groups: usize },
}

/// One layer's routing of T tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    /// softmax(z): [T, E]
    pub probs: Array2<f32>,
    /// the selected experts, best first: [T, k]
    pub experts: Array2<usize>,
    /// their combine weights: [T, k]
    pub weights: Array2<f32>,
}
// ANCHOR_END: router_spec

/// softmax of one row, in f32 (max subtracted), as torch computes it.
fn softmax_row(z: &[f32]) -> Vec<f32> {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// The indices of the k largest values, largest first, ties to the lower index.
fn top_k_indices(values: &[f32], k: usize, allowed: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).filter(|&i| allowed(i)).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

// ANCHOR: route
/// logits: [T, E] → the routing of every token.
pub fn route(logits: ArrayView2<f32>, spec: &RouterSpec) -> Routing {
    let (t, e) = logits.dim();
    assert_eq!(e, spec.experts, "router: {e} logits for {} experts", spec.experts);
    assert!(spec.top_k >= 1 && spec.top_k <= e, "router: top-{} of {e}", spec.top_k);
    let k = spec.top_k;
    let mut probs = Array2::zeros((t, e));
    let mut experts = Array2::zeros((t, k));
    let mut weights = Array2::zeros((t, k));
    for row in 0..t {
        let z: Vec<f32> = logits.row(row).to_vec();
        let p = softmax_row(&z);
        let chosen = match spec.selection {
            Selection::Greedy => top_k_indices(&p, k, |_| true),
            Selection::GroupLimited { groups, top_groups } => {
                let size = e / groups;
                let group_best: Vec<f32> = (0..groups)
                    .map(|g| p[g * size..(g + 1) * size].iter().copied().fold(f32::NEG_INFINITY, f32::max))
                    .collect();
                let kept = top_k_indices(&group_best, top_groups, |_| true);
                top_k_indices(&p, k, |i| kept.contains(&(i / size)))
            }
        };
        let sum: f32 = chosen.iter().map(|&j| p[j]).sum();
        for (slot, &j) in chosen.iter().enumerate() {
            experts[[row, slot]] = j;
            let w = if spec.normalize { p[j] / sum } else { p[j] };
            weights[[row, slot]] = w * spec.scaling;
        }
        probs.row_mut(row).assign(&ndarray::ArrayView1::from(&p));
    }
    Routing { probs, experts, weights }
}
// ANCHOR_END: route

// ANCHOR: route_backward
/// ∂L/∂w [T, k] (and ∂L/∂p [T, E] from elsewhere, e.g. the load-balancing loss) → ∂L/∂z [T, E].
pub fn route_backward(
    routing: &Routing,
    dweights: ArrayView2<f32>,
    dprobs: Option<ArrayView2<f32>>,
    spec: &RouterSpec,
) -> Array2<f32> {
    let (t, e) = routing.probs.dim();
    assert_eq!(dweights.dim(), routing.weights.dim(), "route_backward: ∂L/∂w shape");
    let mut dz = Array2::zeros((t, e));
    for row in 0..t {
        let p = routing.probs.row(row);
        let mut dp: Vec<f64> = match dprobs {
            Some(d) => d.row(row).iter().map(|&v| v as f64).collect(),
            None => vec![0.0; e],
        };
        let chosen = routing.experts.row(row);
        let s = spec.scaling as f64;
        if spec.normalize {
            let sum: f64 = chosen.iter().map(|&j| p[j] as f64).sum();
            // w_j = s·p_j/Σ: ∂w_j/∂p_i = s·(δᵢⱼ − p_j/Σ)/Σ for i in S
            let coupling: f64 =
                (0..chosen.len()).map(|slot| dweights[[row, slot]] as f64 * p[chosen[slot]] as f64).sum::<f64>() / sum;
            for (slot, &j) in chosen.iter().enumerate() {
                dp[j] += s * (dweights[[row, slot]] as f64 - coupling) / sum;
            }
        } else {
            for (slot, &j) in chosen.iter().enumerate() {
                dp[j] += s * dweights[[row, slot]] as f64;
            }
        }
        let dot: f64 = dp.iter().zip(p).map(|(&d, &pi)| d * pi as f64).sum();
        for j in 0..e {
            dz[[row, j]] = (p[j] as f64 * (dp[j] - dot)) as f32;
        }
    }
    dz
}
// ANCHOR_END: route_backward

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::grad_check::{check, random};
    use crate::rng::Rng;
    use proptest::prelude::*;

    fn spec(experts: usize, top_k: usize, normalize: bool, scaling: f32, selection: Selection) -> RouterSpec {
        RouterSpec { experts, top_k, normalize, scaling, selection }
    }

    #[test]
    fn picks_the_largest_and_breaks_ties_to_the_lower_index() {
        let z = Array2::from_shape_vec((2, 4), vec![0.0, 2.0, 1.0, 2.0, 3.0, -1.0, 0.5, 0.4]).unwrap();
        let r = route(z.view(), &spec(4, 2, true, 1.0, Selection::Greedy));
        assert_eq!(r.experts.row(0).to_vec(), vec![1, 3]);
        assert_eq!(r.experts.row(1).to_vec(), vec![0, 2]);
        assert!((r.weights.row(0).sum() - 1.0).abs() < 1e-6 && (r.weights[[0, 0]] - 0.5).abs() < 1e-6);
        let unnormalized = route(z.view(), &spec(4, 2, false, 1.5, Selection::Greedy));
        assert!((unnormalized.weights[[1, 0]] - 1.5 * r.probs[[1, 0]]).abs() < 1e-6);
    }

    #[test]
    fn group_limited_greedy_keeps_the_best_groups() {
        // groups {0,1} and {2,3}: the best single expert (1) sits in group 0, so group 1 is dropped even though
        // its two experts beat expert 0
        let z = Array2::from_shape_vec((1, 4), vec![-3.0, 3.0, 1.0, 1.0]).unwrap();
        let r = route(z.view(), &spec(4, 2, false, 1.0, Selection::GroupLimited { groups: 2, top_groups: 1 }));
        assert_eq!(r.experts.row(0).to_vec(), vec![1, 0]);
        let greedy = route(z.view(), &spec(4, 2, false, 1.0, Selection::Greedy));
        assert_eq!(greedy.experts.row(0).to_vec(), vec![1, 2]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn backward_matches_finite_differences(t in 1usize..4, e in 2usize..7, k_raw in 1usize..4, normalize in any::<bool>(),
                                               with_dprobs in any::<bool>(), seed in any::<u64>()) {
            let k = k_raw.min(e);
            let s = spec(e, k, normalize, 1.25, Selection::Greedy);
            let mut rng = Rng::new(seed);
            // well-separated logits, so the ±ε probes never change the selection
            let mut z = random(t, e, &mut rng);
            for row in 0..t {
                for j in 0..e {
                    z[[row, j]] = z[[row, j]] * 0.1 + (((j + row) % e) as f32) * 0.7;
                }
            }
            let (rw, rp) = (random(t, k, &mut rng), random(t, e, &mut rng));
            let routing = route(z.view(), &s);
            let dz = route_backward(&routing, rw.view(), with_dprobs.then_some(rp.view()), &s);
            check("dz", &z, &dz, |z| {
                let r = route(z.view(), &s);
                assert_eq!(r.experts, routing.experts, "a probe changed the selection");
                let mut total: f64 = r.weights.iter().zip(&rw).map(|(&w, &c)| w as f64 * c as f64).sum();
                if with_dprobs {
                    total += r.probs.iter().zip(&rp).map(|(&p, &c)| p as f64 * c as f64).sum::<f64>();
                }
                total
            })
            .map_err(TestCaseError::fail)?;
        }
    }
}
