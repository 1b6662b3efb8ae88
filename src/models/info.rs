//! `mftcoder info`: what a model directory holds — architecture, the decoder config resolved from it, parameters
//! and dtypes, and the tokenizer.

use super::decoder::{Positions, RotaryPairing};
use crate::io::hf_config::{HfConfig, RopeScaling};
use crate::io::safetensors::WeightStore;
use crate::io::tokenizer::Tokenizer;
use anyhow::Result;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// The lines `mftcoder info` prints for `model_dir`.
pub fn describe(model_dir: &Path) -> Result<String> {
    let mut out = String::new();
    let config = HfConfig::read(&model_dir)?;
    let model_type = config.model_type()?;
    let store = WeightStore::open(&model_dir)?;
    let mut params = 0usize;
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for name in store.names() {
        let info = store.info(name)?;
        params += info.shape.iter().product::<usize>();
        *dtypes.entry(format!("{:?}", info.dtype)).or_default() += 1;
    }
    let arch = config.json.get("architectures").and_then(|a| a.get(0)).and_then(|a| a.as_str()).unwrap_or("?");
    writeln!(out, "model:        {}", model_dir.display())?;
    writeln!(out, "architecture: {arch} (model_type `{model_type}`)")?;
    if super::SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
        let c = super::decoder_config(&config)?;
        writeln!(
            out,
            "shape:        {} layers, hidden {}, MLP {}, {} heads × {} (KV heads {}), vocab {}",
            c.num_hidden_layers,
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.head_dim,
            c.num_key_value_heads,
            c.vocab_size
        )?;
        let positions = match &c.positions {
            Positions::Rotary { rope, dims, pairing } => {
                let scaling = match &rope.scaling {
                    RopeScaling::None => "none".to_string(),
                    RopeScaling::Linear { factor } => format!("linear × {factor}"),
                    RopeScaling::Yarn(y) => format!(
                        "YaRN × {} from {} positions (cos/sin × {:.4})",
                        y.factor, y.original_max_position_embeddings, y.attention_factor
                    ),
                    RopeScaling::QwenDynamicNtk { seq_length } => {
                        format!("dynamic NTK at inference past {seq_length} positions")
                    }
                };
                let pairs = match pairing {
                    RotaryPairing::Halves => "rotate-half pairs",
                    RotaryPairing::Interleaved => "interleaved pairs",
                };
                format!(
                    "RoPE θ = {}, scaling {scaling}, on {dims} of {} entries per head ({pairs})",
                    rope.theta, c.head_dim
                )
            }
            Positions::Learned => format!("learned, {} positions", c.max_position_embeddings),
            Positions::Alibi => format!(
                "ALiBi (a linear bias per head, {} slopes), model_max_length {}",
                c.num_attention_heads, c.max_position_embeddings
            ),
        };
        writeln!(out, "positions:    {positions}; tied embeddings: {}", c.tie_word_embeddings)?;
        let qkv = match (c.attention.fused_qkv, &c.attention.latent) {
            (_, Some(la)) => format!(
                "latent attention (q rank {}, kv rank {}, q/k {} + {} rotated, v {})",
                la.q_rank.map_or("none".into(), |r| r.to_string()),
                la.kv_rank,
                la.nope_dim,
                la.rope_dim,
                la.v_dim
            ),
            (Some(layout), None) if layout.groups == 1 => "fused q/k/v ([q | k | v])".into(),
            (Some(layout), None) => format!("fused q/k/v ({} head groups)", layout.groups),
            (None, None) => "separate q/k/v".into(),
        };
        writeln!(out, "layers:       {qkv}, {:?} residual, {:?} norm, {:?} MLP", c.residual, c.norm, c.mlp)?;
        if let Some(moe) = &c.moe {
            let sparse: Vec<String> =
                (0..c.num_hidden_layers).filter(|&l| moe.sparse_layers[l]).map(|l| l.to_string()).collect();
            writeln!(
                out,
                "experts:      {} of width {}, top {} ({:?}{}), in layers {}; shared: {}; aux {:?}",
                moe.router.experts,
                moe.expert_intermediate_size,
                moe.router.top_k,
                moe.router.selection,
                if moe.router.normalize { ", renormalised" } else { "" },
                sparse.join(", "),
                moe.shared_expert
                    .map_or("none".into(), |(w, gated)| format!("width {w}{}", if gated { ", gated" } else { "" })),
                moe.aux_loss
            )?;
        }
        let windows: Vec<String> =
            c.attention.windows.iter().map(|w| w.map_or("full".into(), |w| w.to_string())).collect();
        if let Some(trained) = c.attention.logn_beyond {
            writeln!(out, "attention:    queries scaled by log-length past {trained} positions, at inference")?;
        }
        if c.attention.windows.iter().any(Option::is_some) {
            writeln!(out, "windows:      sliding attention per layer: {}", windows.join(", "))?;
        }
        writeln!(
            out,
            "biases:       q/k/v {}, o {}, MLP {}, head {}",
            c.attention.qkv_bias, c.attention.o_bias, c.mlp_bias, c.lm_head_bias
        )?;
        if let Some(clamp) = c.attention.score_clamp {
            writeln!(out, "scores:       clamped to ±{clamp} before the mask (use_xformers: false)")?;
        }
        if c.normalized_head {
            writeln!(out, "head:         NormHead (lm_head rows L2-normalised in every forward)")?;
        }
        if model_type == "baichuan" {
            writeln!(out, "variant:      {}", super::baichuan::variant(&config)?.1)?;
        }
    }
    writeln!(
        out,
        "parameters:   {params} ({:.2} M) in {} tensors, {}",
        params as f64 / 1e6,
        dtypes.values().sum::<usize>(),
        store.describe()
    )?;
    let dtypes: Vec<String> = dtypes.iter().map(|(d, n)| format!("{d} × {n}")).collect();
    writeln!(out, "dtypes:       {}", dtypes.join(", "))?;
    match Tokenizer::load(&model_dir) {
        Ok(tok) => writeln!(out, "tokenizer:    {}", tok.summary())?,
        Err(e) => writeln!(out, "tokenizer:    none ({e:#})")?,
    }
    Ok(out)
}
