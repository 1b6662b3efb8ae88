//! GPT-NeoX (`model_type: "gpt_neox"`): EleutherAI's Pythia and GPT-NeoX-20B, in MFTCoder's model table.
//! LayerNorms with biases, one fused `query_key_value` projection laid out per head ([qₕ, kₕ, vₕ] side by
//! side), RoPE on only the first `rotary_pct` of each head, an exact-erf GELU MLP, and — by default — the
//! parallel residual: attention and MLP both read the layer's input, x' = x + attn(n₁(x)) + mlp(n₂(x)).
//! The head is stored as `embed_out` (transformers 5 calls it `lm_head` in memory and renames it on save).

use super::decoder::{DecoderConfig, FusedQkv, Positions, QkvNames, Residual, TensorNames};
use super::gpt_bigcode::{gelu, gpt_shaped};
use super::llama::{head_shape, norm_eps};
use crate::io::hf_config::{HfConfig, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};
use anyhow::{Result, bail};

// ANCHOR: gpt_neox_names
pub const NAMES: TensorNames = TensorNames {
    embed: "gpt_neox.embed_in",
    positions: None,
    layers: "gpt_neox.layers",
    input_norm: "input_layernorm",
    post_attention_norm: Some("post_attention_layernorm"),
    qkv: QkvNames::Fused("attention.query_key_value"),
    qk_norms: None,
    o: "attention.dense",
    gate: None,
    up: "mlp.dense_h_to_4h",
    down: "mlp.dense_4h_to_h",
    final_norm: "gpt_neox.final_layer_norm",
    lm_head: "embed_out",
    moe: None,
};
// ANCHOR_END: gpt_neox_names

/// The rotated width of a head: ⌊d·fraction⌋ (Python's `int()`), which must be even and at least 2.
pub(super) fn rotary_dims(cfg: &HfConfig, head_dim: usize, fraction: f64, field: &str) -> Result<usize> {
    let dims = (head_dim as f64 * fraction) as usize;
    if dims < 2 || dims % 2 != 0 {
        bail!(
            "{}: field `{field}` ({fraction}) rotates {dims} of the {head_dim} entries of each head; that must be an even number ≥ 2",
            cfg.path.display()
        );
    }
    Ok(dims)
}

// ANCHOR: gpt_neox_config
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let hidden_size = cfg.size("hidden_size", cfg.usize("hidden_size")?, MAX_WIDTH)?;
    let layers = cfg.size("num_hidden_layers", cfg.usize("num_hidden_layers")?, MAX_LAYERS)?;
    let (heads, _, head_dim) = head_shape(cfg, hidden_size, None)?;
    let (rope, fraction) = cfg.partial_rope(10_000.0, "rotary_emb_base", "rotary_pct", 0.25)?;
    cfg.refuse_yarn(&rope)?;
    let dims = rotary_dims(cfg, head_dim, fraction, "rotary_pct")?;
    let attention_bias = cfg.opt_bool("attention_bias")?.unwrap_or(true);
    let parallel = cfg.opt_bool("use_parallel_residual")?.unwrap_or(true);
    let shape = (
        cfg.size("vocab_size", cfg.usize("vocab_size")?, MAX_VOCAB)?,
        hidden_size,
        cfg.size("intermediate_size", cfg.usize("intermediate_size")?, MAX_WIDTH)?,
        layers,
        heads,
        heads,
    );
    let mut c = gpt_shaped(cfg, shape, gelu(cfg, "hidden_act", "gelu")?, norm_eps(cfg, "layer_norm_eps", 1e-5)?)?;
    c.head_dim = head_dim;
    c.attention.fused_qkv = Some(FusedQkv { groups: heads }); // `view(heads, 3·d)`: one group per head
    (c.attention.qkv_bias, c.attention.o_bias) = (attention_bias, attention_bias);
    c.positions = Positions::rotary(rope, dims);
    c.residual = if parallel { Residual::Parallel } else { Residual::Sequential };
    c.tie_word_embeddings = cfg.opt_bool("tie_word_embeddings")?.unwrap_or(false);
    c.max_position_embeddings = cfg.opt_usize("max_position_embeddings")?.unwrap_or(2048);
    c.names = NAMES;
    Ok(c)
}
// ANCHOR_END: gpt_neox_config

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::decoder::MlpKind;
    use crate::nn::mlp::Gelu;

    fn config(extra: serde_json::Value) -> Result<DecoderConfig> {
        let mut json = serde_json::json!({
            "model_type": "gpt_neox", "vocab_size": 32, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4
        });
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let cfg = HfConfig { path: "n/config.json".into(), json: json.as_object().unwrap().clone() };
        config_from_hf(&cfg)
    }

    #[test]
    fn legacy_and_v5_rotary_fields_agree() {
        let legacy = config(serde_json::json!({"rotary_pct": 0.5, "rotary_emb_base": 500})).unwrap();
        let v5 = config(
            serde_json::json!({"rope_parameters": {"rope_type": "default", "rope_theta": 500, "partial_rotary_factor": 0.5}}),
        );
        assert_eq!(legacy, v5.unwrap());
        let Positions::Rotary { rope, dims, .. } = legacy.positions else { panic!("rotary") };
        assert_eq!((rope.theta, dims), (500.0, 8));
        let defaults = config(serde_json::json!({})).unwrap();
        assert_eq!(
            defaults.positions,
            Positions::rotary(
                crate::io::hf_config::RopeSpec { theta: 10_000.0, scaling: crate::io::hf_config::RopeScaling::None },
                4
            )
        );
        assert_eq!((defaults.residual, defaults.mlp), (Residual::Parallel, MlpKind::Plain(Gelu::Erf)));
        assert!(defaults.attention.qkv_bias && !defaults.tie_word_embeddings);
        assert_eq!(config(serde_json::json!({"use_parallel_residual": false})).unwrap().residual, Residual::Sequential);
    }

    #[test]
    fn an_odd_rotary_width_is_refused() {
        // heads of 16: ⌊16·0.2⌋ = 3 (odd), ⌊16·0.1⌋ = 1; ⌊16·0.3⌋ = 4 is fine
        let err = config(serde_json::json!({"rotary_pct": 0.2})).unwrap_err().to_string();
        assert!(err.contains("n/config.json") && err.contains("`rotary_pct`") && err.contains("rotates 3"), "{err}");
        let err = config(serde_json::json!({"rotary_pct": 0.1})).unwrap_err().to_string();
        assert!(err.contains("rotates 1"), "{err}");
        assert!(config(serde_json::json!({"rotary_pct": 0.3})).is_ok());
    }
}
