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
//!
//! The forward also returns lse = m + ln l per query row and head; the backward (FlashAttention-2) uses it to
//! recompute each probability tile instead of storing the T×T matrix.

use super::attention_scores::HeadScores;
use super::fastmath;
use super::matmul::{matmul, matmul_into, scaled_matmul_into};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Zip, s};
use rayon::prelude::*;

pub const Q_BLOCK: usize = 64;
pub const K_BLOCK: usize = 128;

// ANCHOR: attention_mask
/// The head layout of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k; 1/√head_dim for Llama.
    pub scale: f32,
    /// ALiBi's per-head linear bias on the scores (Baichuan2-13B; see `attention_scores`).
    pub alibi: bool,
    /// Clamp the scaled scores to ±this before the mask (Aquila2 without xformers).
    pub score_clamp: Option<f32>,
}

impl AttentionShape {
    /// Plain scaled dot-product scores: no ALiBi, no clamp.
    pub fn new(n_heads: usize, n_kv_heads: usize, head_dim: usize, scale: f32) -> Self {
        AttentionShape { n_heads, n_kv_heads, head_dim, scale, alibi: false, score_clamp: None }
    }
}

/// Which keys each query may see.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionMask<'a> {
    /// Query row i sits at key position `q_offset + i` and sees keys `0..=q_offset + i`
    /// (0 for a full sequence; the cache length when decoding with a KV cache).
    pub q_offset: usize,
    /// Packed batches: one segment id per key position; a query only sees keys of its own segment.
    pub segment_ids: Option<&'a [u32]>,
    /// Sliding-window attention (Mistral, Qwen2): a query sees only the last `window` positions, itself
    /// included (key j is visible from position p iff p − j < window).
    pub window: Option<usize>,
}

impl AttentionMask<'_> {
    /// The earliest key the window lets `position` see (0 without a window).
    fn window_start(&self, position: usize) -> usize {
        self.window.map_or(0, |w| (position + 1).saturating_sub(w))
    }
}
// ANCHOR_END: attention_mask

// ANCHOR: attention_forward
/// q: [Tq, H·d], k, v: [Tk, KV·d] → [Tq, H·d]
pub fn causal_attention(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    shape: &AttentionShape,
    mask: &AttentionMask,
) -> Array2<f32> {
    causal_attention_with_lse(q, k, v, shape, mask).0
}

// ANCHOR: attention_tasks
/// The forward kernel. Besides the output it returns, per query row and head, the log-sum-exp of the visible
/// scores, lse = m + ln l — all the backward needs to recompute the probabilities P = exp(s − lse).
/// q: [Tq, H·d], k, v: [Tk, KV·d] → (out [Tq, H·d], lse [Tq, H])
pub fn causal_attention_with_lse(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    shape: &AttentionShape,
    mask: &AttentionMask,
) -> (Array2<f32>, Array2<f32>) {
    check_shapes(q, k, v, shape, mask);
    let AttentionShape { n_heads, n_kv_heads, head_dim: d, .. } = *shape;
    let tq = q.nrows();
    let group = n_heads / n_kv_heads;
    let q_blocks = tq.div_ceil(Q_BLOCK);
    let spans = SegmentSpans::of(mask);

    // One task per (head, query block); each returns its [rows, d] slice of the output and its [rows] of lse.
    let tiles: Vec<(usize, usize, Array2<f32>, Array1<f32>)> = (0..n_heads * q_blocks)
        .into_par_iter()
        .map(|task| {
            let (h, qb) = (task / q_blocks, task % q_blocks);
            let g = h / group;
            let rows = qb * Q_BLOCK..((qb + 1) * Q_BLOCK).min(tq);
            let q_tile = q.slice(s![rows.clone(), h * d..(h + 1) * d]);
            let k_head = k.slice(s![.., g * d..(g + 1) * d]);
            let v_head = v.slice(s![.., g * d..(g + 1) * d]);
            let scores = HeadScores::of(shape, h);
            let (out, lse) = attend_tile(q_tile, k_head, v_head, rows.start, &scores, mask, spans.as_ref());
            (h, rows.start, out, lse)
        })
        .collect();

    let mut out = Array2::zeros((tq, n_heads * d));
    let mut lse = Array2::zeros((tq, n_heads));
    for (h, row0, tile, tile_lse) in tiles {
        out.slice_mut(s![row0..row0 + tile.nrows(), h * d..(h + 1) * d]).assign(&tile);
        lse.slice_mut(s![row0..row0 + tile.nrows(), h]).assign(&tile_lse);
    }
    (out, lse)
}
// ANCHOR_END: attention_tasks

fn check_shapes(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    shape: &AttentionShape,
    mask: &AttentionMask,
) {
    let AttentionShape { n_heads, n_kv_heads, head_dim: d, .. } = *shape;
    assert_eq!(q.ncols(), n_heads * d, "attention: q width");
    assert_eq!(k.ncols(), n_kv_heads * d, "attention: k width");
    assert_eq!(v.dim(), k.dim(), "attention: k and v differ");
    assert!(mask.q_offset + q.nrows() <= k.nrows(), "attention: queries run past the keys");
    assert!(n_heads % n_kv_heads == 0, "attention: heads must be a multiple of KV heads");
    if let Some(seg) = mask.segment_ids {
        assert_eq!(seg.len(), k.nrows(), "attention: one segment id per key");
    }
}

// ANCHOR: segment_spans
/// Where each position's segment starts and ends, when every segment is one contiguous run (as packing
/// produces). Tiles then skip the key blocks of other documents instead of computing and masking them, so a
/// batch packed into one long row costs what its documents cost on their own.
struct SegmentSpans {
    start: Vec<usize>,
    end: Vec<usize>,
}

impl SegmentSpans {
    fn of(mask: &AttentionMask) -> Option<Self> {
        let seg = mask.segment_ids?;
        let n = seg.len();
        let (mut start, mut end) = (vec![0; n], vec![0; n]);
        let mut seen = std::collections::HashSet::new();
        let mut i = 0;
        while i < n {
            let mut j = i;
            while j + 1 < n && seg[j + 1] == seg[i] {
                j += 1;
            }
            if !seen.insert(seg[i]) {
                return None; // a segment id used by two separate runs: fall back to masking only
            }
            start[i..=j].fill(i);
            end[i..=j].fill(j);
            i = j + 1;
        }
        Some(SegmentSpans { start, end })
    }
}
// ANCHOR_END: segment_spans

/// Turn one query row's q·k over keys k0.. into scores in place and set the invisible ones to −∞; returns the
/// visible span as indices into `row`. With contiguous segments (or none) the visible keys are one range,
/// [segment start, position], so whole runs are filled without a per-key test.
fn mask_row(
    row: &mut [f32],
    k0: usize,
    position: usize,
    scores: &HeadScores,
    mask: &AttentionMask,
    spans: Option<&SegmentSpans>,
) -> (usize, usize) {
    let k1 = k0 + row.len();
    let range = match (mask.segment_ids, spans) {
        (None, _) => Some((mask.window_start(position), position + 1)),
        (Some(_), Some(sp)) => Some((sp.start[position].max(mask.window_start(position)), position + 1)),
        (Some(_), None) => None, // a segment split into several runs: test each key
    };
    match range {
        Some((first, end)) => {
            let lo = first.clamp(k0, k1) - k0;
            let hi = end.clamp(k0, k1) - k0;
            let hi = hi.max(lo);
            row[..lo].fill(f32::NEG_INFINITY);
            if scores.is_plain() {
                row[lo..hi].iter_mut().for_each(|s| *s *= scores.scale);
            } else {
                row[lo..hi].iter_mut().enumerate().for_each(|(c, s)| *s = scores.score(*s, position, k0 + lo + c));
            }
            row[hi..].fill(f32::NEG_INFINITY);
            (lo, hi)
        }
        None => {
            for (c, s) in row.iter_mut().enumerate() {
                *s = if visible(mask, position, k0 + c) {
                    scores.score(*s, position, k0 + c)
                } else {
                    f32::NEG_INFINITY
                };
            }
            (0, row.len())
        }
    }
}

// ANCHOR: visible
/// Whether query row `position` (a key position) may see key `key`: causal, within its window and its segment.
fn visible(mask: &AttentionMask, position: usize, key: usize) -> bool {
    key <= position
        && mask.window.is_none_or(|w| position - key < w)
        && mask.segment_ids.is_none_or(|seg| seg[key] == seg[position])
}
// ANCHOR_END: visible

// ANCHOR: attend_tile
/// One query tile of one head against all the keys it may see, with the online softmax.
/// q_tile: [rows, d] starting at query row `row0`; k_head, v_head: [Tk, d] → (out [rows, d], lse [rows]).
/// With contiguous segments, key blocks before the first row's segment are skipped altogether.
fn attend_tile(
    q_tile: ArrayView2<f32>,
    k_head: ArrayView2<f32>,
    v_head: ArrayView2<f32>,
    row0: usize,
    head: &HeadScores,
    mask: &AttentionMask,
    spans: Option<&SegmentSpans>,
) -> (Array2<f32>, Array1<f32>) {
    // packed rows: no key before the first query's segment (or window) is visible to any query of the tile
    let first_row = mask.q_offset + row0;
    let first_key = spans.map_or(0, |sp| sp.start[first_row]).max(mask.window_start(first_row));
    let rows = q_tile.nrows();
    let mut running_max = Array1::from_elem(rows, f32::NEG_INFINITY);
    let mut running_sum = Array1::<f32>::zeros(rows);
    let mut acc = Array2::<f32>::zeros((rows, q_tile.ncols()));
    let last_visible_key = mask.q_offset + row0 + rows - 1; // causal: nothing past the last query's position

    for k0 in (first_key..=last_visible_key).step_by(K_BLOCK) {
        let k1 = (k0 + K_BLOCK).min(last_visible_key + 1);
        let mut scores = matmul(q_tile, k_head.slice(s![k0..k1, ..]).t()); // [rows, k1-k0]
        for (r, mut score_row) in scores.rows_mut().into_iter().enumerate() {
            let position = mask.q_offset + row0 + r;
            let row = score_row.as_slice_mut().expect("a fresh score tile is contiguous");
            let (lo, hi) = mask_row(row, k0, position, head, mask, spans); // visible: row[lo..hi]
            let block_max = row[lo..hi].iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let new_max = running_max[r].max(block_max);
            if new_max == f32::NEG_INFINITY {
                row.fill(0.0); // nothing visible yet in this row
                continue;
            }
            let correction = fastmath::exp(running_max[r] - new_max); // exp(−∞) = 0 on the first visible block
            row.iter_mut().for_each(|s| *s = fastmath::exp(*s - new_max)); // masked: exp(−∞) = 0
            running_sum[r] = running_sum[r] * correction + row[lo..hi].iter().sum::<f32>();
            running_max[r] = new_max;
            if correction != 1.0 {
                acc.row_mut(r).mapv_inplace(|a| a * correction);
            }
        }
        matmul_into(scores.view(), v_head.slice(s![k0..k1, ..]), 1.0, acc.view_mut()); // acc += P·V: [rows, d]
    }
    for (mut row, &l) in acc.rows_mut().into_iter().zip(&running_sum) {
        row.mapv_inplace(|a| a / l);
    }
    // Every query sees at least its own key, so l > 0 and lse is finite.
    let lse = Zip::from(&running_max).and(&running_sum).map_collect(|&m, &l| m + l.ln());
    (acc, lse)
}
// ANCHOR_END: attend_tile
// ANCHOR_END: attention_forward

// ANCHOR: attention_backward
/// FlashAttention-2's backward (Dao 2023), per head. With P = softmax(S), S = q·kᵀ·scale, O = P·V:
///
///   dV = Pᵀ·dO,   dP = dO·Vᵀ,   dS = P ∘ (dP − D)  with  Dᵢ = Σⱼ Pᵢⱼ·dPᵢⱼ = rowsum(dO ∘ O)ᵢ,
///   dQ = dS·K·scale,   dK = dSᵀ·Q·scale
///
/// (the softmax Jacobian: ∂L/∂sᵢⱼ = pᵢⱼ·(∂L/∂pᵢⱼ − Σₖ pᵢₖ·∂L/∂pᵢₖ)). P is never stored: each
/// Q_BLOCK × K_BLOCK tile is recomputed as exp(S·scale − lse) from the forward's lse, so memory stays O(T) per
/// head. Key blocks are the outer loop (their dK, dV tiles accumulate in place) and query blocks the inner one.
/// Rayon runs one task per query head; with GQA the dK, dV of a KV head are the sum over its group of query
/// heads, added in head order so the result does not depend on the thread count.
///
/// dout, q, out: [Tq, H·d], k, v: [Tk, KV·d], lse: [Tq, H] → (dq [Tq, H·d], dk [Tk, KV·d], dv [Tk, KV·d])
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_backward(
    dout: ArrayView2<f32>,
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    out: ArrayView2<f32>,
    lse: ArrayView2<f32>,
    shape: &AttentionShape,
    mask: &AttentionMask,
) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
    check_shapes(q, k, v, shape, mask);
    assert_eq!(dout.dim(), q.dim(), "attention_backward: dout shape");
    assert_eq!(out.dim(), q.dim(), "attention_backward: out shape");
    assert_eq!(lse.dim(), (q.nrows(), shape.n_heads), "attention_backward: lse shape");
    let AttentionShape { n_heads, n_kv_heads, head_dim: d, .. } = *shape;
    let group = n_heads / n_kv_heads;
    let cols = |h: usize| h * d..(h + 1) * d;
    let spans = SegmentSpans::of(mask);

    let per_head: Vec<(Array2<f32>, Array2<f32>, Array2<f32>)> = (0..n_heads)
        .into_par_iter()
        .map(|h| {
            let g = h / group;
            head_backward(
                dout.slice(s![.., cols(h)]),
                q.slice(s![.., cols(h)]),
                k.slice(s![.., cols(g)]),
                v.slice(s![.., cols(g)]),
                out.slice(s![.., cols(h)]),
                lse.column(h),
                &HeadScores::of(shape, h),
                mask,
                spans.as_ref(),
            )
        })
        .collect();

    let mut dq = Array2::zeros(q.raw_dim());
    let mut dk = Array2::zeros(k.raw_dim());
    let mut dv = Array2::zeros(v.raw_dim());
    for (h, (dq_h, dk_h, dv_h)) in per_head.into_iter().enumerate() {
        let g = h / group;
        dq.slice_mut(s![.., cols(h)]).assign(&dq_h);
        let mut dk_g = dk.slice_mut(s![.., cols(g)]);
        dk_g += &dk_h;
        let mut dv_g = dv.slice_mut(s![.., cols(g)]);
        dv_g += &dv_h;
    }
    (dq, dk, dv)
}

/// One query head against its KV head. do_h, q_h, o_h: [Tq, d], k_h, v_h: [Tk, d], lse_h: [Tq]
/// → (dq [Tq, d], dk [Tk, d], dv [Tk, d]); keys no query can see get zero gradient.
#[allow(clippy::too_many_arguments)]
fn head_backward(
    do_h: ArrayView2<f32>,
    q_h: ArrayView2<f32>,
    k_h: ArrayView2<f32>,
    v_h: ArrayView2<f32>,
    o_h: ArrayView2<f32>,
    lse_h: ArrayView1<f32>,
    scores: &HeadScores,
    mask: &AttentionMask,
    spans: Option<&SegmentSpans>,
) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
    let scale = scores.scale;
    let (tq, d) = q_h.dim();
    let tk = k_h.nrows();
    // D = rowsum(dO ∘ O): [Tq]
    let delta: Array1<f32> = Zip::from(do_h.rows())
        .and(o_h.rows())
        .map_collect(|a, b| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>() as f32);
    let mut dq = Array2::<f32>::zeros((tq, d));
    let mut dk = Array2::<f32>::zeros((tk, d));
    let mut dv = Array2::<f32>::zeros((tk, d));
    let last_visible_key = mask.q_offset + tq - 1;

    for k0 in (0..=last_visible_key).step_by(K_BLOCK) {
        let k1 = (k0 + K_BLOCK).min(last_visible_key + 1);
        let (k_blk, v_blk) = (k_h.slice(s![k0..k1, ..]), v_h.slice(s![k0..k1, ..])); // [kb, d]
        // Causality: query row i sees key k0 only if q_offset + i ≥ k0; earlier query blocks are skipped.
        let first_block = k0.saturating_sub(mask.q_offset) / Q_BLOCK;
        // Packed rows: no query past the end of the last key's segment sees this block; with a window, none
        // further than `window` positions past its last key.
        let segment_end = spans.map_or(usize::MAX, |sp| sp.end[k1 - 1] + 1);
        let window_end = mask.window.map_or(usize::MAX, |w| k1 - 1 + w);
        let query_end = segment_end.min(window_end).saturating_sub(mask.q_offset).min(tq);
        for r0 in (first_block * Q_BLOCK..query_end).step_by(Q_BLOCK) {
            let r1 = (r0 + Q_BLOCK).min(tq);
            let (q_tile, do_tile) = (q_h.slice(s![r0..r1, ..]), do_h.slice(s![r0..r1, ..])); // [qb, d]
            // P = exp(S·scale − lse), zero where masked: [qb, kb]
            let mut p = matmul(q_tile, k_blk.t());
            let dots = scores.clamp.is_some().then(|| p.clone()); // where the clamp binds, dS = 0
            for (r, mut p_row) in p.rows_mut().into_iter().enumerate() {
                let position = mask.q_offset + r0 + r;
                let row_lse = lse_h[r0 + r];
                let row = p_row.as_slice_mut().expect("a fresh tile is contiguous");
                mask_row(row, k0, position, scores, mask, spans); // masked keys become −∞, so exp gives 0
                row.iter_mut().for_each(|x| *x = fastmath::exp(*x - row_lse));
            }
            // dV += Pᵀ·dO: [kb, d]
            matmul_into(p.t(), do_tile, 1.0, dv.slice_mut(s![k0..k1, ..]));
            // dS = P ∘ (dO·Vᵀ − D): [qb, kb]
            let mut ds = matmul(do_tile, v_blk.t());
            Zip::from(ds.rows_mut()).and(p.rows()).and(delta.slice(s![r0..r1])).for_each(|mut ds_row, p_row, &dr| {
                Zip::from(&mut ds_row).and(&p_row).for_each(|x, &pv| *x = pv * (*x - dr));
            });
            if let Some(dots) = dots {
                Zip::from(&mut ds).and(&dots).for_each(|x, &dot| *x = if scores.clamp_binds(dot) { 0.0 } else { *x });
            }
            // dQ += dS·K·scale: [qb, d];  dK += dSᵀ·Q·scale: [kb, d]
            scaled_matmul_into(ds.view(), k_blk, scale, 1.0, dq.slice_mut(s![r0..r1, ..]));
            scaled_matmul_into(ds.t(), q_tile, scale, 1.0, dk.slice_mut(s![k0..k1, ..]));
        }
    }
    (dq, dk, dv)
}
// ANCHOR_END: attention_backward

pub use super::attention_reference::naive_causal_attention;

#[cfg(test)]
mod tests {
    use super::super::attention_reference::naive_backward;
    use super::*;
    use crate::nn::grad_check::{check, random, weighted_sum};
    use crate::rng::Rng;
    use proptest::prelude::*;

    fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn tiled_equals_naive(tq in 1usize..150, extra_keys in 0usize..140, kv in 1usize..3, group in 1usize..3,
                              d in 1usize..9, packed in any::<bool>(), window in prop::option::of(1usize..80),
                              alibi in any::<bool>(), clamp in prop::option::of(0.3f32..2.0), seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let shape = AttentionShape { alibi, score_clamp: clamp,
                                         ..AttentionShape::new(kv * group, kv, d * 2, 1.0 / ((d * 2) as f32).sqrt()) };
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
            let mask = AttentionMask { q_offset: extra_keys, segment_ids: packed.then_some(segments.as_slice()), window };
            let tiled = causal_attention(q.view(), k.view(), v.view(), &shape, &mask);
            let naive = naive_causal_attention(q.view(), k.view(), v.view(), &shape, &mask);
            prop_assert!(max_abs_diff(&tiled, &naive) < 1e-5, "max diff {}", max_abs_diff(&tiled, &naive));
        }
    }

    /// Segments of random length 1..max_len covering `tk` keys, as packing produces.
    fn random_segments(tk: usize, max_len: u64, rng: &mut Rng) -> Vec<u32> {
        let mut segments = Vec::with_capacity(tk);
        let mut id = 0;
        while segments.len() < tk {
            let len = 1 + rng.below(max_len) as usize;
            segments.extend(std::iter::repeat_n(id, len.min(tk - segments.len())));
            id += 1;
        }
        segments
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn backward_matches_finite_differences(tq in 1usize..6, extra_keys in 0usize..4, kv in 1usize..3,
                                               group in 1usize..3, half in 1usize..3, packed in any::<bool>(),
                                               window in prop::option::of(1usize..5), alibi in any::<bool>(),
                                               seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let d = 2 * half;
            let shape = AttentionShape { alibi, ..AttentionShape::new(kv * group, kv, d, 1.0 / (d as f32).sqrt()) };
            let tk = tq + extra_keys;
            let q = random(tq, shape.n_heads * d, &mut rng);
            let k = random(tk, kv * d, &mut rng);
            let v = random(tk, kv * d, &mut rng);
            let segments = random_segments(tk, 4, &mut rng);
            let mask = AttentionMask { q_offset: extra_keys, segment_ids: packed.then_some(segments.as_slice()), window };
            let r = random(tq, shape.n_heads * d, &mut rng);
            let (out, lse) = causal_attention_with_lse(q.view(), k.view(), v.view(), &shape, &mask);
            let (dq, dk, dv) = causal_attention_backward(r.view(), q.view(), k.view(), v.view(), out.view(), lse.view(),
                                                         &shape, &mask);
            let objective = |q: &Array2<f32>, k: &Array2<f32>, v: &Array2<f32>| {
                weighted_sum(&causal_attention(q.view(), k.view(), v.view(), &shape, &mask), &r)
            };
            check("dq", &q, &dq, |x| objective(x, &k, &v)).map_err(TestCaseError::fail)?;
            check("dk", &k, &dk, |x| objective(&q, x, &v)).map_err(TestCaseError::fail)?;
            check("dv", &v, &dv, |x| objective(&q, &k, x)).map_err(TestCaseError::fail)?;
        }

        /// Shapes that cross the Q_BLOCK and K_BLOCK tile edges, against the f64 naive backward.
        #[test]
        fn tiled_backward_equals_naive(tq in 1usize..150, extra_keys in 0usize..140, kv in 1usize..3,
                                       group in 1usize..3, d in 1usize..5, packed in any::<bool>(),
                                       window in prop::option::of(1usize..80), alibi in any::<bool>(),
                                       clamp in prop::option::of(0.3f32..2.0), seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let shape = AttentionShape { alibi, score_clamp: clamp,
                                         ..AttentionShape::new(kv * group, kv, d * 2, 1.0 / ((d * 2) as f32).sqrt()) };
            let tk = tq + extra_keys;
            let q = random(tq, shape.n_heads * shape.head_dim, &mut rng);
            let k = random(tk, kv * shape.head_dim, &mut rng);
            let v = random(tk, kv * shape.head_dim, &mut rng);
            let dout = random(tq, shape.n_heads * shape.head_dim, &mut rng);
            let segments = random_segments(tk, 40, &mut rng);
            let mask = AttentionMask { q_offset: extra_keys, segment_ids: packed.then_some(segments.as_slice()), window };
            let (out, lse) = causal_attention_with_lse(q.view(), k.view(), v.view(), &shape, &mask);
            let got = causal_attention_backward(dout.view(), q.view(), k.view(), v.view(), out.view(), lse.view(),
                                                &shape, &mask);
            let want = naive_backward(&dout, &q, &k, &v, &shape, &mask);
            for (name, g, w) in [("dq", &got.0, &want.0), ("dk", &got.1, &want.1), ("dv", &got.2, &want.2)] {
                let scale = w.iter().fold(1.0f32, |m, x| m.max(x.abs()));
                let diff = max_abs_diff(g, w);
                prop_assert!(diff <= 1e-5 * scale, "{}: max |Δ| {} (max |grad| {})", name, diff, scale);
            }
        }
    }

    #[test]
    fn lse_is_the_log_normaliser() {
        // one head, d = 1, scale 1: lse of row i = ln Σ_{j≤i} exp(q_i·k_j)
        let shape = AttentionShape::new(1, 1, 1, 1.0);
        let q = Array2::from_shape_vec((3, 1), vec![0.5f32, -1.0, 2.0]).unwrap();
        let k = Array2::from_shape_vec((3, 1), vec![1.0f32, 2.0, -0.5]).unwrap();
        let (_, lse) = causal_attention_with_lse(q.view(), k.view(), k.view(), &shape, &AttentionMask::default());
        for i in 0..3 {
            let want = (0..=i).map(|j| (q[[i, 0]] as f64 * k[[j, 0]] as f64).exp()).sum::<f64>().ln();
            assert!((lse[[i, 0]] as f64 - want).abs() < 1e-6, "row {i}: {} vs {want}", lse[[i, 0]]);
        }
    }

    #[test]
    fn first_query_copies_the_first_value() {
        let mut rng = Rng::new(1);
        let shape = AttentionShape::new(2, 1, 4, 0.5);
        let (q, k, v) = (random(5, 8, &mut rng), random(5, 4, &mut rng), random(5, 4, &mut rng));
        let out = causal_attention(q.view(), k.view(), v.view(), &shape, &AttentionMask::default());
        for h in 0..2 {
            for c in 0..4 {
                assert!((out[[0, h * 4 + c]] - v[[0, c]]).abs() < 1e-6);
            }
        }
    }
}
