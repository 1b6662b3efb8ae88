//! The gated MLP of Llama (SwiGLU, Shazeer 2020): `down( silu(gate(x)) ⊙ up(x) )`, silu(z) = z·σ(z).

use ndarray::{Array2, ArrayView2, Zip};

pub fn silu(z: f32) -> f32 {
    z / (1.0 + super::fastmath::exp(-z))
}

// ANCHOR: swiglu_forward
/// gate, up: [T, I] → silu(gate) ⊙ up: [T, I]
pub fn swiglu(gate: ArrayView2<f32>, up: ArrayView2<f32>) -> Array2<f32> {
    let mut out = Array2::zeros(gate.raw_dim());
    Zip::from(&mut out).and(&gate).and(&up).par_for_each(|o, &g, &u| *o = silu(g) * u);
    out
}
// ANCHOR_END: swiglu_forward

// ANCHOR: swiglu_backward
/// out = silu(g)·u with silu(g) = g·σ(g) and silu′(g) = σ(g)·(1 + g·(1 − σ(g))):
///
///   ∂L/∂u = dy·silu(g),   ∂L/∂g = dy·u·silu′(g)
///
/// dy, gate, up: [T, I] → (dgate, dup), both [T, I].
pub fn swiglu_backward(dy: ArrayView2<f32>, gate: ArrayView2<f32>, up: ArrayView2<f32>) -> (Array2<f32>, Array2<f32>) {
    assert_eq!(dy.dim(), gate.dim(), "swiglu_backward: dy and gate differ");
    assert_eq!(gate.dim(), up.dim(), "swiglu_backward: gate and up differ");
    let mut dgate = Array2::zeros(gate.raw_dim());
    let mut dup = Array2::zeros(gate.raw_dim());
    Zip::from(&mut dgate).and(&mut dup).and(&dy).and(&gate).and(&up).par_for_each(|dg, du, &d, &g, &u| {
        let sigma = 1.0 / (1.0 + super::fastmath::exp(-g));
        *du = d * g * sigma;
        *dg = d * u * sigma * (1.0 + g * (1.0 - sigma));
    });
    (dgate, dup)
}
// ANCHOR_END: swiglu_backward

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::grad_check::{check, random, weighted_sum};
    use crate::rng::Rng;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn backward_matches_finite_differences(t in 1usize..6, i in 1usize..9, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let (gate, up, r) = (random(t, i, &mut rng), random(t, i, &mut rng), random(t, i, &mut rng));
            let (dgate, dup) = swiglu_backward(r.view(), gate.view(), up.view());
            check("dgate", &gate, &dgate, |g| weighted_sum(&swiglu(g.view(), up.view()), &r)).map_err(TestCaseError::fail)?;
            check("dup", &up, &dup, |u| weighted_sum(&swiglu(gate.view(), u.view()), &r)).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn silu_values() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((silu(-20.0)).abs() < 1e-7);
        assert!((silu(20.0) - 20.0).abs() < 1e-6);
    }
}
