//! Attention on the GPU: the launches of attention.cu's kernels — the by-value sizes, the segment tables of a
//! packed batch, and the choice between the tiled kernels (head_dim ≤ 128) and the per-key ones (up to 256).

use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, Uploaded, fail, int, warp_grid};
use crate::backend::{AttentionDims, AttentionMask, AttentionShape, segment_bounds};
use cudarc::driver::{CudaStream, DevicePtr};
use std::sync::Arc;

// SAFETY: plain `#[repr(C)]` data with the layout of the C struct (six ints, a float, an int, a float, an int;
// no padding).
unsafe impl cudarc::driver::DeviceRepr for AttentionDims {}

fn attention_dims(q: &CudaTensor, k: &CudaTensor, shape: &AttentionShape, mask: &AttentionMask) -> AttentionDims {
    let fits = |n: usize, what: &str| int(n, what) as usize;
    fits(mask.q_offset, "q_offset");
    mask.window.map(|w| fits(w, "sliding window"));
    AttentionDims::new(fits(q.rows, "tq"), fits(k.rows, "tk"), shape, mask)
}

/// A packed batch's segments on the device (see attention.cu).
struct Segments {
    ids: Uploaded<u32>,
    first: Uploaded<u32>,
    last: Uploaded<u32>,
}

/// Device pointers of the three segment arrays, or nulls; the guards keep the buffers' reads ordered.
fn segment_pointers<'a>(
    segments: &'a Option<Segments>,
    stream: &'a Arc<CudaStream>,
) -> ([u64; 3], Vec<cudarc::driver::SyncOnDrop<'a>>) {
    match segments {
        Some(s) => {
            let (ids, g1) = s.ids.device_ptr(stream);
            let (first, g2) = s.first.device_ptr(stream);
            let (last, g3) = s.last.device_ptr(stream);
            ([ids, first, last], vec![g1, g2, g3])
        }
        None => ([0; 3], Vec::new()), // null `const unsigned int*`s
    }
}

/// Warps per block of the tiled attention kernels: the query rows (or keys) one block owns (`TILE_WARPS` in
/// attention.cu; the shared-memory arrays are sized for it).
const ATTENTION_TILE_WARPS: u32 = 8;
/// The largest head_dim the tiled attention kernels take (`TILED_MAX_D`); above it, up to 256, the per-key ones.
const ATTENTION_TILED_MAX_D: usize = 128;

/// The tiled attention kernels' grid: one block of `ATTENTION_TILE_WARPS` warps per that many consecutive
/// rows (query rows, or keys for dk/dv) of one head, the head in `blockIdx.y`.
fn attention_tile_grid(rows: usize, heads: usize) -> LaunchConfig {
    let blocks = rows.div_ceil(ATTENTION_TILE_WARPS as usize).max(1) as u32;
    LaunchConfig {
        grid_dim: (blocks, int(heads, "heads") as u32, 1),
        block_dim: (32 * ATTENTION_TILE_WARPS, 1, 1),
        shared_mem_bytes: 0, // static __shared__ arrays, 40.5 KB at most
    }
}

impl Cuda {
    /// A packed batch's segment ids and, per position, the first and last position of its segment, on the
    /// device (None without segments: the kernels get null pointers).
    fn segments(&self, mask: &AttentionMask) -> Option<Segments> {
        let ids = mask.segment_ids?;
        let (first, last) = segment_bounds(ids);
        Some(Segments {
            ids: self.ids_on_device(ids),
            first: self.ids_on_device(&first),
            last: self.ids_on_device(&last),
        })
    }

    /// → (out [Tq, H·d], lse [Tq, H])
    pub(super) fn attention_forward(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        shape: &AttentionShape,
        mask: &AttentionMask,
    ) -> (CudaTensor, CudaTensor) {
        check_attention(q, k, v, shape, mask);
        let dims = attention_dims(q, k, shape, mask);
        let segments = self.segments(mask);
        let ([seg, seg_first, _], _guards) = segment_pointers(&segments, &self.stream);
        let (mut out, mut lse) = (self.tensor(q.rows, q.cols), self.tensor(q.rows, shape.n_heads));
        // the tiled and the per-key kernel take the same arguments; only the grids differ
        let tiled = shape.head_dim <= ATTENTION_TILED_MAX_D;
        let grid = if tiled { attention_tile_grid(q.rows, shape.n_heads) } else { warp_grid(q.rows * shape.n_heads) };
        let kernel = if tiled { "attention_forward_tiled" } else { "attention_forward_per_key" };
        launch!(self, kernel, grid, &mut out.data, &mut lse.data, &q.data, &k.data, &v.data, &seg, &seg_first, &dims);
        (out, lse)
    }

    /// → (dq, dk, dv)
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_backward(
        &self,
        dout: &CudaTensor,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        out: &CudaTensor,
        lse: &CudaTensor,
        shape: &AttentionShape,
        mask: &AttentionMask,
    ) -> (CudaTensor, CudaTensor, CudaTensor) {
        check_attention(q, k, v, shape, mask);
        let dims = attention_dims(q, k, shape, mask);
        let segments = self.segments(mask);
        let ([seg, seg_first, seg_last], _guards) = segment_pointers(&segments, &self.stream);
        let per_query = warp_grid(q.rows * shape.n_heads);
        let mut delta = self.tensor(q.rows, shape.n_heads);
        launch!(self, "attention_delta", per_query, &mut delta.data, &dout.data, &out.data, &dims);
        let mut dq = self.tensor(q.rows, q.cols);
        let (mut dk, mut dv) = (self.tensor(k.rows, k.cols), self.tensor(v.rows, v.cols));
        let (lse, delta) = (&lse.data, &delta.data);
        // the tiled and the per-key kernels of each pass take the same arguments; only the grids differ
        let tiled = shape.head_dim <= ATTENTION_TILED_MAX_D;
        let (dq_grid, dkdv_grid) = if tiled {
            (attention_tile_grid(q.rows, shape.n_heads), attention_tile_grid(k.rows, shape.n_kv_heads))
        } else {
            (per_query, warp_grid(k.rows * shape.n_kv_heads))
        };
        let dq_kernel = if tiled { "attention_backward_dq_tiled" } else { "attention_backward_dq_per_key" };
        let dkdv_kernel = if tiled { "attention_backward_dkdv_tiled" } else { "attention_backward_dkdv_per_key" };
        let (q_, k_, v_, dout_) = (&q.data, &k.data, &v.data, &dout.data);
        launch!(self, dq_kernel, dq_grid, &mut dq.data, dout_, q_, k_, v_, lse, delta, &seg, &seg_first, &dims);
        launch!(
            self,
            dkdv_kernel,
            dkdv_grid,
            &mut dk.data,
            &mut dv.data,
            dout_,
            q_,
            k_,
            v_,
            lse,
            delta,
            &seg,
            &seg_last,
            &dims
        );
        (dq, dk, dv)
    }
}

fn check_attention(q: &CudaTensor, k: &CudaTensor, v: &CudaTensor, shape: &AttentionShape, mask: &AttentionMask) {
    assert!(shape.head_dim <= 256, "attention: head_dim {} > 256, the kernels' limit", shape.head_dim);
    assert!(
        shape.n_kv_heads > 0 && shape.n_heads % shape.n_kv_heads == 0,
        "attention: heads not a multiple of KV heads"
    );
    assert_eq!(q.cols, shape.n_heads * shape.head_dim, "attention: q columns");
    assert_eq!(k.cols, shape.n_kv_heads * shape.head_dim, "attention: k columns");
    assert_eq!((v.rows, v.cols), (k.rows, k.cols), "attention: v not shaped like k");
    assert_eq!(mask.q_offset + q.rows, k.rows, "attention: the last query must sit at the last key");
    if let Some(s) = mask.segment_ids {
        assert_eq!(s.len(), k.rows, "attention: one segment id per key");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn attention_dims_have_the_c_struct_layout() {
        // six ints, a float, an int, a float and an int, 4-byte aligned, no padding: `struct AttentionDims` in
        // attention.cu
        assert_eq!(std::mem::size_of::<super::AttentionDims>(), 40);
        assert_eq!(std::mem::align_of::<super::AttentionDims>(), 4);
    }

    #[test]
    fn tiled_attention_constants_match_the_kernels() {
        // the launch shape and the head_dim dispatch must agree with the sizes attention.cu's shared arrays have
        let define = |name: &str| -> usize {
            let source = include_str!("kernels/attention.cu");
            let line = source.lines().find_map(|l| l.strip_prefix(&format!("#define {name} "))).expect(name);
            line.split_whitespace().next().and_then(|v| v.parse().ok()).expect(name)
        };
        assert_eq!(define("TILE_WARPS"), super::ATTENTION_TILE_WARPS as usize);
        assert_eq!(define("TILED_MAX_D"), super::ATTENTION_TILED_MAX_D);
    }
}
