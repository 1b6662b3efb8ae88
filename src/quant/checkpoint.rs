//! Whole 4-bit checkpoints in the layout transformers + bitsandbytes save, both ways.
//!
//! Writing: transformers loads a model with `BitsAndBytesConfig(load_in_4bit=True, ...)`, replaces every
//! `nn.Linear` except the output head by a `Linear4bit`, and `save_pretrained` writes the packed weights with
//! their side tensors (see [`super::format`]), every other tensor as it is in memory (f32 here), and the
//! config with a `quantization_config`. [`quantize_checkpoint`] writes the same directory from an ordinary
//! one, tensor for tensor; the goldens check it byte for byte.
//!
//! Reading: [`load_quantized_store`] opens such a directory and hands out f32 matrices by their HF names,
//! dequantizing the 4-bit ones; [`open_weights`] turns it into a plain [`WeightStore`] for the model loaders.

use super::format::{from_store, is_side_tensor, quantized_weights, to_tensors};
use super::{QuantOptions, QuantType, Quantized4bit};
use crate::io::safetensors::{OwnedTensor, WeightStore, serialize};
use anyhow::{Context, Result, anyhow, bail};
use ndarray::{Array2, ArrayD};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that are not `nn.Linear` layers, or that transformers keeps in full precision (the output head).
const NOT_QUANTIZED: [&str; 9] = [
    "lm_head",
    "embed_tokens",
    "embed_positions",
    "wte",
    "wpe",
    "embed_in",
    "embed_out",
    "word_embeddings",
    "output_layer",
];

// ANCHOR: is_quantized_linear
/// Whether transformers would store this tensor in 4 bits: the 2-D `weight` of a linear layer, not the head.
pub fn is_quantized_linear(name: &str, shape: &[usize]) -> bool {
    let Some(module) = name.strip_suffix(".weight") else { return false };
    let last = module.rsplit('.').next().unwrap_or(module);
    shape.len() == 2 && !NOT_QUANTIZED.contains(&last)
}
// ANCHOR_END: is_quantized_linear

/// `BitsAndBytesConfig.to_dict()` as transformers 5.24 writes it into config.json (compute dtype float32).
pub fn quantization_config(quant_type: QuantType, double_quant: bool) -> Value {
    json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": quant_type.name(),
        "bnb_4bit_use_double_quant": double_quant,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes"
    })
}

/// What [`quantize_checkpoint`] did.
#[derive(Debug, Default)]
pub struct QuantizeReport {
    pub quantized_tensors: usize,
    pub quantized_params: usize,
    pub kept_tensors: usize,
    pub kept_params: usize,
    /// Storage bits per quantized weight (codes + scales).
    pub bits_per_param: f64,
    pub file_bytes: usize,
}

fn read_config(dir: &Path) -> Result<Map<String, Value>> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    match serde_json::from_str(&text).map_err(|e| anyhow!("{}: not valid JSON ({e})", path.display()))? {
        Value::Object(m) => Ok(m),
        _ => bail!("{}: expected a JSON object", path.display()),
    }
}

// ANCHOR: quantize_checkpoint
/// Quantize every linear weight of `model_dir` into a new directory `out_dir` (which must not exist), written
/// into a temporary sibling and renamed into place, so a failure leaves nothing behind.
pub fn quantize_checkpoint(
    model_dir: &Path,
    out_dir: &Path,
    quant_type: QuantType,
    opts: QuantOptions,
) -> Result<QuantizeReport> {
    if out_dir.exists() {
        bail!("{}: already exists; choose a new output directory", out_dir.display());
    }
    let mut config = read_config(model_dir)?;
    if config.contains_key("quantization_config") {
        bail!(
            "{}: field `quantization_config` is present; the model is already quantized",
            model_dir.join("config.json").display()
        );
    }
    let store = WeightStore::open(model_dir)?;
    let mut tensors = Vec::new();
    let (mut report, mut bits) = (QuantizeReport::default(), 0.0);
    for name in store.names() {
        let shape = store.info(name)?.shape;
        if is_quantized_linear(name, &shape) {
            let w = store.matrix(name, shape[0], shape[1])?;
            let q = Quantized4bit::quantize_with(w.view(), quant_type, opts)
                .with_context(|| format!("{}: tensor `{name}`", store.describe()))?;
            bits += q.bits_per_param() * q.numel() as f64;
            report.quantized_tensors += 1;
            report.quantized_params += q.numel();
            tensors.extend(to_tensors(name, &q));
        } else {
            let t = store.tensor_f32(name)?;
            report.kept_tensors += 1;
            report.kept_params += t.len();
            tensors.push(OwnedTensor::f32(name, t.shape(), &t.iter().copied().collect::<Vec<_>>()));
        }
    }
    if report.quantized_tensors == 0 {
        bail!("{}: no linear weights to quantize", store.describe());
    }
    report.bits_per_param = bits / report.quantized_params as f64;
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = serialize(&tensors, Some(meta))?;
    report.file_bytes = bytes.len();

    config.insert("quantization_config".into(), quantization_config(quant_type, opts.double_quant));
    config.insert("dtype".into(), json!("float32")); // unquantized tensors are written in f32
    if config.contains_key("torch_dtype") {
        config.insert("torch_dtype".into(), json!("float32"));
    }
    let config_text = serde_json::to_string_pretty(&Value::Object(config))? + "\n";

    let tmp = temp_sibling(out_dir)?;
    let written = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        std::fs::write(tmp.join("model.safetensors"), &bytes)
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        std::fs::write(tmp.join("config.json"), config_text)
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        crate::io::side_files::copy_side_files(model_dir, &tmp, &["config.json"])?; // written above
        std::fs::rename(&tmp, out_dir)
            .with_context(|| format!("{}: cannot move the finished directory into place", out_dir.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written.map(|()| report)
}
// ANCHOR_END: quantize_checkpoint

fn temp_sibling(out_dir: &Path) -> Result<PathBuf> {
    let name = out_dir.file_name().ok_or_else(|| anyhow!("{}: not a directory path", out_dir.display()))?;
    let parent = out_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id())))
}

/// A checkpoint whose linear weights may be 4-bit: every parameter by its HF name, as f32.
pub struct QuantizedStore {
    pub store: WeightStore,
    /// The 4-bit weights by name (`...q_proj.weight`), still packed.
    pub quantized: BTreeMap<String, Quantized4bit>,
}

// ANCHOR: load_quantized_store
/// Open a model directory saved by transformers + bitsandbytes (or by `mftcoder quantize`); a directory
/// without 4-bit weights opens too, with nothing in `quantized`.
pub fn load_quantized_store(dir: &Path) -> Result<QuantizedStore> {
    let store = WeightStore::open(dir)?;
    let mut quantized = BTreeMap::new();
    for name in quantized_weights(&store) {
        let q = from_store(&store, &name)?;
        quantized.insert(name, q);
    }
    Ok(QuantizedStore { store, quantized })
}

impl QuantizedStore {
    /// The parameter names: ordinary tensors and 4-bit weights, without the bitsandbytes side tensors.
    pub fn names(&self) -> Vec<String> {
        let q: BTreeSet<String> = self.quantized.keys().cloned().collect();
        self.store.names().filter(|n| !is_side_tensor(n, &q)).map(str::to_string).collect()
    }

    /// Any parameter as f32 with its HF shape; 4-bit weights are dequantized.
    pub fn tensor_f32(&self, name: &str) -> Result<ArrayD<f32>> {
        match self.quantized.get(name) {
            Some(q) => Ok(q.dequantize().into_dyn()),
            None => self.store.tensor_f32(name),
        }
    }

    /// A matrix by name, dequantized if it is 4-bit.
    pub fn matrix(&self, name: &str) -> Result<Array2<f32>> {
        let t = self.tensor_f32(name)?;
        let shape = t.shape().to_vec();
        t.into_dimensionality()
            .map_err(|_| anyhow!("{}: tensor `{name}` has shape {shape:?}, expected a matrix", self.store.describe()))
    }
}
// ANCHOR_END: load_quantized_store

/// Open a model's weights for the loaders: a plain [`WeightStore`] when nothing is quantized, otherwise one
/// over a temporary f32 copy with every 4-bit weight dequantized (the file is unlinked once mapped).
pub fn open_weights(dir: &Path) -> Result<WeightStore> {
    let store = WeightStore::open(dir)?;
    if quantized_weights(&store).is_empty() {
        return Ok(store);
    }
    let q = load_quantized_store(dir)?;
    let mut tensors = Vec::new();
    for name in q.names() {
        let t = q.tensor_f32(&name)?;
        tensors.push(OwnedTensor::f32(&name, t.shape(), &t.iter().copied().collect::<Vec<_>>()));
    }
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("mftcoder-dequant-{}-{n}.safetensors", std::process::id()));
    std::fs::write(&path, serialize(&tensors, None)?).with_context(|| format!("{}: cannot write", path.display()))?;
    let opened = WeightStore::open(&path);
    let _ = std::fs::remove_file(&path);
    opened.with_context(|| format!("{}: dequantized copy", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_weights_are_picked_by_name_and_rank() {
        assert!(is_quantized_linear("model.layers.0.self_attn.q_proj.weight", &[8, 8]));
        assert!(is_quantized_linear("model.layers.3.mlp.down_proj.weight", &[8, 16]));
        assert!(!is_quantized_linear("model.layers.0.self_attn.q_proj.bias", &[8]));
        assert!(!is_quantized_linear("model.layers.0.input_layernorm.weight", &[8]));
        assert!(!is_quantized_linear("lm_head.weight", &[320, 8]));
        assert!(!is_quantized_linear("model.embed_tokens.weight", &[320, 8]));
    }

    #[test]
    fn refuses_existing_output_and_missing_input() {
        let dir = std::env::temp_dir().join(format!("mftcoder-quant-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let opts = QuantOptions::default();
        let err = quantize_checkpoint(&dir, &dir, QuantType::Nf4, opts).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        let err = quantize_checkpoint(&dir, &dir.join("out"), QuantType::Nf4, opts).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        assert!(!dir.join("out").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
