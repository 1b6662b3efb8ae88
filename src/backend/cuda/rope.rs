//! RoPE on the GPU (rope.cu; `nn::rope` on the CPU): the rotation by +θ forward and −θ backward, with partial
//! rotary's pass-through entries copied; and the split of a fused or stacked [q | k | v] with q and k rotated
//! in the same pass (and its backward), which replaces a split and two rotations.

use super::fused_qkv::part_widths;
use super::upload_cache::Uploaded;
use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, ReadBy, elementwise_grid, fail, int};
use crate::backend::{AttentionShape, FusedQkv};

impl Cuda {
    /// The positions of `rows` tokens and the inverse frequencies, on the device, checked against heads of
    /// `head_dim`.
    fn rope_tables(
        &self,
        rows: usize,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> (Uploaded<u32>, Uploaded<f32>) {
        assert_eq!(positions.len(), rows, "rope: one position per row");
        // the first 2·len(ω) entries of each head rotate, the rest (partial rotary) are copied
        assert!(2 * inv_freq.len() <= head_dim, "rope: {} frequencies for heads of {head_dim}", inv_freq.len());
        let positions: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        (self.ids_on_device(&positions), self.floats_on_device(inv_freq))
    }

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
        let (pos, freq) = self.rope_tables(x.rows, head_dim, positions, inv_freq);
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

    /// qkv: [T, (H + 2·KV)·d] → (q, k rotated at `positions`, v), one thread per pair or copied entry of qkv.
    pub(super) fn split_fused_qkv_rotated(
        &self,
        qkv: &CudaTensor,
        shape: &AttentionShape,
        layout: FusedQkv,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> (CudaTensor, CudaTensor, CudaTensor) {
        let (qw, kw) = part_widths(shape, layout);
        let g = layout.groups;
        assert_eq!(qkv.cols, g * (qw + 2 * kw), "fused qkv: width {} is not (H + 2·KV)·d", qkv.cols);
        let (pos, freq) = self.rope_tables(qkv.rows, shape.head_dim, positions, inv_freq);
        let (mut q, mut k, mut v) =
            (self.tensor(qkv.rows, g * qw), self.tensor(qkv.rows, g * kw), self.tensor(qkv.rows, g * kw));
        let [t, groups, q_heads, kv_heads, d, half] = self.split_rope_sizes(qkv.rows, shape, layout, inv_freq);
        launch!(
            self,
            "split_qkv_rope",
            elementwise_grid(qkv.len() / shape.head_dim * (shape.head_dim - inv_freq.len())),
            q.f32_mut(),
            k.f32_mut(),
            v.f32_mut(),
            qkv.f32(),
            &pos,
            &freq,
            &t,
            &groups,
            &q_heads,
            &kv_heads,
            &d,
            &half
        );
        (q, k, v)
    }

    /// The backward of [`Cuda::split_fused_qkv_rotated`]: (dq, dk, dv) → dqkv, dq and dk turned back by −θ.
    pub(super) fn join_fused_qkv_rotated(
        &self,
        [dq, dk, dv]: [&CudaTensor; 3],
        shape: &AttentionShape,
        layout: FusedQkv,
        (positions, inv_freq): (&[usize], &[f32]),
        read_by: ReadBy,
    ) -> CudaTensor {
        let (qw, kw) = part_widths(shape, layout);
        let g = layout.groups;
        assert_eq!((dq.cols, dk.cols, dv.cols), (g * qw, g * kw, g * kw), "join_qkv: q, k, v widths");
        assert!(dk.rows == dq.rows && dv.rows == dq.rows, "join_qkv: q, k, v have different numbers of rows");
        let (pos, freq) = self.rope_tables(dq.rows, shape.head_dim, positions, inv_freq);
        let mut dqkv = self.output_for(read_by, dq.rows, g * (qw + 2 * kw));
        let kernel = if dqkv.is_bf16() { "join_qkv_rope_to_bf16" } else { "join_qkv_rope" };
        let [t, groups, q_heads, kv_heads, d, half] = self.split_rope_sizes(dq.rows, shape, layout, inv_freq);
        launch!(
            self,
            kernel,
            elementwise_grid(dqkv.len() / shape.head_dim * (shape.head_dim - inv_freq.len())),
            dqkv.storage_mut(),
            dq.f32(),
            dk.f32(),
            dv.f32(),
            &pos,
            &freq,
            &t,
            &groups,
            &q_heads,
            &kv_heads,
            &d,
            &half
        );
        dqkv
    }

    /// The kernels' sizes: tokens, groups, q and k/v heads per group, head_dim, rotated pairs per head.
    fn split_rope_sizes(&self, rows: usize, shape: &AttentionShape, layout: FusedQkv, inv_freq: &[f32]) -> [i32; 6] {
        let g = layout.groups;
        [
            int(rows, "tokens"),
            int(g, "groups"),
            int(shape.n_heads / g, "q heads per group"),
            int(shape.n_kv_heads / g, "kv heads per group"),
            int(shape.head_dim, "head_dim"),
            int(inv_freq.len(), "rotary"),
        ]
    }
}
