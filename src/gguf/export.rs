//! `mftcoder export --model DIR --gguf --quant f16|q8_0|q4_k OUT.gguf`: a model directory (a base model or a
//! merged fine-tune) as a GGUF file llama.cpp and Ollama run, with its tokenizer and chat template.
//!
//! Tensors get llama.cpp's names and, for Llama-style models, the Q/K row permutation its kernel expects.
//! Vectors (norms, biases) stay f32, as llama.cpp requires; matrices take the chosen type where their rows
//! are whole blocks of it and fall back otherwise, as `llama-quantize` does: Q4_K needs rows of 256, so a
//! 576-wide matrix (SmolLM2's) is written Q8_0, and a row that is not a multiple of 32 stays F16.

use super::arch::{self, Arch};
use super::container::Value;
use super::export_config::model_metadata;
use super::export_vocab::tokenizer_metadata;
use super::ggml_type::GgmlType;
use super::permute::permute_rows;
use super::quantize::{quantize_q4_k, quantize_q8_0};
use super::writer::GgufWriter;
use crate::io::hf_config::HfConfig;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::Path;

/// The type matrices are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Quant {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_k")]
    Q4K,
}

impl Quant {
    /// llama.cpp's `general.file_type` (enum llama_ftype): ALL_F32, MOSTLY_F16, MOSTLY_Q8_0, MOSTLY_Q4_K_S.
    fn file_type(self) -> u32 {
        match self {
            Quant::F32 => 0,
            Quant::F16 => 1,
            Quant::Q8_0 => 7,
            Quant::Q4K => 14,
        }
    }
}

/// What an export wrote.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub tensors: usize,
    pub types: BTreeMap<&'static str, usize>,
    pub bytes: u64,
    pub notes: Vec<String>,
}

// ANCHOR: tensor_type
/// The type of one tensor: f32 vectors; matrices in the chosen type where their rows are whole blocks of it,
/// else the next type that fits (Q4_K → Q8_0 → F16).
fn tensor_type(quant: Quant, shape: &[usize]) -> GgmlType {
    let cols = *shape.last().unwrap_or(&1);
    if shape.len() < 2 {
        return GgmlType::F32;
    }
    match quant {
        Quant::F32 => GgmlType::F32,
        Quant::Q4K if cols.is_multiple_of(256) => GgmlType::Q4K,
        Quant::Q4K | Quant::Q8_0 if cols.is_multiple_of(32) => GgmlType::Q8_0,
        _ => GgmlType::F16,
    }
}
// ANCHOR_END: tensor_type

fn encode(ty: GgmlType, values: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::Q8_0 => quantize_q8_0(values),
        GgmlType::Q4K => quantize_q4_k(values),
        other => unreachable!("export never chooses {}", other.name()),
    }
}

/// The architecture a `model_type` exports as: Mistral's checkpoints are Llama's to llama.cpp.
fn export_arch(hf: &HfConfig) -> Result<&'static Arch> {
    let model_type = hf.model_type()?;
    match model_type.as_str() {
        "llama" | "mistral" => arch::by_gguf("llama"),
        "qwen2" => arch::by_gguf("qwen2"),
        other => bail!(
            "{}: field `model_type` is `{other}`, which cannot be exported to GGUF yet (supported: llama, mistral, qwen2)",
            hf.path.display()
        ),
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

// ANCHOR: export_gguf
/// Write `model_dir` as a GGUF file at `out` (which must not exist).
pub fn export_gguf(model_dir: &Path, out: &Path, quant: Quant) -> Result<ExportReport> {
    if out.exists() {
        bail!("{}: already exists; choose a new output file", out.display());
    }
    let hf = HfConfig::read(model_dir)?;
    let arch = export_arch(&hf)?;
    let c = crate::models::decoder_config(&hf)?;
    let store = crate::quant::checkpoint::open_weights(model_dir)?;
    let tokenizer = match crate::gguf::is_gguf(model_dir) {
        true => serde_json::from_str(&crate::gguf::tokenizer_json(model_dir)?)?,
        false => read_json(&model_dir.join("tokenizer.json"))?,
    };

    let mut w = GgufWriter::default();
    let name = model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    w.kv("general.architecture", Value::String(arch.gguf.into()));
    w.kv("general.name", Value::String(name));
    w.kv("general.file_type", Value::U32(quant.file_type()));
    w.kv("general.quantization_version", Value::U32(2));
    let (model_kv, mut notes) = model_metadata(arch, &hf, &c)?;
    model_kv.into_iter().for_each(|(k, v)| w.kv(&k, v));
    let ids = [c.bos_token_id, c.eos_token_ids.first().copied(), hf.token_ids("pad_token_id")?.first().copied()];
    let tok_dir = if model_dir.is_dir() { model_dir } else { model_dir.parent().unwrap_or(Path::new(".")) };
    for (k, v) in tokenizer_metadata(tok_dir, &tokenizer, c.vocab_size, ids)? {
        w.kv(&k, v);
    }

    // tensors in llama.cpp's order: the embedding, each block in its arch order, the final norm and head
    let mut named: Vec<(String, String)> = Vec::new(); // (gguf, hf)
    for hf_name in store.names() {
        if c.tie_word_embeddings && hf_name == "lm_head.weight" {
            continue; // tied: llama.cpp reuses token_embd
        }
        let gguf = arch.gguf_name(hf_name).with_context(|| {
            format!("{}: tensor `{hf_name}` has no GGUF name in a {} model", store.describe(), arch.gguf)
        })?;
        named.push((gguf, hf_name.to_string()));
    }
    let order = |g: &str| -> (usize, usize, String) {
        let block = g.strip_prefix("blk.").and_then(|r| r.split_once('.'));
        match block {
            Some((layer, rest)) => {
                let module = rest.rsplit_once('.').map_or(rest, |(m, _)| m);
                let pos = arch.block.iter().position(|(b, _)| *b == module).unwrap_or(usize::MAX);
                (1 + layer.parse::<usize>().unwrap_or(0), pos, g.to_string())
            }
            None if g.starts_with("token_embd") => (0, 0, g.to_string()),
            None => (usize::MAX, 0, g.to_string()),
        }
    };
    named.sort_by_key(|(g, _)| order(g));

    let mut report = ExportReport::default();
    let mut shapes = Vec::new();
    for (gguf, hf_name) in &named {
        let shape = store.info(hf_name)?.shape;
        let ty = tensor_type(quant, &shape);
        *report.types.entry(ty.name()).or_default() += 1;
        w.tensor(gguf, shape.iter().rev().map(|&d| d as u64).collect(), ty);
        shapes.push(shape);
    }
    let fell_back =
        named.iter().zip(&shapes).filter(|(_, s)| s.len() == 2 && tensor_type(quant, s) != wanted(quant)).count();
    if fell_back > 0 {
        notes.push(format!(
            "{fell_back} matrices have rows that are not whole {} blocks; written as {}",
            wanted(quant).name(),
            if quant == Quant::Q4K { "Q8_0 (or F16)" } else { "F16" }
        ));
    }
    w.write_file(out, |i| {
        let (gguf, hf_name) = &named[i];
        let t = store.tensor_f32(hf_name)?;
        let mut values: Vec<f32> = t.iter().copied().collect();
        let cols = if t.ndim() == 2 { t.shape()[1] } else { 1 };
        if arch.permuted_qk {
            let heads = match gguf.rsplit('.').nth(1) {
                Some("attn_q") => Some(c.num_attention_heads),
                Some("attn_k") => Some(c.num_key_value_heads),
                _ => None,
            };
            if let Some(h) = heads {
                values = permute_rows(&values, h, cols, true).with_context(|| format!("tensor `{hf_name}`"))?;
            }
        }
        Ok(encode(tensor_type(quant, &shapes[i]), &values))
    })?;
    report.tensors = named.len();
    report.bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    report.notes = notes;
    Ok(report)
}
// ANCHOR_END: export_gguf

fn wanted(quant: Quant) -> GgmlType {
    match quant {
        Quant::F32 => GgmlType::F32,
        Quant::F16 => GgmlType::F16,
        Quant::Q8_0 => GgmlType::Q8_0,
        Quant::Q4K => GgmlType::Q4K,
    }
}
