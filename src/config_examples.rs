//! `mftcoder config`: the reference of every config field (`--explain`), ready configs in MFTCoder's field
//! names (`--example`), and the book's field table (`--markdown`).
//!
//! The examples are MFTCoder's own (`mftcoder_accelerate/src/configs/*_train_config.json`) with their
//! placeholders filled for this repository: the book's model (`.cache/smollm2-135m-instruct`, fetched by
//! `scripts/fetch_smollm2.sh`), the book's three tasks or preference pairs, and `out/<name>/` for the outputs.
//! Every other value is MFTCoder's, sized for a GPU cluster: on a CPU, set `max_train_steps` (dpo: `max_steps`).

use anyhow::Result;
use serde_json::{Value, json};

pub const EXAMPLE_NAMES: [&str; 6] = ["lora", "qlora", "full", "coba", "dpo", "pretrain"];

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  mftcoder config --example lora\n  mftcoder config --explain")]
pub struct ConfigArgs {
    /// Print every field of the train, pretrain and dpo configs: meaning, default, allowed values, and what
    /// this project does with it.
    #[arg(long, required_unless_present_any = ["example", "markdown"], conflicts_with_all = ["example", "markdown"])]
    pub explain: bool,
    /// Print a ready config in MFTCoder's field names (redirect it to a file, then `mftcoder train --config`):
    /// MFTCoder's own example with its placeholders filled (default: none).
    #[arg(long, value_parser = EXAMPLE_NAMES, conflicts_with = "markdown")]
    pub example: Option<String>,
    /// Print the table of every MFTCoder field and what train, pretrain and dpo do with it (the book's page).
    #[arg(long)]
    pub markdown: bool,
}

pub fn run(args: ConfigArgs) -> Result<()> {
    if args.explain {
        print!("{}", crate::config_reference::explain());
    } else if args.markdown {
        print!("{}", crate::config_reference::markdown_table());
    } else if let Some(name) = &args.example {
        println!("{}", serde_json::to_string_pretty(&example(name))?);
        eprintln!(
            "note: MFTCoder's {name} example with its placeholders filled; its sizes are a GPU cluster's — on a CPU \
             set {} (`mftcoder config --explain` describes every field)",
            if name == "dpo" { "max_steps" } else { "max_train_steps" }
        );
    }
    Ok(())
}

const MODEL: &str = ".cache/smollm2-135m-instruct";
const TASKS: &str =
    "[book/examples/own-data/data/docstring,book/examples/own-data/data/py2rust,book/examples/own-data/data/unit_test]";

// ANCHOR: example
/// The config `--example name` prints (`name` is one of [`EXAMPLE_NAMES`]).
pub fn example(name: &str) -> Value {
    let out = format!("out/{name}");
    let placeholders = json!({
        "data_paths": TASKS, "output_dir": out, "tb_dir": format!("{out}/tensorboard"),
        "pretrained_model_path": MODEL, "model_type": "llama",
    });
    // MFTCoder's qlora_train_config.json, its placeholders aside
    let qlora = json!({
        "load_raw_dataset": true, "data_split": "98,2,0", "padding_mode": "padding", "use_dynamic_padding": true,
        "tokenize_mode": "sft", "tokenizer_type": "AutoTokenizer", "weighted_loss_mode": "case3",
        "attn_implementation": "flash_attention_2", "seq_length": 4096, "seed": 1234, "peft_type": "qlora",
        "quantization": "4bit", "lora_rank": 96, "lora_alpha": 32, "lora_dropout": 0.05,
        "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "learning_rate": 5e-5, "min_lr": 5e-6,
        "weight_decay": 0.1, "gradient_accumulation_steps": 1, "lr_scheduler_type": "cosine",
        "num_warmup_steps": 300, "num_train_epochs": 4, "resume_from_checkpoint": null, "log_interval": 10,
        "checkpointing_steps": 100, "evaluation_steps": 100, "max_train_steps": null, "epoch_checkpointing": true,
        "shuffle_before_split": true, "early_stopping": true, "early_stopping_stall_num": 5, "saving_limit": null
    });
    let changes = match name {
        "qlora" => json!({}),
        "lora" => json!({"peft_type": "lora", "quantization": null}),
        // MFTCoder's full-parameter values: no adapters, a lower learning rate, three step checkpoints kept
        "full" => json!({"peft_type": null, "quantization": null, "learning_rate": 1e-5, "min_lr": 1e-6,
            "saving_limit": 3}),
        // coba_train_config.json
        "coba" => json!({"data_split": "95,5,0", "weighted_loss_mode": "coba", "coba_warmup_steps": 100,
            "coba_history_length": 200, "coba_tau": 5, "coba_update_interval": 1, "coba_sample_valid_num": 1,
            "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8}),
        // continued pre-training (MptTrainArgs, which ships no example): `mftcoder tokenize` writes the prefix
        "pretrain" => {
            return merged(
                &placeholders,
                json!({
                    "data_paths": "[out/tokenized/docstring]", "load_raw_dataset": false, "tokenize_mode": "pretrain",
                    "padding_mode": "pack", "data_split": "98,2,0", "seq_length": 4096, "seed": 1234,
                    "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8, "learning_rate": 5e-5,
                    "min_lr": 5e-6, "weight_decay": 0.1, "gradient_accumulation_steps": 1, "lr_scheduler_type": "cosine",
                    "num_warmup_steps": 300, "num_train_epochs": 4, "checkpointing_steps": 100, "evaluation_steps": 100,
                    "epoch_checkpointing": true, "early_stopping": true, "early_stopping_stall_num": 5,
                    "saving_limit": null
                }),
            );
        }
        // dpo_train_config.json
        "dpo" => {
            return merged(
                &placeholders,
                json!({
                    "xxpo": "dpo", "data_paths": "[book/examples/preference/data/pairs.jsonl]", "data_split": "99,1",
                    "attn_implementation": "flash_attention_2", "beta": 0.1, "rpo_alpha": 0.5, "peft_type": "lora",
                    "lora_rank": 64, "lora_alpha": 128, "lora_dropout": 0.0, "per_device_train_batch_size": 1,
                    "per_device_eval_batch_size": 1, "tokenizer_type": "AutoTokenizer", "dataset_num_proc": 1,
                    "learning_rate": 5e-7, "weight_decay": 0.01, "gradient_accumulation_steps": 8,
                    "lr_scheduler_type": "cosine", "warmup_steps": 100, "num_train_epochs": 2, "seed": 1105,
                    "max_prompt_length": 2048, "max_length": 4096, "logging_steps": 20, "save_steps": 500,
                    "eval_steps": 500, "epoch_checkpointing": false, "saving_limit": 5
                }),
            );
        }
        other => unreachable!("clap allows only the example names, not `{other}`"),
    };
    merged(&merged(&placeholders, qlora), changes)
}
// ANCHOR_END: example

/// `base` with `changes`' fields set (a null in `changes` sets null).
fn merged(base: &Value, changes: Value) -> Value {
    let mut out = base.clone();
    for (k, v) in changes.as_object().expect("an object") {
        out[k] = v.clone();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_is_a_valid_config_of_its_command() {
        for name in EXAMPLE_NAMES {
            let text = example(name).to_string();
            if name == "dpo" {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("dpo.json");
                std::fs::write(&path, &text).unwrap();
                let cfg = crate::train::preference::PreferenceConfig::from_file(&path).unwrap();
                assert_eq!((cfg.xxpo.as_str(), cfg.rpo_alpha, cfg.lora_rank), ("dpo", Some(0.5), 64));
                assert!(cfg.notices.iter().any(|n| n.contains("attn_implementation")), "{:?}", cfg.notices);
            } else {
                let loaded = crate::config::TrainConfig::from_json_str(&text).unwrap();
                assert_eq!(loaded.config.model_type.as_deref(), Some("llama"), "{name}");
                assert!(loaded.config.epoch_checkpointing, "{name}: MFTCoder's examples checkpoint every epoch");
            }
        }
        let full = crate::config::TrainConfig::from_json_str(&example("full").to_string()).unwrap().config;
        assert_eq!(full.peft_type, None);
    }
}
