//! Matrix products for the CPU path, through the `gemm` crate's AVX-512/AVX2/FMA kernels (runtime
//! dispatch) — about twice matrixmultiply's throughput per core on AVX-512 machines.
//!
//! `gemm` takes any strides, so transposed views (x·Wᵀ, dyᵀ·x) cost no copy. We split the work across the
//! rayon pool ourselves, by rows of the output (or columns when there are few rows): every output element is
//! computed by exactly one thread with the same summation order whatever the thread count, so results are
//! bitwise reproducible.

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, s};
use rayon::prelude::*;

/// Products smaller than this many multiply-adds run on one thread.
const PARALLEL_MIN_WORK: usize = 1 << 20;

// ANCHOR: matmul
/// a: [m, k], b: [k, n] → a·b: [m, n]
pub fn matmul(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Array2<f32> {
    scaled_matmul(a, b, 1.0)
}

/// scale·a·b into a new array, never cleared first: with beta = 0 the kernel writes every entry of c and reads
/// none, so zero-filling it (a full pass over the output's memory) would be wasted.
pub fn scaled_matmul(a: ArrayView2<f32>, b: ArrayView2<f32>, scale: f32) -> Array2<f32> {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    if m == 0 || n == 0 || k == 0 {
        return Array2::zeros((m, n));
    }
    let mut c = Array2::<f32>::uninit((m, n));
    // SAFETY: m, n, k > 0 and beta = 0: `scaled_matmul_into` splits c into disjoint blocks that cover it, and
    // `gemm` (read_dst = false) writes each entry of its block through the raw pointer without reading it; so
    // every entry is initialised before `assume_init`, and no uninitialised value is ever read.
    unsafe {
        scaled_matmul_into(a, b, scale, 0.0, c.raw_view_mut().cast::<f32>().deref_into_view_mut());
        c.assume_init()
    }
}

/// c ← beta·c + a·b (beta = 0 ignores c's previous contents, NaNs included).
pub fn matmul_into(a: ArrayView2<f32>, b: ArrayView2<f32>, beta: f32, c: ArrayViewMut2<f32>) {
    scaled_matmul_into(a, b, 1.0, beta, c)
}

/// c ← beta·c + scale·a·b
pub fn scaled_matmul_into(a: ArrayView2<f32>, b: ArrayView2<f32>, scale: f32, beta: f32, mut c: ArrayViewMut2<f32>) {
    let (m, k) = a.dim();
    let n = b.ncols();
    assert_eq!(b.nrows(), k, "matmul: inner dimensions {k} and {}", b.nrows());
    assert_eq!(c.dim(), (m, n), "matmul: output shape");
    let threads = rayon::current_num_threads();
    if m * n * k < PARALLEL_MIN_WORK || threads == 1 {
        return gemm_serial(a, b, scale, beta, c);
    }
    if m >= n {
        let rows = m.div_ceil(threads);
        c.axis_chunks_iter_mut(Axis(0), rows)
            .into_par_iter()
            .zip(a.axis_chunks_iter(Axis(0), rows))
            .for_each(|(c, a)| gemm_serial(a, b, scale, beta, c));
    } else {
        let cols = n.div_ceil(threads);
        c.axis_chunks_iter_mut(Axis(1), cols)
            .into_par_iter()
            .enumerate()
            .for_each(|(i, c)| gemm_serial(a, b.slice(s![.., i * cols..i * cols + c.ncols()]), scale, beta, c));
    }
}
// ANCHOR_END: matmul

/// c ← beta·c + scale·a·b on the calling thread (for callers that parallelise over outputs themselves).
pub fn matmul_serial_into(a: ArrayView2<f32>, b: ArrayView2<f32>, scale: f32, beta: f32, c: ArrayViewMut2<f32>) {
    assert_eq!(b.nrows(), a.ncols(), "matmul: inner dimensions {} and {}", a.ncols(), b.nrows());
    assert_eq!(c.dim(), (a.nrows(), b.ncols()), "matmul: output shape");
    gemm_serial(a, b, scale, beta, c)
}

fn gemm_serial(a: ArrayView2<f32>, b: ArrayView2<f32>, scale: f32, beta: f32, mut c: ArrayViewMut2<f32>) {
    let (m, k) = a.dim();
    let n = b.ncols();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.mapv_inplace(|x| if beta == 0.0 { 0.0 } else { beta * x });
        return;
    }
    let (a_rs, a_cs) = (a.strides()[0], a.strides()[1]);
    let (b_rs, b_cs) = (b.strides()[0], b.strides()[1]);
    let (c_rs, c_cs) = (c.strides()[0], c.strides()[1]);
    // SAFETY: the pointers and strides describe live ndarray views of exactly these shapes; `c` is a unique
    // mutable view, disjoint from `a` and `b` (Rust's borrows guarantee it).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs,
            c_rs,
            beta != 0.0,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta, // gemm's convention: dst = alpha·dst + beta·lhs·rhs
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn matches_ndarray_on_any_layout(m in 1usize..300, k in 0usize..70, n in 1usize..300, ta in any::<bool>(), tb in any::<bool>(),
                                         beta in prop_oneof![Just(0.0f32), Just(1.0f32)], seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let mut rand = |r: usize, c: usize| Array2::from_shape_fn((r, c), |_| rng.normal() as f32);
            // transposed operands come in as views of the other layout
            let a_store = if ta { rand(k, m) } else { rand(m, k) };
            let b_store = if tb { rand(n, k) } else { rand(k, n) };
            let a = if ta { a_store.t() } else { a_store.view() };
            let b = if tb { b_store.t() } else { b_store.view() };
            let c0 = rand(m, n);
            let mut c = c0.clone();
            matmul_into(a, b, beta, c.view_mut());
            let want = &c0 * beta + &a.dot(&b);
            let diff = c.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            prop_assert!(diff < 1e-4 * (k as f32).max(1.0), "max diff {diff}");
        }
    }
}
