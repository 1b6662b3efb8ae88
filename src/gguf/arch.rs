//! The architectures GGUF import and export map, and how each names its tensors on both sides.
//!
//! llama.cpp calls an architecture by `general.architecture` and names tensors `blk.N.attn_q.weight`;
//! transformers calls it by `model_type` and names them `model.layers.N.self_attn.q_proj.weight`. A Mistral,
//! CodeLlama, DeepSeek-Coder v1 or SmolLM2 checkpoint converted by llama.cpp says `llama`.

use anyhow::{Result, bail};

/// What is special about one architecture on the way between GGUF and HF.
pub struct Arch {
    /// `general.architecture`, also the prefix of its metadata keys (`llama.block_count`).
    pub gguf: &'static str,
    /// `model_type` in config.json.
    pub model_type: &'static str,
    pub hf_class: &'static str,
    /// llama.cpp's converter permuted q/k rows (its kernel rotates adjacent pairs; see [`super::permute`]).
    pub permuted_qk: bool,
    /// Gemma's RMSNorm multiplies by (1 + w); llama.cpp's converter stores w + 1.
    pub norm_offset: f32,
    /// (GGUF block tensor, HF layer module) pairs; `.weight` / `.bias` follow on both sides.
    pub block: &'static [(&'static str, &'static str)],
    pub hidden_act: &'static str,
}

const LLAMA_BLOCK: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

const STARCODER2_BLOCK: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_up", "mlp.c_fc"),
    ("ffn_down", "mlp.c_proj"),
];

/// The model-wide tensors, shared by every architecture here.
const GLOBAL: &[(&str, &str)] =
    &[("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output", "lm_head")];

// ANCHOR: archs
pub const ARCHS: &[Arch] = &[
    Arch {
        gguf: "llama",
        model_type: "llama",
        hf_class: "LlamaForCausalLM",
        permuted_qk: true,
        norm_offset: 0.0,
        block: LLAMA_BLOCK,
        hidden_act: "silu",
    },
    Arch {
        gguf: "qwen2",
        model_type: "qwen2",
        hf_class: "Qwen2ForCausalLM",
        permuted_qk: false,
        norm_offset: 0.0,
        block: LLAMA_BLOCK,
        hidden_act: "silu",
    },
    Arch {
        gguf: "gemma",
        model_type: "gemma",
        hf_class: "GemmaForCausalLM",
        permuted_qk: false,
        norm_offset: 1.0,
        block: LLAMA_BLOCK,
        hidden_act: "gelu_pytorch_tanh",
    },
    Arch {
        gguf: "starcoder2",
        model_type: "starcoder2",
        hf_class: "Starcoder2ForCausalLM",
        permuted_qk: false,
        norm_offset: 0.0,
        block: STARCODER2_BLOCK,
        hidden_act: "gelu_pytorch_tanh",
    },
];
// ANCHOR_END: archs

fn names() -> String {
    ARCHS.iter().map(|a| a.gguf).collect::<Vec<_>>().join(", ")
}

/// The architecture of a GGUF file's `general.architecture`.
pub fn by_gguf(name: &str) -> Result<&'static Arch> {
    match ARCHS.iter().find(|a| a.gguf == name) {
        Some(a) => Ok(a),
        None => bail!("`general.architecture` is `{name}`, which cannot be imported (supported: {})", names()),
    }
}

/// The architecture of a config.json's `model_type`.
pub fn by_model_type(name: &str) -> Result<&'static Arch> {
    match ARCHS.iter().find(|a| a.model_type == name) {
        Some(a) => Ok(a),
        None => bail!(
            "`model_type` is `{name}`, which cannot be exported to GGUF (supported: {})",
            ARCHS.iter().map(|a| a.model_type).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn split_param(name: &str) -> Option<(&str, &str)> {
    name.strip_suffix(".weight").map(|m| (m, "weight")).or_else(|| name.strip_suffix(".bias").map(|m| (m, "bias")))
}

// ANCHOR: tensor_names
impl Arch {
    /// The HF name of a GGUF tensor, or `None` for one this architecture has no place for.
    pub fn hf_name(&self, gguf: &str) -> Option<String> {
        let (module, param) = split_param(gguf)?;
        if let Some((_, hf)) = GLOBAL.iter().find(|(g, _)| *g == module) {
            return Some(format!("{hf}.{param}"));
        }
        let (layer, rest) = module.strip_prefix("blk.")?.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (_, hf) = self.block.iter().find(|(g, _)| *g == rest)?;
        Some(format!("model.layers.{layer}.{hf}.{param}"))
    }

    /// The GGUF name of an HF tensor, or `None` for one GGUF has no name for.
    pub fn gguf_name(&self, hf: &str) -> Option<String> {
        let (module, param) = split_param(hf)?;
        if let Some((g, _)) = GLOBAL.iter().find(|(_, h)| *h == module) {
            return Some(format!("{g}.{param}"));
        }
        let (layer, rest) = module.strip_prefix("model.layers.")?.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (g, _) = self.block.iter().find(|(_, h)| *h == rest)?;
        Some(format!("blk.{layer}.{g}.{param}"))
    }
}
// ANCHOR_END: tensor_names

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways_and_unknown_ones_do_not() {
        let llama = by_gguf("llama").unwrap();
        for (g, h) in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("blk.12.attn_q.weight", "model.layers.12.self_attn.q_proj.weight"),
            ("blk.0.attn_k.bias", "model.layers.0.self_attn.k_proj.bias"),
            ("blk.3.ffn_norm.weight", "model.layers.3.post_attention_layernorm.weight"),
            ("output.weight", "lm_head.weight"),
        ] {
            assert_eq!(llama.hf_name(g).as_deref(), Some(h));
            assert_eq!(llama.gguf_name(h).as_deref(), Some(g));
        }
        assert_eq!(llama.hf_name("rope_freqs.weight"), None);
        assert_eq!(llama.hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(
            by_gguf("starcoder2").unwrap().hf_name("blk.1.ffn_up.bias").unwrap(),
            "model.layers.1.mlp.c_fc.bias"
        );
        let err = by_gguf("mamba").err().unwrap().to_string();
        assert!(err.contains("`mamba`") && err.contains("supported: llama, qwen2"), "{err}");
    }
}
