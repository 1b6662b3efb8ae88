//! DeepSeek-V2 (`model_type: "deepseek_v2"`; DeepSeek-V2-Lite, DeepSeek-Coder-V2-Lite): Llama's pre-norm
//! stack with Multi-head Latent Attention (`latent_attention.rs`) in every layer and, from layer
//! `first_k_dense_replace` on (every `moe_layer_freq`-th), a mixture of `n_routed_experts` SwiGLU experts —
//! greedy or group-limited top-k over the full softmax, never renormalised, times `routed_scaling_factor` —
//! plus `n_shared_experts` shared experts every token visits, ungated (one SwiGLU of their summed width).
//!
//! Positions use YaRN (`rope_scaling` / `rope_parameters` of type `yarn`) over `qk_rope_head_dim`; its
//! `mscale_all_dim` also multiplies the softmax scale by g(factor, mscale_all_dim)².

use super::decoder::{
    AuxLoss, DecoderConfig, LatentAttention, LatentNames, Moe, MoeNames, Positions, QkvNames, RouterSpec,
};
use super::decoder::{Selection, TensorNames};
use super::llama::{DecoderDefaults, NAMES as LLAMA_NAMES, llama_shaped_with_rope, norm_eps, require_activation};
use super::mixtral::{MAX_EXPERTS, top_k};
use super::qwen2_moe::MOE_NAMES as QWEN2_MOE_NAMES;
use crate::io::hf_config::{HfConfig, MAX_WIDTH, RopeScaling};
use anyhow::{Result, bail};

// ANCHOR: deepseek_v2_names
pub const NAMES: TensorNames = TensorNames {
    qkv: QkvNames::Latent(LatentNames {
        q: "self_attn.q_proj",
        q_a: "self_attn.q_a_proj",
        q_a_norm: "self_attn.q_a_layernorm",
        q_b: "self_attn.q_b_proj",
        kv_a: "self_attn.kv_a_proj_with_mqa",
        kv_a_norm: "self_attn.kv_a_layernorm",
        kv_b: "self_attn.kv_b_proj",
    }),
    // ungated shared experts under `shared_experts`
    moe: Some(MoeNames { shared_expert: Some("mlp.shared_experts"), shared_expert_gate: None, ..QWEN2_MOE_NAMES }),
    ..LLAMA_NAMES
};
// ANCHOR_END: deepseek_v2_names

/// The latent norms' ε: DeepSeek-V2 hard-codes it (`DeepseekV2RMSNorm(q_lora_rank)`), whatever `rms_norm_eps` is.
const LATENT_NORM_EPS: f32 = 1e-6;

// ANCHOR: deepseek_v2_config
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let path = cfg.path.display();
    let rope = cfg.rope_with_yarn(10_000.0)?;
    let mut c = llama_shaped_with_rope(cfg, &DecoderDefaults::LLAMA, rope.clone())?;
    require_activation(cfg, "hidden_act", &["silu"])?;
    c.norm_eps = norm_eps(cfg, "rms_norm_eps", 1e-6)?;
    let width = |field: &str, default: usize| -> Result<usize> {
        cfg.size(field, cfg.opt_usize(field)?.unwrap_or(default), MAX_WIDTH)
    };
    let q_rank = match cfg.json.get("q_lora_rank") {
        Some(serde_json::Value::Null) => None,
        _ => Some(width("q_lora_rank", 1536)?),
    };
    let latent = LatentAttention {
        q_rank,
        kv_rank: width("kv_lora_rank", 512)?,
        nope_dim: width("qk_nope_head_dim", 128)?,
        rope_dim: width("qk_rope_head_dim", 64)?,
        v_dim: width("v_head_dim", 128)?,
        rope_factor: match &rope.scaling {
            RopeScaling::Yarn(yarn) => yarn.attention_factor as f32,
            _ => 1.0,
        },
        norm_eps: LATENT_NORM_EPS,
    };
    if !latent.rope_dim.is_multiple_of(2) {
        bail!("{path}: field `qk_rope_head_dim` ({}) must be even for rotary embeddings", latent.rope_dim);
    }
    if c.num_key_value_heads != c.num_attention_heads {
        bail!(
            "{path}: field `num_key_value_heads` ({}) must equal `num_attention_heads` ({}): latent attention expands \
             keys and values for every head",
            c.num_key_value_heads,
            c.num_attention_heads
        );
    }
    // (n + r_p)^-½, times YaRN's mscale² where `mscale_all_dim` is set
    let softmax_mscale = match &rope.scaling {
        RopeScaling::Yarn(yarn) => yarn.softmax_mscale,
        _ => 1.0,
    };
    c.attention.scale =
        ((latent.nope_dim + latent.rope_dim) as f64).powf(-0.5) as f32 * (softmax_mscale * softmax_mscale) as f32;
    let attention_bias = cfg.opt_bool("attention_bias")?.unwrap_or(false);
    (c.attention.qkv_bias, c.attention.o_bias) = (attention_bias, attention_bias);
    c.mlp_bias = cfg.opt_bool("mlp_bias")?.unwrap_or(false);
    c.head_dim = latent.head_width();
    c.positions = Positions::rotary(rope, latent.rope_dim);
    c.attention.latent = Some(latent);
    c.names = NAMES;
    c.moe = experts(cfg, c.num_hidden_layers)?;
    Ok(c)
}
// ANCHOR_END: deepseek_v2_config

/// DeepSeek's own gates (MFTCoder's remote code) add `aux_loss_alpha` × a balance term per sequence
/// (`seq_aux`, default true) or per batch to the gradients. transformers 5 has neither field nor term, and a
/// config it saved carries no `aux_loss_alpha`: then there is none.
fn sequence_balance(cfg: &HfConfig) -> Result<AuxLoss> {
    let alpha = cfg.opt_f64("aux_loss_alpha")?.unwrap_or(0.0);
    if !(alpha >= 0.0 && alpha.is_finite()) {
        bail!("{}: field `aux_loss_alpha` is {alpha}; it must be a number ≥ 0", cfg.path.display());
    }
    let per_sequence = cfg.opt_bool("seq_aux")?.unwrap_or(true);
    Ok(if alpha > 0.0 { AuxLoss::SequenceBalance { alpha: alpha as f32, per_sequence } } else { AuxLoss::None })
}

/// The mixture of experts: none without `n_routed_experts`.
fn experts(cfg: &HfConfig, layers: usize) -> Result<Option<Moe>> {
    let path = cfg.path.display();
    let experts = match cfg.json.get("n_routed_experts") {
        Some(serde_json::Value::Null) => return Ok(None),
        _ => cfg.opt_usize("n_routed_experts")?.unwrap_or(64),
    };
    if experts == 0 || experts > MAX_EXPERTS {
        bail!("{path}: field `n_routed_experts` is {experts}; allowed: 1 to {MAX_EXPERTS} (or null: no experts)");
    }
    let first_dense = cfg.opt_usize("first_k_dense_replace")?.unwrap_or(0);
    let freq = cfg.opt_usize("moe_layer_freq")?.unwrap_or(1);
    if freq == 0 {
        bail!("{path}: field `moe_layer_freq` must be at least 1");
    }
    let selection = match cfg.opt_str("topk_method")?.as_deref().unwrap_or("greedy") {
        "greedy" => Selection::Greedy,
        "group_limited_greedy" => {
            let groups = cfg.opt_usize("n_group")?.unwrap_or(1);
            let top_groups = cfg.opt_usize("topk_group")?.unwrap_or(1);
            if groups == 0 || experts % groups != 0 || top_groups == 0 || top_groups > groups {
                bail!(
                    "{path}: fields `n_group` ({groups}) and `topk_group` ({top_groups}): n_group must divide \
                     n_routed_experts ({experts}) and 1 ≤ topk_group ≤ n_group"
                );
            }
            Selection::GroupLimited { groups, top_groups }
        }
        other => bail!(
            "{path}: field `topk_method` is `{other}`; allowed: `greedy`, `group_limited_greedy` (the remote config's \
             default `gready` matches neither in DeepSeek's own code either)"
        ),
    };
    let top_k = top_k(cfg, experts, 6)?;
    if let Selection::GroupLimited { groups, top_groups } = selection
        && top_k > top_groups * (experts / groups)
    {
        bail!("{path}: field `num_experts_per_tok` ({top_k}) exceeds the experts of `topk_group` groups");
    }
    let scaling = cfg.opt_f64("routed_scaling_factor")?.unwrap_or(1.0);
    if !(scaling > 0.0 && scaling.is_finite()) {
        bail!("{path}: field `routed_scaling_factor` is {scaling}; it must be a positive number");
    }
    let expert_width =
        cfg.size("moe_intermediate_size", cfg.opt_usize("moe_intermediate_size")?.unwrap_or(1407), MAX_WIDTH)?;
    let shared = match cfg.json.get("n_shared_experts") {
        Some(serde_json::Value::Null) => 0,
        _ => cfg.opt_usize("n_shared_experts")?.unwrap_or(2),
    };
    Ok(Some(Moe {
        router: RouterSpec {
            experts,
            top_k,
            // transformers drops `norm_topk_prob` for DeepSeek-V2: the weights are never renormalised
            normalize: false,
            scaling: scaling as f32,
            selection,
        },
        expert_intermediate_size: expert_width,
        // DeepSeek's own modeling file: experts iff i ≥ first_k_dense_replace and i % moe_layer_freq == 0
        sparse_layers: (0..layers).map(|i| i >= first_dense && i % freq == 0).collect(),
        shared_expert: (shared > 0).then(|| (expert_width * shared, false)),
        aux_loss: sequence_balance(cfg)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(changes: serde_json::Value) -> Result<DecoderConfig> {
        let mut json = serde_json::json!({"model_type": "deepseek_v2", "vocab_size": 32, "hidden_size": 16,
            "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2, "q_lora_rank": 8,
            "kv_lora_rank": 8, "qk_nope_head_dim": 4, "qk_rope_head_dim": 4, "v_head_dim": 4, "n_routed_experts": 4,
            "num_experts_per_tok": 2, "moe_intermediate_size": 8, "n_shared_experts": 1, "topk_method": "greedy"});
        for (key, value) in changes.as_object().unwrap() {
            json[key] = value.clone();
        }
        let cfg = HfConfig { path: "x/config.json".into(), json: json.as_object().unwrap().clone() };
        config_from_hf(&cfg)
    }

    /// Each bad field is one line naming it and what is allowed.
    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (serde_json::json!({"topk_method": "gready"}), "`topk_method` is `gready`; allowed"),
            (serde_json::json!({"num_key_value_heads": 1}), "`num_key_value_heads` (1) must equal"),
            (serde_json::json!({"qk_rope_head_dim": 3}), "`qk_rope_head_dim` (3) must be even"),
            (
                serde_json::json!({"topk_method": "group_limited_greedy", "n_group": 3, "topk_group": 1}),
                "n_group must divide",
            ),
            (serde_json::json!({"routed_scaling_factor": -1.0}), "`routed_scaling_factor` is -1"),
            (serde_json::json!({"n_routed_experts": 0}), "`n_routed_experts` is 0"),
            (serde_json::json!({"rope_scaling": {"type": "yarn", "factor": -2.0}}), "factor` is -2"),
        ];
        for (change, want) in cases {
            let err = config(change.clone()).unwrap_err().to_string();
            assert!(err.starts_with("x/config.json: ") && err.contains(want), "{change}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn q_lora_rank_null_is_a_plain_query_and_null_experts_a_dense_model() {
        let c = config(serde_json::json!({"q_lora_rank": null, "n_routed_experts": null})).unwrap();
        assert_eq!(c.attention.latent.as_ref().unwrap().q_rank, None);
        assert!(c.moe.is_none());
        // YaRN is refused for the other families, naming the field
        let llama = HfConfig {
            path: "x/config.json".into(),
            json: serde_json::json!({"rope_scaling": {"type": "yarn", "factor": 4.0}}).as_object().unwrap().clone(),
        };
        let err = llama.rope(1e4).unwrap_err().to_string();
        assert!(err.contains("rope_scaling.rope_type") && err.contains("deepseek_v2 only"), "{err}");
    }
}
