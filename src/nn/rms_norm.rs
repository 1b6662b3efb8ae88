//! RMSNorm (Zhang & Sennrich, 2019), as Llama uses it.
//!
//! For each row x ∈ ℝᴴ:  rms = √(mean(x²) + ε),  y = w ⊙ (x / rms).
//! transformers computes `x / rms` in f32 and casts it back to the activation dtype *before* multiplying by the
//! weight. On the f32 path the cast is the identity; the bf16 GPU path must keep that order.

use ndarray::{Array2, ArrayView1, ArrayView2, Zip};

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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

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
