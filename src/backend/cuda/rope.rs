//! RoPE on the GPU (rope.cu; `nn::rope` on the CPU): the rotation by +θ forward and −θ backward, with partial
//! rotary's pass-through entries copied.

use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, elementwise_grid, fail, int};

impl Cuda {
    /// x rotated by ±θ (`direction` 1 forward, −1 backward), a thread per rotated pair or copied entry.
    pub(super) fn rope_rotate(
        &self,
        x: &CudaTensor,
        heads: usize,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
        direction: f32,
    ) -> CudaTensor {
        assert_eq!(x.cols, heads * head_dim, "rope: columns ≠ heads · head_dim");
        assert_eq!(positions.len(), x.rows, "rope: one position per row");
        // the first 2·len(ω) entries of each head rotate, the rest (partial rotary) are copied
        assert!(2 * inv_freq.len() <= head_dim, "rope: {} frequencies for heads of {head_dim}", inv_freq.len());
        let positions: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let (pos, freq) = (self.ids_on_device(&positions), self.floats_on_device(inv_freq));
        let mut y = self.tensor(x.rows, x.cols);
        let (t, h, d, half) =
            (int(x.rows, "tokens"), int(heads, "heads"), int(head_dim, "head_dim"), int(inv_freq.len(), "rotary"));
        launch!(
            self,
            "rope",
            elementwise_grid(x.rows * heads * (head_dim - inv_freq.len())), // a thread per pair or copied entry
            y.f32_mut(),
            x.f32(),
            &pos,
            &freq,
            &t,
            &h,
            &d,
            &half,
            &direction
        );
        y
    }
}
