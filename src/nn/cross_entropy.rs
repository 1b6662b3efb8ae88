//! Softmax and cross-entropy fused into one pass over the logits, with a weight per row (the loss mask).
//!
//! For a row of logits z ∈ ℝⱽ and its target y:
//!
//!   ℓ = −log softmax(z)_y = logsumexp(z) − z_y
//!
//! The softmax is never materialised on its own: one pass finds the max, one sums exp(z − max) (in f64), and the
//! last writes the gradient straight into dlogits. Fusing matters because the logits are the largest activation
//! of a language model ([T, V] with V ≈ 32k–150k).

use super::fastmath;
use ndarray::{Array1, Array2, ArrayView2, Zip};

/// Per-token losses and the gradient of Σₜ weightₜ·ℓₜ with respect to the logits.
pub struct CrossEntropy {
    /// [T] ℓₜ, reported for every row, also where the weight is 0 (useful for logging and evaluation).
    pub losses: Array1<f32>,
    /// [T, V] weightₜ·(softmax(zₜ) − onehot(yₜ)); rows of weight 0 are exactly zero.
    pub dlogits: Array2<f32>,
}

// ANCHOR: cross_entropy
/// ∂ℓ/∂zⱼ = softmax(z)ⱼ − [j = y], so for the weighted sum L = Σₜ wₜ·ℓₜ:
///
///   ∂L/∂zₜ = wₜ·(softmax(zₜ) − onehot(yₜ))
///
/// logits: [T, V], targets: [T], weights: [T] → losses [T], dlogits [T, V]. The caller chooses the
/// normalisation through the weights (MFTCoder's case1 divides by the number of supervised tokens: pass
/// wₜ = maskₜ / Σ mask, or scale dlogits afterwards). Rows run in parallel.
pub fn cross_entropy(logits: ArrayView2<f32>, targets: &[u32], weights: &[f32]) -> CrossEntropy {
    let (rows, vocab) = logits.dim();
    assert_eq!(targets.len(), rows, "cross_entropy: one target per row of logits");
    assert_eq!(weights.len(), rows, "cross_entropy: one weight per row of logits");
    if let Some(&bad) = targets.iter().find(|&&y| y as usize >= vocab) {
        panic!("cross_entropy: target {bad} is outside the vocabulary of {vocab}");
    }
    let mut losses = Array1::zeros(rows);
    let mut dlogits = Array2::zeros((rows, vocab));
    Zip::from(&mut losses).and(dlogits.rows_mut()).and(logits.rows()).and(targets).and(weights).par_for_each(
        |loss, mut grad, z, &y, &w| {
            let z_copy;
            let z = match z.as_slice() {
                Some(contiguous) => contiguous,
                None => {
                    z_copy = z.to_vec();
                    &z_copy
                }
            };
            let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            // Σ exp(z − max): exponentials in f32 (vectorised), the sum in f64 over 16 lanes
            let mut lanes = [0.0f64; 16];
            for chunk in z.chunks(16) {
                for (lane, &v) in lanes.iter_mut().zip(chunk) {
                    *lane += fastmath::exp(v - max) as f64;
                }
            }
            let lse = max as f64 + lanes.iter().sum::<f64>().ln();
            *loss = (lse - z[y as usize] as f64) as f32;
            if w != 0.0 {
                let lse = lse as f32;
                let grad = grad.as_slice_mut().expect("fresh rows are contiguous");
                for (g, &v) in grad.iter_mut().zip(z) {
                    *g = w * fastmath::exp(v - lse);
                }
                grad[y as usize] -= w;
            }
        },
    );
    CrossEntropy { losses, dlogits }
}
// ANCHOR_END: cross_entropy

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::grad_check::{check, random};
    use crate::rng::Rng;
    use ndarray::array;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn gradient_matches_finite_differences(t in 1usize..6, v in 2usize..12, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let logits = random(t, v, &mut rng).mapv(|x| 3.0 * x);
            let targets: Vec<u32> = (0..t).map(|_| rng.below(v as u64) as u32).collect();
            // weights: some rows masked out, the others of varying size
            let weights: Vec<f32> = (0..t).map(|_| if rng.below(3) == 0 { 0.0 } else { rng.next_f32() + 0.5 }).collect();
            let ce = cross_entropy(logits.view(), &targets, &weights);
            // L = Σₜ wₜ·ℓₜ in f64
            let objective = |z: &Array2<f32>| {
                let ce = cross_entropy(z.view(), &targets, &weights);
                ce.losses.iter().zip(&weights).map(|(&l, &w)| l as f64 * w as f64).sum::<f64>()
            };
            check("dlogits", &logits, &ce.dlogits, objective).map_err(TestCaseError::fail)?;
            for (row, &w) in ce.dlogits.rows().into_iter().zip(&weights) {
                if w == 0.0 {
                    prop_assert!(row.iter().all(|&g| g == 0.0));
                }
            }
        }
    }

    #[test]
    fn matches_a_hand_computation_and_survives_huge_logits() {
        // uniform logits over 4 classes: ℓ = ln 4, gradient 1/4 − onehot
        let ce = cross_entropy(array![[0.0f32, 0.0, 0.0, 0.0]].view(), &[2], &[1.0]);
        assert!((ce.losses[0] - 4f32.ln()).abs() < 1e-7);
        assert_eq!(ce.dlogits, array![[0.25, 0.25, -0.75, 0.25]]);
        // a max-subtracted softmax is not troubled by logits that would overflow exp
        let ce = cross_entropy(array![[1000.0f32, 0.0], [-1000.0, 0.0]].view(), &[0, 0], &[1.0, 0.0]);
        assert_eq!(ce.losses[0], 0.0);
        assert_eq!(ce.losses[1], 1000.0);
        assert!(ce.dlogits.iter().all(|g| g.is_finite()));
        assert_eq!(ce.dlogits.row(1).sum(), 0.0);
    }
}
