//! MFTCoder's config fields that used to be accepted and silently ignored: `epoch_checkpointing` writes
//! `epoch_N`, dpo's `data_split` rounds the validation share up as datasets does and dpo says which fields have
//! no effect, `model_type` is checked against the checkpoint, full fine-tunes keep the chat template, and
//! `mftcoder config --example` prints configs that run.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mftcoder"))
}

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama/gqa_tied")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_tasks(dir: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for (task, n) in [("add", 24), ("reverse", 16)] {
        let d = dir.join(task);
        std::fs::create_dir_all(&d).unwrap();
        let lines: String = (0..n)
            .map(|i| format!("{}\n", json!({"prompt": format!("{task} {i}"), "answer": format!("{}", i * 7 % 10)})))
            .collect();
        std::fs::write(d.join("train.jsonl"), lines).unwrap();
        paths.push(d);
    }
    paths
}

/// A small full-parameter config on the fixture model, with `extra` fields set.
fn train_config(dir: &Path, model: &Path, extra: Value) -> PathBuf {
    let mut cfg = json!({
        "data_paths": write_tasks(dir), "output_dir": dir.join("out"), "pretrained_model_path": model,
        "peft_type": null, "seq_length": 32, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
        "learning_rate": 1e-3, "num_train_epochs": 2, "data_split": "80,20,0", "checkpointing_steps": 100,
        "evaluation_steps": 100, "num_warmup_steps": 0, "early_stopping": false
    });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let path = dir.join("config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn one_line_error(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

#[test]
fn epoch_checkpointing_writes_an_epoch_directory_after_each_epoch() {
    let dir = tempfile::tempdir().unwrap();
    // 32 training samples in batches of 8: 4 steps per epoch, 2 epochs; one checkpoint per epoch, none per step
    let cfg = train_config(dir.path(), &fixture_model(), json!({"epoch_checkpointing": true}));
    let out = run(&["train", "--config", cfg.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out_dir = dir.path().join("out");
    for (e, step) in [(1, 4), (2, 8)] {
        let state: Value = serde_json::from_str(
            &std::fs::read_to_string(out_dir.join(format!("epoch_{e}/trainer_state.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(state["state"]["completed_steps"], step, "epoch_{e} holds the state at the end of epoch {e}");
        assert!(out_dir.join(format!("epoch_{e}/model.safetensors")).is_file());
    }
    assert!(!out_dir.join("epoch_3").exists());
    let latest: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("latest")).unwrap()).unwrap();
    assert!(latest["latest_ckpt"].as_str().unwrap().ends_with("epoch_2"), "{latest}");

    // without the field: no epoch directories
    let dir = tempfile::tempdir().unwrap();
    let cfg = train_config(dir.path(), &fixture_model(), json!({"epoch_checkpointing": false}));
    assert!(run(&["train", "--config", cfg.to_str().unwrap(), "--quiet"]).status.success());
    assert!(!dir.path().join("out/epoch_1").exists());
}

#[test]
fn a_model_type_of_another_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = train_config(dir.path(), &fixture_model(), json!({"model_type": "starcoder"}));
    let out = run(&["train", "--config", cfg.to_str().unwrap(), "--quiet"]);
    one_line_error(&out, &["field `model_type` is \"starcoder\"", "is a `llama` model", "set model_type to llama"]);
    assert!(!dir.path().join("out").exists(), "refused before anything is written");
    let cfg = train_config(dir.path(), &fixture_model(), json!({"model_type": "code_llama", "max_train_steps": 1}));
    let out = run(&["train", "--config", cfg.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_full_fine_tune_keeps_the_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(fixture_model()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "golden.safetensors" {
            std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
        }
    }
    // the template as transformers 5 saves it, and in tokenizer_config.json as older versions do
    let jinja = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}";
    std::fs::write(model.join("chat_template.jinja"), jinja).unwrap();
    let mut tokenizer_config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("tokenizer_config.json")).unwrap()).unwrap();
    tokenizer_config["chat_template"] = json!(jinja);
    std::fs::write(model.join("tokenizer_config.json"), tokenizer_config.to_string()).unwrap();
    let cfg = train_config(dir.path(), &model, json!({"max_train_steps": 1}));
    let out = run(&["train", "--config", cfg.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ckpt = dir.path().join("out/step_1");
    assert_eq!(std::fs::read_to_string(ckpt.join("chat_template.jinja")).unwrap(), jinja);
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(saved["chat_template"], jinja);
}

/// 40 {"chosen", "rejected"} pairs.
fn write_pairs(dir: &Path) -> PathBuf {
    let lines: String = (0..40)
        .map(|i| {
            let q = json!({"role": "human", "content": format!("add {i} and 2")});
            let chosen = json!([q, {"role": "bot", "content": format!("{}", i + 2)}]);
            let rejected = json!([q, {"role": "bot", "content": format!("{}", i + 3)}]);
            format!("{}\n", json!({"chosen": chosen, "rejected": rejected}))
        })
        .collect();
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

#[test]
fn dpo_validates_on_the_rounded_up_share_and_names_the_fields_it_ignores() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({
        "data_paths": [write_pairs(dir.path())], "output_dir": dir.path().join("out"),
        "pretrained_model_path": fixture_model(), "model_type": "llama", "data_split": "99,1",
        "peft_type": "lora", "lora_rank": 4, "per_device_train_batch_size": 13, "per_device_eval_batch_size": 1,
        "num_train_epochs": 1, "max_prompt_length": 16, "max_length": 32, "eval_steps": 1, "save_steps": 0,
        "attn_implementation": "flash_attention_2", "min_lr": 5e-6, "tokenizer_type": "AutoTokenizer",
        "tb_dir": dir.path().join("tb")
    });
    let path = dir.path().join("dpo.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out = run(&["dpo", "--config", path.to_str().unwrap(), "--quiet"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // MFTCoder's train_test_split(test_size=0.01) of 40 pairs: 39 / 1 (datasets takes the ceiling)
    assert!(err.contains("39 training pairs, 1 validation pairs"), "{err}");
    for field in ["attn_implementation", "min_lr", "tokenizer_type"] {
        assert!(err.contains(&format!("note: `{field}` has no effect here")), "{field}: {err}");
    }
    assert!(!err.contains("`tb_dir` has no effect"), "tb_dir is honoured: {err}");
    let metrics = std::fs::read_to_string(dir.path().join("out/metrics.jsonl")).unwrap();
    let evals = metrics.lines().filter(|l| l.contains("eval_loss")).count();
    assert_eq!(evals, 4, "step 0 and each of the 3 steps (eval_steps 1) validate:\n{metrics}");
    let tb_files = std::fs::read_dir(dir.path().join("tb")).unwrap().count();
    assert_eq!(tb_files, 1, "dpo writes its events into tb_dir");
}

#[test]
fn mftcoders_example_configs_run_with_their_placeholders_filled() {
    for name in ["lora", "dpo"] {
        let out = run(&["config", "--example", name]);
        assert!(out.status.success(), "{}", stderr(&out));
        let mut cfg: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(cfg["pretrained_model_path"], ".cache/smollm2-135m-instruct");
        assert_eq!(cfg["model_type"], "llama");
        // the book's model and MFTCoder's sizes are too big for a test: the fixture model, two steps
        let dir = tempfile::tempdir().unwrap();
        cfg["pretrained_model_path"] = json!(fixture_model());
        cfg["output_dir"] = json!(dir.path().join("out"));
        cfg["tb_dir"] = json!(dir.path().join("tb"));
        let command = if name == "dpo" {
            cfg["data_paths"] = json!([write_pairs(dir.path())]);
            cfg["max_steps"] = json!(1);
            cfg["max_prompt_length"] = json!(16);
            cfg["max_length"] = json!(32);
            cfg["gradient_accumulation_steps"] = json!(2);
            "dpo"
        } else {
            cfg["data_paths"] = json!(write_tasks(dir.path()));
            cfg["max_train_steps"] = json!(2);
            cfg["seq_length"] = json!(32);
            "train"
        };
        let path = dir.path().join("config.json");
        std::fs::write(&path, cfg.to_string()).unwrap();
        let out = run(&[command, "--config", path.to_str().unwrap(), "--quiet"]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert!(dir.path().join("tb").is_dir(), "{name}: the example's tb_dir gets the events");
    }
}
