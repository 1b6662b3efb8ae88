//! GGUF, llama.cpp's model file, both ways: import a GGUF as a Hugging Face model directory (or load it in
//! memory wherever a model directory is accepted), and export a model directory as a GGUF that llama.cpp and
//! Ollama run.
//!
//! One concept per file: the container (`container.rs` reads, `writer.rs` writes), the element types
//! (`ggml_type.rs`), dequantization (`dequant.rs`: floats and 32-value blocks; `k_quants.rs`: the K-quants),
//! quantization for export (`quantize.rs`), the architectures and their tensor names (`arch.rs`), the Q/K
//! permutation (`permute.rs`), metadata ↔ config.json (`config.rs`, `export_config.rs`), the tokenizer
//! (`vocab.rs` rebuilds `tokenizer.json`, `export_vocab.rs` writes `tokenizer.ggml.*`), and the two commands
//! (`import.rs`, `export.rs`, `cli.rs`).
pub mod arch;
pub mod cli;
pub mod config;
pub mod container;
pub mod dequant;
pub mod export;
pub mod export_config;
pub mod export_vocab;
pub mod ggml_type;
pub mod import;
pub mod k_quants;
pub mod permute;
pub mod quantize;
pub mod vocab;
pub mod writer;

use crate::io::hf_config::HfConfig;
use crate::io::safetensors::WeightStore;
use anyhow::{Context, Result};
use container::GgufFile;
use std::io::Read;
use std::path::Path;

// ANCHOR: is_gguf
/// Whether `path` is a file that starts with the GGUF magic (whatever its name).
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok()
        && &magic == container::MAGIC
}
// ANCHOR_END: is_gguf

/// The config.json a GGUF file implies, labelled with the file's path for messages.
pub fn hf_config(path: &Path) -> Result<HfConfig> {
    let (json, _) = import::configs(&GgufFile::open(path)?)?;
    Ok(HfConfig { path: path.to_path_buf(), json })
}

/// The EOS ids generation stops at (generation_config's, with llama.cpp's end-of-turn token).
pub fn generation_eos_ids(path: &Path) -> Result<Vec<u32>> {
    let (_, generation) = import::configs(&GgufFile::open(path)?)?;
    let ids = match generation.get("eos_token_id") {
        Some(serde_json::Value::Array(ids)) => ids.iter().filter_map(|v| v.as_u64()).collect(),
        Some(v) => v.as_u64().into_iter().collect(),
        None => Vec::new(),
    };
    Ok(ids.into_iter().map(|id: u64| id as u32).collect())
}

/// `tokenizer.ggml.eos_token_id`: the token the rebuilt tokenizer_config.json names `eos_token`.
pub fn eos_token_id(path: &Path) -> Result<u32> {
    let g = GgufFile::open(path)?;
    Ok(g.u64("tokenizer.ggml.eos_token_id")? as u32)
}

/// The `tokenizer.json` text of a GGUF file's tokenizer; notes about it go to stderr.
pub fn tokenizer_json(path: &Path) -> Result<String> {
    let rebuilt = vocab::rebuild(&GgufFile::open(path)?)?;
    for note in &rebuilt.notes {
        eprintln!("note: {}: {note}", path.display());
    }
    Ok(rebuilt.tokenizer_json.to_string())
}

/// Every tensor of a GGUF file, dequantized and under its HF name, in a store held in memory.
pub fn weight_store(path: &Path) -> Result<WeightStore> {
    let imported = import::import(&GgufFile::open(path)?)?;
    let bytes = crate::io::safetensors::serialize(&imported.tensors, None)?;
    drop(imported);
    WeightStore::from_bytes(path, &bytes).with_context(|| format!("{}: dequantized in memory", path.display()))
}
