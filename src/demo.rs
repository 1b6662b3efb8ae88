//! `mftcoder demo`: the whole mission on a fresh machine, with nothing downloaded, in a few minutes on two
//! cores. A small code model is pre-trained here on a corpus this program writes, then fine-tuned with LoRA on
//! three code tasks at once with CoBa balancing them, merged, and asked one question per task.

use crate::backend::cpu::Cpu;
use crate::config::TrainConfig;
use crate::data::offline::tokenize_to_bin;
use crate::infer::{chat_template, generate};
use crate::io::tokenizer::Tokenizer;
use crate::io::write_atomic;
use crate::models::decoder::{Decoder, DecoderConfig};
use crate::peft::merge::merge_into_directory;
use crate::train::checkpoint::model_tensors;
use crate::train::plots;
use crate::train::trainer::{self, RunOptions};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The byte-level BPE the project trains itself (fixtures/tokenizer), embedded so the demo needs no file.
const TOKENIZER_JSON: &str = include_str!("../fixtures/tokenizer/tokenizer.json");
const TOKENIZER_CONFIG_JSON: &str = include_str!("../fixtures/tokenizer/tokenizer_config.json");

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  mftcoder demo\n  mftcoder demo --out /tmp/mftcoder-demo")]
pub struct DemoArgs {
    /// Where everything goes (created; must not hold an earlier demo).
    #[arg(long, default_value = "demo-output")]
    pub out: PathBuf,
}

// ANCHOR: demo_tasks
/// The three tasks: (name, prompt, answer) for an operation `op` ∈ {add, sub, mul} and a number n.
fn task_example(task: usize, op: &str, n: usize) -> (String, String) {
    let (verb, sym, apply): (&str, &str, fn(i64, i64) -> i64) = match op {
        "add" => ("adds", "+", |x, n| x + n),
        "sub" => ("subtracts", "-", |x, n| x - n),
        _ => ("multiplies x by", "*", |x, n| x * n),
    };
    let name = format!("{op}_{n}");
    let body = format!("def {name}(x):\n    return x {sym} {n}");
    match task {
        0 => {
            (format!("Write a Python function {name} that {verb} {n}{}.", if op == "mul" { "" } else { " to x" }), body)
        }
        1 => (format!("Explain this code:\n{body}"), format!("{name} returns x {sym} {n}.")),
        _ => (format!("Write a unit test for {name}."), format!("assert {name}(2) == {}", apply(2, n as i64))),
    }
}

const TASKS: [&str; 3] = ["write_function", "explain_code", "unit_test"];
// ANCHOR_END: demo_tasks

fn write_jsonl(path: &Path, lines: &[serde_json::Value]) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("a file path"))?;
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    write_atomic(path, body.as_bytes())
}

pub fn run(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let out = &args.out;
    if out.join("finetune").exists() {
        anyhow::bail!("{}: holds an earlier demo; remove it or pass --out NEW_DIR", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let cpu = Cpu;

    // 1. a fresh small Llama with the project's tokenizer
    let base = out.join("base");
    std::fs::create_dir_all(&base)?;
    write_atomic(&base.join("tokenizer.json"), TOKENIZER_JSON.as_bytes())?;
    write_atomic(&base.join("tokenizer_config.json"), TOKENIZER_CONFIG_JSON.as_bytes())?;
    let tokenizer = Tokenizer::load(&base)?;
    let mut config = DecoderConfig::with_shape(tokenizer.vocab_size(), 192, 512, 4, 6, 2);
    config.tie_word_embeddings = true;
    let mut model = Decoder::random(&cpu, config.clone(), 2024);
    let hf_config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads, "head_dim": config.head_dim, "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps, "rope_theta": config.rope().expect("rotary").theta, "tie_word_embeddings": true,
        "max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "float32"
    });
    write_atomic(&base.join("config.json"), serde_json::to_string_pretty(&hf_config)?.as_bytes())?;
    write_atomic(&base.join("generation_config.json"), br#"{"bos_token_id": 1, "eos_token_id": 2}"#)?;
    crate::io::safetensors::save(&base.join("model.safetensors"), &model_tensors(&cpu, &mut model))?;
    println!(
        "[1/5] a {:.1} M-parameter Llama with a {}-token BPE in {}",
        param_count(&config) as f64 / 1e6,
        config.vocab_size,
        base.display()
    );

    // 2. continued pre-training on generated Python, through the offline tokenizer and .bin/.idx shards
    let mut corpus = Vec::new();
    for n in 0..100 {
        for op in ["add", "sub", "mul"] {
            for task in 0..3 {
                let (prompt, answer) = task_example(task, op, n);
                corpus.push(serde_json::json!({"text": format!("{prompt}\n{answer}\n")}));
            }
        }
    }
    write_jsonl(&out.join("corpus/code.jsonl"), &corpus)?;
    let prefix = out.join("corpus/code");
    tokenize_to_bin(&tokenizer, &out.join("corpus/code.jsonl"), &prefix, false, false)?;
    let pretrain_cfg = config_from_json(serde_json::json!({
        "data_paths": [prefix], "output_dir": out.join("pretrain"), "pretrained_model_path": base, "peft_type": null,
        "load_raw_dataset": false, "tokenize_mode": "pretrain", "seq_length": 128, "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8, "learning_rate": 3e-3, "min_lr": 3e-4, "max_train_steps": 250,
        "num_train_epochs": 100, "num_warmup_steps": 20, "data_split": "95,5,0", "evaluation_steps": 0,
        "checkpointing_steps": 100000, "weight_decay": 0.01
    }))?;
    let report = trainer::train(&cpu, &pretrain_cfg, RunOptions::default())?;
    let pretrained = report.final_checkpoint;
    println!(
        "[2/5] pre-trained {} steps (loss {:.3}) → {}",
        report.completed_steps,
        report.last_train_loss.unwrap_or(f64::NAN),
        pretrained.display()
    );

    // 3. three code tasks, one directory each
    let mut paths = Vec::new();
    for (task, name) in TASKS.iter().enumerate() {
        let mut records = Vec::new();
        for n in 0..100 {
            for op in ["add", "sub", "mul"] {
                let (prompt, answer) = task_example(task, op, n);
                records.push(serde_json::json!({"prompt": prompt, "answer": answer}));
            }
        }
        let path = out.join("tasks").join(name);
        write_jsonl(&path.join("train.jsonl"), &records)?;
        paths.push(path);
    }

    // ANCHOR: demo_finetune
    // 4. multi-task LoRA fine-tune with CoBa
    let finetune_cfg = config_from_json(serde_json::json!({
        "data_paths": paths, "output_dir": out.join("finetune"), "pretrained_model_path": pretrained,
        "peft_type": "lora", "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.05, "weighted_loss_mode": "coba",
        "coba_warmup_steps": 20, "coba_history_length": 30, "coba_tau": 5, "coba_update_interval": 1,
        "seq_length": 96, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8, "learning_rate": 5e-3,
        "min_lr": 5e-4, "max_train_steps": 200, "num_train_epochs": 100, "num_warmup_steps": 10, "data_split": "90,10,0",
        "evaluation_steps": 25, "checkpointing_steps": 50, "saving_limit": 2, "early_stopping": false
    }))?;
    let report = trainer::train(&cpu, &finetune_cfg, RunOptions::default())?;
    let (first, last) =
        (report.evaluations.first().context("no evaluation ran")?, report.evaluations.last().expect("non-empty"));
    println!(
        "[3/5] LoRA + CoBa fine-tune: {} steps; validation loss per task (step {} → step {}):",
        report.completed_steps, first.step, last.step
    );
    for ((name, a), (_, b)) in first.task_loss.iter().zip(&last.task_loss) {
        println!("        {name:<16} {:.3} → {:.3}", a.unwrap_or(f64::NAN), b.unwrap_or(f64::NAN));
    }
    // ANCHOR_END: demo_finetune

    // 5. merge, then one answer per task from the merged model
    let merged = out.join("merged");
    let _ = std::fs::remove_dir_all(&merged);
    let n = merge_into_directory(&pretrained, &report.final_checkpoint, &merged, 5_000_000_000)?;
    println!("[4/5] merged {n} adapted matrices → {}", merged.display());
    let model = crate::models::load_causal_lm(&cpu, &merged)?.for_decoding(&cpu);
    let tokenizer = Tokenizer::load(&merged)?;
    println!("[5/5] answers of the merged model (greedy, MFTCoder chat template):");
    for (task, name) in TASKS.iter().enumerate() {
        let (prompt, expected) = task_example(task, "add", 42);
        let ids = tokenizer.encode(&chat_template::single_turn_prompt(&prompt), false)?;
        let generated = generate::generate(&model, &cpu, &ids, 40, &generate::Decoding::Greedy, &[2])?;
        let answer = tokenizer.decode(&generated, true)?;
        println!(
            "  [{name}] {}\n    → {}\n    (reference: {})",
            prompt.replace('\n', "\n      "),
            answer.trim_end().replace('\n', "\n      "),
            expected.replace('\n', "\\n")
        );
    }
    let finetune = out.join("finetune");
    let plots: Vec<String> = [plots::LOSS_PNG, plots::WEIGHTS_PNG, plots::LR_PNG]
        .iter()
        .map(|name| finetune.join(name))
        .filter(|path| path.is_file())
        .map(|path| path.display().to_string())
        .collect();
    println!("done in {:.0} s.", started.elapsed().as_secs_f64());
    println!("  adapter:      {}", report.final_checkpoint.join("adapter_model.safetensors").display());
    println!("  plots:        {}", plots.join("\n                "));
    println!("  metrics:      {}", finetune.join("metrics.jsonl").display());
    println!("  merged model: {}", merged.display());
    Ok(())
}

fn config_from_json(value: serde_json::Value) -> Result<TrainConfig> {
    Ok(TrainConfig::from_json_str(&value.to_string())?.config)
}

fn param_count(c: &DecoderConfig) -> usize {
    let per_layer = c.hidden_size * (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
        + c.num_attention_heads * c.head_dim * c.hidden_size
        + 3 * c.hidden_size * c.intermediate_size
        + 2 * c.hidden_size;
    c.vocab_size * c.hidden_size + c.num_hidden_layers * per_layer + c.hidden_size
}
