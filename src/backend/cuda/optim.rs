//! The optimizer's launches (optim.cu; `train::optim` on the CPU): the squared norm that global-norm clipping
//! sums, and the fused AdamW update.

use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, THREADS, elementwise_grid, fail};
use crate::train::optim::AdamWScalars;

impl Cuda {
    /// Σ t², from per-block partial sums added on the host in f64.
    pub(super) fn squared_norm(&self, t: &CudaTensor) -> f64 {
        let n = t.len();
        let blocks = n.div_ceil(THREADS as usize).clamp(1, 1024);
        let mut partial = self.alloc(blocks);
        let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let n = n as i64;
        launch!(self, "sum_squares", cfg, &mut partial, &t.data, &n);
        self.to_host(&partial).iter().take(blocks).map(|&x| x as f64).sum()
    }
    /// One AdamW update in place (`train::optim`'s scalars).
    pub(super) fn adamw_step(
        &self,
        p: &mut CudaTensor,
        g: &CudaTensor,
        m: &mut CudaTensor,
        v: &mut CudaTensor,
        k: &AdamWScalars,
    ) {
        Self::same_shape(p, g, "adamw_update");
        Self::same_shape(p, m, "adamw_update");
        Self::same_shape(p, v, "adamw_update");
        let n = p.len() as i64;
        launch!(
            self,
            "adamw",
            elementwise_grid(p.len()),
            &mut p.data,
            &g.data,
            &mut m.data,
            &mut v.data,
            &n,
            &k.decay_factor,
            &k.one_minus_beta1,
            &k.beta2,
            &k.one_minus_beta2,
            &k.bias_correction2_sqrt,
            &k.eps,
            &k.neg_step_size
        );
    }
}
