//! Qwen2-MoE (`model_type: "qwen2_moe"`: Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2's decoder where every
//! `decoder_sparse_step`-th layer (except those in `mlp_only_layers`) is a mixture of `num_experts` SwiGLU
//! experts of `moe_intermediate_size`, `num_experts_per_tok` per token — renormalised only with
//! `norm_topk_prob` — plus a shared expert every token visits, scaled by σ(`shared_expert_gate`·x).

use super::decoder::{AuxLoss, DecoderConfig, Moe, MoeNames, RouterSpec, Selection, TensorNames};
use super::llama::NAMES as LLAMA_NAMES;
use super::mixtral::{MAX_EXPERTS, aux_loss_coef, top_k};
use crate::io::hf_config::HfConfig;
use anyhow::{Result, bail};

// ANCHOR: qwen2_moe_names
pub const NAMES: TensorNames = TensorNames { moe: Some(MOE_NAMES), ..LLAMA_NAMES };

/// The experts under `mlp.` with the dense MLP's projection names (DeepSeek-V2's too, shared experts aside).
pub const MOE_NAMES: MoeNames = MoeNames {
    router: "mlp.gate",
    experts: "mlp.experts",
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
    shared_expert: Some("mlp.shared_expert"),
    shared_expert_gate: Some("mlp.shared_expert_gate"),
};
// ANCHOR_END: qwen2_moe_names

// ANCHOR: qwen2_moe_config
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let path = cfg.path.display();
    let mut c = super::qwen2::config_from_hf(cfg)?;
    c.attention.qkv_bias = cfg.opt_bool("qkv_bias")?.unwrap_or(true);
    let experts = cfg.opt_usize("num_experts")?.unwrap_or(60);
    if experts > MAX_EXPERTS {
        bail!("{path}: field `num_experts` is {experts}; allowed: 0 to {MAX_EXPERTS}");
    }
    let step = cfg.opt_usize("decoder_sparse_step")?.unwrap_or(1);
    if step == 0 {
        bail!("{path}: field `decoder_sparse_step` must be at least 1");
    }
    let mlp_only: Vec<usize> = match cfg.json.get("mlp_only_layers").filter(|v| !v.is_null()) {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
            .ok_or_else(|| anyhow::anyhow!("{path}: field `mlp_only_layers` must be a list of layer indices"))?,
    };
    // transformers: layer i is sparse iff i ∉ mlp_only_layers, num_experts > 0 and (i + 1) % step == 0
    let sparse_layers: Vec<bool> =
        (0..c.num_hidden_layers).map(|i| !mlp_only.contains(&i) && experts > 0 && (i + 1) % step == 0).collect();
    if experts > 0 {
        c.moe = Some(Moe {
            router: RouterSpec {
                experts,
                top_k: top_k(cfg, experts, 4)?,
                normalize: cfg.opt_bool("norm_topk_prob")?.unwrap_or(false),
                scaling: 1.0,
                selection: Selection::Greedy,
            },
            expert_intermediate_size: cfg.size(
                "moe_intermediate_size",
                cfg.opt_usize("moe_intermediate_size")?.unwrap_or(1408),
                crate::io::hf_config::MAX_WIDTH,
            )?,
            sparse_layers,
            shared_expert: Some((
                cfg.size(
                    "shared_expert_intermediate_size",
                    cfg.opt_usize("shared_expert_intermediate_size")?.unwrap_or(5632),
                    crate::io::hf_config::MAX_WIDTH,
                )?,
                true,
            )),
            aux_loss: AuxLoss::LoadBalancing { coef: aux_loss_coef(cfg)? },
        });
        c.names = NAMES;
    }
    Ok(c)
}
// ANCHOR_END: qwen2_moe_config
