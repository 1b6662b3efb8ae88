//! LoRA: a frozen linear layer plus a trainable low-rank update.
//!
//! A linear layer y = x·Wᵀ (+ b), W: [out, in], is given two small matrices A: [r, in] and B: [out, r]
//! with r ≪ min(in, out), and computes
//!
//!   y = x·Wᵀ (+ b) + s · (x·Aᵀ)·Bᵀ,      s = α / r   (or α / √r with rsLoRA)
//!
//! which is the layer with weight W + s·B·A. Only A and B (and, with `bias = lora_only`, b) are trained; W
//! stays frozen, so its gradient is never computed. PEFT initialises A kaiming-uniform and B = 0, so at step 0
//! the adapted model *is* the base model, exactly. Merging writes W ← W + s·B·A into the base weight.
//!
//! This file holds the configuration, the init, the low-rank branch's forward and backward, and merge;
//! `adapter_io.rs` reads and writes PEFT's files.

use crate::nn::linear::{linear, weight_gradient};
use crate::nn::matmul::{matmul, matmul_into, scaled_matmul, scaled_matmul_into};
use crate::rng::Rng;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Zip};

// ANCHOR: lora_config
/// The LoRA hyper-parameters, with PEFT's `LoraConfig` field names.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// rank r of the update B·A
    pub r: usize,
    /// α: the update is scaled by α/r (or α/√r with rsLoRA)
    pub lora_alpha: f64,
    /// dropout probability on the LoRA branch's input (the base path never sees it)
    pub lora_dropout: f64,
    /// rank-stabilised LoRA: scale by α/√r instead of α/r
    pub use_rslora: bool,
    /// which biases are trained and saved with the adapter
    pub bias: LoraBias,
    /// which linear layers get an adapter
    pub target_modules: TargetModules,
}

/// PEFT's `bias` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraBias {
    /// `"none"`: every bias stays frozen.
    None,
    /// `"lora_only"`: the biases of the adapted layers are trained and saved (MFTCoder's choice).
    LoraOnly,
    /// `"all"`: every bias of the model is trained and saved.
    All,
}

/// PEFT's `target_modules` field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetModules {
    /// A list of module names; a module matches when its path equals a name or ends with `.` + name.
    Names(Vec<String>),
    /// `"all-linear"`: every linear layer except the output head (`lm_head`).
    AllLinear,
}

impl LoraConfig {
    /// s = α/r, or α/√r with rsLoRA. PEFT computes it as a Python float; the f32 branch multiplies by it
    /// rounded to f32.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora { self.lora_alpha / (self.r as f64).sqrt() } else { self.lora_alpha / self.r as f64 }
    }
}

impl TargetModules {
    /// Does the linear layer at `hf_module_path` (e.g. `model.layers.0.self_attn.q_proj`) get an adapter?
    /// PEFT's rule for a list: the path equals a name, or ends with `.` followed by it (so `q_proj` matches
    /// every layer's q_proj, and `layers.0.self_attn.q_proj` only layer 0's). Only ask about linear layers:
    /// `AllLinear` answers for any path but the output head.
    pub fn matches(&self, hf_module_path: &str) -> bool {
        match self {
            TargetModules::Names(names) => names.iter().any(|name| {
                hf_module_path == name
                    || (hf_module_path.len() > name.len()
                        && hf_module_path.ends_with(name.as_str())
                        && hf_module_path.as_bytes()[hf_module_path.len() - name.len() - 1] == b'.')
            }),
            TargetModules::AllLinear => hf_module_path != "lm_head",
        }
    }
}

impl Default for LoraConfig {
    /// PEFT's defaults (r 8, α 8, no dropout, no bias, α/r), with PEFT's default targets for Llama-family
    /// models, `q_proj` and `v_proj`.
    fn default() -> Self {
        LoraConfig {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            use_rslora: false,
            bias: LoraBias::None,
            target_modules: TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
        }
    }
}
// ANCHOR_END: lora_config

// ANCHOR: init_lora_a
/// PEFT's default init of A: `kaiming_uniform_(A, a=√5)`. With negative slope a the gain is √(2/(1+a²)) = √(1/3),
/// the std is gain/√fan_in and a uniform of that std has bound √3·std, so A ~ U(−1/√in, 1/√in)
/// (fan_in = in, the second dimension of A: [r, in]). B starts at zero: `Array2::zeros((out, r))`.
pub fn init_lora_a(out_rank: usize, in_features: usize, rng: &mut Rng) -> Array2<f32> {
    let bound = 1.0 / (in_features as f64).sqrt();
    Array2::from_shape_fn((out_rank, in_features), |_| (bound * (2.0 * rng.next_f64() - 1.0)) as f32)
}
// ANCHOR_END: init_lora_a

// ANCHOR: lora_forward
/// The low-rank branch added into the frozen layer's output: y += s · (x·Aᵀ)·Bᵀ.
///
/// y: [n, out] (x·Wᵀ + b, already computed), x: [n, in], A: [r, in], B: [out, r] → h = x·Aᵀ [n, r], kept for
/// the backward. Two thin products, never forming B·A: 2·n·r·(in + out) multiply-adds instead of n·in·out.
/// The second product accumulates straight into y with s as its scale (the GEMM's c ← c + s·a·b), so the
/// branch allocates only h: no [n, out] temporary, no separate scaling and adding pass over it.
///
/// Dropout is not inside: for dropout pass x̃ = x ∘ m (m from [`dropout_mask`]) as `x`, and multiply the dx
/// that [`lora_backward_into`] adds by the same m.
pub fn lora_forward_into(
    y: ArrayViewMut2<f32>,
    x: ArrayView2<f32>,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    scaling: f32,
) -> Array2<f32> {
    assert_eq!(x.ncols(), a.ncols(), "lora_forward: x width is not A's in");
    assert_eq!(b.ncols(), a.nrows(), "lora_forward: B's rank is not A's");
    let h = linear(x, a, None); // [n, in]·[in, r] → [n, r]
    scaled_matmul_into(h.view(), b.t(), scaling, 1.0, y); // y += s·[n, r]·[r, out]   (PEFT: lora_B(lora_A(x)) * s)
    h
}
// ANCHOR_END: lora_forward

// ANCHOR: lora_backward
/// The backward of Δy = s·h·Bᵀ with h = x·Aᵀ. With dy = ∂L/∂y [n, out]:
///
///   ∂L/∂B = s · dyᵀ·h     [out, r]
///   ∂L/∂h = s · dy·B      [n, r]
///   ∂L/∂A = (∂L/∂h)ᵀ·x    [r, in]
///   ∂L/∂x = (∂L/∂h)·A     [n, in]   (the branch's share, added into `dx`, which holds the frozen layer's dy·W;
///                                    `None` when no input gradient is wanted)
///
/// Returns (dA, dB), each laid out like its parameter. Every product has r on one side, so the whole backward
/// costs about as much as the forward of the branch; the frozen W's gradient dyᵀ·x ([out, in], the big one) is
/// never computed. s scales the two products that read dy, so dy itself is never copied.
pub fn lora_backward_into(
    dx: Option<ArrayViewMut2<f32>>,
    dy: ArrayView2<f32>,
    x: ArrayView2<f32>,
    h: ArrayView2<f32>,
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    scaling: f32,
) -> (Array2<f32>, Array2<f32>) {
    assert_eq!(dy.nrows(), x.nrows(), "lora_backward: dy and x rows");
    assert_eq!(h.dim(), (x.nrows(), a.nrows()), "lora_backward: h is not [n, r]");
    assert_eq!(dy.ncols(), b.nrows(), "lora_backward: dy width is not B's out");
    let db = weight_gradient(b, dy, h, scaling); // s·[out, n]·[n, r] → [out, r]
    let dh = scaled_matmul(dy, b, scaling); // s·[n, out]·[out, r] → [n, r]
    let da = weight_gradient(a, dh.view(), x, 1.0); // [r, n]·[n, in] → [r, in]
    if let Some(dx) = dx {
        matmul_into(dh.view(), a, 1.0, dx); // dx += [n, r]·[r, in]
    }
    (da, db)
}

// ANCHOR_END: lora_backward

/// A dropout mask for the LoRA input x: [rows, cols]: each entry 0 with probability p, else 1/(1−p), so
/// E[x ∘ m] = x. Use it as `lora_forward_into(y, x ∘ m, ..)` and multiply the returned dx by m. (PEFT draws its
/// mask from torch's generator, so masks are not comparable across the two; golden tests run without dropout.)
pub fn dropout_mask(rows: usize, cols: usize, p: f64, rng: &mut Rng) -> Array2<f32> {
    assert!((0.0..1.0).contains(&p), "dropout probability {p} is not in [0, 1)");
    let keep = (1.0 / (1.0 - p)) as f32;
    Array2::from_shape_fn((rows, cols), |_| if rng.next_f64() < p { 0.0 } else { keep })
}

// ANCHOR: merge
/// W ← W + s·B·A, in place. W: [out, in] in any memory layout (the CPU backend keeps weights column-major),
/// A: [r, in], B: [out, r]. As PEFT: Δ = B·A first, then scaled, then added.
pub fn merge(weight: &mut Array2<f32>, a: ArrayView2<f32>, b: ArrayView2<f32>, scaling: f32) {
    add_delta(weight, a, b, scaling);
}

/// W ← W − s·B·A: undoes [`merge`] up to rounding (the sum is rounded once each way).
pub fn unmerge(weight: &mut Array2<f32>, a: ArrayView2<f32>, b: ArrayView2<f32>, scaling: f32) {
    add_delta(weight, a, b, -scaling);
}

fn add_delta(weight: &mut Array2<f32>, a: ArrayView2<f32>, b: ArrayView2<f32>, scaling: f32) {
    assert_eq!(weight.dim(), (b.nrows(), a.ncols()), "merge: weight is not [B's out, A's in]");
    assert_eq!(b.ncols(), a.nrows(), "merge: B's rank is not A's");
    let delta = matmul(b, a); // [out, r]·[r, in] → [out, in]
    Zip::from(weight).and(&delta).for_each(|w, &d| *w += d * scaling);
}
// ANCHOR_END: merge

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::grad_check::{check, random, weighted_sum};
    use crate::nn::linear::column_major;
    use crate::rng::Rng;
    use proptest::prelude::*;

    /// The branch alone: (Δy = s·(x·Aᵀ)·Bᵀ, h).
    fn lora_forward(x: ArrayView2<f32>, a: ArrayView2<f32>, b: ArrayView2<f32>, s: f32) -> (Array2<f32>, Array2<f32>) {
        let mut delta = Array2::zeros((x.nrows(), b.nrows()));
        let h = lora_forward_into(delta.view_mut(), x, a, b, s);
        (delta, h)
    }

    /// The branch's backward alone: (dx, dA, dB), for parameters stored as `a` and `b` are.
    fn lora_backward(
        dy: ArrayView2<f32>,
        x: ArrayView2<f32>,
        h: ArrayView2<f32>,
        a: ArrayView2<f32>,
        b: ArrayView2<f32>,
        s: f32,
    ) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
        let mut dx = Array2::zeros(x.dim());
        let (da, db) = lora_backward_into(Some(dx.view_mut()), dy, x, h, a, b, s);
        (dx, da, db)
    }

    fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        assert_eq!(a.dim(), b.dim());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn scaling_is_alpha_over_r_or_over_sqrt_r() {
        let mut c = LoraConfig { r: 8, lora_alpha: 16.0, ..LoraConfig::default() };
        assert_eq!(c.scaling(), 2.0);
        c.use_rslora = true;
        assert!((c.scaling() - 16.0 / 8f64.sqrt()).abs() < 1e-15);
        let c = LoraConfig { r: 4, lora_alpha: 8.0, use_rslora: true, ..LoraConfig::default() };
        assert_eq!(c.scaling(), 4.0);
    }

    #[test]
    fn target_names_match_whole_dotted_suffixes_only() {
        let t = TargetModules::Names(vec!["q_proj".into(), "layers.1.mlp.up_proj".into()]);
        assert!(t.matches("model.layers.0.self_attn.q_proj"));
        assert!(t.matches("q_proj"));
        assert!(!t.matches("model.layers.0.self_attn.qq_proj"), "a suffix must start at a dot");
        assert!(!t.matches("model.layers.0.self_attn.q_proj.lora_A"));
        assert!(t.matches("model.layers.1.mlp.up_proj"));
        assert!(!t.matches("model.layers.11.mlp.up_proj"), "layers.1 must not match layers.11");
        assert!(!t.matches("model.layers.0.mlp.up_proj"));
        assert!(TargetModules::AllLinear.matches("model.layers.3.mlp.down_proj"));
        assert!(!TargetModules::AllLinear.matches("lm_head"));
    }

    #[test]
    fn init_is_uniform_within_one_over_sqrt_in() {
        let mut rng = Rng::new(7);
        let a = init_lora_a(16, 400, &mut rng);
        assert_eq!(a.dim(), (16, 400));
        let bound = 1.0 / 20.0;
        assert!(a.iter().all(|&v| v.abs() <= bound));
        // U(−c, c) has variance c²/3; 6400 draws put the sample variance within a few % of it
        let var = a.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / a.len() as f64;
        assert!((var / (bound as f64).powi(2) * 3.0 - 1.0).abs() < 0.05, "variance {var}");
        assert!(a.iter().fold(0.0f32, |m, v| m.max(v.abs())) > 0.95 * bound, "draws reach the bound");
        assert_eq!(init_lora_a(16, 400, &mut Rng::new(7)), a, "seeded");
    }

    #[test]
    fn zero_b_leaves_the_layer_exactly_unchanged() {
        let mut rng = Rng::new(3);
        let (x, w) = (random(5, 12, &mut rng), random(7, 12, &mut rng));
        let a = init_lora_a(4, 12, &mut rng);
        let b = Array2::zeros((7, 4));
        let (dy, h) = lora_forward(x.view(), a.view(), b.view(), 2.0);
        assert!(dy.iter().all(|&v| v == 0.0) && h.dim() == (5, 4));
        let base = linear(x.view(), w.view(), None);
        assert_eq!(base.clone() + &dy, base);
    }

    #[test]
    fn branch_plus_base_equals_the_merged_layer_and_unmerge_restores_it() {
        let mut rng = Rng::new(11);
        let (x, w) = (random(6, 10, &mut rng), random(9, 10, &mut rng));
        let (a, b) = (random(3, 10, &mut rng), random(9, 3, &mut rng));
        let s = 1.7f32;
        let (delta, _) = lora_forward(x.view(), a.view(), b.view(), s);
        let unmerged = linear(x.view(), w.view(), None) + &delta;
        for layout in [w.clone(), column_major(w.clone())] {
            let mut merged_w = layout;
            merge(&mut merged_w, a.view(), b.view(), s);
            let merged = linear(x.view(), merged_w.view(), None);
            assert!(max_abs_diff(&merged, &unmerged) < 1e-5);
            unmerge(&mut merged_w, a.view(), b.view(), s);
            assert!(max_abs_diff(&merged_w, &w) < 1e-6);
        }
        // against a naive triple loop
        let mut naive = w.clone();
        for o in 0..9 {
            for i in 0..10 {
                naive[[o, i]] += s * (0..3).map(|k| b[[o, k]] * a[[k, i]]).sum::<f32>();
            }
        }
        let mut fast = w.clone();
        merge(&mut fast, a.view(), b.view(), s);
        assert!(max_abs_diff(&fast, &naive) < 1e-6);
    }

    #[test]
    fn dropout_mask_keeps_the_expectation() {
        let m = dropout_mask(100, 100, 0.25, &mut Rng::new(1));
        let zeros = m.iter().filter(|&&v| v == 0.0).count() as f64 / 1e4;
        assert!((zeros - 0.25).abs() < 0.02, "{zeros}");
        assert!(m.iter().all(|&v| v == 0.0 || v == (1.0f64 / 0.75) as f32));
        assert!(dropout_mask(3, 3, 0.0, &mut Rng::new(1)).iter().all(|&v| v == 1.0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// dx, dA, dB against central differences of the branch's own forward (tolerances: `nn::grad_check`,
        /// RTOL 1e-2, ATOL 2e-3); a random s and rsLoRA-sized r.
        #[test]
        fn backward_matches_finite_differences(n in 1usize..6, d_in in 1usize..8, d_out in 1usize..8,
                                               r in 1usize..5, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let (x, a, b) = (random(n, d_in, &mut rng), random(r, d_in, &mut rng), random(d_out, r, &mut rng));
            let s = (0.25 + 2.0 * rng.next_f64()) as f32;
            let rr = random(n, d_out, &mut rng);
            let (_, h) = lora_forward(x.view(), a.view(), b.view(), s);
            let (dx, da, db) = lora_backward(rr.view(), x.view(), h.view(), a.view(), b.view(), s);
            let objective = |x: &Array2<f32>, a: &Array2<f32>, b: &Array2<f32>| {
                weighted_sum(&lora_forward(x.view(), a.view(), b.view(), s).0, &rr)
            };
            check("dx", &x, &dx, |x| objective(x, &a, &b)).map_err(TestCaseError::fail)?;
            check("dA", &a, &da, |a| objective(&x, a, &b)).map_err(TestCaseError::fail)?;
            check("dB", &b, &db, |b| objective(&x, &a, b)).map_err(TestCaseError::fail)?;
            // column-major parameters (the CPU backend's) get the same gradients in their own layout; without
            // a dx the parameters' gradients are unchanged, and an existing dx is added to
            let (a_cm, b_cm) = (column_major(a.clone()), column_major(b.clone()));
            let (da_cm, db_cm) = lora_backward_into(None, rr.view(), x.view(), h.view(), a_cm.view(), b_cm.view(), s);
            prop_assert!(da_cm.t().is_standard_layout() && db_cm.t().is_standard_layout());
            // the two layouts sum in different orders: equal to f32 rounding, relative to the largest entry
            let close = |got: &Array2<f32>, want: &Array2<f32>| {
                max_abs_diff(got, want) <= 1e-6 * want.iter().fold(1.0f32, |m, v| m.max(v.abs()))
            };
            prop_assert!(close(&da_cm, &da) && close(&db_cm, &db), "column-major dA, dB");
            let mut dx_acc = x.clone();
            lora_backward_into(Some(dx_acc.view_mut()), rr.view(), x.view(), h.view(), a.view(), b.view(), s);
            prop_assert!(close(&dx_acc, &(&x + &dx)), "dx accumulated");
        }

        /// With dropout as documented on `lora_forward`: x̃ = x ∘ m in, dx ∘ m out.
        #[test]
        fn backward_with_a_dropout_mask_matches_finite_differences(n in 1usize..5, d_in in 1usize..7,
                                                                   d_out in 1usize..7, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let (x, a, b) = (random(n, d_in, &mut rng), random(2, d_in, &mut rng), random(d_out, 2, &mut rng));
            let m = dropout_mask(n, d_in, 0.3, &mut rng);
            let rr = random(n, d_out, &mut rng);
            let (_, h) = lora_forward((&x * &m).view(), a.view(), b.view(), 0.5);
            let (dx, _, _) = lora_backward(rr.view(), (&x * &m).view(), h.view(), a.view(), b.view(), 0.5);
            let dx = dx * &m;
            check("dx (dropout)", &x, &dx, |x| weighted_sum(&lora_forward((x * &m).view(), a.view(), b.view(), 0.5).0, &rr))
                .map_err(TestCaseError::fail)?;
        }
    }
}
