//! RMSNorm (Zhang & Sennrich, 2019), as Llama uses it.
//!
//! For each row x ∈ ℝᴴ:  rms = √(mean(x²) + ε),  y = w ⊙ (x / rms).
//! transformers computes `x / rms` in f32 and casts it back to the activation dtype *before* multiplying by the
//! weight. On the f32 path the cast is the identity; the bf16 GPU path must keep that order.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Zip};
use rayon::prelude::*;

// ANCHOR: rms_norm_forward
/// x: [T, H], weight: [H] → [T, H]
pub fn rms_norm(x: ArrayView2<f32>, weight: ArrayView1<f32>, eps: f32) -> Array2<f32> {
    let hidden = x.ncols() as f64;
    let mut y = Array2::zeros(x.raw_dim());
    Zip::from(y.rows_mut()).and(x.rows()).par_for_each(|mut y_row, x_row| {
        let mean_square = x_row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / hidden;
        let inv_rms = 1.0 / ((mean_square as f32 + eps).sqrt());
        Zip::from(&mut y_row).and(&x_row).and(&weight).for_each(|y, &x, &w| *y = w * (x * inv_rms));
    });
    y
}
// ANCHOR_END: rms_norm_forward

/// Rows per chunk of the dweight reduction: fixed, so the f64 sums run in the same order on any thread count.
const ROWS_PER_CHUNK: usize = 64;

/// 1/rms of one row, computed exactly as the forward does (mean of squares in f64, the root in f32).
fn inverse_rms(x_row: ArrayView1<f32>, eps: f32) -> f32 {
    let mean_square = x_row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x_row.len() as f64;
    1.0 / ((mean_square as f32 + eps).sqrt())
}

// ANCHOR: rms_norm_backward
/// Per row, with r = 1/rms, x̂ = x·r and g = dy ⊙ w (the gradient reaching x̂):
///
///   ∂L/∂w = Σ_rows dy ⊙ x̂
///   ∂L/∂x = r·g − r³·x·(g·x)/H          (∂r/∂xⱼ = −r³·xⱼ/H)
///
/// dy, x: [T, H], weight: [H] → (dx [T, H], dweight [H]). Only x is needed: r is recomputed per row. The two
/// halves are apart below, since a frozen norm (LoRA training) needs only dx.
pub fn rms_norm_backward(
    dy: ArrayView2<f32>,
    x: ArrayView2<f32>,
    weight: ArrayView1<f32>,
    eps: f32,
) -> (Array2<f32>, Array1<f32>) {
    (rms_norm_input_grad(dy, x, weight, eps), rms_norm_weight_grad(dy, x, eps))
}

/// ∂L/∂x: dy, x: [T, H], weight: [H] → [T, H].
pub fn rms_norm_input_grad(dy: ArrayView2<f32>, x: ArrayView2<f32>, weight: ArrayView1<f32>, eps: f32) -> Array2<f32> {
    assert_eq!(dy.dim(), x.dim(), "rms_norm_backward: dy and x differ");
    assert_eq!(x.ncols(), weight.len(), "rms_norm_backward: weight length");
    let hidden = x.ncols() as f64;
    let mut dx = Array2::zeros(x.raw_dim());
    Zip::from(dx.rows_mut()).and(dy.rows()).and(x.rows()).par_for_each(|mut dx_row, dy_row, x_row| {
        let r = inverse_rms(x_row, eps);
        // g·x = Σⱼ dyⱼ·wⱼ·xⱼ, in f64
        let gx: f64 =
            Zip::from(&dy_row).and(&weight).and(&x_row).fold(0.0, |acc, &d, &w, &v| acc + (d * w) as f64 * v as f64);
        let c = (r as f64).powi(3) * gx / hidden; // r³·(g·x)/H
        Zip::from(&mut dx_row).and(&dy_row).and(&weight).and(&x_row).for_each(|o, &d, &w, &v| {
            *o = ((r * d * w) as f64 - c * v as f64) as f32;
        });
    });
    dx
}

/// ∂L/∂w: dy, x: [T, H] → [H]. f64 partial sums over fixed chunks of rows, then the chunks added in order
/// (deterministic).
pub fn rms_norm_weight_grad(dy: ArrayView2<f32>, x: ArrayView2<f32>, eps: f32) -> Array1<f32> {
    assert_eq!(dy.dim(), x.dim(), "rms_norm_backward: dy and x differ");
    let hidden = x.ncols();
    let partials: Vec<Vec<f64>> = (0..x.nrows().div_ceil(ROWS_PER_CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let rows = chunk * ROWS_PER_CHUNK..((chunk + 1) * ROWS_PER_CHUNK).min(x.nrows());
            let mut acc = vec![0.0f64; hidden];
            for t in rows {
                let (dy_row, x_row) = (dy.row(t), x.row(t));
                let r = inverse_rms(x_row, eps);
                for ((a, &d), &v) in acc.iter_mut().zip(dy_row).zip(x_row) {
                    *a += d as f64 * (v * r) as f64;
                }
            }
            acc
        })
        .collect();
    let mut dweight = vec![0.0f64; hidden];
    for partial in partials {
        for (a, p) in dweight.iter_mut().zip(partial) {
            *a += p;
        }
    }
    dweight.into_iter().map(|a| a as f32).collect()
}
// ANCHOR_END: rms_norm_backward

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::grad_check::{check, random, weighted_sum};
    use crate::rng::Rng;
    use ndarray::array;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn backward_matches_finite_differences(t in 1usize..6, h in 2usize..10, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let eps = 1e-5;
            let x = random(t, h, &mut rng);
            // RMSNorm's curvature grows like 1/rms² of the row: below rms 0.3 (two near-zero entries of a
            // 2-wide row, say) a step of 1e-2 no longer resolves it, even extrapolated (`nn::grad_check`)
            prop_assume!(x.rows().into_iter().all(|row| (row.dot(&row) / h as f32).sqrt() > 0.3));
            let w = random(1, h, &mut rng).row(0).to_owned();
            let r = random(t, h, &mut rng);
            let (dx, dw) = rms_norm_backward(r.view(), x.view(), w.view(), eps);
            check("dx", &x, &dx, |x| weighted_sum(&rms_norm(x.view(), w.view(), eps), &r)).map_err(TestCaseError::fail)?;
            check("dweight", &w, &dw, |w| weighted_sum(&rms_norm(x.view(), w.view(), eps), &r))
                .map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn dweight_chunking_does_not_depend_on_the_row_count() {
        // 130 rows span three chunks; the result must equal a plain f64 sum over rows.
        let mut rng = Rng::new(5);
        let (x, dy) = (random(130, 3, &mut rng), random(130, 3, &mut rng));
        let (_, dw) = rms_norm_backward(dy.view(), x.view(), array![1.0f32, 2.0, 3.0].view(), 1e-6);
        for j in 0..3 {
            let want: f64 =
                (0..130).map(|t| dy[[t, j]] as f64 * (x[[t, j]] * inverse_rms(x.row(t), 1e-6)) as f64).sum();
            assert!((dw[j] as f64 - want).abs() < 1e-5, "{} vs {want}", dw[j]);
        }
    }

    #[test]
    fn unit_weight_gives_unit_root_mean_square() {
        let x = array![[3.0f32, 4.0], [-1.0, 1.0]];
        let y = rms_norm(x.view(), array![1.0f32, 1.0].view(), 0.0);
        for row in y.rows() {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / 2.0;
            assert!((ms - 1.0).abs() < 1e-6);
        }
        let scaled = rms_norm(x.view(), array![2.0f32, 0.5].view(), 0.0);
        assert!((scaled[[0, 0]] - 2.0 * y[[0, 0]]).abs() < 1e-6 && (scaled[[0, 1]] - 0.5 * y[[0, 1]]).abs() < 1e-6);
    }
}
