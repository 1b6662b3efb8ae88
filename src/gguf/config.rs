//! A GGUF file's model metadata (`llama.block_count`, `llama.rope.freq_base`, …) as a transformers
//! `config.json` and `generation_config.json`.
//!
//! Each key under the architecture's prefix has one config field; what a GGUF does not say is derived the
//! way llama.cpp derives it: `head_dim` from `attention.key_length` or hidden / heads, the vocabulary from the
//! embedding's rows, tied embeddings from the absence of `output.weight`, biases from their tensors.

use super::arch::Arch;
use super::container::GgufFile;
use anyhow::{Result, bail};
use serde_json::{Map, Value, json};

/// Metadata keys of one architecture, with errors that name the file and the key.
struct Keys<'a> {
    g: &'a GgufFile,
    prefix: &'a str,
}

impl Keys<'_> {
    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    fn usize(&self, name: &str) -> Result<usize> {
        Ok(self.g.u64(&self.key(name))? as usize)
    }

    fn opt_usize(&self, name: &str) -> Result<Option<usize>> {
        Ok(self.g.opt_u64(&self.key(name))?.map(|v| v as usize))
    }

    fn opt_f64(&self, name: &str) -> Result<Option<f64>> {
        self.g.opt_f64(&self.key(name))
    }

    fn refuse(&self, name: &str, why: &str) -> anyhow::Error {
        anyhow::anyhow!("{}: metadata `{}` {why}", self.g.path.display(), self.key(name))
    }
}

// ANCHOR: hf_config
/// config.json for `g`, an `arch` model.
pub fn hf_config(g: &GgufFile, arch: &Arch) -> Result<Map<String, Value>> {
    let k = Keys { g, prefix: arch.gguf };
    let path = g.path.display();
    let hidden = k.usize("embedding_length")?;
    let heads = k.usize("attention.head_count")?;
    if heads == 0 || (hidden % heads != 0 && g.get(&k.key("attention.key_length")).is_none()) {
        return Err(k.refuse("attention.head_count", &format!("is {heads}, which does not divide {hidden}")));
    }
    let kv_heads = match g.get(&k.key("attention.head_count_kv")) {
        Some(v) if v.as_array().is_some() => {
            return Err(k.refuse("attention.head_count_kv", "is a per-layer list, which is not supported"));
        }
        Some(_) => k.usize("attention.head_count_kv")?,
        None => heads,
    };
    let head_dim = k.opt_usize("attention.key_length")?.unwrap_or(hidden / heads);
    if let Some(v) = k.opt_usize("attention.value_length")?.filter(|&v| v != head_dim) {
        return Err(k.refuse("attention.value_length", &format!("is {v}, unlike the key length {head_dim}")));
    }
    if let Some(rot) = k.opt_usize("rope.dimension_count")?.filter(|&r| r != head_dim) {
        return Err(k.refuse("rope.dimension_count", &format!("is {rot}; only whole heads ({head_dim}) are supported")));
    }
    let Some(embed) = g.tensor("token_embd.weight") else {
        bail!("{path}: tensor `token_embd.weight` is missing");
    };
    let vocab = embed.ne.get(1).copied().unwrap_or(0) as usize;
    if g.tensor("rope_freqs.weight").is_some() {
        bail!("{path}: tensor `rope_freqs.weight` (Llama 3.1 RoPE scaling) is not supported");
    }
    let has = |name: &str| g.tensor(name).is_some();

    let mut rope = Map::new();
    rope.insert("rope_theta".into(), json!(k.opt_f64("rope.freq_base")?.unwrap_or(10_000.0)));
    let scaling = g.opt_str(&k.key("rope.scaling.type"))?;
    let linear = k.opt_f64("rope.scale_linear")?; // the older spelling of a linear factor
    match (scaling, linear) {
        (None | Some("none"), None) => {
            rope.insert("rope_type".into(), json!("default"));
        }
        (Some("linear"), _) | (None, Some(_)) => {
            let factor = match k.opt_f64("rope.scaling.factor")?.or(linear) {
                Some(f) if f > 0.0 => f,
                _ => return Err(k.refuse("rope.scaling.factor", "must be a positive number for linear scaling")),
            };
            rope.insert("rope_type".into(), json!("linear"));
            rope.insert("factor".into(), json!(factor));
        }
        (Some(other), _) => {
            return Err(k.refuse("rope.scaling.type", &format!("is `{other}`; supported: none, linear")));
        }
    }

    let mut c = Map::new();
    c.insert("architectures".into(), json!([arch.hf_class]));
    c.insert("model_type".into(), json!(arch.model_type));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert("intermediate_size".into(), json!(k.usize("feed_forward_length")?));
    c.insert("num_hidden_layers".into(), json!(k.usize("block_count")?));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(kv_heads));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("hidden_act".into(), json!(arch.hidden_act));
    c.insert("max_position_embeddings".into(), json!(k.opt_usize("context_length")?.unwrap_or(2048)));
    c.insert("rope_parameters".into(), Value::Object(rope));
    c.insert("tie_word_embeddings".into(), json!(!has("output.weight")));
    match arch.model_type {
        "starcoder2" => {
            let eps = k.opt_f64("attention.layer_norm_epsilon")?.unwrap_or(1e-5);
            c.insert("norm_epsilon".into(), json!(eps));
            c.insert("use_bias".into(), json!(has("blk.0.attn_q.bias")));
            // llama.cpp runs StarCoder2 without a sliding window
            c.insert("sliding_window".into(), Value::Null);
        }
        _ => {
            let eps = k.opt_f64("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6);
            c.insert("rms_norm_eps".into(), json!(eps));
        }
    }
    if arch.model_type == "llama" {
        c.insert("attention_bias".into(), json!(has("blk.0.attn_q.bias")));
        c.insert("mlp_bias".into(), json!(has("blk.0.ffn_up.bias")));
    }
    if arch.model_type == "qwen2" {
        c.insert("use_sliding_window".into(), json!(false));
    }
    for (field, key) in
        [("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("pad_token_id", "padding_token_id")]
    {
        if let Some(id) = g.opt_u64(&format!("tokenizer.ggml.{key}"))? {
            c.insert(field.into(), json!(id));
        }
    }
    Ok(c)
}
// ANCHOR_END: hf_config

/// generation_config.json: the special ids, with llama.cpp's end-of-turn token among the EOS ids when it
/// is a different one (chat models stop there).
pub fn generation_config(g: &GgufFile) -> Result<Map<String, Value>> {
    let id = |key: &str| g.opt_u64(&format!("tokenizer.ggml.{key}"));
    let mut c = Map::new();
    if let Some(bos) = id("bos_token_id")? {
        c.insert("bos_token_id".into(), json!(bos));
    }
    let mut eos: Vec<u64> = id("eos_token_id")?.into_iter().collect();
    if let Some(eot) = id("eot_token_id")?.filter(|t| !eos.contains(t)) {
        eos.push(eot);
    }
    match eos.as_slice() {
        [] => {}
        [one] => {
            c.insert("eos_token_id".into(), json!(one));
        }
        many => {
            c.insert("eos_token_id".into(), json!(many));
        }
    }
    if let Some(pad) = id("padding_token_id")? {
        c.insert("pad_token_id".into(), json!(pad));
    }
    Ok(c)
}
