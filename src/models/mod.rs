//! One file per architecture. Each maps `config.json` and the checkpoint's tensor names onto the shared
//! blocks of the Backend seam and holds only what is special about it.
pub mod gemma;
pub mod layers;
pub mod llama;
pub mod llama_train;
pub mod mistral;
pub mod qwen2;
pub mod starcoder2;

use crate::backend::Backend;
use crate::io::hf_config::HfConfig;
use crate::io::safetensors::WeightStore;
use anyhow::{Result, bail};
use std::path::Path;

/// The `model_type` values this build can run.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "starcoder2", "gemma"];

// ANCHOR: decoder_dispatch
/// The decoder config of a supported `model_type`: Llama, and the architectures that are Llama's decoder
/// with other biases, attention windows, norms or MLPs.
pub fn decoder_config(config: &HfConfig) -> Result<llama::LlamaConfig> {
    match config.model_type()?.as_str() {
        "llama" => llama::LlamaConfig::from_hf(config),
        "mistral" => mistral::config_from_hf(config),
        "qwen2" => qwen2::config_from_hf(config),
        "starcoder2" => starcoder2::config_from_hf(config),
        "gemma" => gemma::config_from_hf(config),
        other => bail!(
            "{}: field `model_type` is `{other}`, which is not supported (supported: {})",
            config.path.display(),
            SUPPORTED_MODEL_TYPES.join(", ")
        ),
    }
}
// ANCHOR_END: decoder_dispatch

/// Load a Hugging Face model directory (config.json + safetensors) onto a backend.
pub fn load_causal_lm<B: Backend>(backend: &B, model_dir: &Path) -> Result<llama::Llama<B>> {
    let cfg = decoder_config(&HfConfig::read(model_dir)?)?;
    let store: WeightStore = crate::quant::checkpoint::open_weights(model_dir)?; // 4-bit (bnb) weights come dequantized
    llama::Llama::load(backend, &store, cfg)
}
