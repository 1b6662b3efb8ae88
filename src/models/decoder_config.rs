//! What a decoder-only transformer is made of, part by part: the one config every family reads its
//! `config.json` into. The decoder (`models::decoder`) is written once against these parts; a family file
//! (`llama.rs`, `gpt_neox.rs`, …) only chooses them and names its tensors.
//!
//! | part | choices | who |
//! |---|---|---|
//! | q/k/v projections | separate, or one fused matrix in a stated layout ([`FusedQkv`]) | GPT-BigCode, GPT-NeoX fuse |
//! | positions | RoPE over all or the first `dims` of each head; learned absolute embeddings; ALiBi | GPT-BigCode learns them, Baichuan2-13B biases |
//! | residual | sequential; parallel (attention and MLP read the same input), with one shared norm or two | GPT-NeoX, Phi |
//! | norms | RMSNorm, (1 + w) RMSNorm, LayerNorm with bias | Gemma, StarCoder2, GPT-* |
//! | MLP | gated SiLU / GELU, plain GELU (tanh or exact erf) | Llama, Gemma, StarCoder2, GPT-NeoX |
//! | attention | biases, softmax scale, sliding windows per layer, a score clamp | Qwen2, GPT-BigCode, Mistral, Aquila2 |
//! | feed-forward | the MLP, or in chosen layers a mixture of experts ([`Moe`]) | Mixtral, Qwen2-MoE, DeepSeek-V2 |
//! | latent attention | q/k/v from a low-rank latent per token ([`LatentAttention`]) | DeepSeek-V2 |

pub use super::latent_attention::{LatentAttention, LatentNames};
use crate::backend::AttentionShape;
use crate::io::hf_config::{RopeScaling, RopeSpec};
pub use crate::nn::fused_qkv::FusedQkv;
pub use crate::nn::mlp::Gelu;
pub use crate::nn::moe_router::{RouterSpec, Selection};

// ANCHOR: decoder_config
/// A decoder's config, resolved from `config.json` (each family's reader applies transformers' defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub attention: Attention,
    pub positions: Positions,
    pub residual: Residual,
    pub norm: NormKind,
    /// The norms' ε (`rms_norm_eps`, `norm_epsilon`, `layer_norm_epsilon`, …).
    pub norm_eps: f32,
    /// The MLP (of every layer, and of every expert and shared expert where the layer is sparse).
    pub mlp: MlpKind,
    pub mlp_bias: bool,
    /// A mixture of experts in place of the MLP, in the layers it names.
    pub moe: Option<Moe>,
    /// Gemma multiplies the embeddings by √hidden (the output head uses the unscaled table).
    pub embedding_scale: Option<f32>,
    pub tie_word_embeddings: bool,
    /// A bias on the output head (Phi).
    pub lm_head_bias: bool,
    /// Baichuan2's `NormHead`: every forward uses the output head's rows L2-normalised (see `norm_head.rs`).
    pub normalized_head: bool,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Where the checkpoint keeps each tensor.
    pub names: TensorNames,
}

/// What varies in the attention block.
#[derive(Clone, Debug, PartialEq)]
pub struct Attention {
    /// One fused q/k/v matrix in this layout, or three separate projections (`None`).
    pub fused_qkv: Option<FusedQkv>,
    /// Biases on the q, k, v projections (or the fused one).
    pub qkv_bias: bool,
    /// A bias on the output projection.
    pub o_bias: bool,
    /// The softmax scale: 1/√head_dim, or 1 where GPT-BigCode's `scale_attn_weights` is off.
    pub scale: f32,
    /// Per layer, the sliding window (None: every earlier position is visible).
    pub windows: Vec<Option<usize>>,
    /// A norm over each head of q and of k, after the projection and before RoPE (Phi's `qk_layernorm`).
    pub qk_norm: bool,
    /// Keys and values from a low-rank latent (DeepSeek-V2's MLA); `head_dim` is then its
    /// [`LatentAttention::head_width`] and `qkv_bias` the bias of its two down-projections.
    pub latent: Option<LatentAttention>,
    /// Clamp the scaled scores to ±this before the mask (Aquila2 with `use_xformers: false`: 1024).
    pub score_clamp: Option<f32>,
    /// Qwen-1's `use_logn_attn`, with its trained `seq_length` L: at inference the query at position p ≥ L
    /// is scaled by log_L(p + 1), keeping the attention's entropy as the context outgrows L. Training
    /// leaves queries alone (as the reference does in train mode).
    pub logn_beyond: Option<usize>,
}

/// How a token learns where it is.
#[derive(Clone, Debug, PartialEq)]
pub enum Positions {
    /// RoPE on the first `dims` entries of every q and k head (all of them, or a fraction: GPT-NeoX's
    /// `rotary_pct`, Phi's `partial_rotary_factor`), paired as `pairing` says; the rest pass through.
    Rotary { rope: RopeSpec, dims: usize, pairing: RotaryPairing },
    /// A learned table of `max_position_embeddings` rows added to the token embeddings (GPT-BigCode's `wpe`).
    Learned,
    /// No position input at all: ALiBi's per-head linear bias on the attention scores (Baichuan2-13B).
    Alibi,
}

impl Positions {
    /// RoPE on the first `dims` entries of each head in the rotate-half pairing (most families).
    pub fn rotary(rope: RopeSpec, dims: usize) -> Self {
        Positions::Rotary { rope, dims, pairing: RotaryPairing::Halves }
    }
}

/// Which entries of a head RoPE turns together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotaryPairing {
    /// Entry i with entry i + dims/2 (rotate-half: Llama and most others).
    Halves,
    /// Entries 2i and 2i + 1 (ChatGLM, from GLM's 2D rotary). The decoder reorders the rotated entries of
    /// every q and k head to [even | odd] and turns halves: one permutation of both q and k leaves q·k as
    /// it was (`nn::rope::interleaved_to_halves`).
    Interleaved,
}

/// How each layer's two blocks meet the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residual {
    /// h = x + attn(n₁(x)); x' = h + mlp(n₂(h))  (Llama and most others)
    Sequential,
    /// x' = x + attn(n₁(x)) + mlp(n₂(x))  (GPT-NeoX's `use_parallel_residual`)
    Parallel,
    /// x' = x + attn(n(x)) + mlp(n(x)), one norm for both  (Phi)
    ParallelSharedNorm,
    /// h = n₁(x) + attn(n₁(x)); x' = n₂(h) + mlp(n₂(h)): the skips carry the normed stream
    /// (ChatGLM's `apply_residual_connection_post_layernorm`)
    SequentialNormedSkip,
}

/// The MLP of each layer: gated (`down(act(gate(x)) ⊙ up(x))`) or plain (`down(act(up(x)))`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpKind {
    /// SwiGLU: Llama, Mistral, Qwen2.
    GatedSilu,
    /// GeGLU with GELU's tanh approximation: Gemma.
    GatedGelu,
    /// GELU between two projections: StarCoder2 and GPT-BigCode (tanh), GPT-NeoX (exact erf), Phi (tanh).
    Plain(Gelu),
    /// SwiGLU with gate and up in one projection whose output is [gate | up], each `intermediate_size`
    /// wide (ChatGLM's `dense_h_to_4h`); the up name holds it, and there is no gate name.
    FusedSwiGlu,
}

/// A sparse mixture-of-experts feed-forward block: a router, `experts` MLPs of which each token visits
/// `top_k`, and optionally a shared expert every token visits (Qwen2-MoE: scaled by a sigmoid gate).
#[derive(Clone, Debug, PartialEq)]
pub struct Moe {
    pub router: RouterSpec,
    /// The intermediate width of each routed expert.
    pub expert_intermediate_size: usize,
    /// Per layer: a mixture of experts (true) or the dense MLP of `intermediate_size` (false).
    pub sparse_layers: Vec<bool>,
    /// The shared expert's intermediate width, and whether a sigmoid gate scales it.
    pub shared_expert: Option<(usize, bool)>,
    /// The balance loss and how it enters training.
    pub aux_loss: AuxLoss,
}

/// How a mixture's balance loss enters training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AuxLoss {
    /// transformers' `load_balancing_loss_func` over every sparse layer; `coef` times it joins the training
    /// loss (Mixtral, Qwen2-MoE: `router_aux_loss_coef`, as MFTCoder adds it).
    LoadBalancing { coef: f32 },
    /// DeepSeek-V2's own gates (the model code MFTCoder trains it with): in every sparse layer a balance term
    /// over each sequence (`seq_aux`) or over the whole batch, times `alpha` (`aux_loss_alpha`). Its gradient
    /// joins the backward; the reported loss stays the cross-entropy.
    SequenceBalance { alpha: f32, per_sequence: bool },
    /// No balance term (DeepSeek-V2 as transformers runs it).
    None,
}

impl AuxLoss {
    /// The factor on the aux term's gradient.
    pub fn gradient_weight(&self) -> f32 {
        match *self {
            AuxLoss::LoadBalancing { coef } => coef,
            AuxLoss::SequenceBalance { alpha, .. } => alpha,
            AuxLoss::None => 0.0,
        }
    }

    /// The factor on the aux term in the reported loss.
    pub fn loss_weight(&self) -> f32 {
        match *self {
            AuxLoss::LoadBalancing { coef } => coef,
            _ => 0.0,
        }
    }
}

pub use super::layers::NormKind;
// ANCHOR_END: decoder_config

// ANCHOR: tensor_names
/// A family's tensor names: Hugging Face module paths without `.weight` / `.bias`. Layer modules are relative
/// to `{layers}.{i}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorNames {
    pub embed: &'static str,
    /// The learned position table (with [`Positions::Learned`]).
    pub positions: Option<&'static str>,
    pub layers: &'static str,
    pub input_norm: &'static str,
    /// The MLP's norm (`None` with [`Residual::ParallelSharedNorm`]).
    pub post_attention_norm: Option<&'static str>,
    /// q, k, v — or the single fused projection, when the config fuses them.
    pub qkv: QkvNames,
    /// The per-head q and k norms (with [`Attention::qk_norm`]).
    pub qk_norms: Option<(&'static str, &'static str)>,
    pub o: &'static str,
    /// `None` for a plain MLP.
    pub gate: Option<&'static str>,
    pub up: &'static str,
    pub down: &'static str,
    pub final_norm: &'static str,
    /// The output head (unused when tied to `embed`).
    pub lm_head: &'static str,
    /// A sparse layer's modules (with [`DecoderConfig::moe`]).
    pub moe: Option<MoeNames>,
}

/// Where a sparse layer keeps its router and experts; expert e's projections are `{experts}.{e}.{gate}` etc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeNames {
    pub router: &'static str,
    pub experts: &'static str,
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
    /// The shared expert (its projections named like the dense MLP's, under this module) and its gate.
    pub shared_expert: Option<&'static str>,
    pub shared_expert_gate: Option<&'static str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkvNames {
    Separate { q: &'static str, k: &'static str, v: &'static str },
    Fused(&'static str),
    Latent(LatentNames),
}
// ANCHOR_END: tensor_names

impl DecoderConfig {
    /// A Llama-shaped config with transformers' `LlamaConfig` defaults for everything but the shape
    /// (θ = 10⁴, ε = 10⁻⁶, untied, no biases, head_dim = hidden/heads): for tests and benchmarks.
    pub fn with_shape(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
    ) -> Self {
        let head_dim = hidden_size / heads;
        DecoderConfig {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            attention: Attention {
                fused_qkv: None,
                qkv_bias: false,
                o_bias: false,
                scale: 1.0 / (head_dim as f32).sqrt(),
                windows: vec![None; layers],
                qk_norm: false,
                latent: None,
                score_clamp: None,
                logn_beyond: None,
            },
            positions: Positions::Rotary {
                rope: RopeSpec { theta: 10_000.0, scaling: RopeScaling::None },
                dims: head_dim,
                pairing: RotaryPairing::Halves,
            },
            residual: Residual::Sequential,
            norm: NormKind::Rms,
            norm_eps: 1e-6,
            mlp: MlpKind::GatedSilu,
            mlp_bias: false,
            moe: None,
            embedding_scale: None,
            tie_word_embeddings: false,
            lm_head_bias: false,
            normalized_head: false,
            max_position_embeddings: 2048,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            names: super::llama::NAMES,
        }
    }

    pub fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            scale: self.attention.scale,
            alibi: self.positions == Positions::Alibi,
            score_clamp: self.attention.score_clamp,
        }
    }

    /// RoPE's parameters, with rotary positions.
    pub fn rope(&self) -> Option<&RopeSpec> {
        match &self.positions {
            Positions::Rotary { rope, .. } => Some(rope),
            Positions::Learned | Positions::Alibi => None,
        }
    }

    /// Width of the q, k and v projections' outputs together.
    pub fn qkv_width(&self) -> usize {
        (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim
    }

    /// Width of the attention output o_proj reads: heads · head_dim, or heads · v_head_dim with a latent.
    pub fn attention_output_width(&self) -> usize {
        let per_head = self.attention.latent.as_ref().map_or(self.head_dim, |la| la.v_dim);
        self.num_attention_heads * per_head
    }

    /// Whether the MLP has a gate projection of its own.
    pub fn mlp_is_gated(&self) -> bool {
        matches!(self.mlp, MlpKind::GatedSilu | MlpKind::GatedGelu)
    }

    /// Whether layer `l` is a mixture of experts.
    pub fn is_sparse(&self, l: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| m.sparse_layers[l])
    }
}
