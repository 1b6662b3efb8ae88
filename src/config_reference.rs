//! Every field of MFTCoder's training configs, in one table: what it means, the values it takes, and what
//! this project does with it — the same as MFTCoder, honoured with a stated difference, accepted with no
//! effect (a notice at run time says so), or a field of our own. `mftcoder config --explain` prints it with the
//! defaults read from the config types themselves, the unknown-field checks and the run-time notices come from
//! it, and the book's *Config fields* page is checked against it (`config_reference_page_matches_the_code`).

use crate::config::TrainConfig;
use crate::train::preference::PreferenceConfig;
use serde_json::Value;
use std::fmt::Write;

/// What happens to a field.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Handling {
    /// Honoured as MFTCoder honours it.
    Same,
    /// Honoured; how it differs from MFTCoder.
    Differs(&'static str),
    /// Accepted so MFTCoder's configs run unchanged, with no effect here (a notice says why).
    NoEffect(&'static str),
    /// Not an MFTCoder field: ours.
    Ours,
}

/// One config field. `train` covers `train` and `pretrain` (`MftTrainArgs`, `MptTrainArgs`); `dpo` is
/// `XXPOTrainArgs`; `None` means the command has no such field.
pub struct Field {
    pub name: &'static str,
    pub meaning: &'static str,
    /// The values it takes ("" where the meaning says it).
    pub allowed: &'static str,
    pub train: Option<Handling>,
    pub dpo: Option<Handling>,
}

use Handling::*;

const fn both(name: &'static str, meaning: &'static str, allowed: &'static str, h: Handling) -> Field {
    Field { name, meaning, allowed, train: Some(h), dpo: Some(h) }
}
const fn train(name: &'static str, meaning: &'static str, allowed: &'static str, h: Handling) -> Field {
    Field { name, meaning, allowed, train: Some(h), dpo: None }
}
const fn dpo(name: &'static str, meaning: &'static str, allowed: &'static str, h: Handling) -> Field {
    Field { name, meaning, allowed, train: None, dpo: Some(h) }
}

const CLUSTER: Handling = NoEffect("it only matters on a multi-GPU cluster");
const UNUSED: Handling = NoEffect("MFTCoder reads it nowhere either");

// ANCHOR: fields
pub const FIELDS: &[Field] = &[
    // ---- what to train on, where to write ----
    both(
        "data_paths",
        "One task per path: a jsonl file or a directory searched for *.jsonl (dpo: the pairs' files, concatenated). Required.",
        "\"[a,b]\" or [\"a\", \"b\"]",
        Same,
    ),
    both("output_dir", "Checkpoints, `latest`, metrics.jsonl and the loss plots. Required.", "a directory", Same),
    both(
        "tb_dir",
        "TensorBoard event files: total and per-task loss, CoBa weights, learning rate, grad norm, tokens/s (dpo: the HF Trainer's tags).",
        "a directory or null",
        Differs("optional (MFTCoder requires it); null writes no events"),
    ),
    both(
        "pretrained_model_path",
        "The base model: a Hugging Face directory (config.json, safetensors, tokenizer.json). Required.",
        "a directory",
        Differs("a local directory only (no hub ids: nothing is downloaded)"),
    ),
    both(
        "model_type",
        "The architecture MFTCoder would load (its `MODEL_TYPES` key).",
        "llama, code_llama, deepseek, mistral, mixtral, qwen2, qwen2_moe, starcoder, starcoder2, gemma, gpt_neox, phi, deepseek_v2, qwen, chatglm2, chatglm3, baichuan, aquila2, or null",
        Differs(
            "checked against config.json's `model_type`: a key naming another architecture is refused (MFTCoder would load the weights into the wrong class); null skips the check",
        ),
    ),
    // ---- data ----
    train(
        "load_raw_dataset",
        "true: tokenize the jsonl at start; false: read Megatron .bin/.idx prefixes (`mftcoder tokenize`).",
        "true, false",
        Same,
    ),
    train(
        "task_weights",
        "Per-task loss weights for case3/case4, in data_paths order (ignored by coba).",
        "\"[w1,w2]\", [w1, w2] or null (all 1)",
        Same,
    ),
    both(
        "data_split",
        "Shares of each task for training, validation (and test), e.g. \"98,2,0\". dpo: the validation pairs are ceil(n·s1/(s0+s1)), as datasets' train_test_split.",
        "comma-separated numbers",
        Same,
    ),
    train(
        "padding_mode",
        "How samples fill seq_length: one per row padded, several packed per row, or one concatenated stream.",
        "padding, pack, concat",
        Same,
    ),
    train(
        "tokenize_mode",
        "sft: loss on the bot turns only; pretrain / sst: loss on every token.",
        "sft, pretrain, sst",
        Same,
    ),
    train(
        "role_markers",
        "The chat roles' markers.",
        "{\"system\": …, \"user\": …, \"assistant\": …} or null (MFTCoder's <s>human / <s>bot)",
        Same,
    ),
    train("use_dynamic_padding", "Cut each batch after its last supervised token.", "true, false", Same),
    train(
        "shuffle_before_split",
        "Shuffle the .bin/.idx documents before splitting.",
        "true, false",
        NoEffect("the .bin/.idx path always shuffles before splitting (MFTCoder's default)"),
    ),
    dpo("shuffle_before_split", "Unused by MFTCoder's xxpo (its split always shuffles).", "", UNUSED),
    train("seq_length", "Tokens per sample after the label shift.", "1 … 1048576", Same),
    dpo("seq_length", "Unused by MFTCoder's xxpo (max_length bounds a pair).", "", UNUSED),
    dpo("max_prompt_length", "Tokens kept of a prompt (its end).", "1 … 1048576", Same),
    dpo("max_length", "Tokens kept of prompt + answer.", "2 … 1048576, above max_prompt_length", Same),
    // ---- the objective ----
    train(
        "weighted_loss_mode",
        "How the tasks' token losses combine: case1 … case4 (MFTCoder's loss modes) or coba (convergence balancing).",
        "case1, case2, case3, case4, coba",
        Same,
    ),
    train("coba_warmup_steps", "Steps of equal weights before CoBa starts weighing.", "an integer", Same),
    train("coba_history_length", "Validation losses CoBa fits its slopes over.", "1 … 1000000", Same),
    train("coba_tau", "CoBa's temperature.", "a number in (0, 1e6]", Same),
    train("coba_update_interval", "Steps between CoBa weight updates.", "1 … 1000000", Same),
    train("coba_sample_valid_num", "Validation batches CoBa samples per update.", "1 … 1000", Same),
    dpo("xxpo", "The preference objective.", "dpo, orpo", Same),
    dpo("beta", "DPO's / ORPO's β.", "a number in (0, 1e6]", Same),
    dpo(
        "rpo_alpha",
        "With dpo: RPO, adding rpo_alpha × the chosen answers' NLL.",
        "a number in [0, 1e6] or null",
        Same,
    ),
    // ---- what trains ----
    both(
        "peft_type",
        "lora or qlora: train LoRA adapters (qlora on an NF4 + double-quant base); null: every parameter.",
        "lora, qlora, null",
        Same,
    ),
    both(
        "quantization",
        "4-bit base weights.",
        "\"4bit\" or null",
        Differs("follows peft_type, as in MFTCoder: 4-bit exactly when qlora"),
    ),
    both("lora_rank", "LoRA's r.", "1 … 65536", Same),
    both("lora_alpha", "LoRA's α (scaling α / r).", "a number in (0, 1e6]", Same),
    both("lora_dropout", "Dropout on the LoRA branch's input.", "a number in [0, 1)", Same),
    both(
        "target_modules",
        "The linear layers that get adapters.",
        "a list of names, \"all-linear\" or null (all-linear)",
        Same,
    ),
    // ---- optimisation ----
    both("per_device_train_batch_size", "Samples (dpo: pairs) per micro-batch.", "1 … 65536", Same),
    both("per_device_eval_batch_size", "Samples per validation batch.", "1 … 65536", Same),
    both("gradient_accumulation_steps", "Micro-batches per optimizer step.", "1 … 65536", Same),
    both("learning_rate", "AdamW's peak learning rate.", "a number in (0, 3.403e38]", Same),
    train("min_lr", "The learning rate's floor after warm-up.", "a number in [0, 3.403e38]", Same),
    dpo("min_lr", "Unused by MFTCoder's xxpo.", "", UNUSED),
    train("weight_decay", "AdamW's decoupled weight decay, on every parameter.", "a number in [0, 10]", Same),
    dpo(
        "weight_decay",
        "AdamW's decoupled weight decay.",
        "a number in [0, 10]",
        Differs("honoured; MFTCoder never passes it to TRL, so there it is 0"),
    ),
    both("lr_scheduler_type", "The schedule after warm-up.", "linear, cosine, constant, constant_with_warmup", Same),
    train(
        "num_warmup_steps",
        "Warm-up: optimizer steps, or a fraction (< 1) of the run.",
        "a number in [0, 1e12]",
        Differs("warm-up and cosine span optimizer steps (MFTCoder stretches them by gradient_accumulation_steps)"),
    ),
    dpo(
        "warmup_steps",
        "Warm-up in optimizer steps (MFTCoder's default 0.05 passes to TRL as 0 steps).",
        "a number in [0, 1e12]",
        Same,
    ),
    both("num_train_epochs", "Passes over the training data.", "1 … 1000000", Same),
    train("max_train_steps", "Stop after this many optimizer steps.", "1 … 2^40 or null (epochs decide)", Same),
    dpo("max_steps", "Stop after this many optimizer steps.", "-1 (epochs decide) or 1 … 2^40", Same),
    both("seed", "Seeds the data split, the shuffles, LoRA's init and dropout.", "an integer", Same),
    train(
        "gradient_clipping",
        "Clip the gradients' global norm (MFTCoder takes 1.0 from its DeepSpeed config).",
        "a number ≥ 0; 0 disables",
        Ours,
    ),
    dpo("max_grad_norm", "Clip the gradients' global norm (the HF Trainer's field).", "a number ≥ 0; 0 disables", Ours),
    train(
        "activation_checkpointing",
        "Recompute each layer's activations in the backward instead of keeping them (MFTCoder always does).",
        "true, false",
        Ours,
    ),
    dpo(
        "gradient_checkpointing",
        "Recompute activations in the backward.",
        "true, false",
        NoEffect("dpo keeps activations; only train has activation_checkpointing"),
    ),
    dpo(
        "gradient_checkpointing_use_reentrant",
        "torch's checkpointing variant.",
        "",
        NoEffect("a PyTorch implementation detail"),
    ),
    dpo(
        "optimizer_type",
        "The HF Trainer's optimizer name.",
        "adamw_torch",
        NoEffect("always AdamW (torch's), the default"),
    ),
    // ---- evaluation, checkpoints, resume ----
    train(
        "evaluation_steps",
        "Steps between evaluations of every task's validation loss.",
        "an integer; 0: never",
        Same,
    ),
    dpo(
        "eval_steps",
        "Steps between validations (and one at step 0 and at the end).",
        "an integer; 0: only at the end",
        Same,
    ),
    train(
        "checkpointing_steps",
        "Steps between step_N checkpoints (and one at the end).",
        "an integer; 0: only at the end",
        Same,
    ),
    dpo(
        "save_steps",
        "Steps between checkpoint-N checkpoints (epoch_final at the end).",
        "an integer; 0: only epoch_final",
        Same,
    ),
    both("saving_limit", "Step checkpoints kept (the best one never deleted).", "an integer or null (train: 2)", Same),
    train(
        "epoch_checkpointing",
        "Also write epoch_N (1-based) after each epoch, and after one a stop cut short.",
        "true, false",
        Same,
    ),
    dpo("epoch_checkpointing", "Unused by MFTCoder's xxpo.", "", UNUSED),
    train(
        "early_stopping",
        "Stop when the validation loss has not improved in early_stopping_stall_num evaluations.",
        "true, false",
        Same,
    ),
    train("early_stopping_stall_num", "Evaluations without improvement before an early stop.", "1 … 1000000", Same),
    dpo("early_stopping", "Unused by MFTCoder's xxpo.", "", UNUSED),
    dpo("early_stopping_stall_num", "Unused by MFTCoder's xxpo.", "", UNUSED),
    train(
        "resume_from_checkpoint",
        "Resume from this checkpoint directory.",
        "a directory or null",
        Differs("resumes exactly: optimizer moments, data position and random state (MFTCoder restarts the optimizer)"),
    ),
    train(
        "auto_resume",
        "Resume from output_dir/latest when it exists.",
        "true, false",
        Differs("resumes exactly, as resume_from_checkpoint"),
    ),
    dpo("resume_from_checkpoint", "Unused by MFTCoder's xxpo.", "", UNUSED),
    dpo("auto_resume", "Unused by MFTCoder's xxpo.", "", UNUSED),
    train(
        "save_transformers_model",
        "MptTrainArgs: also save an HF model directory into each checkpoint.",
        "true, false",
        NoEffect("a full-parameter checkpoint always is an HF model directory"),
    ),
    dpo(
        "save_only_model",
        "Checkpoints without optimizer state.",
        "true, false",
        NoEffect("checkpoints always hold the optimizer state as well"),
    ),
    // ---- logging ----
    train(
        "log_interval",
        "Steps between MFTCoder's averaged train-loss logs.",
        "an integer",
        NoEffect("metrics.jsonl, TensorBoard and the progress bar get every step"),
    ),
    dpo("logging_steps", "Steps between progress lines on stderr.", "an integer; 0: none", Same),
    dpo("disable_tqdm", "No progress bar.", "true, false", NoEffect("use --quiet")),
    // ---- ours ----
    train(
        "skip_bad_records",
        "Skip malformed jsonl records (counted and reported) instead of stopping at the first.",
        "true, false",
        Ours,
    ),
    train("truncate", "Cut over-long samples to seq_length instead of dropping them.", "true, false", Ours),
    both("device", "Where to train (--device overrides it).", "cpu, cuda, cuda:N", Ours),
    both(
        "precision",
        "Matrix products on the GPU: f32, or bf16 with f32 accumulation and master weights.",
        "f32, bf16",
        Ours,
    ),
    // ---- accepted, no effect ----
    both("tokenizer_type", "The tokenizer class.", "AutoTokenizer", NoEffect("tokenizer.json is read directly")),
    both(
        "attn_implementation",
        "transformers' attention kernel.",
        "flash_attention_2, sdpa, eager",
        NoEffect("one attention implementation here, exact and tiled"),
    ),
    both("distributed_type", "The multi-GPU launcher.", "deepspeed, fsdp", CLUSTER),
    both("init_timeout_seconds", "The process-group timeout.", "", CLUSTER),
    train("world_size", "The number of processes.", "", CLUSTER),
    train("model_parallel_size", "Model parallelism.", "", CLUSTER),
    train("use_xformers", "Legacy attention switch.", "", UNUSED),
    train("low_cpu_mem_usage", "transformers' loading switch.", "", NoEffect("weights are memory-mapped anyway")),
    train("use_random_sampler", "Legacy sampler switch.", "", UNUSED),
    train(
        "trust_remote_code",
        "Run a checkpoint's Python code.",
        "",
        NoEffect("no Python code is run: each architecture is built in"),
    ),
    train("use_slow_tokenizer", "Legacy tokenizer switch.", "", UNUSED),
    train("make_vocab_size_divisible_by", "Legacy Megatron padding.", "", UNUSED),
    train(
        "weight_by_num_documents",
        "Weigh .bin/.idx datasets by their document counts.",
        "",
        NoEffect("the .bin/.idx path weighs by data_split per dataset"),
    ),
    train(
        "data_weights",
        "Per-dataset weights of the .bin/.idx path.",
        "",
        NoEffect("MFTCoder overwrites it with all ones"),
    ),
    dpo("chat_template", "A chat template to use instead of MFTCoder's.", "", UNUSED),
    dpo("dataset_num_proc", "Worker processes for tokenizing.", "", CLUSTER),
    dpo("dtype", "The weights' dtype.", "", NoEffect("weights are f32 on the CPU (see precision for the GPU)")),
    dpo(
        "sanity_check",
        "Keep the first 100 pairs of each file.",
        "",
        NoEffect("not implemented: cut the files instead"),
    ),
    dpo("ignore_bias_buffers", "A DDP detail.", "", CLUSTER),
];
// ANCHOR_END: fields

/// Which config a lookup is for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Command {
    /// `train` and `pretrain`
    Train,
    Dpo,
}

impl Field {
    pub fn handling(&self, command: Command) -> Option<Handling> {
        match command {
            Command::Train => self.train,
            Command::Dpo => self.dpo,
        }
    }
}

/// The fields of one command, in table order.
pub fn fields(command: Command) -> impl Iterator<Item = (&'static Field, Handling)> {
    FIELDS.iter().filter_map(move |f| Some((f, f.handling(command)?)))
}

/// The run-time notice for a field the config sets, when that field has no effect here.
pub fn notice(command: Command, name: &str) -> Option<String> {
    let (_, handling) = fields(command).find(|(f, _)| f.name == name)?;
    match handling {
        NoEffect(why) => Some(format!("`{name}` has no effect here: {why}")),
        _ => None,
    }
}

/// The defaults of a command's config type, as JSON.
fn defaults(command: Command) -> Value {
    match command {
        Command::Train => serde_json::to_value(TrainConfig::default()),
        Command::Dpo => serde_json::to_value(PreferenceConfig::default()),
    }
    .expect("the config types serialize")
}

const REQUIRED: &[&str] = &["data_paths", "output_dir", "pretrained_model_path"];

fn default_text(name: &str, handling: Handling, defaults: &Value) -> String {
    if REQUIRED.contains(&name) {
        return "required".into();
    }
    match (handling, defaults.get(name)) {
        (NoEffect(_), _) | (_, None) => "-".into(),
        (_, Some(v)) => v.to_string(),
    }
}

// ANCHOR: explain
/// `mftcoder config --explain`: every field of each command with its meaning, default and allowed values, and
/// what this project does with it.
pub fn explain() -> String {
    let mut out = String::new();
    for (command, title) in [
        (Command::Train, "train / pretrain: MFTCoder's MftTrainArgs / MptTrainArgs (`mftcoder config --example lora`)"),
        (Command::Dpo, "dpo: MFTCoder's XXPOTrainArgs, the xxpo config (`mftcoder config --example dpo`)"),
    ] {
        let defaults = defaults(command);
        let _ = writeln!(out, "# {title}\n");
        for (f, handling) in fields(command) {
            let _ = writeln!(out, "{}  (default: {})", f.name, default_text(f.name, handling, &defaults));
            let _ = writeln!(out, "    {}", f.meaning);
            if !f.allowed.is_empty() {
                let _ = writeln!(out, "    allowed: {}", f.allowed);
            }
            match handling {
                Same => {}
                Differs(how) => {
                    let _ = writeln!(out, "    here: {how}");
                }
                NoEffect(why) => {
                    let _ = writeln!(out, "    here: accepted, no effect ({why})");
                }
                Ours => {
                    let _ = writeln!(out, "    here: our field, not MFTCoder's");
                }
            }
        }
        out.push('\n');
    }
    out
}
// ANCHOR_END: explain

/// The book's table: every field, and what `train` / `pretrain` and `dpo` do with it.
pub fn markdown_table() -> String {
    let cell = |h: Option<Handling>| match h {
        None => "—".to_owned(),
        Some(Same) => "as MFTCoder".to_owned(),
        Some(Differs(how)) => format!("honoured; {how}"),
        Some(NoEffect(why)) => format!("no effect (notice): {why}"),
        Some(Ours) => "ours".to_owned(),
    };
    let mut names: Vec<&str> = Vec::new();
    for f in FIELDS {
        if !names.contains(&f.name) {
            names.push(f.name);
        }
    }
    let mut out = String::from("| field | `train`, `pretrain` | `dpo` |\n|---|---|---|\n");
    for name in names {
        let find = |command| FIELDS.iter().find_map(|f| (f.name == name).then(|| f.handling(command)).flatten());
        let _ = writeln!(out, "| `{name}` | {} | {} |", cell(find(Command::Train)), cell(find(Command::Dpo)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds_exactly_the_fields_each_config_reads() {
        let train: Vec<&str> = fields(Command::Train).map(|(f, _)| f.name).collect();
        for name in crate::config::KNOWN_FIELDS {
            assert!(train.contains(name), "train field `{name}` is not in the table");
        }
        let dpo_defaults = defaults(Command::Dpo);
        let dpo_known: Vec<&str> = dpo_defaults.as_object().unwrap().keys().map(String::as_str).collect();
        let dpo: Vec<&str> = fields(Command::Dpo).map(|(f, _)| f.name).collect();
        for name in &dpo_known {
            assert!(dpo.contains(name), "dpo field `{name}` is not in the table");
        }
        for name in &dpo {
            assert!(dpo_known.contains(name), "the table's dpo field `{name}` is not in PreferenceConfig");
        }
        for (f, h) in fields(Command::Train) {
            let known = crate::config::KNOWN_FIELDS.contains(&f.name);
            assert!(
                known || matches!(h, NoEffect(_)),
                "train field `{}`: read nowhere but not marked no-effect",
                f.name
            );
        }
        for command in [Command::Train, Command::Dpo] {
            let mut seen = std::collections::HashSet::new();
            for (f, _) in fields(command) {
                assert!(seen.insert(f.name), "`{}` twice for {command:?}", f.name);
            }
        }
    }

    #[test]
    fn model_type_lists_every_key_the_check_knows() {
        let field = FIELDS.iter().find(|f| f.name == "model_type").unwrap();
        for (key, _) in crate::io::model_dir::MODEL_TYPES {
            assert!(field.allowed.split([',', ' ']).any(|k| k == *key), "`{key}` missing from model_type's values");
        }
    }

    #[test]
    fn explain_shows_defaults_from_the_config_types() {
        let text = explain();
        assert!(text.contains("lora_rank  (default: 96)"), "{text}");
        assert!(text.contains("peft_type  (default: \"qlora\")\n"), "{text}");
        assert!(text.contains("allowed: lora, qlora, null"));
        assert!(text.contains("xxpo  (default: \"dpo\")"));
        assert!(text.contains("data_paths  (default: required)"));
    }

    #[test]
    fn config_reference_page_matches_the_code() {
        let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/book/src/config-fields.md")).unwrap();
        let table = markdown_table();
        assert!(
            page.contains(&table),
            "book/src/config-fields.md does not hold the code's table; `mftcoder config --markdown` prints it:\n{table}"
        );
    }
}
