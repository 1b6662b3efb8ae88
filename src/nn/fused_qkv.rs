//! One fused q/k/v projection, and how its output columns split into q, k and v.
//!
//! Some checkpoints store the three attention projections as one matrix (GPT-BigCode's `c_attn`, GPT-NeoX's
//! `query_key_value`, Qwen-1's `c_attn`, ChatGLM's `query_key_value`), so one product gives a row
//! [T, (H + 2·KV)·d]. The layouts differ only in how the heads are grouped. Cut the row into `groups` equal
//! chunks; each chunk holds H/g query heads, then KV/g key heads, then KV/g value heads:
//!
//!   chunk c = [ q heads c·H/g .. (c+1)·H/g | k heads c·KV/g .. | v heads c·KV/g .. ]      (each head d wide)
//!
//! - g = 1: [q | k | v] in blocks (GPT-BigCode multi-query, Qwen-1, ChatGLM, Baichuan's `W_pack`);
//! - g = H = KV: per head [qₕ, kₕ, vₕ] (GPT-NeoX's `view(heads, 3·d)`; GPT-BigCode without multi-query).
//!
//! The split is a permutation of columns, so its backward is the inverse permutation: `join`.

use crate::backend::AttentionShape;
use ndarray::{Array2, ArrayView2, Axis, Zip, s};

// ANCHOR: fused_qkv
/// The layout of a fused q/k/v projection's output: the number of head groups (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FusedQkv {
    pub groups: usize,
}

/// Column widths of one group's q, k and v parts.
fn part_widths(shape: &AttentionShape, layout: FusedQkv) -> (usize, usize) {
    let g = layout.groups;
    assert!(
        g > 0 && shape.n_heads % g == 0 && shape.n_kv_heads % g == 0,
        "fused qkv: {g} groups do not divide {} query and {} key/value heads",
        shape.n_heads,
        shape.n_kv_heads
    );
    (shape.n_heads / g * shape.head_dim, shape.n_kv_heads / g * shape.head_dim)
}

/// qkv: [T, (H + 2·KV)·d] → (q [T, H·d], k [T, KV·d], v [T, KV·d])
pub fn split(
    qkv: ArrayView2<f32>,
    shape: &AttentionShape,
    layout: FusedQkv,
) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
    let (qw, kw) = part_widths(shape, layout);
    let chunk = qw + 2 * kw;
    assert_eq!(qkv.ncols(), layout.groups * chunk, "fused qkv: width {} is not (H + 2·KV)·d", qkv.ncols());
    let t = qkv.nrows();
    let (mut q, mut k, mut v) = (
        Array2::zeros((t, shape.n_heads * shape.head_dim)),
        Array2::zeros((t, kw * layout.groups)),
        Array2::zeros((t, kw * layout.groups)),
    );
    Zip::from(q.axis_iter_mut(Axis(0)))
        .and(k.axis_iter_mut(Axis(0)))
        .and(v.axis_iter_mut(Axis(0)))
        .and(qkv.axis_iter(Axis(0)))
        .par_for_each(|mut q, mut k, mut v, row| {
            for c in 0..layout.groups {
                let at = c * chunk;
                q.slice_mut(s![c * qw..(c + 1) * qw]).assign(&row.slice(s![at..at + qw]));
                k.slice_mut(s![c * kw..(c + 1) * kw]).assign(&row.slice(s![at + qw..at + qw + kw]));
                v.slice_mut(s![c * kw..(c + 1) * kw]).assign(&row.slice(s![at + qw + kw..at + chunk]));
            }
        });
    (q, k, v)
}

/// The inverse of [`split`] (and its backward): (dq, dk, dv) → dqkv [T, (H + 2·KV)·d].
pub fn join(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    shape: &AttentionShape,
    layout: FusedQkv,
) -> Array2<f32> {
    let (qw, kw) = part_widths(shape, layout);
    let chunk = qw + 2 * kw;
    assert_eq!((q.ncols(), k.ncols(), v.ncols()), (qw * layout.groups, kw * layout.groups, kw * layout.groups));
    let mut qkv = Array2::zeros((q.nrows(), layout.groups * chunk));
    Zip::from(qkv.axis_iter_mut(Axis(0)))
        .and(q.axis_iter(Axis(0)))
        .and(k.axis_iter(Axis(0)))
        .and(v.axis_iter(Axis(0)))
        .par_for_each(|mut row, q, k, v| {
            for c in 0..layout.groups {
                let at = c * chunk;
                row.slice_mut(s![at..at + qw]).assign(&q.slice(s![c * qw..(c + 1) * qw]));
                row.slice_mut(s![at + qw..at + qw + kw]).assign(&k.slice(s![c * kw..(c + 1) * kw]));
                row.slice_mut(s![at + qw + kw..at + chunk]).assign(&v.slice(s![c * kw..(c + 1) * kw]));
            }
        });
    qkv
}
// ANCHOR_END: fused_qkv

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::grad_check::{check, random, weighted_sum};
    use crate::rng::Rng;
    use proptest::prelude::*;

    fn shape(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> AttentionShape {
        AttentionShape::new(n_heads, n_kv_heads, head_dim, 1.0)
    }

    #[test]
    fn per_head_interleave_is_gpt_neox_view() {
        // GPT-NeoX: qkv.view(T, heads, 3·d), then q, k, v = the three d-wide thirds of each head
        let (heads, d) = (3, 2);
        let qkv = Array2::from_shape_fn((1, 3 * heads * d), |(_, c)| c as f32);
        let (q, k, v) = split(qkv.view(), &shape(heads, heads, d), FusedQkv { groups: heads });
        for h in 0..heads {
            for i in 0..d {
                assert_eq!(q[[0, h * d + i]], (h * 3 * d + i) as f32);
                assert_eq!(k[[0, h * d + i]], (h * 3 * d + d + i) as f32);
                assert_eq!(v[[0, h * d + i]], (h * 3 * d + 2 * d + i) as f32);
            }
        }
    }

    #[test]
    fn one_group_is_blocks_as_in_multi_query() {
        // GPT-BigCode multi-query: [q (H·d) | k (d) | v (d)]
        let (heads, d) = (4, 3);
        let qkv = Array2::from_shape_fn((2, (heads + 2) * d), |(t, c)| (100 * t + c) as f32);
        let (q, k, v) = split(qkv.view(), &shape(heads, 1, d), FusedQkv { groups: 1 });
        assert_eq!(q, qkv.slice(s![.., ..heads * d]));
        assert_eq!(k, qkv.slice(s![.., heads * d..(heads + 1) * d]));
        assert_eq!(v, qkv.slice(s![.., (heads + 1) * d..]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn join_inverts_split_and_is_its_backward(t in 1usize..4, kv in 1usize..4, rep in 1usize..3, d in 1usize..4,
                                                  per_group in any::<bool>(), seed in any::<u64>()) {
            let shape = shape(kv * rep, kv, d);
            let layout = FusedQkv { groups: if per_group { kv } else { 1 } };
            let mut rng = Rng::new(seed);
            let qkv = random(t, (kv * rep + 2 * kv) * d, &mut rng);
            let (q, k, v) = split(qkv.view(), &shape, layout);
            prop_assert_eq!(join(q.view(), k.view(), v.view(), &shape, layout), qkv.clone());
            let (rq, rk, rv) = (random(t, q.ncols(), &mut rng), random(t, kv * d, &mut rng), random(t, kv * d, &mut rng));
            let dqkv = join(rq.view(), rk.view(), rv.view(), &shape, layout);
            check("dqkv", &qkv, &dqkv, |x| {
                let (q, k, v) = split(x.view(), &shape, layout);
                weighted_sum(&q, &rq) + weighted_sum(&k, &rk) + weighted_sum(&v, &rv)
            })
            .map_err(TestCaseError::fail)?;
        }
    }
}
