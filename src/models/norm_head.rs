//! Baichuan2's `NormHead`: the output head multiplies by its rows made unit length, in every forward,
//!
//!   Ŵᵣ = Wᵣ / max(‖Wᵣ‖, 10⁻¹²),   logits = h·Ŵᵀ
//!
//! (`F.normalize`). The stored parameter is W; the gradient reaches it through the normalisation. For one
//! row w with n = ‖w‖ and ŵ = w/n, ∂ŵ/∂w = (I − ŵŵᵀ)/n, so with G = ∂L/∂ŵ
//!
//!   ∂L/∂w = (G − ŵ·⟨G, ŵ⟩) / n
//!
//! — G with its component along ŵ removed: stretching a row changes nothing, so it gets no gradient.
//! (Where n ≤ 10⁻¹² the max picks the constant and ∂L/∂w = G / 10⁻¹².)

use super::decoder::Decoder;
use crate::backend::Backend;

/// `F.normalize`'s ε.
const EPS: f32 = 1e-12;

// ANCHOR: norm_head
/// w: [V, H] → (ŵ [V, H], 1/max(‖wᵣ‖, ε) per row).
pub fn normalize_rows<B: Backend>(b: &B, w: &B::Tensor) -> (B::Tensor, Vec<f32>) {
    let inv_norms: Vec<f32> = b.row_dots(w, w).iter().map(|&sq| 1.0 / sq.sqrt().max(EPS)).collect();
    (b.scale_rows(w, &inv_norms), inv_norms)
}

/// g = ∂L/∂ŵ [V, H], with ŵ and the inverse norms from [`normalize_rows`] → ∂L/∂w.
pub fn normalize_rows_backward<B: Backend>(b: &B, g: &B::Tensor, normed: &B::Tensor, inv_norms: &[f32]) -> B::Tensor {
    let along: Vec<f32> = b
        .row_dots(g, normed)
        .iter()
        .zip(inv_norms)
        .map(|(&dot, &inv)| if inv < 1.0 / EPS { dot * inv } else { 0.0 }) // ⟨G, ŵ⟩ / n; none at the ε floor
        .collect();
    let mut dw = b.scale_rows(g, inv_norms); // G / n
    b.add_scaled(&mut dw, &b.scale_rows(normed, &along), -1.0); // − ŵ·⟨G, ŵ⟩ / n
    dw
}
// ANCHOR_END: norm_head

// ANCHOR: normalize_in_place
impl<B: Backend> Decoder<B> {
    /// What the reference's NormHead does on its first eval-mode forward after training: the stored weight
    /// becomes its normalised rows (`self.weight.data = normalize(self.weight)`). The trainers call this where
    /// MFTCoder evaluates, so the parameter the optimizer moves next is the reference's. The logits are unchanged.
    pub fn normalize_head_in_place(&mut self, b: &B) {
        if let (true, Some(head)) = (self.config.normalized_head, self.lm_head.as_mut()) {
            *head = normalize_rows(b, head).0;
        }
    }
}
// ANCHOR_END: normalize_in_place

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::nn::grad_check::{check, random, weighted_sum};
    use crate::rng::Rng;
    use ndarray::Array2;
    use proptest::prelude::*;

    fn head_logits(b: &Cpu, h: &Array2<f32>, w: &Array2<f32>) -> Array2<f32> {
        let (normed, _) = normalize_rows(b, &b.upload(w.clone()));
        b.download(&b.linear(&b.upload(h.clone()), &normed, None))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// logits = h·normalize(W)ᵀ: the gradient of W through the normalisation against finite differences.
        #[test]
        fn backward_matches_finite_differences(t in 1usize..5, hidden in 2usize..6, vocab in 1usize..6,
                                               seed in any::<u64>()) {
            let b = Cpu;
            let mut rng = Rng::new(seed);
            let (h, w, r) = (random(t, hidden, &mut rng), random(vocab, hidden, &mut rng), random(t, vocab, &mut rng));
            // the normalisation's curvature grows like 1/‖w‖²: below a row norm of 0.5 a step of 1e-2 no longer
            // resolves it, even extrapolated (`nn::grad_check`)
            prop_assume!(w.rows().into_iter().all(|row| row.dot(&row).sqrt() > 0.5));
            let (normed, inv) = normalize_rows(&b, &b.upload(w.clone()));
            let (_, d_normed, _) = b.linear_backward(&b.upload(r.clone()), &b.upload(h.clone()), &normed, true, false);
            let dw = b.download(&normalize_rows_backward(&b, &d_normed.unwrap(), &normed, &inv));
            check("dW", &w, &dw, |w| weighted_sum(&head_logits(&b, &h, w), &r)).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn rows_come_out_unit_length_and_scaling_a_row_changes_nothing() {
        let b = Cpu;
        let mut rng = Rng::new(3);
        let (h, w) = (random(2, 4, &mut rng), random(3, 4, &mut rng));
        let (normed, _) = normalize_rows(&b, &b.upload(w.clone()));
        for sq in b.row_dots(&normed, &normed) {
            assert!((sq - 1.0).abs() < 1e-6, "{sq}");
        }
        let mut stretched = w.clone();
        stretched.row_mut(1).mapv_inplace(|x| 7.5 * x);
        let (a, z) = (head_logits(&b, &h, &w), head_logits(&b, &h, &stretched));
        assert!(a.iter().zip(&z).all(|(x, y)| (x - y).abs() < 1e-6));
    }
}
