//! A dense layer on the GPU: y = x·Wᵀ (+ b) and its backward as cuBLAS products (`blas.rs`). The bias is added
//! by the product's own epilogue and its gradient summed by the weight gradient's (`blas_lt.rs`), or, where
//! cuBLASLt has no kernel for that, by `add_bias_rows` and a column sum (`nn::linear` on the CPU).

use super::blas::{self, Columns, ProductEpilogue};
use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, ReadBy, Storage, elementwise_grid, fail, int};
use cudarc::cublaslt::result::CublasError;

impl Cuda {
    /// x [T, in], W [out, in] → x·Wᵀ + b [T, out], stored for `read_by` (in bf16 from the product when only
    /// products read it).
    pub(super) fn dense_linear(
        &self,
        x: &CudaTensor,
        weight: &CudaTensor,
        bias: Option<&CudaTensor>,
        read_by: ReadBy,
    ) -> CudaTensor {
        assert_eq!(x.cols, weight.cols, "linear: x has {} columns, W has {} inputs", x.cols, weight.cols);
        let mut y = self.output_for(read_by, x.rows, weight.rows);
        match bias {
            // y[T, out] = x[T, in] · W[out, in]ᵀ
            None => blas::matmul(self, x, false, weight, true, &mut y),
            Some(b) if x.cols > 0 && y.len() > 0 => {
                let (x_op, w_op) = (self.product_operand(x), self.product_operand(weight));
                self.product_with_bias(&x_op, &w_op, (b, 0), &mut y, 0);
            }
            Some(b) => {
                blas::matmul(self, x, false, weight, true, &mut y);
                let width = y.cols;
                self.add_bias_rows((b, 0), &mut y, 0, width);
            }
        }
        y
    }

    // ANCHOR: product_with_bias
    /// y[:, at .. at + n] = x·wᵀ + bias[start .. start + n] on every row, n = w's rows: one product with the
    /// bias epilogue, or the product and then `add_bias_rows`. x and w are in the products' precision; the
    /// columns are all of y, or one band of a 4-bit product (`linear_4bit.rs`).
    pub(super) fn product_with_bias(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        (bias, start): (&CudaTensor, usize),
        y: &mut CudaTensor,
        at: usize,
    ) {
        let epilogue = ProductEpilogue::AddBias { bias, start };
        if let Err(why) = blas::gemm_epilogue(self, x, false, w, true, y, at, epilogue) {
            self.fell_back_from_epilogue("bias", why);
            blas::gemm_strided(self, Columns::all(x), false, Columns::all(w), true, 1.0, 0.0, y, at);
            self.add_bias_rows((bias, start), y, at, w.rows);
        }
    }
    // ANCHOR_END: product_with_bias

    /// A product cuBLASLt had no `what` epilogue for: counted, and said once.
    fn fell_back_from_epilogue(&self, what: &str, why: CublasError) {
        self.blas_lt.note_fallback(what, why);
        self.counters.epilogue_fallback();
    }

    /// y[:, at .. at + width] += bias[start .. start + width] on every row, y f32 or bf16.
    pub(super) fn add_bias_rows(
        &self,
        (bias, start): (&CudaTensor, usize),
        y: &mut CudaTensor,
        at: usize,
        width: usize,
    ) {
        if y.len() == 0 || width == 0 {
            return;
        }
        let (rows, cols, ld) = (int(y.rows, "rows"), int(width, "cols"), int(y.cols, "ld"));
        let grid = elementwise_grid(y.rows * width);
        let bias = bias.f32().slice(start..start + width);
        match y.storage_mut() {
            Storage::Bf16(bits) => {
                let mut band = bits.slice_mut(at..);
                launch!(self, "add_bias_rows_bf16", grid, &mut band, &bias, &rows, &cols, &ld)
            }
            _ => {
                let mut band = y.f32_mut().slice_mut(at..);
                launch!(self, "add_bias_rows", grid, &mut band, &bias, &rows, &cols, &ld)
            }
        }
    }

    /// dy [T, out] → (dx [T, in], dW [out, in] and db [1, out] where `(weight_grad, bias_grad)` ask for them).
    /// With both, db comes from dW's product (`ProductEpilogue::RowSumsOfA` of dyᵀ).
    pub(super) fn dense_linear_backward(
        &self,
        dy: &CudaTensor,
        x: &CudaTensor,
        weight: &CudaTensor,
        (weight_grad, bias_grad): (bool, bool),
    ) -> (CudaTensor, Option<CudaTensor>, Option<CudaTensor>) {
        assert_eq!((dy.rows, dy.cols), (x.rows, weight.rows), "linear_backward: dy is not [T, out]");
        let dy_op = self.product_operand(dy); // rounded once (under bf16) for both products
        let mut dx = self.tensor(x.rows, x.cols);
        blas::matmul(self, &dy_op, false, weight, false, &mut dx); // dx[T, in] = dy[T, out] · W[out, in]
        let mut db = None;
        let dw = weight_grad.then(|| {
            let mut dw = self.tensor(weight.rows, weight.cols);
            let x_op = self.product_operand(x);
            if bias_grad && dy.rows > 0 && dw.len() > 0 {
                // dW[out, in] = dyᵀ · x, and db[out] = Σₜ dy[t, :] from the same pass over dy
                let mut sums = self.tensor(1, dy.cols);
                let epilogue = ProductEpilogue::RowSumsOfA(&mut sums);
                match blas::gemm_epilogue(self, &dy_op, true, &x_op, false, &mut dw, 0, epilogue) {
                    Ok(()) => db = Some(sums),
                    Err(why) => {
                        self.fell_back_from_epilogue("bias-gradient", why);
                        blas::matmul(self, &dy_op, true, &x_op, false, &mut dw);
                    }
                }
            } else {
                blas::matmul(self, &dy_op, true, &x_op, false, &mut dw); // dW[out, in] = dyᵀ · x
            }
            dw
        });
        let db = bias_grad.then(|| db.unwrap_or_else(|| self.column_sum(dy)));
        (dx, dw, db)
    }
}
