//! Qwen-1 (`model_type: "qwen"`; CodeFuse-QWen-14B was fine-tuned from it with MFTCoder), run from its own
//! remote code. A Llama-shaped pre-norm decoder under GPT-2's names — `transformer.wte`, `h.N.ln_1`,
//! `attn.c_attn`, `ln_f` — with three things of its own:
//! - one fused, biased `c_attn` = [q | k | v] (the only bias unless `no_bias` is false);
//! - the MLP `c_proj(w1(x) ⊙ silu(w2(x)))`: the SiLU sits on `w2`, so `w2` is the gate and `w1` the up
//!   projection, each `intermediate_size / 2` wide;
//! - at inference only, two ways to run past the trained `seq_length`: dynamic NTK (θ raised by the
//!   context's length, `nn::rope::ntk_alpha`) and log-length scaling of the queries (`use_logn_attn`).
//!   Training leaves both off, as the reference does in train mode (MFTCoder also sets `use_logn_attn =
//!   False` before training).

use super::decoder::{DecoderConfig, FusedQkv, Positions, QkvNames, TensorNames};
use super::gpt_neox::rotary_dims;
use super::llama::norm_eps;
use crate::io::hf_config::{HfConfig, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH, RopeScaling, RopeSpec};
use anyhow::{Result, bail};

// ANCHOR: qwen_names
pub const NAMES: TensorNames = TensorNames {
    embed: "transformer.wte",
    positions: None,
    layers: "transformer.h",
    input_norm: "ln_1",
    post_attention_norm: Some("ln_2"),
    qkv: QkvNames::Fused("attn.c_attn"),
    qk_norms: None,
    o: "attn.c_proj",
    gate: Some("mlp.w2"),
    up: "mlp.w1",
    down: "mlp.c_proj",
    final_norm: "transformer.ln_f",
    lm_head: "lm_head",
    moe: None,
};
// ANCHOR_END: qwen_names

// ANCHOR: qwen_config
/// `QWenConfig`'s defaults; `seq_length` has none (the reference reads it unconditionally).
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let path = cfg.path.display();
    let hidden = cfg.size("hidden_size", cfg.opt_usize("hidden_size")?.unwrap_or(4096), MAX_WIDTH)?;
    let heads = cfg.size("num_attention_heads", cfg.opt_usize("num_attention_heads")?.unwrap_or(32), MAX_HEADS)?;
    let kv_channels = cfg.size("kv_channels", cfg.opt_usize("kv_channels")?.unwrap_or(128), MAX_WIDTH)?;
    // c_attn is 3·heads·kv_channels wide but split every hidden_size columns: the two must agree
    if heads * kv_channels != hidden {
        bail!(
            "{path}: field `kv_channels` ({kv_channels}) × `num_attention_heads` ({heads}) must equal `hidden_size` ({hidden})"
        );
    }
    let intermediate =
        cfg.size("intermediate_size", cfg.opt_usize("intermediate_size")?.unwrap_or(22016), MAX_WIDTH)?;
    if intermediate % 2 != 0 || intermediate < 2 {
        bail!("{path}: field `intermediate_size` ({intermediate}) must be even: w1 and w2 are each half of it");
    }
    let seq_length = match cfg.opt_usize("seq_length")? {
        Some(l) if l >= 2 => l,
        Some(l) => bail!("{path}: field `seq_length` is {l}; it must be at least 2"),
        None => bail!("{path}: field `seq_length` is missing (Qwen-1 reads it for its long-context scaling)"),
    };
    let layers = cfg.size("num_hidden_layers", cfg.opt_usize("num_hidden_layers")?.unwrap_or(32), MAX_LAYERS)?;
    let vocab = cfg.size("vocab_size", cfg.opt_usize("vocab_size")?.unwrap_or(151936), MAX_VOCAB)?;
    let mut c = DecoderConfig::with_shape(vocab, hidden, intermediate / 2, layers, heads, heads);
    let dims = rotary_dims(cfg, kv_channels, cfg.opt_f64("rotary_pct")?.unwrap_or(1.0), "rotary_pct")?;
    let theta = cfg.opt_f64("rotary_emb_base")?.unwrap_or(10_000.0);
    if !(theta > 1.0 && theta.is_finite()) {
        bail!("{path}: field `rotary_emb_base` is {theta}; it must be a finite number above 1");
    }
    let scaling = match cfg.opt_bool("use_dynamic_ntk")?.unwrap_or(true) {
        true => RopeScaling::QwenDynamicNtk { seq_length },
        false => RopeScaling::None,
    };
    c.positions = Positions::rotary(RopeSpec { theta, scaling }, dims);
    c.attention.fused_qkv = Some(FusedQkv { groups: 1 });
    let biased = !cfg.opt_bool("no_bias")?.unwrap_or(true);
    (c.attention.qkv_bias, c.attention.o_bias, c.mlp_bias) = (true, biased, biased);
    c.attention.logn_beyond = cfg.opt_bool("use_logn_attn")?.unwrap_or(true).then_some(seq_length);
    c.norm_eps = norm_eps(cfg, "layer_norm_epsilon", 1e-6)?;
    c.tie_word_embeddings = cfg.opt_bool("tie_word_embeddings")?.unwrap_or(false);
    c.max_position_embeddings = cfg.opt_usize("max_position_embeddings")?.unwrap_or(8192);
    c.bos_token_id = cfg.token_ids("bos_token_id")?.first().copied();
    c.eos_token_ids = cfg.token_ids("eos_token_id")?;
    c.names = NAMES;
    Ok(c)
}
// ANCHOR_END: qwen_config

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> Result<DecoderConfig> {
        let mut json = serde_json::json!({
            "model_type": "qwen", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "kv_channels": 8, "seq_length": 16
        });
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        config_from_hf(&HfConfig { path: "q/config.json".into(), json: json.as_object().unwrap().clone() })
    }

    #[test]
    fn defaults_are_qwen_configs() {
        let c = config(serde_json::json!({})).unwrap();
        assert_eq!((c.intermediate_size, c.head_dim, c.norm_eps), (24, 8, 1e-6));
        assert!(c.attention.qkv_bias && !c.attention.o_bias && !c.mlp_bias && !c.tie_word_embeddings);
        assert_eq!(c.attention.logn_beyond, Some(16));
        assert_eq!(c.rope().unwrap().scaling, RopeScaling::QwenDynamicNtk { seq_length: 16 });
        let plain =
            config(serde_json::json!({"use_dynamic_ntk": false, "use_logn_attn": false, "no_bias": false})).unwrap();
        assert_eq!((plain.rope().unwrap().scaling.clone(), plain.attention.logn_beyond), (RopeScaling::None, None));
        assert!(plain.attention.o_bias && plain.mlp_bias);
        let Positions::Rotary { dims, .. } = config(serde_json::json!({"rotary_pct": 0.5})).unwrap().positions else {
            panic!("rotary")
        };
        assert_eq!(dims, 4);
    }

    #[test]
    fn bad_fields_are_named() {
        for (extra, want) in [
            (serde_json::json!({"kv_channels": 16}), "`kv_channels` (16)"),
            (serde_json::json!({"intermediate_size": 47}), "`intermediate_size` (47) must be even"),
            (serde_json::json!({"seq_length": null}), "`seq_length` is missing"),
            (serde_json::json!({"rotary_emb_base": -1}), "`rotary_emb_base` is -1"),
            (serde_json::json!({"rotary_pct": 0.1}), "`rotary_pct`"),
        ] {
            let err = config(extra).unwrap_err().to_string();
            assert!(err.starts_with("q/config.json: field `") && err.contains(want), "{err}");
        }
    }
}
