//! The one decoder every family runs on: loading and inference with a KV cache. What a family varies is in its
//! [`DecoderConfig`] (`decoder_config.rs`); the training forward and the hand-written backward are beside this
//! file in `decoder_train.rs` (its attention inputs in `attention_inputs.rs`, the output head in
//! `decoder_head.rs`), the mixture-of-experts balance loss in `moe_balance.rs`, and the walk over the
//! parameters by name in `parameters.rs`.
//!
//! For each layer, with n₁, n₂ the layer's norms (one shared norm for Phi):
//!   q, k, v = split(qkv(n₁(x)))  or  q(n₁(x)), k(n₁(x)), v(n₁(x));   q, k ← rope(q), rope(k)  (rotary positions)
//!   a = o(attention(q, k, v))
//!   sequential:  h = x + a;  x' = h + mlp(n₂(h))
//!   parallel:    x' = x + a + mlp(n₂(x))          (shared norm: n₂ = n₁)
//! then the final norm and the output head (the embedding table itself when tied). With learned positions
//! the input is embed(ids) + positions(p) instead of rotating q and k.

pub use super::decoder_config::*;
pub use super::decoder_head::HeadGradients;
pub use super::decoder_train::{LayerCache, Sequence, TrainCache};
pub use super::feed_forward::{FeedForward, Mlp, SparseMoe};
pub use super::latent_attention::{LatentModule, LatentQkv};
pub use super::layers::{Gradients, Linear, Lora, Norm, Weight};
pub use super::moe_balance::joint_aux_loss;
pub use super::parameters::hf_shape;
pub use super::stacked_base::StackedBase;
use crate::backend::{AttentionMask, Backend, ReadBy};
use crate::io::hf_config::RopeScaling;
use crate::io::safetensors::WeightStore;
use crate::loss::chunked_head::DEFAULT_HEAD_CHUNK_BYTES;
use crate::nn::rope::{inverse_frequencies, inverse_frequencies_for_context};
use anyhow::{Result, bail};
use ndarray::Array2;
use std::borrow::Cow;

/// A layer's q, k, v projections: three (their frozen bases possibly stacked into one product), one fused
/// matrix (split by the config's [`FusedQkv`] layout), or DeepSeek-V2's latent projections.
pub enum QkvProjection<B: Backend> {
    Separate { q: Linear<B>, k: Linear<B>, v: Linear<B>, stacked: Option<StackedBase<B>> },
    Fused(Linear<B>),
    Latent(Box<LatentQkv<B>>),
}

pub struct DecoderLayer<B: Backend> {
    pub input_norm: Norm<B>,
    pub qkv: QkvProjection<B>,
    /// Per-head norms of q and k before RoPE (Phi's `qk_layernorm`), each over head_dim.
    pub qk_norms: Option<(Norm<B>, Norm<B>)>,
    pub o_proj: Linear<B>,
    /// `None` when the MLP reads the attention's norm ([`Residual::ParallelSharedNorm`]).
    pub post_attention_norm: Option<Norm<B>>,
    /// The MLP, or a mixture of experts.
    pub ffn: FeedForward<B>,
}

pub struct Decoder<B: Backend> {
    pub config: DecoderConfig,
    pub embed_tokens: B::Tensor,
    /// The learned position table [max_position_embeddings, H] ([`Positions::Learned`]).
    pub position_embeddings: Option<B::Tensor>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: Norm<B>,
    /// `None` when the head is tied to `embed_tokens`.
    pub lm_head: Option<B::Tensor>,
    pub lm_head_bias: Option<B::Tensor>,
    /// RoPE's ωᵢ (r/2 of them, r the rotated width); empty with learned positions.
    pub inv_freq: Vec<f32>,
    /// Activation checkpointing: `forward_train` keeps only each layer's input and `backward` recomputes the
    /// rest of the layer, trading one extra forward for memory (see `TrainCache::activation_bytes`).
    pub recompute_activations: bool,
    /// LoRA training: the base weights, biases, norms and embeddings are frozen; only adapters get gradients
    /// (and the frozen matrices compute no weight gradient at all).
    pub frozen_base: bool,
    /// Set by the trainer for each micro-batch to turn on LoRA dropout; `None` (inference, evaluation) = off.
    pub dropout_seed: Option<u64>,
    /// The bytes of logits the training loss holds at once (`loss::chunked_head`): the head and the
    /// cross-entropy go through the rows in chunks of `chunk_rows(vocab, head_chunk_bytes)`.
    pub head_chunk_bytes: usize,
}

// ANCHOR: kv_cache
/// Keys and values of every layer for the positions seen so far.
pub struct KvCache<B: Backend> {
    pub(super) layers: Vec<Option<(B::Tensor, B::Tensor)>>,
    pub(super) len: usize,
    /// RoPE's frequencies as the first forward chose them for its context (Qwen-1's dynamic NTK keeps them
    /// for the whole generation); `None` before it.
    pub(super) inv_freq: Option<Vec<f32>>,
}

/// The pair a layer caches for all positions so far: the new rows appended in place below what the slot holds
/// (without a slot, just the new rows). Appending grows the cache like a `Vec`, so a decoding step copies only
/// its own row, not the whole history.
pub(super) fn append_to_slot<'s, B: Backend>(
    b: &B,
    slot: Option<&'s mut Option<(B::Tensor, B::Tensor)>>,
    new: (B::Tensor, B::Tensor),
) -> (Cow<'s, B::Tensor>, Cow<'s, B::Tensor>) {
    let Some(slot) = slot else { return (Cow::Owned(new.0), Cow::Owned(new.1)) };
    match slot {
        Some((a_past, b_past)) => {
            b.append_rows(a_past, &new.0);
            b.append_rows(b_past, &new.1);
        }
        None => *slot = Some(new),
    }
    let (a_all, b_all) = slot.as_ref().expect("just filled");
    (Cow::Borrowed(a_all), Cow::Borrowed(b_all))
}

impl<B: Backend> KvCache<B> {
    pub fn new(n_layers: usize) -> Self {
        KvCache { layers: (0..n_layers).map(|_| None).collect(), len: 0, inv_freq: None }
    }
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
// ANCHOR_END: kv_cache

/// Which rows of logits to compute: all (scoring, training) or the last (generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    All,
    Last,
}

/// A vector parameter as a [1, n] row.
fn row(store: &WeightStore, name: &str, len: usize) -> Result<Array2<f32>> {
    Ok(store.vector(name, len)?.insert_axis(ndarray::Axis(0)))
}

/// The rotated width's ωᵢ, or none with learned positions.
fn rotary_frequencies(c: &DecoderConfig) -> Vec<f32> {
    match &c.positions {
        Positions::Rotary { rope, dims, .. } => inverse_frequencies(rope, *dims),
        Positions::Learned | Positions::Alibi => Vec::new(),
    }
}

impl DecoderConfig {
    /// The config's parts agree with its tensor names (a family reader's slip, caught before any tensor is read).
    fn check_consistency(&self) -> Result<()> {
        let n = &self.names;
        let checks = [
            (matches!(n.qkv, QkvNames::Fused(_)) == self.attention.fused_qkv.is_some(), "fused q/k/v and its names"),
            (n.gate.is_some() == self.mlp_is_gated(), "the MLP kind and a gate projection's name"),
            (
                n.positions.is_some() == (self.positions == Positions::Learned),
                "learned positions and their table's name",
            ),
            (!self.attention.qk_norm || n.qk_norms.is_some(), "q/k norms and their names"),
            (
                n.post_attention_norm.is_none() == (self.residual == Residual::ParallelSharedNorm),
                "a shared norm and the MLP norm's name",
            ),
            (self.attention.windows.len() == self.num_hidden_layers, "one attention window per layer"),
            (matches!(n.qkv, QkvNames::Latent(_)) == self.attention.latent.is_some(), "latent attention and its names"),
            (
                !matches!(self.positions, Positions::Rotary { pairing: RotaryPairing::Interleaved, .. })
                    || (!self.attention.qk_norm && self.attention.latent.is_none()),
                "interleaved rotary pairs and q/k norms or latent attention",
            ),
            (self.mlp != MlpKind::FusedSwiGlu || self.moe.is_none(), "a fused gate/up MLP and experts"),
            (
                self.attention.latent.as_ref().is_none_or(|la| {
                    self.head_dim == la.head_width()
                        && self.num_key_value_heads == self.num_attention_heads
                        && self.attention.fused_qkv.is_none()
                        && !self.attention.qk_norm
                        && la.rope_dim % 2 == 0
                        && matches!(self.positions, Positions::Rotary { dims, .. } if dims == la.rope_dim)
                }),
                "latent attention and the head shape, rotary width or q/k options",
            ),
            (
                self.moe.as_ref().is_none_or(|m| {
                    n.moe.is_some() && self.mlp_is_gated() && m.sparse_layers.len() == self.num_hidden_layers
                }),
                "a mixture of experts, its names and a gated MLP",
            ),
            (
                match &self.positions {
                    Positions::Rotary { dims, .. } => *dims % 2 == 0 && *dims <= self.head_dim,
                    Positions::Learned | Positions::Alibi => true,
                },
                "an even rotary width within head_dim",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, what)) => bail!("decoder config: {what} disagree"),
            None => Ok(()),
        }
    }
}

impl<B: Backend> Decoder<B> {
    // ANCHOR: decoder_load
    pub fn load(b: &B, store: &WeightStore, config: DecoderConfig) -> Result<Self> {
        config.check_consistency()?;
        let c = &config;
        let n = c.names;
        let (h, d) = (c.hidden_size, c.head_dim);
        let (q_out, kv_out) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let norm_of_width = |name: &str, width: usize| -> Result<Norm<B>> {
            let weight = b.upload(row(store, &format!("{name}.weight"), width)?);
            let bias = match c.norm {
                NormKind::Layer => Some(b.upload(row(store, &format!("{name}.bias"), width)?)),
                _ => None,
            };
            Ok(Norm::new(b, c.norm, c.norm_eps, weight, bias))
        };
        let norm = |name: &str| norm_of_width(name, h);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("{}.{l}", n.layers);
            let linear = |name: &str, out: usize, inp: usize, bias: bool| {
                Linear::load(b, store, &format!("{p}.{name}"), out, inp, bias)
            };
            let qkv = match n.qkv {
                QkvNames::Separate { q, k, v } => QkvProjection::Separate {
                    q: linear(q, q_out, h, c.attention.qkv_bias)?,
                    k: linear(k, kv_out, h, c.attention.qkv_bias)?,
                    v: linear(v, kv_out, h, c.attention.qkv_bias)?,
                    stacked: None,
                },
                QkvNames::Fused(name) => QkvProjection::Fused(linear(name, c.qkv_width(), h, c.attention.qkv_bias)?),
                QkvNames::Latent(names) => {
                    let la = c.attention.latent.as_ref().expect("checked: latent names come with a latent config");
                    QkvProjection::Latent(Box::new(LatentQkv::load(b, store, c, la, &names, &p)?))
                }
            };
            let qk_norms = match n.qk_norms.filter(|_| c.attention.qk_norm) {
                Some((q, k)) => Some((norm_of_width(&format!("{p}.{q}"), d)?, norm_of_width(&format!("{p}.{k}"), d)?)),
                None => None,
            };
            layers.push(DecoderLayer {
                input_norm: norm(&format!("{p}.{}", n.input_norm))?,
                qkv,
                qk_norms,
                o_proj: linear(n.o, h, c.attention_output_width(), c.attention.o_bias)?,
                post_attention_norm: n.post_attention_norm.map(|name| norm(&format!("{p}.{name}"))).transpose()?,
                ffn: FeedForward::load(b, store, c, l, &p)?,
            });
        }
        // Tied checkpoints usually omit the head's weight; transformers ties even when it is present.
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(b.upload_weight(store.matrix(&format!("{}.weight", n.lm_head), c.vocab_size, h)?))
        };
        let lm_head_bias =
            c.lm_head_bias.then(|| row(store, &format!("{}.bias", n.lm_head), c.vocab_size).map(|r| b.upload(r)));
        let position_embeddings = n
            .positions
            .map(|name| store.matrix(&format!("{name}.weight"), c.max_position_embeddings, h).map(|t| b.upload(t)));
        Ok(Decoder {
            embed_tokens: {
                let table = store.matrix(&format!("{}.weight", n.embed), c.vocab_size, h)?;
                // tied: the table is also the output head's W
                if c.tie_word_embeddings { b.upload_weight(table) } else { b.upload(table) }
            },
            position_embeddings: position_embeddings.transpose()?,
            norm: norm(n.final_norm)?,
            lm_head,
            lm_head_bias: lm_head_bias.transpose()?,
            layers,
            inv_freq: rotary_frequencies(c),
            recompute_activations: false,
            frozen_base: false,
            dropout_seed: None,
            head_chunk_bytes: DEFAULT_HEAD_CHUNK_BYTES,
            config,
        })
    }
    // ANCHOR_END: decoder_load

    /// A model with seeded random weights (N(0, 0.02²) matrices, unit norms, zero biases), for benchmarks and
    /// tests that need a shape rather than a checkpoint.
    pub fn random(b: &B, config: DecoderConfig, seed: u64) -> Self {
        config.check_consistency().expect("a consistent config");
        let mut rng = crate::rng::Rng::new(seed);
        // `as_weight`: the matrix is the W of a linear layer (see `Backend::upload_weight`)
        let mut random = |rows: usize, cols: usize, as_weight: bool| {
            let m = Array2::from_shape_fn((rows, cols), |_| (rng.normal() * 0.02) as f32);
            if as_weight { b.upload_weight(m) } else { b.upload(m) }
        };
        let c = &config;
        let (h, d) = (c.hidden_size, c.head_dim);
        let (q_out, kv_out) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let zeros = |n: usize, on: bool| on.then(|| b.upload(Array2::zeros((1, n))));
        // unit norms: w = 1, or w = 0 where the weight is an offset from one
        let unit = if c.norm == NormKind::RmsUnitOffset { 0.0 } else { 1.0 };
        let norm_of_width = |width: usize| {
            let weight = b.upload(Array2::from_elem((1, width), unit));
            Norm::new(b, c.norm, c.norm_eps, weight, zeros(width, c.norm == NormKind::Layer))
        };
        let norm = || norm_of_width(h);
        let qkv_bias = c.attention.qkv_bias;
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            let qkv = match (c.attention.fused_qkv, &c.attention.latent) {
                (_, Some(la)) => QkvProjection::Latent(Box::new(LatentQkv::random(b, c, la, &mut |out, inp, bias| {
                    Linear::new(random(out, inp, true), zeros(out, bias))
                }))),
                (None, None) => QkvProjection::Separate {
                    q: Linear::new(random(q_out, h, true), zeros(q_out, qkv_bias)),
                    k: Linear::new(random(kv_out, h, true), zeros(kv_out, qkv_bias)),
                    v: Linear::new(random(kv_out, h, true), zeros(kv_out, qkv_bias)),
                    stacked: None,
                },
                (Some(_), None) => {
                    QkvProjection::Fused(Linear::new(random(c.qkv_width(), h, true), zeros(c.qkv_width(), qkv_bias)))
                }
            };
            layers.push(DecoderLayer {
                input_norm: norm(),
                qkv,
                qk_norms: c.attention.qk_norm.then(|| (norm_of_width(d), norm_of_width(d))),
                o_proj: Linear::new(random(h, c.attention_output_width(), true), zeros(h, c.attention.o_bias)),
                post_attention_norm: (c.residual != Residual::ParallelSharedNorm).then(norm),
                ffn: FeedForward::random(c, l, &mut |out, inp| {
                    Linear::new(random(out, inp, true), zeros(out, c.mlp_bias))
                }),
            });
        }
        let embed_tokens = random(c.vocab_size, h, c.tie_word_embeddings);
        let lm_head = (!c.tie_word_embeddings).then(|| random(c.vocab_size, h, true));
        let position_embeddings =
            (c.positions == Positions::Learned).then(|| random(c.max_position_embeddings, h, false));
        Decoder {
            embed_tokens,
            position_embeddings,
            layers,
            norm: norm(),
            lm_head,
            lm_head_bias: zeros(c.vocab_size, c.lm_head_bias),
            inv_freq: rotary_frequencies(c),
            recompute_activations: false,
            frozen_base: false,
            dropout_seed: None,
            head_chunk_bytes: DEFAULT_HEAD_CHUNK_BYTES,
            config,
        }
    }

    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.config.num_hidden_layers)
    }

    /// Token ids inside the vocabulary, and positions inside a learned position table.
    pub(super) fn check_inputs(&self, ids: &[u32], last_position: usize) -> Result<()> {
        let c = &self.config;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            bail!("token id {bad} is outside the vocabulary (vocab_size {})", c.vocab_size);
        }
        if c.positions == Positions::Learned && last_position >= c.max_position_embeddings {
            bail!(
                "position {last_position} is past the learned position table (max_position_embeddings {})",
                c.max_position_embeddings
            );
        }
        Ok(())
    }

    // ANCHOR: decoder_forward
    /// ids: [T] → logits [T, vocab] (or [1, vocab] with `Logits::Last`). With a cache, the ids continue the
    /// cached positions and their keys/values are appended to it.
    pub fn forward(&self, b: &B, ids: &[u32], cache: Option<&mut KvCache<B>>, which: Logits) -> Result<B::Tensor> {
        Ok(self.head(b, &self.forward_hidden(b, ids, cache, which)?)) // [T, vocab]
    }

    /// [`Decoder::forward`] up to the head's input: the final norm's output h [T, H] (or [1, H]).
    pub fn forward_hidden(
        &self,
        b: &B,
        ids: &[u32],
        mut cache: Option<&mut KvCache<B>>,
        which: Logits,
    ) -> Result<B::Tensor> {
        if ids.is_empty() {
            bail!("forward: no input tokens");
        }
        let start = cache.as_ref().map_or(0, |kv| kv.len);
        let positions: Vec<usize> = (start..start + ids.len()).collect();
        self.check_inputs(ids, start + ids.len() - 1).map_err(|e| e.context("forward"))?;
        let shape = self.config.attention_shape();
        let inv_freq = self.inference_frequencies(cache.as_deref_mut(), start + ids.len());
        let logn = self.logn_factors(&positions);

        let mut x = self.embed(b, ids, &positions); // [T, H]
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward(b, &x, self.normed_read_by());
            let slot = cache.as_deref_mut().map(|kv| &mut kv.layers[l]);
            let (q, k, v) = match &layer.qkv {
                // the slot holds the normed latents and the rotated shared keys
                QkvProjection::Latent(mla) => {
                    let la = self.config.attention.latent.as_ref().expect("checked at load");
                    let (q, k, v) = mla.forward_cached(b, la, &h, &positions, &self.inv_freq, slot);
                    (q, Cow::Owned(k), Cow::Owned(v))
                }
                _ => {
                    let qkv = self.project_qkv(b, layer, &h, &positions, &inv_freq, |_| None);
                    let (k, v) = append_to_slot(b, slot, (qkv.k, qkv.v));
                    (qkv.q, k, v)
                }
            };
            let q = match &logn {
                Some(factors) => b.scale_rows(&q, factors),
                None => q,
            };
            let mask = AttentionMask { q_offset: start, segment_ids: None, window: self.config.attention.windows[l] };
            let attn = b.causal_attention(&q, &k, &v, &shape, &mask); // [T, heads·d]
            let attn_out = layer.o_proj.forward(b, &self.o_proj_input(b, layer, &attn));
            x = match self.config.residual {
                Residual::Sequential => {
                    let x_mid = b.add(&x, &attn_out);
                    let h_mlp = self.mlp_norm(layer).forward(b, &x_mid, ReadBy::Products);
                    b.add(&x_mid, &layer.ffn.forward(b, &self.config, &h_mlp, &|_| None).0)
                }
                Residual::Parallel => {
                    let h_mlp = self.mlp_norm(layer).forward(b, &x, ReadBy::Products);
                    let mlp_out = layer.ffn.forward(b, &self.config, &h_mlp, &|_| None).0;
                    b.add(&b.add(&x, &attn_out), &mlp_out)
                }
                Residual::ParallelSharedNorm => {
                    let mlp_out = layer.ffn.forward(b, &self.config, &h, &|_| None).0;
                    b.add(&b.add(&x, &attn_out), &mlp_out)
                }
                Residual::SequentialNormedSkip => {
                    let h_mlp = self.mlp_norm(layer).forward(b, &b.add(&h, &attn_out), ReadBy::AnyOp);
                    b.add(&h_mlp, &layer.ffn.forward(b, &self.config, &h_mlp, &|_| None).0)
                }
            };
        }
        if let Some(kv) = cache {
            kv.len += ids.len();
        }
        if which == Logits::Last {
            x = b.slice_rows(&x, ids.len() - 1, ids.len());
        }
        Ok(self.norm.forward(b, &x, ReadBy::Products))
    }
    // ANCHOR_END: decoder_forward

    // ANCHOR: inference_lengths
    /// RoPE's frequencies for an inference forward whose context reaches `context_len` tokens: the
    /// trained ones, or — with Qwen-1's dynamic NTK — those of the context the first forward saw, kept in
    /// the cache for every later step (as the reference keeps its first α).
    fn inference_frequencies(&self, cache: Option<&mut KvCache<B>>, context_len: usize) -> Cow<'_, [f32]> {
        let Some(rope) = self.config.rope().filter(|r| matches!(r.scaling, RopeScaling::QwenDynamicNtk { .. })) else {
            return Cow::Borrowed(&self.inv_freq);
        };
        let Positions::Rotary { dims, .. } = self.config.positions else { unreachable!("a rope spec is rotary") };
        let fresh = || inverse_frequencies_for_context(rope, dims, context_len);
        match cache {
            Some(kv) => Cow::Owned(kv.inv_freq.get_or_insert_with(fresh).clone()),
            None => Cow::Owned(fresh()),
        }
    }

    /// Qwen-1's log-length query scale at inference: log_L(p + 1) for the positions p ≥ L, 1 before
    /// (`None` without `use_logn_attn`, or while every position is inside L).
    fn logn_factors(&self, positions: &[usize]) -> Option<Vec<f32>> {
        let trained = self.config.attention.logn_beyond?;
        positions.iter().any(|&p| p >= trained).then(|| {
            let factor = |p: usize| if p >= trained { ((p + 1) as f64).ln() / (trained as f64).ln() } else { 1.0 };
            positions.iter().map(|&p| factor(p) as f32).collect()
        })
    }
    // ANCHOR_END: inference_lengths

    /// The attention output as o_proj reads it (a latent layer cuts each head's value padding).
    pub(super) fn o_proj_input<'t>(&self, b: &B, layer: &DecoderLayer<B>, attn: &'t B::Tensor) -> Cow<'t, B::Tensor> {
        match &layer.qkv {
            QkvProjection::Latent(mla) => Cow::Owned(mla.output(b, attn)),
            _ => Cow::Borrowed(attn),
        }
    }

    /// Who reads the normed stream (each norm's output that the next block's projections take): those
    /// products alone, except where it is also the skip (ChatGLM's `apply_residual_connection_post_layernorm`).
    pub(super) fn normed_read_by(&self) -> ReadBy {
        match self.config.residual {
            Residual::SequentialNormedSkip => ReadBy::AnyOp,
            _ => ReadBy::Products,
        }
    }

    /// Who reads the attention's output: o's products alone, except in latent attention, whose value heads
    /// are picked out of it column by column first.
    pub(super) fn attention_read_by(&self, layer: &DecoderLayer<B>) -> ReadBy {
        match &layer.qkv {
            QkvProjection::Latent(_) => ReadBy::AnyOp,
            _ => ReadBy::Products,
        }
    }

    /// The layer's MLP norm (the attention's own norm when the two share one).
    pub(super) fn mlp_norm<'a>(&self, layer: &'a DecoderLayer<B>) -> &'a Norm<B> {
        layer.post_attention_norm.as_ref().unwrap_or(&layer.input_norm)
    }

    /// The embedding rows of `ids` (times Gemma's √hidden where the config has it), plus the learned position
    /// rows of `positions` where the config learns them: [T, H].
    pub(super) fn embed(&self, b: &B, ids: &[u32], positions: &[usize]) -> B::Tensor {
        let x = b.embedding(&self.embed_tokens, ids);
        let x = match self.config.embedding_scale {
            Some(s) => b.scale(&x, s),
            None => x,
        };
        match &self.position_embeddings {
            Some(table) => {
                let positions: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
                b.add(&x, &b.embedding(table, &positions))
            }
            None => x,
        }
    }
}
