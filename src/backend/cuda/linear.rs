//! A dense layer on the GPU: y = x·Wᵀ (+ b) and its backward as cuBLAS products (`blas.rs`), the bias added by
//! its own kernel and its gradient a column sum (`nn::linear` on the CPU).

use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, ReadBy, blas, elementwise_grid, fail, int};

impl Cuda {
    /// x [T, in], W [out, in] → x·Wᵀ + b [T, out], stored for `read_by`: in bf16 from cuBLAS when products alone
    /// read it and there is no bias to add (the bias kernel adds in f32).
    pub(super) fn dense_linear(
        &self,
        x: &CudaTensor,
        weight: &CudaTensor,
        bias: Option<&CudaTensor>,
        read_by: ReadBy,
    ) -> CudaTensor {
        assert_eq!(x.cols, weight.cols, "linear: x has {} columns, W has {} inputs", x.cols, weight.cols);
        let read_by = if bias.is_some() { ReadBy::AnyOp } else { read_by };
        let mut y = self.output_for(read_by, x.rows, weight.rows);
        // y[T, out] = x[T, in] · W[out, in]ᵀ
        blas::matmul(self, x, false, weight, true, &mut y);
        if let Some(b) = bias {
            let (rows, cols) = (int(y.rows, "rows"), int(y.cols, "cols"));
            launch!(self, "add_bias_rows", elementwise_grid(y.len()), y.f32_mut(), b.f32(), &rows, &cols);
        }
        y
    }

    /// dy [T, out] → (dx [T, in], dW [out, in] and db [1, out] where `(weight_grad, bias_grad)` ask for them).
    pub(super) fn dense_linear_backward(
        &self,
        dy: &CudaTensor,
        x: &CudaTensor,
        weight: &CudaTensor,
        (weight_grad, bias_grad): (bool, bool),
    ) -> (CudaTensor, Option<CudaTensor>, Option<CudaTensor>) {
        assert_eq!((dy.rows, dy.cols), (x.rows, weight.rows), "linear_backward: dy is not [T, out]");
        let mut dx = self.tensor(x.rows, x.cols);
        blas::matmul(self, dy, false, weight, false, &mut dx); // dx[T, in] = dy[T, out] · W[out, in]
        let dw = weight_grad.then(|| {
            let mut dw = self.tensor(weight.rows, weight.cols);
            blas::matmul(self, dy, true, x, false, &mut dw); // dW[out, in] = dyᵀ · x
            dw
        });
        let db = bias_grad.then(|| self.column_sum(dy));
        (dx, dw, db)
    }
}
