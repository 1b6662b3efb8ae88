//! MFTCoder's multi-task token losses (`loss_func_mft`, reference §2.1), as coefficients on token losses.
//!
//! Every mode is a weighted sum of the per-token cross-entropies ℓ[b,t] whose weights depend only on the loss
//! mask m, the task of each row and the task weights w — never on ℓ itself. So each mode is a coefficient
//! table c[b,t] with L = Σ c·ℓ, and its gradient is the cross-entropy backward with weights c:
//!
//! | mode  | c[b,t] |
//! |-------|--------|
//! | case1 | m / Σ_{b,t} m  (token mean over the micro-batch) |
//! | case2 | m / Σ_t m[b] / B′  (mean over rows of each row's token mean; B′ = rows with a supervised token) |
//! | case3 | (w_k / Σ_{k∈P} w_k) · m / Σ_{b∈R_k,t} m  (mean over present tasks of each task's token mean) |
//! | case4 | (w_k / Σ_{k∈P} w_k) · m / Σ_t m[b] / |R′_k|  (per task: mean over its rows of row token means) |
//!
//! R_k = rows of task k; P = tasks with at least one supervised token in the micro-batch. MFTCoder divides by
//! zero for a task or row with no supervised token (NaN); here such a task or row is simply left out of P, B′
//! or R′_k. CoBa uses case3's formula with its own weights.

use anyhow::{Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossMode {
    Case1,
    Case2,
    Case3,
    Case4,
}

impl std::str::FromStr for LossMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "case1" => LossMode::Case1,
            "case2" => LossMode::Case2,
            "case3" | "coba" => LossMode::Case3,
            "case4" => LossMode::Case4,
            other => bail!("weighted_loss_mode `{other}` is not one of case1, case2, case3, case4, coba"),
        })
    }
}

// ANCHOR: mft_coefficients
/// loss_mask: rows of equal length T (flattened [B·T]), task_ids: [B], task_weights: one per task (k < len).
/// Returns c [B·T] with L = Σ c·ℓ.
pub fn coefficients(
    mode: LossMode,
    loss_mask: &[f32],
    row_len: usize,
    task_ids: &[usize],
    task_weights: &[f64],
) -> Vec<f32> {
    let rows = task_ids.len();
    assert_eq!(loss_mask.len(), rows * row_len, "mft loss: mask is not [B, T]");
    let row_sum: Vec<f64> = loss_mask.chunks(row_len).map(|r| r.iter().map(|&m| m as f64).sum()).collect();
    let n_tasks = task_weights.len();
    let mut task_tokens = vec![0.0f64; n_tasks];
    let mut task_rows = vec![0usize; n_tasks]; // rows with at least one supervised token
    for (b, &k) in task_ids.iter().enumerate() {
        task_tokens[k] += row_sum[b];
        task_rows[k] += usize::from(row_sum[b] > 0.0);
    }
    let present_weight: f64 = (0..n_tasks).filter(|&k| task_tokens[k] > 0.0).map(|k| task_weights[k]).sum();
    let total_tokens: f64 = row_sum.iter().sum();
    let live_rows = row_sum.iter().filter(|&&s| s > 0.0).count() as f64;

    let mut c = vec![0.0f32; loss_mask.len()];
    for (b, &k) in task_ids.iter().enumerate() {
        if row_sum[b] <= 0.0 {
            continue;
        }
        let scale = match mode {
            LossMode::Case1 => 1.0 / total_tokens,
            LossMode::Case2 => 1.0 / row_sum[b] / live_rows,
            LossMode::Case3 => task_weights[k] / present_weight / task_tokens[k],
            LossMode::Case4 => task_weights[k] / present_weight / row_sum[b] / task_rows[k] as f64,
        };
        for t in 0..row_len {
            c[b * row_len + t] = (loss_mask[b * row_len + t] as f64 * scale) as f32;
        }
    }
    c
}
// ANCHOR_END: mft_coefficients

/// Each task's token-mean loss in this micro-batch, `None` where the task has no supervised token
/// (MFTCoder's `task_loss`, used for logging, evaluation and CoBa).
pub fn task_losses(
    token_losses: &[f32],
    loss_mask: &[f32],
    row_len: usize,
    task_ids: &[usize],
    n_tasks: usize,
) -> Vec<Option<f64>> {
    let mut sum = vec![0.0f64; n_tasks];
    let mut count = vec![0.0f64; n_tasks];
    for (b, &k) in task_ids.iter().enumerate() {
        for t in b * row_len..(b + 1) * row_len {
            sum[k] += token_losses[t] as f64 * loss_mask[t] as f64;
            count[k] += loss_mask[t] as f64;
        }
    }
    sum.iter().zip(&count).map(|(&s, &n)| (n > 0.0).then(|| s / n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_on_a_hand_made_batch() {
        // 3 rows of 4 tokens: row 0 task 0 (2 supervised), row 1 task 1 (1), row 2 task 0 (4)
        let mask = [0., 1., 1., 0., /**/ 0., 0., 0., 1., /**/ 1., 1., 1., 1.];
        let ell = [9., 1., 3., 9., /**/ 9., 9., 9., 5., /**/ 2., 2., 2., 2.];
        let tasks = [0, 1, 0];
        let loss = |mode| {
            let c = coefficients(mode, &mask, 4, &tasks, &[1.0, 1.0]);
            c.iter().zip(&ell).map(|(c, l)| (*c as f64) * l).sum::<f64>()
        };
        assert!((loss(LossMode::Case1) - (1. + 3. + 5. + 8.) / 7.).abs() < 1e-6);
        assert!((loss(LossMode::Case2) - (2. + 5. + 2.) / 3.).abs() < 1e-6);
        assert!((loss(LossMode::Case3) - ((12. / 6.) + 5.) / 2.).abs() < 1e-6);
        assert!((loss(LossMode::Case4) - (((2. + 2.) / 2.) + 5.) / 2.).abs() < 1e-6);
        let tl = task_losses(&ell.map(|x| x as f32), &mask, 4, &tasks, 3);
        assert_eq!(tl, vec![Some(2.0), Some(5.0), None]);
    }

    #[test]
    fn a_task_without_supervised_tokens_is_left_out_not_nan() {
        let mask = [1., 1., 0., 0.];
        let c = coefficients(LossMode::Case3, &mask, 2, &[0, 1], &[1.0, 3.0]);
        assert!(c.iter().all(|v| v.is_finite()));
        assert_eq!(c, vec![0.5, 0.5, 0.0, 0.0]);
    }
}
