//! `mftcoder dpo`'s configuration: MFTCoder's `XXPOTrainArgs` (reference §7.3), field for field.

use crate::config::{check_int, check_real};
use crate::config_reference::Command;
use crate::loss::preference::Objective;
use crate::peft::LoraConfig;
use crate::train::trainer::lora_settings;
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// `XXPOTrainArgs`: MFTCoder's field names and defaults. Fields MFTCoder accepts but never uses (or that only
/// matter on a cluster) are accepted and have no effect; an unknown field is an error with a suggestion.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct PreferenceConfig {
    #[serde(deserialize_with = "crate::config::string_list")]
    pub data_paths: Vec<String>,
    pub output_dir: PathBuf,
    pub pretrained_model_path: PathBuf,
    /// "dpo" (with `rpo_alpha`: RPO) or "orpo".
    pub xxpo: String,
    pub beta: f64,
    pub rpo_alpha: Option<f64>,
    /// "lora" | "qlora" | null (full parameters)
    pub peft_type: Option<String>,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Option<Value>,
    pub data_split: String,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub learning_rate: f64,
    /// MFTCoder never passes it to TRL (whose default is 0); honoured here when set.
    pub weight_decay: f64,
    pub lr_scheduler_type: String,
    /// A number of optimizer steps (MFTCoder's default 0.05 is passed to TRL as a step count: no warm-up).
    pub warmup_steps: f64,
    pub num_train_epochs: usize,
    /// −1: `num_train_epochs` decides.
    pub max_steps: i64,
    pub seed: u64,
    pub logging_steps: usize,
    pub save_steps: usize,
    pub eval_steps: usize,
    pub saving_limit: Option<usize>,
    pub max_prompt_length: usize,
    pub max_length: usize,
    pub max_grad_norm: f64,
    pub device: String,
    pub precision: String,
    /// TensorBoard event files (the HF Trainer's tags), as MFTCoder's `logging_dir=tb_dir`.
    pub tb_dir: Option<PathBuf>,
    /// Checked against the checkpoint's config.json (`crate::io::model_dir::check_model_type`).
    pub model_type: Option<String>,
    /// One line per field the config sets that has no effect here (`config_reference`), for the user.
    #[serde(skip)]
    pub notices: Vec<String>,
    // accepted, not used (MFTCoder ignores them too, or they configure its cluster launch)
    pub quantization: Option<Value>,
    pub tokenizer_type: Option<Value>,
    pub min_lr: Option<Value>,
    pub optimizer_type: Option<Value>,
    pub gradient_checkpointing: Option<Value>,
    pub gradient_checkpointing_use_reentrant: Option<Value>,
    pub seq_length: Option<Value>,
    pub save_only_model: Option<Value>,
    pub resume_from_checkpoint: Option<Value>,
    pub auto_resume: Option<Value>,
    pub epoch_checkpointing: Option<Value>,
    pub shuffle_before_split: Option<Value>,
    pub early_stopping: Option<Value>,
    pub early_stopping_stall_num: Option<Value>,
    pub attn_implementation: Option<Value>,
    pub chat_template: Option<Value>,
    pub distributed_type: Option<Value>,
    pub init_timeout_seconds: Option<Value>,
    pub dataset_num_proc: Option<Value>,
    pub dtype: Option<Value>,
    pub disable_tqdm: Option<Value>,
    pub sanity_check: Option<Value>,
    pub ignore_bias_buffers: Option<Value>,
}

impl Default for PreferenceConfig {
    fn default() -> Self {
        PreferenceConfig {
            data_paths: Vec::new(),
            output_dir: PathBuf::new(),
            pretrained_model_path: PathBuf::new(),
            xxpo: "dpo".into(),
            beta: 0.1,
            rpo_alpha: None,
            peft_type: Some("qlora".into()),
            lora_rank: 96,
            lora_alpha: 32.0,
            lora_dropout: 0.05,
            target_modules: None,
            data_split: "98,2,0".into(),
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            learning_rate: 5e-5,
            weight_decay: 0.0,
            lr_scheduler_type: "cosine".into(),
            warmup_steps: 0.05,
            num_train_epochs: 4,
            max_steps: -1,
            seed: 1234,
            logging_steps: 10,
            save_steps: 100,
            eval_steps: 100,
            saving_limit: None,
            max_prompt_length: 2048,
            max_length: 4096,
            max_grad_norm: 1.0,
            device: "cpu".into(),
            precision: "f32".into(),
            tb_dir: None,
            model_type: None,
            notices: Vec::new(),
            quantization: None,
            tokenizer_type: None,
            min_lr: None,
            optimizer_type: None,
            gradient_checkpointing: None,
            gradient_checkpointing_use_reentrant: None,
            seq_length: None,
            save_only_model: None,
            resume_from_checkpoint: None,
            auto_resume: None,
            epoch_checkpointing: None,
            shuffle_before_split: None,
            early_stopping: None,
            early_stopping_stall_num: None,
            attn_implementation: None,
            chat_template: None,
            distributed_type: None,
            init_timeout_seconds: None,
            dataset_num_proc: None,
            dtype: None,
            disable_tqdm: None,
            sanity_check: None,
            ignore_bias_buffers: None,
        }
    }
}

impl PreferenceConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}:{}:{}: not valid JSON ({e})", path.display(), e.line(), e.column()))?;
        let Value::Object(map) = value else { bail!("{}: a config must be a JSON object", path.display()) };
        let known = serde_json::to_value(PreferenceConfig::default())?;
        let known: Vec<&str> = known.as_object().expect("a struct").keys().map(String::as_str).collect();
        if let Some(key) = map.keys().find(|k| !known.contains(&k.as_str())) {
            let suggestion = crate::config::nearest(key, known.iter().copied()).unwrap_or("data_paths");
            bail!("{}: unknown field `{key}` (did you mean `{suggestion}`?)", path.display());
        }
        let notices = map.keys().filter_map(|k| crate::config_reference::notice(Command::Dpo, k)).collect();
        let mut cfg: PreferenceConfig =
            crate::config::from_fields(map).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        cfg.validate().with_context(|| path.display().to_string())?;
        cfg.notices = notices;
        Ok(cfg)
    }

    /// Every field in its allowed range (the ranges `train` uses for the fields both have).
    fn validate(&self) -> Result<()> {
        self.objective()?;
        self.lora()?;
        if self.data_paths.is_empty() {
            bail!("field `data_paths` is empty");
        }
        for (field, v) in [
            ("per_device_train_batch_size", self.per_device_train_batch_size),
            ("per_device_eval_batch_size", self.per_device_eval_batch_size),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps),
            ("num_train_epochs", self.num_train_epochs),
            ("lora_rank", self.lora_rank),
            ("max_prompt_length", self.max_prompt_length),
            ("max_length", self.max_length),
        ] {
            check_int(field, v)?;
        }
        for (field, v) in [
            ("learning_rate", self.learning_rate),
            ("weight_decay", self.weight_decay),
            ("warmup_steps", self.warmup_steps),
            ("lora_alpha", self.lora_alpha),
            ("lora_dropout", self.lora_dropout),
            ("beta", self.beta),
            ("rpo_alpha", self.rpo_alpha.unwrap_or(0.0)),
            ("max_grad_norm", self.max_grad_norm),
        ] {
            check_real(field, v)?;
        }
        if self.max_steps == 0 || self.max_steps < -1 || self.max_steps > 1 << 40 {
            bail!(
                "field `max_steps` is {}; allowed: -1 (num_train_epochs decides) or an integer from 1 to {}",
                self.max_steps,
                1u64 << 40
            );
        }
        if self.max_length <= self.max_prompt_length {
            bail!(
                "field `max_length` must exceed `max_prompt_length` ({} ≤ {})",
                self.max_length,
                self.max_prompt_length
            );
        }
        self.data_split
            .split(',')
            .try_for_each(|s| s.trim().parse::<f64>().map(drop))
            .map_err(|_| anyhow!("field `data_split` must be comma-separated numbers, got `{}`", self.data_split))?;
        Ok(())
    }

    pub fn objective(&self) -> Result<Objective> {
        if !(self.beta > 0.0) {
            bail!("field `beta` must be positive, got {}", self.beta);
        }
        match self.xxpo.as_str() {
            "dpo" => Ok(Objective::Dpo { beta: self.beta, rpo_alpha: self.rpo_alpha.filter(|&a| a != 0.0) }),
            // MFTCoder passes rpo_alpha to ORPOConfig too, which has no such field; ORPO's NLL weight is 1
            "orpo" => Ok(Objective::Orpo { beta: self.beta }),
            other => bail!("field `xxpo` is `{other}`; allowed: \"dpo\", \"orpo\""),
        }
    }

    pub fn lora(&self) -> Result<Option<LoraConfig>> {
        lora_settings(
            self.peft_type.as_deref(),
            self.lora_rank,
            self.lora_alpha,
            self.lora_dropout,
            self.target_modules.as_ref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Result<PreferenceConfig> {
        let path = std::env::temp_dir().join(format!("mftcoder-xxpo-{}-{}.json", std::process::id(), json.len()));
        std::fs::write(&path, json).unwrap();
        let result = PreferenceConfig::from_file(&path);
        std::fs::remove_file(&path).unwrap();
        result
    }

    const BASE: &str = r#""data_paths": "[a.jsonl,b.jsonl]", "output_dir": "o", "pretrained_model_path": "m""#;

    #[test]
    fn defaults_are_xxpo_train_args_and_objectives_parse() {
        let c = config(&format!("{{{BASE}}}")).unwrap();
        assert_eq!(c.data_paths, vec!["a.jsonl", "b.jsonl"], "the legacy bracket string");
        assert_eq!((c.xxpo.as_str(), c.beta, c.peft_type.as_deref(), c.lora_rank), ("dpo", 0.1, Some("qlora"), 96));
        assert_eq!(c.objective().unwrap(), Objective::Dpo { beta: 0.1, rpo_alpha: None });
        let c = config(&format!(r#"{{{BASE}, "rpo_alpha": 0.5, "min_lr": 1e-6, "sanity_check": true}}"#)).unwrap();
        assert_eq!(c.objective().unwrap(), Objective::Dpo { beta: 0.1, rpo_alpha: Some(0.5) });
        let c = config(&format!(r#"{{{BASE}, "xxpo": "orpo", "rpo_alpha": 0.5}}"#)).unwrap();
        assert_eq!(c.objective().unwrap(), Objective::Orpo { beta: 0.1 });
    }

    #[test]
    fn bad_fields_are_named() {
        let err = config(&format!(r#"{{{BASE}, "rpo_alpa": 0.5}}"#)).unwrap_err().to_string();
        assert!(err.contains("unknown field `rpo_alpa` (did you mean `rpo_alpha`?)"), "{err}");
        let err = config(&format!(r#"{{{BASE}, "xxpo": "kto"}}"#)).unwrap_err();
        assert!(format!("{err:#}").contains("field `xxpo` is `kto`"), "{err:#}");
        let err = config(&format!(r#"{{{BASE}, "max_length": 10, "max_prompt_length": 10}}"#)).unwrap_err();
        assert!(format!("{err:#}").contains("`max_length` must exceed `max_prompt_length`"), "{err:#}");
    }
}
