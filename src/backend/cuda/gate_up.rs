//! An MLP's gate and up computed as one [T, 2I] product, rows [gate | up] (a stacked frozen base, or
//! ChatGLM's fused `dense_h_to_4h`): SwiGLU reads the two halves where they lie and its backward writes
//! ∂L/∂[gate | up] in the same layout, so neither direction splits or joins a copy (`nn::mlp` on the CPU).

use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, elementwise_grid, fail, int};

impl Cuda {
    /// gate_up [T, 2I] → silu(gate) ⊙ up [T, I]
    pub(super) fn swiglu_of_halves(&self, gate_up: &CudaTensor) -> CudaTensor {
        let inner = gate_up.cols / 2;
        assert_eq!(gate_up.cols, 2 * inner, "swiglu: width {} is not [gate | up]", gate_up.cols);
        let mut out = self.tensor(gate_up.rows, inner);
        let (rows, width) = (int(gate_up.rows, "rows") as i64, int(inner, "inner") as i64);
        launch!(self, "swiglu_halves", elementwise_grid(out.len()), out.f32_mut(), gate_up.f32(), &rows, &width);
        out
    }

    /// dy [T, I] → ∂L/∂[gate | up] [T, 2I]
    pub(super) fn swiglu_of_halves_backward(&self, dy: &CudaTensor, gate_up: &CudaTensor) -> CudaTensor {
        let inner = gate_up.cols / 2;
        assert_eq!((dy.rows, dy.cols), (gate_up.rows, inner), "swiglu_halves_backward: dy is not [T, I]");
        let mut d = self.tensor(gate_up.rows, gate_up.cols);
        let (rows, width) = (int(gate_up.rows, "rows") as i64, int(inner, "inner") as i64);
        let grid = elementwise_grid(dy.len());
        launch!(self, "swiglu_halves_backward", grid, d.f32_mut(), dy.f32(), gate_up.f32(), &rows, &width);
        d
    }
}
