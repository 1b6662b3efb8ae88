//! Checkpoints that resume exactly: weights (an HF model directory, loadable by transformers), optimizer
//! moments, the step, the position in the data and the random state. Written into a temporary directory and
//! renamed into place, then `output_dir/latest` is replaced atomically, so a crash at any moment leaves the
//! previous checkpoint intact and `latest` pointing at a complete one.

use crate::backend::Backend;
use crate::io::safetensors::{OwnedTensor, WeightStore, save};
use crate::io::write_atomic;
use crate::models::decoder::{Decoder, hf_shape};
use crate::peft::LoraConfig;
use crate::peft::attach::extract_adapter;
use crate::train::optim::AdamW;
use crate::train::run_lock::{CHECKPOINT_RUN_FILE, written_by};
use anyhow::{Context, Result, anyhow, bail};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything besides tensors that a resumed run needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub completed_steps: usize,
    /// The epoch the next step belongs to and its index within that epoch.
    pub epoch: usize,
    pub step_in_epoch: usize,
    pub rng_state: [u64; 4],
    pub lr: f64,
    pub best_eval_loss: Option<f64>,
    pub best_step: Option<usize>,
    pub stall: usize,
    /// The total number of optimizer steps planned (a resumed run must plan the same).
    pub total_steps: usize,
    /// CoBa's histories and weights (`weighted_loss_mode: "coba"`).
    #[serde(default)]
    pub coba: Option<crate::loss::coba::CobaState>,
}

impl TrainerState {
    /// Before the first step of a run planned for `total_steps`, with the run's generator state.
    pub fn start(total_steps: usize, rng_state: [u64; 4]) -> Self {
        TrainerState {
            completed_steps: 0,
            epoch: 0,
            step_in_epoch: 0,
            rng_state,
            lr: 0.0,
            best_eval_loss: None,
            best_step: None,
            stall: 0,
            total_steps,
            coba: None,
        }
    }
}

/// Files copied from the base model into every full-parameter checkpoint, so it is a loadable HF directory.
/// `chat_template.jinja` is where transformers 5 keeps the chat template (older ones: `tokenizer_config.json`'s
/// `chat_template`), so `AutoTokenizer` on a checkpoint has the base's template.
const MODEL_SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "qwen.tiktoken",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// The model's parameters as HF-named, HF-shaped f32 tensors.
pub fn model_tensors<B: Backend>(b: &B, model: &mut Decoder<B>) -> Vec<OwnedTensor> {
    model
        .named_parameters_mut()
        .into_iter()
        .map(|(name, t)| {
            let host = b.download(t);
            let values: Vec<f32> = host.iter().copied().collect();
            OwnedTensor::f32(&name, &hf_shape(&name, host.dim()), &values)
        })
        .collect()
}

// ANCHOR: save_checkpoint
/// Write `dir` (e.g. `output_dir/step_40`) atomically, tagged with the run that wrote it (`run_id`). A save
/// that fails (a full disk) removes its partial directory; the previous checkpoint is untouched.
#[allow(clippy::too_many_arguments)]
pub fn save_checkpoint<B: Backend>(
    b: &B,
    dir: &Path,
    base_model_dir: &Path,
    model: &mut Decoder<B>,
    opt: &AdamW<B::Tensor>,
    state: &TrainerState,
    lora: Option<&LoraConfig>,
    run_id: &str,
) -> Result<()> {
    let parent = dir.parent().context("checkpoint directory has no parent")?;
    let name = dir.file_name().context("checkpoint directory has no name")?.to_string_lossy().into_owned();
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = write_checkpoint_files(b, &tmp, base_model_dir, model, opt, state, lora, run_id);
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        return written;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("{}: cannot replace", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| {
        let _ = std::fs::remove_dir_all(&tmp);
        format!("{}: cannot move the checkpoint into place", dir.display())
    })?;
    Ok(())
}
// ANCHOR_END: save_checkpoint

#[allow(clippy::too_many_arguments)]
fn write_checkpoint_files<B: Backend>(
    b: &B,
    tmp: &Path,
    base_model_dir: &Path,
    model: &mut Decoder<B>,
    opt: &AdamW<B::Tensor>,
    state: &TrainerState,
    lora: Option<&LoraConfig>,
    run_id: &str,
) -> Result<()> {
    std::fs::create_dir_all(tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;

    let names: Vec<String> = model.trainable_parameters_mut().into_iter().map(|(n, _)| n).collect();
    match lora {
        // LoRA: the checkpoint is a PEFT adapter directory, as MFTCoder writes it
        Some(config) => extract_adapter(model, b, config).save(tmp, &base_model_dir.to_string_lossy())?,
        // full parameters: an HF model directory
        None => {
            let tensors = model_tensors(b, model);
            if let Some(bad) = tensors.iter().find(|t| !finite_f32_bytes(&t.bytes)) {
                bail!("refusing to write a checkpoint: parameter `{}` is not finite", bad.name);
            }
            save(&tmp.join("model.safetensors"), &tensors)?;
            if crate::gguf::is_gguf(base_model_dir) {
                let g = crate::gguf::container::GgufFile::open(base_model_dir)?;
                for (file, bytes) in crate::gguf::import::side_files_of(&g)? {
                    std::fs::write(tmp.join(file), bytes)
                        .with_context(|| format!("{}: cannot write", tmp.display()))?;
                }
            }
            for file in MODEL_SIDE_FILES {
                let src = base_model_dir.join(file);
                if src.is_file() {
                    std::fs::copy(&src, tmp.join(file))
                        .with_context(|| format!("{}: cannot copy into the checkpoint", src.display()))?;
                }
            }
        }
    }
    let mut moments = Vec::with_capacity(2 * names.len());
    for (i, name) in names.iter().enumerate() {
        for (kind, t) in [("m", &opt.m[i]), ("v", &opt.v[i])] {
            let t = b.download(t);
            let values: Vec<f32> = t.iter().copied().collect(); // row-major, whatever the backend's layout
            moments.push(OwnedTensor::f32(&format!("{kind}.{name}"), &[t.nrows(), t.ncols()], &values));
        }
    }
    save(&tmp.join("optimizer.safetensors"), &moments)?;
    let json = serde_json::json!({"optimizer_step": opt.step, "state": state});
    write_atomic(&tmp.join("trainer_state.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    write_atomic(&tmp.join(CHECKPOINT_RUN_FILE), run_id.as_bytes())
}

/// Whether little-endian f32 bytes hold only finite values.
fn finite_f32_bytes(bytes: &[u8]) -> bool {
    bytes.chunks_exact(4).all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
}

/// `output_dir/latest`: `{"latest_ckpt": dir, "lr": lr}` as MFTCoder writes it.
pub fn write_latest(output_dir: &Path, checkpoint: &Path, lr: f64) -> Result<()> {
    let json = serde_json::json!({"latest_ckpt": checkpoint, "lr": lr});
    write_atomic(&output_dir.join("latest"), json.to_string().as_bytes())
}

pub fn read_latest(output_dir: &Path) -> Result<Option<PathBuf>> {
    let path = output_dir.join("latest");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let dir = json
        .get("latest_ckpt")
        .and_then(|v| v.as_str())
        .ok_or_else(|| anyhow!("{}: no `latest_ckpt`", path.display()))?;
    Ok(Some(PathBuf::from(dir)))
}

/// Load the optimizer moments and trainer state of a checkpoint into `opt` (whose parameter order is `names`).
pub fn load_training_state<B: Backend>(
    b: &B,
    dir: &Path,
    names: &[String],
    opt: &mut AdamW<B::Tensor>,
) -> Result<TrainerState> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let state: TrainerState =
        serde_json::from_value(json["state"].clone()).with_context(|| format!("{}: field `state`", path.display()))?;
    opt.step =
        json["optimizer_step"].as_u64().ok_or_else(|| anyhow!("{}: field `optimizer_step` missing", path.display()))?;
    let store = WeightStore::open_checked(&dir.join("optimizer.safetensors"))?;
    for (i, name) in names.iter().enumerate() {
        for (kind, slot) in [("m", &mut opt.m[i]), ("v", &mut opt.v[i])] {
            let (rows, cols) = b.dims(slot);
            let t: Array2<f32> = store.matrix(&format!("{kind}.{name}"), rows, cols)?;
            *slot = b.upload(t);
        }
    }
    Ok(state)
}

/// `step_*` directories under `output_dir`, sorted by step.
pub fn step_checkpoints(output_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(output_dir).with_context(|| format!("{}: cannot list", output_dir.display()))? {
        let path = entry?.path();
        if let Some(step) =
            path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("step_")).and_then(|s| s.parse().ok())
        {
            if path.is_dir() {
                out.push((step, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// MFTCoder's `saving_limit`: keep the newest `limit` step checkpoints, never deleting the best one, and
/// never one that run `run_id` did not write.
pub fn enforce_saving_limit(
    output_dir: &Path,
    limit: usize,
    best_step: Option<usize>,
    latest: usize,
    run_id: &str,
) -> Result<Vec<PathBuf>> {
    let checkpoints: Vec<(usize, PathBuf)> =
        step_checkpoints(output_dir)?.into_iter().filter(|(_, dir)| written_by(dir, run_id)).collect();
    let mut removed = Vec::new();
    let excess = checkpoints.len().saturating_sub(limit);
    for (step, path) in checkpoints.into_iter().filter(|(s, _)| Some(*s) != best_step && *s != latest).take(excess) {
        std::fs::remove_dir_all(&path)
            .with_context(|| format!("{}: cannot remove old checkpoint (step {step})", path.display()))?;
        removed.push(path);
    }
    Ok(removed)
}

/// Fail before training if `output_dir` cannot be created or written.
pub fn check_writable(output_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(output_dir)
        .with_context(|| format!("{}: cannot create the output directory", output_dir.display()))?;
    let probe = output_dir.join(format!(".write-test-{}", std::process::id()));
    let written = std::fs::write(&probe, b"ok");
    std::fs::remove_file(&probe).ok();
    written.with_context(|| format!("{}: the output directory is not writable", output_dir.display()))?;
    if !output_dir.is_dir() {
        bail!("{}: not a directory", output_dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saving_limit_removes_only_checkpoints_of_the_same_run() {
        let dir = std::env::temp_dir().join(format!("mftcoder-saving-limit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (step, run) in [(1, Some("other")), (2, Some("me")), (3, Some("me")), (4, None), (5, Some("me"))] {
            let d = dir.join(format!("step_{step}"));
            std::fs::create_dir_all(&d).unwrap();
            if let Some(run) = run {
                std::fs::write(d.join(CHECKPOINT_RUN_FILE), run).unwrap();
            }
        }
        let removed = enforce_saving_limit(&dir, 1, None, 5, "me").unwrap();
        assert_eq!(removed, vec![dir.join("step_2"), dir.join("step_3")]);
        let left: Vec<usize> = step_checkpoints(&dir).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(left, vec![1, 4, 5], "another run's and an untagged checkpoint stay");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
