//! The `import` and `export` subcommands' arguments and what they run.

use super::container::GgufFile;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
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
