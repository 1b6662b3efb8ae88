//! `mftcoder import --gguf FILE --out DIR`, and the same model held in memory for `--model FILE.gguf`.
//!
//! Every tensor is renamed to its HF name, dequantized (quantized types become f32; F32, F16 and BF16 stay
//! as they are, exactly), un-permuted where llama.cpp's converter permuted it (q/k rows of Llama-style
//! models, [`super::permute`]) and, for Gemma, given back the −1 llama.cpp's converter added to its norms.

use super::arch::{self, Arch};
use super::container::{GgufFile, TensorInfo};
use super::ggml_type::GgmlType;
use super::vocab::{RebuiltTokenizer, rebuild};
use super::{config, dequant::dequantize, permute::permute_rows};
use crate::io::safetensors::OwnedTensor;
use anyhow::{Context, Result, anyhow, bail};
use safetensors::Dtype;
use serde_json::{Map, Value, json};
use std::path::Path;

/// A GGUF model as the files of an HF model directory.
pub struct ImportedModel {
    pub config: Map<String, Value>,
    pub generation_config: Map<String, Value>,
    pub tokenizer: RebuiltTokenizer,
    pub tensors: Vec<OwnedTensor>,
}

/// The architecture of a parsed file.
pub fn arch_of(g: &GgufFile) -> Result<&'static Arch> {
    arch::by_gguf(g.str("general.architecture")?).with_context(|| g.path.display().to_string())
}

/// config.json and generation_config.json of a GGUF file, without touching its tensor data.
pub fn configs(g: &GgufFile) -> Result<(Map<String, Value>, Map<String, Value>)> {
    let arch = arch_of(g)?;
    let mut c = config::hf_config(g, arch)?;
    c.insert("dtype".into(), json!(dtype_name(model_dtype(g))));
    Ok((c, config::generation_config(g)?))
}

/// The dtype the import writes: the weights' own where every matrix is F16 (or every one BF16), else f32.
fn model_dtype(g: &GgufFile) -> Dtype {
    let matrices: Vec<GgmlType> = g.tensors.iter().filter(|t| t.ne.len() == 2).map(|t| t.ggml_type).collect();
    match matrices.first() {
        Some(&GgmlType::F16) if matrices.iter().all(|&t| t == GgmlType::F16) => Dtype::F16,
        Some(&GgmlType::BF16) if matrices.iter().all(|&t| t == GgmlType::BF16) => Dtype::BF16,
        _ => Dtype::F32,
    }
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        _ => "float32",
    }
}

// ANCHOR: import_tensor
/// One GGUF tensor as an HF tensor.
fn hf_tensor(g: &GgufFile, arch: &Arch, t: &TensorInfo, heads: (usize, usize), keep: Dtype) -> Result<OwnedTensor> {
    let path = g.path.display();
    let name = arch.hf_name(&t.name).ok_or_else(|| {
        anyhow!("{path}: tensor `{}` has no counterpart in a {} model; it cannot be imported", t.name, arch.model_type)
    })?;
    let shape = t.torch_shape();
    let bytes = g.tensor_bytes(t);
    // rows of q/k to un-permute: (heads, columns per row)
    let permute = match (arch.permuted_qk, t.name.rsplit('.').nth(1)) {
        (true, Some("attn_q")) => Some((heads.0, if shape.len() == 2 { shape[1] } else { 1 })),
        (true, Some("attn_k")) => Some((heads.1, if shape.len() == 2 { shape[1] } else { 1 })),
        _ => None,
    };
    let is_norm = t.name.ends_with("norm.weight");
    let bad = |e: anyhow::Error| anyhow!("{path}: tensor `{}` ({}): {e}", t.name, t.ggml_type.name());
    let as_stored = match (t.ggml_type, keep) {
        (GgmlType::F16, Dtype::F16) => Some(Dtype::F16),
        (GgmlType::BF16, Dtype::BF16) => Some(Dtype::BF16),
        _ => None,
    };
    if let Some(dtype) = as_stored.filter(|_| !(is_norm && arch.norm_offset != 0.0)) {
        // 2-byte values moved as they are
        let mut v: Vec<u16> = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
        if let Some((h, cols)) = permute {
            v = permute_rows(&v, h, cols, false).map_err(bad)?;
        }
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        return Ok(OwnedTensor { name, dtype, shape, bytes });
    }
    let mut v = dequantize(t.ggml_type, bytes).map_err(bad)?;
    if let Some((h, cols)) = permute {
        v = permute_rows(&v, h, cols, false).map_err(bad)?;
    }
    if is_norm && arch.norm_offset != 0.0 {
        v.iter_mut().for_each(|x| *x -= arch.norm_offset);
    }
    Ok(OwnedTensor::f32(&name, &shape, &v))
}
// ANCHOR_END: import_tensor

/// The whole model: configs, tokenizer and every tensor under its HF name.
pub fn import(g: &GgufFile) -> Result<ImportedModel> {
    let arch = arch_of(g)?;
    let (config, generation_config) = configs(g)?;
    let heads = |f: &str| config[f].as_u64().unwrap_or(1) as usize;
    let heads = (heads("num_attention_heads"), heads("num_key_value_heads"));
    let keep = model_dtype(g);
    let tensors = g.tensors.iter().map(|t| hf_tensor(g, arch, t, heads, keep)).collect::<Result<Vec<_>>>()?;
    Ok(ImportedModel { config, generation_config, tokenizer: rebuild(g)?, tensors })
}

/// Every file of the HF directory but the weights.
fn side_files(
    config: &Map<String, Value>,
    generation_config: &Map<String, Value>,
    tokenizer: &RebuiltTokenizer,
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    Ok(vec![
        ("config.json", pretty(&Value::Object(config.clone()))?),
        ("generation_config.json", pretty(&Value::Object(generation_config.clone()))?),
        ("tokenizer.json", serde_json::to_vec(&tokenizer.tokenizer_json)?),
        ("tokenizer_config.json", pretty(&tokenizer.tokenizer_config)?),
    ])
}

/// The files a model directory holds beside its weights, for a GGUF file (a merge or a full fine-tune of it
/// writes them into its output, as it copies them from a directory).
pub fn side_files_of(g: &GgufFile) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let (config, generation_config) = configs(g)?;
    side_files(&config, &generation_config, &rebuild(g)?)
}

fn pretty(v: &Value) -> Result<Vec<u8>> {
    Ok((serde_json::to_string_pretty(v)? + "\n").into_bytes())
}

// ANCHOR: write_directory
/// Write an HF model directory at `out` (which must not exist), through a temporary sibling renamed into
/// place, so a failure leaves nothing behind.
pub fn write_directory(m: &ImportedModel, out: &Path) -> Result<()> {
    if out.exists() {
        bail!("{}: already exists; choose a new output directory", out.display());
    }
    let name = out.file_name().ok_or_else(|| anyhow!("{}: not a directory path", out.display()))?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let meta = std::collections::BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut files = side_files(&m.config, &m.generation_config, &m.tokenizer)?;
    files.push(("model.safetensors", crate::io::safetensors::serialize(&m.tensors, Some(meta))?));
    let written = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        for (file, bytes) in &files {
            std::fs::write(tmp.join(file), bytes)
                .with_context(|| format!("{}: cannot write", tmp.join(file).display()))?;
        }
        std::fs::rename(&tmp, out)
            .with_context(|| format!("{}: cannot move the finished directory into place", out.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}
// ANCHOR_END: write_directory
