//! GPT-BigCode (`model_type: "gpt_bigcode"`): StarCoder / StarCoderBase / SantaCoder, and MFTCoder's
//! CodeFuse-StarCoder. GPT-2's decoder with multi-query attention: learned absolute positions added to the
//! token embeddings (`wpe`), LayerNorms with biases, one fused `c_attn` projection, a plain GELU MLP, biases on
//! every projection and a head tied to `wte`.
//!
//! `c_attn` computes q, k and v at once. With `multi_query` (StarCoder) its output is [q (hidden) | k (d) | v (d)]
//! in blocks: one key/value head shared by every query head. Without it each head's [q, k, v] sits together
//! (`view(heads, 3·d)`). `scale_attn_weights: false` drops the 1/√d of the softmax altogether.

use super::decoder::{DecoderConfig, FusedQkv, Gelu, MlpKind, NormKind, Positions, QkvNames, TensorNames};
use super::llama::norm_eps;
use crate::io::hf_config::{HfConfig, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};
use anyhow::{Result, bail};

// ANCHOR: gpt_bigcode_names
pub const NAMES: TensorNames = TensorNames {
    embed: "transformer.wte",
    positions: Some("transformer.wpe"),
    layers: "transformer.h",
    input_norm: "ln_1",
    post_attention_norm: Some("ln_2"),
    qkv: QkvNames::Fused("attn.c_attn"),
    qk_norms: None,
    o: "attn.c_proj",
    gate: None,
    up: "mlp.c_fc",
    down: "mlp.c_proj",
    final_norm: "transformer.ln_f",
    lm_head: "lm_head",
    moe: None,
};
// ANCHOR_END: gpt_bigcode_names

/// A GPT-2 style field, or its transformers alias (`n_embd` = `hidden_size`, …).
fn field(cfg: &HfConfig, gpt2_name: &str, alias: &str) -> Result<Option<usize>> {
    Ok(cfg.opt_usize(gpt2_name)?.or(cfg.opt_usize(alias)?))
}

/// The GELU an `activation_function` names (GPT-BigCode accepts any of transformers' names).
pub(super) fn gelu(cfg: &HfConfig, field: &str, default: &str) -> Result<Gelu> {
    let act = cfg.opt_str(field)?.unwrap_or_else(|| default.to_string());
    match act.as_str() {
        // the same tanh approximation under three names
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Gelu::Tanh),
        "gelu" => Ok(Gelu::Erf),
        other => bail!(
            "{}: field `{field}` is `{other}`; this architecture supports `gelu`, `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`",
            cfg.path.display()
        ),
    }
}

/// What GPT-2's descendants (GPT-BigCode, GPT-NeoX, Phi) share: LayerNorm with biases, a plain GELU MLP,
/// biases on every projection, softmax scale 1/√d, full attention; the caller sets positions, residual,
/// fusion, head and names. `shape` is (vocab, hidden, intermediate, layers, heads, kv_heads).
pub(super) fn gpt_shaped(
    cfg: &HfConfig,
    (vocab, hidden, intermediate, layers, heads, kv_heads): (usize, usize, usize, usize, usize, usize),
    gelu: Gelu,
    norm_eps: f32,
) -> Result<DecoderConfig> {
    let mut c = DecoderConfig::with_shape(vocab, hidden, intermediate, layers, heads, kv_heads);
    (c.attention.qkv_bias, c.attention.o_bias, c.mlp_bias) = (true, true, true);
    (c.norm, c.norm_eps, c.mlp) = (NormKind::Layer, norm_eps, MlpKind::Plain(gelu));
    c.bos_token_id = cfg.token_ids("bos_token_id")?.first().copied();
    c.eos_token_ids = cfg.token_ids("eos_token_id")?;
    Ok(c)
}

// ANCHOR: gpt_bigcode_config
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let path = cfg.path.display();
    let hidden_size = cfg.size("n_embd", field(cfg, "n_embd", "hidden_size")?.unwrap_or(768), MAX_WIDTH)?;
    let heads = cfg.size("n_head", field(cfg, "n_head", "num_attention_heads")?.unwrap_or(12), MAX_HEADS)?;
    let layers = cfg.size("n_layer", field(cfg, "n_layer", "num_hidden_layers")?.unwrap_or(12), MAX_LAYERS)?;
    if heads == 0 || hidden_size % heads != 0 {
        bail!("{path}: field `n_embd` ({hidden_size}) must be a multiple of `n_head` ({heads})");
    }
    let head_dim = hidden_size / heads;
    // multi-query: one key/value head, [q | k | v] in blocks; otherwise [q, k, v] per head
    let multi_query = cfg.opt_bool("multi_query")?.unwrap_or(true);
    let (kv_heads, groups) = if multi_query { (1, 1) } else { (heads, heads) };
    let scale = if cfg.opt_bool("scale_attn_weights")?.unwrap_or(true) { 1.0 / (head_dim as f32).sqrt() } else { 1.0 };
    let vocab = cfg.size("vocab_size", cfg.opt_usize("vocab_size")?.unwrap_or(50_257), MAX_VOCAB)?;
    let intermediate = cfg.size("n_inner", cfg.opt_usize("n_inner")?.unwrap_or(4 * hidden_size), MAX_WIDTH)?; // null: 4·hidden
    let gelu = gelu(cfg, "activation_function", "gelu_pytorch_tanh")?;
    let eps = norm_eps(cfg, "layer_norm_epsilon", 1e-5)?;
    let mut c = gpt_shaped(cfg, (vocab, hidden_size, intermediate, layers, heads, kv_heads), gelu, eps)?;
    c.attention.fused_qkv = Some(FusedQkv { groups });
    c.attention.scale = scale;
    c.positions = Positions::Learned;
    c.tie_word_embeddings = cfg.opt_bool("tie_word_embeddings")?.unwrap_or(true);
    c.max_position_embeddings = field(cfg, "n_positions", "max_position_embeddings")?.unwrap_or(1024);
    c.names = NAMES;
    Ok(c)
}
// ANCHOR_END: gpt_bigcode_config

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Result<DecoderConfig> {
        let mut json = serde_json::json!({
            "model_type": "gpt_bigcode", "vocab_size": 32, "n_embd": 16, "n_layer": 2, "n_head": 4, "n_positions": 64
        });
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let cfg = HfConfig { path: "b/config.json".into(), json: json.as_object().unwrap().clone() };
        config_from_hf(&cfg)
    }

    #[test]
    fn defaults_follow_gpt_bigcode_config() {
        let c = config(serde_json::json!({"n_inner": null})).unwrap();
        assert_eq!(
            (c.num_key_value_heads, c.attention.fused_qkv, c.intermediate_size),
            (1, Some(FusedQkv { groups: 1 }), 64)
        );
        assert_eq!(
            (c.mlp, c.norm, c.positions.clone(), c.max_position_embeddings),
            (MlpKind::Plain(Gelu::Tanh), NormKind::Layer, Positions::Learned, 64)
        );
        assert!(c.tie_word_embeddings && c.attention.qkv_bias && c.attention.o_bias && c.mlp_bias);
        assert_eq!(c.attention.scale, 0.5);
        let c = config(
            serde_json::json!({"multi_query": false, "scale_attn_weights": false, "activation_function": "gelu"}),
        );
        let c = c.unwrap();
        assert_eq!(
            (c.num_key_value_heads, c.attention.fused_qkv, c.attention.scale),
            (4, Some(FusedQkv { groups: 4 }), 1.0)
        );
        assert_eq!(c.mlp, MlpKind::Plain(Gelu::Erf));
    }

    #[test]
    fn an_unknown_activation_is_named() {
        let err = config(serde_json::json!({"activation_function": "relu"})).unwrap_err().to_string();
        assert!(err.contains("b/config.json") && err.contains("`activation_function` is `relu`"), "{err}");
    }
}
