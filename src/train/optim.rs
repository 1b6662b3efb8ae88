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

use ndarray::{Array2, Zip};

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

/// The optimizer state: one (m, v) pair per parameter and the shared step count.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Number of steps taken so far (torch's `state["step"]`).
    pub step: u64,
    /// First moments, one per parameter, shaped like it.
    pub m: Vec<Array2<f32>>,
    /// Second moments, one per parameter, shaped like it.
    pub v: Vec<Array2<f32>>,
}

/// A hyper-parameter given as f32, read as the decimal it prints as (0.9f32 → 0.9f64, not 0.899999976…).
/// Python hands torch these values as f64 literals, so this is how we reproduce its f64 scalar arithmetic.
fn as_decimal(x: f32) -> f64 {
    x.to_string().parse().expect("a printed f32 parses as f64")
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
        assert_eq!(params.len(), self.m.len(), "AdamW::step: {} parameters, state for {}", params.len(), self.m.len());
        assert_eq!(grads.len(), params.len(), "AdamW::step: one gradient per parameter");
        assert_eq!(decay.len(), params.len(), "AdamW::step: one decay flag per parameter");
        self.step += 1;
        let (lr, beta1, beta2) = (as_decimal(lr), as_decimal(self.config.beta1), as_decimal(self.config.beta2));
        let (eps, weight_decay) = (as_decimal(self.config.eps) as f32, as_decimal(self.config.weight_decay));
        // The scalars, in f64 as torch computes them in Python, then rounded to f32 where a kernel takes them.
        let t = self.step as f64;
        let bias_correction1 = 1.0 - beta1.powf(t);
        let bias_correction2_sqrt = (1.0 - beta2.powf(t)).powf(0.5) as f32;
        let neg_step_size = (-(lr / bias_correction1)) as f32;
        let decay_factor = (1.0 - lr * weight_decay) as f32;
        let (one_minus_beta1, beta2_f32, one_minus_beta2) = ((1.0 - beta1) as f32, beta2 as f32, (1.0 - beta2) as f32);

        for (i, (p, &g)) in params.iter_mut().zip(grads).enumerate() {
            assert_eq!(p.dim(), self.m[i].dim(), "AdamW::step: parameter {i} changed shape");
            assert_eq!(g.dim(), p.dim(), "AdamW::step: gradient {i} is not shaped like its parameter");
            let apply_decay = decay[i] && weight_decay != 0.0;
            Zip::from(&mut **p).and(g).and(&mut self.m[i]).and(&mut self.v[i]).par_for_each(|p, &g, m, v| {
                if apply_decay {
                    *p *= decay_factor;
                }
                *m = one_minus_beta1.mul_add(g - *m, *m); // lerp(m, g, 1 − β₁), fused as in torch's kernel
                *v = (one_minus_beta2 * g).mul_add(g, *v * beta2_f32); // mul_(β₂).addcmul_(g, g, 1 − β₂), fused likewise
                let denom = v.sqrt() / bias_correction2_sqrt + eps;
                *p += neg_step_size * *m / denom;
            });
        }
    }
    // ANCHOR_END: adamw_step
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
    let tensor_norms = grads.iter().map(|g| g.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt() as f32);
    let norm = tensor_norms.map(|n| n as f64 * n as f64).sum::<f64>().sqrt() as f32;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            g.par_mapv_inplace(|x| x * coef);
        }
    }
    norm
}
// ANCHOR_END: clip_grad_norm

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
