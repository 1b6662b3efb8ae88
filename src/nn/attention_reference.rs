//! The textbook attention that materialises the full score matrix, forward and (for the tests) backward: the
//! reference the tiled kernels of `attention.rs` are tested against, and a readable statement of what they
//! compute.

use super::attention::{AttentionMask, AttentionShape};
use super::attention_scores::HeadScores;
use ndarray::{Array2, ArrayView2};

// ANCHOR: naive_attention
/// The textbook version that materialises the full score matrix: the reference the tiled kernel is tested
/// against (and a readable statement of what it computes).
pub fn naive_causal_attention(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    shape: &AttentionShape,
    mask: &AttentionMask,
) -> Array2<f32> {
    let d = shape.head_dim;
    let group = shape.n_heads / shape.n_kv_heads;
    let mut out = Array2::zeros((q.nrows(), shape.n_heads * d));
    for h in 0..shape.n_heads {
        let g = h / group;
        let head = HeadScores::of(shape, h);
        for i in 0..q.nrows() {
            let position = mask.q_offset + i;
            let visible: Vec<usize> = (0..=position)
                .filter(|&j| mask.segment_ids.is_none_or(|seg| seg[j] == seg[position]))
                .filter(|&j| mask.window.is_none_or(|w| position - j < w))
                .collect();
            let scores: Vec<f64> = visible
                .iter()
                .map(|&j| {
                    let dot: f64 = (0..d).map(|c| q[[i, h * d + c]] as f64 * k[[j, g * d + c]] as f64).sum();
                    head.score(dot as f32, position, j) as f64
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for c in 0..d {
                let value: f64 = visible.iter().zip(&weights).map(|(&j, w)| w * v[[j, g * d + c]] as f64).sum();
                out[[i, h * d + c]] = (value / total) as f32;
            }
        }
    }
    out
}
// ANCHOR_END: naive_attention

#[cfg(test)]
/// The textbook backward over the full probability matrix, in f64: the reference for the tiled kernel.
pub(crate) fn naive_backward(
    dout: &Array2<f32>,
    q: &Array2<f32>,
    k: &Array2<f32>,
    v: &Array2<f32>,
    shape: &AttentionShape,
    mask: &AttentionMask,
) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
    let d = shape.head_dim;
    let group = shape.n_heads / shape.n_kv_heads;
    let scale = shape.scale as f64;
    let mut dq = Array2::<f64>::zeros(q.raw_dim());
    let mut dk = Array2::<f64>::zeros(k.raw_dim());
    let mut dv = Array2::<f64>::zeros(v.raw_dim());
    for h in 0..shape.n_heads {
        let g = h / group;
        let head = HeadScores::of(shape, h);
        for i in 0..q.nrows() {
            let position = mask.q_offset + i;
            let keys: Vec<usize> = (0..=position)
                .filter(|&j| mask.segment_ids.is_none_or(|seg| seg[j] == seg[position]))
                .filter(|&j| mask.window.is_none_or(|w| position - j < w))
                .collect();
            let dot = |a: &Array2<f32>, ra: usize, ca: usize, b: &Array2<f32>, rb: usize, cb: usize| -> f64 {
                (0..d).map(|c| a[[ra, ca * d + c]] as f64 * b[[rb, cb * d + c]] as f64).sum()
            };
            let dots: Vec<f32> = keys.iter().map(|&j| dot(q, i, h, k, j, g) as f32).collect();
            let scores: Vec<f64> = keys.iter().zip(&dots).map(|(&j, &x)| head.score(x, position, j) as f64).collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            let p: Vec<f64> = scores.iter().map(|s| (s - max).exp() / total).collect();
            let dp: Vec<f64> = keys.iter().map(|&j| dot(dout, i, h, v, j, g)).collect();
            let big_d: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for (n, &j) in keys.iter().enumerate() {
                let ds = if head.clamp_binds(dots[n]) { 0.0 } else { p[n] * (dp[n] - big_d) };
                for c in 0..d {
                    dq[[i, h * d + c]] += ds * k[[j, g * d + c]] as f64 * scale;
                    dk[[j, g * d + c]] += ds * q[[i, h * d + c]] as f64 * scale;
                    dv[[j, g * d + c]] += p[n] * dout[[i, h * d + c]] as f64;
                }
            }
        }
    }
    (dq.mapv(|x| x as f32), dk.mapv(|x| x as f32), dv.mapv(|x| x as f32))
}
