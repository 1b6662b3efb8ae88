//! The decoder's parameters by their Hugging Face names: every linear layer (what LoRA adapts), the ones the
//! optimizer updates, and every tensor in a fixed order (what a checkpoint saves), with the shapes a
//! checkpoint gives them.

use super::decoder::{Decoder, LatentModule, Linear, Norm, QkvNames, QkvProjection, StackedBase, Weight};
use super::stacked_base::StackedWeight;
use crate::backend::Backend;

impl<B: Backend> Decoder<B> {
    /// Every linear layer of the decoder with its HF module path (`model.layers.3.self_attn.q_proj`), in layer
    /// order; the output head is not among them (PEFT's `all-linear` leaves it out too).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear<B>)> {
        let n = self.config.names;
        let config = &self.config;
        let mut out = Vec::new();
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("{}.{l}", n.layers);
            match (&mut layer.qkv, n.qkv) {
                (QkvProjection::Separate { q, k, v, .. }, QkvNames::Separate { q: qn, k: kn, v: vn }) => {
                    out.push((format!("{p}.{qn}"), q));
                    out.push((format!("{p}.{kn}"), k));
                    out.push((format!("{p}.{vn}"), v));
                }
                (QkvProjection::Fused(qkv), QkvNames::Fused(name)) => out.push((format!("{p}.{name}"), qkv)),
                (QkvProjection::Latent(mla), QkvNames::Latent(names)) => {
                    out.extend(mla.modules_mut(&names, &p).into_iter().filter_map(|(path, m)| match m {
                        LatentModule::Linear(lin) => Some((path, lin)),
                        LatentModule::Norm(_) => None,
                    }))
                }
                _ => unreachable!("checked at load"),
            }
            out.push((format!("{p}.{}", n.o), &mut layer.o_proj));
            out.extend(layer.ffn.linears_mut(config, &p));
        }
        out
    }

    // ANCHOR: freeze_base
    /// Hand every matrix of a frozen base to [`Backend::freeze`] (the GPU keeps them as bf16 under mixed
    /// precision): the layers' dense weights, the embedding tables and the output head. Norms and biases are
    /// vectors read element by element and stay as they are; so does a NormHead, normalized row by row at
    /// every step, and every 4-bit weight, already as small as it gets. The adapters' factors, trained and read
    /// only by products, go to [`Backend::prepare_trained_matrix`] (the GPU keeps a bf16 copy beside each).
    pub fn freeze_base(&mut self, b: &B) {
        assert!(self.frozen_base, "freeze_base: the base is being trained");
        self.stack_frozen_bases(b);
        for stack in self.stacked_bases_mut() {
            if let StackedWeight::Dense(w) = &mut stack.weight {
                b.freeze(w);
            }
        }
        for (_, linear) in self.linears_mut() {
            if let Weight::Dense(w) = &mut linear.weight {
                b.freeze(w);
            }
            if let Some(lora) = linear.lora.as_mut() {
                b.prepare_trained_matrix(&mut lora.a);
                b.prepare_trained_matrix(&mut lora.b);
            }
        }
        b.freeze(&mut self.embed_tokens);
        if let Some(table) = self.position_embeddings.as_mut() {
            b.freeze(table);
        }
        if let (Some(head), false) = (self.lm_head.as_mut(), self.config.normalized_head) {
            b.freeze(head);
        }
    }

    /// Stack each layer's q, k, v bases into one product, and each gated MLP's gate and up
    /// (`models::stacked_base`); projections that cannot share a product (dense and 4-bit mixed, a bias on a
    /// 4-bit part, a trained bias) stay apart.
    /// For bases nothing trains again: a LoRA run's frozen base, or a model taken for decoding. (A stacked
    /// weight is no parameter: `named_parameters_mut` refuses it.)
    pub fn stack_frozen_bases(&mut self, b: &B) {
        for layer in &mut self.layers {
            if let QkvProjection::Separate { q, k, v, stacked: stacked @ None } = &mut layer.qkv {
                *stacked = StackedBase::stack(b, &mut [q, k, v]);
            }
            for mlp in layer.ffn.mlps_mut() {
                if let (Some(gate), None) = (mlp.gate.as_mut(), &mlp.stacked_gate_up) {
                    mlp.stacked_gate_up = StackedBase::stack(b, &mut [gate, &mut mlp.up]);
                }
            }
        }
    }

    /// The inverse of [`Decoder::stack_frozen_bases`]: every part gets its own rows (and bias) back.
    pub fn unstack_frozen_bases(&mut self, b: &B) {
        for layer in &mut self.layers {
            if let QkvProjection::Separate { q, k, v, stacked } = &mut layer.qkv
                && let Some(stack) = stacked.take()
            {
                stack.unstack(b, &mut [q, k, v]);
            }
            for mlp in layer.ffn.mlps_mut() {
                if let (Some(gate), Some(stack)) = (mlp.gate.as_mut(), mlp.stacked_gate_up.take()) {
                    stack.unstack(b, &mut [gate, &mut mlp.up]);
                }
            }
        }
    }

    /// Every stacked frozen base, layer by layer.
    pub fn stacked_bases_mut(&mut self) -> Vec<&mut StackedBase<B>> {
        let mut out = Vec::new();
        for layer in &mut self.layers {
            if let QkvProjection::Separate { stacked: Some(stack), .. } = &mut layer.qkv {
                out.push(stack);
            }
            out.extend(layer.ffn.mlps_mut().into_iter().filter_map(|mlp| mlp.stacked_gate_up.as_mut()));
        }
        out
    }

    /// Where the backend keeps the frozen base, in bytes and parameters: dense matrices (the layers' weights,
    /// the embedding tables, the head) and 4-bit ones apart — the two "bytes per frozen parameter" of the
    /// benchmark (4 for f32, 2 for bf16; about 0.52 for NF4 + double quantization).
    pub fn frozen_base_bytes(&mut self, b: &B) -> FrozenBaseBytes {
        let mut sizes = FrozenBaseBytes::default();
        for (_, linear) in self.linears_mut() {
            match &linear.weight {
                Weight::Dense(w) => sizes.dense.add(b.stored_bytes(w), b.dims(w)),
                Weight::Packed(q, on_backend) => {
                    sizes.packed.add(b.packed_bytes(q, on_backend), (q.shape[0], q.shape[1]))
                }
                Weight::InStack { .. } => {} // counted with its stack below
            }
        }
        for stack in self.stacked_bases_mut() {
            match &stack.weight {
                StackedWeight::Dense(w) => sizes.dense.add(b.stored_bytes(w), b.dims(w)),
                StackedWeight::Packed(parts) => {
                    for (q, on_backend) in parts {
                        sizes.packed.add(b.packed_bytes(q, on_backend), (q.shape[0], q.shape[1]));
                    }
                }
            }
        }
        let tables = [Some(&self.embed_tokens), self.position_embeddings.as_ref(), self.lm_head.as_ref()];
        for t in tables.into_iter().flatten() {
            sizes.dense.add(b.stored_bytes(t), b.dims(t));
        }
        sizes
    }
    // ANCHOR_END: freeze_base

    /// The parameters the optimizer updates, named as in [`Gradients`]: every parameter for full fine-tuning,
    /// only the LoRA factors (`….lora_A`, `….lora_B`) when the base is frozen.
    pub fn trainable_parameters_mut(&mut self) -> Vec<(String, &mut B::Tensor)> {
        if !self.frozen_base {
            return self.named_parameters_mut();
        }
        let mut out = Vec::new();
        for (path, linear) in self.linears_mut() {
            if let Some(lora) = linear.lora.as_mut() {
                out.push((format!("{path}.lora_A"), &mut lora.a));
                out.push((format!("{path}.lora_B"), &mut lora.b));
            }
            if let (true, Some(bias)) = (linear.train_bias, linear.bias.as_mut()) {
                out.push((format!("{path}.bias"), bias));
            }
        }
        out
    }

    /// Every parameter with its Hugging Face name, in a fixed order (embeddings, layers, norm, head).
    pub fn named_parameters_mut(&mut self) -> Vec<(String, &mut B::Tensor)> {
        let n = self.config.names;
        let config = &self.config;
        let mut out: Vec<(String, &mut B::Tensor)> = vec![(format!("{}.weight", n.embed), &mut self.embed_tokens)];
        if let (Some(name), Some(table)) = (n.positions, self.position_embeddings.as_mut()) {
            out.push((format!("{name}.weight"), table));
        }
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("{}.{l}", n.layers);
            push_norm(&mut out, format!("{p}.{}", n.input_norm), &mut layer.input_norm);
            match (&mut layer.qkv, n.qkv) {
                (QkvProjection::Separate { q, k, v, .. }, QkvNames::Separate { q: qn, k: kn, v: vn }) => {
                    push_linear(&mut out, format!("{p}.{qn}"), q);
                    push_linear(&mut out, format!("{p}.{kn}"), k);
                    push_linear(&mut out, format!("{p}.{vn}"), v);
                }
                (QkvProjection::Fused(qkv), QkvNames::Fused(name)) => push_linear(&mut out, format!("{p}.{name}"), qkv),
                (QkvProjection::Latent(mla), QkvNames::Latent(names)) => {
                    for (path, module) in mla.modules_mut(&names, &p) {
                        match module {
                            LatentModule::Linear(lin) => push_linear(&mut out, path, lin),
                            LatentModule::Norm(norm) => push_norm(&mut out, path, norm),
                        }
                    }
                }
                _ => unreachable!("checked at load"),
            }
            if let (Some((qn, kn)), Some((q_norm, k_norm))) = (n.qk_norms, layer.qk_norms.as_mut()) {
                push_norm(&mut out, format!("{p}.{qn}"), q_norm);
                push_norm(&mut out, format!("{p}.{kn}"), k_norm);
            }
            push_linear(&mut out, format!("{p}.{}", n.o), &mut layer.o_proj);
            if let (Some(name), Some(norm)) = (n.post_attention_norm, layer.post_attention_norm.as_mut()) {
                push_norm(&mut out, format!("{p}.{name}"), norm);
            }
            for (path, lin) in layer.ffn.linears_mut(config, &p) {
                push_linear(&mut out, path, lin);
            }
        }
        push_norm(&mut out, n.final_norm.to_string(), &mut self.norm);
        if let Some(head) = self.lm_head.as_mut() {
            out.push((format!("{}.weight", n.lm_head), head));
        }
        if let Some(bias) = self.lm_head_bias.as_mut() {
            out.push((format!("{}.bias", n.lm_head), bias));
        }
        out
    }
}

/// A dense linear layer's weight and its bias under `name`.
fn push_linear<'a, B: Backend>(out: &mut Vec<(String, &'a mut B::Tensor)>, name: String, lin: &'a mut Linear<B>) {
    match &mut lin.weight {
        Weight::Dense(w) => out.push((format!("{name}.weight"), w)),
        Weight::InStack { .. } => panic!("{name}: a stacked frozen base is not a parameter"),
        Weight::Packed(..) => {}
    }
    if let Some(bias) = lin.bias.as_mut() {
        out.push((format!("{name}.bias"), bias));
    }
}

/// A norm's weight (and LayerNorm's bias) under `name`.
fn push_norm<'a, B: Backend>(out: &mut Vec<(String, &'a mut B::Tensor)>, name: String, norm: &'a mut Norm<B>) {
    out.push((format!("{name}.weight"), &mut norm.weight));
    if let Some(bias) = norm.bias.as_mut() {
        out.push((format!("{name}.bias"), bias));
    }
}

/// The shape a parameter has in a Hugging Face checkpoint: norms and biases are vectors there, [1, n] rows here.
/// Norms are named `…norm` / `…layernorm` / `…layer_norm`, or GPT-2's `ln_1`, `ln_2`, `ln_f`.
pub fn hf_shape(name: &str, (rows, cols): (usize, usize)) -> Vec<usize> {
    let is_norm_weight = name.strip_suffix(".weight").is_some_and(|module| {
        let last = module.rsplit('.').next().unwrap_or(module);
        last.contains("norm") || last.starts_with("ln_")
    });
    if rows == 1 && (name.ends_with(".bias") || is_norm_weight) { vec![cols] } else { vec![rows, cols] }
}

/// [`Decoder::frozen_base_bytes`]'s answer.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FrozenBaseBytes {
    pub dense: StoredBytes,
    pub packed: StoredBytes,
}

/// Bytes and the parameters they hold.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StoredBytes {
    pub bytes: usize,
    pub params: usize,
}

impl StoredBytes {
    fn add(&mut self, bytes: usize, (rows, cols): (usize, usize)) {
        self.bytes += bytes;
        self.params += rows * cols;
    }

    /// Bytes per parameter (0 when there is none).
    pub fn per_param(&self) -> f64 {
        if self.params == 0 { 0.0 } else { self.bytes as f64 / self.params as f64 }
    }
}
