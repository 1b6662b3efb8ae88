//! Llama (and the checkpoints that share its layout: Llama-2, CodeLlama, DeepSeek-Coder v1, SmolLM2, …), and
//! the config reader the Llama-shaped families (Mistral, Qwen2, Gemma, StarCoder2) build on.
//!
//! Pre-norm decoder with separate q/k/v projections, RoPE over whole heads, a sequential residual, RMSNorm and
//! a SwiGLU MLP, all named under `model.`:
//!   h = x + o_proj(attention(rope(q_proj(n₁(x))), rope(k_proj(n₁(x))), v_proj(n₁(x))))
//!   x = h + down_proj(silu(gate_proj(n₂(h))) ⊙ up_proj(n₂(h)))

use super::decoder::{Attention, DecoderConfig, MlpKind, NormKind, Positions, QkvNames, Residual, TensorNames};
use crate::io::hf_config::{HfConfig, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH, RopeSpec};
use anyhow::{Result, bail};

// ANCHOR: llama_names
/// Where a Llama checkpoint keeps its tensors (also Mistral's, Qwen2's and Gemma's).
pub const NAMES: TensorNames = TensorNames {
    embed: "model.embed_tokens",
    positions: None,
    layers: "model.layers",
    input_norm: "input_layernorm",
    post_attention_norm: Some("post_attention_layernorm"),
    qkv: QkvNames::Separate { q: "self_attn.q_proj", k: "self_attn.k_proj", v: "self_attn.v_proj" },
    qk_norms: None,
    o: "self_attn.o_proj",
    gate: Some("mlp.gate_proj"),
    up: "mlp.up_proj",
    down: "mlp.down_proj",
    final_norm: "model.norm",
    lm_head: "lm_head",
    moe: None,
};
// ANCHOR_END: llama_names

/// What a Llama-shaped config defaults to where transformers' config classes differ.
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

// ANCHOR: llama_config
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let mut c = llama_shaped(cfg, &DecoderDefaults::LLAMA)?;
    require_activation(cfg, "hidden_act", &["silu"])?;
    if let Some(tp) = cfg.opt_usize("pretraining_tp")?.filter(|&tp| tp != 1) {
        bail!("{}: field `pretraining_tp` is {tp}; only 1 is supported", cfg.path.display());
    }
    let attention_bias = cfg.opt_bool("attention_bias")?.unwrap_or(false);
    (c.attention.qkv_bias, c.attention.o_bias) = (attention_bias, attention_bias);
    c.mlp_bias = cfg.opt_bool("mlp_bias")?.unwrap_or(false);
    Ok(c)
}
// ANCHOR_END: llama_config

/// The attention heads' shape from the usual fields: (heads, kv_heads, head_dim), `head_dim` from the config,
/// the default, or hidden / heads.
pub(super) fn head_shape(
    cfg: &HfConfig,
    hidden_size: usize,
    default_head_dim: Option<usize>,
) -> Result<(usize, usize, usize)> {
    let path = cfg.path.display();
    let heads = cfg.size("num_attention_heads", cfg.usize("num_attention_heads")?, MAX_HEADS)?;
    let kv_heads =
        cfg.size("num_key_value_heads", cfg.opt_usize("num_key_value_heads")?.unwrap_or(heads), MAX_HEADS)?;
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        bail!("{path}: field `num_key_value_heads` ({kv_heads}) must divide `num_attention_heads` ({heads})");
    }
    let head_dim = match cfg.opt_usize("head_dim")?.or(default_head_dim) {
        Some(d) => cfg.size("head_dim", d, MAX_WIDTH)?,
        None if hidden_size % heads == 0 => hidden_size / heads,
        None => bail!(
            "{path}: field `hidden_size` ({hidden_size}) is not a multiple of `num_attention_heads` ({heads}) and `head_dim` is not given"
        ),
    };
    Ok((heads, kv_heads, head_dim))
}

// ANCHOR: decoder_config
/// The fields every Llama-shaped decoder's config.json shares, with transformers' defaults: RMSNorm with
/// `rms_norm_eps`, RoPE over whole heads, a SwiGLU MLP, no biases, full attention in every layer, Llama's
/// tensor names (the caller sets what its architecture changes, and checks its activation).
pub fn llama_shaped(cfg: &HfConfig, defaults: &DecoderDefaults) -> Result<DecoderConfig> {
    llama_shaped_with_rope(cfg, defaults, cfg.rope(10_000.0)?)
}

/// [`llama_shaped`] with RoPE's parameters read by the caller.
pub fn llama_shaped_with_rope(cfg: &HfConfig, defaults: &DecoderDefaults, rope: RopeSpec) -> Result<DecoderConfig> {
    let path = cfg.path.display();
    let hidden_size = cfg.size("hidden_size", cfg.usize("hidden_size")?, MAX_WIDTH)?;
    let (heads, kv_heads, head_dim) = head_shape(cfg, hidden_size, defaults.head_dim)?;
    if head_dim % 2 != 0 {
        bail!("{path}: field `head_dim` ({head_dim}) must be even for rotary embeddings");
    }
    let num_hidden_layers = cfg.size("num_hidden_layers", cfg.usize("num_hidden_layers")?, MAX_LAYERS)?;
    Ok(DecoderConfig {
        vocab_size: cfg.size("vocab_size", cfg.usize("vocab_size")?, MAX_VOCAB)?,
        hidden_size,
        intermediate_size: cfg.size("intermediate_size", cfg.usize("intermediate_size")?, MAX_WIDTH)?,
        num_hidden_layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        attention: Attention {
            fused_qkv: None,
            qkv_bias: false,
            o_bias: false,
            scale: 1.0 / (head_dim as f32).sqrt(),
            windows: vec![None; num_hidden_layers],
            qk_norm: false,
            latent: None,
            score_clamp: None,
            logn_beyond: None,
        },
        positions: Positions::rotary(rope, head_dim),
        residual: Residual::Sequential,
        norm: NormKind::Rms,
        norm_eps: norm_eps(cfg, "rms_norm_eps", 1e-6)?,
        mlp: MlpKind::GatedSilu,
        mlp_bias: false,
        moe: None,
        embedding_scale: None,
        tie_word_embeddings: cfg.opt_bool("tie_word_embeddings")?.unwrap_or(defaults.tie_word_embeddings),
        lm_head_bias: false,
        normalized_head: false,
        max_position_embeddings: cfg.opt_usize("max_position_embeddings")?.unwrap_or(defaults.max_position_embeddings),
        bos_token_id: cfg.token_ids("bos_token_id")?.first().copied(),
        eos_token_ids: cfg.token_ids("eos_token_id")?,
        names: NAMES,
    })
}
// ANCHOR_END: decoder_config

/// A norm's ε from `field` (absent: `default`), refused unless positive and finite.
pub fn norm_eps(cfg: &HfConfig, field: &str, default: f64) -> Result<f32> {
    let eps = cfg.opt_f64(field)?.unwrap_or(default);
    if !(eps > 0.0 && eps.is_finite()) {
        bail!("{}: field `{field}` is {eps}; it must be a positive number", cfg.path.display());
    }
    Ok(eps as f32)
}

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
