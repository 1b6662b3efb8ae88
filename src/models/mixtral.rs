//! Mixtral (`model_type: "mixtral"`; MFTCoder's CodeFuse-Mixtral-8x7B): Mistral's decoder with every MLP
//! replaced by a sparse mixture of `num_local_experts` SwiGLU experts, `num_experts_per_tok` of them per token,
//! their combine weights renormalised over the chosen ones. The experts are saved one by one as
//! `block_sparse_moe.experts.{e}.w1` (gate), `w3` (up) and `w2` (down), the router as `block_sparse_moe.gate`.

use super::decoder::{AuxLoss, DecoderConfig, Moe, MoeNames, Positions, RouterSpec, Selection, TensorNames};
use super::llama::{DecoderDefaults, NAMES as LLAMA_NAMES, llama_shaped, norm_eps, require_activation};
use super::mistral::sliding_window;
use crate::io::hf_config::HfConfig;
use anyhow::{Result, bail};

// ANCHOR: mixtral_names
pub const NAMES: TensorNames = TensorNames {
    moe: Some(MoeNames {
        router: "block_sparse_moe.gate",
        experts: "block_sparse_moe.experts",
        gate: "w1",
        up: "w3",
        down: "w2",
        shared_expert: None,
        shared_expert_gate: None,
    }),
    ..LLAMA_NAMES
};
// ANCHOR_END: mixtral_names

/// transformers' `MixtralConfig` defaults where they differ from Llama's.
const DEFAULTS: DecoderDefaults =
    DecoderDefaults { max_position_embeddings: 4096 * 32, tie_word_embeddings: false, head_dim: None };

/// Far beyond any released mixture (DeepSeek-V2: 160 routed experts).
pub(super) const MAX_EXPERTS: usize = 1 << 12;

/// `num_experts_per_tok` of `experts`, both at least 1.
pub(super) fn top_k(cfg: &HfConfig, experts: usize, default: usize) -> Result<usize> {
    let k = cfg.opt_usize("num_experts_per_tok")?.unwrap_or(default);
    if experts == 0 || k == 0 || k > experts {
        bail!(
            "{}: field `num_experts_per_tok` ({k}) must be between 1 and the number of experts ({experts})",
            cfg.path.display()
        );
    }
    Ok(k)
}

/// `router_aux_loss_coef`, a finite number ≥ 0.
pub(super) fn aux_loss_coef(cfg: &HfConfig) -> Result<f32> {
    let coef = cfg.opt_f64("router_aux_loss_coef")?.unwrap_or(0.001);
    if !(coef >= 0.0 && coef.is_finite()) {
        bail!("{}: field `router_aux_loss_coef` is {coef}; it must be a number ≥ 0", cfg.path.display());
    }
    Ok(coef as f32)
}

// ANCHOR: mixtral_config
pub fn config_from_hf(cfg: &HfConfig) -> Result<DecoderConfig> {
    let mut c = llama_shaped(cfg, &DEFAULTS)?;
    require_activation(cfg, "hidden_act", &["silu"])?;
    c.norm_eps = norm_eps(cfg, "rms_norm_eps", 1e-5)?;
    c.positions = Positions::rotary(cfg.rope(1e6)?, c.head_dim);
    c.attention.windows = vec![sliding_window(cfg)?; c.num_hidden_layers]; // absent or null: no window
    let experts = cfg.size("num_local_experts", cfg.opt_usize("num_local_experts")?.unwrap_or(8), MAX_EXPERTS)?;
    if cfg.opt_f64("router_jitter_noise")?.is_some_and(|j| j > 0.0) {
        eprintln!("notice: {}: `router_jitter_noise` is ignored: training routes without jitter", cfg.path.display());
    }
    c.moe = Some(Moe {
        router: RouterSpec {
            experts,
            top_k: top_k(cfg, experts, 2)?,
            normalize: true,
            scaling: 1.0,
            selection: Selection::Greedy,
        },
        expert_intermediate_size: c.intermediate_size,
        sparse_layers: vec![true; c.num_hidden_layers],
        shared_expert: None,
        aux_loss: AuxLoss::LoadBalancing { coef: aux_loss_coef(cfg)? },
    });
    c.names = NAMES;
    Ok(c)
}
// ANCHOR_END: mixtral_config
