//! The element-wise ops between the products (residual adds, scaled adds, scales, products with a mask), on
//! every core: each is one pass over memory, and one core alone cannot use the memory bandwidth both have.
//! Small arrays stay on the calling thread, where waking the pool would cost more than the pass. Every
//! output entry is computed by one thread from the same inputs, so results do not depend on the thread count.

use ndarray::{Array2, ArrayView2, ArrayViewMut2, Zip};

/// Arrays with fewer entries than this run on one thread (64 Ki f32 = 256 KiB, about an L2's worth).
const PARALLEL_MIN_LEN: usize = 1 << 16;

// ANCHOR: elementwise
/// a ← a + s·b
pub fn add_scaled(mut a: ArrayViewMut2<f32>, b: ArrayView2<f32>, s: f32) {
    assert_eq!(a.dim(), b.dim(), "add_scaled: shapes differ");
    let parallel = a.len() >= PARALLEL_MIN_LEN;
    let zip = Zip::from(&mut a).and(&b);
    match (parallel, s == 1.0) {
        (true, true) => zip.par_for_each(|a, &b| *a += b),
        (true, false) => zip.par_for_each(|a, &b| *a += s * b),
        (false, true) => zip.for_each(|a, &b| *a += b),
        (false, false) => zip.for_each(|a, &b| *a += s * b),
    }
}

/// f(a, b) entry by entry into a new array (standard layout).
pub fn map2(a: ArrayView2<f32>, b: ArrayView2<f32>, f: impl Fn(f32, f32) -> f32 + Sync) -> Array2<f32> {
    assert_eq!(a.dim(), b.dim(), "element-wise op: shapes differ");
    let zip = Zip::from(&a).and(&b);
    if a.len() >= PARALLEL_MIN_LEN { zip.par_map_collect(|&a, &b| f(a, b)) } else { zip.map_collect(|&a, &b| f(a, b)) }
}

/// s·t into a new array.
pub fn scaled(t: ArrayView2<f32>, s: f32) -> Array2<f32> {
    let zip = Zip::from(&t);
    if t.len() >= PARALLEL_MIN_LEN { zip.par_map_collect(|&v| s * v) } else { zip.map_collect(|&v| s * v) }
}
// ANCHOR_END: elementwise

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
        let mut rng = Rng::new(seed);
        Array2::from_shape_fn((rows, cols), |_| rng.normal() as f32)
    }

    #[test]
    fn parallel_and_serial_passes_equal_ndarrays_own_ops_bitwise() {
        // one shape below the parallel threshold, one above it, and a transposed (column-major) operand
        for (rows, cols) in [(7, 9), (300, 257)] {
            let (a, b) = (random(rows, cols, 1), random(rows, cols, 2));
            let b_cm = random(cols, rows, 3);
            for s in [1.0, -0.37] {
                let mut got = a.clone();
                add_scaled(got.view_mut(), b.view(), s);
                let mut want = a.clone();
                want.scaled_add(s, &b);
                assert_eq!(got, want, "a + {s}·b, {rows}×{cols}");
                let mut got = a.clone();
                add_scaled(got.view_mut(), b_cm.t(), s);
                assert_eq!(got, &a + &(b_cm.t().to_owned() * s), "a + {s}·bᵀ");
                assert_eq!(scaled(b.view(), s), &b * s);
            }
            assert_eq!(map2(a.view(), b.view(), |x, y| x * y), &a * &b);
            assert!(map2(a.view(), b_cm.t(), |x, y| x - y).is_standard_layout());
        }
    }
}
