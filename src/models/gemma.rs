//! Gemma (`model_type: "gemma"`, the first generation; CodeGemma shares it): the Llama decoder with a GeGLU
//! MLP (`down(gelu(gate(x)) ⊙ up(x))`, GELU's tanh approximation), RMSNorm weights stored as offsets from one
//! (the norm multiplies by 1 + w), embeddings multiplied by √hidden on the way in (the tied output head uses
//! the unscaled table), and a `head_dim` of 256 unless the config says otherwise.

use super::decoder::{DecoderConfig, MlpKind, NormKind};
use super::llama::{DecoderDefaults, llama_shaped, require_activation};
use crate::io::hf_config::HfConfig;
use anyhow::{Result, bail};

/// transformers' `GemmaConfig` defaults where they differ from Llama's.
const DEFAULTS: DecoderDefaults =
    DecoderDefaults { max_position_embeddings: 8192, tie_word_embeddings: true, head_dim: Some(256) };

// ANCHOR: gemma_config
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let mut c = llama_shaped(cfg, &DEFAULTS)?;
    // The released configs say `gelu`, which GemmaConfig rewrites to the tanh approximation it always meant.
    require_activation(cfg, "hidden_act", &["gelu_pytorch_tanh", "gelu"])?;
    if cfg.opt_bool("use_bidirectional_attention")?.unwrap_or(false) {
        bail!(
            "{}: field `use_bidirectional_attention` is true; only causal attention is supported",
            cfg.path.display()
        );
    }
    c.norm = NormKind::RmsUnitOffset;
    c.mlp = MlpKind::GatedGelu;
    // transformers makes √hidden a tensor in the weights' dtype: f32 here
    c.embedding_scale = Some((c.hidden_size as f32).sqrt());
    let attention_bias = cfg.opt_bool("attention_bias")?.unwrap_or(false);
    (c.attention.qkv_bias, c.attention.o_bias) = (attention_bias, attention_bias);
    Ok(c)
}
// ANCHOR_END: gemma_config

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Result<DecoderConfig> {
        let mut json = serde_json::json!({
            "model_type": "gemma", "vocab_size": 32, "hidden_size": 48, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1
        });
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let cfg = HfConfig { path: "g/config.json".into(), json: json.as_object().unwrap().clone() };
        config_from_hf(&cfg)
    }

    #[test]
    fn defaults_follow_gemma_config() {
        let c = config(serde_json::json!({"hidden_act": "gelu"})).unwrap();
        assert_eq!((c.norm, c.mlp, c.head_dim), (NormKind::RmsUnitOffset, MlpKind::GatedGelu, 256));
        assert_eq!(c.embedding_scale, Some(6.928_203));
        assert!(c.tie_word_embeddings && !c.attention.qkv_bias && !c.attention.o_bias && !c.mlp_bias);
        assert_eq!(config(serde_json::json!({"head_dim": 24})).unwrap().head_dim, 24);
    }

    #[test]
    fn unsupported_fields_are_named() {
        let err = config(serde_json::json!({"hidden_act": "relu"})).unwrap_err().to_string();
        assert!(err.contains("g/config.json") && err.contains("`hidden_act`"), "{err}");
        let err = config(serde_json::json!({"use_bidirectional_attention": true})).unwrap_err().to_string();
        assert!(err.contains("`use_bidirectional_attention`"), "{err}");
    }
}
