//! Qwen2 / Qwen2.5 / Qwen2.5-Coder (`model_type: "qwen2"`): the Llama decoder with biases on q_proj, k_proj and
//! v_proj (none on o_proj or the MLP), and sliding-window attention that can be switched on for the upper
//! layers only. The released checkpoints keep `use_sliding_window: false`.
//!
//! Which layers slide: transformers 5 writes `layer_types` ("full_attention" / "sliding_attention" per layer)
//! into config.json; older files give `max_window_layers` instead, and layer i slides iff
//! `use_sliding_window` and i ≥ `max_window_layers`. Either way the window is `sliding_window` when
//! `use_sliding_window` is true and absent otherwise (transformers clears it), so a "sliding_attention" layer
//! in a config with `use_sliding_window: false` attends to everything.

use super::decoder::DecoderConfig;
use super::llama::{DecoderDefaults, llama_shaped, require_activation};
use super::mistral::sliding_window;
use crate::io::hf_config::HfConfig;
use anyhow::{Result, bail};

/// transformers' `Qwen2Config` defaults where they differ from Llama's.
const DEFAULTS: DecoderDefaults =
    DecoderDefaults { max_position_embeddings: 32768, tie_word_embeddings: false, head_dim: None };
const DEFAULT_SLIDING_WINDOW: usize = 4096;
const DEFAULT_MAX_WINDOW_LAYERS: usize = 28;

// ANCHOR: qwen2_config
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let path = cfg.path.display();
    let mut c = llama_shaped(cfg, &DEFAULTS)?;
    require_activation(cfg, "hidden_act", &["silu"])?;
    c.attention.qkv_bias = true;
    let window = match cfg.opt_bool("use_sliding_window")?.unwrap_or(false) {
        false => None,
        true if cfg.json.contains_key("sliding_window") => sliding_window(cfg)?,
        true => Some(DEFAULT_SLIDING_WINDOW),
    };
    let layers = c.num_hidden_layers;
    c.attention.windows = match cfg.json.get("layer_types").filter(|v| !v.is_null()) {
        Some(types) => {
            let types = types.as_array().filter(|t| t.len() == layers).ok_or_else(|| {
                anyhow::anyhow!("{path}: field `layer_types` must be a list of {layers} strings (one per layer)")
            })?;
            let mut windows = Vec::with_capacity(layers);
            for (i, t) in types.iter().enumerate() {
                windows.push(match t.as_str() {
                    Some("full_attention") => None,
                    Some("sliding_attention") => window,
                    _ => bail!(
                        "{path}: field `layer_types[{i}]` is {t}; allowed: \"full_attention\", \"sliding_attention\""
                    ),
                });
            }
            windows
        }
        None => {
            let first_sliding = cfg.opt_usize("max_window_layers")?.unwrap_or(DEFAULT_MAX_WINDOW_LAYERS);
            (0..layers).map(|i| window.filter(|_| i >= first_sliding)).collect()
        }
    };
    Ok(c)
}
// ANCHOR_END: qwen2_config

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Result<DecoderConfig> {
        let mut json = serde_json::json!({
            "model_type": "qwen2", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2
        });
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let cfg = HfConfig { path: "q/config.json".into(), json: json.as_object().unwrap().clone() };
        config_from_hf(&cfg)
    }

    #[test]
    fn biases_on_q_k_v_only_and_no_window_by_default() {
        let c = config(serde_json::json!({"sliding_window": 8, "max_window_layers": 1})).unwrap();
        assert!(c.attention.qkv_bias && !c.attention.o_bias && !c.mlp_bias);
        assert_eq!(c.attention.windows, vec![None; 3], "use_sliding_window defaults to false");
    }

    #[test]
    fn max_window_layers_and_layer_types_choose_the_sliding_layers() {
        let c = config(serde_json::json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1}));
        assert_eq!(c.unwrap().attention.windows, vec![None, Some(8), Some(8)]);
        let types = serde_json::json!(["sliding_attention", "full_attention", "sliding_attention"]);
        let c = config(serde_json::json!({"use_sliding_window": true, "sliding_window": 8, "layer_types": types}));
        assert_eq!(c.unwrap().attention.windows, vec![Some(8), None, Some(8)]);
        let c = config(serde_json::json!({"use_sliding_window": false, "sliding_window": 8, "layer_types": types}));
        assert_eq!(c.unwrap().attention.windows, vec![None; 3], "transformers clears the window");
    }

    #[test]
    fn a_bad_layer_type_is_named() {
        let types = serde_json::json!(["full_attention", "chunked_attention", "full_attention"]);
        let err = config(serde_json::json!({"layer_types": types})).unwrap_err().to_string();
        assert!(err.contains("q/config.json") && err.contains("`layer_types[1]`"), "{err}");
        let err = config(serde_json::json!({"layer_types": ["full_attention"]})).unwrap_err().to_string();
        assert!(err.contains("a list of 3 strings"), "{err}");
    }
}
