//! The linear layer over a frozen 4-bit weight (QLoRA's base) without a full-precision copy of W.
//!
//! Dequantizing all of Ŵ [out, in] before each product costs a fresh f32 matrix (4 bytes per weight, written
//! once and read back from main memory by the product) and, with the CPU's column-major weights, a transposed
//! copy on top. Here Ŵ is dequantized one band of rows at a time into a buffer small enough to stay in cache,
//! and the band's share of the product runs while it is there:
//!
//! ```text
//! forward   y[:, band] = x · Ŵ[band, :]ᵀ          bands are independent: one task each, in parallel
//! backward  dx        += dy[:, band] · Ŵ[band, :]  bands accumulate in order; each product is parallel
//! ```
//!
//! The band size depends only on the shape, so the summation order, and with it every bit of the result,
//! is the same from run to run.

use super::linear::bias_gradient;
use super::matmul::{matmul_into, matmul_serial_into};
use crate::quant::Quantized4bit;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, s};
use rayon::prelude::*;

/// A forward band holds about this many weights (256 KB of f32: one task's working set in L2).
const FORWARD_BAND: usize = 1 << 16;
/// A backward band, shared by every thread of its product, holds about this many (1 MB).
const BACKWARD_BAND: usize = 1 << 18;

/// Rows of Ŵ [out, in] per band of about `weights` entries: a multiple of 16, at least 16, at most `out`.
fn band_rows(out: usize, inp: usize, weights: usize) -> usize {
    ((weights / inp.max(1)) / 16 * 16).max(16).min(out.max(1))
}

// ANCHOR: linear_4bit
/// x: [n, in], Ŵ: [out, in] 4-bit, bias: [out] → x·Ŵᵀ + b: [n, out]
pub fn linear_4bit(x: ArrayView2<f32>, q: &Quantized4bit, bias: Option<ArrayView1<f32>>) -> Array2<f32> {
    let mut y = Array2::zeros((x.nrows(), q.shape[0]));
    linear_4bit_into(x, q, y.view_mut());
    if let Some(b) = bias {
        y += &b.insert_axis(Axis(0));
    }
    y
}
// ANCHOR_END: linear_4bit

/// y = x·Ŵᵀ written into y: [n, out] (a view: a part's columns of a stacked output).
fn linear_4bit_into(x: ArrayView2<f32>, q: &Quantized4bit, mut y: ndarray::ArrayViewMut2<f32>) {
    let [out, inp] = q.shape;
    assert_eq!(x.ncols(), inp, "linear_4bit: x width is not the weight's in");
    assert_eq!(y.dim(), (x.nrows(), out), "linear_4bit: the output is not [n, out]");
    let scales = q.scales();
    let rows = band_rows(out, inp, FORWARD_BAND);
    y.axis_chunks_iter_mut(Axis(1), rows).into_par_iter().enumerate().for_each_init(Vec::new, |band, (i, y_band)| {
        let n = y_band.ncols();
        band.resize(n * inp, 0.0);
        q.dequantize_range_into(&scales, i * rows * inp, &mut band[..n * inp]);
        let w = ArrayView2::from_shape((n, inp), &band[..n * inp]).expect("sized"); // Ŵ[band, :]
        matmul_serial_into(x, w.t(), 1.0, 0.0, y_band); // [n, in]·[in, band]
    });
}

/// x: [n, in] and the 4-bit parts Ŵᵢ [outᵢ, in] of a stacked frozen base → [x·Ŵ₁ᵀ | x·Ŵ₂ᵀ | …]: [n, Σ outᵢ],
/// each part decoded with its own statistics into its own columns.
pub fn linear_4bit_stacked(x: ArrayView2<f32>, parts: &[&Quantized4bit]) -> Array2<f32> {
    let mut y = Array2::zeros((x.nrows(), parts.iter().map(|q| q.shape[0]).sum()));
    let mut at = 0;
    for q in parts {
        linear_4bit_into(x, q, y.slice_mut(s![.., at..at + q.shape[0]]));
        at += q.shape[0];
    }
    y
}

/// The backward of [`linear_4bit_stacked`]: dy [n, Σ outᵢ] → dx = Σᵢ dy[:, partᵢ]·Ŵᵢ [n, in].
pub fn linear_4bit_stacked_backward(dy: ArrayView2<f32>, parts: &[&Quantized4bit]) -> Array2<f32> {
    let inp = parts.first().map_or(0, |q| q.shape[1]);
    let mut dx = Array2::zeros((dy.nrows(), inp));
    let mut at = 0;
    for (i, q) in parts.iter().enumerate() {
        let beta = if i == 0 { 0.0 } else { 1.0 };
        linear_4bit_backward_into(dy.slice(s![.., at..at + q.shape[0]]), q, beta, dx.view_mut());
        at += q.shape[0];
    }
    dx
}

// ANCHOR: linear_4bit_backward
/// The backward through a frozen 4-bit W: dy: [n, out] → (dx = dy·Ŵ [n, in], ∂L/∂b [out] if `bias_grad`).
pub fn linear_4bit_backward(
    dy: ArrayView2<f32>,
    q: &Quantized4bit,
    bias_grad: bool,
) -> (Array2<f32>, Option<Array1<f32>>) {
    let mut dx = Array2::zeros((dy.nrows(), q.shape[1]));
    linear_4bit_backward_into(dy, q, 0.0, dx.view_mut());
    (dx, bias_grad.then(|| bias_gradient(dy)))
}
// ANCHOR_END: linear_4bit_backward

/// dx = dy·Ŵ + β·dx, the bands accumulating in order (β = 1: a later part of a stack adding its share).
fn linear_4bit_backward_into(dy: ArrayView2<f32>, q: &Quantized4bit, beta: f32, mut dx: ndarray::ArrayViewMut2<f32>) {
    let [out, inp] = q.shape;
    assert_eq!(dy.ncols(), out, "linear_4bit_backward: dy width is not the weight's out");
    assert_eq!(dx.dim(), (dy.nrows(), inp), "linear_4bit_backward: dx is not [n, in]");
    let scales = q.scales();
    let rows = band_rows(out, inp, BACKWARD_BAND);
    let mut band = vec![0.0f32; rows * inp];
    for o0 in (0..out).step_by(rows) {
        let n = rows.min(out - o0);
        let band = &mut band[..n * inp];
        let per_task = n.div_ceil(rayon::current_num_threads()) * inp;
        band.par_chunks_mut(per_task)
            .enumerate()
            .for_each(|(t, part)| q.dequantize_range_into(&scales, o0 * inp + t * per_task, part));
        let w = ArrayView2::from_shape((n, inp), &*band).expect("sized"); // Ŵ[band, :]
        let beta = if o0 == 0 { beta } else { 1.0 };
        matmul_into(dy.slice(s![.., o0..o0 + n]), w, beta, dx.view_mut()); // [n, band]·[band, in]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::linear::{linear, linear_backward};
    use crate::quant::{QuantOptions, QuantType};
    use crate::rng::Rng;
    use proptest::prelude::*;

    fn max_rel_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max) / scale
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        /// The banded products equal the products with the whole dequantized matrix, up to f32 summation order,
        /// for shapes whose bands and blocks straddle rows and end short.
        #[test]
        fn banded_products_equal_the_dequantized_matrix_products(n in 1usize..40, out in 1usize..700, inp in 1usize..300,
                                                                 blocksize in prop_oneof![Just(32usize), Just(64)], seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let mut rand = |r: usize, c: usize| Array2::from_shape_fn((r, c), |_| rng.normal() as f32);
            let (w, x, dy, bias) = (rand(out, inp), rand(n, inp), rand(n, out), rand(1, out));
            let opts = QuantOptions { blocksize, double_quant: true, torch_threads: 1 };
            let q = Quantized4bit::quantize_with(w.view(), QuantType::Nf4, opts).unwrap();
            let w_hat = q.dequantize();
            let y = linear_4bit(x.view(), &q, Some(bias.row(0)));
            prop_assert!(max_rel_diff(&y, &linear(x.view(), w_hat.view(), Some(bias.row(0)))) < 1e-5);
            let (dx, db) = linear_4bit_backward(dy.view(), &q, true);
            let want = linear_backward(dy.view(), x.view(), w_hat.view(), false, true);
            prop_assert!(max_rel_diff(&dx, &want.dx) < 1e-5);
            prop_assert_eq!(db.unwrap(), want.dbias.unwrap());
        }
    }

    #[test]
    fn the_results_do_not_depend_on_the_thread_count() {
        let mut rng = Rng::new(7);
        let mut rand = |r: usize, c: usize| Array2::from_shape_fn((r, c), |_| rng.normal() as f32);
        let (w, x, dy) = (rand(1000, 200), rand(64, 200), rand(64, 1000));
        let q = Quantized4bit::quantize(w.view(), QuantType::Nf4, true).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| (linear_4bit(x.view(), &q, None), linear_4bit_backward(dy.view(), &q, false).0))
        };
        let (one, three) = (run(1), run(3));
        assert_eq!(one.0, three.0, "forward");
        assert_eq!(one.1, three.1, "backward");
    }
}
