//! LayerNorm (Ba et al., 2016), as StarCoder2, GPT-NeoX and Phi use it: centre and scale each row, then an
//! affine map with a weight and a bias.
//!
//! For each row x ∈ ℝᴴ:  μ = mean(x),  σ² = mean((x − μ)²),  r = 1/√(σ² + ε),  x̂ = (x − μ)·r,
//! y = w ⊙ x̂ + b. (σ² is the biased variance, as `torch.nn.LayerNorm` computes it.)

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Zip};
use rayon::prelude::*;

/// (μ, r) of one row: mean and 1/√(σ² + ε), the sums in f64.
fn moments(x_row: ArrayView1<f32>, eps: f32) -> (f32, f32) {
    let n = x_row.len() as f64;
    let mean = x_row.iter().map(|&v| v as f64).sum::<f64>() / n;
    let variance = x_row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, 1.0 / (variance as f32 + eps).sqrt())
}

// ANCHOR: layer_norm_forward
/// x: [T, H], weight, bias: [H] → [T, H]
pub fn layer_norm(x: ArrayView2<f32>, weight: ArrayView1<f32>, bias: ArrayView1<f32>, eps: f32) -> Array2<f32> {
    assert_eq!(x.ncols(), weight.len(), "layer_norm: weight length");
    assert_eq!(x.ncols(), bias.len(), "layer_norm: bias length");
    let mut y = Array2::zeros(x.raw_dim());
    Zip::from(y.rows_mut()).and(x.rows()).par_for_each(|mut y_row, x_row| {
        let (mean, r) = moments(x_row, eps);
        Zip::from(&mut y_row)
            .and(&x_row)
            .and(&weight)
            .and(&bias)
            .for_each(|y, &x, &w, &b| *y = w * ((x - mean) * r) + b);
    });
    y
}
// ANCHOR_END: layer_norm_forward

/// Rows per chunk of the dweight/dbias reduction: fixed, so the sums run in the same order on any thread count.
const ROWS_PER_CHUNK: usize = 64;

// ANCHOR: layer_norm_backward
/// Per row, with g = dy ⊙ w (the gradient reaching x̂):
///
///   ∂L/∂w = Σ_rows dy ⊙ x̂,   ∂L/∂b = Σ_rows dy
///   ∂L/∂x = r·(g − mean(g) − x̂·mean(g ⊙ x̂))
///
/// (x̂ is unchanged by adding a constant to x or by scaling x − μ, which removes g's mean and its component
/// along x̂.) dy, x: [T, H], weight: [H] → (dx [T, H], dweight [H], dbias [H]); μ and r are recomputed. The
/// halves are apart below, since a frozen norm (LoRA training) needs only dx.
pub fn layer_norm_backward(
    dy: ArrayView2<f32>,
    x: ArrayView2<f32>,
    weight: ArrayView1<f32>,
    eps: f32,
) -> (Array2<f32>, Array1<f32>, Array1<f32>) {
    let (dweight, dbias) = layer_norm_params_grad(dy, x, eps);
    (layer_norm_input_grad(dy, x, weight, eps), dweight, dbias)
}

/// ∂L/∂x: dy, x: [T, H], weight: [H] → [T, H].
pub fn layer_norm_input_grad(
    dy: ArrayView2<f32>,
    x: ArrayView2<f32>,
    weight: ArrayView1<f32>,
    eps: f32,
) -> Array2<f32> {
    assert_eq!(dy.dim(), x.dim(), "layer_norm_backward: dy and x differ");
    assert_eq!(x.ncols(), weight.len(), "layer_norm_backward: weight length");
    let hidden = x.ncols() as f64;
    let mut dx = Array2::zeros(x.raw_dim());
    Zip::from(dx.rows_mut()).and(dy.rows()).and(x.rows()).par_for_each(|mut dx_row, dy_row, x_row| {
        let (mean, r) = moments(x_row, eps);
        let (mut g_mean, mut gx_mean) = (0.0f64, 0.0f64);
        Zip::from(&dy_row).and(&weight).and(&x_row).for_each(|&d, &w, &v| {
            let g = (d * w) as f64;
            g_mean += g;
            gx_mean += g * ((v - mean) * r) as f64;
        });
        let (g_mean, gx_mean) = (g_mean / hidden, gx_mean / hidden);
        Zip::from(&mut dx_row).and(&dy_row).and(&weight).and(&x_row).for_each(|o, &d, &w, &v| {
            let x_hat = ((v - mean) * r) as f64;
            *o = (r as f64 * ((d * w) as f64 - g_mean - x_hat * gx_mean)) as f32;
        });
    });
    dx
}

/// (∂L/∂w, ∂L/∂b): dy, x: [T, H] → ([H], [H]). f64 partial sums over fixed chunks of rows, then the chunks
/// added in order.
pub fn layer_norm_params_grad(dy: ArrayView2<f32>, x: ArrayView2<f32>, eps: f32) -> (Array1<f32>, Array1<f32>) {
    assert_eq!(dy.dim(), x.dim(), "layer_norm_backward: dy and x differ");
    let hidden = x.ncols();
    let partials: Vec<(Vec<f64>, Vec<f64>)> = (0..x.nrows().div_ceil(ROWS_PER_CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let rows = chunk * ROWS_PER_CHUNK..((chunk + 1) * ROWS_PER_CHUNK).min(x.nrows());
            let (mut dw, mut db) = (vec![0.0f64; hidden], vec![0.0f64; hidden]);
            for t in rows {
                let (dy_row, x_row) = (dy.row(t), x.row(t));
                let (mean, r) = moments(x_row, eps);
                for (c, (&d, &v)) in dy_row.iter().zip(x_row).enumerate() {
                    dw[c] += d as f64 * ((v - mean) * r) as f64;
                    db[c] += d as f64;
                }
            }
            (dw, db)
        })
        .collect();
    let (mut dweight, mut dbias) = (vec![0.0f64; hidden], vec![0.0f64; hidden]);
    for (dw, db) in partials {
        dweight.iter_mut().zip(dw).for_each(|(a, p)| *a += p);
        dbias.iter_mut().zip(db).for_each(|(a, p)| *a += p);
    }
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
    (to_f32(dweight), to_f32(dbias))
}
// ANCHOR_END: layer_norm_backward

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::grad_check::{check, random, weighted_sum};
    use crate::rng::Rng;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn backward_matches_finite_differences(t in 1usize..5, h in 3usize..9, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            // LayerNorm's curvature grows like 1/σ², so rows of nearly equal entries would put the ε = 1e-2
            // differences' truncation error outside the tolerance; a ramp under the noise keeps σ ≳ 0.6. (With
            // two entries x̂ = ±1 whatever they are, a step at x₀ = x₁: hence h ≥ 3.)
            let ramp = Array2::from_shape_fn((t, h), |(_, j)| 0.8 * j as f32);
            let (x, r) = (&random(t, h, &mut rng) * 0.2 + &ramp, random(t, h, &mut rng));
            let w = random(1, h, &mut rng).row(0).mapv(|v| 1.0 + 0.3 * v);
            let b = random(1, h, &mut rng).row(0).to_owned();
            let (dx, dw, db) = layer_norm_backward(r.view(), x.view(), w.view(), 1e-5);
            check("dx", &x, &dx, |x| weighted_sum(&layer_norm(x.view(), w.view(), b.view(), 1e-5), &r))
                .map_err(TestCaseError::fail)?;
            check("dw", &w, &dw, |w| weighted_sum(&layer_norm(x.view(), w.view(), b.view(), 1e-5), &r))
                .map_err(TestCaseError::fail)?;
            check("db", &b, &db, |b| weighted_sum(&layer_norm(x.view(), w.view(), b.view(), 1e-5), &r))
                .map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn rows_come_out_with_zero_mean_and_unit_variance_before_the_affine_map() {
        let x = Array2::from_shape_vec((2, 4), vec![1.0f32, 2.0, 3.0, 4.0, -5.0, 0.0, 5.0, 10.0]).unwrap();
        let (ones, zeros) = (Array1::ones(4), Array1::zeros(4));
        let y = layer_norm(x.view(), ones.view(), zeros.view(), 0.0);
        for row in y.rows() {
            let mean = row.sum() / 4.0;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4.0;
            assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "mean {mean}, variance {var}");
        }
        // w = 2, b = 1 maps x̂ to 2·x̂ + 1
        let (twos, ones_b) = (Array1::from_elem(4, 2.0f32), Array1::ones(4));
        let z = layer_norm(x.view(), twos.view(), ones_b.view(), 0.0);
        Zip::from(&z).and(&y).for_each(|&z, &y| assert!((z - (2.0 * y + 1.0)).abs() < 1e-6));
    }
}
