//! The norms on the GPU (rms_norm.cu, layer_norm.cu; `nn::rms_norm`, `nn::layer_norm` on the CPU): one block
//! per row, forward (alone, or with the residual add before it) and backward (∂L/∂x, added into the stream's
//! gradient or not, and the per-row terms of ∂L/∂w, then their column sums).

use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, ReadBy, THREADS, fail, int, row_grid};

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
        let mut dx = self.tensor(x.rows, x.cols);
        let dw_rows = self.norm_backward_launch((layer_norm, false), &mut dx, dy, x, weight, eps, weight_grad);
        (dx, dw_rows)
    }

    // ANCHOR: cuda_rms_norm
    /// RMSNorm(x)·w, written in bf16 when only products read it under mixed precision (`_to_bf16`).
    pub(super) fn rms_norm_for(&self, read_by: ReadBy, x: &CudaTensor, weight: &CudaTensor, eps: f32) -> CudaTensor {
        assert_eq!(weight.len(), x.cols, "rms_norm: weight length ≠ hidden size");
        let mut y = self.output_for(read_by, x.rows, x.cols);
        let kernel = if y.is_bf16() { "rms_norm_to_bf16" } else { "rms_norm" };
        let hidden = int(x.cols, "hidden");
        launch!(self, kernel, row_grid(x.rows), y.storage_mut(), x.f32(), weight.f32(), &hidden, &eps);
        y
    }
    // ANCHOR_END: cuda_rms_norm

    /// LayerNorm(x)·w + b, in the storage `read_by` asks for.
    pub(super) fn layer_norm_for(
        &self,
        read_by: ReadBy,
        x: &CudaTensor,
        (weight, bias): (&CudaTensor, &CudaTensor),
        eps: f32,
    ) -> CudaTensor {
        assert!(weight.len() == x.cols && bias.len() == x.cols, "layer_norm: weight or bias length ≠ hidden");
        let mut y = self.output_for(read_by, x.rows, x.cols);
        let kernel = if y.is_bf16() { "layer_norm_to_bf16" } else { "layer_norm" };
        let hidden = int(x.cols, "hidden");
        let (w, b) = (weight.f32(), bias.f32());
        launch!(self, kernel, row_grid(x.rows), y.storage_mut(), x.f32(), w, b, &hidden, &eps);
        y
    }

    // ANCHOR: cuda_add_rms_norm
    /// (x + a, RMSNorm(x + a)·w) in one launch: the residual add and the norm after it, the sum in f32 and the
    /// norm in the storage `read_by` asks for.
    pub(super) fn add_then_rms_norm(
        &self,
        read_by: ReadBy,
        x: &CudaTensor,
        a: &CudaTensor,
        weight: &CudaTensor,
        eps: f32,
    ) -> (CudaTensor, CudaTensor) {
        Self::same_shape(x, a, "add_rms_norm");
        assert_eq!(weight.len(), x.cols, "add_rms_norm: weight length ≠ hidden size");
        let (mut sum, mut y) = (self.tensor(x.rows, x.cols), self.output_for(read_by, x.rows, x.cols));
        let kernel = if y.is_bf16() { "add_rms_norm_to_bf16" } else { "add_rms_norm" };
        let hidden = int(x.cols, "hidden");
        let (grid, w) = (row_grid(x.rows), weight.f32());
        launch!(self, kernel, grid, sum.f32_mut(), y.storage_mut(), x.f32(), a.f32(), w, &hidden, &eps);
        (sum, y)
    }
    // ANCHOR_END: cuda_add_rms_norm

    /// (x + a, LayerNorm(x + a)·w + b) in one launch.
    pub(super) fn add_then_layer_norm(
        &self,
        read_by: ReadBy,
        x: &CudaTensor,
        a: &CudaTensor,
        (weight, bias): (&CudaTensor, &CudaTensor),
        eps: f32,
    ) -> (CudaTensor, CudaTensor) {
        Self::same_shape(x, a, "add_layer_norm");
        assert!(weight.len() == x.cols && bias.len() == x.cols, "add_layer_norm: weight or bias length ≠ hidden");
        let (mut sum, mut y) = (self.tensor(x.rows, x.cols), self.output_for(read_by, x.rows, x.cols));
        let kernel = if y.is_bf16() { "add_layer_norm_to_bf16" } else { "add_layer_norm" };
        let hidden = int(x.cols, "hidden");
        let (grid, w, b) = (row_grid(x.rows), weight.f32(), bias.f32());
        launch!(self, kernel, grid, sum.f32_mut(), y.storage_mut(), x.f32(), a.f32(), w, b, &hidden, &eps);
        (sum, y)
    }

    /// RMSNorm's or LayerNorm's backward added into `dx` (the residual stream's gradient) in the same pass →
    /// the per-row terms of ∂L/∂w, if `weight_grad`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn norm_backward_rows_into(
        &self,
        layer_norm: bool,
        dx: &mut CudaTensor,
        dy: &CudaTensor,
        x: &CudaTensor,
        weight: &CudaTensor,
        eps: f32,
        weight_grad: bool,
    ) -> Option<CudaTensor> {
        Self::same_shape(dx, x, "norm_backward_add");
        self.norm_backward_launch((layer_norm, true), dx, dy, x, weight, eps, weight_grad)
    }

    /// One norm backward launch, for (LayerNorm rather than RMSNorm, dx added into rather than written).
    #[allow(clippy::too_many_arguments)]
    fn norm_backward_launch(
        &self,
        (layer_norm, accumulate): (bool, bool),
        dx: &mut CudaTensor,
        dy: &CudaTensor,
        x: &CudaTensor,
        weight: &CudaTensor,
        eps: f32,
        weight_grad: bool,
    ) -> Option<CudaTensor> {
        Self::same_shape(dy, x, "norm_backward");
        let hidden = int(x.cols, "hidden");
        if !weight_grad {
            let input_only = match (layer_norm, accumulate) {
                (true, false) => "layer_norm_backward_input",
                (true, true) => "layer_norm_backward_input_add",
                (false, false) => "rms_norm_backward_input",
                (false, true) => "rms_norm_backward_input_add",
            };
            launch!(self, input_only, row_grid(x.rows), dx.f32_mut(), dy.f32(), x.f32(), weight.f32(), &hidden, &eps);
            return None;
        }
        let with_weight = match (layer_norm, accumulate) {
            (true, false) => "layer_norm_backward",
            (true, true) => "layer_norm_backward_add",
            (false, false) => "rms_norm_backward",
            (false, true) => "rms_norm_backward_add",
        };
        let mut dw_rows = self.tensor(x.rows, x.cols);
        launch!(
            self,
            with_weight,
            row_grid(x.rows),
            dx.f32_mut(),
            dw_rows.f32_mut(),
            dy.f32(),
            x.f32(),
            weight.f32(),
            &hidden,
            &eps
        );
        Some(dw_rows)
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
