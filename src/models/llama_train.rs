//! Training the Llama: the forward that keeps what the backward needs, and the hand-written backward beside it.

use super::llama::{Gradients, Llama, LlamaLayer};
use crate::backend::{AttentionMask, Backend};
use anyhow::{Result, bail};

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
    x: B::Tensor,                   // [T, H] residual stream entering the layer
    h_attn: B::Tensor,              // [T, H] input_layernorm(x)
    q: B::Tensor,                   // [T, heads·d] after RoPE
    k: B::Tensor,                   // [T, kv·d] after RoPE
    v: B::Tensor,                   // [T, kv·d]
    attn: B::Tensor,                // [T, heads·d] attention output (before o_proj)
    lse: B::Tensor,                 // [T, heads]
    x_mid: B::Tensor,               // [T, H] residual stream after the attention block
    h_mlp: B::Tensor,               // [T, H] post_attention_layernorm(x_mid)
    gate: Option<B::Tensor>,        // [T, I] (gated MLPs)
    up: B::Tensor,                  // [T, I] (c_fc in a plain MLP)
    activated: B::Tensor,           // [T, I] silu(gate)·up, gelu(gate)·up or gelu(up): down_proj's input
    lora_h: [Option<B::Tensor>; 7], // x·Aᵀ of each adapted projection, in the order q, k, v, o, gate, up, down
}

/// A layer's saved activations: all of them, or only its input (recomputed in the backward).
enum Saved<B: Backend> {
    Everything(LayerCache<B>),
    InputOnly(B::Tensor),
}

pub struct TrainCache<'a, B: Backend> {
    seq: Sequence<'a>,
    layers: Vec<Saved<B>>,
    x_final: B::Tensor, // [T, H] before the final norm
    h_final: B::Tensor, // [T, H] after it: the head's input
}
// ANCHOR_END: train_cache

/// Parameter gradients by Hugging Face name (`model.layers.0.self_attn.q_proj.weight`), in the backend's
/// layout (vectors as [1, n] rows).
impl<B: Backend> TrainCache<'_, B> {
    /// Bytes of activations held for the backward (f32), the number activation checkpointing shrinks.
    pub fn activation_bytes(&self, b: &B) -> usize {
        let size = |t: &B::Tensor| {
            let (r, c) = b.dims(t);
            r * c * 4
        };
        let layers: usize = self
            .layers
            .iter()
            .map(|saved| match saved {
                Saved::InputOnly(x) => size(x),
                Saved::Everything(lc) => [
                    &lc.x,
                    &lc.h_attn,
                    &lc.q,
                    &lc.k,
                    &lc.v,
                    &lc.attn,
                    &lc.lse,
                    &lc.x_mid,
                    &lc.h_mlp,
                    &lc.up,
                    &lc.activated,
                ]
                .into_iter()
                .chain(lc.gate.iter())
                .chain(lc.lora_h.iter().flatten())
                .map(size)
                .sum(),
            })
            .sum();
        layers + size(&self.x_final) + size(&self.h_final)
    }
}

impl<B: Backend> Llama<B> {
    // ANCHOR: llama_forward_train
    /// Logits [T, vocab] and the cache for [`Llama::backward`].
    pub fn forward_train<'a>(&self, b: &B, seq: Sequence<'a>) -> Result<(B::Tensor, TrainCache<'a, B>)> {
        let c = &self.config;
        if seq.ids.is_empty()
            || seq.positions.len() != seq.ids.len()
            || seq.segment_ids.is_some_and(|s| s.len() != seq.ids.len())
        {
            bail!("forward_train: need one position (and segment id) per token");
        }
        if let Some(&bad) = seq.ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            bail!("forward_train: token id {bad} is outside the vocabulary (vocab_size {})", c.vocab_size);
        }
        let mut x = self.embed(b, seq.ids);
        let mut layers = Vec::with_capacity(self.layers.len());
        for (l, layer) in self.layers.iter().enumerate() {
            let (x_out, cache) = self.layer_forward(b, l, layer, x, seq);
            layers.push(if self.recompute_activations { Saved::InputOnly(cache.x) } else { Saved::Everything(cache) });
            x = x_out;
        }
        let h_final = self.norm.forward(b, &x);
        let logits = b.linear(&h_final, self.lm_head.as_ref().unwrap_or(&self.embed_tokens), None);
        Ok((logits, TrainCache { seq, layers, x_final: x, h_final }))
    }

    /// One decoder layer, returning its output and everything its backward needs.
    fn layer_forward(
        &self,
        b: &B,
        l: usize,
        layer: &LlamaLayer<B>,
        x: B::Tensor,
        seq: Sequence<'_>,
    ) -> (B::Tensor, LayerCache<B>) {
        let seed = |proj: u64| self.dropout_seed.map(|s| dropout_seed_for(s, l, proj));
        let (shape, pos) = (self.config.attention_shape(), seq.positions);
        let window = self.config.attention_windows[l];
        let mask = AttentionMask { q_offset: 0, segment_ids: seq.segment_ids, window };
        let h_attn = layer.input_layernorm.forward(b, &x);
        let (q, hq) = layer.q_proj.forward_train(b, &h_attn, seed(0));
        let (k, hk) = layer.k_proj.forward_train(b, &h_attn, seed(1));
        let (v, hv) = layer.v_proj.forward_train(b, &h_attn, seed(2));
        let q = b.rope(&q, shape.n_heads, shape.head_dim, pos, &self.inv_freq);
        let k = b.rope(&k, shape.n_kv_heads, shape.head_dim, pos, &self.inv_freq);
        let (attn, lse) = b.causal_attention_with_lse(&q, &k, &v, &shape, &mask);
        let (o, ho) = layer.o_proj.forward_train(b, &attn, seed(3));
        let x_mid = b.add(&x, &o);
        let h_mlp = layer.post_attention_layernorm.forward(b, &x_mid);
        let (gate, hg) = match &layer.gate_proj {
            Some(gate_proj) => {
                let (gate, hg) = gate_proj.forward_train(b, &h_mlp, seed(4));
                (Some(gate), hg)
            }
            None => (None, None),
        };
        let (up, hu) = layer.up_proj.forward_train(b, &h_mlp, seed(5));
        let activated = self.activate(b, gate.as_ref(), &up);
        let (down, hd) = layer.down_proj.forward_train(b, &activated, seed(6));
        let x_out = b.add(&x_mid, &down);
        let lora_h = [hq, hk, hv, ho, hg, hu, hd];
        (x_out, LayerCache { x, h_attn, q, k, v, attn, lse, x_mid, h_mlp, gate, up, activated, lora_h })
    }
    // ANCHOR_END: llama_forward_train

    // ANCHOR: llama_backward
    /// dlogits [T, vocab] → the gradient of every parameter. Walks the forward in reverse; `dx` is the gradient
    /// of the residual stream, which each block adds to (the residual connection copies it through).
    pub fn backward(&self, b: &B, cache: TrainCache<'_, B>, dlogits: &B::Tensor) -> Gradients<B> {
        let c = &self.config;
        let (shape, pos) = (c.attention_shape(), cache.seq.positions);
        let (gate_name, up_name, down_name) = c.mlp.projection_names();
        let train_base = !self.frozen_base;
        let mut grads = Gradients::<B>::new();
        let put_base = |grads: &mut Gradients<B>, name: String, g: Option<B::Tensor>| {
            if let (true, Some(g)) = (train_base, g) {
                grads.insert(name, g);
            }
        };

        // head and final norm
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let (dh_final, dhead, _) = b.linear_backward(dlogits, &cache.h_final, head, train_base, false);
        let mut dx = self.norm.backward(b, &dh_final, &cache.x_final, train_base, "model.norm", &mut grads);
        let mut dembed_from_head = None;
        if c.tie_word_embeddings {
            dembed_from_head = dhead;
        } else {
            put_base(&mut grads, "lm_head.weight".into(), dhead);
        }

        let seq = cache.seq;
        for (l, (layer, saved)) in self.layers.iter().zip(cache.layers).enumerate().rev() {
            let p = format!("model.layers.{l}");
            let seed = |proj: u64| self.dropout_seed.map(|s| dropout_seed_for(s, l, proj));
            let lc = match saved {
                Saved::Everything(lc) => lc,
                Saved::InputOnly(x) => self.layer_forward(b, l, layer, x, seq).1, // activation checkpointing
            };
            let [hq, hk, hv, ho, hg, hu, hd] = &lc.lora_h;
            // MLP block: x_out = x_mid + down(act(gate(h), up(h))), h = n₂(x_mid)
            let dactivated = layer.down_proj.backward(
                b,
                &dx,
                &lc.activated,
                hd.as_ref(),
                train_base,
                seed(6),
                &format!("{p}.mlp.{down_name}"),
                &mut grads,
            );
            let (dgate, dup) = self.activate_backward(b, &dactivated, lc.gate.as_ref(), &lc.up);
            let mut dh = layer.up_proj.backward(
                b,
                &dup,
                &lc.h_mlp,
                hu.as_ref(),
                train_base,
                seed(5),
                &format!("{p}.mlp.{up_name}"),
                &mut grads,
            );
            if let (Some(gate_proj), Some(dgate), Some(name)) = (&layer.gate_proj, dgate, gate_name) {
                let dh_gate = gate_proj.backward(
                    b,
                    &dgate,
                    &lc.h_mlp,
                    hg.as_ref(),
                    train_base,
                    seed(4),
                    &format!("{p}.mlp.{name}"),
                    &mut grads,
                );
                b.add_assign(&mut dh, &dh_gate);
            }
            let norm_name = format!("{p}.post_attention_layernorm");
            let dx_mid = layer.post_attention_layernorm.backward(b, &dh, &lc.x_mid, train_base, &norm_name, &mut grads);
            b.add_assign(&mut dx, &dx_mid); // dx is now ∂L/∂x_mid

            // attention block: x_mid = x + o(attention(rope(q(h)), rope(k(h)), v(h))), h = n₁(x)
            let dattn = layer.o_proj.backward(
                b,
                &dx,
                &lc.attn,
                ho.as_ref(),
                train_base,
                seed(3),
                &format!("{p}.self_attn.o_proj"),
                &mut grads,
            );
            let mask = AttentionMask { q_offset: 0, segment_ids: seq.segment_ids, window: c.attention_windows[l] };
            let (dq, dk, dv) =
                b.causal_attention_backward(&dattn, &lc.q, &lc.k, &lc.v, &lc.attn, &lc.lse, &shape, &mask);
            let dq = b.rope_backward(&dq, shape.n_heads, shape.head_dim, pos, &self.inv_freq);
            let dk = b.rope_backward(&dk, shape.n_kv_heads, shape.head_dim, pos, &self.inv_freq);
            let mut dh = layer.q_proj.backward(
                b,
                &dq,
                &lc.h_attn,
                hq.as_ref(),
                train_base,
                seed(0),
                &format!("{p}.self_attn.q_proj"),
                &mut grads,
            );
            for (dproj, proj, h, name, idx) in
                [(&dk, &layer.k_proj, hk, "k_proj", 1), (&dv, &layer.v_proj, hv, "v_proj", 2)]
            {
                let dh_part = proj.backward(
                    b,
                    dproj,
                    &lc.h_attn,
                    h.as_ref(),
                    train_base,
                    seed(idx),
                    &format!("{p}.self_attn.{name}"),
                    &mut grads,
                );
                b.add_assign(&mut dh, &dh_part);
            }
            let norm_name = format!("{p}.input_layernorm");
            let dx_in = layer.input_layernorm.backward(b, &dh, &lc.x, train_base, &norm_name, &mut grads);
            b.add_assign(&mut dx, &dx_in); // dx is now ∂L/∂x entering layer l
        }

        if train_base {
            if let Some(s) = c.embedding_scale {
                dx = b.scale(&dx, s); // x = s·embedding(ids)
            }
            let mut dembed = b.embedding_backward(&dx, cache.seq.ids, c.vocab_size);
            if let Some(dhead) = dembed_from_head {
                b.add_assign(&mut dembed, &dhead); // tied: the table is also the output head
            }
            grads.insert("model.embed_tokens.weight".into(), dembed);
        }
        grads
    }
    // ANCHOR_END: llama_backward
}

/// The dropout seed of projection `proj` (0–6: q, k, v, o, gate, up, down) of layer `layer` for one forward.
fn dropout_seed_for(seed: u64, layer: usize, proj: u64) -> u64 {
    let mut r = crate::rng::Rng::new(seed ^ ((layer as u64) << 8 | proj).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    r.next_u64()
}
