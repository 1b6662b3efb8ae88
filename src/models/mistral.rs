//! Mistral (`model_type: "mistral"`): the Llama decoder with no biases at all and, optionally, sliding-window
//! attention in every layer — position p attends to positions p − w + 1 ..= p only. Mistral-7B v0.1 shipped
//! with w = 4096; later versions set `sliding_window: null` (full attention). The weights are named as Llama's,
//! so loading, LoRA targets and merging need nothing new.

use super::decoder::DecoderConfig;
use super::llama::{DecoderDefaults, llama_shaped, require_activation};
use crate::io::hf_config::HfConfig;
use anyhow::{Result, bail};

/// transformers' `MistralConfig` defaults where they differ from Llama's.
const DEFAULTS: DecoderDefaults =
    DecoderDefaults { max_position_embeddings: 4096 * 32, tie_word_embeddings: false, head_dim: None };
const DEFAULT_SLIDING_WINDOW: usize = 4096;

// ANCHOR: mistral_config
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let mut c = llama_shaped(cfg, &DEFAULTS)?;
    require_activation(cfg, "hidden_act", &["silu"])?;
    // MistralConfig defaults the window to 4096 when the field is absent; `null` turns it off.
    let window = match cfg.json.get("sliding_window") {
        None => Some(DEFAULT_SLIDING_WINDOW),
        Some(_) => sliding_window(cfg)?,
    };
    c.attention.windows = vec![window; c.num_hidden_layers];
    Ok(c)
}
// ANCHOR_END: mistral_config

/// `sliding_window`: null (no window) or a positive number of positions.
pub(super) fn sliding_window(cfg: &HfConfig) -> Result<Option<usize>> {
    match cfg.opt_usize("sliding_window")? {
        Some(0) => {
            bail!("{}: field `sliding_window` must be at least 1 (or null for full attention)", cfg.path.display())
        }
        w => Ok(w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Result<DecoderConfig> {
        let mut json = serde_json::json!({
            "model_type": "mistral", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2
        });
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let cfg = HfConfig { path: "m/config.json".into(), json: json.as_object().unwrap().clone() };
        config_from_hf(&cfg)
    }

    #[test]
    fn the_window_defaults_to_4096_and_null_turns_it_off() {
        assert_eq!(config(serde_json::json!({})).unwrap().attention.windows, vec![Some(4096); 2]);
        assert_eq!(config(serde_json::json!({"sliding_window": null})).unwrap().attention.windows, vec![None; 2]);
        assert_eq!(config(serde_json::json!({"sliding_window": 8})).unwrap().attention.windows, vec![Some(8); 2]);
        let c = config(serde_json::json!({"attention_bias": true})).unwrap();
        assert!(
            !c.attention.qkv_bias && !c.attention.o_bias && !c.mlp_bias,
            "Mistral has no biases whatever the config says"
        );
    }

    #[test]
    fn a_zero_window_is_an_error_naming_the_field() {
        let err = config(serde_json::json!({"sliding_window": 0})).unwrap_err().to_string();
        assert!(err.contains("m/config.json") && err.contains("`sliding_window`"), "{err}");
    }
}
