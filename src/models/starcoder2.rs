//! StarCoder2 (`model_type: "starcoder2"`): BigCode's code models on the Llama decoder's skeleton with three
//! older choices — LayerNorm with a bias instead of RMSNorm, a plain MLP `c_proj(gelu(c_fc(x)))` instead of
//! SwiGLU, and biases on every projection (`use_bias`) — plus Mistral's optional sliding window in every
//! layer. Tensor names are Llama's except the MLP's (`mlp.c_fc`, `mlp.c_proj`) and the norms' `.bias`.

use super::decoder::{DecoderConfig, Gelu, MlpKind, NormKind, TensorNames};
use super::llama::NAMES as LLAMA_NAMES;
use super::llama::{DecoderDefaults, llama_shaped, norm_eps, require_activation};
use super::mistral::sliding_window;
use crate::io::hf_config::HfConfig;
use anyhow::Result;

/// Llama's names, but the plain MLP's `c_fc` and `c_proj`.
pub const NAMES: TensorNames = TensorNames { gate: None, up: "mlp.c_fc", down: "mlp.c_proj", ..LLAMA_NAMES };

/// transformers' `Starcoder2Config` defaults where they differ from Llama's.
const DEFAULTS: DecoderDefaults =
    DecoderDefaults { max_position_embeddings: 4096, tie_word_embeddings: true, head_dim: None };

// ANCHOR: starcoder2_config
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let mut c = llama_shaped(cfg, &DEFAULTS)?;
    // `gelu_new` is the same tanh approximation under its older name
    require_activation(cfg, "hidden_act", &["gelu_pytorch_tanh", "gelu_new"])?;
    c.norm = NormKind::Layer;
    c.norm_eps = norm_eps(cfg, "norm_epsilon", 1e-5)?;
    c.mlp = MlpKind::Plain(Gelu::Tanh);
    c.names = NAMES;
    let use_bias = cfg.opt_bool("use_bias")?.unwrap_or(true);
    (c.attention.qkv_bias, c.attention.o_bias, c.mlp_bias) = (use_bias, use_bias, use_bias);
    c.attention.windows = vec![sliding_window(cfg)?; c.num_hidden_layers]; // absent or null: no window
    Ok(c)
}
// ANCHOR_END: starcoder2_config

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Result<DecoderConfig> {
        let mut json = serde_json::json!({
            "model_type": "starcoder2", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2
        });
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let cfg = HfConfig { path: "s/config.json".into(), json: json.as_object().unwrap().clone() };
        config_from_hf(&cfg)
    }

    #[test]
    fn defaults_follow_starcoder2_config() {
        let c = config(serde_json::json!({})).unwrap();
        assert_eq!((c.norm, c.mlp, c.norm_eps), (NormKind::Layer, MlpKind::Plain(Gelu::Tanh), 1e-5));
        assert!(c.attention.qkv_bias && c.attention.o_bias && c.mlp_bias && c.tie_word_embeddings);
        assert_eq!(c.attention.windows, vec![None; 2]);
        let c = config(serde_json::json!({"use_bias": false, "sliding_window": 16, "norm_epsilon": 1e-6})).unwrap();
        assert!(!c.attention.qkv_bias && !c.attention.o_bias && !c.mlp_bias);
        assert_eq!((c.attention.windows, c.norm_eps), (vec![Some(16); 2], 1e-6));
    }

    #[test]
    fn an_erf_gelu_is_refused_by_name() {
        let err = config(serde_json::json!({"hidden_act": "gelu"})).unwrap_err().to_string();
        assert!(err.contains("s/config.json") && err.contains("`hidden_act` is `gelu`"), "{err}");
    }
}
