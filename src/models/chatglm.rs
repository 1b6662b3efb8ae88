//! ChatGLM2 and ChatGLM3 (`model_type: "chatglm"`; CodeGeeX2 and CodeFuse-CodeGeex2-6B are ChatGLM2), run
//! from their own remote code. Megatron-style names under `transformer.encoder`, and a decoder that differs
//! from Llama in four ways:
//! - RoPE turns only the first half of each head (`kv_channels / 2` entries), in interleaved pairs — the
//!   trace of GLM's 2D positional encoding, which gave the two halves of a head two position ids;
//! - one fused `query_key_value` = [q | k | v] with multi-query groups (`multi_query_group_num` key/value
//!   heads), biased by `add_qkv_bias`; without `multi_query_attention` it is laid out per head;
//! - one fused `dense_h_to_4h` = [gate | up] feeding SwiGLU;
//! - optionally (`apply_residual_connection_post_layernorm`) skips that leave from the normed stream.
//!
//! Positions are 0, 1, 2, … as the reference builds them when none are passed (MFTCoder passes none).
//! `rope_ratio` (ChatGLM3's 32k/128k checkpoints, whose own modeling file multiplies the base by it) scales
//! θ; MFTCoder's vendored copy predates the field and ignores it. `original_rope` selects nothing in any of
//! these files and is accepted either way.

use super::decoder::{
    DecoderConfig, FusedQkv, MlpKind, NormKind, Positions, QkvNames, Residual, RotaryPairing, TensorNames,
};
use super::llama::norm_eps;
use crate::io::hf_config::{HfConfig, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH, RopeScaling, RopeSpec};
use anyhow::{Result, bail};

// ANCHOR: chatglm_names
pub const NAMES: TensorNames = TensorNames {
    embed: "transformer.embedding.word_embeddings",
    positions: None,
    layers: "transformer.encoder.layers",
    input_norm: "input_layernorm",
    post_attention_norm: Some("post_attention_layernorm"),
    qkv: QkvNames::Fused("self_attention.query_key_value"),
    qk_norms: None,
    o: "self_attention.dense",
    gate: None,
    up: "mlp.dense_h_to_4h",
    down: "mlp.dense_4h_to_h",
    final_norm: "transformer.encoder.final_layernorm",
    lm_head: "transformer.output_layer",
    moe: None,
};
// ANCHOR_END: chatglm_names

// ANCHOR: chatglm_config
/// `ChatGLMConfig`'s defaults (those of THUDM's config class) where a field is absent.
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let path = cfg.path.display();
    let flag = |field: &str, default: bool| -> Result<bool> { Ok(cfg.opt_bool(field)?.unwrap_or(default)) };
    let hidden = cfg.size("hidden_size", cfg.opt_usize("hidden_size")?.unwrap_or(4096), MAX_WIDTH)?;
    let heads = cfg.size("num_attention_heads", cfg.opt_usize("num_attention_heads")?.unwrap_or(32), MAX_HEADS)?;
    let head_dim = cfg.size("kv_channels", cfg.opt_usize("kv_channels")?.unwrap_or(128), MAX_WIDTH)?;
    if head_dim % 4 != 0 {
        bail!(
            "{path}: field `kv_channels` is {head_dim}; RoPE turns half of each head in pairs, so it must be a multiple of 4"
        );
    }
    let kv_heads = match flag("multi_query_attention", false)? {
        true => cfg.size("multi_query_group_num", cfg.opt_usize("multi_query_group_num")?.unwrap_or(1), MAX_HEADS)?,
        false => heads,
    };
    if heads % kv_heads != 0 {
        bail!("{path}: field `multi_query_group_num` ({kv_heads}) must divide `num_attention_heads` ({heads})");
    }
    if !flag("post_layer_norm", true)? {
        bail!("{path}: field `post_layer_norm` is false; only checkpoints with a final norm are supported");
    }
    if let Some(p) = cfg.opt_usize("pre_seq_len")? {
        bail!("{path}: field `pre_seq_len` is {p}; P-tuning prefixes are not supported (null only)");
    }
    if let Some(bits) = cfg.opt_usize("quantization_bit")?.filter(|&b| b != 0) {
        bail!("{path}: field `quantization_bit` is {bits}; ChatGLM's own int4/int8 kernels are not supported (0 only)");
    }
    let vocab = match cfg.opt_usize("padded_vocab_size")? {
        Some(v) => cfg.size("padded_vocab_size", v, MAX_VOCAB)?,
        None => cfg.size("vocab_size", cfg.opt_usize("vocab_size")?.unwrap_or(65024), MAX_VOCAB)?,
    };
    let layers = cfg.size("num_layers", cfg.opt_usize("num_layers")?.unwrap_or(28), MAX_LAYERS)?;
    let ffn = cfg.size("ffn_hidden_size", cfg.opt_usize("ffn_hidden_size")?.unwrap_or(13696), MAX_WIDTH)?;
    let mut c = DecoderConfig::with_shape(vocab, hidden, ffn, layers, heads, kv_heads);
    c.head_dim = head_dim;
    c.attention.scale = 1.0 / (head_dim as f32).sqrt();
    c.attention.fused_qkv = Some(FusedQkv { groups: if kv_heads == heads { heads } else { 1 } });
    let linear_bias = flag("add_bias_linear", false)?;
    c.attention.qkv_bias = linear_bias || flag("add_qkv_bias", false)?;
    (c.attention.o_bias, c.mlp_bias) = (linear_bias, linear_bias);
    let rope_ratio = cfg.opt_f64("rope_ratio")?.unwrap_or(1.0);
    if !(rope_ratio > 0.0 && rope_ratio.is_finite()) {
        bail!("{path}: field `rope_ratio` is {rope_ratio}; it must be a positive number");
    }
    let rope = RopeSpec { theta: 10_000.0 * rope_ratio, scaling: RopeScaling::None };
    c.positions = Positions::Rotary { rope, dims: head_dim / 2, pairing: RotaryPairing::Interleaved };
    c.residual = match flag("apply_residual_connection_post_layernorm", false)? {
        true => Residual::SequentialNormedSkip,
        false => Residual::Sequential,
    };
    c.norm = if flag("rmsnorm", true)? { NormKind::Rms } else { NormKind::Layer };
    c.norm_eps = norm_eps(cfg, "layernorm_epsilon", 1e-5)?;
    c.mlp = MlpKind::FusedSwiGlu;
    // PretrainedConfig's default: transformers ties output_layer to the embedding unless told not to
    c.tie_word_embeddings = flag("tie_word_embeddings", true)?;
    c.max_position_embeddings = cfg.opt_usize("seq_length")?.unwrap_or(2048);
    c.bos_token_id = cfg.token_ids("bos_token_id")?.first().copied();
    c.eos_token_ids = cfg.token_ids("eos_token_id")?;
    c.names = NAMES;
    Ok(c)
}
// ANCHOR_END: chatglm_config

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Result<DecoderConfig> {
        let mut json = serde_json::json!({
            "model_type": "chatglm", "padded_vocab_size": 64, "hidden_size": 32, "ffn_hidden_size": 40,
            "num_layers": 2, "num_attention_heads": 4, "kv_channels": 8, "multi_query_attention": true,
            "multi_query_group_num": 2, "add_qkv_bias": true, "tie_word_embeddings": false
        });
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        config_from_hf(&HfConfig { path: "g/config.json".into(), json: json.as_object().unwrap().clone() })
    }

    #[test]
    fn released_layouts_resolve() {
        let c = config(serde_json::json!({})).unwrap();
        assert_eq!((c.num_key_value_heads, c.attention.fused_qkv, c.head_dim), (2, Some(FusedQkv { groups: 1 }), 8));
        assert_eq!(
            (c.mlp, c.residual, c.norm, c.norm_eps),
            (MlpKind::FusedSwiGlu, Residual::Sequential, NormKind::Rms, 1e-5)
        );
        let Positions::Rotary { rope, dims, pairing } = &c.positions else { panic!("rotary") };
        assert_eq!((rope.theta, *dims, *pairing), (10_000.0, 4, RotaryPairing::Interleaved));
        assert!(c.attention.qkv_bias && !c.attention.o_bias && !c.mlp_bias && !c.tie_word_embeddings);
        // without multi-query groups the fused projection is laid out per head; `rope_ratio` scales θ
        let mha = config(serde_json::json!({"multi_query_attention": false, "rope_ratio": 50,
            "apply_residual_connection_post_layernorm": true, "tie_word_embeddings": null}))
        .unwrap();
        assert_eq!((mha.num_key_value_heads, mha.attention.fused_qkv), (4, Some(FusedQkv { groups: 4 })));
        assert_eq!((mha.rope().unwrap().theta, mha.residual), (500_000.0, Residual::SequentialNormedSkip));
        assert!(mha.tie_word_embeddings, "PretrainedConfig ties by default");
    }

    #[test]
    fn bad_fields_are_named() {
        for (extra, want) in [
            (serde_json::json!({"kv_channels": 6}), "`kv_channels` is 6"),
            (serde_json::json!({"multi_query_group_num": 3}), "`multi_query_group_num` (3)"),
            (serde_json::json!({"post_layer_norm": false}), "`post_layer_norm` is false"),
            (serde_json::json!({"pre_seq_len": 8}), "`pre_seq_len` is 8"),
            (serde_json::json!({"quantization_bit": 4}), "`quantization_bit` is 4"),
            (serde_json::json!({"rope_ratio": 0}), "`rope_ratio` is 0"),
        ] {
            let err = config(extra).unwrap_err().to_string();
            assert!(err.starts_with("g/config.json: field `") && err.contains(want), "{err}");
        }
    }
}
