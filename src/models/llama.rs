//! Llama (and the checkpoints that share its layout: Llama-2, CodeLlama, DeepSeek-Coder v1, SmolLM2, …).
//!
//! Pre-norm decoder: for each layer
//!   h = x + o_proj(attention(rope(q_proj(n₁(x))), rope(k_proj(n₁(x))), v_proj(n₁(x))))
//!   x = h + down_proj(silu(gate_proj(n₂(h))) ⊙ up_proj(n₂(h)))
//! then the final norm and the output head (the embedding matrix itself when `tie_word_embeddings`).

use crate::backend::{AttentionMask, AttentionShape, Backend};
use crate::io::hf_config::{HfConfig, RopeSpec};
use crate::io::safetensors::WeightStore;
use crate::nn::rope::inverse_frequencies;
use anyhow::{Result, bail};
use ndarray::Array2;

/// `config.json` of a Llama checkpoint, resolved (defaults as `LlamaConfig` in transformers). Mistral and Qwen2
/// are this decoder with other biases and sliding windows: `models::mistral` and `models::qwen2` read their
/// configs into this struct.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// The norms' ε (`rms_norm_eps`; StarCoder2's `norm_epsilon`).
    pub norm_eps: f32,
    pub norm: NormKind,
    pub mlp: MlpKind,
    /// Gemma multiplies the embeddings by √hidden (the output head uses the unscaled table).
    pub embedding_scale: Option<f32>,
    pub rope: RopeSpec,
    /// Biases on q_proj, k_proj, v_proj (Llama's `attention_bias`; always on in Qwen2).
    pub qkv_bias: bool,
    /// A bias on o_proj (Llama's `attention_bias`; never in Qwen2).
    pub o_proj_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Per layer, the sliding window of its attention (None: every earlier position is visible).
    pub attention_windows: Vec<Option<usize>>,
}

/// The MLP of each layer: gated (`down(act(gate(x)) ⊙ up(x))`) or plain (`c_proj(act(c_fc(x)))`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpKind {
    /// SwiGLU: Llama, Mistral, Qwen2.
    GatedSilu,
    /// GeGLU with GELU's tanh approximation: Gemma.
    GatedGelu,
    /// GELU (tanh approximation) between two projections: StarCoder2.
    PlainGelu,
}

impl MlpKind {
    /// The Hugging Face names of the (gate, up, down) projections under `mlp.`.
    pub fn projection_names(self) -> (Option<&'static str>, &'static str, &'static str) {
        match self {
            MlpKind::PlainGelu => (None, "c_fc", "c_proj"),
            MlpKind::GatedSilu | MlpKind::GatedGelu => (Some("gate_proj"), "up_proj", "down_proj"),
        }
    }
}

/// What a decoder's config defaults to where transformers' config classes differ.
pub struct DecoderDefaults {
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Gemma's `head_dim` defaults to 256; the others derive it as hidden / heads.
    pub head_dim: Option<usize>,
}

impl DecoderDefaults {
    pub const LLAMA: DecoderDefaults =
        DecoderDefaults { max_position_embeddings: 2048, tie_word_embeddings: false, head_dim: None };
}

impl LlamaConfig {
    // ANCHOR: llama_config
    pub fn from_hf(cfg: &HfConfig) -> Result<Self> {
        let mut c = Self::decoder_from_hf(cfg, &DecoderDefaults::LLAMA)?;
        require_activation(cfg, "hidden_act", &["silu"])?;
        if let Some(tp) = cfg.opt_usize("pretraining_tp")?.filter(|&tp| tp != 1) {
            bail!("{}: field `pretraining_tp` is {tp}; only 1 is supported", cfg.path.display());
        }
        let attention_bias = cfg.opt_bool("attention_bias")?.unwrap_or(false);
        (c.qkv_bias, c.o_proj_bias) = (attention_bias, attention_bias);
        c.mlp_bias = cfg.opt_bool("mlp_bias")?.unwrap_or(false);
        Ok(c)
    }
    // ANCHOR_END: llama_config

    // ANCHOR: decoder_config
    /// The fields every Llama-shaped decoder's config.json shares, with transformers' defaults: RMSNorm with
    /// `rms_norm_eps`, a SwiGLU MLP, no biases, full attention in every layer (the caller sets what its
    /// architecture changes, and checks its activation).
    pub fn decoder_from_hf(cfg: &HfConfig, defaults: &DecoderDefaults) -> Result<Self> {
        let path = cfg.path.display();
        let hidden_size = cfg.usize("hidden_size")?;
        let heads = cfg.usize("num_attention_heads")?;
        let kv_heads = cfg.opt_usize("num_key_value_heads")?.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            bail!("{path}: field `num_key_value_heads` ({kv_heads}) must divide `num_attention_heads` ({heads})");
        }
        let head_dim = match cfg.opt_usize("head_dim")?.or(defaults.head_dim) {
            Some(d) => d,
            None if hidden_size % heads == 0 => hidden_size / heads,
            None => bail!(
                "{path}: field `hidden_size` ({hidden_size}) is not a multiple of `num_attention_heads` ({heads}) and `head_dim` is not given"
            ),
        };
        if head_dim % 2 != 0 {
            bail!("{path}: field `head_dim` ({head_dim}) must be even for rotary embeddings");
        }
        let num_hidden_layers = cfg.usize("num_hidden_layers")?;
        Ok(LlamaConfig {
            vocab_size: cfg.usize("vocab_size")?,
            hidden_size,
            intermediate_size: cfg.usize("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            norm_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            norm: NormKind::Rms,
            mlp: MlpKind::GatedSilu,
            embedding_scale: None,
            rope: cfg.rope(10_000.0)?,
            qkv_bias: false,
            o_proj_bias: false,
            mlp_bias: false,
            tie_word_embeddings: cfg.opt_bool("tie_word_embeddings")?.unwrap_or(defaults.tie_word_embeddings),
            max_position_embeddings: cfg
                .opt_usize("max_position_embeddings")?
                .unwrap_or(defaults.max_position_embeddings),
            bos_token_id: cfg.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: cfg.token_ids("eos_token_id")?,
            attention_windows: vec![None; num_hidden_layers],
        })
    }
    // ANCHOR_END: decoder_config

    /// A config of the given shape with transformers' `LlamaConfig` defaults for everything else
    /// (θ = 10⁴, ε = 10⁻⁶, untied, no biases, head_dim = hidden/heads): for tests and benchmarks.
    pub fn with_shape(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
    ) -> Self {
        LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim: hidden_size / heads,
            norm_eps: 1e-6,
            norm: NormKind::Rms,
            mlp: MlpKind::GatedSilu,
            embedding_scale: None,
            rope: RopeSpec { theta: 10_000.0, scaling: crate::io::hf_config::RopeScaling::None },
            qkv_bias: false,
            o_proj_bias: false,
            mlp_bias: false,
            tie_word_embeddings: false,
            max_position_embeddings: 2048,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            attention_windows: vec![None; layers],
        }
    }

    pub fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
        }
    }
}

pub use super::layers::{Gradients, Linear, Lora, Norm, NormKind, Weight};

/// Refuse an activation this code does not compute, naming the field (absent: the first allowed value).
pub fn require_activation(cfg: &HfConfig, field: &str, allowed: &[&str]) -> Result<()> {
    match cfg.opt_str(field)? {
        Some(act) if !allowed.contains(&act.as_str()) => bail!(
            "{}: field `{field}` is `{act}`; this architecture supports {}",
            cfg.path.display(),
            allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")
        ),
        _ => Ok(()),
    }
}
pub use super::llama_train::{LayerCache, Sequence, TrainCache};

/// Load `prefix.weight` [out, in] (and `prefix.bias` [out]) as a linear layer.
fn load_linear<B: Backend>(
    b: &B,
    store: &WeightStore,
    prefix: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> Result<Linear<B>> {
    let weight = b.upload_weight(store.matrix(&format!("{prefix}.weight"), out, inp)?);
    let bias = if bias { Some(b.upload(row(store, &format!("{prefix}.bias"), out)?)) } else { None };
    Ok(Linear::new(weight, bias))
}

/// A vector parameter as a [1, n] row.
fn row(store: &WeightStore, name: &str, len: usize) -> Result<Array2<f32>> {
    Ok(store.vector(name, len)?.insert_axis(ndarray::Axis(0)))
}

pub struct LlamaLayer<B: Backend> {
    pub input_layernorm: Norm<B>,
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub post_attention_layernorm: Norm<B>,
    /// None for a plain MLP (StarCoder2), whose `up_proj` and `down_proj` are named `c_fc` and `c_proj`.
    pub gate_proj: Option<Linear<B>>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

pub struct Llama<B: Backend> {
    pub config: LlamaConfig,
    pub embed_tokens: B::Tensor,
    pub layers: Vec<LlamaLayer<B>>,
    pub norm: Norm<B>,
    /// `None` when the head is tied to `embed_tokens`.
    pub lm_head: Option<B::Tensor>,
    pub inv_freq: Vec<f32>,
    /// Activation checkpointing: `forward_train` keeps only each layer's input and `backward` recomputes the
    /// rest of the layer, trading one extra forward for memory (see `TrainCache::activation_bytes`).
    pub recompute_activations: bool,
    /// LoRA training: the base weights, biases, norms and embeddings are frozen; only adapters get gradients
    /// (and the frozen matrices compute no weight gradient at all).
    pub frozen_base: bool,
    /// Set by the trainer for each micro-batch to turn on LoRA dropout; `None` (inference, evaluation) = off.
    pub dropout_seed: Option<u64>,
}

// ANCHOR: kv_cache
/// Keys and values of every layer for the positions seen so far.
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(B::Tensor, B::Tensor)>>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(n_layers: usize) -> Self {
        KvCache { layers: (0..n_layers).map(|_| None).collect(), len: 0 }
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

impl<B: Backend> Llama<B> {
    // ANCHOR: llama_load
    pub fn load(b: &B, store: &WeightStore, config: LlamaConfig) -> Result<Self> {
        let c = &config;
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (q_out, kv_out) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let norm = |name: &str| -> Result<Norm<B>> {
            let weight = b.upload(row(store, &format!("{name}.weight"), h)?);
            let bias = match c.norm {
                NormKind::Layer => Some(b.upload(row(store, &format!("{name}.bias"), h)?)),
                _ => None,
            };
            Ok(Norm::new(b, c.norm, c.norm_eps, weight, bias))
        };
        let (gate_name, up_name, down_name) = c.mlp.projection_names();
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mlp = |name: &str, out: usize, inp: usize| {
                load_linear(b, store, &format!("{p}.mlp.{name}"), out, inp, c.mlp_bias)
            };
            layers.push(LlamaLayer {
                input_layernorm: norm(&format!("{p}.input_layernorm"))?,
                q_proj: load_linear(b, store, &format!("{p}.self_attn.q_proj"), q_out, h, c.qkv_bias)?,
                k_proj: load_linear(b, store, &format!("{p}.self_attn.k_proj"), kv_out, h, c.qkv_bias)?,
                v_proj: load_linear(b, store, &format!("{p}.self_attn.v_proj"), kv_out, h, c.qkv_bias)?,
                o_proj: load_linear(b, store, &format!("{p}.self_attn.o_proj"), h, q_out, c.o_proj_bias)?,
                post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm"))?,
                gate_proj: gate_name.map(|name| mlp(name, i, h)).transpose()?,
                up_proj: mlp(up_name, i, h)?,
                down_proj: mlp(down_name, h, i)?,
            });
        }
        // Tied checkpoints usually omit lm_head.weight; transformers ties even when it is present.
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(b.upload_weight(store.matrix("lm_head.weight", c.vocab_size, h)?))
        };
        Ok(Llama {
            embed_tokens: {
                let table = store.matrix("model.embed_tokens.weight", c.vocab_size, h)?;
                // tied: the table is also the output head's W
                if c.tie_word_embeddings { b.upload_weight(table) } else { b.upload(table) }
            },
            norm: norm("model.norm")?,
            lm_head,
            layers,
            inv_freq: inverse_frequencies(&c.rope, d),
            recompute_activations: false,
            frozen_base: false,
            dropout_seed: None,
            config,
        })
    }
    // ANCHOR_END: llama_load

    /// A model with seeded random weights (N(0, 0.02²) matrices, unit norms, zero biases), for benchmarks and
    /// tests that need a shape rather than a checkpoint.
    pub fn random(b: &B, config: LlamaConfig, seed: u64) -> Self {
        let mut rng = crate::rng::Rng::new(seed);
        // `as_weight`: the matrix is the W of a linear layer (see `Backend::upload_weight`)
        let mut random = |rows: usize, cols: usize, as_weight: bool| {
            let m = Array2::from_shape_fn((rows, cols), |_| (rng.normal() * 0.02) as f32);
            if as_weight { b.upload_weight(m) } else { b.upload(m) }
        };
        let c = &config;
        let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let (q_out, kv_out) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let zeros = |n: usize, on: bool| on.then(|| b.upload(Array2::zeros((1, n))));
        // unit norms: w = 1, or w = 0 where the weight is an offset from one
        let unit = if c.norm == NormKind::RmsUnitOffset { 0.0 } else { 1.0 };
        let norm = || {
            let weight = b.upload(Array2::from_elem((1, h), unit));
            Norm::new(b, c.norm, c.norm_eps, weight, zeros(h, c.norm == NormKind::Layer))
        };
        let mut layers = Vec::new();
        for _ in 0..c.num_hidden_layers {
            layers.push(LlamaLayer {
                input_layernorm: norm(),
                q_proj: Linear::new(random(q_out, h, true), zeros(q_out, c.qkv_bias)),
                k_proj: Linear::new(random(kv_out, h, true), zeros(kv_out, c.qkv_bias)),
                v_proj: Linear::new(random(kv_out, h, true), zeros(kv_out, c.qkv_bias)),
                o_proj: Linear::new(random(h, q_out, true), zeros(h, c.o_proj_bias)),
                post_attention_layernorm: norm(),
                gate_proj: (c.mlp != MlpKind::PlainGelu).then(|| Linear::new(random(i, h, true), zeros(i, c.mlp_bias))),
                up_proj: Linear::new(random(i, h, true), zeros(i, c.mlp_bias)),
                down_proj: Linear::new(random(h, i, true), zeros(h, c.mlp_bias)),
            });
        }
        let embed_tokens = random(c.vocab_size, h, c.tie_word_embeddings);
        let lm_head = (!c.tie_word_embeddings).then(|| random(c.vocab_size, h, true));
        Llama {
            embed_tokens,
            layers,
            norm: norm(),
            lm_head,
            inv_freq: inverse_frequencies(&c.rope, d),
            recompute_activations: false,
            frozen_base: false,
            dropout_seed: None,
            config,
        }
    }

    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.config.num_hidden_layers)
    }

    // ANCHOR: llama_forward
    /// ids: [T] → logits [T, vocab] (or [1, vocab] with `Logits::Last`). With a cache, the ids continue the
    /// cached positions and their keys/values are appended to it.
    pub fn forward(&self, b: &B, ids: &[u32], mut cache: Option<&mut KvCache<B>>, which: Logits) -> Result<B::Tensor> {
        let c = &self.config;
        if ids.is_empty() {
            bail!("forward: no input tokens");
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= c.vocab_size) {
            bail!("forward: token id {bad} is outside the vocabulary (vocab_size {})", c.vocab_size);
        }
        let start = cache.as_ref().map_or(0, |kv| kv.len);
        let positions: Vec<usize> = (start..start + ids.len()).collect();
        let shape = c.attention_shape();

        let mut x = self.embed(b, ids); // [T, H]
        for (l, layer) in self.layers.iter().enumerate() {
            // attention block
            let h = layer.input_layernorm.forward(b, &x);
            let q = b.rope(&layer.q_proj.forward(b, &h), shape.n_heads, shape.head_dim, &positions, &self.inv_freq);
            let k = b.rope(&layer.k_proj.forward(b, &h), shape.n_kv_heads, shape.head_dim, &positions, &self.inv_freq);
            let v = layer.v_proj.forward(b, &h);
            let (k, v) = match cache.as_deref_mut() {
                Some(kv) => {
                    let (k, v) = match kv.layers[l].take() {
                        Some((k_past, v_past)) => (b.concat_rows(&k_past, &k), b.concat_rows(&v_past, &v)),
                        None => (k, v),
                    };
                    kv.layers[l] = Some((k.clone(), v.clone()));
                    (k, v)
                }
                None => (k, v),
            };
            let mask = AttentionMask { q_offset: start, segment_ids: None, window: c.attention_windows[l] };
            let attn = b.causal_attention(&q, &k, &v, &shape, &mask); // [T, heads·d]
            x = b.add(&x, &layer.o_proj.forward(b, &attn));

            // MLP block
            let h = layer.post_attention_layernorm.forward(b, &x);
            let up = layer.up_proj.forward(b, &h);
            let gate = layer.gate_proj.as_ref().map(|gate_proj| gate_proj.forward(b, &h));
            x = b.add(&x, &layer.down_proj.forward(b, &self.activate(b, gate.as_ref(), &up)));
        }
        if let Some(kv) = cache {
            kv.len += ids.len();
        }
        if which == Logits::Last {
            x = b.slice_rows(&x, ids.len() - 1, ids.len());
        }
        let x = self.norm.forward(b, &x);
        Ok(b.linear(&x, self.lm_head.as_ref().unwrap_or(&self.embed_tokens), None)) // [T, vocab]
    }
    // ANCHOR_END: llama_forward

    // ANCHOR: mlp_activation
    /// The embedding rows of `ids`, times Gemma's √hidden where the config has it: [T, H].
    pub(super) fn embed(&self, b: &B, ids: &[u32]) -> B::Tensor {
        let x = b.embedding(&self.embed_tokens, ids);
        match self.config.embedding_scale {
            Some(s) => b.scale(&x, s),
            None => x,
        }
    }

    /// What the MLP's down projection reads: silu(gate) ⊙ up, gelu(gate) ⊙ up, or gelu(up) without a gate.
    pub(super) fn activate(&self, b: &B, gate: Option<&B::Tensor>, up: &B::Tensor) -> B::Tensor {
        match (self.config.mlp, gate) {
            (MlpKind::GatedSilu, Some(gate)) => b.swiglu(gate, up),
            (MlpKind::GatedGelu, Some(gate)) => b.mul(&b.gelu_tanh(gate), up),
            (MlpKind::PlainGelu, None) => b.gelu_tanh(up),
            (kind, _) => unreachable!("{kind:?} MLP with the wrong projections"),
        }
    }

    /// The activation's backward: d(activated) → (dgate, dup).
    pub(super) fn activate_backward(
        &self,
        b: &B,
        dactivated: &B::Tensor,
        gate: Option<&B::Tensor>,
        up: &B::Tensor,
    ) -> (Option<B::Tensor>, B::Tensor) {
        match (self.config.mlp, gate) {
            (MlpKind::GatedSilu, Some(gate)) => {
                let (dgate, dup) = b.swiglu_backward(dactivated, gate, up);
                (Some(dgate), dup)
            }
            // y = gelu(g) ⊙ u:  ∂L/∂u = dy ⊙ gelu(g),  ∂L/∂g = gelu′(g) ⊙ (dy ⊙ u)
            (MlpKind::GatedGelu, Some(gate)) => {
                let dup = b.mul(dactivated, &b.gelu_tanh(gate));
                (Some(b.gelu_tanh_backward(&b.mul(dactivated, up), gate)), dup)
            }
            (MlpKind::PlainGelu, None) => (None, b.gelu_tanh_backward(dactivated, up)),
            (kind, _) => unreachable!("{kind:?} MLP with the wrong projections"),
        }
    }
    // ANCHOR_END: mlp_activation
}

impl<B: Backend> Llama<B> {
    /// Every linear layer of the decoder with its HF module path (`model.layers.3.self_attn.q_proj`), in layer
    /// order; the output head is not among them (PEFT's `all-linear` leaves it out too).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear<B>)> {
        let (gate_name, up_name, down_name) = self.config.mlp.projection_names();
        let mut out = Vec::new();
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.self_attn.q_proj"), &mut layer.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut layer.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut layer.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut layer.o_proj));
            if let (Some(name), Some(gate_proj)) = (gate_name, layer.gate_proj.as_mut()) {
                out.push((format!("{p}.mlp.{name}"), gate_proj));
            }
            out.push((format!("{p}.mlp.{up_name}"), &mut layer.up_proj));
            out.push((format!("{p}.mlp.{down_name}"), &mut layer.down_proj));
        }
        out
    }

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

    /// Every parameter with its Hugging Face name, in a fixed order (embedding, layers, norm, head).
    pub fn named_parameters_mut(&mut self) -> Vec<(String, &mut B::Tensor)> {
        let (gate_name, up_name, down_name) = self.config.mlp.projection_names();
        let mut out: Vec<(String, &mut B::Tensor)> = vec![("model.embed_tokens.weight".into(), &mut self.embed_tokens)];
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{l}");
            push_norm(&mut out, format!("{p}.input_layernorm"), &mut layer.input_layernorm);
            let linears = [
                ("self_attn.q_proj", &mut layer.q_proj),
                ("self_attn.k_proj", &mut layer.k_proj),
                ("self_attn.v_proj", &mut layer.v_proj),
                ("self_attn.o_proj", &mut layer.o_proj),
            ];
            for (name, lin) in linears {
                if let Weight::Dense(w) = &mut lin.weight {
                    out.push((format!("{p}.{name}.weight"), w));
                }
                if let Some(bias) = lin.bias.as_mut() {
                    out.push((format!("{p}.{name}.bias"), bias));
                }
            }
            push_norm(&mut out, format!("{p}.post_attention_layernorm"), &mut layer.post_attention_layernorm);
            let gate = gate_name.zip(layer.gate_proj.as_mut());
            for (name, lin) in
                gate.into_iter().chain([(up_name, &mut layer.up_proj), (down_name, &mut layer.down_proj)])
            {
                if let Weight::Dense(w) = &mut lin.weight {
                    out.push((format!("{p}.mlp.{name}.weight"), w));
                }
                if let Some(bias) = lin.bias.as_mut() {
                    out.push((format!("{p}.mlp.{name}.bias"), bias));
                }
            }
        }
        push_norm(&mut out, "model.norm".into(), &mut self.norm);
        if let Some(head) = self.lm_head.as_mut() {
            out.push(("lm_head.weight".into(), head));
        }
        out
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
pub fn hf_shape(name: &str, (rows, cols): (usize, usize)) -> Vec<usize> {
    if rows == 1 && (name.ends_with("norm.weight") || name.ends_with(".bias")) { vec![cols] } else { vec![rows, cols] }
}
