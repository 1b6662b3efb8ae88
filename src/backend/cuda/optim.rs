//! The optimizer's launches (optim.cu; `train::optim` and `train::step_update` on the CPU): the squared norm,
//! the per-tensor AdamW update, and a whole step's end — finiteness, global-norm clipping and a multi-tensor
//! AdamW — in four launches and one read of the device.

use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, THREADS, elementwise_grid, fail, int};
use crate::train::optim::AdamWScalars;
use crate::train::step_update::{Outcome, StepReport, StepUpdate};
use cudarc::driver::DevicePtr;

/// The report's fixed entries before the per-gradient norms (`REPORT_HEADER` in optim.cu): norm, clip factor,
/// the go-ahead, one spare.
const REPORT_HEADER: usize = 4;
/// At most this many blocks share one tensor, in the norm's partial sums and in the update.
const NORM_BLOCKS: usize = 64;
const UPDATE_BLOCKS: usize = 256;
/// Words per parameter in `adamw_multi`'s table (`ADAMW_ROW` in optim.cu).
const ADAMW_ROW: usize = 7;

impl Cuda {
    /// Σ t², from per-block partial sums added on the host in f64.
    pub(super) fn squared_norm(&self, t: &CudaTensor) -> f64 {
        let n = t.len();
        let blocks = n.div_ceil(THREADS as usize).clamp(1, 1024);
        let mut partial = self.alloc(blocks);
        let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let n = n as i64;
        launch!(self, "sum_squares", cfg, &mut partial, t.f32(), &n);
        self.to_host(&partial, blocks).iter().map(|&x| x as f64).sum()
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
        let grid = elementwise_grid(p.len());
        let (master, copy) = p.master_and_copy_mut();
        launch!(
            self,
            "adamw",
            grid,
            &mut *master,
            g.f32(),
            m.f32_mut(),
            v.f32_mut(),
            &n,
            &k.decay_factor,
            &k.one_minus_beta1,
            &k.beta2,
            &k.one_minus_beta2,
            &k.bias_correction2_sqrt,
            &k.eps,
            &k.neg_step_size
        );
        if let Some(copy) = copy {
            launch!(self, "f32_to_bf16", grid, copy, &*master, &n); // the products' copy follows the master
        }
    }

    fn pointer(&self, t: &CudaTensor) -> u64 {
        t.f32().device_ptr(&self.stream).0
    }

    // ANCHOR: clipped_adamw
    /// `train::step_update::reference_update` on the device: the token losses copied into the report, the
    /// gradients' partial sums, their norm, clip factor and go-ahead (`grad_norm_finish`), AdamW over every
    /// parameter with a gradient (`adamw_multi`, which does nothing without the go-ahead), then the one read.
    pub(super) fn clipped_adamw(&self, u: StepUpdate<'_, '_, '_, CudaTensor>) -> StepReport {
        u.check();
        let grads = u.grads.len();
        // (parameter, gradient) for every parameter that has one, in parameter order
        let updated: Vec<(usize, usize)> =
            u.grad_of.iter().enumerate().filter_map(|(i, g)| g.map(|g| (i, g))).collect();
        let loss_lengths: Vec<usize> = u.losses.iter().map(|l| l.len()).collect();
        let (flags_at, losses_at) = (REPORT_HEADER + grads, REPORT_HEADER + grads + updated.len());
        let report_len = losses_at + loss_lengths.iter().sum::<usize>();
        let mut report = self.alloc(report_len);
        let mut at = losses_at;
        for (l, &n) in u.losses.iter().zip(&loss_lengths) {
            if n > 0 {
                let mut into = report.slice_mut(at..at + n);
                self.stream.memcpy_dtod(&l.f32().slice(0..n), &mut into).unwrap_or_else(|e| fail("copy", e));
            }
            at += n;
        }

        let longest = u.grads.iter().map(|g| g.len()).max().unwrap_or(0);
        let blocks = longest.div_ceil(THREADS as usize).clamp(1, NORM_BLOCKS);
        let mut table: Vec<u64> = u.grads.iter().map(|g| self.pointer(g)).collect();
        table.extend(u.grads.iter().map(|g| g.len() as u64));
        let table = self.words.upload(&table);
        let mut partial = self.alloc(blocks * grads.max(1));
        let tensors = int(grads, "gradients");
        if grads > 0 {
            let rows = u16::try_from(grads).unwrap_or_else(|_| fail("grad_norm_partials", "over 65535 gradients"));
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, u32::from(rows), 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            launch!(self, "grad_norm_partials", cfg, &mut partial, &table, &tensors);
        }
        let one_block = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let (block_count, params, loss_count) =
            (int(blocks, "blocks"), int(updated.len(), "parameters"), (report_len - losses_at) as i64);
        launch!(
            self,
            "grad_norm_finish",
            one_block,
            &mut report,
            &partial,
            &tensors,
            &block_count,
            &params,
            &loss_count,
            &u.max_norm
        );

        if !updated.is_empty() {
            let mut rows: Vec<u64> = Vec::with_capacity(ADAMW_ROW * updated.len());
            for &(i, g) in &updated {
                let (p, grad, m, v) = (&*u.params[i], &*u.grads[g], &u.m[i], &u.v[i]);
                Self::same_shape(p, grad, "clipped_adamw_update");
                Self::same_shape(p, m, "clipped_adamw_update");
                Self::same_shape(p, v, "clipped_adamw_update");
                let decay = u.scalars[i].decay_factor.to_bits() as u64;
                rows.extend([self.pointer(p), self.pointer(grad), self.pointer(m), self.pointer(v)]);
                let copy = p.bf16_copy_of_master().map_or(0, |bits| bits.device_ptr(&self.stream).0);
                rows.extend([p.len() as u64, decay, copy]);
            }
            let rows_on_device = self.words.upload(&rows);
            let longest = updated.iter().map(|&(i, _)| u.params[i].len()).max().unwrap_or(0);
            let count = u16::try_from(updated.len()).unwrap_or_else(|_| fail("adamw_multi", "over 65535 tensors"));
            let cfg = LaunchConfig {
                grid_dim: (longest.div_ceil(THREADS as usize).clamp(1, UPDATE_BLOCKS) as u32, u32::from(count), 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let k = u.scalars[updated[0].0]; // the scalars all parameters share (the decay factor is per row)
            let flags = int(flags_at, "report");
            launch!(
                self,
                "adamw_multi",
                cfg,
                &rows_on_device,
                &mut report,
                &flags,
                &k.one_minus_beta1,
                &k.beta2,
                &k.one_minus_beta2,
                &k.bias_correction2_sqrt,
                &k.eps,
                &k.neg_step_size
            );
        }
        let host = self.to_host(&report, report_len); // the step's one blocking read
        read_report(&host, &updated, u.grad_of, grads, &loss_lengths)
    }
    // ANCHOR_END: clipped_adamw
}

/// The host's reading of the report (layout: optim.cu's `REPORT_*`), with the same precedence as the CPU's
/// checks: losses, then gradients in parameter order, then parameters.
fn read_report(
    host: &[f32],
    updated: &[(usize, usize)],
    grad_of: &[Option<usize>],
    grads: usize,
    loss_lengths: &[usize],
) -> StepReport {
    let norms = &host[REPORT_HEADER..REPORT_HEADER + grads];
    let flags = &host[REPORT_HEADER + grads..REPORT_HEADER + grads + updated.len()];
    let mut at = REPORT_HEADER + grads + updated.len();
    let token_losses: Vec<Vec<f32>> = loss_lengths
        .iter()
        .map(|&n| {
            at += n;
            host[at - n..at].to_vec()
        })
        .collect();
    let outcome = if token_losses.iter().flatten().any(|l| !l.is_finite()) {
        Outcome::NonFiniteLoss
    } else if let Some(i) = grad_of.iter().position(|g| g.is_some_and(|g| !norms[g].is_finite())) {
        Outcome::NonFiniteGradient(i)
    } else if host[2] == 0.0 {
        // every norm finite, their sum overflowed: the first gradient carries the blame
        Outcome::NonFiniteGradient(updated.first().map_or(0, |&(i, _)| i))
    } else if let Some(k) = flags.iter().position(|&f| f != 0.0) {
        Outcome::NonFiniteParameter(updated[k].0)
    } else {
        Outcome::Updated
    };
    let grad_norm = if outcome == Outcome::NonFiniteLoss { f32::NAN } else { host[0] };
    StepReport { grad_norm, token_losses, outcome }
}
