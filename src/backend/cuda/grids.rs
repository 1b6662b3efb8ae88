//! The launch shapes the kernels are written for: grid-stride element-wise loops, one block per row, one
//! warp per row.

use cudarc::driver::LaunchConfig;

/// Threads per block for element-wise kernels (grid-stride loops, so any grid size is correct).
pub(super) const THREADS: u32 = 256;
/// Threads per block for one-block-per-row kernels (RMSNorm, cross-entropy).
const ROW_THREADS: u32 = 256;
/// Warps per block for one-warp-per-row kernels (the per-key attention kernels and `attention_delta`).
const WARPS_PER_BLOCK: u32 = 4;
pub(super) fn elementwise_grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 65_536) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

pub(super) fn row_grid(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: 0 }
}

pub(super) fn warp_grid(warps: usize) -> LaunchConfig {
    let blocks = warps.div_ceil(WARPS_PER_BLOCK as usize).max(1) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (32 * WARPS_PER_BLOCK, 1, 1), shared_mem_bytes: 0 }
}
