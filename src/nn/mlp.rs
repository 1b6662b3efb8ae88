//! The gated MLP of Llama (SwiGLU, Shazeer 2020): `down( silu(gate(x)) ⊙ up(x) )`, silu(z) = z·σ(z).

use ndarray::{Array2, ArrayView2, Zip};

pub fn silu(z: f32) -> f32 {
    z / (1.0 + (-z).exp())
}

// ANCHOR: swiglu_forward
/// gate, up: [T, I] → silu(gate) ⊙ up: [T, I]
pub fn swiglu(gate: ArrayView2<f32>, up: ArrayView2<f32>) -> Array2<f32> {
    let mut out = Array2::zeros(gate.raw_dim());
    Zip::from(&mut out).and(&gate).and(&up).par_for_each(|o, &g, &u| *o = silu(g) * u);
    out
}
// ANCHOR_END: swiglu_forward

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_values() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!((silu(-20.0)).abs() < 1e-7);
        assert!((silu(20.0) - 20.0).abs() < 1e-6);
    }
}
