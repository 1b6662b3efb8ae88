//! Rotary position embedding (Su et al., 2021) in Llama's half-split layout.
//!
//! A head vector x ∈ ℝᵈ is split into halves x₁ = x[..d/2], x₂ = x[d/2..]. Pair i (x₁ᵢ, x₂ᵢ) is rotated by the
//! angle p·ωᵢ at position p, with ωᵢ = θ^(−2i/d):
//!
//!   y₁ = x₁·cos − x₂·sin,   y₂ = x₂·cos + x₁·sin      (transformers: `q·cos + rotate_half(q)·sin`)
//!
//! Partial rotary (GPT-NeoX's `rotary_pct`, Phi's `partial_rotary_factor`): only the first r < d entries of each
//! head rotate, split into halves of r/2 as above with ωᵢ = θ^(−2i/r); entries r..d pass through unchanged.
//! The rotated width is implied by the frequencies: r = 2·len(ω).
//!
//! Linear scaling ("position interpolation") divides every ωᵢ by a factor. Like transformers we compute ωᵢ and
//! the angles in f32, so long positions round the same way.

use crate::io::hf_config::{RopeScaling, RopeSpec, Yarn};
use ndarray::{Array2, ArrayView2, Axis, Zip};

// ANCHOR: inv_freq
/// ωᵢ for i in 0..r/2 (r = the rotated width: head_dim, or less for partial rotary), computed the way
/// transformers does (f32 pow, then reciprocal, then scaling).
pub fn inverse_frequencies(spec: &RopeSpec, rotary_dims: usize) -> Vec<f32> {
    let base = spec.theta as f32;
    let ramp = match &spec.scaling {
        RopeScaling::Yarn(yarn) => Some(yarn_ramp(yarn, spec.theta, rotary_dims)),
        _ => None,
    };
    (0..rotary_dims / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / rotary_dims as f32;
            let pos_freq = base.powf(exponent);
            let inv = 1.0 / pos_freq;
            match &spec.scaling {
                RopeScaling::None | RopeScaling::QwenDynamicNtk { .. } => inv,
                RopeScaling::Linear { factor } => inv / *factor as f32,
                RopeScaling::Yarn(yarn) => {
                    // ramp 0: the original frequency (extrapolation), ramp 1: divided by the factor
                    let interpolated = 1.0 / (yarn.factor as f32 * pos_freq);
                    let keep = 1.0 - ramp.as_ref().expect("computed for yarn")[i];
                    interpolated * (1.0 - keep) + inv * keep
                }
            }
        })
        .collect()
}
// ANCHOR_END: inv_freq

// ANCHOR: interleaved_to_halves
/// The column order that turns interleaved pairs into halves, for `heads` heads of width d whose first
/// `dims` entries rotate: per head [0, 2, …, dims − 2, 1, 3, …, dims − 1, dims, …, d − 1]. Applied to both q
/// and k (`nn::column_gather`) it leaves every q·k as it was, and pair (2i, 2i + 1) becomes (i, i + dims/2).
pub fn interleaved_to_halves(heads: usize, head_dim: usize, dims: usize) -> Vec<Option<usize>> {
    let within_head = (0..dims).step_by(2).chain((1..dims).step_by(2)).chain(dims..head_dim);
    let within_head: Vec<usize> = within_head.collect();
    (0..heads).flat_map(|h| within_head.iter().map(move |&j| Some(h * head_dim + j))).collect()
}
// ANCHOR_END: interleaved_to_halves

// ANCHOR: dynamic_ntk
/// ωᵢ for a context of `context_len` tokens at inference: [`inverse_frequencies`], except that Qwen-1's
/// dynamic NTK raises θ to θ·α^(r/(r−2)) once the context outgrows the trained `seq_length` L.
pub fn inverse_frequencies_for_context(spec: &RopeSpec, rotary_dims: usize, context_len: usize) -> Vec<f32> {
    match spec.scaling {
        RopeScaling::QwenDynamicNtk { seq_length } => {
            let (alpha, r) = (ntk_alpha(context_len, seq_length), rotary_dims as f64);
            let theta = spec.theta * alpha.powf(r / (r - 2.0));
            inverse_frequencies(&RopeSpec { theta, scaling: RopeScaling::None }, rotary_dims)
        }
        _ => inverse_frequencies(spec, rotary_dims),
    }
}

/// Qwen-1's NTK factor for n tokens over a trained length L: α = 2^⌈log₂(n/L) + 1⌉ − 1, at least 1 — so
/// α = 1 up to L, 3 up to 2L, 7 up to 4L. (log₂ as the reference computes it, ln(n/L)/ln 2.)
pub fn ntk_alpha(context_len: usize, seq_length: usize) -> f64 {
    let doublings = (context_len as f64 / seq_length as f64).ln() / 2f64.ln() + 1.0;
    (2f64.powf(doublings.ceil()) - 1.0).max(1.0)
}
// ANCHOR_END: dynamic_ntk

// ANCHOR: yarn_ramp
/// YaRN's ramp over the r/2 frequencies: 0 below the dimension whose wavelength turns β_fast times over the
/// original context, 1 above the one that turns β_slow times, linear between. A dimension d turns
/// L/(2π·θ^(2d/r)) times over a context of L, so that dimension is r·ln(L/(2π·β))/(2·ln θ).
fn yarn_ramp(yarn: &Yarn, theta: f64, rotary_dims: usize) -> Vec<f32> {
    let dim = rotary_dims as f64;
    let turns_to_dim = |turns: f64| {
        dim * (yarn.original_max_position_embeddings / (turns * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (turns_to_dim(yarn.beta_fast), turns_to_dim(yarn.beta_slow));
    if yarn.truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
    if low == high {
        high += 0.001; // transformers' guard against a zero-width ramp
    }
    let (low, high) = (low as f32, high as f32);
    (0..rotary_dims / 2).map(|i| ((i as f32 - low) / (high - low)).clamp(0.0, 1.0)).collect()
}
// ANCHOR_END: yarn_ramp

/// cos and sin of every angle p·ωᵢ a call needs, computed once per call rather than once per row: a packed
/// batch repeats the same few hundred positions across its rows (and trigonometry is not cheap).
struct RotationTable {
    first: usize,
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RotationTable {
    fn new(positions: &[usize], inv_freq: &[f32]) -> Self {
        let first = positions.iter().copied().min().unwrap_or(0);
        let last = positions.iter().copied().max().unwrap_or(0);
        let half = inv_freq.len();
        let n = last - first + 1;
        let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
        for p in first..=last {
            for &w in inv_freq {
                let angle = p as f32 * w;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        RotationTable { first, half, cos, sin }
    }

    fn row(&self, p: usize) -> (&[f32], &[f32]) {
        let at = (p - self.first) * self.half;
        (&self.cos[at..at + self.half], &self.sin[at..at + self.half])
    }
}

// ANCHOR: rope_forward
/// x: [T, heads·d] (head h in columns h·d..(h+1)·d), positions: [T] → rotated copy of x (the first
/// 2·len(inv_freq) entries of each head rotate, the rest are copied).
pub fn rope(x: ArrayView2<f32>, heads: usize, head_dim: usize, positions: &[usize], inv_freq: &[f32]) -> Array2<f32> {
    assert_eq!(x.ncols(), heads * head_dim, "rope: width {} is not heads·head_dim = {heads}·{head_dim}", x.ncols());
    assert_eq!(x.nrows(), positions.len(), "rope: one position per row");
    let half = inv_freq.len();
    assert!(2 * half <= head_dim, "rope: {} frequencies for heads of {head_dim}", half);
    let table = RotationTable::new(positions, inv_freq);
    let mut y = if 2 * half == head_dim { Array2::zeros(x.raw_dim()) } else { x.to_owned() };
    Zip::from(y.axis_iter_mut(Axis(0))).and(x.axis_iter(Axis(0))).and(positions).par_for_each(
        |mut y_row, x_row, &p| {
            let (cos, sin) = table.row(p);
            for h in 0..heads {
                let base = h * head_dim;
                for i in 0..half {
                    let (x1, x2) = (x_row[base + i], x_row[base + half + i]);
                    y_row[base + i] = x1 * cos[i] - x2 * sin[i];
                    y_row[base + half + i] = x2 * cos[i] + x1 * sin[i];
                }
            }
        },
    );
    y
}
// ANCHOR_END: rope_forward

// ANCHOR: rope_backward
/// RoPE is a rotation Rᵢ(θ) of each pair, linear in x, so ∂L/∂x = Rᵢ(θ)ᵀ·dy = Rᵢ(−θ)·dy:
///
///   dx₁ = dy₁·cos + dy₂·sin,   dx₂ = dy₂·cos − dy₁·sin
///
/// dy: [T, heads·d], positions: [T] → dx: [T, heads·d] (partial rotary: the pass-through entries copy dy).
/// Nothing is cached: the angles are recomputed.
pub fn rope_backward(
    dy: ArrayView2<f32>,
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    inv_freq: &[f32],
) -> Array2<f32> {
    assert_eq!(
        dy.ncols(),
        heads * head_dim,
        "rope_backward: width {} is not heads·head_dim = {heads}·{head_dim}",
        dy.ncols()
    );
    assert_eq!(dy.nrows(), positions.len(), "rope_backward: one position per row");
    let half = inv_freq.len();
    assert!(2 * half <= head_dim, "rope_backward: {} frequencies for heads of {head_dim}", half);
    let table = RotationTable::new(positions, inv_freq);
    // entries past the rotated width pass the gradient through unchanged
    let mut dx = if 2 * half == head_dim { Array2::zeros(dy.raw_dim()) } else { dy.to_owned() };
    Zip::from(dx.axis_iter_mut(Axis(0))).and(dy.axis_iter(Axis(0))).and(positions).par_for_each(
        |mut dx_row, dy_row, &p| {
            let (cos, sin) = table.row(p); // the same f32 angles as the forward
            for i in 0..half {
                let (cos, sin) = (cos[i], sin[i]);
                for h in 0..heads {
                    let base = h * head_dim;
                    let (d1, d2) = (dy_row[base + i], dy_row[base + half + i]);
                    dx_row[base + i] = d1 * cos + d2 * sin;
                    dx_row[base + half + i] = d2 * cos - d1 * sin;
                }
            }
        },
    );
    dx
}
// ANCHOR_END: rope_backward

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::grad_check::{check, random, weighted_sum};
    use crate::rng::Rng;
    use ndarray::Array2;
    use proptest::prelude::*;

    /// Interleaved RoPE, written out pair by pair as ChatGLM does, equals rotate-half on the reordered head.
    #[test]
    fn interleaved_pairs_are_halves_after_reordering() {
        let (heads, d, dims) = (2, 6, 4);
        let mut rng = Rng::new(7);
        let x = random(3, heads * d, &mut rng);
        let inv_freq = [1.0f32, 0.1];
        let mut reference = x.clone();
        for t in 0..3 {
            for h in 0..heads {
                for i in 0..dims / 2 {
                    let (angle, at) = (t as f32 * inv_freq[i], h * d + 2 * i);
                    let (a, b) = (x[[t, at]], x[[t, at + 1]]);
                    reference[[t, at]] = a * angle.cos() - b * angle.sin();
                    reference[[t, at + 1]] = b * angle.cos() + a * angle.sin();
                }
            }
        }
        let order = interleaved_to_halves(heads, d, dims);
        let reorder = |m: &Array2<f32>| Array2::from_shape_fn((3, heads * d), |(t, j)| m[[t, order[j].unwrap()]]);
        let rotated = rope(reorder(&x).view(), heads, d, &[0, 1, 2], &inv_freq);
        assert!(rotated.iter().zip(reorder(&reference).iter()).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn ntk_alpha_doubles_past_each_power_of_two_of_the_trained_length() {
        let alphas: Vec<f64> = [1, 8, 16, 17, 32, 33, 64, 65].iter().map(|&n| ntk_alpha(n, 16)).collect();
        assert_eq!(alphas, [1.0, 1.0, 1.0, 3.0, 3.0, 7.0, 7.0, 15.0]);
        let spec = RopeSpec { theta: 10_000.0, scaling: RopeScaling::QwenDynamicNtk { seq_length: 16 } };
        assert_eq!(inverse_frequencies_for_context(&spec, 8, 16), inverse_frequencies(&spec, 8));
        // α = 3 over r = 8: θ' = 10⁴·3^(4/3)
        let raised = RopeSpec { theta: 10_000.0 * 3f64.powf(8.0 / 6.0), scaling: RopeScaling::None };
        assert_eq!(inverse_frequencies_for_context(&spec, 8, 20), inverse_frequencies(&raised, 8));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn backward_matches_finite_differences(t in 1usize..6, heads in 1usize..4, half in 1usize..5,
                                               pass_through in 0usize..3, offset in 0usize..3000, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let d = 2 * half + pass_through; // partial rotary when pass_through > 0
            let w = inverse_frequencies(&spec(), 2 * half);
            let positions: Vec<usize> = (0..t).map(|i| offset + 7 * i).collect();
            let x = random(t, heads * d, &mut rng);
            let r = random(t, heads * d, &mut rng);
            let dx = rope_backward(r.view(), heads, d, &positions, &w);
            check("dx", &x, &dx, |x| weighted_sum(&rope(x.view(), heads, d, &positions, &w), &r))
                .map_err(TestCaseError::fail)?;
        }
    }

    fn spec() -> RopeSpec {
        RopeSpec { theta: 10_000.0, scaling: RopeScaling::None }
    }

    #[test]
    fn position_zero_is_the_identity_and_norms_are_preserved() {
        let x = Array2::from_shape_fn((3, 8), |(t, c)| (t * 8 + c) as f32 * 0.1 - 1.0);
        let w = inverse_frequencies(&spec(), 4);
        let y = rope(x.view(), 2, 4, &[0, 5, 77], &w);
        assert_eq!(y.row(0), x.row(0));
        for t in 0..3 {
            for h in 0..2 {
                for i in 0..2 {
                    let (a, b) = (x[[t, h * 4 + i]], x[[t, h * 4 + 2 + i]]);
                    let (c, d) = (y[[t, h * 4 + i]], y[[t, h * 4 + 2 + i]]);
                    assert!(((a * a + b * b) - (c * c + d * d)).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn relative_positions_give_the_same_dot_product() {
        // ⟨R(p)q, R(p')k⟩ depends only on p − p': the property attention relies on.
        let q = Array2::from_shape_fn((1, 8), |(_, c)| (c as f32 * 0.37).sin());
        let k = Array2::from_shape_fn((1, 8), |(_, c)| (c as f32 * 0.91).cos());
        let w = inverse_frequencies(&spec(), 8);
        let dot = |pq: usize, pk: usize| {
            let a = rope(q.view(), 1, 8, &[pq], &w);
            let b = rope(k.view(), 1, 8, &[pk], &w);
            (&a * &b).sum()
        };
        assert!((dot(3, 1) - dot(10, 8)).abs() < 1e-4);
    }

    #[test]
    fn partial_rotary_rotates_the_first_entries_only() {
        // heads of 6 with 4 rotated entries: ω over r = 4, entries 4 and 5 of each head copied
        let x = Array2::from_shape_fn((2, 12), |(t, c)| (t * 12 + c) as f32 * 0.1 - 0.5);
        let w = inverse_frequencies(&spec(), 4);
        assert_eq!(w, vec![1.0, 1.0 / 100.0]);
        let y = rope(x.view(), 2, 6, &[3, 9], &w);
        let full = rope(x.slice(ndarray::s![.., 0..4]).to_owned().view(), 1, 4, &[3, 9], &w);
        for t in 0..2 {
            for h in 0..2 {
                for c in 4..6 {
                    assert_eq!(y[[t, h * 6 + c]], x[[t, h * 6 + c]]);
                }
            }
            for c in 0..4 {
                assert_eq!(y[[t, c]], full[[t, c]]);
            }
        }
    }

    #[test]
    fn linear_scaling_divides_the_frequencies() {
        let plain = inverse_frequencies(&spec(), 8);
        let scaled =
            inverse_frequencies(&RopeSpec { theta: 10_000.0, scaling: RopeScaling::Linear { factor: 4.0 } }, 8);
        for (p, s) in plain.iter().zip(&scaled) {
            assert_eq!(*s, p / 4.0);
        }
        assert_eq!(plain[0], 1.0);
    }
}
