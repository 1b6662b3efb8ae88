//! Phi (`model_type: "phi"`: phi-1, phi-1.5, phi-2, as transformers' `PhiForCausalLM`). One LayerNorm per
//! layer feeds attention and MLP in parallel, x' = x + dense(attn(n(x))) + fc2(gelu(fc1(n(x)))); separate
//! q/k/v projections with biases; RoPE on the first `partial_rotary_factor` of each head; an output head
//! with a bias; optionally (`qk_layernorm`) a LayerNorm over each head of q and k before RoPE.

use super::decoder::{DecoderConfig, Positions, QkvNames, Residual, TensorNames};
use super::gpt_bigcode::{gelu, gpt_shaped};
use super::gpt_neox::rotary_dims;
use super::llama::{head_shape, norm_eps};
use crate::io::hf_config::{HfConfig, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};
use anyhow::{Result, bail};

// ANCHOR: phi_names
pub const NAMES: TensorNames = TensorNames {
    embed: "model.embed_tokens",
    positions: None,
    layers: "model.layers",
    input_norm: "input_layernorm",
    post_attention_norm: None, // the MLP reads input_layernorm's output
    qkv: QkvNames::Separate { q: "self_attn.q_proj", k: "self_attn.k_proj", v: "self_attn.v_proj" },
    qk_norms: Some(("self_attn.q_layernorm", "self_attn.k_layernorm")),
    o: "self_attn.dense",
    gate: None,
    up: "mlp.fc1",
    down: "mlp.fc2",
    final_norm: "model.final_layernorm",
    lm_head: "lm_head",
    moe: None,
};
// ANCHOR_END: phi_names

// ANCHOR: phi_config
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let hidden_size = cfg.size("hidden_size", cfg.usize("hidden_size")?, MAX_WIDTH)?;
    let layers = cfg.size("num_hidden_layers", cfg.usize("num_hidden_layers")?, MAX_LAYERS)?;
    // PhiConfig has no head_dim: heads are hidden / num_attention_heads wide
    if cfg.opt_usize("head_dim")?.is_some() {
        bail!(
            "{}: field `head_dim` is not read by Phi (heads are hidden_size / num_attention_heads)",
            cfg.path.display()
        );
    }
    let (heads, kv_heads, head_dim) = head_shape(cfg, hidden_size, None)?;
    let (rope, fraction) = cfg.partial_rope(10_000.0, "rope_theta", "partial_rotary_factor", 0.5)?;
    cfg.refuse_yarn(&rope)?;
    let dims = rotary_dims(cfg, head_dim, fraction, "partial_rotary_factor")?;
    let shape = (
        cfg.size("vocab_size", cfg.usize("vocab_size")?, MAX_VOCAB)?,
        hidden_size,
        cfg.size("intermediate_size", cfg.usize("intermediate_size")?, MAX_WIDTH)?,
        layers,
        heads,
        kv_heads,
    );
    let mut c = gpt_shaped(cfg, shape, gelu(cfg, "hidden_act", "gelu_new")?, norm_eps(cfg, "layer_norm_eps", 1e-5)?)?;
    c.head_dim = head_dim;
    c.attention.qk_norm = cfg.opt_bool("qk_layernorm")?.unwrap_or(false);
    c.positions = Positions::rotary(rope, dims);
    c.residual = Residual::ParallelSharedNorm;
    c.lm_head_bias = true;
    c.max_position_embeddings = cfg.opt_usize("max_position_embeddings")?.unwrap_or(2048);
    c.names = NAMES;
    Ok(c)
}
// ANCHOR_END: phi_config

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::decoder::MlpKind;
    use crate::nn::mlp::Gelu;

    fn config(extra: serde_json::Value) -> Result<DecoderConfig> {
        let mut json = serde_json::json!({
            "model_type": "phi", "vocab_size": 32, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": null
        });
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let cfg = HfConfig { path: "p/config.json".into(), json: json.as_object().unwrap().clone() };
        config_from_hf(&cfg)
    }

    #[test]
    fn defaults_follow_phi_config() {
        let c = config(serde_json::json!({})).unwrap();
        assert_eq!((c.num_key_value_heads, c.head_dim, c.residual), (4, 16, Residual::ParallelSharedNorm));
        assert!(matches!(c.positions, Positions::Rotary { dims: 8, .. }), "partial_rotary_factor defaults to 0.5");
        assert_eq!(c.mlp, MlpKind::Plain(Gelu::Tanh));
        assert!(c.lm_head_bias && !c.tie_word_embeddings && !c.attention.qk_norm);
        let c =
            config(serde_json::json!({"qk_layernorm": true, "partial_rotary_factor": 0.25, "num_key_value_heads": 2}));
        let c = c.unwrap();
        assert!(c.attention.qk_norm && matches!(c.positions, Positions::Rotary { dims: 4, .. }));
        assert_eq!(c.num_key_value_heads, 2);
    }
}
