//! Linear layer in PyTorch's convention: `y = x · Wᵀ + b`, with the weight stored `[out, in]`.

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};

// ANCHOR: linear_forward
/// x: [n, in], weight: [out, in], bias: [out] → y: [n, out]
pub fn linear(x: ArrayView2<f32>, weight: ArrayView2<f32>, bias: Option<ArrayView1<f32>>) -> Array2<f32> {
    let mut y = x.dot(&weight.t()); // matrixmultiply reads the transposed view through its strides; no copy
    if let Some(b) = bias {
        y += &b.insert_axis(Axis(0));
    }
    y
}
// ANCHOR_END: linear_forward

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn matches_a_hand_computed_product() {
        let x = array![[1.0f32, 2.0], [3.0, 4.0]];
        let w = array![[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]]; // [out=3, in=2]
        let b = array![0.5f32, -0.5, 0.0];
        let y = linear(x.view(), w.view(), Some(b.view()));
        assert_eq!(y, array![[1.5, 1.5, 3.0], [3.5, 3.5, 7.0]]);
    }
}
