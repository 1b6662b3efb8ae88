//! Help that teaches and errors that say what to fix: what `--help` shows, `mftcoder config`, a missing or
//! wrong model, and `--adapter` given a training output or an adapter of another base.
//! (Every flag's description and default, and every subcommand's examples, are checked in `src/main.rs`.)

use mftcoder::io::safetensors::WeightStore;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mftcoder"))
}

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama").join(case)
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn help(sub: &str) -> String {
    let out = run(&[sub, "--help"]);
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn one_line_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

#[test]
fn help_shows_defaults_lists_and_examples() {
    let generate = help("generate");
    for needle in ["one comma-separated list of token ids", "[default: 64]", "[default: 0]", "default: greedy"] {
        assert!(generate.contains(needle), "`{needle}` not in generate --help:\n{generate}");
    }
    assert!(generate.trim_end().lines().last().unwrap().trim_start().starts_with("mftcoder generate"));
    let dpo = help("dpo");
    assert!(dpo.contains("xxpo") && dpo.contains("XXPOTrainArgs") && !dpo.contains("MftTrainArgs"), "{dpo}");
    for sub in ["train", "pretrain", "dpo"] {
        let text = help(sub);
        assert!(text.contains("mftcoder config --explain") && text.contains("mftcoder config --example"), "{sub}");
    }
    let bench = help("bench");
    assert!(
        !bench.contains("gpu.md") && !bench.contains("reference/"),
        "bench cites a file outside the repo:\n{bench}"
    );
    for sub in ["eval", "info", "generate"] {
        let text = help(sub);
        let model: String =
            text.lines().skip_while(|l| !l.trim_start().starts_with("--model <MODEL>")).take(2).collect();
        assert!(model.contains("Hugging Face model directory"), "{sub} --help: --model is not described:\n{text}");
    }
}

#[test]
fn config_explains_every_field_and_prints_ready_examples() {
    let out = run(&["config", "--explain"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for field in mftcoder::config_reference::FIELDS {
        assert!(text.contains(&format!("\n{}  (default: ", field.name)), "`{}` not explained", field.name);
    }
    assert!(text.contains("allowed: lora, qlora, null"), "peft_type's allowed values include null");
    for name in mftcoder::config_examples::EXAMPLE_NAMES {
        let out = run(&["config", "--example", name]);
        assert!(out.status.success(), "{name}");
        let cfg: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(cfg["data_paths"].is_string() && cfg["output_dir"].is_string(), "{name}");
    }
    let out = run(&["config", "--example", "sft"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown example");
    assert!(String::from_utf8_lossy(&out.stderr).contains("lora"));
}

#[test]
fn a_missing_or_wrong_model_names_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("smollm2-135m-instruct");
    let cfg = json!({"data_paths": [dir.path()], "output_dir": dir.path().join("out"),
        "pretrained_model_path": missing, "peft_type": "lora"});
    let path = dir.path().join("config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out = run(&["train", "--config", path.to_str().unwrap()]);
    let want =
        format!("pretrained_model_path: {} does not exist (fetch it with scripts/fetch_smollm2.sh)", missing.display());
    one_line_error(&out, &[&want]);
    assert!(!dir.path().join("out").exists(), "no output for a run that cannot start");

    let not_a_model = fixture("");
    let out = run(&["info", "--model", not_a_model.to_str().unwrap()]);
    one_line_error(&out, &["--model:", "is not a model directory (it has no config.json)"]);
    let out = run(&["generate", "--model", "/nonexistent/m", "--ids", "1", "--max-new-tokens", "1"]);
    one_line_error(&out, &["--model: /nonexistent/m does not exist"]);

    let cfg = json!({"data_paths": [dir.path()], "output_dir": dir.path().join("out"),
        "pretrained_model_path": fixture("gqa_tied"), "peft_type": "null"});
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out = run(&["train", "--config", path.to_str().unwrap()]);
    one_line_error(&out, &["field `peft_type` is \"null\"", "null (full parameters)", "without quotes"]);
}

/// A LoRA run of two steps on `base`, its output directory in `dir`.
fn train_lora(dir: &Path, base: &Path) -> PathBuf {
    let task = dir.join("task");
    std::fs::create_dir_all(&task).unwrap();
    let lines: String =
        (0..20).map(|i| format!("{}\n", json!({"prompt": format!("q{i}"), "answer": format!("a{i}")}))).collect();
    std::fs::write(task.join("train.jsonl"), lines).unwrap();
    let out_dir = dir.join("out");
    let cfg = json!({"data_paths": [task], "output_dir": out_dir, "pretrained_model_path": base, "peft_type": "lora",
        "lora_rank": 4, "seq_length": 32, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
        "max_train_steps": 2, "data_split": "80,20,0", "learning_rate": 1e-2, "num_warmup_steps": 0,
        "early_stopping": false});
    let path = dir.join("config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out = run(&["train", "--config", path.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out_dir
}

fn logits_with_adapter(dir: &Path, model: &Path, adapter: &Path) -> Result<Vec<f32>, Output> {
    let file = dir.join("logits.safetensors");
    let out = run(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--ids",
        "1,5,9",
        "--out",
        file.to_str().unwrap(),
    ]);
    if !out.status.success() {
        return Err(out);
    }
    Ok(WeightStore::open(&file).unwrap().tensor_f32("logits").unwrap().iter().copied().collect())
}

#[test]
fn adapter_takes_a_training_output_and_refuses_another_bases() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("gqa_tied");
    let out_dir = train_lora(dir.path(), &base);
    let direct = logits_with_adapter(dir.path(), &base, &out_dir.join("step_2")).unwrap();
    assert_eq!(logits_with_adapter(dir.path(), &base, &out_dir).unwrap(), direct, "the output dir stands for latest");
    assert_eq!(logits_with_adapter(dir.path(), &base, &out_dir.join("latest")).unwrap(), direct);

    // the adapter names its base (the fixture); another base of another shape is refused, naming a field
    let other = fixture("mqa_headdim_linear");
    let err = logits_with_adapter(dir.path(), &other, &out_dir).unwrap_err();
    one_line_error(&err, &["the adapter was trained on", "but the base given is", "mqa_headdim_linear"]);

    // an adapter whose base is a hub id cannot be compared by name: its shapes are checked against the layers
    let ckpt = out_dir.join("step_2");
    let config_path = ckpt.join("adapter_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["base_model_name_or_path"] = json!("someone/some-model");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let err = logits_with_adapter(dir.path(), &other, &ckpt).unwrap_err();
    one_line_error(&err, &["does not fit the base", "mqa_headdim_linear", "adapter: `model.layers.0"]);

    let err = logits_with_adapter(dir.path(), &base, &fixture("gqa_tied")).unwrap_err();
    one_line_error(&err, &["--adapter:", "is a full model"]);
}
