//! A fused q/k/v projection's output on the GPU: the launches of fused_qkv.cu's column split and its inverse
//! (`nn::fused_qkv` on the CPU), one thread per element of the fused row.

use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, elementwise_grid, fail, int};
use crate::backend::{AttentionShape, FusedQkv};

/// Column widths of one group's q part and of its k (or v) part, as `nn::fused_qkv` checks them.
pub(super) fn part_widths(shape: &AttentionShape, layout: FusedQkv) -> (usize, usize) {
    let g = layout.groups;
    assert!(
        g > 0 && shape.n_heads % g == 0 && shape.n_kv_heads % g == 0,
        "fused qkv: {g} groups do not divide {} query and {} key/value heads",
        shape.n_heads,
        shape.n_kv_heads
    );
    (shape.n_heads / g * shape.head_dim, shape.n_kv_heads / g * shape.head_dim)
}

impl Cuda {
    /// qkv: [T, (H + 2·KV)·d] → (q [T, H·d], k [T, KV·d], v [T, KV·d])
    pub(super) fn split_fused_qkv(
        &self,
        qkv: &CudaTensor,
        shape: &AttentionShape,
        layout: FusedQkv,
    ) -> (CudaTensor, CudaTensor, CudaTensor) {
        let (qw, kw) = part_widths(shape, layout);
        let g = layout.groups;
        assert_eq!(qkv.cols, g * (qw + 2 * kw), "fused qkv: width {} is not (H + 2·KV)·d", qkv.cols);
        let (mut q, mut k, mut v) =
            (self.tensor(qkv.rows, g * qw), self.tensor(qkv.rows, g * kw), self.tensor(qkv.rows, g * kw));
        let (t, groups, q_width, kv_width) =
            (int(qkv.rows, "tokens"), int(g, "groups"), int(qw, "q width"), int(kw, "kv width"));
        launch!(
            self,
            "split_qkv",
            elementwise_grid(qkv.len()),
            q.f32_mut(),
            k.f32_mut(),
            v.f32_mut(),
            qkv.f32(),
            &t,
            &groups,
            &q_width,
            &kv_width
        );
        (q, k, v)
    }

    /// The inverse of [`Cuda::split_fused_qkv`] (and its backward): (dq, dk, dv) → dqkv [T, (H + 2·KV)·d]
    pub(super) fn join_fused_qkv(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        shape: &AttentionShape,
        layout: FusedQkv,
    ) -> CudaTensor {
        let (qw, kw) = part_widths(shape, layout);
        let g = layout.groups;
        assert_eq!((q.cols, k.cols, v.cols), (g * qw, g * kw, g * kw), "join_qkv: q, k, v widths");
        assert!(k.rows == q.rows && v.rows == q.rows, "join_qkv: q, k, v have different numbers of rows");
        let mut qkv = self.tensor(q.rows, g * (qw + 2 * kw));
        let (t, groups, q_width, kv_width) =
            (int(q.rows, "tokens"), int(g, "groups"), int(qw, "q width"), int(kw, "kv width"));
        launch!(
            self,
            "join_qkv",
            elementwise_grid(qkv.len()),
            qkv.f32_mut(),
            q.f32(),
            k.f32(),
            v.f32(),
            &t,
            &groups,
            &q_width,
            &kv_width
        );
        qkv
    }
}
