//! Linear layer in PyTorch's convention: `y = x · Wᵀ + b`, with the weight stored `[out, in]`.

use super::matmul::{matmul, scaled_matmul};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, ShapeBuilder};

// ANCHOR: linear_forward
/// x: [n, in], weight: [out, in], bias: [out] → y: [n, out]
pub fn linear(x: ArrayView2<f32>, weight: ArrayView2<f32>, bias: Option<ArrayView1<f32>>) -> Array2<f32> {
    let mut y = if x.nrows() <= GEMV_ROWS && weight.is_standard_layout() {
        gemv_rows(x, weight)
    } else if x.nrows() <= GEMV_ROWS && weight.t().is_standard_layout() {
        gemv_rows_transposed(x, weight.t())
    } else {
        matmul(x, weight.t()) // the transposed view is read through its strides; no copy
    };
    if let Some(b) = bias {
        y += &b.insert_axis(Axis(0));
    }
    y
}
// ANCHOR_END: linear_forward

// ANCHOR: gemv_rows
/// Up to this many rows (decoding, short prompts) go through [`gemv_rows`] instead of a packed GEMM.
const GEMV_ROWS: usize = 16;

/// The width of each band when `out` outputs are split across the thread pool: `threads·k` equal bands, a
/// multiple of 16 wide, at most `widest` (k is the least that allows it). Equal bands matter: decoding is
/// bound by memory bandwidth, which one thread cannot use alone, so a pool waiting on one long band (576
/// outputs as 512 + 64, or 192 as one band) runs at one thread's speed.
fn band_width(out: usize, widest: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let k = out.div_ceil(threads * widest).max(1);
    out.div_ceil(threads * k).next_multiple_of(16).max(1)
}

/// y[r, o] = ⟨x[r, :], W[o, :]⟩ for a handful of rows: each output is a contiguous dot product over a weight
/// row, so the weights stream through memory once, split across threads by output rows. A general GEMM would
/// first copy ("pack") the whole weight matrix, doubling the memory traffic that bounds decoding speed.
fn gemv_rows(x: ArrayView2<f32>, weight: ArrayView2<f32>) -> Array2<f32> {
    use rayon::prelude::*;
    let (n, out) = (x.nrows(), weight.nrows());
    let w = weight.as_slice().expect("standard layout");
    let inp = weight.ncols();
    let xs: Vec<Vec<f32>> = x.rows().into_iter().map(|r| r.to_vec()).collect();
    let band = band_width(out, 64); // rows are independent dot products: small bands balance best
    let mut y = Array2::<f32>::zeros((out, n)); // transposed while filling, so each task writes one contiguous chunk
    y.as_slice_mut().expect("fresh array").par_chunks_mut(n * band).enumerate().for_each(|(chunk, ys)| {
        for (i, y_on) in ys.chunks_mut(n).enumerate() {
            let row = &w[(chunk * band + i) * inp..(chunk * band + i + 1) * inp];
            for (r, y) in y_on.iter_mut().enumerate() {
                *y = dot(row, &xs[r]);
            }
        }
    });
    y.reversed_axes().as_standard_layout().into_owned()
}

/// The same for a weight stored column-major (Wᵀ row-major, [in, out]): y[r, :] = Σᵢ x[r, i]·Wᵀ[i, :], each
/// thread accumulating a contiguous band of outputs while the weight streams through once.
fn gemv_rows_transposed(x: ArrayView2<f32>, weight_t: ArrayView2<f32>) -> Array2<f32> {
    use rayon::prelude::*;
    let (n, out) = (x.nrows(), weight_t.ncols());
    let wt = weight_t.as_slice().expect("standard layout");
    let xs: Vec<Vec<f32>> = x.rows().into_iter().map(|r| r.to_vec()).collect();
    let band = band_width(out, 1024); // each band reads its slice of every row of Wᵀ: wide slices stream best
    let bands: Vec<(usize, Vec<f32>)> = (0..out.div_ceil(band))
        .into_par_iter()
        .map(|b| {
            let (o0, o1) = (b * band, ((b + 1) * band).min(out));
            let mut acc = vec![0.0f32; n * (o1 - o0)];
            for (i, w_row) in wt.chunks_exact(out).enumerate() {
                let w = &w_row[o0..o1];
                for (acc_r, x_r) in acc.chunks_exact_mut(o1 - o0).zip(&xs) {
                    let xi = x_r[i];
                    acc_r.iter_mut().zip(w).for_each(|(a, &wv)| *a += xi * wv);
                }
            }
            (o0, acc)
        })
        .collect();
    let mut y = Array2::<f32>::zeros((n, out));
    for (o0, acc) in bands {
        let width = acc.len() / n;
        for r in 0..n {
            y.row_mut(r).as_slice_mut().expect("fresh array")[o0..o0 + width]
                .copy_from_slice(&acc[r * width..(r + 1) * width]);
        }
    }
    y
}

/// A copy of `w` ([out, in]) stored column-major: the same logical matrix, laid out as Wᵀ row-major.
pub fn column_major(w: Array2<f32>) -> Array2<f32> {
    if w.t().is_standard_layout() {
        return w;
    }
    let mut out = Array2::zeros(w.raw_dim().f());
    out.assign(&w);
    out
}

/// A row-major copy of `w` (the layout single-row products read as contiguous dot products).
pub fn row_major(w: ArrayView2<f32>) -> Array2<f32> {
    w.as_standard_layout().into_owned()
}

/// A dot product with 16 independent accumulators, so the compiler can keep them in vector registers
/// (float addition is not associative, so it will not reorder a single running sum by itself).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (a_chunks, b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for i in 0..16 {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
// ANCHOR_END: gemv_rows
// ANCHOR_END: linear_forward

/// What `linear_backward` returns; the parameter gradients are `None` when they were not asked for.
pub struct LinearGrads {
    /// [n, in]
    pub dx: Array2<f32>,
    /// [out, in]
    pub dweight: Option<Array2<f32>>,
    /// [out]
    pub dbias: Option<Array1<f32>>,
}

// ANCHOR: linear_backward
/// y = x·Wᵀ + b, so with dy = ∂L/∂y:
///
///   ∂L/∂x = dy · W  [n, in],   ∂L/∂W = dyᵀ · x  [out, in],   ∂L/∂b = Σ_rows dy  [out]
///
/// dy: [n, out], x: [n, in], weight: [out, in]. A frozen weight (a LoRA base) asks for no dW: that skips the
/// largest matmul of the three.
pub fn linear_backward(
    dy: ArrayView2<f32>,
    x: ArrayView2<f32>,
    weight: ArrayView2<f32>,
    weight_grad: bool,
    bias_grad: bool,
) -> LinearGrads {
    assert_eq!(dy.nrows(), x.nrows(), "linear_backward: dy and x rows");
    assert_eq!(dy.ncols(), weight.nrows(), "linear_backward: dy width is not the weight's out");
    assert_eq!(x.ncols(), weight.ncols(), "linear_backward: x width is not the weight's in");
    let dx = matmul(dy, weight); // [n, out]·[out, in]
    let dweight = weight_grad.then(|| weight_gradient(weight, dy, x, 1.0)); // [out, n]·[n, in]
    let dbias = bias_grad.then(|| bias_gradient(dy));
    LinearGrads { dx, dweight, dbias }
}
// ANCHOR_END: linear_backward

/// s·gᵀ·v for a parameter p of g's width × v's width (g: [n, p_rows], v: [n, p_cols]), in p's layout: for a
/// column-major p (how the CPU backend keeps weights) computed as (s·vᵀ·g)ᵀ, so the optimizer walks the
/// gradient in the same order as the parameter.
pub fn weight_gradient(p: ArrayView2<f32>, g: ArrayView2<f32>, v: ArrayView2<f32>, scale: f32) -> Array2<f32> {
    if p.t().is_standard_layout() && !p.is_standard_layout() {
        scaled_matmul(v.t(), g, scale).reversed_axes()
    } else {
        scaled_matmul(g.t(), v, scale)
    }
}

/// ∂L/∂b = Σ_rows dy [out]. The sum runs over every row (T·B of them): accumulated in f64.
pub fn bias_gradient(dy: ArrayView2<f32>) -> Array1<f32> {
    let mut acc = vec![0.0f64; dy.ncols()];
    for row in dy.rows() {
        for (a, &g) in acc.iter_mut().zip(row) {
            *a += g as f64;
        }
    }
    acc.into_iter().map(|a| a as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::grad_check::{check, random, weighted_sum};
    use crate::rng::Rng;
    use ndarray::array;
    use proptest::prelude::*;

    #[test]
    fn gemv_path_equals_the_gemm_path() {
        let x = Array2::from_shape_fn((3, 37), |(i, j)| ((i * 31 + j * 7) % 13) as f32 * 0.1 - 0.6);
        let w = Array2::from_shape_fn((300, 37), |(i, j)| ((i * 5 + j * 11) % 17) as f32 * 0.05 - 0.4);
        let fast = linear(x.view(), w.view(), None);
        let reference = x.dot(&w.t());
        let diff = fast.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "{diff}");
        assert_eq!(fast.dim(), (3, 300));
    }

    #[test]
    fn a_column_major_weight_gives_the_same_results() {
        for rows in [3usize, 40] {
            let x = Array2::from_shape_fn((rows, 37), |(i, j)| ((i * 31 + j * 7) % 13) as f32 * 0.1 - 0.6);
            let w = Array2::from_shape_fn((700, 37), |(i, j)| ((i * 5 + j * 11) % 17) as f32 * 0.05 - 0.4);
            let dy = Array2::from_shape_fn((rows, 700), |(i, j)| ((i * 3 + j) % 7) as f32 * 0.1 - 0.3);
            let wc = column_major(w.clone());
            assert!(wc.t().is_standard_layout() && wc == w);
            let close = |a: &Array2<f32>, b: &Array2<f32>| {
                a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max) < 1e-4
            };
            assert!(close(&linear(x.view(), wc.view(), None), &linear(x.view(), w.view(), None)));
            let (gc, g) = (
                linear_backward(dy.view(), x.view(), wc.view(), true, true),
                linear_backward(dy.view(), x.view(), w.view(), true, true),
            );
            assert!(close(&gc.dx, &g.dx));
            let (dwc, dw) = (gc.dweight.unwrap(), g.dweight.unwrap());
            assert!(close(&dwc, &dw));
            assert_eq!(dwc.strides(), wc.strides(), "the gradient shares the weight's layout");
        }
    }

    #[test]
    fn single_token_products_do_not_depend_on_the_thread_count() {
        for out in [1usize, 15, 192, 576, 1000] {
            let x = Array2::from_shape_fn((2, 70), |(i, j)| ((i * 31 + j * 7) % 13) as f32 * 0.1 - 0.6);
            let w = Array2::from_shape_fn((out, 70), |(i, j)| ((i * 5 + j * 11) % 17) as f32 * 0.05 - 0.4);
            let wc = column_major(w.clone());
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| (linear(x.view(), w.view(), None), linear(x.view(), wc.view(), None)))
            };
            let (one, two, five) = (run(1), run(2), run(5));
            assert_eq!((&one.0, &one.1), (&two.0, &two.1), "out {out}");
            assert_eq!((&one.0, &one.1), (&five.0, &five.1), "out {out}");
            let reference = x.dot(&w.t());
            for y in [&one.0, &one.1] {
                assert!(y.iter().zip(&reference).all(|(a, b)| (a - b).abs() < 1e-4), "out {out}");
            }
        }
    }

    #[test]
    fn matches_a_hand_computed_product() {
        let x = array![[1.0f32, 2.0], [3.0, 4.0]];
        let w = array![[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]]; // [out=3, in=2]
        let b = array![0.5f32, -0.5, 0.0];
        let y = linear(x.view(), w.view(), Some(b.view()));
        assert_eq!(y, array![[1.5, 1.5, 3.0], [3.5, 3.5, 7.0]]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn backward_matches_finite_differences(n in 1usize..6, d_in in 1usize..7, d_out in 1usize..7,
                                               seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let (x, w, b) = (random(n, d_in, &mut rng), random(d_out, d_in, &mut rng), random(1, d_out, &mut rng));
            let r = random(n, d_out, &mut rng);
            let bias = b.row(0);
            let g = linear_backward(r.view(), x.view(), w.view(), true, true);
            check("dx", &x, &g.dx, |x| weighted_sum(&linear(x.view(), w.view(), Some(bias)), &r))
                .map_err(TestCaseError::fail)?;
            check("dweight", &w, g.dweight.as_ref().unwrap(),
                  |w| weighted_sum(&linear(x.view(), w.view(), Some(bias)), &r)).map_err(TestCaseError::fail)?;
            check("dbias", &b.row(0).to_owned(), g.dbias.as_ref().unwrap(),
                  |b| weighted_sum(&linear(x.view(), w.view(), Some(b.view())), &r)).map_err(TestCaseError::fail)?;
            let frozen = linear_backward(r.view(), x.view(), w.view(), false, false);
            prop_assert!(frozen.dweight.is_none() && frozen.dbias.is_none() && frozen.dx == g.dx);
        }
    }
}
