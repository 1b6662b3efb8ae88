//! The one decoder (`decoder.rs`, its parts in `decoder_config.rs`, training in `decoder_train.rs` and
//! `attention_inputs.rs`, the output head's training part in `decoder_head.rs`) and one file per family. Each
//! family file maps `config.json` onto a [`decoder::DecoderConfig`] and names its tensors; it holds only what
//! is special about the family.
pub mod aquila;
pub mod attention_inputs;
pub mod baichuan;
pub mod chatglm;
pub mod decoder;
pub mod decoder_config;
pub mod decoder_head;
pub mod decoder_train;
pub mod deepseek_v2;
pub mod feed_forward;
pub mod gemma;
pub mod gpt_bigcode;
pub mod gpt_neox;
pub mod info;
pub mod latent_attention;
pub mod layers;
pub mod llama;
pub mod mistral;
pub mod mixtral;
pub mod moe_balance;
pub mod norm_head;
pub mod parameters;
pub mod phi;
pub mod qwen;
pub mod qwen2;
pub mod qwen2_moe;
pub mod stacked_base;
pub mod starcoder2;

use crate::backend::Backend;
use crate::io::hf_config::HfConfig;
use crate::io::safetensors::WeightStore;
use anyhow::{Result, bail};
use decoder::{Decoder, DecoderConfig};
use std::path::Path;

/// The `model_type` values this build can run.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "starcoder2",
    "gemma",
    "gpt_bigcode",
    "gpt_neox",
    "phi",
    "mixtral",
    "qwen2_moe",
    "deepseek_v2",
    "baichuan",
    "aquila",
    "qwen",
    "chatglm",
];

// ANCHOR: decoder_dispatch
/// The decoder config of a supported `model_type`.
pub fn decoder_config(config: &HfConfig) -> Result<DecoderConfig> {
    match config.model_type()?.as_str() {
        "llama" => llama::config_from_hf(config),
        "mistral" => mistral::config_from_hf(config),
        "qwen2" => qwen2::config_from_hf(config),
        "starcoder2" => starcoder2::config_from_hf(config),
        "gemma" => gemma::config_from_hf(config),
        "gpt_bigcode" => gpt_bigcode::config_from_hf(config),
        "gpt_neox" => gpt_neox::config_from_hf(config),
        "phi" => phi::config_from_hf(config),
        "mixtral" => mixtral::config_from_hf(config),
        "qwen2_moe" => qwen2_moe::config_from_hf(config),
        "deepseek_v2" => deepseek_v2::config_from_hf(config),
        "baichuan" => baichuan::config_from_hf(config),
        "aquila" => aquila::config_from_hf(config),
        "qwen" => qwen::config_from_hf(config),
        "chatglm" => chatglm::config_from_hf(config),
        other => bail!(
            "{}: field `model_type` is `{other}`, which is not supported (supported: {})",
            config.path.display(),
            SUPPORTED_MODEL_TYPES.join(", ")
        ),
    }
}
// ANCHOR_END: decoder_dispatch

/// Load a Hugging Face model directory (config.json + safetensors) onto a backend.
pub fn load_causal_lm<B: Backend>(backend: &B, model_dir: &Path) -> Result<Decoder<B>> {
    let cfg = decoder_config(&HfConfig::read(model_dir)?)?;
    let store: WeightStore = crate::quant::checkpoint::open_weights(model_dir)?; // 4-bit (bnb) weights come dequantized
    Decoder::load(backend, &store, cfg)
}

/// The dropouts a config carries (StarCoder2's `residual_dropout`, GPT-BigCode's `resid_pdrop`, …; 0.1 in
/// many released models): transformers applies them in train mode; this project trains without them, like
/// every architecture here (LoRA dropout aside).
pub fn ignored_dropouts(cfg: &HfConfig) -> Result<Vec<(&'static str, f64)>> {
    const FIELDS: [&str; 8] = [
        "residual_dropout",
        "embedding_dropout",
        "attention_dropout",
        "hidden_dropout",
        "resid_pdrop",
        "embd_pdrop",
        "attn_pdrop",
        "summary_first_dropout",
    ];
    let mut out = Vec::new();
    for field in FIELDS {
        if let Some(p) = cfg.opt_f64(field)?.filter(|&p| p > 0.0) {
            out.push((field, p));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> Result<DecoderConfig> {
        let cfg = HfConfig { path: "x/config.json".into(), json: json.as_object().unwrap().clone() };
        decoder_config(&cfg)
    }

    /// Sizes out of range are one-line errors naming the field and its range, checked before anything is
    /// allocated from them; token ids past u32 are refused, not wrapped.
    #[test]
    fn sizes_and_ids_out_of_range_name_the_field() {
        let base = |model_type: &str| {
            serde_json::json!({"model_type": model_type, "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "n_embd": 16, "n_layer": 2, "n_head": 4, "rotary_pct": 0.5})
        };
        let cases: [(&str, &str, serde_json::Value, &str); 8] = [
            ("llama", "num_hidden_layers", serde_json::json!(1_000_000_000_000u64), "allowed: 1 to 1024"),
            ("llama", "num_hidden_layers", serde_json::json!(0), "allowed: 1 to 1024"),
            ("mistral", "hidden_size", serde_json::json!(0), "`hidden_size` is 0"),
            ("qwen2", "vocab_size", serde_json::json!(1u64 << 40), "`vocab_size`"),
            ("gpt_bigcode", "n_layer", serde_json::json!(1u64 << 30), "`n_layer`"),
            ("gpt_neox", "intermediate_size", serde_json::json!(0), "`intermediate_size`"),
            ("llama", "eos_token_id", serde_json::json!(1u64 << 32), "below 2³²"),
            ("llama", "rms_norm_eps", serde_json::json!(-1e-6), "`rms_norm_eps` is -0.000001"),
        ];
        for (model_type, field, value, want) in cases {
            let mut json = base(model_type);
            json[field] = value;
            let err = config(json).unwrap_err().to_string();
            assert!(err.starts_with("x/config.json: field `") && err.contains(want), "{model_type} {field}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        let mut json = base("llama");
        json["rope_theta"] = serde_json::json!(-10.0);
        assert!(config(json).unwrap_err().to_string().contains("`rope_theta` is -10"));
    }
}
