//! Row scaling and row dot products on the GPU (`nn::row_scale` on the CPU): the launches of row_scale.cu.

use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, elementwise_grid, fail, int, row_grid};

impl Cuda {
    /// x: [T, H], weights: [T] on the host → y[t] = weights[t]·x[t]: the T weights uploaded (once per distinct
    /// content, `upload_cache.rs`), then one thread per element.
    pub(super) fn scale_each_row(&self, x: &CudaTensor, weights: &[f32]) -> CudaTensor {
        assert_eq!(x.rows, weights.len(), "scale_rows: one weight per row");
        let mut y = self.tensor(x.rows, x.cols);
        if x.len() == 0 {
            return y;
        }
        let w = self.floats_on_device(weights);
        let (rows, cols) = (int(x.rows, "rows"), int(x.cols, "cols"));
        launch!(self, "scale_rows", elementwise_grid(x.len()), y.f32_mut(), x.f32(), &w, &rows, &cols);
        y
    }

    /// a, b: [T, H] → ⟨a[t], b[t]⟩ on the host: one block per row, then one device → host copy of the T dots.
    /// That copy waits for the stream (a synchronisation point, as cross_entropy's host losses are): the caller
    /// (the router's combine backward) decides on the host.
    pub(super) fn dots_of_rows(&self, a: &CudaTensor, b: &CudaTensor) -> Vec<f32> {
        Self::same_shape(a, b, "row_dots");
        if a.rows == 0 {
            return Vec::new();
        }
        let mut dots = self.alloc(a.rows);
        let hidden = int(a.cols, "hidden");
        launch!(self, "row_dots", row_grid(a.rows), &mut dots, a.f32(), b.f32(), &hidden);
        self.to_host(&dots, a.rows)
    }
}
