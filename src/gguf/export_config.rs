//! config.json as GGUF metadata (`llama.block_count`, `llama.rope.freq_base`, …): the reverse of
//! [`super::config`], from the decoder config this crate resolves (so every check of a model directory
//! applies before anything is written).

use super::arch::Arch;
use super::container::{Metadata, Value};
use crate::io::hf_config::{HfConfig, RopeScaling};
use crate::models::decoder::{DecoderConfig, Positions, RotaryPairing};
use anyhow::{Result, bail};

// ANCHOR: model_metadata
/// The `{arch}.*` keys of a model, in the order llama.cpp's converter writes them, and notes for the user.
pub fn model_metadata(arch: &Arch, hf: &HfConfig, c: &DecoderConfig) -> Result<(Metadata, Vec<String>)> {
    let path = hf.path.display();
    let (rope, dims) = match &c.positions {
        Positions::Rotary { rope, dims, pairing: RotaryPairing::Halves } => (rope, dims),
        Positions::Rotary { pairing: RotaryPairing::Interleaved, .. } => {
            bail!("{path}: interleaved rotary pairs cannot be exported for `{}`", arch.model_type)
        }
        Positions::Learned => bail!("{path}: learned positions cannot be exported for `{}`", arch.model_type),
        Positions::Alibi => bail!("{path}: ALiBi positions cannot be exported for `{}`", arch.model_type),
    };
    if *dims != c.head_dim {
        bail!("{path}: partial rotary ({dims} of {} dimensions) cannot be exported for Llama-style GGUF", c.head_dim);
    }
    let mut notes = Vec::new();
    if let Some(w) = c.attention.windows.iter().flatten().next() {
        notes.push(format!(
            "the sliding window ({w} positions) is not written: llama.cpp runs this architecture with full \
             attention, which differs only past {w} tokens"
        ));
    }
    let key = |k: &str| format!("{}.{k}", arch.gguf);
    let u32_of = |v: usize| Value::U32(v as u32);
    let mut m = vec![
        (key("vocab_size"), u32_of(c.vocab_size)),
        (key("context_length"), u32_of(c.max_position_embeddings)),
        (key("embedding_length"), u32_of(c.hidden_size)),
        (key("block_count"), u32_of(c.num_hidden_layers)),
        (key("feed_forward_length"), u32_of(c.intermediate_size)),
        (key("rope.dimension_count"), u32_of(*dims)),
        (key("attention.head_count"), u32_of(c.num_attention_heads)),
        (key("attention.head_count_kv"), u32_of(c.num_key_value_heads)),
        (key("rope.freq_base"), Value::F32(rope.theta as f32)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(c.norm_eps)),
    ];
    if c.head_dim * c.num_attention_heads != c.hidden_size {
        m.push((key("attention.key_length"), u32_of(c.head_dim)));
        m.push((key("attention.value_length"), u32_of(c.head_dim)));
    }
    if let RopeScaling::Linear { factor } = rope.scaling {
        m.push((key("rope.scaling.type"), Value::String("linear".into())));
        m.push((key("rope.scaling.factor"), Value::F32(factor as f32)));
    }
    Ok((m, notes))
}
// ANCHOR_END: model_metadata
