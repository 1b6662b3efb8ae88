//! Every bad value is one line on stderr naming the field (or the tensor, or the file) and what is allowed,
//! exit code 2, no panic or abort, and nothing left behind: a table of config values for `train` and `dpo`,
//! and of broken checkpoints for `forward`.

use mftcoder::io::safetensors::{OwnedTensor, WeightStore, save};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::Scratch;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mftcoder"))
}

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama").join(case)
}

/// Exit code 2, one line, no panic or abort text, every needle present.
fn assert_clean_error(what: &str, out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: expected one line, got: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error") && !err.contains("memory allocation"),
        "{what}: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{what}: `{n}` not in: {err}");
    }
}

/// (JSON fragment merged into a valid config, the words the error must hold)
const TRAIN_CASES: &[(&str, &[&str])] = &[
    (
        r#"{"weighted_loss_mode": "coba", "coba_history_length": 0}"#,
        &["coba_history_length", "allowed: an integer from 1"],
    ),
    (r#"{"coba_update_interval": 0}"#, &["coba_update_interval", "allowed"]),
    (r#"{"coba_tau": 0}"#, &["coba_tau", "allowed"]),
    (r#"{"peft_type": "lora", "lora_dropout": 1.5}"#, &["lora_dropout", "allowed: a number in [0, 1)"]),
    (r#"{"peft_type": "lora", "lora_dropout": -0.1}"#, &["lora_dropout", "allowed"]),
    (r#"{"seq_length": 1e13}"#, &["seq_length", "allowed: an integer from 1 to 1048576"]),
    (r#"{"seq_length": 10000000000000}"#, &["seq_length", "allowed: an integer from 1 to 1048576"]),
    (r#"{"seq_length": -5}"#, &["seq_length", "allowed"]),
    (r#"{"peft_type": "lora", "lora_rank": 1e11}"#, &["lora_rank", "allowed: an integer from 1 to 65536"]),
    (r#"{"peft_type": "lora", "lora_rank": 100000000000}"#, &["lora_rank", "allowed: an integer from 1 to 65536"]),
    (r#"{"peft_type": "lora", "lora_rank": 0}"#, &["lora_rank", "is 0", "allowed"]),
    (r#"{"peft_type": "lora", "lora_alpha": 0}"#, &["lora_alpha", "allowed"]),
    (r#"{"task_weights": [1, -1]}"#, &["task_weights", "-1", "allowed: finite numbers ≥ 0"]),
    (r#"{"task_weights": "[1,-0.5]"}"#, &["task_weights", "-0.5", "allowed"]),
    (r#"{"task_weights": [0, 0]}"#, &["task_weights", "all 0"]),
    (r#"{"learning_rate": 1e39}"#, &["learning_rate", "allowed"]),
    (r#"{"learning_rate": 0}"#, &["learning_rate", "allowed"]),
    (r#"{"learning_rate": "fast"}"#, &["learning_rate", "allowed"]),
    (r#"{"min_lr": -1}"#, &["min_lr", "allowed"]),
    (r#"{"weight_decay": -0.1}"#, &["weight_decay", "allowed"]),
    (r#"{"num_warmup_steps": -3}"#, &["num_warmup_steps", "allowed"]),
    (r#"{"gradient_clipping": -1}"#, &["gradient_clipping", "allowed"]),
    (r#"{"per_device_train_batch_size": 0}"#, &["per_device_train_batch_size", "allowed"]),
    (r#"{"gradient_accumulation_steps": 0}"#, &["gradient_accumulation_steps", "allowed"]),
    (r#"{"num_train_epochs": 0}"#, &["num_train_epochs", "allowed"]),
    (r#"{"max_train_steps": 0}"#, &["max_train_steps", "allowed"]),
    (r#"{"data_split": "a,b"}"#, &["data_split"]),
    // in range, but no machine here has the memory: refused before anything is allocated
    (
        r#"{"seq_length": 1048576, "per_device_train_batch_size": 65536}"#,
        &["seq_length 1048576", "batch 65536", "needs at least", "GiB"],
    ),
];

const DPO_CASES: &[(&str, &[&str])] = &[
    (r#"{"beta": 0}"#, &["beta", "positive"]),
    (r#"{"lora_dropout": 1.5}"#, &["lora_dropout", "allowed"]),
    (r#"{"lora_rank": 0}"#, &["lora_rank", "allowed"]),
    (r#"{"lora_rank": 1e11}"#, &["lora_rank", "allowed"]),
    (r#"{"learning_rate": 1e39}"#, &["learning_rate", "allowed"]),
    (r#"{"rpo_alpha": -1}"#, &["rpo_alpha", "allowed"]),
    (r#"{"max_length": 1e13}"#, &["max_length", "allowed"]),
    (r#"{"max_steps": 0}"#, &["max_steps", "allowed"]),
    (r#"{"warmup_steps": -1}"#, &["warmup_steps", "allowed"]),
    (r#"{"max_grad_norm": -1}"#, &["max_grad_norm", "allowed"]),
    (r#"{"per_device_train_batch_size": 0}"#, &["per_device_train_batch_size", "allowed"]),
];

fn merged(base: serde_json::Value, fragment: &str) -> serde_json::Value {
    let mut cfg = base;
    for (k, v) in serde_json::from_str::<serde_json::Value>(fragment).unwrap().as_object().unwrap() {
        cfg[k] = v.clone();
    }
    cfg
}

#[test]
fn bad_train_config_values_are_one_line_errors_that_leave_nothing_behind() {
    let s = Scratch::new("train");
    for task in ["a", "b"] {
        std::fs::create_dir_all(s.join(task)).unwrap();
        let lines: String =
            (0..20).map(|i| format!("{}\n", serde_json::json!({"prompt": format!("{i}"), "answer": "x"}))).collect();
        std::fs::write(s.join(task).join("t.jsonl"), lines).unwrap();
    }
    let out_dir = s.join("out");
    let base = serde_json::json!({"data_paths": [s.join("a"), s.join("b")], "output_dir": out_dir,
        "pretrained_model_path": fixture("gqa_tied"), "peft_type": null, "seq_length": 32,
        "per_device_train_batch_size": 2, "num_train_epochs": 1, "data_split": "80,20,0", "evaluation_steps": 0});
    for (i, (fragment, needles)) in TRAIN_CASES.iter().enumerate() {
        let path = s.join(format!("cfg-{i}.json"));
        std::fs::write(&path, merged(base.clone(), fragment).to_string()).unwrap();
        for command in ["train", "pretrain"] {
            if command == "pretrain" && fragment.contains("lora") {
                continue; // pretraining has no LoRA
            }
            let out = bin().args([command, "--config", path.to_str().unwrap(), "--quiet"]).output().unwrap();
            assert_clean_error(&format!("{command} {fragment}"), &out, needles);
            assert!(!out_dir.exists(), "{command} {fragment}: left {}", out_dir.display());
        }
    }
}

#[test]
fn bad_dpo_config_values_are_one_line_errors_that_leave_nothing_behind() {
    let s = Scratch::new("dpo");
    let pairs = s.join("pairs.jsonl");
    let pair = serde_json::json!({"chosen": [{"role": "human", "content": "q"}, {"role": "bot", "content": "a"}],
                                  "rejected": [{"role": "human", "content": "q"}, {"role": "bot", "content": "b"}]});
    std::fs::write(&pairs, format!("{pair}\n").repeat(4)).unwrap();
    let out_dir = s.join("out");
    let base = serde_json::json!({"data_paths": [pairs], "output_dir": out_dir, "pretrained_model_path": fixture("gqa_tied"),
        "peft_type": "lora", "lora_rank": 4, "per_device_train_batch_size": 2, "num_train_epochs": 1,
        "max_prompt_length": 16, "max_length": 32});
    for (i, (fragment, needles)) in DPO_CASES.iter().enumerate() {
        let path = s.join(format!("dpo-{i}.json"));
        std::fs::write(&path, merged(base.clone(), fragment).to_string()).unwrap();
        let out = bin().args(["dpo", "--config", path.to_str().unwrap(), "--quiet"]).output().unwrap();
        assert_clean_error(&format!("dpo {fragment}"), &out, needles);
        assert!(!out_dir.exists(), "dpo {fragment}: left {}", out_dir.display());
    }
}

/// A copy of a fixture model whose tensors went through `edit` (the raw bytes of model.safetensors can also
/// be rewritten by `raw`).
fn broken_model(s: &Scratch, name: &str, edit: impl FnOnce(&mut Vec<OwnedTensor>)) -> PathBuf {
    let src = fixture("odd_sizes_bf16_bias");
    let dir = s.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let store = WeightStore::open(&src).unwrap();
    let mut tensors: Vec<OwnedTensor> = store
        .names()
        .map(|n| {
            let t = store.tensor_f32(n).unwrap();
            OwnedTensor::f32(n, t.shape(), &t.iter().copied().collect::<Vec<_>>())
        })
        .collect();
    edit(&mut tensors);
    save(&dir.join("model.safetensors"), &tensors).unwrap();
    dir
}

fn forward(dir: &Path, extra: &[&str]) -> (Output, PathBuf) {
    let out_path = dir.join("logits.safetensors");
    let out = bin()
        .args(["forward", "--model", dir.to_str().unwrap(), "--ids", "1,5,9", "--out", out_path.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    (out, out_path)
}

#[test]
fn broken_checkpoints_are_one_line_errors_naming_the_tensor_or_the_shard() {
    let s = Scratch::new("checkpoints");
    // NaN weights: refused, naming the tensor; loaded with a warning when asked to
    let name = "model.layers.0.mlp.down_proj.weight";
    let dir = broken_model(&s, "nan", |ts| {
        let t = ts.iter_mut().find(|t| t.name == name).unwrap();
        t.bytes[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let (out, out_path) = forward(&dir, &[]);
    assert_clean_error("NaN weights", &out, &[name, "non-finite", "--allow-non-finite-weights"]);
    assert!(!out_path.exists());
    let (out, _) = forward(&dir, &["--allow-non-finite-weights"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("warning") && err.contains(name), "{err}");

    // a tensor listed twice in the header: rewrite the second name of the header into the first
    let dir = broken_model(&s, "dup", |_| {});
    let mut bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    // two names of one length, so the header keeps its size and the offsets stay valid
    let (a, b) = ("model.layers.0.mlp.up_proj.weight".to_string(), "model.layers.1.mlp.up_proj.weight".to_string());
    assert!(header.get(&a).is_some() && header.get(&b).is_some());
    let text =
        String::from_utf8(bytes[8..8 + n].to_vec()).unwrap().replacen(&format!("\"{b}\""), &format!("\"{a}\""), 1);
    bytes[8..8 + n].copy_from_slice(text.as_bytes());
    std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
    let (out, _) = forward(&dir, &[]);
    assert_clean_error("duplicate header key", &out, &[&format!("tensor `{a}` is listed twice")]);

    // a shard outside the model directory: refused before it is opened
    let dir = s.join("escape");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "generation_config.json", "tokenizer.json"] {
        std::fs::copy(fixture("odd_sizes_bf16_bias").join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(fixture("odd_sizes_bf16_bias").join("model.safetensors"), s.join("outside.safetensors")).unwrap();
    let store = WeightStore::open(&s.join("outside.safetensors")).unwrap();
    let map: serde_json::Map<String, serde_json::Value> =
        store.names().map(|n| (n.to_string(), "../outside.safetensors".into())).collect();
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::json!({"weight_map": map}).to_string())
        .unwrap();
    let (out, _) = forward(&dir, &[]);
    assert_clean_error("shard outside", &out, &["shard `../outside.safetensors` is outside the model directory"]);
}

/// (config.json field, bad value, the words the error must hold): each refused by `forward` and `info` before
/// anything is allocated from it.
const MODEL_CONFIG_CASES: &[(&str, &str, &[&str])] = &[
    ("num_hidden_layers", "1e12", &["num_hidden_layers", "non-negative integer"]),
    ("num_hidden_layers", "1000000000000", &["num_hidden_layers", "allowed: 1 to 1024"]),
    ("num_hidden_layers", "0", &["num_hidden_layers", "allowed: 1 to 1024"]),
    ("hidden_size", "0", &["hidden_size", "allowed"]),
    ("vocab_size", "1099511627776", &["vocab_size", "allowed"]),
    ("rms_norm_eps", "-1e-6", &["rms_norm_eps", "positive"]),
    ("rope_theta", "-10000", &["rope_theta", "positive"]),
    ("eos_token_id", "4294967298", &["eos_token_id", "below 2³²"]),
];

#[test]
fn bad_model_config_values_are_one_line_errors_that_leave_nothing_behind() {
    let s = Scratch::new("model-config");
    for (i, (field, value, needles)) in MODEL_CONFIG_CASES.iter().enumerate() {
        let dir = broken_model(&s, &format!("cfg{i}"), |_| {});
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        config[*field] = serde_json::from_str(value).unwrap();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let (out, out_path) = forward(&dir, &[]);
        assert_clean_error(&format!("{field}: {value}"), &out, needles);
        assert!(!out_path.exists(), "{field}: output left behind");
        let info = bin().args(["info", "--model", dir.to_str().unwrap()]).output().unwrap();
        assert_clean_error(&format!("info {field}: {value}"), &info, needles);
    }
}
