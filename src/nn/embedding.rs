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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn gathers_rows_in_order_with_repeats() {
        let table = array![[0.0f32, 0.5], [1.0, 1.5], [2.0, 2.5]];
        assert_eq!(embedding(table.view(), &[2, 0, 2]), array![[2.0, 2.5], [0.0, 0.5], [2.0, 2.5]]);
    }
}
