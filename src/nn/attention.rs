//! Causal multi-head attention with grouped key/value heads (GQA; MQA when there is one KV head),
//! computed in tiles with an online softmax so memory stays O(T) per head.
//!
//! For query head h (KV head g = h / (H/KV)), query row i and key row j ≤ i:
//!
//!   sᵢⱼ = (qᵢ · kⱼ) · scale,   pᵢⱼ = exp(sᵢⱼ − mᵢ) / lᵢ,   oᵢ = Σⱼ pᵢⱼ vⱼ
//!
//! with mᵢ = maxⱼ sᵢⱼ and lᵢ = Σⱼ exp(sᵢⱼ − mᵢ). We never form the T×T matrix: queries are taken in blocks of
//! `Q_BLOCK` rows and keys in blocks of `K_BLOCK`; after each key block the running max m, the running sum l and
//! the unnormalised output are rescaled by exp(m_old − m_new) (Milakov & Gimelshein 2018; FlashAttention).
//! The largest temporary is one Q_BLOCK × K_BLOCK score tile per worker.

use ndarray::{Array1, Array2, ArrayView2, s};
use rayon::prelude::*;

pub const Q_BLOCK: usize = 64;
pub const K_BLOCK: usize = 128;

/// The head layout of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k; 1/√head_dim for Llama.
    pub scale: f32,
}

/// Which keys each query may see.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionMask<'a> {
    /// Query row i sits at key position `q_offset + i` and sees keys `0..=q_offset + i`
    /// (0 for a full sequence; the cache length when decoding with a KV cache).
    pub q_offset: usize,
    /// Packed batches: one segment id per key position; a query only sees keys of its own segment.
    pub segment_ids: Option<&'a [u32]>,
}

// ANCHOR: attention_forward
/// q: [Tq, H·d], k, v: [Tk, KV·d] → [Tq, H·d]
pub fn causal_attention(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    shape: &AttentionShape,
    mask: &AttentionMask,
) -> Array2<f32> {
    let AttentionShape { n_heads, n_kv_heads, head_dim: d, .. } = *shape;
    let (tq, tk) = (q.nrows(), k.nrows());
    assert_eq!(q.ncols(), n_heads * d, "attention: q width");
    assert_eq!(k.ncols(), n_kv_heads * d, "attention: k width");
    assert_eq!(v.dim(), k.dim(), "attention: k and v differ");
    assert!(mask.q_offset + tq <= tk, "attention: queries run past the keys");
    assert!(n_heads % n_kv_heads == 0, "attention: heads must be a multiple of KV heads");
    if let Some(seg) = mask.segment_ids {
        assert_eq!(seg.len(), tk, "attention: one segment id per key");
    }
    let group = n_heads / n_kv_heads;
    let q_blocks = tq.div_ceil(Q_BLOCK);

    // One task per (head, query block); each returns its [rows, d] slice of the output.
    let tiles: Vec<(usize, usize, Array2<f32>)> = (0..n_heads * q_blocks)
        .into_par_iter()
        .map(|task| {
            let (h, qb) = (task / q_blocks, task % q_blocks);
            let g = h / group;
            let rows = qb * Q_BLOCK..((qb + 1) * Q_BLOCK).min(tq);
            let q_tile = q.slice(s![rows.clone(), h * d..(h + 1) * d]);
            let k_head = k.slice(s![.., g * d..(g + 1) * d]);
            let v_head = v.slice(s![.., g * d..(g + 1) * d]);
            let out = attend_tile(q_tile, k_head, v_head, rows.start, shape.scale, mask);
            (h, rows.start, out)
        })
        .collect();

    let mut out = Array2::zeros((tq, n_heads * d));
    for (h, row0, tile) in tiles {
        out.slice_mut(s![row0..row0 + tile.nrows(), h * d..(h + 1) * d]).assign(&tile);
    }
    out
}

/// One query tile of one head against all the keys it may see, with the online softmax.
/// q_tile: [rows, d] starting at query row `row0`; k_head, v_head: [Tk, d] → [rows, d]
fn attend_tile(
    q_tile: ArrayView2<f32>,
    k_head: ArrayView2<f32>,
    v_head: ArrayView2<f32>,
    row0: usize,
    scale: f32,
    mask: &AttentionMask,
) -> Array2<f32> {
    let rows = q_tile.nrows();
    let mut running_max = Array1::from_elem(rows, f32::NEG_INFINITY);
    let mut running_sum = Array1::<f32>::zeros(rows);
    let mut acc = Array2::<f32>::zeros((rows, q_tile.ncols()));
    let last_visible_key = mask.q_offset + row0 + rows - 1; // causal: nothing past the last query's position

    for k0 in (0..=last_visible_key).step_by(K_BLOCK) {
        let k1 = (k0 + K_BLOCK).min(last_visible_key + 1);
        let mut scores = q_tile.dot(&k_head.slice(s![k0..k1, ..]).t()); // [rows, k1-k0]
        for (r, mut score_row) in scores.rows_mut().into_iter().enumerate() {
            let position = mask.q_offset + row0 + r;
            for (c, s) in score_row.iter_mut().enumerate() {
                let key = k0 + c;
                let visible = key <= position && mask.segment_ids.is_none_or(|seg| seg[key] == seg[position]);
                *s = if visible { *s * scale } else { f32::NEG_INFINITY };
            }
            let block_max = score_row.fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let new_max = running_max[r].max(block_max);
            if new_max == f32::NEG_INFINITY {
                score_row.fill(0.0); // nothing visible yet in this row
                continue;
            }
            let correction = (running_max[r] - new_max).exp(); // exp(−∞) = 0 on the first visible block
            score_row.mapv_inplace(|s| (s - new_max).exp());
            running_sum[r] = running_sum[r] * correction + score_row.sum();
            running_max[r] = new_max;
            acc.row_mut(r).mapv_inplace(|a| a * correction);
        }
        acc += &scores.dot(&v_head.slice(s![k0..k1, ..])); // [rows, d]
    }
    for (mut row, &l) in acc.rows_mut().into_iter().zip(&running_sum) {
        row.mapv_inplace(|a| a / l);
    }
    acc
}
// ANCHOR_END: attention_forward

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
        for i in 0..q.nrows() {
            let position = mask.q_offset + i;
            let visible: Vec<usize> = (0..=position)
                .filter(|&j| mask.segment_ids.is_none_or(|seg| seg[j] == seg[position]))
                .collect();
            let scores: Vec<f64> = visible
                .iter()
                .map(|&j| {
                    let dot: f64 = (0..d).map(|c| q[[i, h * d + c]] as f64 * k[[j, g * d + c]] as f64).sum();
                    dot * shape.scale as f64
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::*;

    fn random(rows: usize, cols: usize, rng: &mut Rng) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |_| rng.normal() as f32)
    }

    fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn tiled_equals_naive(tq in 1usize..150, extra_keys in 0usize..140, kv in 1usize..3, group in 1usize..3,
                              d in 1usize..9, packed in any::<bool>(), seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let shape = AttentionShape { n_heads: kv * group, n_kv_heads: kv, head_dim: d * 2,
                                         scale: 1.0 / ((d * 2) as f32).sqrt() };
            let tk = tq + extra_keys;
            let q = random(tq, shape.n_heads * shape.head_dim, &mut rng);
            let k = random(tk, kv * shape.head_dim, &mut rng);
            let v = random(tk, kv * shape.head_dim, &mut rng);
            // segments of random length 1..40, as packing produces
            let mut segments = Vec::with_capacity(tk);
            let mut id = 0;
            while segments.len() < tk {
                let len = 1 + rng.below(40) as usize;
                segments.extend(std::iter::repeat_n(id, len.min(tk - segments.len())));
                id += 1;
            }
            let mask = AttentionMask { q_offset: extra_keys, segment_ids: packed.then_some(segments.as_slice()) };
            let tiled = causal_attention(q.view(), k.view(), v.view(), &shape, &mask);
            let naive = naive_causal_attention(q.view(), k.view(), v.view(), &shape, &mask);
            prop_assert!(max_abs_diff(&tiled, &naive) < 1e-5, "max diff {}", max_abs_diff(&tiled, &naive));
        }
    }

    #[test]
    fn first_query_copies_the_first_value() {
        let mut rng = Rng::new(1);
        let shape = AttentionShape { n_heads: 2, n_kv_heads: 1, head_dim: 4, scale: 0.5 };
        let (q, k, v) = (random(5, 8, &mut rng), random(5, 4, &mut rng), random(5, 4, &mut rng));
        let out = causal_attention(q.view(), k.view(), v.view(), &shape, &AttentionMask::default());
        for h in 0..2 {
            for c in 0..4 {
                assert!((out[[0, h * 4 + c]] - v[[0, c]]).abs() < 1e-6);
            }
        }
    }
}
