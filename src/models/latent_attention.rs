//! Multi-head Latent Attention (DeepSeek-V2, Liu et al., 2024): keys and values of every head come out of
//! one small latent vector per token, and only that latent (plus one shared rotated key) needs caching.
//!
//! Per token x (the layer's normed input), H heads, n = `qk_nope_head_dim`, r_p = `qk_rope_head_dim`,
//! v = `v_head_dim`, r = `kv_lora_rank`:
//!
//!   q        = q_b(norm_q(q_a(x)))  or  q_proj(x)                [H·(n + r_p)]  head h = [q_nope | q_pe]
//!   [c | kₚ] = kv_a(x)                                           [r + r_p]
//!   [k_nope | v] per head = kv_b(norm_kv(c))                      [H·(n + v)]
//!   score(h) = (q_nope·k_nope + m²·rope(q_pe)·rope(kₚ)) · scale    (kₚ: one rotated key shared by all heads)
//!
//! The norms use ε = 1e-6 whatever `rms_norm_eps` says; m is YaRN's cos/sin factor, scale = (n + r_p)^-½
//! times YaRN's mscale². The checkpoint rotates consecutive pairs (q_pe[2i], q_pe[2i+1]); the dot product does
//! not care in which order a head's entries come, so each head is laid out as
//! [q_pe even entries | q_pe odd entries | q_nope]: the pairs become (i, i + r_p/2) — rotate-half over the
//! first r_p entries, what the `rope` op already does. The same layout for k; v is padded with zeros to the
//! head width (and q, k when v is wider) so the backend's attention sees one head size; the padding is cut
//! from the output before `o_proj`. Every rearrangement is a column gather (`nn::column_gather`).
//!
//! The KV cache holds norm_kv(c) [T, r] and the rotated kₚ [T, r_p] per layer — r + r_p numbers per token
//! instead of 2·H·(n + r_p) — and re-expands keys and values through kv_b at each step.

use super::decoder_config::DecoderConfig;
use super::layers::{Gradients, Linear, Norm, NormKind};
use crate::backend::{Backend, ReadBy};
use crate::io::safetensors::WeightStore;
use crate::nn::column_gather::{gather_columns, gather_columns_backward};
use anyhow::Result;
use ndarray::Array2;

// ANCHOR: latent_config
/// The latent attention's shape (DeepSeek-V2's config fields).
#[derive(Clone, Debug, PartialEq)]
pub struct LatentAttention {
    /// q through a rank-`q_rank` bottleneck with its own norm (`q_lora_rank`), or one projection (`None`).
    pub q_rank: Option<usize>,
    /// The latent's width (`kv_lora_rank`).
    pub kv_rank: usize,
    /// Per head: the q/k entries without position (`qk_nope_head_dim`), the rotated ones
    /// (`qk_rope_head_dim`), the value width (`v_head_dim`).
    pub nope_dim: usize,
    pub rope_dim: usize,
    pub v_dim: usize,
    /// YaRN's cos/sin factor (1 without YaRN).
    pub rope_factor: f32,
    /// The low-rank norms' ε.
    pub norm_eps: f32,
}

/// Where a latent-attention layer keeps its projections (relative to the layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatentNames {
    pub q: &'static str,
    pub q_a: &'static str,
    pub q_a_norm: &'static str,
    pub q_b: &'static str,
    pub kv_a: &'static str,
    pub kv_a_norm: &'static str,
    pub kv_b: &'static str,
}
// ANCHOR_END: latent_config

impl LatentAttention {
    /// The width the backend's attention sees per head: the q/k width, or v's where that is larger.
    pub fn head_width(&self) -> usize {
        (self.nope_dim + self.rope_dim).max(self.v_dim)
    }
}

/// The query projection: one matrix, or a low-rank pair with a norm between.
pub enum QueryProjection<B: Backend> {
    Direct(Linear<B>),
    LowRank { a: Linear<B>, norm: Norm<B>, b: Linear<B> },
}

/// One layer's latent q/k/v projections and the column layouts that turn them into attention heads.
pub struct LatentQkv<B: Backend> {
    pub query: QueryProjection<B>,
    /// kv_a_proj_with_mqa: x → [c | kₚ]
    pub kv_a: Linear<B>,
    pub kv_norm: Norm<B>,
    /// kv_b_proj: norm(c) → [k_nope | v] per head
    pub kv_b: Linear<B>,
    layout: HeadLayout,
}

/// Two tensors of a backend.
type Pair<B> = (<B as Backend>::Tensor, <B as Backend>::Tensor);
/// x·Aᵀ of N projections that may carry an adapter.
type LoraActivations<B, const N: usize> = [Option<<B as Backend>::Tensor>; N];

/// A module of a latent layer, for the parameter walk.
pub enum LatentModule<'a, B: Backend> {
    Linear(&'a mut Linear<B>),
    Norm(&'a mut Norm<B>),
}

/// What the backward needs from the forward.
pub struct LatentCache<B: Backend> {
    /// q_a(x) and its norm (low-rank queries only).
    q_low: Option<Pair<B>>,
    c: B::Tensor,        // [T, r] the latent before its norm
    c_normed: B::Tensor, // [T, r] kv_b's input
    /// x·Aᵀ of each adapted projection: q_proj or q_a, q_b, kv_a, kv_b.
    lora_h: LoraActivations<B, 4>,
}

impl<B: Backend> LatentCache<B> {
    pub fn tensors(&self) -> impl Iterator<Item = &B::Tensor> {
        let q_low = self.q_low.iter().flat_map(|(a, n)| [a, n]);
        q_low.chain([&self.c, &self.c_normed]).chain(self.lora_h.iter().flatten())
    }
}

// ANCHOR: head_layout
/// Which source column fills each column of the attention's q, k and v (None: zero).
#[derive(Clone, Debug)]
struct HeadLayout {
    heads: usize,
    /// the head width w the attention sees
    width: usize,
    /// from q [H·(n + r_p)]: per head [pe even | pe odd | nope | pad]
    q: Vec<Option<usize>>,
    /// from kv_b's output [H·(n + v)]: per head [0 (r_p) | k_nope | pad]
    k_nope: Vec<Option<usize>>,
    /// from the rotated kₚ [r_p]: per head [kₚ | 0 …]
    k_rope: Vec<Option<usize>>,
    /// from kv_b's output: per head [v | pad]
    v: Vec<Option<usize>>,
    /// from the attention output [H·w]: per head its first v entries (None when w = v: nothing to cut)
    out: Option<Vec<Option<usize>>>,
    /// from kv_a's output [r + r_p]: the latent c, and kₚ de-interleaved [even | odd]
    latent: Vec<Option<usize>>,
    rope_in: Vec<Option<usize>>,
}

impl HeadLayout {
    fn new(la: &LatentAttention, heads: usize) -> Self {
        let (n, rp, v, w) = (la.nope_dim, la.rope_dim, la.v_dim, la.head_width());
        let de_interleaved =
            |base: usize| (0..rp / 2).map(move |i| base + 2 * i).chain((0..rp / 2).map(move |i| base + 2 * i + 1));
        let per_head = |f: &dyn Fn(usize) -> Vec<Option<usize>>| (0..heads).flat_map(f).collect::<Vec<_>>();
        let pad = |used: usize| std::iter::repeat_n(None, w - used);
        HeadLayout {
            heads,
            width: w,
            q: per_head(&|h| {
                let base = h * (n + rp);
                de_interleaved(base + n).map(Some).chain((base..base + n).map(Some)).chain(pad(n + rp)).collect()
            }),
            k_nope: per_head(&|h| {
                let base = h * (n + v);
                std::iter::repeat_n(None, rp).chain((base..base + n).map(Some)).chain(pad(n + rp)).collect()
            }),
            k_rope: per_head(&|_| (0..rp).map(Some).chain(pad(rp)).collect()),
            v: per_head(&|h| {
                let base = h * (n + v) + n;
                (base..base + v).map(Some).chain(pad(v)).collect()
            }),
            out: (w != v).then(|| per_head(&|h| (h * w..h * w + v).map(Some).collect())),
            latent: (0..la.kv_rank).map(Some).collect(),
            rope_in: de_interleaved(la.kv_rank).map(Some).collect(),
        }
    }
}
// ANCHOR_END: head_layout

/// The seeds of the latent projections' LoRA dropout (q/q_a 0, kv_a 1, kv_b 2 as the dense q, k, v; o is 3;
/// q_b takes 12, free in `decoder_train::dropout_seed_for`'s numbering).
const Q_SEED: u64 = 0;
const KV_A_SEED: u64 = 1;
const KV_B_SEED: u64 = 2;
const Q_B_SEED: u64 = 12;

impl<B: Backend> LatentQkv<B> {
    pub fn load(
        b: &B,
        store: &WeightStore,
        c: &DecoderConfig,
        la: &LatentAttention,
        n: &LatentNames,
        p: &str,
    ) -> Result<Self> {
        let (h, heads, bias) = (c.hidden_size, c.num_attention_heads, c.attention.qkv_bias);
        let linear = |name: &str, out: usize, inp: usize, bias: bool| {
            Linear::load(b, store, &format!("{p}.{name}"), out, inp, bias)
        };
        let norm = |name: &str, width: usize| -> Result<Norm<B>> {
            let weight = store.vector(&format!("{p}.{name}.weight"), width)?.insert_axis(ndarray::Axis(0));
            Ok(Norm::new(b, NormKind::Rms, la.norm_eps, b.upload(weight), None))
        };
        let q_width = heads * (la.nope_dim + la.rope_dim);
        let query = match la.q_rank {
            None => QueryProjection::Direct(linear(n.q, q_width, h, false)?),
            Some(rank) => QueryProjection::LowRank {
                a: linear(n.q_a, rank, h, bias)?,
                norm: norm(n.q_a_norm, rank)?,
                b: linear(n.q_b, q_width, rank, false)?,
            },
        };
        Ok(LatentQkv {
            query,
            kv_a: linear(n.kv_a, la.kv_rank + la.rope_dim, h, bias)?,
            kv_norm: norm(n.kv_a_norm, la.kv_rank)?,
            kv_b: linear(n.kv_b, heads * (la.nope_dim + la.v_dim), la.kv_rank, false)?,
            layout: HeadLayout::new(la, heads),
        })
    }

    /// Seeded random projections (`linear(out, in, bias)`), unit norms.
    pub fn random(
        b: &B,
        c: &DecoderConfig,
        la: &LatentAttention,
        linear: &mut dyn FnMut(usize, usize, bool) -> Linear<B>,
    ) -> Self {
        let (h, heads, bias) = (c.hidden_size, c.num_attention_heads, c.attention.qkv_bias);
        let norm = |width: usize| Norm::new(b, NormKind::Rms, la.norm_eps, b.upload(Array2::ones((1, width))), None);
        let q_width = heads * (la.nope_dim + la.rope_dim);
        let query = match la.q_rank {
            None => QueryProjection::Direct(linear(q_width, h, false)),
            Some(rank) => {
                QueryProjection::LowRank { a: linear(rank, h, bias), norm: norm(rank), b: linear(q_width, rank, false) }
            }
        };
        LatentQkv {
            query,
            kv_a: linear(la.kv_rank + la.rope_dim, h, bias),
            kv_norm: norm(la.kv_rank),
            kv_b: linear(heads * (la.nope_dim + la.v_dim), la.kv_rank, false),
            layout: HeadLayout::new(la, heads),
        }
    }

    /// The projections and norms with their module paths under the layer prefix `p`, in checkpoint order.
    pub fn modules_mut(&mut self, n: &LatentNames, p: &str) -> Vec<(String, LatentModule<'_, B>)> {
        let mut out = Vec::new();
        match &mut self.query {
            QueryProjection::Direct(q) => out.push((format!("{p}.{}", n.q), LatentModule::Linear(q))),
            QueryProjection::LowRank { a, norm, b } => {
                out.push((format!("{p}.{}", n.q_a), LatentModule::Linear(a)));
                out.push((format!("{p}.{}", n.q_a_norm), LatentModule::Norm(norm)));
                out.push((format!("{p}.{}", n.q_b), LatentModule::Linear(b)));
            }
        }
        out.push((format!("{p}.{}", n.kv_a), LatentModule::Linear(&mut self.kv_a)));
        out.push((format!("{p}.{}", n.kv_a_norm), LatentModule::Norm(&mut self.kv_norm)));
        out.push((format!("{p}.{}", n.kv_b), LatentModule::Linear(&mut self.kv_b)));
        out
    }

    // ANCHOR: latent_forward
    /// x: [T, hidden] → q: [T, H·w] laid out for attention and rotated, with what the backward needs.
    fn query(
        &self,
        b: &B,
        x: &B::Tensor,
        positions: &[usize],
        inv_freq: &[f32],
        seed: &dyn Fn(u64) -> Option<u64>,
    ) -> (B::Tensor, Option<Pair<B>>, LoraActivations<B, 2>) {
        let (q, q_low, lora) = match &self.query {
            QueryProjection::Direct(q) => {
                let (q, hq) = q.forward_train(b, x, seed(Q_SEED));
                (q, None, [hq, None])
            }
            QueryProjection::LowRank { a, norm, b: up } => {
                let (qa, ha) = a.forward_train(b, x, seed(Q_SEED));
                let qa_normed = norm.forward(b, &qa, ReadBy::Products); // q_b's input
                let (q, hb) = up.forward_train(b, &qa_normed, seed(Q_B_SEED));
                (q, Some((qa, qa_normed)), [ha, hb])
            }
        };
        let q =
            b.rope(&gather_columns(b, &q, &self.layout.q), self.layout.heads, self.layout.width, positions, inv_freq);
        (q, q_low, lora)
    }

    /// x → (c, norm(c), rotated kₚ · m²): the per-token latent and shared key the cache keeps.
    fn latent(
        &self,
        b: &B,
        la: &LatentAttention,
        x: &B::Tensor,
        positions: &[usize],
        inv_freq: &[f32],
        seed: &dyn Fn(u64) -> Option<u64>,
    ) -> (B::Tensor, B::Tensor, B::Tensor, Option<B::Tensor>) {
        let (ckv, h_kv_a) = self.kv_a.forward_train(b, x, seed(KV_A_SEED)); // [T, r + r_p]
        let c = gather_columns(b, &ckv, &self.layout.latent);
        let c_normed = self.kv_norm.forward(b, &c, ReadBy::AnyOp); // kept in the KV cache
        // m multiplies cos and sin for q and k alike: m² on the shared key alone gives the same scores
        let k_pe = b.scale(&gather_columns(b, &ckv, &self.layout.rope_in), la.rope_factor * la.rope_factor);
        let k_rope = b.rope(&k_pe, 1, la.rope_dim, positions, inv_freq);
        (c, c_normed, k_rope, h_kv_a)
    }

    /// norm(c): [S, r], rotated kₚ: [S, r_p] → k, v: [S, H·w], and kv_b's LoRA activation.
    fn expand(
        &self,
        b: &B,
        c_normed: &B::Tensor,
        k_rope: &B::Tensor,
        seed: &dyn Fn(u64) -> Option<u64>,
    ) -> (B::Tensor, B::Tensor, Option<B::Tensor>) {
        let (kv, h_kv_b) = self.kv_b.forward_train(b, c_normed, seed(KV_B_SEED)); // [S, H·(n + v)]
        let k = b.add(&gather_columns(b, &kv, &self.layout.k_nope), &gather_columns(b, k_rope, &self.layout.k_rope));
        (k, gather_columns(b, &kv, &self.layout.v), h_kv_b)
    }

    /// Training: x [T, hidden] → q, k, v [T, H·w] and the cache for [`LatentQkv::backward`].
    pub fn forward_train(
        &self,
        b: &B,
        la: &LatentAttention,
        x: &B::Tensor,
        positions: &[usize],
        inv_freq: &[f32],
        seed: &dyn Fn(u64) -> Option<u64>,
    ) -> (B::Tensor, B::Tensor, B::Tensor, LatentCache<B>) {
        let (q, q_low, [hq, hq_b]) = self.query(b, x, positions, inv_freq, seed);
        let (c, c_normed, k_rope, h_kv_a) = self.latent(b, la, x, positions, inv_freq, seed);
        let (k, v, h_kv_b) = self.expand(b, &c_normed, &k_rope, seed);
        (q, k, v, LatentCache { q_low, c, c_normed, lora_h: [hq, hq_b, h_kv_a, h_kv_b] })
    }

    /// Inference: q for the new tokens, and k, v for every position — the layer's cache slot holds the
    /// normed latents and rotated shared keys of the positions before, and gets these appended.
    pub fn forward_cached(
        &self,
        b: &B,
        la: &LatentAttention,
        x: &B::Tensor,
        positions: &[usize],
        inv_freq: &[f32],
        slot: Option<&mut Option<(B::Tensor, B::Tensor)>>,
    ) -> (B::Tensor, B::Tensor, B::Tensor) {
        let off = |_: u64| None;
        let (q, _, _) = self.query(b, x, positions, inv_freq, &off);
        let (_, c_normed, k_rope, _) = self.latent(b, la, x, positions, inv_freq, &off);
        let (c_all, k_rope_all) = super::decoder::append_to_slot(b, slot, (c_normed, k_rope));
        let (k, v, _) = self.expand(b, &c_all, &k_rope_all, &off);
        (q, k, v)
    }

    /// The attention output [T, H·w] → [T, H·v], o_proj's input (the padding cut off).
    pub fn output(&self, b: &B, attn: &B::Tensor) -> B::Tensor {
        match &self.layout.out {
            Some(cols) => gather_columns(b, attn, cols),
            None => attn.clone(),
        }
    }

    /// ∂L/∂(o_proj's input) → ∂L/∂(attention output).
    pub fn output_backward(&self, b: &B, d: B::Tensor) -> B::Tensor {
        match &self.layout.out {
            Some(cols) => gather_columns_backward(b, &d, cols, self.layout.heads * self.layout.width),
            None => d,
        }
    }
    // ANCHOR_END: latent_forward

    // ANCHOR: latent_backward
    /// dq, dk, dv: [T, H·w] (attention's input gradients), x: the forward's input → ∂L/∂x; the parameter
    /// gradients go into `grads` under the layer prefix `p`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        b: &B,
        la: &LatentAttention,
        cache: &LatentCache<B>,
        (dq, dk, dv): (&B::Tensor, &B::Tensor, &B::Tensor),
        x: &B::Tensor,
        positions: &[usize],
        inv_freq: &[f32],
        train_base: bool,
        seed: &dyn Fn(u64) -> Option<u64>,
        (n, p): (&LatentNames, &str),
        grads: &mut Gradients<B>,
    ) -> B::Tensor {
        let l = &self.layout;
        let (heads, w) = (l.heads, la.head_width());
        let [hq, hq_b, h_kv_a, h_kv_b] = &cache.lora_h;
        let name = |module: &str| format!("{p}.{module}");

        // queries: undo the rotation and the layout, then the projection(s)
        let dq = b.rope_backward(dq, heads, w, positions, inv_freq);
        let dq = gather_columns_backward(b, &dq, &l.q, heads * (la.nope_dim + la.rope_dim));
        let mut dx = match (&self.query, &cache.q_low) {
            (QueryProjection::Direct(q), _) => {
                q.backward(b, &dq, x, hq.as_ref(), train_base, seed(Q_SEED), &name(n.q), grads)
            }
            (QueryProjection::LowRank { a, norm, b: up }, Some((qa, qa_normed))) => {
                let dqa_normed =
                    up.backward(b, &dq, qa_normed, hq_b.as_ref(), train_base, seed(Q_B_SEED), &name(n.q_b), grads);
                let dqa = norm.backward(b, &dqa_normed, qa, train_base, &name(n.q_a_norm), grads);
                a.backward(b, &dqa, x, hq.as_ref(), train_base, seed(Q_SEED), &name(n.q_a), grads)
            }
            (QueryProjection::LowRank { .. }, None) => unreachable!("low-rank queries cache q_a(x)"),
        };

        // keys and values: k = [kₚ | k_nope] per head, v from the same expansion
        let kv_width = heads * (la.nope_dim + la.v_dim);
        let mut dkv = gather_columns_backward(b, dk, &l.k_nope, kv_width);
        b.add_assign(&mut dkv, &gather_columns_backward(b, dv, &l.v, kv_width));
        let dk_rope = gather_columns_backward(b, dk, &l.k_rope, la.rope_dim); // the shared key: every head adds
        let dk_pe =
            b.scale(&b.rope_backward(&dk_rope, 1, la.rope_dim, positions, inv_freq), la.rope_factor * la.rope_factor);
        let dc_normed = self.kv_b.backward(
            b,
            &dkv,
            &cache.c_normed,
            h_kv_b.as_ref(),
            train_base,
            seed(KV_B_SEED),
            &name(n.kv_b),
            grads,
        );
        let dc = self.kv_norm.backward(b, &dc_normed, &cache.c, train_base, &name(n.kv_a_norm), grads);
        let ckv_width = la.kv_rank + la.rope_dim;
        let mut dckv = gather_columns_backward(b, &dc, &l.latent, ckv_width);
        b.add_assign(&mut dckv, &gather_columns_backward(b, &dk_pe, &l.rope_in, ckv_width));
        let dx_kv = self.kv_a.backward(b, &dckv, x, h_kv_a.as_ref(), train_base, seed(KV_A_SEED), &name(n.kv_a), grads);
        b.add_assign(&mut dx, &dx_kv);
        dx
    }
    // ANCHOR_END: latent_backward
}
