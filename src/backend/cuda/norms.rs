//! The norms' backward on the GPU (rms_norm.cu, layer_norm.cu; `nn::rms_norm`, `nn::layer_norm` on the CPU):
//! one block per row for ∂L/∂x and the per-row terms of ∂L/∂w, then their column sums.

use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, THREADS, fail, int, row_grid};

impl Cuda {
    /// The backward of RMSNorm or LayerNorm (one block per row, the same arguments) → (dx, the per-row terms
    /// of ∂L/∂w that `column_sum` adds up, if `weight_grad`; a frozen norm's kernel writes dx alone).
    pub(super) fn norm_backward_rows(
        &self,
        layer_norm: bool,
        dy: &CudaTensor,
        x: &CudaTensor,
        weight: &CudaTensor,
        eps: f32,
        weight_grad: bool,
    ) -> (CudaTensor, Option<CudaTensor>) {
        Self::same_shape(dy, x, if layer_norm { "layer_norm_backward" } else { "rms_norm_backward" });
        let mut dx = self.tensor(x.rows, x.cols);
        let hidden = int(x.cols, "hidden");
        if !weight_grad {
            let kernel = if layer_norm { "layer_norm_backward_input" } else { "rms_norm_backward_input" };
            launch!(self, kernel, row_grid(x.rows), dx.f32_mut(), dy.f32(), x.f32(), weight.f32(), &hidden, &eps);
            return (dx, None);
        }
        let kernel = if layer_norm { "layer_norm_backward" } else { "rms_norm_backward" };
        let mut dw_rows = self.tensor(x.rows, x.cols);
        launch!(
            self,
            kernel,
            row_grid(x.rows),
            dx.f32_mut(),
            dw_rows.f32_mut(),
            dy.f32(),
            x.f32(),
            weight.f32(),
            &hidden,
            &eps
        );
        (dx, Some(dw_rows))
    }

    /// Column sums of a [rows, cols] matrix → [1, cols]: partial sums over chunks of 64 rows in parallel, then
    /// the sum of the partials (one level more when there are many chunks).
    pub(super) fn column_sum(&self, x: &CudaTensor) -> CudaTensor {
        const ROWS_PER_CHUNK: usize = 64;
        let chunks = x.rows.div_ceil(ROWS_PER_CHUNK).max(1);
        let mut out = self.tensor(chunks, x.cols);
        let (rows, cols, per) = (int(x.rows, "rows"), int(x.cols, "cols"), ROWS_PER_CHUNK as i32);
        let blocks = x.cols.div_ceil(THREADS as usize).max(1) as u32;
        let cfg =
            LaunchConfig { grid_dim: (blocks, chunks as u32, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        launch!(self, "column_sum", cfg, out.f32_mut(), x.f32(), &rows, &cols, &per);
        if chunks == 1 { out } else { self.column_sum(&out) }
    }
}
