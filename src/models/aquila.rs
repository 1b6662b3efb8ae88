//! Aquila2 (`model_type: aquila`), as its own modeling file (the one MFTCoder ships) computes it: Llama's
//! stack, names and defaults (RMSNorm ε 10⁻⁶, RoPE θ from `rope_theta`, `rope_scaling` linear), with one
//! difference. With `use_xformers: false` the attention is computed by hand and the scaled scores are clamped
//! to ±1024 before the causal mask; with `use_xformers` (the config class's default) xformers'
//! memory-efficient kernel runs instead, without a clamp. `pretraining_tp` only splits the matrices into
//! slices whose products are summed again: the same function, so any value is accepted.

use super::decoder::DecoderConfig;
use super::llama::{self, DecoderDefaults, require_activation};
use crate::io::hf_config::HfConfig;
use anyhow::Result;

/// The bound of the reference's `torch.clamp(attn_weights, min=-1024., max=1024.)`.
pub const SCORE_CLAMP: f32 = 1024.0;

// ANCHOR: aquila_config
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let mut c = llama::llama_shaped(cfg, &DecoderDefaults::LLAMA)?;
    require_activation(cfg, "hidden_act", &["silu"])?;
    let use_xformers = cfg.opt_bool("use_xformers")?.unwrap_or(true);
    c.attention.score_clamp = (!use_xformers).then_some(SCORE_CLAMP);
    Ok(c)
}
// ANCHOR_END: aquila_config

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Result<DecoderConfig> {
        let mut json = serde_json::json!({
            "model_type": "aquila", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2
        });
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        config_from_hf(&HfConfig { path: "a/config.json".into(), json: json.as_object().unwrap().clone() })
    }

    #[test]
    fn the_clamp_follows_use_xformers_and_the_rest_is_llama() {
        assert_eq!(config(serde_json::json!({})).unwrap().attention.score_clamp, None);
        let c = config(serde_json::json!({"use_xformers": false, "pretraining_tp": 2})).unwrap();
        assert_eq!(c.attention.score_clamp, Some(1024.0));
        assert_eq!(c.attention_shape().score_clamp, Some(1024.0));
        let mut llama = c.clone();
        llama.attention.score_clamp = None;
        assert_eq!(llama, config(serde_json::json!({})).unwrap());
        let scaled = config(serde_json::json!({"rope_scaling": {"type": "linear", "factor": 2.0}})).unwrap();
        assert!(format!("{:?}", scaled.rope()).contains("Linear"));
    }

    #[test]
    fn bad_values_name_the_field() {
        for (extra, want) in [
            (serde_json::json!({"use_xformers": "no"}), "`use_xformers`"),
            (serde_json::json!({"hidden_act": "relu"}), "`hidden_act`"),
            (serde_json::json!({"rope_scaling": {"type": "dynamic", "factor": 2.0}}), "rope_scaling"),
        ] {
            let err = config(extra.clone()).unwrap_err().to_string();
            assert!(err.starts_with("a/config.json: field ") && err.contains(want), "{extra}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}
