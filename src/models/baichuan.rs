//! Baichuan2 (`model_type: baichuan`), as its own modeling files compute it: the Llama stack with
//!
//! * one fused `self_attn.W_pack` ([q | k | v], no bias) in place of q/k/v_proj;
//! * `NormHead`: the rows of `lm_head.weight` L2-normalised in every forward (`norm_head.rs`);
//! * positions by ALiBi (the 13B file, the one MFTCoder ships) or by RoPE (the 7B file, Llama's rotate-half
//!   with θ = 10⁴) — the two files share one `model_type` and one config class, so the config cannot say
//!   which. [`variant`] decides from the modeling file the checkpoint's `auto_map` names, when it is in the
//!   directory; otherwise ALiBi, because MFTCoder trains every `baichuan` with its ALiBi file.
//!
//! `model_max_length` is the context length (ALiBi needs no table; the 7B's RoPE reads it too). The reference's
//! `z_loss_weight` only enters the loss it computes from `labels`; MFTCoder computes its loss from the logits,
//! so it has no effect there, nor here.

use super::decoder::{DecoderConfig, Positions, QkvNames, TensorNames};
use super::decoder_config::FusedQkv;
use super::llama::{self, DecoderDefaults, require_activation};
use crate::io::hf_config::{HfConfig, RopeScaling, RopeSpec};
use anyhow::{Result, bail};

// ANCHOR: baichuan_names
/// Llama's names with the fused projection.
pub const NAMES: TensorNames = TensorNames { qkv: QkvNames::Fused("self_attn.W_pack"), ..llama::NAMES };
// ANCHOR_END: baichuan_names

/// How a Baichuan2 checkpoint encodes positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Baichuan2-13B's modeling file.
    Alibi,
    /// Baichuan2-7B's modeling file.
    Rope,
}

// ANCHOR: baichuan_variant
/// Which modeling file the checkpoint runs with, and a line saying how that was decided: the file
/// `auto_map.AutoModelForCausalLM` names, if present beside config.json (ALiBi if it defines
/// `_get_interleave`, RoPE if it defines `apply_rotary_pos_emb`); otherwise ALiBi, MFTCoder's file.
pub fn variant(cfg: &HfConfig) -> Result<(Variant, String)> {
    let path = cfg.path.display();
    let auto = cfg.json.get("auto_map").and_then(|m| m.get("AutoModelForCausalLM"));
    let Some(auto) = auto else {
        return Ok((Variant::Alibi, "ALiBi (no `auto_map.AutoModelForCausalLM`: MFTCoder's Baichuan2 file)".into()));
    };
    let Some(reference) = auto.as_str() else {
        bail!(
            "{path}: field `auto_map.AutoModelForCausalLM` must be a string like `modeling_baichuan.BaichuanForCausalLM`"
        );
    };
    let module = reference.rsplit("--").next().unwrap_or(reference); // `repo--module.Class` names a Hub repo
    let Some((module, _class)) = module.rsplit_once('.') else {
        bail!("{path}: field `auto_map.AutoModelForCausalLM` is `{reference}`; expected `module.Class`");
    };
    let file = cfg.path.with_file_name(format!("{module}.py"));
    let Ok(source) = std::fs::read_to_string(&file) else {
        let why = format!("ALiBi ({} is not in the directory: MFTCoder's Baichuan2 file)", file.display());
        return Ok((Variant::Alibi, why));
    };
    if source.contains("def _get_interleave") {
        Ok((Variant::Alibi, format!("ALiBi ({} defines `_get_interleave`: the 13B file)", file.display())))
    } else if source.contains("def apply_rotary_pos_emb") {
        Ok((Variant::Rope, format!("RoPE ({} defines `apply_rotary_pos_emb`: the 7B file)", file.display())))
    } else {
        bail!(
            "{}: neither ALiBi (`def _get_interleave`) nor RoPE (`def apply_rotary_pos_emb`) is defined there; \
             field `auto_map.AutoModelForCausalLM` of {path} names it",
            file.display()
        )
    }
}
// ANCHOR_END: baichuan_variant

// ANCHOR: baichuan_config
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let path = cfg.path.display();
    let defaults = DecoderDefaults { max_position_embeddings: 4096, ..DecoderDefaults::LLAMA };
    let rope = RopeSpec { theta: 10_000.0, scaling: RopeScaling::None }; // the 7B file's fixed base
    let mut c = llama::llama_shaped_with_rope(cfg, &defaults, rope)?;
    require_activation(cfg, "hidden_act", &["silu"])?;
    if c.num_key_value_heads != c.num_attention_heads {
        bail!("{path}: field `num_key_value_heads` must equal `num_attention_heads`: W_pack holds whole q, k, v");
    }
    if c.tie_word_embeddings {
        bail!("{path}: field `tie_word_embeddings` is true; Baichuan2's NormHead is a separate `lm_head`");
    }
    c.max_position_embeddings = cfg.opt_usize("model_max_length")?.unwrap_or(defaults.max_position_embeddings);
    if c.max_position_embeddings == 0 {
        bail!("{path}: field `model_max_length` is 0; it must be at least 1");
    }
    c.attention.fused_qkv = Some(FusedQkv { groups: 1 }); // [q | k | v]
    c.normalized_head = true;
    if variant(cfg)?.0 == Variant::Alibi {
        c.positions = Positions::Alibi;
    }
    c.names = NAMES;
    Ok(c)
}
// ANCHOR_END: baichuan_config

#[cfg(test)]
mod tests {
    use super::*;

    fn hf(dir: &std::path::Path, extra: serde_json::Value) -> HfConfig {
        let mut json = serde_json::json!({
            "model_type": "baichuan", "vocab_size": 32, "hidden_size": 24, "intermediate_size": 40,
            "num_hidden_layers": 2, "num_attention_heads": 3, "model_max_length": 64
        });
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        HfConfig { path: dir.join("config.json"), json: json.as_object().unwrap().clone() }
    }

    fn auto_map() -> serde_json::Value {
        serde_json::json!({"auto_map": {"AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"}})
    }

    #[test]
    fn the_modeling_file_decides_alibi_or_rope_and_alibi_is_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let c = config_from_hf(&hf(dir.path(), serde_json::json!({}))).unwrap();
        assert_eq!((c.positions.clone(), c.max_position_embeddings), (Positions::Alibi, 64));
        assert!(c.normalized_head && c.attention.fused_qkv == Some(FusedQkv { groups: 1 }));
        // auto_map names a file that is absent: still the default
        assert_eq!(config_from_hf(&hf(dir.path(), auto_map())).unwrap().positions, Positions::Alibi);
        let file = dir.path().join("modeling_baichuan.py");
        std::fs::write(&file, "def apply_rotary_pos_emb(q, k, cos, sin, position_ids):\n").unwrap();
        let c = config_from_hf(&hf(dir.path(), auto_map())).unwrap();
        assert!(matches!(c.positions, Positions::Rotary { dims: 8, .. }), "{:?}", c.positions);
        assert!(variant(&hf(dir.path(), auto_map())).unwrap().1.contains("RoPE"));
        std::fs::write(&file, "def _get_interleave(n):\n").unwrap();
        assert_eq!(config_from_hf(&hf(dir.path(), auto_map())).unwrap().positions, Positions::Alibi);
        std::fs::write(&file, "print('something else')\n").unwrap();
        let err = config_from_hf(&hf(dir.path(), auto_map())).unwrap_err().to_string();
        assert!(err.contains("modeling_baichuan.py") && err.contains("auto_map.AutoModelForCausalLM"), "{err}");
        assert_eq!(err.lines().count(), 1);
    }

    #[test]
    fn bad_values_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (serde_json::json!({"hidden_act": "gelu"}), "`hidden_act`"),
            (serde_json::json!({"tie_word_embeddings": true}), "`tie_word_embeddings`"),
            (serde_json::json!({"num_key_value_heads": 1}), "`num_key_value_heads`"),
            (serde_json::json!({"model_max_length": 0}), "`model_max_length`"),
            (serde_json::json!({"auto_map": {"AutoModelForCausalLM": 3}}), "`auto_map.AutoModelForCausalLM`"),
            (serde_json::json!({"auto_map": {"AutoModelForCausalLM": "nodot"}}), "`auto_map.AutoModelForCausalLM`"),
        ];
        for (extra, want) in cases {
            let err = config_from_hf(&hf(dir.path(), extra.clone())).unwrap_err().to_string();
            assert!(err.contains("config.json") && err.contains(want), "{extra}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}
