//! Memory a training run will certainly allocate, checked against what the machine has before any of it
//! is allocated: an impossible `seq_length`, batch size or `lora_rank` is then a one-line error that says
//! how much is needed, instead of an abort in the allocator.
//!
//! The estimate is a lower bound: one padded micro-batch (MFTCoder pads every row to `seq_length + 1`),
//! the logits and their gradient for the longest sample, one attention score matrix of it, one hidden
//! state per layer, and — with LoRA — one adapted projection per layer with its gradient and AdamW moments.

use crate::config::TrainConfig;
use anyhow::Result;
use std::path::Path;

/// The sizes the estimate needs, read leniently from `config.json` (a missing field counts as 0).
#[derive(Clone, Copy, Debug, Default)]
pub struct Shape {
    pub hidden: f64,
    pub layers: f64,
    pub vocab: f64,
}

impl Shape {
    pub fn read(model_dir: &Path) -> Shape {
        let json: serde_json::Value = std::fs::read_to_string(model_dir.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let first = |names: &[&str]| names.iter().find_map(|n| json.get(*n).and_then(|v| v.as_f64())).unwrap_or(0.0);
        Shape {
            hidden: first(&["hidden_size", "n_embd", "d_model"]),
            layers: first(&["num_hidden_layers", "n_layer", "num_layers"]),
            vocab: first(&["vocab_size", "padded_vocab_size"]),
        }
    }
}

// ANCHOR: training_bytes
/// A lower bound, in bytes, of what one optimizer step of `cfg` allocates, given the longest sample.
pub fn training_bytes(cfg: &TrainConfig, shape: Shape, longest: usize, lora_rank: Option<usize>) -> f64 {
    let f = 4.0; // f32
    let rows = cfg.per_device_train_batch_size.max(cfg.per_device_eval_batch_size) as f64;
    let padded = rows * (cfg.seq_length as f64 + 1.0) * (4.0 + 1.0 + 4.0); // ids, mask, segment per token
    let t = longest as f64;
    let activations = 2.0 * t * shape.vocab * f + t * t * f + t * shape.hidden * shape.layers * f;
    let lora = lora_rank.map_or(0.0, |r| shape.layers * r as f64 * 2.0 * shape.hidden * f * 4.0);
    padded + activations + lora
}
// ANCHOR_END: training_bytes

/// Stop before loading the model when the step cannot fit (the activations only on the CPU, where they live
/// in this process's memory; the padded batch on every device).
pub fn check_training_memory(cfg: &TrainConfig, longest: usize, lora_rank: Option<usize>) -> Result<()> {
    let shape = Shape::read(&cfg.pretrained_model_path);
    let bytes = if cfg.device == "cpu" {
        training_bytes(cfg, shape, longest, lora_rank)
    } else {
        training_bytes(cfg, Shape::default(), 0, None)
    };
    crate::runtime::ensure_memory(
        &format!(
            "a training step (seq_length {}, batch {}, longest sample {longest} tokens{})",
            cfg.seq_length,
            cfg.per_device_train_batch_size,
            lora_rank.map_or(String::new(), |r| format!(", lora_rank {r}"))
        ),
        bytes,
    )
}

/// The same for `dpo`: the logits of one answer of `max_length` tokens (both answers of a pair are alive
/// at once) and the adapters.
pub fn check_preference_memory(
    cfg: &crate::train::preference::PreferenceConfig,
    lora_rank: Option<usize>,
) -> Result<()> {
    let shape = Shape::read(&cfg.pretrained_model_path);
    let (t, f) = (cfg.max_length as f64, 4.0);
    let mut bytes = 2.0 * (2.0 * t * shape.vocab * f + t * t * f + t * shape.hidden * shape.layers * f);
    bytes += lora_rank.map_or(0.0, |r| shape.layers * r as f64 * 2.0 * shape.hidden * f * 4.0);
    if cfg.device != "cpu" {
        return Ok(());
    }
    let rank = lora_rank.map_or(String::new(), |r| format!(", lora_rank {r}"));
    crate::runtime::ensure_memory(&format!("a preference step (max_length {}{rank})", cfg.max_length), bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_grows_with_what_a_step_holds() {
        let cfg = TrainConfig {
            seq_length: 1023,
            per_device_train_batch_size: 2,
            per_device_eval_batch_size: 1,
            ..TrainConfig::default()
        };
        let shape = Shape { hidden: 64.0, layers: 2.0, vocab: 100.0 };
        let base = training_bytes(&cfg, shape, 0, None);
        assert_eq!(base, 2.0 * 1024.0 * 9.0, "only the padded rows");
        let with_sample = training_bytes(&cfg, shape, 10, None);
        assert_eq!(with_sample - base, 2.0 * 10.0 * 100.0 * 4.0 + 100.0 * 4.0 + 10.0 * 64.0 * 2.0 * 4.0);
        assert_eq!(training_bytes(&cfg, shape, 0, Some(8)) - base, 2.0 * 8.0 * 2.0 * 64.0 * 16.0);
        let huge = TrainConfig { lora_rank: 65_536, ..cfg.clone() };
        let big = Shape { hidden: 8192.0, layers: 80.0, vocab: 1.0 };
        assert!(training_bytes(&huge, big, 0, Some(65_536)) > 1e12, "a terabyte is refused on any machine here");
    }
}
