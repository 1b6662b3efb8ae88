//! Attention on the GPU: the launches of attention.cu's and flash_attention.cu's kernels — the by-value sizes,
//! the segment tables of a packed batch, and the choice of a kernel family by (precision, head_dim, clamp):
//! under `Precision::Bf16` the tensor-core kernels (flash_attention.cu, bf16 operands, f32 accumulators), else
//! the exact f32 ones, tiled (head_dim ≤ 128) or per key (up to 256). The score clamp (Aquila2) always takes
//! the f32 kernels.

use super::upload_cache::Uploaded;
use super::{Cuda, CudaTensor, LaunchConfig, Precision, PushKernelArg, ReadBy, fail, int, warp_grid};
use crate::backend::{AttentionDims, AttentionMask, AttentionShape, segment_bounds};
use cudarc::driver::{CudaStream, DevicePtr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Query rows (forward, dq) or keys (dk/dv) per block of the tensor-core kernels (`FLASH_ROWS`), in
/// `FLASH_WARPS` warps of 16.
const FLASH_ROWS: usize = 64;
const FLASH_WARPS: u32 = 4;

/// The tensor-core kernels' grid: one block of 4 warps per 64 consecutive rows of one head, the head in
/// `blockIdx.y`.
fn flash_grid(rows: usize, heads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(FLASH_ROWS).max(1) as u32, int(heads, "heads") as u32, 1),
        block_dim: (32 * FLASH_WARPS, 1, 1),
        shared_mem_bytes: 0, // static __shared__ tiles, 33.3 KB at most
    }
}

/// Launches of the tensor-core attention kernels in this process, all devices together: how a test sees that
/// a bf16 model's attention went through them.
static FLASH_LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// How many tensor-core attention kernels (forward, dq, dk/dv) this process has launched so far.
pub fn flash_attention_launches() -> u64 {
    FLASH_LAUNCHES.load(Ordering::Relaxed)
}

// ANCHOR: attention_family
/// The kernels of one attention: forward, dq pass, dk/dv pass, and their grids (per query rows, per keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionKernels {
    pub forward: &'static str,
    /// The forward writing its output in bf16 (the tensor-core family only): where only products read it.
    pub forward_to_bf16: Option<&'static str>,
    pub dq: &'static str,
    pub dkdv: &'static str,
    pub flash: bool,
}

/// The kernel family for (precision, head_dim, clamp): bf16 without a clamp → the tensor-core kernels compiled
/// for the smallest head_dim bound (64, 128, 256) that holds head_dim; otherwise the exact f32 kernels, tiled up
/// to 128 and per key above. The clamp's zero gradient where it binds is kept in the f32 kernels only.
pub fn attention_kernels(precision: Precision, head_dim: usize, clamp: Option<f32>) -> AttentionKernels {
    let flash = precision == Precision::Bf16 && clamp.is_none();
    let (forward, forward_to_bf16, dq, dkdv) = match (flash, head_dim) {
        (true, 0..=64) => (
            "flash_attention_forward_d64",
            Some("flash_attention_forward_d64_to_bf16"),
            "flash_attention_dq_d64",
            "flash_attention_dkdv_d64",
        ),
        (true, 65..=128) => (
            "flash_attention_forward_d128",
            Some("flash_attention_forward_d128_to_bf16"),
            "flash_attention_dq_d128",
            "flash_attention_dkdv_d128",
        ),
        (true, _) => (
            "flash_attention_forward_d256",
            Some("flash_attention_forward_d256_to_bf16"),
            "flash_attention_dq_d256",
            "flash_attention_dkdv_d256",
        ),
        (false, 0..=ATTENTION_TILED_MAX_D) => {
            ("attention_forward_tiled", None, "attention_backward_dq_tiled", "attention_backward_dkdv_tiled")
        }
        (false, _) => {
            ("attention_forward_per_key", None, "attention_backward_dq_per_key", "attention_backward_dkdv_per_key")
        }
    };
    AttentionKernels { forward, forward_to_bf16, dq, dkdv, flash }
}
// ANCHOR_END: attention_family

impl AttentionKernels {
    /// The grid of the forward and dq passes (tq query rows of `heads` heads) and of the dk/dv pass (tk keys of
    /// `kv_heads` KV heads).
    fn grids(&self, tq: usize, tk: usize, heads: usize, kv_heads: usize) -> (LaunchConfig, LaunchConfig) {
        if self.flash {
            (flash_grid(tq, heads), flash_grid(tk, kv_heads))
        } else if self.forward == "attention_forward_tiled" {
            (attention_tile_grid(tq, heads), attention_tile_grid(tk, kv_heads))
        } else {
            (warp_grid(tq * heads), warp_grid(tk * kv_heads))
        }
    }
}

impl Cuda {
    /// The attention kernels this device runs for `shape` (see [`attention_kernels`]).
    pub fn attention_kernels(&self, shape: &AttentionShape) -> AttentionKernels {
        attention_kernels(self.precision, shape.head_dim, shape.score_clamp)
    }

    /// Count `launches` launches of the family's kernels (the tensor-core ones only).
    fn count_flash(&self, kernels: &AttentionKernels, launches: u64) {
        if kernels.flash {
            FLASH_LAUNCHES.fetch_add(launches, Ordering::Relaxed);
        }
    }

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

    /// → (out [Tq, H·d], lse [Tq, H]); out in bf16 where only products read it and the kernels are the
    /// tensor-core ones (mixed precision).
    pub(super) fn attention_forward(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        shape: &AttentionShape,
        mask: &AttentionMask,
        read_by: ReadBy,
    ) -> (CudaTensor, CudaTensor) {
        check_attention(q, k, v, shape, mask);
        let dims = attention_dims(q, k, shape, mask);
        let segments = self.segments(mask);
        let ([seg, seg_first, _], _guards) = segment_pointers(&segments, &self.stream);
        // every family's kernels take the same arguments; only the names and the grids differ
        let kernels = self.attention_kernels(shape);
        let to_bf16 = kernels.forward_to_bf16.filter(|_| read_by == ReadBy::Products);
        let mut out = if to_bf16.is_some() { self.bf16_tensor(q.rows, q.cols) } else { self.tensor(q.rows, q.cols) };
        let mut lse = self.tensor(q.rows, shape.n_heads);
        let (grid, _) = kernels.grids(q.rows, k.rows, shape.n_heads, shape.n_kv_heads);
        // the same parameters in every family, out's type aside (`families_share_parameter_lists`)
        let kernel = to_bf16.unwrap_or(kernels.forward);
        self.count_flash(&kernels, 1);
        let (q, k, v) = (q.f32(), k.f32(), v.f32());
        launch!(self, kernel, grid, out.storage_mut(), lse.f32_mut(), q, k, v, &seg, &seg_first, &dims);
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
        let delta_kernel = if out.is_bf16() { "attention_delta_bf16" } else { "attention_delta" };
        launch!(self, delta_kernel, per_query, delta.f32_mut(), dout.f32(), out.storage(), &dims);
        let mut dq = self.tensor(q.rows, q.cols);
        let (mut dk, mut dv) = (self.tensor(k.rows, k.cols), self.tensor(v.rows, v.cols));
        let (lse, delta) = (lse.f32(), delta.f32());
        // every family's kernels of each pass take the same arguments; only the names and the grids differ
        let kernels = self.attention_kernels(shape);
        let (dq_grid, dkdv_grid) = kernels.grids(q.rows, k.rows, shape.n_heads, shape.n_kv_heads);
        let (dq_kernel, dkdv_kernel) = (kernels.dq, kernels.dkdv);
        self.count_flash(&kernels, 2); // dq, dk/dv
        let (q_, k_, v_, dout_) = (q.f32(), k.f32(), v.f32(), dout.f32());
        launch!(self, dq_kernel, dq_grid, dq.f32_mut(), dout_, q_, k_, v_, lse, delta, &seg, &seg_first, &dims);
        launch!(
            self,
            dkdv_kernel,
            dkdv_grid,
            dk.f32_mut(),
            dv.f32_mut(),
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
        shape.n_kv_heads > 0 && shape.n_heads.is_multiple_of(shape.n_kv_heads),
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

    /// The parameter list of kernel `name` in `source`, whitespace removed.
    fn parameters(source: &str, name: &str) -> String {
        let at = source.find(&format!("void {name}(")).unwrap_or_else(|| panic!("no kernel {name}"));
        let open = at + format!("void {name}(").len();
        let close = open + source[open..].find(')').unwrap();
        source[open..close].split_whitespace().collect()
    }

    /// The launches pass one argument list per pass whatever the family: every family's kernels of a pass must
    /// take the same parameters, in the same order (the launch-arity test checks only literal names).
    #[test]
    fn families_share_parameter_lists() {
        use super::{Precision, attention_kernels};
        let exact = include_str!("kernels/attention.cu");
        let flash = include_str!("kernels/flash_attention.cu");
        let reference = attention_kernels(Precision::F32, 64, None);
        for precision in [Precision::F32, Precision::Bf16] {
            for d in [8, 64, 65, 128, 129, 256] {
                for clamp in [None, Some(1.0)] {
                    let k = attention_kernels(precision, d, clamp);
                    assert_eq!(k.flash, precision == Precision::Bf16 && clamp.is_none(), "{k:?}");
                    for (mine, theirs) in
                        [(k.forward, reference.forward), (k.dq, reference.dq), (k.dkdv, reference.dkdv)]
                    {
                        let source = if mine.starts_with("flash") { flash } else { exact };
                        assert_eq!(parameters(source, mine), parameters(exact, theirs), "{mine} against {theirs}");
                    }
                }
            }
        }
        // the bf16-output forwards: the same list, out's type aside
        for d in [64, 128, 256] {
            let k = attention_kernels(Precision::Bf16, d, None);
            let to_bf16 = k.forward_to_bf16.expect("a tensor-core forward writes bf16 too");
            let f32_out = parameters(flash, k.forward).replacen("float*out", "unsignedshort*out", 1);
            assert_eq!(parameters(flash, to_bf16), f32_out, "{to_bf16}");
        }
        assert_eq!(attention_kernels(Precision::Bf16, 64, Some(1.0)).forward_to_bf16, None);
        // the smallest compiled bound that holds head_dim
        assert_eq!(attention_kernels(Precision::Bf16, 80, None).forward, "flash_attention_forward_d128");
        assert_eq!(attention_kernels(Precision::Bf16, 256, None).dkdv, "flash_attention_dkdv_d256");
        assert_eq!(attention_kernels(Precision::Bf16, 64, Some(1.0)).forward, "attention_forward_tiled");
    }

    #[test]
    fn flash_constants_match_the_kernels() {
        let define = |name: &str| -> usize {
            let source = include_str!("kernels/flash_attention.cu");
            let line = source.lines().find_map(|l| l.strip_prefix(&format!("#define {name} "))).expect(name);
            line.split_whitespace().next().and_then(|v| v.parse().ok()).expect(name)
        };
        assert_eq!(define("FLASH_ROWS"), super::FLASH_ROWS);
        assert_eq!(define("FLASH_WARPS"), super::FLASH_WARPS as usize);
        assert_eq!(define("FLASH_MAX_D"), 256);
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
