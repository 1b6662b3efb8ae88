//! CoBa, the Convergence Balancer (MFTCoder's `weighted_loss_mode = "coba"`, reference §2.4 and Appendix C).
//!
//! CoBa sets case3's task weights from how each task's *validation* loss is moving. After every optimizer step
//! c (a multiple of the update interval U, c ≥ 1) the trainer samples a validation batch and records each task's
//! loss divided by its initial loss L0[k]. At each update step (c ≥ W, c a multiple of U) it fits, over the last
//! H samples, a least-squares line to every task's curve (slope s_k) and to the curve of the per-sample maximum
//! over tasks (slope g, appended to the history G), and mixes three scores:
//!
//! - RCS (relative convergence)  = softmax_k(K·s_k / Σ_k |s_k|): a task falling slower than the others (s_k
//!   closer to 0, or positive) gets more weight.
//! - ACS (absolute convergence)  = softmax_k(−M·a_k,last / Σ_j |a_k,j|) over each task's own recent slopes a
//!   (the M slopes computed at steps ≥ c − H·U + W): a task whose slope turned upward (diverging) gets less.
//! - DF (divergence factor)      = T·softmax_j(τ·(−T·g_j / Σ_j |g_j|))_last over all T slopes of G: near 1
//!   while the worst task still falls as fast as it did, small once it stalls or rises.
//!
//!   w = softmax_k(K·(DF·RCS_k + (1 − DF)·ACS_k)), then, if some w_k < 1/(10K): w ← 0.9·w + 0.1/K.
//!
//! All of it in f64. Weights convention (MFTCoder's): 1.0 per task before the first update, then the softmax
//! above (sums to 1). case3 divides by Σ_{k present} w_k, so only the ratios matter; either scale gives the
//! same loss.
//!
//! Defects of MFTCoder's `CoBaStatus` (reference §10 item 9) fixed here; with U = 1, W ≤ H, no task missing
//! from a sampled batch and DF ≤ 1 this module reproduces MFTCoder to rounding (`tests/coba_golden.rs`):
//! 1. **Warm-up step not visited.** MFTCoder starts the slope histories only at c == W and crashes on the
//!    next update when that step is skipped (resume past W, or W not a multiple of U). Here the histories
//!    start at the first update, whatever its step, and live in the serialisable state.
//! 2. **Zero-slope guard.** Σ|s| = 0 (e.g. the first update fits one point per task), a task whose slopes are
//!    all 0, or Σ|g| = 0 made MFTCoder's weights NaN. Here 0/0 counts as 0: that score is uniform (DF = 1).
//! 3. **DF clamped to [0, 1]** (`clamp_divergence`, default on). Unclamped, DF > 1 happens whenever the worst
//!    curve falls faster than its average so far, and makes 1 − DF negative: ACS then pushes *against* itself.
//! 4. **Aligned zero-filtering.** MFTCoder drops the zeros (task absent from the sampled batch) from y, then
//!    keeps the *first* len(y) x values — a gap in mid-window shifts every later point one step left. Here
//!    absent samples are dropped as (x, y) pairs.
//! 5. **Windows in samples.** MFTCoder's fit window is `x = start..c` with `start = c/U − H`, which mixes
//!    steps and update counts: for U > 1 it covers c − c/U + H samples and grows without bound. Here it is
//!    the last H samples (the same as MFTCoder's for U = 1). The ACS window keeps MFTCoder's extent (slopes
//!    computed at steps ≥ c − H·U + W, the same columns `A[:, start:]` selects) but always keeps the current
//!    slope, where MFTCoder's slice came out empty (H·U < W) and crashed.
//! 6. **Averaging S batches.** `mean_of_samples` averages a task over the sampled batches that contain it;
//!    MFTCoder averaged zeros in for batches without it (the same for S = 1).

use serde::{Deserialize, Serialize};

/// MFTCoder's `coba_*` fields (defaults as `MftTrainArgs`), plus the DF clamp.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CobaConfig {
    /// W: uniform weights before this step; the first update is at the first multiple of U ≥ W.
    pub warmup_steps: usize,
    /// H: validation samples in the slope-fit window.
    pub history_length: usize,
    /// τ: sharpness of the divergence factor's softmax.
    pub tau: f64,
    /// U: sample the validation set and update the weights every U optimizer steps.
    pub update_interval: usize,
    /// S: validation batches sampled per record (the trainer's business; see `mean_of_samples`).
    pub sample_valid_num: usize,
    /// Clamp DF to [0, 1] (fix 3); `false` reproduces MFTCoder's unclamped DF.
    pub clamp_divergence: bool,
}

impl Default for CobaConfig {
    fn default() -> Self {
        CobaConfig {
            warmup_steps: 100,
            history_length: 200,
            tau: 5.0,
            update_interval: 1,
            sample_valid_num: 1,
            clamp_divergence: true,
        }
    }
}

/// What one update computed (for logging, plots and tests).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CobaUpdate {
    pub step: usize,
    /// s_k: per-task slope of the normalised validation loss over the window
    pub slopes: Vec<f64>,
    /// g: slope of the per-sample maximum over tasks
    pub slope_max: f64,
    pub rcs: Vec<f64>,
    pub acs: Vec<f64>,
    /// DF as computed, before the clamp
    pub df_raw: f64,
    /// DF as used
    pub df: f64,
    pub weights: Vec<f64>,
}

/// One recorded validation sample: the step and each task's loss / L0 (None: absent from the batch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Sample {
    step: usize,
    losses: Vec<Option<f64>>,
}

/// Everything CoBa remembers; serialise it with the checkpoint for an exact resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CobaState {
    pub config: CobaConfig,
    n_tasks: usize,
    /// L0[k], the initial full-evaluation loss of each task (1.0 until set)
    initial: Vec<f64>,
    /// the last H samples, oldest first
    history: Vec<Sample>,
    /// A: per-task slope columns with the step that computed them (only those ACS can still use)
    slopes: Vec<(usize, Vec<f64>)>,
    /// G: the max-curve slope of every update since the first (DF uses all of it)
    max_slopes: Vec<f64>,
    weights: Vec<f64>,
    last: Option<CobaUpdate>,
}

impl CobaState {
    pub fn new(n_tasks: usize, config: CobaConfig) -> Self {
        assert!(n_tasks > 0, "CoBa needs at least one task");
        assert!(
            config.update_interval > 0 && config.history_length > 0,
            "coba_update_interval and coba_history_length must be ≥ 1"
        );
        CobaState {
            config,
            n_tasks,
            initial: vec![1.0; n_tasks],
            history: Vec::new(),
            slopes: Vec::new(),
            max_slopes: Vec::new(),
            weights: vec![1.0; n_tasks],
            last: None,
        }
    }

    /// L0: the per-task losses of the full evaluation before training (a task without one keeps 1.0).
    pub fn set_initial_losses(&mut self, losses: &[Option<f64>]) {
        assert_eq!(losses.len(), self.n_tasks, "CoBa: one initial loss per task");
        for (l0, l) in self.initial.iter_mut().zip(losses) {
            *l0 = l.filter(|v| v.is_finite() && *v > 0.0).unwrap_or(1.0);
        }
    }

    /// Whether the trainer should sample the validation set after optimizer step `step` (c % U == 0, c ≥ 1).
    pub fn wants_validation(&self, step: usize) -> bool {
        step >= 1 && step.is_multiple_of(self.config.update_interval)
    }

    /// Whether `weights(step)` computes new weights (c % U == 0, c ≥ W).
    pub fn is_update_step(&self, step: usize) -> bool {
        step >= self.config.warmup_steps && step.is_multiple_of(self.config.update_interval)
    }

    /// Record the per-task validation losses sampled after optimizer step `step` (None: task absent from the
    /// sampled batches; a loss of 0 counts as absent, as in MFTCoder). Ignored unless `wants_validation(step)`.
    pub fn record_validation(&mut self, step: usize, task_losses: &[Option<f64>]) {
        assert_eq!(task_losses.len(), self.n_tasks, "CoBa: one validation loss per task");
        if !self.wants_validation(step) {
            return;
        }
        let losses = task_losses
            .iter()
            .zip(&self.initial)
            .map(|(l, l0)| l.filter(|v| *v != 0.0 && v.is_finite()).map(|v| v / l0))
            .collect();
        self.history.push(Sample { step, losses });
        let excess = self.history.len().saturating_sub(self.config.history_length);
        self.history.drain(..excess);
    }

    /// The task weights for the loss of optimizer step `step`, updated first if `step` is an update step (once
    /// per step: calling again returns the same weights). 1.0 each before the first update.
    pub fn weights(&mut self, step: usize) -> Vec<f64> {
        if self.is_update_step(step) && self.last.as_ref().is_none_or(|u| u.step != step) {
            let update = self.update(step);
            self.weights = update.weights.clone();
            self.last = Some(update);
        }
        self.weights.clone()
    }

    /// The latest update, if any.
    pub fn last_update(&self) -> Option<&CobaUpdate> {
        self.last.as_ref()
    }

    pub fn n_tasks(&self) -> usize {
        self.n_tasks
    }

    // ANCHOR: coba_update
    fn update(&mut self, step: usize) -> CobaUpdate {
        let (k_tasks, cfg) = (self.n_tasks as f64, &self.config);
        // slopes over the last H samples (fixes 4, 5)
        let x: Vec<f64> = self.history.iter().map(|s| s.step as f64).collect();
        let slopes: Vec<f64> =
            (0..self.n_tasks).map(|k| ols_slope(&x, self.history.iter().map(|s| s.losses[k]))).collect();
        let worst = self.history.iter().map(|s| s.losses.iter().flatten().copied().reduce(f64::max));
        let slope_max = ols_slope(&x, worst);

        // histories start at the first update, whatever its step (fix 1); ACS keeps slopes from steps
        // ≥ c − H·U + W, and always the current one (fix 5)
        let oldest = (step + cfg.warmup_steps).saturating_sub(cfg.history_length * cfg.update_interval);
        self.slopes.retain(|(s, _)| *s >= oldest);
        self.slopes.push((step, slopes.clone()));
        self.max_slopes.push(slope_max);

        // RCS = softmax(K·s / Σ|s|)
        let rcs = softmax(&normalised(&slopes, k_tasks), 1.0);
        // ACS = softmax(−M·a_last / Σ_j |a_j|), per task over its own recent slopes
        let m = self.slopes.len() as f64;
        let acs_logits: Vec<f64> = (0..self.n_tasks)
            .map(|k| {
                let row: Vec<f64> = self.slopes.iter().map(|(_, a)| a[k]).collect();
                -normalised(&row, m)[row.len() - 1]
            })
            .collect();
        let acs = softmax(&acs_logits, 1.0);
        // DF = T·softmax(τ·(−T·g / Σ|g|))_last, clamped to [0, 1] (fix 3)
        let t = self.max_slopes.len() as f64;
        let g: Vec<f64> = normalised(&self.max_slopes, t).iter().map(|v| -v).collect();
        let df_raw = t * softmax(&g, cfg.tau)[g.len() - 1];
        let df = if cfg.clamp_divergence { df_raw.clamp(0.0, 1.0) } else { df_raw };

        // w = softmax(K·(DF·RCS + (1 − DF)·ACS)), floored at 1/(10K)
        let mix: Vec<f64> = rcs.iter().zip(&acs).map(|(r, a)| df * r + (1.0 - df) * a).collect();
        let mut weights = softmax(&mix, k_tasks);
        let min_w = 1.0 / (10.0 * k_tasks);
        if weights.iter().any(|&w| w < min_w) {
            weights.iter_mut().for_each(|w| *w = *w * (1.0 - k_tasks * min_w) + min_w);
        }
        CobaUpdate { step, slopes, slope_max, rcs, acs, df_raw, df, weights }
    }
    // ANCHOR_END: coba_update
}

// ANCHOR: coba_helpers
/// Ordinary least squares slope of y ≈ a·x + b over the pairs whose y is present (fix 4: x stays with its y);
/// 0 with fewer than two points. Centred form: a = Σ(x − x̄)(y − ȳ) / Σ(x − x̄)².
pub fn ols_slope(x: &[f64], y: impl Iterator<Item = Option<f64>>) -> f64 {
    let pts: Vec<(f64, f64)> = x.iter().zip(y).filter_map(|(&x, y)| y.map(|y| (x, y))).collect();
    if pts.len() < 2 {
        return 0.0;
    }
    let n = pts.len() as f64;
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = pts.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    if sxx > 0.0 { sxy / sxx } else { 0.0 }
}

/// scale·v / Σ|v|, with 0/0 = 0 (fix 2: all-zero slopes give a uniform softmax instead of NaN).
fn normalised(v: &[f64], scale: f64) -> Vec<f64> {
    let total: f64 = v.iter().map(|x| x.abs()).sum();
    v.iter().map(|x| if total > 0.0 { scale * x / total } else { 0.0 }).collect()
}

/// softmax(scale·v), shifted by the max for stability.
fn softmax(v: &[f64], scale: f64) -> Vec<f64> {
    let max = v.iter().map(|x| scale * x).fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = v.iter().map(|x| (scale * x - max).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}
// ANCHOR_END: coba_helpers

/// Mean over S sampled batches of each task's loss, over the batches that contain the task (fix 6).
pub fn mean_of_samples(batches: &[Vec<Option<f64>>]) -> Vec<Option<f64>> {
    let n_tasks = batches.first().map_or(0, |b| b.len());
    (0..n_tasks)
        .map(|k| {
            let v: Vec<f64> = batches.iter().filter_map(|b| b[k]).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(w: usize, h: usize, u: usize) -> CobaConfig {
        CobaConfig {
            warmup_steps: w,
            history_length: h,
            tau: 5.0,
            update_interval: u,
            sample_valid_num: 1,
            clamp_divergence: true,
        }
    }

    /// Run `steps` steps on losses(c, k) and return the weights of every step.
    fn run(
        state: &mut CobaState,
        steps: std::ops::Range<usize>,
        losses: impl Fn(usize, usize) -> f64,
    ) -> Vec<Vec<f64>> {
        let k = state.n_tasks();
        if steps.start == 0 {
            state.set_initial_losses(&(0..k).map(|t| Some(losses(0, t))).collect::<Vec<_>>());
        }
        steps
            .map(|c| {
                let w = state.weights(c);
                state.record_validation(c, &(0..k).map(|t| Some(losses(c, t))).collect::<Vec<_>>());
                w
            })
            .collect()
    }

    #[test]
    fn weight_moves_toward_the_task_that_converges_more_slowly() {
        // three tasks falling steadily from 2.0; task 1 at a quarter of the others' rate (tiny fixed wiggle)
        let rate = [0.02, 0.005, 0.02];
        let losses = |c: usize, k: usize| 2.0 - rate[k] * c as f64 + 0.001 * ((c * 7 + k * 3) % 5) as f64;
        let mut state = CobaState::new(3, config(5, 10, 1));
        let w = run(&mut state, 0..40, losses);
        assert_eq!(w[4], vec![1.0; 3], "uniform before the warm-up");
        for (c, w) in w.iter().enumerate().skip(5) {
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "step {c}: weights sum to 1");
            assert!(w[1] > w[0] && w[1] > w[2], "step {c}: the slow task gets the most weight: {w:?}");
        }
        assert!(w[39][1] > 0.5 && w[39][0] < 0.25, "and clearly so: {:?}", w[39]);
    }

    #[test]
    fn no_crash_when_the_warm_up_step_is_skipped_and_resume_is_exact() {
        let losses = |c: usize, k: usize| 2.0 - 0.02 * (k + 1) as f64 * c as f64 + 0.01 * ((c + k) % 3) as f64;
        // W = 5 is never a multiple of U = 2: the first update is at step 6
        let mut state = CobaState::new(3, config(5, 10, 2));
        let w = run(&mut state, 0..30, losses);
        assert_eq!(w[5], vec![1.0; 3]);
        assert_eq!(state.last_update().unwrap().step, 28);
        assert!(w[6..].iter().flatten().all(|v| v.is_finite() && *v > 0.0) && w[6] != vec![1.0; 3]);
        // checkpoint at step 12, restore, continue: the same trajectory
        let mut first = CobaState::new(3, config(5, 10, 2));
        run(&mut first, 0..13, losses);
        let json = serde_json::to_string(&first).unwrap();
        let mut resumed: CobaState = serde_json::from_str(&json).unwrap();
        // serde_json parses floats to within an ulp (exact only with its `float_roundtrip` feature); a clone is exact
        let close = |a: &[Vec<f64>], b: &[Vec<f64>]| {
            a.iter().flatten().zip(b.iter().flatten()).all(|(x, y)| (x - y).abs() < 1e-12)
        };
        assert!(close(&run(&mut resumed, 13..30, losses), &w[13..]));
        let mut cloned = first.clone();
        assert_eq!(run(&mut cloned, 13..30, losses), w[13..].to_vec());
        // a fresh state started past W (resume without CoBa's state) does not crash either
        let mut fresh = CobaState::new(3, config(5, 10, 2));
        assert!(run(&mut fresh, 20..30, losses).iter().flatten().all(|v| v.is_finite()));
    }

    #[test]
    fn weights_are_computed_once_per_step() {
        let mut state = CobaState::new(2, config(2, 4, 1));
        state.record_validation(1, &[Some(1.0), Some(2.0)]);
        state.record_validation(2, &[Some(0.9), Some(1.0)]);
        let a = state.weights(3);
        assert_eq!(state.weights(3), a);
        assert_eq!(state.max_slopes.len(), 1, "a second call does not append another slope");
    }

    #[test]
    fn guards_and_helpers() {
        // all-zero slopes: uniform RCS and ACS, DF = 1, no NaN
        let mut state = CobaState::new(3, config(1, 5, 1));
        let w = state.weights(1);
        assert!(w.iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-15), "{w:?}");
        assert_eq!(state.last_update().unwrap().df, 1.0);
        // x stays aligned with y across a gap: a perfect line through steps 1, 2, 5 has slope 2
        let slope = ols_slope(&[1.0, 2.0, 3.0, 4.0, 5.0], [Some(2.0), Some(4.0), None, None, Some(10.0)].into_iter());
        assert!((slope - 2.0).abs() < 1e-12);
        assert_eq!(mean_of_samples(&[vec![Some(1.0), None], vec![Some(3.0), None]]), vec![Some(2.0), None]);
    }
}
