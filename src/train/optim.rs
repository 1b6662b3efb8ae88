//! AdamW (Loshchilov & Hutter, 2019) exactly as `torch.optim.AdamW` computes it, and global-norm clipping as
//! `torch.nn.utils.clip_grad_norm_`.
//!
//! One step, for each parameter p with gradient g, at step t = 1, 2, …:
//!
//!   p ← p·(1 − lr·λ)                                  decoupled weight decay (skipped when p is not decayed)
//!   m ← m + (1 − β₁)·(g − m)                          first moment (torch: `lerp_`)
//!   v ← β₂·v + (1 − β₂)·g²                            second moment
//!   p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
//!
//! The arithmetic follows torch's single-tensor CPU path operation by operation (same order, same f32/f64
//! boundaries, the fused multiply-adds of its vectorised `lerp` and `addcmul`), so on the golden fixture the
//! parameters agree bit for bit after 10 steps. (Large tensors may still differ in the last bit: torch's MKL
//! `sqrt` is off by one ulp for ~1 % of entries, ours is correctly rounded.)
//!
//! Weight decay in MFTCoder (reference §3): `torch.optim.AdamW(model.parameters(), weight_decay=…)` — one
//! parameter group, so **every** trainable parameter is decayed, biases and norm weights included (unlike HF's
//! `Trainer`, which exempts them). `step` takes a per-parameter `decay` flag so both conventions are possible;
//! pass all `true` to train as MFTCoder does.

use crate::backend::Backend;
use crate::train::step_update::{Outcome, StepReport, StepUpdate};
use ndarray::{Array2, Zip};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// AdamW's hyper-parameters other than the learning rate (which the schedule supplies per step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// MFTCoder's defaults (reference §3, §7.1): betas (0.9, 0.999), eps 1e-8 (torch's default),
    /// weight_decay 0.01 (the shipped example configs use 0.1).
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// The optimizer state: one (m, v) pair per parameter and the shared step count. `T` is where the moments
/// live: host matrices here, or a backend's tensors (the GPU keeps them on the device) via `new_on`/`step_on`.
#[derive(Clone, Debug)]
pub struct AdamW<T = Array2<f32>> {
    pub config: AdamWConfig,
    /// Number of steps taken so far (torch's `state["step"]`).
    pub step: u64,
    /// First moments, one per parameter, shaped like it.
    pub m: Vec<T>,
    /// Second moments, one per parameter, shaped like it.
    pub v: Vec<T>,
}

/// A hyper-parameter given as f32, read as the decimal it prints as (0.9f32 → 0.9f64, not 0.899999976…).
/// Python hands torch these values as f64 literals, so this is how we reproduce its f64 scalar arithmetic.
fn as_decimal(x: f32) -> f64 {
    x.to_string().parse().expect("a printed f32 parses as f64")
}

/// The per-step scalars of the update, rounded to f32 the way torch hands them to its kernels (and the
/// arguments of the GPU's `adamw` kernel).
#[derive(Clone, Copy, Debug)]
pub struct AdamWScalars {
    pub decay_factor: f32, // 1 − lr·λ (exactly 1 when the parameter is not decayed: p·1 = p)
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
    pub neg_step_size: f32, // −lr / (1 − β₁ᵗ)
}

// ANCHOR: adamw_update
/// The update of one entry, in torch's order of operations.
#[inline(always)]
fn adamw_update(p: &mut f32, g: f32, m: &mut f32, v: &mut f32, k: &AdamWScalars) {
    *p *= k.decay_factor; // param.mul_(1 − lr·λ)
    *m = k.one_minus_beta1.mul_add(g - *m, *m); // exp_avg.lerp_(g, 1 − β₁): its vector kernel is a fused m + w·(g − m)
    *v = (k.one_minus_beta2 * g).mul_add(g, *v * k.beta2); // exp_avg_sq.mul_(β₂).addcmul_(g, g, 1 − β₂), fused likewise
    let denom = v.sqrt() / k.bias_correction2_sqrt + k.eps; // (√v / √(1 − β₂ᵗ)).add_(ε)
    *p += k.neg_step_size * *m / denom; // param.addcdiv_(m, denom, −lr / (1 − β₁ᵗ))
}
// ANCHOR_END: adamw_update

#[inline(always)]
fn adamw_update_slices(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamWScalars) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        adamw_update(p, g, m, v, k);
    }
}

/// The same loop compiled with FMA and AVX2, so `mul_add` is one instruction and the loop vectorises; without
/// them `mul_add` is a libm call (correct, but ~5× slower). The arithmetic, and so the result, is identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn adamw_update_slices_fma(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamWScalars) {
    adamw_update_slices(p, g, m, v, k);
}

fn adamw_update_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamWScalars) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function was compiled for (checked just above).
        unsafe { adamw_update_slices_fma(p, g, m, v, k) };
        return;
    }
    adamw_update_slices(p, g, m, v, k);
}

/// Entries per parallel task: fixed, though each entry's update is independent of the split anyway.
const CHUNK: usize = 1 << 14;

impl<T> AdamW<T> {
    /// Count the step and return its scalars, in f64 as torch computes them in Python, then rounded to f32
    /// where a kernel takes them.
    fn next_scalars(&mut self, lr: f32) -> AdamWScalars {
        self.step += 1;
        let (lr, beta1, beta2) = (as_decimal(lr), as_decimal(self.config.beta1), as_decimal(self.config.beta2));
        let (eps, weight_decay) = (as_decimal(self.config.eps) as f32, as_decimal(self.config.weight_decay));
        let t = self.step as f64;
        AdamWScalars {
            decay_factor: (1.0 - lr * weight_decay) as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: (1.0 - beta2.powf(t)).powf(0.5) as f32,
            eps,
            neg_step_size: (-(lr / (1.0 - beta1.powf(t)))) as f32,
        }
    }

    fn check_lists(&self, params: usize, grads: usize, decay: usize) {
        assert_eq!(params, self.m.len(), "AdamW::step: {params} parameters, state for {}", self.m.len());
        assert_eq!(grads, params, "AdamW::step: one gradient per parameter");
        assert_eq!(decay, params, "AdamW::step: one decay flag per parameter");
    }

    /// Zero moments on a backend, for parameters of the given (rows, cols) shapes.
    pub fn new_on<B: Backend<Tensor = T>>(b: &B, config: AdamWConfig, shapes: &[(usize, usize)]) -> Self {
        let zeros = || shapes.iter().map(|&(r, c)| b.zeros(r, c)).collect::<Vec<_>>();
        AdamW { config, step: 0, m: zeros(), v: zeros() }
    }

    // ANCHOR: adamw_step_on
    /// [`AdamW::step`] on a backend: the same scalars, each tensor updated by `Backend::adamw_update` (on the
    /// CPU exactly the host update below, so both entry points agree bit for bit). A parameter without a
    /// gradient (`None`: an expert no token was routed to) is left alone with its moments, as torch skips a
    /// parameter whose `.grad` is None.
    pub fn step_on<B: Backend<Tensor = T>>(
        &mut self,
        b: &B,
        params: &mut [&mut T],
        grads: &[Option<&T>],
        lr: f32,
        decay: &[bool],
    ) {
        self.check_lists(params.len(), grads.len(), decay.len());
        let scalars = self.next_scalars(lr);
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            let k = AdamWScalars { decay_factor: if decay[i] { scalars.decay_factor } else { 1.0 }, ..scalars };
            b.adamw_update(p, g, &mut self.m[i], &mut self.v[i], &k);
        }
    }
    // ANCHOR_END: adamw_step_on

    // ANCHOR: clipped_step_on
    /// A whole step's end on a backend (`train::step_update`): the finiteness checks, clipping to `max_norm`
    /// and this step's AdamW update, with one report back. `grads` are in the order the global norm sums them,
    /// `grad_of[i]` is parameter i's gradient among them, `losses` the step's token losses on the backend. A
    /// step refused for a non-finite loss or gradient does not count.
    #[allow(clippy::too_many_arguments)]
    pub fn clipped_step_on<B: Backend<Tensor = T>>(
        &mut self,
        b: &B,
        params: &mut [&mut T],
        grads: &mut [&mut T],
        grad_of: &[Option<usize>],
        lr: f32,
        decay: &[bool],
        max_norm: f32,
        losses: &[&T],
    ) -> StepReport {
        self.check_lists(params.len(), grad_of.len(), decay.len());
        let scalars = self.next_scalars(lr);
        let per_parameter: Vec<AdamWScalars> = decay
            .iter()
            .map(|&d| AdamWScalars { decay_factor: if d { scalars.decay_factor } else { 1.0 }, ..scalars })
            .collect();
        let update = StepUpdate {
            params,
            m: &mut self.m,
            v: &mut self.v,
            grads,
            grad_of,
            scalars: &per_parameter,
            max_norm,
            losses,
        };
        let report = b.clipped_adamw_update(update);
        if matches!(report.outcome, Outcome::NonFiniteLoss | Outcome::NonFiniteGradient(_)) {
            self.step -= 1;
        }
        report
    }
    // ANCHOR_END: clipped_step_on

    /// [`AdamW::clipped_step_on`] for named parameters and a step's gradient map, the trainers' form: the global
    /// norm adds the gradients up in the map's (sorted) order, and a parameter absent from the map (an expert
    /// no token reached) is left alone with its moments.
    #[allow(clippy::too_many_arguments)]
    pub fn clipped_step_on_named<B: Backend<Tensor = T>>(
        &mut self,
        b: &B,
        params: &mut [(String, &mut T)],
        grads: &mut BTreeMap<String, T>,
        lr: f32,
        decay: &[bool],
        max_norm: f32,
        losses: &[&T],
    ) -> StepReport {
        let grad_names: Vec<&String> = grads.keys().collect();
        let grad_of: Vec<Option<usize>> = params.iter().map(|(n, _)| grad_names.binary_search(&n).ok()).collect();
        let mut grad_refs: Vec<&mut T> = grads.values_mut().collect();
        let mut param_refs: Vec<&mut T> = params.iter_mut().map(|(_, p)| &mut **p).collect();
        self.clipped_step_on(b, &mut param_refs, &mut grad_refs, &grad_of, lr, decay, max_norm, losses)
    }
}

impl AdamW {
    /// Zero moments for parameters of the given (rows, cols) shapes.
    pub fn new(config: AdamWConfig, shapes: &[(usize, usize)]) -> Self {
        let zeros = || shapes.iter().map(|&s| Array2::zeros(s)).collect::<Vec<_>>();
        AdamW { config, step: 0, m: zeros(), v: zeros() }
    }

    // ANCHOR: adamw_step
    /// One update of every parameter with its gradient at learning rate `lr`; `decay[i]` says whether
    /// parameter i gets weight decay. params, grads, decay are parallel lists in the order of `new`'s shapes.
    pub fn step(&mut self, params: &mut [&mut Array2<f32>], grads: &[&Array2<f32>], lr: f32, decay: &[bool]) {
        self.check_lists(params.len(), grads.len(), decay.len());
        let scalars = self.next_scalars(lr);
        for (i, (p, &g)) in params.iter_mut().zip(grads).enumerate() {
            let k = AdamWScalars { decay_factor: if decay[i] { scalars.decay_factor } else { 1.0 }, ..scalars };
            adamw_update_matrix(p, g, &mut self.m[i], &mut self.v[i], &k);
        }
    }
    // ANCHOR_END: adamw_step
}

/// One AdamW update of a host matrix and its moments, in parallel over fixed chunks.
pub fn adamw_update_matrix(
    p: &mut Array2<f32>,
    g: &Array2<f32>,
    m: &mut Array2<f32>,
    v: &mut Array2<f32>,
    k: &AdamWScalars,
) {
    assert_eq!(p.dim(), m.dim(), "AdamW::step: a parameter changed shape");
    assert_eq!(g.dim(), p.dim(), "AdamW::step: a gradient is not shaped like its parameter");
    // keep the moments in the parameter's memory layout (a column-major weight, say), so the four arrays can
    // be walked as flat slices in the same order
    for moment in [&mut *m, &mut *v] {
        if moment.strides() != p.strides() {
            let mut same_layout = p.clone();
            same_layout.assign(moment);
            *moment = same_layout;
        }
    }
    let same_order = g.strides() == p.strides();
    let flat_g = if same_order { g.as_slice_memory_order() } else { None };
    match (p.as_slice_memory_order_mut(), flat_g, m.as_slice_memory_order_mut(), v.as_slice_memory_order_mut()) {
        (Some(p), Some(g), Some(m), Some(v)) => p
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| adamw_update_chunk(p, g, m, v, k)),
        // a non-contiguous view: the same update, entry by entry
        _ => Zip::from(p).and(g).and(m).and(v).par_for_each(|p, &g, m, v| adamw_update(p, g, m, v, k)),
    }
}

/// Σ x² in f64 over a slice: eight running sums (so the loop vectorises and stays deterministic), added at the end.
fn sum_squares(x: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for j in 0..8 {
            lanes[j] += c[j] as f64 * c[j] as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| v as f64 * v as f64).sum();
    lanes.iter().sum::<f64>() + tail
}

/// Σ g² of one matrix: f64 sums over fixed chunks in parallel, added in order (independent of thread count).
pub fn matrix_sum_squares(g: &Array2<f32>) -> f64 {
    match g.as_slice_memory_order() {
        Some(s) => s.par_chunks(CHUNK).map(sum_squares).collect::<Vec<f64>>().into_iter().sum::<f64>(),
        None => g.iter().map(|&x| x as f64 * x as f64).sum(),
    }
}

/// ‖g‖₂ of one tensor, rounded to f32 as torch's per-tensor norm is.
fn tensor_norm(g: &Array2<f32>) -> f32 {
    matrix_sum_squares(g).sqrt() as f32
}

// ANCHOR: clip_grad_norm
/// Scales all gradients together so their global L2 norm is at most `max_norm`, as torch's
/// `clip_grad_norm_`: norm = √(Σ g²) over every entry of every tensor, coef = max_norm / (norm + 1e-6),
/// applied only when coef < 1. Returns the norm before clipping (NaN or ∞ when a gradient is not finite; the
/// gradients are then left as they are, for the caller to report).
///
/// Like torch we take the norm of each tensor, then the norm of those norms, with the same f32 roundings in
/// between (each sum of squares itself is accumulated in f64), so the coefficient matches torch's to the bit.
pub fn clip_grad_norm(grads: &mut [&mut Array2<f32>], max_norm: f32) -> f32 {
    let norm = grads.iter().map(|g| tensor_norm(g) as f64).map(|n| n * n).sum::<f64>().sqrt() as f32;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            match g.as_slice_mut() {
                Some(s) => s.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x *= coef)),
                None => g.mapv_inplace(|x| x * coef),
            }
        }
    }
    norm
}
// ANCHOR_END: clip_grad_norm

/// [`clip_grad_norm`] on a backend's tensors: the same per-tensor f32 norms (each from `Backend::sum_squares`),
/// the same coefficient, the same f32 scaling.
pub fn clip_grad_norm_on<B: Backend>(b: &B, grads: &mut [&mut B::Tensor], max_norm: f32) -> f32 {
    let norm = grads.iter().map(|g| (b.sum_squares(g).sqrt() as f32) as f64).map(|n| n * n).sum::<f64>().sqrt() as f32;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            **g = b.scale(g, coef);
        }
    }
    norm
}

// ANCHOR: first_non_finite
/// The first parameter, in the order given, that is not finite after an update: one reduction per parameter
/// (its squared norm, which a single NaN or ∞ makes non-finite), so a step that blew the weights up stops the
/// run before it can be checkpointed. `K` names a parameter (its path, or its index).
pub fn first_non_finite<'a, B: Backend, K>(b: &B, params: impl IntoIterator<Item = (K, &'a B::Tensor)>) -> Option<K>
where
    B::Tensor: 'a,
{
    params.into_iter().find(|(_, p)| !b.sum_squares(p).is_finite()).map(|(name, _)| name)
}
// ANCHOR_END: first_non_finite

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn first_step_moves_each_entry_by_about_lr_against_the_gradient_sign() {
        // At t = 1, m̂ = g and v̂ = g², so the Adam step is lr·g/(|g| + ε) ≈ lr·sign(g).
        let config = AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() };
        let mut opt = AdamW::new(config, &[(1, 3)]);
        let mut p = array![[1.0f32, -2.0, 0.5]];
        let g = array![[0.3f32, -4.0, 1e-3]];
        opt.step(&mut [&mut p], &[&g], 0.01, &[true]);
        let want = array![[0.99f32, -1.99, 0.49]];
        for (a, b) in p.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{p} vs {want}");
        }
        assert_eq!(opt.step, 1);
    }

    #[test]
    fn decay_flag_controls_the_decoupled_decay() {
        // A zero gradient leaves only the decay: p·(1 − lr·λ) when decayed, p untouched otherwise.
        let config = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
        let mut opt = AdamW::new(config, &[(1, 2), (1, 2)]);
        let (mut a, mut b) = (array![[1.0f32, -2.0]], array![[1.0f32, -2.0]]);
        let zero = Array2::zeros((1, 2));
        opt.step(&mut [&mut a, &mut b], &[&zero, &zero], 0.5, &[true, false]);
        assert_eq!(a, array![[0.95f32, -1.9]]);
        assert_eq!(b, array![[1.0f32, -2.0]]);
    }

    #[test]
    fn vectorised_and_plain_updates_agree_bit_for_bit() {
        let mut rng = crate::rng::Rng::new(9);
        let mut draw = |n: usize, s: f64| (0..n).map(|_| (rng.normal() * s) as f32).collect::<Vec<f32>>();
        let (p0, g, m0, v0) = (draw(1000, 1.0), draw(1000, 0.3), draw(1000, 0.1), draw(1000, 0.1));
        let v0: Vec<f32> = v0.iter().map(|x| x * x).collect();
        let k = AdamWScalars {
            decay_factor: 0.99,
            one_minus_beta1: 0.1,
            beta2: 0.999,
            one_minus_beta2: 0.001,
            bias_correction2_sqrt: 0.05,
            eps: 1e-8,
            neg_step_size: -0.01,
        };
        let (mut p1, mut m1, mut v1) = (p0.clone(), m0.clone(), v0.clone());
        adamw_update_chunk(&mut p1, &g, &mut m1, &mut v1, &k);
        let (mut p2, mut m2, mut v2) = (p0, m0, v0);
        for i in 0..p2.len() {
            adamw_update(&mut p2[i], g[i], &mut m2[i], &mut v2[i], &k);
        }
        assert!(p1 == p2 && m1 == m2 && v1 == v2);
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_leaves_small_gradients_alone() {
        let (mut a, mut b) = (array![[3.0f32, 0.0]], array![[0.0f32], [4.0]]); // global norm 5
        let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0);
        assert_eq!(norm, 5.0);
        let after = (a.mapv(|x| x * x).sum() + b.mapv(|x| x * x).sum()).sqrt();
        assert!((after - 1.0).abs() < 1e-6, "{after}");
        let mut c = array![[0.3f32, 0.4]];
        assert!((clip_grad_norm(&mut [&mut c], 1.0) - 0.5).abs() < 1e-7);
        assert_eq!(c, array![[0.3f32, 0.4]]);
    }
}
