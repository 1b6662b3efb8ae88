//! `mftcoder`: the command-line tool. A thin layer over the library: parse arguments, call, report.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use mftcoder::backend::Backend;
use mftcoder::backend::cpu::Cpu;
use mftcoder::config::TrainConfig;
use mftcoder::infer::{chat_template, generate};
use mftcoder::io::hf_config::{HfConfig, generation_eos_ids};
use mftcoder::io::safetensors::{OwnedTensor, save};
use mftcoder::io::tokenizer::Tokenizer;
use mftcoder::loss::causal_lm::{mean_token_loss, next_token_targets};
use mftcoder::models::{
    self,
    decoder::{Logits, Sequence, hf_shape},
};
use mftcoder::train::preference::{self, PreferenceConfig};
use mftcoder::train::trainer;
use std::path::{Path, PathBuf};
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
    Train(TrainArgs),
    /// Continued pre-training (full parameters) on `.bin/.idx` prefixes or jsonl, from an MFTCoder config.
    Pretrain(TrainArgs),
    /// Preference training — DPO, RPO or ORPO — on {"chosen", "rejected"} jsonl, from an MFTCoder xxpo config.
    Dpo(TrainArgs),
    /// Quantize a model's linear weights to 4 bits (NF4/FP4), saved as transformers + bitsandbytes save them.
    Quantize(mftcoder::quant::cli::QuantizeArgs),
    /// Training-step throughput on the PyTorch table's shapes (gpu.md), printed beside PyTorch's H200 figures.
    Bench(BenchCmd),
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
struct MergeArgs {
    /// The base model directory the adapter was trained on.
    #[arg(long)]
    base: PathBuf,
    /// The adapter directory (PEFT format).
    #[arg(long)]
    adapter: PathBuf,
    /// The output directory (must not exist).
    #[arg(long)]
    out: PathBuf,
    /// Largest shard (e.g. `5GB`, `200MB`, `100KB`); bigger models are split with a `model.safetensors.index.json`.
    #[arg(long, default_value = "5GB", value_parser = parse_size)]
    max_shard_size: usize,
}

/// Where to run.
#[derive(Args, Clone)]
struct DeviceArgs {
    /// `cpu` (the reference path) or `cuda` / `cuda:N` (a build with `--features cuda` and an NVIDIA GPU).
    #[arg(long)]
    device: Option<String>,
    /// Matrix products on the GPU: `f32` or `bf16` (mixed precision, f32 accumulation and master weights).
    #[arg(long)]
    precision: Option<String>,
}

/// Run `$f(&backend, args…)` on the backend the device arguments name: the CPU, or (with the `cuda` feature)
/// a GPU; a GPU asked of a build without the feature is a one-line error.
macro_rules! on_backend {
    ($device:expr, $precision:expr, $f:ident($($arg:expr),* $(,)?)) => {{
        let device: mftcoder::backend::Device = $device.parse()?;
        match device {
            mftcoder::backend::Device::Cpu => $f(&Cpu, $($arg),*),
            #[cfg(feature = "cuda")]
            mftcoder::backend::Device::Cuda(ordinal) => {
                let precision: mftcoder::backend::cuda::Precision = $precision.parse()?;
                let gpu = mftcoder::backend::cuda::Cuda::new(ordinal, precision)?;
                eprintln!("device: {} ({precision:?} matrix products)", gpu.device_name());
                $f(&gpu, $($arg),*)
            }
            #[cfg(not(feature = "cuda"))]
            mftcoder::backend::Device::Cuda(_) => {
                let _ = &$precision;
                bail!("this build has no GPU support: rebuild with `cargo build --release --features cuda`")
            }
        }
    }};
}

#[derive(Args)]
struct TrainArgs {
    /// JSON config with MFTCoder's field names (`MftTrainArgs` / `MptTrainArgs`).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// When `output_dir` holds another run (another config, base model or data), remove that run's files
    /// and start over instead of stopping (transformers' `overwrite_output_dir`).
    #[arg(long)]
    overwrite_output_dir: bool,
}

#[derive(Args)]
struct InputArgs {
    /// Comma-separated token ids, e.g. `1,2,3`.
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "text", required_unless_present = "text")]
    ids: Vec<u32>,
    /// Text, encoded with the model's tokenizer.json (special tokens added as `tokenizer(text)` does).
    #[arg(long)]
    text: Option<String>,
}

#[derive(Args)]
struct ForwardArgs {
    /// Hugging Face model directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    input: InputArgs,
    /// A LoRA adapter directory (PEFT format: adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
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
struct GenerateArgs {
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter directory (PEFT format).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Prompt text (encoded with the model's tokenizer).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    ids: Vec<u32>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Wrap the prompt in the MFTCoder chat template (`<s>human\n{prompt}\n<s>bot\n`), no special tokens added.
    #[arg(long, requires = "prompt")]
    chat: bool,
    /// Sample at this temperature instead of decoding greedily (0 = greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print `{"prompt_ids": [...], "generated_ids": [...], "text": "..."}` instead of the text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
#[command(after_help = mftcoder::infer::sandbox::HELP)]
struct EvalArgs {
    /// HumanEval-format jsonl: `task_id`, `prompt`, `test`, `entry_point`.
    #[arg(long)]
    problems: PathBuf,
    /// Allow running model-generated Python on this machine, in the sandbox described below (required: the
    /// code is untrusted).
    #[arg(long)]
    execute: bool,
    /// Score these completions (jsonl `task_id`, `completion`) instead of generating.
    #[arg(long, conflicts_with = "model", required_unless_present = "model")]
    completions: Option<PathBuf>,
    #[arg(long)]
    model: Option<PathBuf>,
    /// A LoRA adapter directory (PEFT format).
    #[arg(long, requires = "model")]
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
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Sampling temperature (0 or absent: greedy).
    #[arg(long)]
    temperature: Option<f32>,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seconds one program may run before it counts as timed out.
    #[arg(long, default_value_t = 10.0)]
    timeout_s: f64,
    /// Address space one program may use, in MiB (RLIMIT_AS).
    #[arg(long, default_value_t = 2048)]
    memory_mb: u64,
    #[arg(long, default_value = "python3")]
    python: String,
    /// Write one JSON line per sample: task_id, completion, program, outcome.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct InfoArgs {
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
        Command::Merge(args) => {
            mftcoder::peft::merge::merge_into_directory(&args.base, &args.adapter, &args.out, args.max_shard_size)
                .map(|n| eprintln!("merged {n} matrices into {}", args.out.display()))
        }
        Command::Train(args) => train_cmd(args, false),
        Command::Dpo(args) => dpo_cmd(args),
        Command::Pretrain(args) => train_cmd(args, true),
        Command::Quantize(args) => mftcoder::quant::cli::quantize(args),
        Command::Bench(args) => bench_cmd(args),
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
    let ids = match &args.input.text {
        Some(text) => Tokenizer::load(&args.model)?.encode(text, true)?,
        None => args.input.ids.clone(),
    };
    let model = load_model(b, &args.model, args.adapter.as_deref())?;
    let ids_i64: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let mut tensors = vec![OwnedTensor::i64("input_ids", &[ids.len()], &ids_i64)];
    let logits = if args.backward {
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
        b.download(&result.logits)
    } else {
        b.download(&model.forward(b, &ids, None, Logits::All)?)
    };
    let (t, v) = logits.dim();
    let logits: Vec<f32> = logits.iter().copied().collect();
    tensors.push(OwnedTensor::f32("logits", &[t, v], &logits));
    save(&args.out, &tensors)?;
    eprintln!("wrote logits [{t}, {v}] to {}", args.out.display());
    Ok(())
}

/// A model directory, with a PEFT LoRA adapter attached when one is given.
fn load_model<B: Backend>(b: &B, model: &Path, adapter: Option<&Path>) -> Result<models::decoder::Decoder<B>> {
    let mut llama = models::load_causal_lm(b, model)?;
    if let Some(dir) = adapter {
        let adapter = mftcoder::peft::Adapter::load(dir)?;
        mftcoder::peft::attach::attach_adapter(&mut llama, b, &adapter)
            .with_context(|| format!("{}", dir.display()))?;
    }
    Ok(llama)
}

fn generate_cmd(args: GenerateArgs) -> Result<()> {
    let d = args.device.clone();
    on_backend!(d.device.as_deref().unwrap_or("cpu"), d.precision.as_deref().unwrap_or("f32"), generate_on(args))
}

fn generate_on<B: Backend>(b: &B, args: GenerateArgs) -> Result<()> {
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
    let model = load_model(b, &args.model, args.adapter.as_deref())?;
    let decoding = match args.temperature {
        Some(t) if t > 0.0 => generate::Decoding::Sample { temperature: t, top_p: args.top_p, seed: args.seed },
        _ => generate::Decoding::Greedy,
    };
    let generated = generate::generate(&model, b, &prompt_ids, args.max_new_tokens, &decoding, &eos)?;
    let text = match &tokenizer {
        Some(tok) => tok.decode(&generated, true)?,
        None => String::new(),
    };
    if args.json {
        let out = serde_json::json!({"prompt_ids": prompt_ids, "generated_ids": generated, "text": text});
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
    let tok = Tokenizer::load(model_dir)?;
    let eos = generation_eos_ids(model_dir, &HfConfig::read(model_dir)?)?;
    let model = load_model(b, model_dir, args.adapter.as_deref())?;
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
    print!("{}", models::info::describe(&args.model)?);
    Ok(())
}

fn train_cmd(args: TrainArgs, pretrain: bool) -> Result<()> {
    let loaded = TrainConfig::from_file(&args.config)?;
    for notice in &loaded.notices {
        eprintln!("note: {notice}");
    }
    let mut cfg = loaded.config;
    if pretrain {
        cfg.peft_type = None; // continued pre-training trains every parameter (MptTrainArgs has no PEFT fields)
    }
    if let Some(device) = &args.device.device {
        cfg.device = device.clone();
    }
    if let Some(precision) = &args.device.precision {
        cfg.precision = precision.clone();
    }
    let options = trainer::RunOptions { quiet: args.quiet, pretrain, overwrite_output_dir: args.overwrite_output_dir };
    let report = on_backend!(cfg.device.as_str(), cfg.precision.as_str(), train_on(&cfg, options))?;
    eprintln!("trained {} steps; final checkpoint {}", report.completed_steps, report.final_checkpoint.display());
    if let Some(last) = report.evaluations.last() {
        eprintln!("{:<24} {:>12} {:>12}", "task", "valid loss", "perplexity");
        for (name, loss) in &last.task_loss {
            match loss {
                Some(l) => eprintln!("{name:<24} {l:>12.4} {:>12.3}", l.exp()),
                None => eprintln!("{name:<24} {:>12} {:>12}", "-", "-"),
            }
        }
        eprintln!("{:<24} {:>12.4} {:>12.3}", "(overall)", last.eval_loss, last.perplexity);
    }
    Ok(())
}

fn dpo_cmd(args: TrainArgs) -> Result<()> {
    let mut cfg = PreferenceConfig::from_file(&args.config)?;
    if let Some(device) = &args.device.device {
        cfg.device = device.clone();
    }
    if let Some(precision) = &args.device.precision {
        cfg.precision = precision.clone();
    }
    let options =
        trainer::RunOptions { quiet: args.quiet, pretrain: false, overwrite_output_dir: args.overwrite_output_dir };
    let report = on_backend!(cfg.device.as_str(), cfg.precision.as_str(), dpo_on(&cfg, options))?;
    eprintln!("trained {} steps; final checkpoint {}", report.completed_steps, report.final_checkpoint.display());
    if let Some(last) = report.evaluations.last() {
        eprintln!(
            "validation at step {}: loss {:.4}, reward accuracy {:.2}, reward margin {:.4}",
            last.step, last.loss, last.reward_accuracy, last.reward_margin
        );
    }
    Ok(())
}

fn dpo_on<B: Backend>(
    b: &B,
    cfg: &PreferenceConfig,
    options: trainer::RunOptions,
) -> Result<preference::PreferenceReport> {
    preference::train_preference(b, cfg, options)
}

fn bench_cmd(args: BenchCmd) -> Result<()> {
    let device: mftcoder::backend::Device = args.device.device.as_deref().unwrap_or("cpu").parse()?;
    match device {
        mftcoder::backend::Device::Cpu => {
            let report = mftcoder::bench::run(&Cpu, &args.bench, &|| {}, &mut || {})?;
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
            let report = mftcoder::bench::run(&gpu, &args.bench, &|| gpu.synchronize(), &mut || {
                peak = peak.max(gpu.memory_used().unwrap_or(0).saturating_sub(baseline));
            })?;
            // dense peaks of an H100/H200 SXM: bf16 tensor cores 989 TFLOP/s, plain f32 67 TFLOP/s
            let peak_flops = match precision {
                Precision::Bf16 => 989.4e12,
                Precision::F32 => 66.9e12,
            };
            let name = format!("{} ({precision:?})", gpu.device_name());
            mftcoder::bench::print_report(
                &args.bench,
                &name,
                &report,
                Some(peak as f64 / (1u64 << 30) as f64),
                Some(peak_flops),
            );
        }
        #[cfg(not(feature = "cuda"))]
        mftcoder::backend::Device::Cuda(_) => {
            bail!("this build has no GPU support: rebuild with `cargo build --release --features cuda`")
        }
    }
    Ok(())
}

fn train_on<B: Backend>(b: &B, cfg: &TrainConfig, options: trainer::RunOptions) -> Result<trainer::TrainReport> {
    trainer::train(b, cfg, options)
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
