//! `mftcoder merge`: fold a LoRA adapter into its base model (W ← W + s·B·A, trained biases replace the
//! base's) and write an ordinary Hugging Face model directory that transformers loads without PEFT.

use super::adapter_io::Adapter;
use super::lora::merge;
use crate::io::safetensors::{OwnedTensor, WeightStore, serialize};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::Path;

/// Files copied from the base directory so the merged one is complete.
const SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "qwen.tiktoken",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

// ANCHOR: merge_dirs
/// Merge `adapter_dir` into `base_dir` and write `out_dir` (shards of at most `max_shard_bytes`, plus
/// `model.safetensors.index.json` when there is more than one). Returns the number of merged matrices.
pub fn merge_into_directory(
    base_dir: &Path,
    adapter_dir: &Path,
    out_dir: &Path,
    max_shard_bytes: usize,
) -> Result<usize> {
    let store = WeightStore::open(base_dir)?;
    let adapter = Adapter::load(adapter_dir)?;
    let scaling = adapter.config.scaling() as f32;
    let mut merged = 0;
    let mut tensors = Vec::new();
    for name in store.names() {
        let info = store.info(name)?;
        let module = name.strip_suffix(".weight").or_else(|| name.strip_suffix(".bias")).unwrap_or(name);
        let mut values = store.tensor_f32(name)?;
        if let (Some((a, b)), true) = (adapter.tensors.get(module), name.ends_with(".weight")) {
            let mut w = values
                .into_dimensionality::<ndarray::Ix2>()
                .with_context(|| format!("{}: tensor `{name}` is not a matrix", store.describe()))?;
            if w.dim() != (b.nrows(), a.ncols()) {
                bail!(
                    "{}: `{name}` is {:?}, the adapter's B·A is [{}, {}]",
                    adapter_dir.display(),
                    w.dim(),
                    b.nrows(),
                    a.ncols()
                );
            }
            merge(&mut w, a.view(), b.view(), scaling);
            merged += 1;
            values = w.into_dyn();
        }
        if let (Some(bias), true) = (adapter.biases.get(module), name.ends_with(".bias")) {
            values = bias.clone().into_dyn();
        }
        let flat: Vec<f32> = values.iter().copied().collect();
        // written in f32 whatever the base's dtype: rounding the merged sum back to bf16 would move the
        // logits by ~5e-2 on the bf16 fixture, and "merged = base + adapter" is the contract
        tensors.push(OwnedTensor::f32(name, &info.shape, &flat));
    }
    let unused: Vec<&String> = adapter.tensors.keys().filter(|m| !store.contains(&format!("{m}.weight"))).collect();
    if let Some(m) = unused.first() {
        bail!("{}: adapter module `{m}` has no `{m}.weight` in {}", adapter_dir.display(), store.describe());
    }
    write_model_directory(base_dir, out_dir, tensors, max_shard_bytes)?;
    Ok(merged)
}
// ANCHOR_END: merge_dirs

/// Write tensors as `model.safetensors` or `model-0000i-of-0000n.safetensors` + index, copy the side files,
/// all into a temporary sibling that is renamed into place at the end.
pub fn write_model_directory(
    base_dir: &Path,
    out_dir: &Path,
    tensors: Vec<OwnedTensor>,
    max_shard_bytes: usize,
) -> Result<()> {
    if out_dir.exists() {
        bail!("{}: already exists (choose a new output directory)", out_dir.display());
    }
    let parent = out_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        out_dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        // greedy sharding in name order, as transformers' save_pretrained does
        let mut shards: Vec<Vec<OwnedTensor>> = vec![Vec::new()];
        let mut size = 0usize;
        for t in tensors {
            if size > 0 && size + t.bytes.len() > max_shard_bytes {
                shards.push(Vec::new());
                size = 0;
            }
            size += t.bytes.len();
            shards.last_mut().expect("at least one shard").push(t);
        }
        let meta = || Some(BTreeMap::from([("format".to_string(), "pt".to_string())]));
        if shards.len() == 1 {
            std::fs::write(tmp.join("model.safetensors"), serialize(&shards[0], meta())?)?;
        } else {
            let n = shards.len();
            let mut weight_map = serde_json::Map::new();
            let mut total = 0usize;
            for (i, shard) in shards.iter().enumerate() {
                let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
                for t in shard {
                    weight_map.insert(t.name.clone(), file.clone().into());
                    total += t.bytes.len();
                }
                std::fs::write(tmp.join(&file), serialize(shard, meta())?)?;
            }
            let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            std::fs::write(tmp.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index)?)?;
        }
        if crate::gguf::is_gguf(base_dir) {
            for (file, bytes) in crate::gguf::import::side_files_of(&crate::gguf::container::GgufFile::open(base_dir)?)?
            {
                std::fs::write(tmp.join(file), bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
            }
        }
        for file in SIDE_FILES {
            let src = base_dir.join(file);
            if src.is_file() {
                std::fs::copy(&src, tmp.join(file)).with_context(|| format!("{}: cannot copy", src.display()))?;
            }
        }
        std::fs::rename(&tmp, out_dir)
            .with_context(|| format!("{}: cannot move the finished model into place", out_dir.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
