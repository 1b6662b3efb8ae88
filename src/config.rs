//! Training configs with MFTCoder's field names and defaults (`MftTrainArgs`, `MptTrainArgs`; reference §7).
//!
//! An existing MFTCoder JSON config runs unchanged: `data_paths` may be the legacy `"[a,b]"` string or a JSON
//! array, `task_weights` likewise, `num_warmup_steps` an integer or a fraction of the run. Fields that only
//! matter on a multi-GPU cluster are accepted and reported as ignored; a field we do not know is an error that
//! names it and suggests the nearest valid one.

use crate::config_reference::Command;
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// `mftcoder train` / `mftcoder pretrain` configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct TrainConfig {
    #[serde(deserialize_with = "string_list")]
    pub data_paths: Vec<String>,
    pub output_dir: PathBuf,
    pub tb_dir: Option<PathBuf>,
    pub pretrained_model_path: PathBuf,
    pub model_type: Option<String>,
    /// true: jsonl tokenized at start; false: Megatron `.bin/.idx` prefixes (continued pre-training)
    pub load_raw_dataset: bool,
    #[serde(deserialize_with = "opt_number_list")]
    pub task_weights: Option<Vec<f64>>,
    pub data_split: String,
    pub padding_mode: String,
    pub tokenize_mode: String,
    pub weighted_loss_mode: String,
    /// "lora" | "qlora" | null (full parameters)
    pub peft_type: Option<String>,
    pub quantization: Option<String>,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Option<Value>,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub learning_rate: f64,
    pub min_lr: f64,
    pub weight_decay: f64,
    pub gradient_accumulation_steps: usize,
    pub lr_scheduler_type: String,
    /// An integer number of optimizer steps, or a fraction (< 1) of the run.
    pub num_warmup_steps: f64,
    pub num_train_epochs: usize,
    pub seed: u64,
    pub seq_length: usize,
    pub resume_from_checkpoint: Option<PathBuf>,
    pub auto_resume: bool,
    pub log_interval: usize,
    pub checkpointing_steps: usize,
    pub evaluation_steps: usize,
    pub max_train_steps: Option<usize>,
    pub epoch_checkpointing: bool,
    pub shuffle_before_split: bool,
    pub early_stopping: bool,
    pub early_stopping_stall_num: usize,
    pub saving_limit: Option<usize>,
    pub use_dynamic_padding: bool,
    pub coba_warmup_steps: usize,
    pub coba_history_length: usize,
    pub coba_tau: f64,
    pub coba_update_interval: usize,
    pub coba_sample_valid_num: usize,
    pub role_markers: Option<Value>,
    /// `MptTrainArgs`: also write an HF model directory into each checkpoint (we always do for full training).
    pub save_transformers_model: bool,

    // ---- ours (not in MFTCoder) ----
    /// Global-norm gradient clipping (MFTCoder gets 1.0 from its DeepSpeed config); 0 disables it.
    pub gradient_clipping: f64,
    /// Recompute each layer's activations in the backward instead of keeping them (MFTCoder: always on).
    pub activation_checkpointing: bool,
    /// Skip malformed jsonl records (counted and reported) instead of stopping at the first.
    pub skip_bad_records: bool,
    /// Truncate over-long samples instead of dropping them.
    pub truncate: bool,
    /// Where to train: `cpu` (the reference path) or `cuda` / `cuda:N` (the `cuda` feature); `--device`
    /// on the command line overrides it.
    pub device: String,
    /// Matrix products on the GPU: `f32`, or `bf16` (mixed precision: bf16 operands, f32 accumulation,
    /// f32 master weights and optimizer state).
    pub precision: String,
}

// ANCHOR: train_config_defaults
impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data_paths: Vec::new(),
            output_dir: PathBuf::new(),
            tb_dir: None,
            pretrained_model_path: PathBuf::new(),
            model_type: None,
            load_raw_dataset: true,
            task_weights: None,
            data_split: "98,2,0".into(),
            padding_mode: "padding".into(),
            tokenize_mode: "sft".into(),
            weighted_loss_mode: "case3".into(),
            peft_type: Some("qlora".into()),
            quantization: Some("4bit".into()),
            lora_rank: 96,
            lora_alpha: 32.0,
            lora_dropout: 0.05,
            target_modules: None,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            learning_rate: 5e-5,
            min_lr: 5e-6,
            weight_decay: 0.01,
            gradient_accumulation_steps: 1,
            lr_scheduler_type: "cosine".into(),
            num_warmup_steps: 0.05,
            num_train_epochs: 4,
            seed: 1234,
            seq_length: 4096,
            resume_from_checkpoint: None,
            auto_resume: true,
            log_interval: 10,
            checkpointing_steps: 100,
            evaluation_steps: 100,
            max_train_steps: None,
            epoch_checkpointing: false,
            shuffle_before_split: true,
            early_stopping: true,
            early_stopping_stall_num: 5,
            saving_limit: None,
            use_dynamic_padding: true,
            coba_warmup_steps: 100,
            coba_history_length: 200,
            coba_tau: 5.0,
            coba_update_interval: 1,
            coba_sample_valid_num: 1,
            role_markers: None,
            save_transformers_model: false,
            gradient_clipping: 1.0,
            activation_checkpointing: false,
            skip_bad_records: false,
            truncate: false,
            device: "cpu".into(),
            precision: "f32".into(),
        }
    }
}
// ANCHOR_END: train_config_defaults

/// Every field `TrainConfig` reads, in declaration order (the unknown-field check; the order a resumed run's
/// config is compared in).
pub const KNOWN_FIELDS: &[&str] = &[
    "data_paths",
    "output_dir",
    "tb_dir",
    "pretrained_model_path",
    "model_type",
    "load_raw_dataset",
    "task_weights",
    "data_split",
    "padding_mode",
    "tokenize_mode",
    "weighted_loss_mode",
    "peft_type",
    "quantization",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "learning_rate",
    "min_lr",
    "weight_decay",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "num_warmup_steps",
    "num_train_epochs",
    "seed",
    "seq_length",
    "resume_from_checkpoint",
    "auto_resume",
    "log_interval",
    "checkpointing_steps",
    "evaluation_steps",
    "max_train_steps",
    "epoch_checkpointing",
    "shuffle_before_split",
    "early_stopping",
    "early_stopping_stall_num",
    "saving_limit",
    "use_dynamic_padding",
    "coba_warmup_steps",
    "coba_history_length",
    "coba_tau",
    "coba_update_interval",
    "coba_sample_valid_num",
    "role_markers",
    "save_transformers_model",
    "gradient_clipping",
    "activation_checkpointing",
    "skip_bad_records",
    "truncate",
    "device",
    "precision",
];

/// A parsed config and the notices to show the user.
pub struct LoadedConfig {
    pub config: TrainConfig,
    pub notices: Vec<String>,
}

impl TrainConfig {
    pub fn from_file(path: &Path) -> Result<LoadedConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        Self::from_json_str(&text).map_err(|e| anyhow!("{}: {e:#}", path.display()))
    }

    pub fn from_json_str(text: &str) -> Result<LoadedConfig> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| anyhow!("line {}: not valid JSON ({e})", e.line()))?;
        let Value::Object(mut map) = value else { bail!("a config must be a JSON object") };
        let mut notices = Vec::new();
        for key in map.keys().cloned().collect::<Vec<_>>() {
            let notice = crate::config_reference::notice(Command::Train, &key);
            if !KNOWN_FIELDS.contains(&key.as_str()) {
                if notice.is_none() {
                    let nearest = nearest_field(&key);
                    bail!("unknown field `{key}` (did you mean `{nearest}`?)");
                }
                map.remove(&key); // MFTCoder's, with no effect here: TrainConfig does not hold it
            }
            notices.extend(notice);
        }
        for required in ["data_paths", "output_dir", "pretrained_model_path"] {
            if map.get(required).is_none_or(Value::is_null) {
                bail!("field `{required}` is required");
            }
        }
        let config: TrainConfig = from_fields(map)?;
        config.validate()?;
        Ok(LoadedConfig { config, notices })
    }

    // ANCHOR: validate
    fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("per_device_train_batch_size", self.per_device_train_batch_size),
            ("per_device_eval_batch_size", self.per_device_eval_batch_size),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps),
            ("seq_length", self.seq_length),
            ("num_train_epochs", self.num_train_epochs),
            ("lora_rank", self.lora_rank),
            ("coba_history_length", self.coba_history_length),
            ("coba_update_interval", self.coba_update_interval),
            ("coba_sample_valid_num", self.coba_sample_valid_num),
            ("early_stopping_stall_num", self.early_stopping_stall_num),
            ("max_train_steps", self.max_train_steps.unwrap_or(1)),
        ] {
            check_int(field, v)?;
        }
        for (field, v) in [
            ("learning_rate", self.learning_rate),
            ("min_lr", self.min_lr),
            ("weight_decay", self.weight_decay),
            ("num_warmup_steps", self.num_warmup_steps),
            ("lora_alpha", self.lora_alpha),
            ("lora_dropout", self.lora_dropout),
            ("coba_tau", self.coba_tau),
            ("gradient_clipping", self.gradient_clipping),
        ] {
            check_real(field, v)?;
        }
        if let Some(weights) = &self.task_weights {
            check_task_weights(weights)?;
        }
        self.data_split.parse::<crate::data::DataSplit>().map_err(|e| anyhow!("field `data_split`: {e}"))?;
        let one_of = |field: &str, value: &str, allowed: &[&str]| -> Result<()> {
            if allowed.contains(&value) {
                Ok(())
            } else {
                bail!("field `{field}` is `{value}`; allowed: {}", allowed.join(", "))
            }
        };
        one_of("weighted_loss_mode", &self.weighted_loss_mode, &["case1", "case2", "case3", "case4", "coba"])?;
        one_of("padding_mode", &self.padding_mode, &["padding", "pack", "concat"])?;
        one_of("tokenize_mode", &self.tokenize_mode, &["sft", "pretrain", "sst"])?;
        one_of(
            "lr_scheduler_type",
            &self.lr_scheduler_type,
            &["linear", "cosine", "constant", "constant_with_warmup"],
        )?;
        if let Some(p) = self.peft_type.as_deref().filter(|p| !matches!(*p, "lora" | "qlora")) {
            let hint = if p == "null" { " (write null without quotes)" } else { "" };
            bail!("field `peft_type` is \"{p}\"; allowed: \"lora\", \"qlora\", null (full parameters){hint}");
        }
        if self.data_paths.is_empty() {
            bail!("field `data_paths` names no path");
        }
        Ok(())
    }
    // ANCHOR_END: validate

    /// Warm-up in optimizer steps: an integer as given, or a fraction of `total_steps` (MFTCoder's rule).
    pub fn warmup_steps(&self, total_steps: usize) -> usize {
        if self.num_warmup_steps < 1.0 && self.num_warmup_steps.fract() != 0.0 {
            (total_steps as f64 * self.num_warmup_steps) as usize
        } else {
            self.num_warmup_steps as usize
        }
    }
}

// ANCHOR: ranges
/// The allowed range of every integer field a config may give (shared with `dpo`'s config): each bound is
/// what the code can run, not a taste — e.g. `seq_length` 2²⁰ keeps one padded batch row addressable and
/// is checked against memory before training.
pub const INT_RANGES: &[(&str, usize, usize)] = &[
    ("per_device_train_batch_size", 1, 65_536),
    ("per_device_eval_batch_size", 1, 65_536),
    ("gradient_accumulation_steps", 1, 65_536),
    ("seq_length", 1, 1 << 20),
    ("num_train_epochs", 1, 1_000_000),
    ("lora_rank", 1, 65_536),
    ("coba_history_length", 1, 1_000_000),
    ("coba_update_interval", 1, 1_000_000),
    ("coba_sample_valid_num", 1, 1_000),
    ("early_stopping_stall_num", 1, 1_000_000),
    ("max_train_steps", 1, 1 << 40),
    ("max_prompt_length", 1, 1 << 20),
    ("max_length", 2, 1 << 20),
];

/// The allowed range of every real field: (field, low, high, low included). f32's largest value bounds
/// what the optimizer computes in.
pub const REAL_RANGES: &[(&str, f64, f64, bool)] = &[
    ("learning_rate", 0.0, f32::MAX as f64, false),
    ("min_lr", 0.0, f32::MAX as f64, true),
    ("weight_decay", 0.0, 10.0, true),
    ("num_warmup_steps", 0.0, 1e12, true),
    ("warmup_steps", 0.0, 1e12, true),
    ("lora_alpha", 0.0, 1e6, false),
    ("lora_dropout", 0.0, 1.0, true), // below 1: a dropout of 1 keeps nothing
    ("coba_tau", 0.0, 1e6, false),
    ("gradient_clipping", 0.0, f32::MAX as f64, true),
    ("max_grad_norm", 0.0, f32::MAX as f64, true),
    ("beta", 0.0, 1e6, false),
    ("rpo_alpha", 0.0, 1e6, true),
];
// ANCHOR_END: ranges

fn range_text(field: &str) -> Option<String> {
    if let Some((_, lo, hi)) = INT_RANGES.iter().find(|r| r.0 == field) {
        return Some(format!("an integer from {lo} to {hi}"));
    }
    REAL_RANGES.iter().find(|r| r.0 == field).map(|&(f, lo, hi, lo_in)| {
        let close = if f == "lora_dropout" { ")" } else { "]" };
        format!("a number in {}{}, {}{close}", if lo_in { "[" } else { "(" }, show(lo), show(hi))
    })
}

/// A number as a person writes it: 0.05, 4096, 1e39, 3.403e38.
fn show(x: f64) -> String {
    if x == 0.0 || (1e-4..1e7).contains(&x.abs()) {
        return x.to_string();
    }
    let s = format!("{x:.3e}");
    let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
    format!("{}e{exponent}", mantissa.trim_end_matches('0').trim_end_matches('.'))
}

/// A JSON value in a message (numbers as [`show`] writes them).
fn show_json(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if v.is_number() => show(x),
        _ => v.to_string(),
    }
}

/// `field` holds an integer in its range.
pub fn check_int(field: &str, v: usize) -> Result<()> {
    let &(_, lo, hi) = INT_RANGES.iter().find(|r| r.0 == field).expect("a field with a range");
    if v < lo || v > hi {
        bail!("field `{field}` is {v}; allowed: {}", range_text(field).unwrap_or_default());
    }
    Ok(())
}

/// `field` holds a finite real in its range.
pub fn check_real(field: &str, v: f64) -> Result<()> {
    let &(_, lo, hi, lo_in) = REAL_RANGES.iter().find(|r| r.0 == field).expect("a field with a range");
    let above_low = if lo_in { v >= lo } else { v > lo };
    let below_high = if field == "lora_dropout" { v < hi } else { v <= hi };
    if !(v.is_finite() && above_low && below_high) {
        bail!("field `{field}` is {}; allowed: {}", show(v), range_text(field).unwrap_or_default());
    }
    Ok(())
}

/// Task weights: finite, not negative, not all zero.
pub fn check_task_weights(weights: &[f64]) -> Result<()> {
    if let Some((i, w)) = weights.iter().enumerate().find(|(_, w)| !(w.is_finite() && **w >= 0.0)) {
        bail!("field `task_weights` has {w} at position {}; allowed: finite numbers ≥ 0, not all 0", i + 1);
    }
    if !weights.is_empty() && weights.iter().all(|&w| w == 0.0) {
        bail!("field `task_weights` is all 0; allowed: finite numbers ≥ 0, not all 0");
    }
    Ok(())
}

/// Deserialize a config object; a value of the wrong type is named by its field (serde's own message does
/// not say which field), with the allowed range when the field has one.
pub fn from_fields<T: serde::de::DeserializeOwned>(map: serde_json::Map<String, Value>) -> Result<T> {
    match serde_json::from_value::<T>(Value::Object(map.clone())) {
        Ok(config) => Ok(config),
        Err(whole) => {
            for (key, value) in &map {
                let one = serde_json::Map::from_iter([(key.clone(), value.clone())]);
                if let Err(e) = serde_json::from_value::<T>(Value::Object(one)) {
                    return Err(match range_text(key) {
                        Some(range) => anyhow!("field `{key}` is {}; allowed: {range}", show_json(value)),
                        None => anyhow!("field `{key}`: {e}"),
                    });
                }
            }
            Err(anyhow!("{whole}"))
        }
    }
}

/// `"[a,b]"` (MFTCoder's string form: brackets stripped, split on commas, spaces trimmed) or `["a", "b"]`.
/// `data_paths` as MFTCoder writes it: the legacy `"[a,b]"` string or a JSON array of strings.
pub(crate) fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(parse_bracket_list(&s)),
        Value::Array(items) => items
            .into_iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| serde::de::Error::custom("`data_paths` entries must be strings"))
            })
            .collect(),
        _ => Err(serde::de::Error::custom("`data_paths` must be a string \"[a,b]\" or an array of strings")),
    }
}

fn opt_number_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<f64>>, D::Error> {
    let bad = || serde::de::Error::custom("`task_weights` must be \"[w1,w2]\", an array of numbers, or null");
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => parse_bracket_list(&s)
            .iter()
            .map(|x| x.parse::<f64>().map_err(|_| bad()))
            .collect::<Result<_, _>>()
            .map(Some),
        Value::Array(items) => items.iter().map(|v| v.as_f64().ok_or_else(bad)).collect::<Result<_, _>>().map(Some),
        _ => Err(bad()),
    }
}

pub fn parse_bracket_list(s: &str) -> Vec<String> {
    let s = s.trim();
    let inner = s.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(s);
    inner
        .split(',')
        .map(|p| p.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn nearest_field(key: &str) -> &'static str {
    let names = crate::config_reference::fields(Command::Train).map(|(f, _)| f.name);
    nearest(key, names).unwrap_or("data_paths")
}

/// The candidate closest to `key` by edit distance ("did you mean").
pub fn nearest<'a>(key: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates.into_iter().min_by_key(|c| edit_distance(key, c))
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#""output_dir": "out", "pretrained_model_path": "m""#;

    #[test]
    fn both_data_path_forms_and_defaults() {
        let a = TrainConfig::from_json_str(&format!(r#"{{"data_paths": "[d/a,d/b]", {BASE}}}"#)).unwrap().config;
        let b = TrainConfig::from_json_str(&format!(r#"{{"data_paths": ["d/a", "d/b"], {BASE}}}"#)).unwrap().config;
        assert_eq!(a.data_paths, vec!["d/a", "d/b"]);
        assert_eq!(b.data_paths, a.data_paths);
        assert_eq!(a.weighted_loss_mode, "case3");
        assert_eq!(a.lora_rank, 96);
        assert_eq!(a.peft_type.as_deref(), Some("qlora"));
        let c = TrainConfig::from_json_str(&format!(
            r#"{{"data_paths": "[x]", "task_weights": "[1,2.5]", "peft_type": null, {BASE}}}"#
        ))
        .unwrap()
        .config;
        assert_eq!(c.task_weights, Some(vec![1.0, 2.5]));
        assert_eq!(c.peft_type, None);
    }

    #[test]
    fn unknown_fields_suggest_the_nearest_and_cluster_fields_are_noticed() {
        let err = TrainConfig::from_json_str(&format!(r#"{{"data_paths": "[x]", "learning_rat": 1e-4, {BASE}}}"#))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("`learning_rat`") && err.contains("did you mean `learning_rate`"), "{err}");
        let ok =
            TrainConfig::from_json_str(&format!(r#"{{"data_paths": "[x]", "distributed_type": "deepspeed", {BASE}}}"#))
                .unwrap();
        assert_eq!(ok.notices.len(), 1);
        let bad =
            TrainConfig::from_json_str(&format!(r#"{{"data_paths": "[x]", "weighted_loss_mode": "case9", {BASE}}}"#))
                .err()
                .unwrap()
                .to_string();
        assert!(bad.contains("weighted_loss_mode") && bad.contains("case3"), "{bad}");
        let missing = TrainConfig::from_json_str(r#"{"data_paths": "[x]"}"#).err().unwrap().to_string();
        assert!(missing.contains("output_dir"), "{missing}");
    }

    #[test]
    fn warmup_is_steps_or_a_fraction() {
        let mut c = TrainConfig::default();
        assert_eq!(c.warmup_steps(200), 10);
        c.num_warmup_steps = 30.0;
        assert_eq!(c.warmup_steps(200), 30);
    }
}
