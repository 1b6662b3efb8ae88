//! An MLP's gate and up computed as one [T, 2I] product, rows [gate | up] (a stacked frozen base, or
//! ChatGLM's fused `dense_h_to_4h`): SwiGLU reads the two halves where they lie and its backward writes
//! ∂L/∂[gate | up] in the same layout, so neither direction splits or joins a copy (`nn::mlp` on the CPU).
//! SwiGLU's output is the down projection's input, which only products read: under mixed precision it is
//! written in bf16 by the activation itself (no cast before the down product, forward or backward).

use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, ReadBy, elementwise_grid, fail, int};

impl Cuda {
    /// gate_up [T, 2I] → silu(gate) ⊙ up [T, I], in the storage the down projection's products read.
    pub(super) fn swiglu_of_halves(&self, gate_up: &CudaTensor) -> CudaTensor {
        let inner = gate_up.cols / 2;
        assert_eq!(gate_up.cols, 2 * inner, "swiglu: width {} is not [gate | up]", gate_up.cols);
        let mut out = self.product_output(gate_up.rows, inner);
        self.bf16_input_has_bf16_output(gate_up, &out, "swiglu_halves");
        let kernel = match (gate_up.is_bf16(), out.is_bf16()) {
            (false, false) => "swiglu_halves",
            (false, true) => "swiglu_halves_to_bf16",
            (true, _) => "swiglu_halves_bf16",
        };
        let (rows, width) = (int(gate_up.rows, "rows") as i64, int(inner, "inner") as i64);
        launch!(self, kernel, elementwise_grid(out.len()), out.storage_mut(), gate_up.storage(), &rows, &width);
        out
    }

    /// gate, up [T, I] → silu(gate) ⊙ up [T, I], in the storage the down projection's products read.
    pub(super) fn swiglu_of(&self, gate: &CudaTensor, up: &CudaTensor) -> CudaTensor {
        Self::same_shape(gate, up, "swiglu");
        let mut out = self.product_output(gate.rows, gate.cols);
        let kernel = if out.is_bf16() { "swiglu_to_bf16" } else { "swiglu" };
        let n = gate.len() as i64;
        launch!(self, kernel, elementwise_grid(gate.len()), out.storage_mut(), gate.f32(), up.f32(), &n);
        out
    }

    /// dy [T, I] → ∂L/∂[gate | up] [T, 2I], in the storage `read_by` asks for.
    pub(super) fn swiglu_of_halves_backward(
        &self,
        dy: &CudaTensor,
        gate_up: &CudaTensor,
        read_by: ReadBy,
    ) -> CudaTensor {
        let inner = gate_up.cols / 2;
        assert_eq!((dy.rows, dy.cols), (gate_up.rows, inner), "swiglu_halves_backward: dy is not [T, I]");
        let mut d = self.output_for(read_by, gate_up.rows, gate_up.cols);
        // a bf16 [gate | up] comes from a stacked frozen base, whose gradient only products read
        self.bf16_input_has_bf16_output(gate_up, &d, "swiglu_halves_backward");
        let kernel = match (gate_up.is_bf16(), d.is_bf16()) {
            (false, false) => "swiglu_halves_backward",
            (false, true) => "swiglu_halves_backward_to_bf16",
            (true, _) => "swiglu_halves_backward_bf16",
        };
        let (rows, width) = (int(gate_up.rows, "rows") as i64, int(inner, "inner") as i64);
        let grid = elementwise_grid(dy.len());
        launch!(self, kernel, grid, d.storage_mut(), dy.f32(), gate_up.storage(), &rows, &width);
        d
    }
}
