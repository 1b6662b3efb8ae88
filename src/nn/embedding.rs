//! Token embedding: row `ids[t]` of the table `[vocab, hidden]`.

use ndarray::{Array2, ArrayView2};

// ANCHOR: embedding_forward
/// table: [vocab, hidden], ids: [T] → [T, hidden]. Ids are checked against the vocabulary by the model.
pub fn embedding(table: ArrayView2<f32>, ids: &[u32]) -> Array2<f32> {
    let mut out = Array2::zeros((ids.len(), table.ncols()));
    for (row, &id) in out.rows_mut().into_iter().zip(ids) {
        let mut row = row;
        row.assign(&table.row(id as usize));
    }
    out
}
// ANCHOR_END: embedding_forward

// ANCHOR: embedding_backward
/// The forward copies row ids[t] of the table to row t, so the gradient scatters back and adds up:
///
///   ∂L/∂table[v] = Σ_{t : ids[t] = v} dy[t]
///
/// dy: [T, hidden], ids: [T] → dtable: [vocab, hidden] (rows of unused ids stay zero). Rows are added in t
/// order, so repeated ids accumulate deterministically. A tied lm_head adds its own dW on top of this.
pub fn embedding_backward(dy: ArrayView2<f32>, ids: &[u32], vocab: usize) -> Array2<f32> {
    assert_eq!(dy.nrows(), ids.len(), "embedding_backward: one id per row of dy");
    let mut dtable = Array2::zeros((vocab, dy.ncols()));
    for (dy_row, &id) in dy.rows().into_iter().zip(ids) {
        assert!((id as usize) < vocab, "embedding_backward: id {id} is outside the vocabulary of {vocab}");
        let mut row = dtable.row_mut(id as usize);
        row += &dy_row;
    }
    dtable
}
// ANCHOR_END: embedding_backward

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
        fn backward_matches_finite_differences(t in 1usize..8, vocab in 1usize..6, h in 1usize..5, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let table = random(vocab, h, &mut rng);
            let ids: Vec<u32> = (0..t).map(|_| rng.below(vocab as u64) as u32).collect(); // repeats are likely
            let r = random(t, h, &mut rng);
            let dtable = embedding_backward(r.view(), &ids, vocab);
            check("dtable", &table, &dtable, |tb| weighted_sum(&embedding(tb.view(), &ids), &r))
                .map_err(TestCaseError::fail)?;
        }
    }

    #[test]
    fn repeated_ids_accumulate() {
        let dy = array![[1.0f32, 2.0], [10.0, 20.0], [100.0, 200.0]];
        let dtable = embedding_backward(dy.view(), &[1, 0, 1], 3);
        assert_eq!(dtable, array![[10.0, 20.0], [101.0, 202.0], [0.0, 0.0]]);
    }

    #[test]
    fn gathers_rows_in_order_with_repeats() {
        let table = array![[0.0f32, 0.5], [1.0, 1.5], [2.0, 2.5]];
        assert_eq!(embedding(table.view(), &[2, 0, 2]), array![[2.0, 2.5], [0.0, 0.5], [2.0, 2.5]]);
    }
}
