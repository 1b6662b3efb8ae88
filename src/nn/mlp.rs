//! The MLP activations. Llama's gated MLP (SwiGLU, Shazeer 2020) is `down( silu(gate(x)) ⊙ up(x) )`,
//! silu(z) = z·σ(z). StarCoder2's plain MLP is `c_proj( gelu(c_fc(x)) )` and Gemma's gated one
//! `down( gelu(gate(x)) ⊙ up(x) )`, both with GELU's tanh approximation (`gelu_pytorch_tanh`). GPT-NeoX's
//! plain MLP uses the exact GELU, x·Φ(x) with the normal CDF Φ written through erf.

use ndarray::{Array2, ArrayView2, Axis, Zip, s};

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
        (*dg, *du) = silu_times_backward(d, g, u);
    });
    (dgate, dup)
}

/// (∂L/∂g, ∂L/∂u) of silu(g)·u for an upstream d.
fn silu_times_backward(d: f32, g: f32, u: f32) -> (f32, f32) {
    let sigma = 1.0 / (1.0 + super::fastmath::exp(-g));
    (d * u * sigma * (1.0 + g * (1.0 - sigma)), d * g * sigma)
}
// ANCHOR_END: swiglu_backward

// ANCHOR: swiglu_halves
/// The halves of a [T, 2I] tensor whose rows are [gate | up] (a stacked or fused gate/up product), as views.
pub fn halves(gate_up: ArrayView2<f32>) -> (ArrayView2<f32>, ArrayView2<f32>) {
    let inner = gate_up.ncols() / 2;
    assert_eq!(gate_up.ncols(), 2 * inner, "swiglu: width {} is not [gate | up]", gate_up.ncols());
    (gate_up.slice_move(s![.., ..inner]), gate_up.slice_move(s![.., inner..]))
}

/// `swiglu` of the halves of [gate | up] rows: gate_up [T, 2I] → [T, I]. Row by row, so each half is a
/// contiguous run (the halves as two strided [T, I] views would iterate element by element).
pub fn swiglu_halves(gate_up: ArrayView2<f32>) -> Array2<f32> {
    let inner = halves(gate_up).0.ncols();
    let mut out = Array2::zeros((gate_up.nrows(), inner));
    Zip::from(out.rows_mut()).and(gate_up.rows()).par_for_each(|out, row| {
        let (gate, up) = row.split_at(Axis(0), inner);
        Zip::from(out).and(gate).and(up).for_each(|o, &g, &u| *o = silu(g) * u);
    });
    out
}

/// The backward of [`swiglu_halves`]: dy [T, I] → ∂L/∂[gate | up] [T, 2I], written in that layout (the
/// stacked product's dx reads it whole), row by row as the forward.
pub fn swiglu_halves_backward(dy: ArrayView2<f32>, gate_up: ArrayView2<f32>) -> Array2<f32> {
    let inner = halves(gate_up).0.ncols();
    assert_eq!(dy.dim(), (gate_up.nrows(), inner), "swiglu_halves_backward: dy is not [T, I]");
    let mut d = Array2::zeros(gate_up.raw_dim());
    Zip::from(d.rows_mut()).and(dy.rows()).and(gate_up.rows()).par_for_each(|d, dy, row| {
        let ((dgate, dup), (gate, up)) = (d.split_at(Axis(0), inner), row.split_at(Axis(0), inner));
        Zip::from(dgate).and(dup).and(dy).and(gate).and(up).for_each(|dg, du, &d, &g, &u| {
            (*dg, *du) = silu_times_backward(d, g, u);
        });
    });
    d
}
// ANCHOR_END: swiglu_halves

// ANCHOR: gelu_tanh
/// √(2/π)
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// GELU's tanh approximation (Hendrycks & Gimpel 2016; PyTorch's `gelu(approximate="tanh")`):
/// gelu(x) = ½·x·(1 + tanh(u)),  u = √(2/π)·(x + 0.044715·x³).
pub fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x)).tanh())
}

/// gelu′(x) = ½·(1 + t) + ½·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²),  t = tanh(u).
pub fn gelu_tanh_derivative(x: f32) -> f32 {
    let t = (SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x)
}

/// x: [T, I] → gelu(x)
pub fn gelu_tanh_rows(x: ArrayView2<f32>) -> Array2<f32> {
    let mut out = Array2::zeros(x.raw_dim());
    Zip::from(&mut out).and(&x).par_for_each(|o, &v| *o = gelu_tanh(v));
    out
}

/// dy, x: [T, I] → dx = dy·gelu′(x)
pub fn gelu_tanh_backward(dy: ArrayView2<f32>, x: ArrayView2<f32>) -> Array2<f32> {
    assert_eq!(dy.dim(), x.dim(), "gelu_tanh_backward: dy and x differ");
    let mut dx = Array2::zeros(x.raw_dim());
    Zip::from(&mut dx).and(&dy).and(&x).par_for_each(|o, &d, &v| *o = d * gelu_tanh_derivative(v));
    dx
}
// ANCHOR_END: gelu_tanh

// ANCHOR: gelu_erf
/// Which GELU an MLP applies: the tanh approximation (`gelu_pytorch_tanh`, `gelu_new`) or the exact one (`gelu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gelu {
    Tanh,
    Erf,
}

/// 1/√2 and 1/√(2π)
const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// The exact GELU (PyTorch's `gelu(approximate="none")`): gelu(x) = x·Φ(x) = ½·x·(1 + erf(x/√2)).
/// erf is evaluated in f64 (the `libm` crate; std's is not stable yet) and the product rounded once to f32.
pub fn gelu_erf(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + libm::erf(x * FRAC_1_SQRT_2))) as f32
}

/// gelu′(x) = Φ(x) + x·φ(x),  φ(x) = e^(−x²/2)/√(2π).
pub fn gelu_erf_derivative(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * (1.0 + libm::erf(x * FRAC_1_SQRT_2)) + x * (-0.5 * x * x).exp() * FRAC_1_SQRT_2PI) as f32
}

/// x: [T, I] → gelu(x), exact
pub fn gelu_erf_rows(x: ArrayView2<f32>) -> Array2<f32> {
    let mut out = Array2::zeros(x.raw_dim());
    Zip::from(&mut out).and(&x).par_for_each(|o, &v| *o = gelu_erf(v));
    out
}

/// dy, x: [T, I] → dx = dy·gelu′(x), exact
pub fn gelu_erf_backward(dy: ArrayView2<f32>, x: ArrayView2<f32>) -> Array2<f32> {
    assert_eq!(dy.dim(), x.dim(), "gelu_erf_backward: dy and x differ");
    let mut dx = Array2::zeros(x.raw_dim());
    Zip::from(&mut dx).and(&dy).and(&x).par_for_each(|o, &d, &v| *o = d * gelu_erf_derivative(v));
    dx
}
// ANCHOR_END: gelu_erf

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::grad_check::{check, random, weighted_sum};
    use crate::rng::Rng;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn the_halves_of_one_gate_up_give_swiglu_of_the_two(t in 1usize..6, i in 1usize..9, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let (gate_up, dy) = (random(t, 2 * i, &mut rng), random(t, i, &mut rng));
            let (gate, up) = halves(gate_up.view());
            prop_assert_eq!(swiglu_halves(gate_up.view()), swiglu(gate_up.slice(s![.., ..i]).to_owned().view(), up));
            let (dgate, dup) = swiglu_backward(dy.view(), gate, up);
            let want = ndarray::concatenate![ndarray::Axis(1), dgate, dup];
            prop_assert_eq!(swiglu_halves_backward(dy.view(), gate_up.view()), want);
        }

        #[test]
        fn backward_matches_finite_differences(t in 1usize..6, i in 1usize..9, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let (gate, up, r) = (random(t, i, &mut rng), random(t, i, &mut rng), random(t, i, &mut rng));
            let (dgate, dup) = swiglu_backward(r.view(), gate.view(), up.view());
            check("dgate", &gate, &dgate, |g| weighted_sum(&swiglu(g.view(), up.view()), &r)).map_err(TestCaseError::fail)?;
            check("dup", &up, &dup, |u| weighted_sum(&swiglu(gate.view(), u.view()), &r)).map_err(TestCaseError::fail)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn gelu_backward_matches_finite_differences(t in 1usize..6, i in 1usize..9, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let (x, r) = (random(t, i, &mut rng).mapv(|v| 2.0 * v), random(t, i, &mut rng));
            let dx = gelu_tanh_backward(r.view(), x.view());
            check("dx", &x, &dx, |x| weighted_sum(&gelu_tanh_rows(x.view()), &r)).map_err(TestCaseError::fail)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn gelu_erf_backward_matches_finite_differences(t in 1usize..6, i in 1usize..9, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let (x, r) = (random(t, i, &mut rng).mapv(|v| 2.0 * v), random(t, i, &mut rng));
            let dx = gelu_erf_backward(r.view(), x.view());
            check("dx", &x, &dx, |x| weighted_sum(&gelu_erf_rows(x.view()), &r)).map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn gelu_erf_values() {
        // torch.nn.functional.gelu(torch.tensor([-3., -1., 0., 0.5, 1., 3.], dtype=torch.float64))
        let want = [-0.004_049_694, -0.158_655_25, 0.0, 0.345_731_23, 0.841_344_75, 2.995_950_3];
        for (x, w) in [-3.0f32, -1.0, 0.0, 0.5, 1.0, 3.0].into_iter().zip(want) {
            assert!((gelu_erf(x) - w).abs() < 1e-6, "gelu({x}) = {} vs {w}", gelu_erf(x));
        }
        // the two GELUs differ by up to ~5e-4: a model must use the one it was trained with
        assert!((gelu_erf(-3.0) - gelu_tanh(-3.0)).abs() > 4e-4);
    }

    #[test]
    fn gelu_values() {
        // torch.nn.functional.gelu(torch.tensor([-3., -1., 0., 0.5, 1., 3.]), approximate="tanh")
        let want = [-0.003_637_433, -0.158_808, 0.0, 0.345_714, 0.841_192, 2.996_363];
        for (x, w) in [-3.0f32, -1.0, 0.0, 0.5, 1.0, 3.0].into_iter().zip(want) {
            assert!((gelu_tanh(x) - w).abs() < 1e-6, "gelu({x}) = {} vs {w}", gelu_tanh(x));
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
