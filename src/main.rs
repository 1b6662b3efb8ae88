//! `mftcoder`: the command-line tool. A thin layer over the library: parse arguments, call, report.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use mftcoder::backend::Backend;
use mftcoder::backend::cpu::Cpu;
use mftcoder::cli::{ADAPTER_HELP, DeviceArgs, load_model};
use mftcoder::infer::{chat_template, generate};
use mftcoder::io::hf_config::{HfConfig, generation_eos_ids};
use mftcoder::io::model_dir::check_model_dir;
use mftcoder::io::safetensors::{OwnedTensor, save};
use mftcoder::io::tokenizer::Tokenizer;
use mftcoder::loss::causal_lm::{mean_token_loss, next_token_targets};
use mftcoder::models::{
    self,
    decoder::{Logits, Sequence, hf_shape},
};
use mftcoder::on_backend;
use mftcoder::train::cli as train_cli;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "mftcoder", version, about = "Multi-task fine-tuning of code LLMs, from first principles")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Load checkpoints whose weights hold NaN or ∞ (with a warning per tensor) instead of refusing them.
    #[arg(long, global = true)]
    allow_non_finite_weights: bool,
}

#[derive(Subcommand)]
enum Command {
    /// The whole mission on an embedded default: pre-train a small code model, fine-tune it on three tasks
    /// with LoRA and CoBa, merge, and answer one prompt per task.
    Demo(mftcoder::demo::DemoArgs),
    /// Run a model over a sequence and write its logits to a safetensors file.
    Forward(ForwardArgs),
    /// Continue a prompt (greedy by default), with a KV cache.
    Generate(GenerateArgs),
    /// pass@k on HumanEval-format problems: sample completions (or read them), run each problem's tests in
    /// a sandbox (see `eval --help` for what it isolates).
    Eval(EvalArgs),
    /// Describe a model directory: architecture, parameters, dtypes, tokenizer.
    Info(InfoArgs),
    /// Show the training samples of MFTCoder jsonl data: ids, loss mask and segments, one JSON line each.
    Encode(mftcoder::data::cli::EncodeArgs),
    /// Tokenize a jsonl directory into Megatron `PREFIX_input_ids.bin/.idx` (MMIDIDX v1).
    Tokenize(mftcoder::data::cli::TokenizeArgs),
    /// Fold a LoRA adapter into its base model and write a plain Hugging Face model directory.
    Merge(MergeArgs),
    /// Fine-tune on MFTCoder jsonl tasks (full parameters when `peft_type` is null), from an MFTCoder config.
    #[command(after_help = train_cli::TRAIN_HELP)]
    Train(train_cli::TrainArgs),
    /// Continued pre-training (full parameters) on `.bin/.idx` prefixes or jsonl, from an MFTCoder config.
    #[command(after_help = train_cli::PRETRAIN_HELP)]
    Pretrain(train_cli::TrainArgs),
    /// Preference training — DPO, RPO or ORPO — on {"chosen", "rejected"} jsonl, from an MFTCoder xxpo config.
    #[command(after_help = train_cli::DPO_HELP)]
    Dpo(train_cli::DpoArgs),
    /// Quantize a model's linear weights to 4 bits (NF4/FP4), saved as transformers + bitsandbytes save them.
    Quantize(mftcoder::quant::cli::QuantizeArgs),
    /// Training-step throughput on the shapes of PyTorch's H200 table (`benches/gpu_torch.py`), printed beside
    /// PyTorch's figures.
    Bench(BenchCmd),
    /// The config reference: every field's meaning, default and allowed values (`--explain`), or a ready config
    /// in MFTCoder's field names (`--example lora|qlora|full|coba|dpo|pretrain`).
    Config(mftcoder::config_examples::ConfigArgs),
    /// Read a llama.cpp GGUF file into a Hugging Face model directory (dequantized, tokenizer rebuilt).
    Import(mftcoder::gguf::cli::ImportArgs),
    /// Write a model directory as a GGUF file for llama.cpp / Ollama (f16, q8_0 or q4_k), with its tokenizer.
    Export(mftcoder::gguf::cli::ExportArgs),
}

#[derive(Args)]
struct BenchCmd {
    #[command(flatten)]
    bench: mftcoder::bench::BenchArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
#[command(after_help = "Examples:
  mftcoder merge --base .cache/smollm2-135m-instruct --adapter out/own-data/lora --out out/own-data/merged
  mftcoder merge --base .cache/smollm2-135m-instruct --adapter out/own-data/lora/step_40 --out merged --max-shard-size 200MB")]
struct MergeArgs {
    /// The base model directory the adapter was trained on.
    #[arg(long)]
    base: PathBuf,
    /// The adapter: a PEFT directory (a LoRA checkpoint such as `out/lora/step_40`), or a training output
    /// directory or its `latest` file, standing for the checkpoint `latest` names.
    #[arg(long)]
    adapter: PathBuf,
    /// The output directory (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Largest shard (e.g. `5GB`, `200MB`, `100KB`); bigger models are split with a `model.safetensors.index.json`.
    #[arg(long, default_value = "5GB", value_parser = parse_size)]
    max_shard_size: usize,
}

#[derive(Args)]
struct InputArgs {
    /// The input as one comma-separated list of token ids, e.g. `--ids 1,2,3` (required without --text).
    #[arg(long, value_delimiter = ',', conflicts_with = "text", required_unless_present = "text")]
    ids: Vec<u32>,
    /// Text, encoded with the model's tokenizer.json (special tokens added as `tokenizer(text)` does) (required
    /// without --ids).
    #[arg(long)]
    text: Option<String>,
}

#[derive(Args)]
#[command(after_help = "Examples:
  mftcoder forward --model fixtures/llama/gqa_tied --ids 1,5,9 --out logits.safetensors
  mftcoder forward --model fixtures/llama/gqa_tied --text 'def add(a, b):' --backward --out grads.safetensors")]
struct ForwardArgs {
    /// Hugging Face model directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    input: InputArgs,
    #[arg(long, help = ADAPTER_HELP)]
    adapter: Option<PathBuf>,
    /// Output safetensors file: `logits` f32 [T, vocab] and `input_ids` i64 [T].
    #[arg(long)]
    out: PathBuf,
    /// Also run the backward pass of transformers' loss convention (labels = input ids, mean over the T−1
    /// predictions) and write `loss` f32 [1] and `grad.<parameter name>` for every parameter.
    #[arg(long)]
    backward: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
#[command(after_help = "Examples:
  mftcoder generate --model fixtures/llama/gqa_tied --ids 1,5,9 --max-new-tokens 8 --json
  mftcoder generate --model .cache/smollm2-135m-instruct --chat --prompt 'Write a Python function that reverses a string.'")]
struct GenerateArgs {
    /// Hugging Face model directory (config.json + safetensors; tokenizer.json for text).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, help = ADAPTER_HELP)]
    adapter: Option<PathBuf>,
    /// Prompt text, encoded with the model's tokenizer (required without --ids).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    prompt: Option<String>,
    /// The prompt as one comma-separated list of token ids, e.g. `--ids 1,2,3` (required without --prompt).
    #[arg(long, value_delimiter = ',')]
    ids: Vec<u32>,
    /// Tokens to generate at most (fewer when the model ends its answer with an EOS token).
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Wrap the prompt in the MFTCoder chat template (`<s>human\n{prompt}\n<s>bot\n`), no special tokens added.
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// Sample at this temperature instead of decoding greedily (default: greedy; 0 = greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// The sampler's seed: the same seed, prompt and model give the same sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print `{"prompt_ids": [...], "generated_ids": [...], "text": "...", "generate_seconds": s}` instead of the
    /// text (the seconds of the prompt's forward and every decoding step, loading excluded).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

const EVAL_EXAMPLES: &str = "Examples:
  mftcoder eval --problems HumanEval.jsonl --completions samples.jsonl --execute --k 1
  mftcoder eval --problems HumanEval.jsonl --model .cache/smollm2-135m-instruct --chat --execute";

#[derive(Args)]
#[command(after_help = format!("{}\n\n{EVAL_EXAMPLES}", mftcoder::infer::sandbox::HELP.trim_end()))]
struct EvalArgs {
    /// HumanEval-format jsonl: `task_id`, `prompt`, `test`, `entry_point`.
    #[arg(long)]
    problems: PathBuf,
    /// Allow running model-generated Python on this machine, in the sandbox described below (required: the
    /// code is untrusted).
    #[arg(long)]
    execute: bool,
    /// Score these completions (jsonl `task_id`, `completion`) instead of generating (required without --model).
    #[arg(long, conflicts_with = "model", required_unless_present = "model")]
    completions: Option<PathBuf>,
    /// Hugging Face model directory to sample completions from (default: none; needs --completions without it).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, requires = "model", help = ADAPTER_HELP)]
    adapter: Option<PathBuf>,
    /// Ask in MFTCoder's chat template (`<s>human\n# language: Python\n{prompt}\n<s>bot\n`) and take the answer's
    /// code; without it the prompt is continued and cut at the next top-level statement.
    #[arg(long)]
    chat: bool,
    /// Completions per problem.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// The k of pass@k, comma-separated (each ≤ samples).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    k: Vec<usize>,
    /// Tokens to generate at most per completion.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Sampling temperature (default: greedy; 0 = greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// The sampler's seed (each sample of a problem draws from it in turn).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seconds one program may run before it counts as timed out.
    #[arg(long, default_value_t = 10.0)]
    timeout_s: f64,
    /// Address space one program may use, in MiB (RLIMIT_AS).
    #[arg(long, default_value_t = 2048)]
    memory_mb: u64,
    /// The Python interpreter that runs the tests (a name looked up on PATH, or a path).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Write one JSON line per sample: task_id, completion, program, outcome (default: none).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
#[command(after_help = "Examples:
  mftcoder info --model fixtures/llama/gqa_tied
  mftcoder info --model .cache/smollm2-135m-instruct")]
struct InfoArgs {
    /// Hugging Face model directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
}

fn main() -> ExitCode {
    // A bug must still read as one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("mftcoder: internal error: {info}");
    }));
    // `mftcoder info | head`: a closed pipe ends the process quietly, as it does any Unix filter, instead of
    // failing the next print
    // SAFETY: restores the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    mftcoder::runtime::tune_allocator();
    let cli = Cli::parse();
    mftcoder::io::safetensors::allow_non_finite_weights(cli.allow_non_finite_weights);
    let result = match cli.command {
        Command::Demo(args) => mftcoder::demo::run(args),
        Command::Forward(args) => forward(args),
        Command::Generate(args) => generate_cmd(args),
        Command::Eval(args) => eval_cmd(args),
        Command::Info(args) => info(args),
        Command::Encode(args) => mftcoder::data::cli::encode(args),
        Command::Tokenize(args) => mftcoder::data::cli::tokenize(args),
        Command::Merge(args) => merge_cmd(args),
        Command::Train(args) => train_cli::train(args, false),
        Command::Dpo(args) => train_cli::dpo(args),
        Command::Pretrain(args) => train_cli::train(args, true),
        Command::Quantize(args) => mftcoder::quant::cli::quantize(args),
        Command::Bench(args) => bench_cmd(args),
        Command::Config(args) => mftcoder::config_examples::run(args),
        Command::Import(args) => mftcoder::gguf::cli::import(args),
        Command::Export(args) => mftcoder::gguf::cli::export(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn forward(args: ForwardArgs) -> Result<()> {
    let d = args.device.clone();
    on_backend!(d.device.as_deref().unwrap_or("cpu"), d.precision.as_deref().unwrap_or("f32"), forward_on(args))
}

fn forward_on<B: Backend>(b: &B, args: ForwardArgs) -> Result<()> {
    check_model_dir("--model", &args.model)?;
    let ids = match &args.input.text {
        Some(text) => Tokenizer::load(&args.model)?.encode(text, true)?,
        None => args.input.ids.clone(),
    };
    let model = load_model(b, &args.model, args.adapter.as_deref())?;
    let ids_i64: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let mut tensors = vec![OwnedTensor::i64("input_ids", &[ids.len()], &ids_i64)];
    if args.backward {
        if ids.len() < 2 {
            bail!("--backward needs at least two tokens (one prediction)");
        }
        let positions: Vec<usize> = (0..ids.len()).collect();
        let seq = Sequence { ids: &ids, positions: &positions, segment_ids: None };
        let (targets, weights) = next_token_targets(&ids, None, None);
        let result = mean_token_loss(&model, b, seq, &targets, &weights)?;
        tensors.push(OwnedTensor::f32("loss", &[1], &[result.loss as f32]));
        for (name, grad) in &result.grads {
            let grad = b.download(grad);
            let values: Vec<f32> = grad.iter().copied().collect();
            tensors.push(OwnedTensor::f32(&format!("grad.{name}"), &hf_shape(name, grad.dim()), &values));
        }
        eprintln!(
            "loss {:.6} over {} predictions; {} parameter gradients",
            result.loss,
            ids.len() - 1,
            result.grads.len()
        );
    }
    // the training loss never holds the logits whole (`loss::chunked_head`): the file's come from a forward
    let logits = b.download(&model.forward(b, &ids, None, Logits::All)?);
    let (t, v) = logits.dim();
    let logits: Vec<f32> = logits.iter().copied().collect();
    tensors.push(OwnedTensor::f32("logits", &[t, v], &logits));
    save(&args.out, &tensors)?;
    eprintln!("wrote logits [{t}, {v}] to {}", args.out.display());
    Ok(())
}

fn merge_cmd(args: MergeArgs) -> Result<()> {
    check_model_dir("--base", &args.base)?;
    let adapter = mftcoder::peft::locate::resolve_adapter(&args.adapter)?;
    mftcoder::peft::locate::check_adapter_base(&adapter, &args.base)?;
    let n = mftcoder::peft::merge::merge_into_directory(&args.base, &adapter, &args.out, args.max_shard_size)?;
    eprintln!("merged {n} matrices into {}", args.out.display());
    Ok(())
}

fn generate_cmd(args: GenerateArgs) -> Result<()> {
    let d = args.device.clone();
    on_backend!(d.device.as_deref().unwrap_or("cpu"), d.precision.as_deref().unwrap_or("f32"), generate_on(args))
}

fn generate_on<B: Backend>(b: &B, args: GenerateArgs) -> Result<()> {
    check_model_dir("--model", &args.model)?;
    let (tokenizer, prompt_ids) = match &args.prompt {
        Some(prompt) => {
            let tok = Tokenizer::load(&args.model).context("text prompts need the model's tokenizer")?;
            let ids = if args.chat {
                tok.encode(&chat_template::single_turn_prompt(prompt), false)? // MFTCoder: add_special_tokens=False
            } else {
                tok.encode(prompt, true)?
            };
            (Some(tok), ids)
        }
        None => (Tokenizer::load(&args.model).ok(), args.ids.clone()),
    };
    if prompt_ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let config = HfConfig::read(&args.model)?;
    let eos = generation_eos_ids(&args.model, &config)?;
    let model = load_model(b, &args.model, args.adapter.as_deref())?.for_decoding(b);
    let decoding = match args.temperature {
        Some(t) if t > 0.0 => generate::Decoding::Sample { temperature: t, top_p: args.top_p, seed: args.seed },
        _ => generate::Decoding::Greedy,
    };
    let started = std::time::Instant::now();
    let generated = generate::generate(&model, b, &prompt_ids, args.max_new_tokens, &decoding, &eos)?;
    let seconds = started.elapsed().as_secs_f64(); // the prompt's forward and every decoding step
    let text = match &tokenizer {
        Some(tok) => tok.decode(&generated, true)?,
        None => String::new(),
    };
    if args.json {
        let out = serde_json::json!({"prompt_ids": prompt_ids, "generated_ids": generated, "text": text,
            "generate_seconds": seconds});
        println!("{out}");
    } else if tokenizer.is_some() {
        println!("{text}");
    } else {
        println!("{}", generated.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
    }
    Ok(())
}

fn eval_cmd(args: EvalArgs) -> Result<()> {
    use mftcoder::infer::humaneval;
    if !args.execute {
        bail!("`eval` runs model-generated Python on this machine; pass --execute to allow it");
    }
    if !(args.timeout_s > 0.0 && args.timeout_s <= 86400.0) {
        bail!("--timeout-s must be between 0 and 86400 seconds (exclusive of 0), got {}", args.timeout_s);
    }
    if !(64..=1 << 20).contains(&args.memory_mb) {
        bail!("--memory-mb must be between 64 and 1048576, got {}", args.memory_mb);
    }
    let problems = humaneval::load_problems(&args.problems)?;
    if let Some(&k) = args.k.iter().find(|&&k| k == 0 || k > args.samples) {
        bail!("--k {k} must be between 1 and --samples ({})", args.samples);
    }
    let python = mftcoder::infer::sandbox::resolve_python(&args.python)?; // before a long sampling run
    let samples = match &args.completions {
        Some(path) => humaneval::load_completions(path, &problems)?,
        None => {
            let d = args.device.clone();
            on_backend!(
                d.device.as_deref().unwrap_or("cpu"),
                d.precision.as_deref().unwrap_or("f32"),
                sample_completions(&args, &problems)
            )?
        }
    };
    let limits =
        mftcoder::infer::sandbox::Limits::new(std::time::Duration::from_secs_f64(args.timeout_s), args.memory_mb << 20);
    let mut executor = humaneval::Executor::new(python, limits); // from here on Ctrl-C stops the run in progress
    let (tally, lines) = humaneval::score(&mut executor, &problems, &samples)?;
    if let Some(path) = &args.out {
        mftcoder::io::write_atomic(path, lines.as_bytes())?;
    }
    let passed: usize = tally.iter().map(|t| t.1).sum();
    println!("{} problems, {} samples, {passed} passed", problems.len(), samples.len());
    for &k in &args.k {
        println!("pass@{k}: {:.4}", humaneval::mean_pass_at_k(&tally, k)?);
    }
    Ok(())
}

fn sample_completions<B: Backend>(
    b: &B,
    args: &EvalArgs,
    problems: &[mftcoder::infer::humaneval::Problem],
) -> Result<Vec<mftcoder::infer::humaneval::Sample>> {
    let model_dir = args.model.as_deref().expect("clap requires --model without --completions");
    check_model_dir("--model", model_dir)?;
    let tok = Tokenizer::load(model_dir)?;
    let eos = generation_eos_ids(model_dir, &HfConfig::read(model_dir)?)?;
    let model = load_model(b, model_dir, args.adapter.as_deref())?.for_decoding(b);
    let sampling = mftcoder::infer::humaneval::Sampling {
        chat: args.chat,
        samples: args.samples,
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature.unwrap_or(0.0),
        top_p: args.top_p,
        seed: args.seed,
    };
    mftcoder::infer::humaneval::sample(&model, b, &tok, &eos, problems, &sampling)
}

fn info(args: InfoArgs) -> Result<()> {
    check_model_dir("--model", &args.model)?;
    print!("{}", models::info::describe(&args.model)?);
    Ok(())
}

fn bench_cmd(args: BenchCmd) -> Result<()> {
    let device: mftcoder::backend::Device = args.device.device.as_deref().unwrap_or("cpu").parse()?;
    match device {
        mftcoder::backend::Device::Cpu => {
            let report = mftcoder::bench::run(&Cpu, &args.bench, &|| {}, &|| {}, &mut || {})?;
            let peak = mftcoder::runtime::resident_bytes().map(|b| b as f64 / (1u64 << 30) as f64);
            mftcoder::bench::print_report(&args.bench, "cpu (peak = resident memory)", &report, peak, None);
        }
        #[cfg(feature = "cuda")]
        mftcoder::backend::Device::Cuda(ordinal) => {
            use mftcoder::backend::cuda::{Cuda, Precision};
            let precision: Precision = args.device.precision.as_deref().unwrap_or("bf16").parse()?;
            let gpu = Cuda::new(ordinal, precision)?;
            let baseline = gpu.memory_used()?;
            let mut peak = 0usize;
            let mut counted = vec![gpu.counters()];
            let release = || gpu.release_cached(); // the dense weights' buffers, once quantized or frozen
            let report = mftcoder::bench::run(&gpu, &args.bench, &release, &|| gpu.synchronize(), &mut || {
                peak = peak.max(gpu.memory_used().unwrap_or(0).saturating_sub(baseline));
                counted.push(gpu.counters());
            })?;
            // dense peaks of an H100/H200 SXM: bf16 tensor cores 989 TFLOP/s, plain f32 67 TFLOP/s
            let peak_flops = match precision {
                Precision::Bf16 => 989.4e12,
                Precision::F32 => 66.9e12,
            };
            let name = format!("{} ({precision:?}, kernels as {:?})", gpu.device_name(), gpu.kernel_code());
            mftcoder::bench::print_report(
                &args.bench,
                &name,
                &report,
                Some(peak as f64 / (1u64 << 30) as f64),
                Some(peak_flops),
            );
            if let [.., before, last] = counted.as_slice() {
                println!("last step: {}", last.since(*before)); // what the device did besides arithmetic
            }
            println!("pool: {:.1} MB cached for reuse", gpu.cached_bytes() as f64 / 1e6);
        }
        #[cfg(not(feature = "cuda"))]
        mftcoder::backend::Device::Cuda(_) => {
            bail!("this build has no GPU support: rebuild with `cargo build --release --features cuda`")
        }
    }
    Ok(())
}

/// "5GB", "200MB", "100KB" or a plain byte count (decimal units, as transformers' `max_shard_size`).
fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let value: f64 = number.trim().parse().map_err(|_| format!("`{s}` is not a size like 5GB or 200MB"))?;
    let scale = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return Err(format!("`{s}`: unit must be B, KB, MB or GB")),
    };
    Ok((value * scale) as usize)
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every flag of every subcommand says what it does and what it defaults to (a switch is off; a required
    /// flag has no default); every subcommand's help ends with examples that parse.
    #[test]
    fn every_flag_is_described_with_its_default_and_every_subcommand_has_examples() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands() {
            let name = sub.get_name();
            for arg in sub.get_arguments().filter(|a| a.get_long().is_some_and(|l| l != "help" && l != "version")) {
                let flag = arg.get_long().unwrap();
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                if help.trim().is_empty() {
                    missing.push(format!("`{name} --{flag}` has no description"));
                }
                let switch = !arg.get_action().takes_values();
                let says = ["default", "required"].iter().any(|w| help.contains(w));
                if !(switch || arg.is_required_set() || !arg.get_default_values().is_empty() || says) {
                    missing.push(format!("`{name} --{flag}` shows no default: give it one, or say `(default: …)`"));
                }
            }
            let after = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            let examples =
                after.split("Examples:").nth(1).unwrap_or_else(|| panic!("`{name} --help` ends with no examples"));
            let lines: Vec<&str> = examples.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            assert!((1..=2).contains(&lines.len()), "`{name}`: one or two examples, got {lines:?}");
            for line in lines {
                let words = shell_words(line);
                assert_eq!(words[0], "mftcoder", "`{name}` example: {line}");
                let parsed = Cli::command().try_get_matches_from(&words);
                assert!(parsed.is_ok(), "`{name}` example `{line}` does not parse: {}", parsed.unwrap_err());
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }

    /// A command line split as a POSIX shell splits it (spaces; single and double quotes).
    fn shell_words(line: &str) -> Vec<String> {
        let (mut words, mut word, mut quote, mut started) = (Vec::new(), String::new(), None, false);
        for c in line.chars() {
            match (quote, c) {
                (None, '\'' | '"') => (quote, started) = (Some(c), true),
                (Some(q), c) if c == q => quote = None,
                (None, ' ') if started => {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
                (None, ' ') => {}
                (_, c) => {
                    word.push(c);
                    started = true;
                }
            }
        }
        if started {
            words.push(word);
        }
        words
    }
}
