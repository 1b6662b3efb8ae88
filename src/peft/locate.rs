//! Finding the adapter a user means, and checking it was made for the base it is given.
//!
//! `--adapter` takes a PEFT adapter directory, a checkpoint of a LoRA run (the same thing), or a training
//! output directory (or its `latest` file), which stands for the checkpoint `latest` names. An adapter whose
//! `base_model_name_or_path` is a local model of another shape than the base it is given is refused naming
//! the first field that differs; its tensors' shapes are checked against the layers when it is attached.

use super::adapter_io::CONFIG_NAME;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};

// ANCHOR: resolve_adapter
/// The adapter directory `given` stands for.
pub fn resolve_adapter(given: &Path) -> Result<PathBuf> {
    let shown = given.display();
    if !given.exists() {
        bail!("--adapter: {shown} does not exist");
    }
    let latest = if given.is_file() && given.file_name().is_some_and(|n| n == "latest") {
        Some(given.to_path_buf())
    } else if given.is_dir() && !given.join(CONFIG_NAME).is_file() && given.join("latest").is_file() {
        Some(given.join("latest"))
    } else {
        None
    };
    let dir = match latest {
        Some(latest) => checkpoint_named_by(&latest)?,
        None => given.to_path_buf(),
    };
    if !dir.join(CONFIG_NAME).is_file() {
        let what = if dir.join("config.json").is_file() {
            "a full model (a full-parameter checkpoint?): pass it as the model instead"
        } else {
            "neither a PEFT adapter (adapter_config.json) nor a training output (latest)"
        };
        bail!("--adapter: {} is {what}", dir.display());
    }
    Ok(dir)
}

/// The checkpoint a training output's `latest` names. It holds the path as the run saw it (often relative to
/// where the run was started); when that is not found from here, the checkpoint of that name beside `latest`.
fn checkpoint_named_by(latest: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(latest).with_context(|| format!("{}: cannot read", latest.display()))?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", latest.display()))?;
    let named = json["latest_ckpt"]
        .as_str()
        .map(PathBuf::from)
        .with_context(|| format!("{}: no `latest_ckpt`", latest.display()))?;
    if named.is_dir() {
        return Ok(named);
    }
    let beside = latest.parent().zip(named.file_name()).map(|(dir, name)| dir.join(name));
    match beside.filter(|p| p.is_dir()) {
        Some(dir) => Ok(dir),
        None => bail!("{}: names {}, which does not exist", latest.display(), named.display()),
    }
}
// ANCHOR_END: resolve_adapter

/// config.json fields whose difference means another model shape.
const SHAPE_FIELDS: &[&str] = &[
    "model_type",
    "vocab_size",
    "hidden_size",
    "n_embd",
    "intermediate_size",
    "n_inner",
    "num_hidden_layers",
    "n_layer",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "head_dim",
    "num_local_experts",
    "num_experts",
];

// ANCHOR: check_base
/// Refuse an adapter trained on another base: when its `base_model_name_or_path` is a model directory here
/// (not a hub id, and not the same directory), every shape field both config.json files hold must agree.
pub fn check_adapter_base(adapter_dir: &Path, base_dir: &Path) -> Result<()> {
    let config_path = adapter_dir.join(CONFIG_NAME);
    let config = read_json(&config_path)?;
    let Some(named) = config["base_model_name_or_path"].as_str().filter(|s| !s.is_empty()) else { return Ok(()) };
    let named_dir = Path::new(named);
    if !named_dir.join("config.json").is_file() {
        return Ok(()); // a hub id, or a model that moved: nothing to compare against
    }
    if std::fs::canonicalize(named_dir).ok() == std::fs::canonicalize(base_dir).ok() {
        return Ok(());
    }
    let (trained_on, given) = (read_json(&named_dir.join("config.json"))?, read_json(&base_dir.join("config.json"))?);
    for field in SHAPE_FIELDS {
        if let (Some(a), Some(b)) = (trained_on.get(field), given.get(field)) {
            if a != b {
                bail!(
                    "{}: the adapter was trained on {named} (`{field}` {a}), but the base given is {} (`{field}` {b})",
                    config_path.display(),
                    base_dir.display()
                );
            }
        }
    }
    Ok(())
}
// ANCHOR_END: check_base

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}
