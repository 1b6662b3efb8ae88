//! Training the decoder: the forward that keeps what the backward needs, and the hand-written backward beside
//! it. The attention inputs (`project_qkv`, in `attention_inputs`) and the MLP (`mlp_forward`) are shared with
//! inference.

use super::attention_inputs::{ProjectedQkv, QkvSaved};
use super::decoder::{Decoder, DecoderLayer, Gradients, HeadGradients, Norm, QkvNames, QkvProjection, Residual};
use super::feed_forward::FfnCache;
use super::moe_balance::{balance_loss, spread_over_layers};
use crate::backend::{AttentionMask, Backend};
use crate::nn::moe_router::Routing;
use anyhow::{Result, bail};
use ndarray::Array2;

// ANCHOR: train_sequence
/// One training row: tokens, their positions (restarting per packed document) and, for packed rows, the
/// document each token belongs to (attention never crosses documents).
#[derive(Clone, Copy, Debug)]
pub struct Sequence<'a> {
    pub ids: &'a [u32],
    pub positions: &'a [usize],
    pub segment_ids: Option<&'a [u32]>,
}
// ANCHOR_END: train_sequence

// ANCHOR: train_cache
/// What one layer's backward needs from its forward.
pub struct LayerCache<B: Backend> {
    x: B::Tensor,              // [T, H] residual stream entering the layer
    h_attn: B::Tensor,         // [T, H] input_norm(x)
    q: B::Tensor,              // [T, heads·d] as attention reads it (normed, rotated)
    k: B::Tensor,              // [T, kv·d]
    v: B::Tensor,              // [T, kv·d]
    qkv: QkvSaved<B>,          // what the q/k/v projections' backward needs
    attn: B::Tensor,           // [T, heads·d] attention output (before o_proj)
    lse: B::Tensor,            // [T, heads]
    x_mid: Option<B::Tensor>,  // [T, H] sequential residual: the stream after attention, the MLP norm's input
    h_mlp: Option<B::Tensor>,  // [T, H] the MLP's input (None when it is h_attn: one shared norm)
    ffn: FfnCache<B>,          // the MLP's (or the experts') activations
    lora_o: Option<B::Tensor>, // x·Aᵀ of an adapted o_proj
}

/// A layer's saved activations: all of them, or only its input (recomputed in the backward).
enum Saved<B: Backend> {
    Everything(LayerCache<B>),
    InputOnly(B::Tensor),
}

pub struct TrainCache<'a, B: Backend> {
    pub(super) seq: Sequence<'a>,
    layers: Vec<Saved<B>>,
    x_final: B::Tensor,            // [T, H] before the final norm
    pub(super) h_final: B::Tensor, // [T, H] after it: the head's input
    /// Each layer's routing (sparse layers only).
    pub(super) routings: Vec<Option<Routing>>,
    /// With a mixture of experts: the balance loss of this forward and, per layer, its ∂/∂p (`moe_balance`).
    pub(super) aux: Option<(f64, Vec<Option<Array2<f32>>>)>,
}
// ANCHOR_END: train_cache

impl<B: Backend> TrainCache<'_, B> {
    /// h [T, H], the final norm's output: what the head reads.
    pub fn h_final(&self) -> &B::Tensor {
        &self.h_final
    }

    /// Bytes of activations held for the backward, as stored (f32, or bf16 for what only products read on a
    /// mixed-precision GPU): the number activation checkpointing shrinks.
    pub fn activation_bytes(&self, b: &B) -> usize {
        let size = |t: &B::Tensor| b.stored_bytes(t);
        let layers: usize = self
            .layers
            .iter()
            .map(|saved| match saved {
                Saved::InputOnly(x) => size(x),
                Saved::Everything(lc) => [&lc.x, &lc.h_attn, &lc.q, &lc.k, &lc.v, &lc.attn, &lc.lse]
                    .into_iter()
                    .chain(lc.qkv.tensors())
                    .chain(lc.x_mid.iter())
                    .chain(lc.h_mlp.iter())
                    .chain(lc.ffn.tensors())
                    .chain(lc.lora_o.iter())
                    .map(size)
                    .sum(),
            })
            .sum();
        layers + size(&self.x_final) + size(&self.h_final)
    }
}

/// The residual stream entering a layer (or the final norm), and that layer's input norm of it.
struct NormedStream<B: Backend> {
    x: B::Tensor,
    normed: B::Tensor,
}

impl<B: Backend> Decoder<B> {
    /// Logits [T, vocab] and the cache for [`Decoder::backward`]: for the losses that need the logits whole
    /// (the causal-LM losses go through [`Decoder::forward_train_hidden`] and `Decoder::head_loss` instead).
    pub fn forward_train<'a>(&self, b: &B, seq: Sequence<'a>) -> Result<(B::Tensor, TrainCache<'a, B>)> {
        let cache = self.forward_train_hidden(b, seq)?;
        Ok((self.head(b, &cache.h_final), cache))
    }

    // ANCHOR: decoder_forward_train
    /// The forward up to the head's input: the cache (which holds h [T, H], the final norm's output) for
    /// `Decoder::head_loss` and [`Decoder::backward_from_hidden`].
    pub fn forward_train_hidden<'a>(&self, b: &B, seq: Sequence<'a>) -> Result<TrainCache<'a, B>> {
        if seq.ids.is_empty()
            || seq.positions.len() != seq.ids.len()
            || seq.segment_ids.is_some_and(|s| s.len() != seq.ids.len())
        {
            bail!("forward_train: need one position (and segment id) per token");
        }
        let last_position = seq.positions.iter().copied().max().unwrap_or(0);
        self.check_inputs(seq.ids, last_position).map_err(|e| e.context("forward_train"))?;
        let x = self.embed(b, seq.ids, seq.positions);
        let mut stream = NormedStream { normed: self.input_norm_of(0).forward(b, &x, self.normed_read_by()), x };
        let mut layers = Vec::with_capacity(self.layers.len());
        let mut routings: Vec<Option<Routing>> = Vec::with_capacity(self.layers.len());
        for (l, layer) in self.layers.iter().enumerate() {
            let (next, cache) = self.layer_forward(b, l, layer, stream, seq);
            routings.push(cache.ffn.routing().cloned());
            layers.push(if self.recompute_activations { Saved::InputOnly(cache.x) } else { Saved::Everything(cache) });
            stream = next;
        }
        let NormedStream { x, normed: h_final } = stream;
        let aux = self.config.moe.as_ref().and_then(|moe| {
            // every sparse layer's routing together, as transformers concatenates the router logits
            let sparse: Vec<&Routing> = routings.iter().flatten().collect();
            let (aux, grads) = balance_loss(moe, &sparse)?;
            Some((aux, spread_over_layers(&routings, grads)))
        });
        Ok(TrainCache { seq, layers, x_final: x, h_final, routings, aux })
    }

    /// The norm that reads the residual stream entering layer `l`: its input norm, or past the last layer
    /// the final norm.
    fn input_norm_of(&self, l: usize) -> &Norm<B> {
        self.layers.get(l).map_or(&self.norm, |layer| &layer.input_norm)
    }

    /// One decoder layer, from the stream entering it and its input norm's output, returning the same for
    /// the next layer (the last residual add done in one pass with the next norm: `Norm::forward_after_add`)
    /// and everything its backward needs.
    fn layer_forward(
        &self,
        b: &B,
        l: usize,
        layer: &DecoderLayer<B>,
        NormedStream { x, normed: h_attn }: NormedStream<B>,
        seq: Sequence<'_>,
    ) -> (NormedStream<B>, LayerCache<B>) {
        let seed = |proj: u64| self.dropout_seed.map(|s| dropout_seed_for(s, l, proj));
        let shape = self.config.attention_shape();
        let mask =
            AttentionMask { q_offset: 0, segment_ids: seq.segment_ids, window: self.config.attention.windows[l] };
        let ProjectedQkv { q, k, v, saved: qkv } =
            self.project_qkv(b, layer, &h_attn, seq.positions, &self.inv_freq, seed);
        let (attn, lse) = b.causal_attention_with_lse(&q, &k, &v, &shape, &mask, self.attention_read_by(layer));
        let (o, lora_o) = layer.o_proj.forward_train(b, &self.o_proj_input(b, layer, &attn), seed(3));
        let c = &self.config;
        let (next_norm, reads) = (self.input_norm_of(l + 1), self.normed_read_by());
        let (next, x_mid, h_mlp, ffn) = match c.residual {
            Residual::Sequential => {
                let (x_mid, h_mlp) = self.mlp_norm(layer).forward_after_add(b, &x, &o, reads);
                let (mlp_out, ffn) = layer.ffn.forward(b, c, &h_mlp, &seed);
                (next_norm.forward_after_add(b, &x_mid, &mlp_out, reads), Some(x_mid), Some(h_mlp), ffn)
            }
            Residual::Parallel => {
                let h_mlp = self.mlp_norm(layer).forward(b, &x, reads);
                let (mlp_out, ffn) = layer.ffn.forward(b, c, &h_mlp, &seed);
                (next_norm.forward_after_add(b, &b.add(&x, &o), &mlp_out, reads), None, Some(h_mlp), ffn)
            }
            Residual::ParallelSharedNorm => {
                let (mlp_out, ffn) = layer.ffn.forward(b, c, &h_attn, &seed);
                (next_norm.forward_after_add(b, &b.add(&x, &o), &mlp_out, reads), None, None, ffn)
            }
            Residual::SequentialNormedSkip => {
                let (x_mid, h_mlp) = self.mlp_norm(layer).forward_after_add(b, &h_attn, &o, reads);
                let (mlp_out, ffn) = layer.ffn.forward(b, c, &h_mlp, &seed);
                (next_norm.forward_after_add(b, &h_mlp, &mlp_out, reads), Some(x_mid), Some(h_mlp), ffn)
            }
        };
        let (x_next, normed) = next;
        let cache = LayerCache { x, h_attn, q, k, v, qkv, attn, lse, x_mid, h_mlp, ffn, lora_o };
        (NormedStream { x: x_next, normed }, cache)
    }
    // ANCHOR_END: decoder_forward_train

    /// dlogits [T, vocab] (for the logits of [`Decoder::forward_train`]) → the gradient of every parameter.
    pub fn backward(&self, b: &B, cache: TrainCache<'_, B>, dlogits: &B::Tensor) -> Gradients<B> {
        let head = self.head_backward(b, &cache, dlogits);
        self.backward_from_hidden(b, cache, head)
    }

    // ANCHOR: decoder_backward
    /// The head's gradients (`Decoder::head_backward` or `Decoder::head_loss`) → the gradient of every
    /// parameter. Walks the forward in reverse; `dx` is the gradient of the residual stream, which each block
    /// adds to (the residual connection copies it through).
    pub fn backward_from_hidden(&self, b: &B, cache: TrainCache<'_, B>, head: HeadGradients<B>) -> Gradients<B> {
        let c = &self.config;
        let n = c.names;
        let train_base = !self.frozen_base;
        let mut grads = Gradients::<B>::new();

        // final norm, and the head's parameters
        let HeadGradients { dh_final, dhead, dbias } = head;
        let mut dx = self.norm.backward(b, &dh_final, &cache.x_final, train_base, n.final_norm, &mut grads);
        let mut dembed_from_head = None;
        if c.tie_word_embeddings {
            dembed_from_head = dhead;
        } else if let Some(dhead) = dhead {
            grads.insert(format!("{}.weight", n.lm_head), dhead);
        }
        if let Some(dbias) = dbias {
            grads.insert(format!("{}.bias", n.lm_head), dbias);
        }

        let seq = cache.seq;
        // the load-balancing term: coef·∂aux/∂p for each sparse layer's router
        let coef = c.moe.as_ref().map_or(0.0, |m| m.aux_loss.gradient_weight());
        let mut aux_dprobs: Vec<Option<Array2<f32>>> = match cache.aux {
            Some((_, grads)) if coef != 0.0 => grads.into_iter().map(|g| g.map(|g| g * coef)).collect(),
            _ => vec![None; self.layers.len()],
        };
        for (l, (layer, saved)) in self.layers.iter().zip(cache.layers).enumerate().rev() {
            let lc = match saved {
                Saved::Everything(lc) => lc,
                Saved::InputOnly(x) => {
                    // activation checkpointing: the layer again from its input (the next norm's output, which
                    // its last add now computes, is dropped as that add's sum was)
                    let stream = NormedStream { normed: layer.input_norm.forward(b, &x, self.normed_read_by()), x };
                    self.layer_forward(b, l, layer, stream, seq).1
                }
            };
            self.layer_backward(b, l, layer, lc, seq, aux_dprobs[l].take(), &mut dx, &mut grads);
        }

        if train_base {
            if let (Some(name), Some(table)) = (n.positions, &self.position_embeddings) {
                let positions: Vec<u32> = seq.positions.iter().map(|&p| p as u32).collect();
                // x = s·embed(ids) + positions(p): the table's gradient is dx itself
                grads.insert(format!("{name}.weight"), b.embedding_backward(&dx, &positions, b.dims(table).0));
            }
            if let Some(s) = c.embedding_scale {
                dx = b.scale(&dx, s); // x = s·embedding(ids)
            }
            let mut dembed = b.embedding_backward(&dx, seq.ids, c.vocab_size);
            if let Some(dhead) = dembed_from_head {
                b.add_assign(&mut dembed, &dhead); // tied: the table is also the output head
            }
            grads.insert(format!("{}.weight", n.embed), dembed);
        }
        grads
    }

    /// One layer in reverse: `dx` comes in as ∂L/∂(layer output) and leaves as ∂L/∂(layer input).
    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        b: &B,
        l: usize,
        layer: &DecoderLayer<B>,
        lc: LayerCache<B>,
        seq: Sequence<'_>,
        aux_dprobs: Option<Array2<f32>>,
        dx: &mut B::Tensor,
        grads: &mut Gradients<B>,
    ) {
        let c = &self.config;
        let n = c.names;
        let (shape, pos) = (c.attention_shape(), seq.positions);
        let train_base = !self.frozen_base;
        // only the embedding reads what leaves layer 0: frozen, it needs no ∂L/∂x there
        let input_gradient_needed = train_base || l > 0;
        let p = format!("{}.{l}", n.layers);
        let seed = |proj: u64| self.dropout_seed.map(|s| dropout_seed_for(s, l, proj));

        // feed-forward block: out = ffn(h); dx is ∂L/∂out
        let h_mlp = lc.h_mlp.as_ref().unwrap_or(&lc.h_attn);
        let dh_mlp = layer.ffn.backward(b, c, dx, h_mlp, &lc.ffn, aux_dprobs.as_ref(), train_base, &seed, &p, grads);
        let norm_name = format!("{p}.{}", n.post_attention_norm.unwrap_or(n.input_norm));
        let (mut dh_attn_from_mlp, mut dx_from_mlp_norm) = (None, None);
        match c.residual {
            Residual::Sequential => {
                let x_mid = lc.x_mid.as_ref().expect("sequential layers cache x_mid");
                // dx is now ∂L/∂x_mid
                self.mlp_norm(layer).backward_into(b, dx, (&dh_mlp, x_mid), train_base, &norm_name, grads);
            }
            Residual::Parallel if input_gradient_needed => {
                dx_from_mlp_norm =
                    Some(self.mlp_norm(layer).backward(b, &dh_mlp, &lc.x, train_base, &norm_name, grads));
            }
            Residual::Parallel => {} // the MLP's norm reads the layer's input: no gradient wanted there
            Residual::ParallelSharedNorm => dh_attn_from_mlp = Some(dh_mlp),
            Residual::SequentialNormedSkip => {
                // x' = h_mlp + mlp(h_mlp): the skip and the MLP both feed h_mlp = n₂(x_mid)
                let x_mid = lc.x_mid.as_ref().expect("sequential layers cache x_mid");
                let mut dh_mlp = dh_mlp;
                b.add_assign(&mut dh_mlp, dx);
                *dx = self.mlp_norm(layer).backward(b, &dh_mlp, x_mid, train_base, &norm_name, grads);
            }
        }

        // attention block: out = o(attention(q, k, v)); dx is ∂L/∂out
        let o_name = format!("{p}.{}", n.o);
        let o_in = self.o_proj_input(b, layer, &lc.attn);
        let d_o_in = layer.o_proj.backward(b, dx, &o_in, lc.lora_o.as_ref(), train_base, seed(3), &o_name, grads);
        let dattn = match &layer.qkv {
            QkvProjection::Latent(mla) => mla.output_backward(b, d_o_in),
            _ => d_o_in,
        };
        let mask = AttentionMask { q_offset: 0, segment_ids: seq.segment_ids, window: c.attention.windows[l] };
        let (dq, dk, dv) = b.causal_attention_backward(&dattn, &lc.q, &lc.k, &lc.v, &lc.attn, &lc.lse, &shape, &mask);
        let h = &lc.h_attn;
        let dh = match (&layer.qkv, &lc.qkv, n.qkv) {
            (QkvProjection::Latent(mla), QkvSaved::Latent(saved), QkvNames::Latent(names)) => {
                let la = c.attention.latent.as_ref().expect("checked at load");
                let d = (&dq, &dk, &dv);
                Some(mla.backward(b, la, saved, d, h, pos, &self.inv_freq, train_base, &seed, (&names, &p), grads))
            }
            (QkvProjection::Latent(_), ..) => unreachable!("a latent layer caches a latent projection"),
            (_, saved, _) => {
                let d = (dq, dk, dv);
                let input_gradient = (input_gradient_needed, train_base);
                self.direct_qkv_backward(b, layer, saved, d, h, pos, input_gradient, &seed, &p, grads)
            }
        };
        let Some(mut dh) = dh.filter(|_| input_gradient_needed) else {
            return; // layer 0 below a frozen embedding: its parameters have their gradients, dx is not needed
        };
        if let Some(d) = dh_attn_from_mlp {
            b.add_assign(&mut dh, &d); // one shared norm feeds both blocks
        }
        let norm_name = format!("{p}.{}", n.input_norm);
        if c.residual == Residual::SequentialNormedSkip {
            b.add_assign(&mut dh, dx); // x_mid = h + attn(h): the skip leaves from the normed h
        }
        match c.residual {
            // x reaches the output only through n₁
            Residual::SequentialNormedSkip => {
                *dx = layer.input_norm.backward(b, &dh, &lc.x, train_base, &norm_name, grads);
            }
            // dx is now ∂L/∂x entering layer l
            _ => layer.input_norm.backward_into(b, dx, (&dh, &lc.x), train_base, &norm_name, grads),
        }
        if let Some(d) = dx_from_mlp_norm {
            b.add_assign(dx, &d); // parallel residual: the MLP's norm read x too
        }
    }
    // ANCHOR_END: decoder_backward
}

/// The dropout seed of projection `proj` (0–6: q, k, v, o, gate, up, down) of layer `layer` for one forward.
fn dropout_seed_for(seed: u64, layer: usize, proj: u64) -> u64 {
    let mut r = crate::rng::Rng::new(seed ^ ((layer as u64) << 8 | proj).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    r.next_u64()
}
