//! Picking columns of a matrix: y[t, j] = x[t, cols[j]], or 0 where `cols[j]` is `None`. Multi-head Latent
//! Attention (`models::latent_attention`) uses it to lay heads out — to split a projection's output into its
//! parts, to put each head's rotated entries first, to pad value heads to the key width — with no new
//! backend op: x is viewed as a [T·W, 1] table whose rows an embedding lookup gathers, and the backward is
//! that lookup's scatter-add.
//!
//!   ∂L/∂x[t, c] = Σ_{j : cols[j] = c} ∂L/∂y[t, j]      (a column picked twice gets both gradients)

use crate::backend::Backend;

// ANCHOR: gather_columns
/// x: [T, W] → [T, cols.len()]: column j is x's column `cols[j]`, or zeros for `None`.
pub fn gather_columns<B: Backend>(b: &B, x: &B::Tensor, cols: &[Option<usize>]) -> B::Tensor {
    let (t, width) = b.dims(x);
    let flat = b.reshape(x, t * width, 1);
    let table = match has_zero_column(cols) {
        true => b.concat_rows(&flat, &b.zeros(1, 1)), // row T·W: the zero that `None` reads
        false => flat,
    };
    b.reshape(&b.embedding(&table, &flat_ids(t, width, cols)), t, cols.len())
}

/// dy: [T, cols.len()] → ∂L/∂x: [T, width].
pub fn gather_columns_backward<B: Backend>(b: &B, dy: &B::Tensor, cols: &[Option<usize>], width: usize) -> B::Tensor {
    let (t, picked) = b.dims(dy);
    assert_eq!(picked, cols.len(), "gather_columns_backward: dy has {picked} columns for {} picks", cols.len());
    let rows = t * width + has_zero_column(cols) as usize;
    let dtable = b.embedding_backward(&b.reshape(dy, t * picked, 1), &flat_ids(t, width, cols), rows);
    let dflat = if rows > t * width { b.slice_rows(&dtable, 0, t * width) } else { dtable };
    b.reshape(&dflat, t, width)
}
// ANCHOR_END: gather_columns

fn has_zero_column(cols: &[Option<usize>]) -> bool {
    cols.iter().any(Option::is_none)
}

/// Row t·W + c of the flattened x for every (t, picked column c); T·W (the appended zero) for `None`.
fn flat_ids(t: usize, width: usize, cols: &[Option<usize>]) -> Vec<u32> {
    assert!(cols.iter().flatten().all(|&c| c < width), "gather_columns: a column past the width {width}");
    let id = |i: usize| u32::try_from(i).expect("gather_columns: T·W must stay below 2³²");
    (0..t).flat_map(|r| cols.iter().map(move |c| id(c.map_or(t * width, |c| r * width + c)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::nn::grad_check::{check, random, weighted_sum};
    use crate::rng::Rng;
    use ndarray::array;
    use proptest::prelude::*;

    #[test]
    fn picks_reorders_repeats_and_pads() {
        let x = array![[0.0f32, 1.0, 2.0], [10.0, 11.0, 12.0]];
        let y = gather_columns(&Cpu, &x, &[Some(2), None, Some(0), Some(2)]);
        assert_eq!(y, array![[2.0, 0.0, 0.0, 2.0], [12.0, 0.0, 10.0, 12.0]]);
        let dx = gather_columns_backward(
            &Cpu,
            &array![[1.0f32, 5.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]],
            &[Some(2), None, Some(0), Some(2)],
            3,
        );
        assert_eq!(dx, array![[2.0, 0.0, 4.0], [6.0, 0.0, 11.0]]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn backward_matches_finite_differences(t in 1usize..5, width in 1usize..6, picks in 1usize..9, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let cols: Vec<Option<usize>> =
                (0..picks).map(|_| match rng.below(width as u64 + 1) as usize { c if c == width => None, c => Some(c) }).collect();
            let x = random(t, width, &mut rng);
            let r = random(t, picks, &mut rng);
            let dx = gather_columns_backward(&Cpu, &r, &cols, width);
            check("dx", &x, &dx, |x| weighted_sum(&gather_columns(&Cpu, x, &cols), &r)).map_err(TestCaseError::fail)?;
        }
    }
}
