//! Scaling each row of a matrix by its own weight, and the row-wise dot products that are its backward:
//! a mixture of experts weights each expert's output rows by the router's combine weights.
//!
//!   y[t] = w[t]·x[t]      ⇒   ∂L/∂x[t] = w[t]·dy[t],   ∂L/∂w[t] = ⟨dy[t], x[t]⟩

use ndarray::{Array2, ArrayView2, Axis, Zip};

// ANCHOR: row_scale
/// x: [T, H], weights: [T] → y[t] = weights[t]·x[t]
pub fn scale_rows(x: ArrayView2<f32>, weights: &[f32]) -> Array2<f32> {
    assert_eq!(x.nrows(), weights.len(), "scale_rows: one weight per row");
    let mut y = x.to_owned();
    Zip::from(y.axis_iter_mut(Axis(0))).and(weights).par_for_each(|mut row, &w| row.mapv_inplace(|v| v * w));
    y
}

/// a, b: [T, H] → ⟨a[t], b[t]⟩ for every t, summed in f64
pub fn row_dots(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Vec<f32> {
    assert_eq!(a.dim(), b.dim(), "row_dots: shapes differ");
    a.rows()
        .into_iter()
        .zip(b.rows())
        .map(|(a, b)| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>() as f32)
        .collect()
}
// ANCHOR_END: row_scale

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::grad_check::{check, random, weighted_sum};
    use crate::rng::Rng;
    use ndarray::Array1;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn backward_matches_finite_differences(t in 1usize..6, h in 1usize..7, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let (x, r) = (random(t, h, &mut rng), random(t, h, &mut rng));
            let w: Vec<f32> = (0..t).map(|_| rng.normal() as f32).collect();
            check("dx", &x, &scale_rows(r.view(), &w), |x| weighted_sum(&scale_rows(x.view(), &w), &r))
                .map_err(TestCaseError::fail)?;
            let w_arr = Array1::from(w.clone());
            let dw = Array1::from(row_dots(r.view(), x.view()));
            check("dw", &w_arr, &dw, |w| weighted_sum(&scale_rows(x.view(), w.as_slice().unwrap()), &r))
                .map_err(TestCaseError::fail)?;
        }
    }
}
