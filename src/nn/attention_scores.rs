//! What a head does to q·k before the softmax, beyond the scale: the two extras of the remote-code families.
//!
//! * **ALiBi** (Baichuan2-13B): a linear bias per head, sᵢⱼ += m_h·(j − i) for key j seen from position i
//!   (Press et al. 2022). Baichuan adds m_h·j when it evaluates and m_h·(j − i) when it trains; under the
//!   softmax of row i the two differ by a constant and give the same probabilities. We use j − i (never
//!   positive, so the scores stay small however long the sequence) — it is also invariant to where a packed
//!   document starts. The slopes are geometric: for a power of two n, m_h = 2^(−8(h+1)/n); for other head
//!   counts (Baichuan2-13B has 40) the first p = 2^⌊log₂ n⌋ heads take p's slopes and the remaining n − p take
//!   every other slope of 2p's list (Baichuan's `_get_interleave`).
//! * **The clamp** (Aquila2 with `use_xformers: false`): the scaled score is clamped to ±c (c = 1024) before
//!   the mask, so where it binds the score no longer depends on q or k and its gradient is zero.
//!
//! In order: sᵢⱼ = clamp(qᵢ·kⱼ·scale, −c, c) + m_h·(j − i). The bias is constant in q and k, so the backward
//! only changes where P is recomputed and where the clamp binds.

use super::attention::AttentionShape;

// ANCHOR: alibi_slopes
/// ALiBi's slope of head `h` of `n_heads` (Baichuan's `_get_interleave(n_heads)[h]`).
pub fn alibi_slope(n_heads: usize, h: usize) -> f32 {
    assert!(h < n_heads, "alibi_slope: head {h} of {n_heads}");
    let p = 1usize << n_heads.ilog2(); // the largest power of two ≤ n_heads
    let exponent = if h < p {
        -8.0 * (h + 1) as f64 / p as f64 // p's own list: start = ratio = 2^(−8/p)
    } else {
        -4.0 * (2 * (h - p) + 1) as f64 / p as f64 // entry 2(h − p) of 2p's list: 2^(−8(i+1)/(2p))
    };
    2f64.powf(exponent) as f32
}
// ANCHOR_END: alibi_slopes

/// How one head turns q·k into its score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadScores {
    pub scale: f32,
    /// Clamp the scaled score to ±this (Aquila2).
    pub clamp: Option<f32>,
    /// ALiBi's slope for this head (0 without ALiBi).
    pub slope: f32,
}

// ANCHOR: head_scores
impl HeadScores {
    pub fn of(shape: &AttentionShape, h: usize) -> Self {
        let slope = if shape.alibi { alibi_slope(shape.n_heads, h) } else { 0.0 };
        HeadScores { scale: shape.scale, clamp: shape.score_clamp, slope }
    }

    /// Only the scale: the fast path needs no per-key work.
    pub fn is_plain(&self) -> bool {
        self.clamp.is_none() && self.slope == 0.0
    }

    /// The score of key `key` seen from position `position`, from q·k.
    #[inline]
    pub fn score(&self, dot: f32, position: usize, key: usize) -> f32 {
        let mut s = dot * self.scale;
        if let Some(c) = self.clamp {
            s = s.clamp(-c, c);
        }
        s + self.slope * (key as i64 - position as i64) as f32
    }

    /// Whether ∂score/∂(q·k) is zero: the clamp binds (torch.clamp passes the gradient at the bounds).
    #[inline]
    pub fn clamp_binds(&self, dot: f32) -> bool {
        self.clamp.is_some_and(|c| (dot * self.scale).abs() > c)
    }
}
// ANCHOR_END: head_scores

#[cfg(test)]
mod tests {
    use super::*;

    /// Baichuan's `_get_interleave` as written (recursive, start·ratioⁱ in f64): the slopes must agree.
    fn get_interleave(n: usize) -> Vec<f64> {
        let power_of_2 = |n: usize| {
            let start = 2f64.powf(-(2f64.powf(-((n as f64).log2() - 3.0))));
            (0..n).map(|i| start * start.powi(i as i32)).collect::<Vec<f64>>()
        };
        if (n as f64).log2().fract() == 0.0 {
            power_of_2(n)
        } else {
            let closest = 2usize.pow((n as f64).log2().floor() as u32);
            let mut out = power_of_2(closest);
            out.extend(get_interleave(2 * closest).into_iter().step_by(2).take(n - closest));
            out
        }
    }

    #[test]
    fn slopes_follow_baichuans_interleave_for_every_head_count() {
        for n in 1..=96 {
            let want = get_interleave(n);
            for (h, w) in want.iter().enumerate() {
                let got = alibi_slope(n, h) as f64;
                assert!((got - w).abs() <= 1e-7 * w, "n = {n}, head {h}: {got} vs {w}");
            }
        }
        // the 13B's 40 heads: 32 of 2^(−h/4), then 8 of 64's odd entries 2^(−(2k+1)/8)
        assert_eq!(alibi_slope(40, 0), 2f32.powf(-0.25));
        assert_eq!(alibi_slope(40, 32), 2f32.powf(-0.125));
        assert_eq!(alibi_slope(40, 39), 2f32.powf(-15.0 / 8.0));
    }

    #[test]
    fn score_clamps_then_biases() {
        let s = HeadScores { scale: 0.5, clamp: Some(1024.0), slope: 0.25 };
        assert_eq!(s.score(4.0, 7, 3), 2.0 - 1.0);
        assert_eq!(s.score(10_000.0, 7, 7), 1024.0);
        assert_eq!(s.score(-10_000.0, 7, 5), -1024.0 - 0.5);
        assert!(s.clamp_binds(2049.0) && !s.clamp_binds(2048.0) && !s.clamp_binds(-2048.0));
        assert!(HeadScores { scale: 1.0, clamp: None, slope: 0.0 }.is_plain());
    }
}

/// The extras inside the attention op: the clamp where it binds, ALiBi against its definition.
#[cfg(test)]
mod in_attention {
    use super::*;
    use crate::nn::attention::{
        AttentionMask, causal_attention, causal_attention_backward, causal_attention_with_lse, naive_causal_attention,
    };
    use crate::nn::grad_check::{check, random, weighted_sum};
    use crate::rng::Rng;
    use ndarray::Array2;

    fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// q and k of size ~40 give scaled scores in the thousands: the clamp binds for many of them.
    #[test]
    fn the_clamp_binds_on_large_scores_and_zeroes_their_gradient() {
        let mut rng = Rng::new(11);
        let (tq, cached, d) = (6, 2, 2);
        let shape =
            AttentionShape { score_clamp: Some(1024.0), ..AttentionShape::new(2, 1, d, 1.0 / (d as f32).sqrt()) };
        let q = random(tq, 2 * d, &mut rng).mapv(|x| 40.0 * x);
        let k = random(tq + cached, d, &mut rng).mapv(|x| 40.0 * x);
        let v = random(tq + cached, d, &mut rng);
        let segments = [0, 0, 0, 0, 1, 1, 1, 1];
        for segment_ids in [None, Some(&segments[..])] {
            let mask = AttentionMask { q_offset: cached, segment_ids, window: None };
            let tiled = causal_attention(q.view(), k.view(), v.view(), &shape, &mask);
            let naive = naive_causal_attention(q.view(), k.view(), v.view(), &shape, &mask);
            assert!(max_abs_diff(&tiled, &naive) < 1e-5, "{}", max_abs_diff(&tiled, &naive));
            // the clamp changes the output: scores beyond ±1024 were there
            let unclamped =
                causal_attention(q.view(), k.view(), v.view(), &AttentionShape { score_clamp: None, ..shape }, &mask);
            assert!(max_abs_diff(&tiled, &unclamped) > 0.1, "the clamp never bound");

            let r = random(tq, 2 * d, &mut rng);
            let (out, lse) = causal_attention_with_lse(q.view(), k.view(), v.view(), &shape, &mask);
            let (dq, dk, dv) = causal_attention_backward(
                r.view(),
                q.view(),
                k.view(),
                v.view(),
                out.view(),
                lse.view(),
                &shape,
                &mask,
            );
            let objective = |q: &Array2<f32>, k: &Array2<f32>, v: &Array2<f32>| {
                weighted_sum(&causal_attention(q.view(), k.view(), v.view(), &shape, &mask), &r)
            };
            check("dq", &q, &dq, |x| objective(x, &k, &v)).unwrap();
            check("dk", &k, &dk, |x| objective(&q, x, &v)).unwrap();
            check("dv", &v, &dv, |x| objective(&q, &k, x)).unwrap();
        }
    }

    /// ALiBi with 5 heads (not a power of two) against the bias written out: scores + m_h·(j − i) by hand.
    #[test]
    fn alibi_adds_the_slope_times_the_distance() {
        let mut rng = Rng::new(5);
        let (t, heads, d) = (7, 5, 2);
        let plain = AttentionShape::new(heads, heads, d, 0.5);
        let (q, k, v) =
            (random(t, heads * d, &mut rng), random(t, heads * d, &mut rng), random(t, heads * d, &mut rng));
        let got = causal_attention(
            q.view(),
            k.view(),
            v.view(),
            &AttentionShape { alibi: true, ..plain },
            &Default::default(),
        );
        for h in 0..heads {
            let slope = alibi_slope(heads, h) as f64;
            for i in 0..t {
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        let dot: f64 = (0..d).map(|c| (q[[i, h * d + c]] * k[[j, h * d + c]]) as f64).sum();
                        0.5 * dot + slope * (j as f64 - i as f64)
                    })
                    .collect();
                let total: f64 = scores.iter().map(|s| s.exp()).sum();
                for c in 0..d {
                    let want: f64 = (0..=i).map(|j| scores[j].exp() / total * v[[j, h * d + c]] as f64).sum();
                    assert!((got[[i, h * d + c]] as f64 - want).abs() < 1e-5, "head {h} row {i}");
                }
            }
        }
        let without = causal_attention(q.view(), k.view(), v.view(), &plain, &Default::default());
        assert!(max_abs_diff(&got, &without) > 1e-2, "ALiBi changed nothing");
    }
}
