//! Building blocks on the CPU reference path: each file holds one concept — the math in a short comment,
//! the forward, and its tests. The CPU backend (`backend::cpu`) is a thin seam over these functions.
pub mod attention;
pub mod attention_reference;
pub mod attention_scores;
pub mod column_gather;
pub mod cross_entropy;
pub mod elementwise;
pub mod embedding;
pub mod fastmath;
pub mod fused_qkv;
pub mod gate_up;
pub mod layer_norm;
pub mod linear;
pub mod linear_4bit;
pub mod matmul;
pub mod mlp;
pub mod moe_router;
pub mod rms_norm;
pub mod rope;
pub mod row_scale;

// ANCHOR: grad_check
/// Finite-difference checking shared by the backward tests of every block.
///
/// For a forward `y = f(x)` and a fixed random `R` shaped like `y`, the scalar objective is `L(x) = Σ y ∘ R`
/// (summed in f64), so the analytic gradient is exactly `backward(dy = R)`. Each input entry is nudged by ±ε
/// and ±ε/2; the two central differences D(ε), D(ε/2) are combined by Richardson extrapolation,
/// (4·D(ε/2) − D(ε))/3, which cancels the ε² term of their truncation error.
///
/// Tolerance: |fd − analytic| ≤ ATOL + RTOL·max(|fd|, |analytic|), RTOL = 1e-2, ATOL = 2e-3, ε = 1e-2.
/// Why: the forward runs in f32, so each L carries rounding noise of about 1e-7·Σ|yᵢRᵢ| over the outputs the
/// entry touches; divided by a step of ~1e-2 that is ~1e-5 to 1e-3 for our sizes (the ATOL floor). A plain
/// central difference with ε = 1e-2 is off by O(ε²·f‴/f′), which reaches 1–2 % for RMSNorm rows of small norm
/// (its curvature grows like 1/rms²); after extrapolation the truncation error is O(ε⁴), far inside RTOL.
/// A wrong formula (a missing term, a transposed index, a lost scale) is off by O(1) relative, far outside.
#[cfg(test)]
pub(crate) mod grad_check {
    use crate::rng::Rng;
    use ndarray::{Array, Array2, Dimension};

    pub const EPS: f32 = 1e-2;
    pub const RTOL: f64 = 1e-2;
    pub const ATOL: f64 = 2e-3;

    pub fn random(rows: usize, cols: usize, rng: &mut Rng) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |_| rng.normal() as f32)
    }

    /// Σ y ∘ r, in f64.
    pub fn weighted_sum<D: Dimension>(y: &Array<f32, D>, r: &Array<f32, D>) -> f64 {
        assert_eq!(y.shape(), r.shape());
        y.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
    }

    /// Compares `analytic` with central differences of `objective` at every entry of `x`.
    /// Returns the worst |fd − analytic| / (ATOL + RTOL·max(|fd|, |analytic|)), which must stay ≤ 1, and the
    /// largest absolute difference seen; `Err` names the first entry over the tolerance.
    pub fn check<D: Dimension>(
        name: &str,
        x: &Array<f32, D>,
        analytic: &Array<f32, D>,
        objective: impl Fn(&Array<f32, D>) -> f64,
    ) -> Result<(f64, f64), String> {
        assert_eq!(x.shape(), analytic.shape(), "{name}: gradient shape");
        let mut probe = x.clone();
        let (mut worst_ratio, mut worst_abs) = (0.0f64, 0.0f64);
        for i in 0..x.len() {
            let x0 = x.as_slice_memory_order().expect("contiguous")[i];
            let mut central = |eps: f32| {
                let (plus, minus) = (x0 + eps, x0 - eps);
                probe.as_slice_memory_order_mut().unwrap()[i] = plus;
                let lp = objective(&probe);
                probe.as_slice_memory_order_mut().unwrap()[i] = minus;
                let lm = objective(&probe);
                probe.as_slice_memory_order_mut().unwrap()[i] = x0;
                (lp - lm) / (plus as f64 - minus as f64) // the step actually taken in f32
            };
            let fd = (4.0 * central(EPS / 2.0) - central(EPS)) / 3.0;
            let an = analytic.as_slice_memory_order().expect("contiguous")[i] as f64;
            let diff = (fd - an).abs();
            let ratio = diff / (ATOL + RTOL * fd.abs().max(an.abs()));
            if ratio.is_nan() || ratio > 1.0 {
                return Err(format!("{name}[{i}]: finite difference {fd:.6} vs analytic {an:.6} (|Δ| = {diff:.2e})"));
            }
            worst_ratio = worst_ratio.max(ratio);
            worst_abs = worst_abs.max(diff);
        }
        if std::env::var_os("MFTCODER_FD_REPORT").is_some() {
            eprintln!("fd {name}: worst |Δ|/tol = {worst_ratio:.3}, worst |Δ| = {worst_abs:.2e}");
        }
        Ok((worst_ratio, worst_abs))
    }
}
// ANCHOR_END: grad_check
