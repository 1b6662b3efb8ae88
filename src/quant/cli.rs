//! `mftcoder quantize`: write a 4-bit copy of a model directory that transformers + bitsandbytes load.

use super::checkpoint::quantize_checkpoint;
use super::{QuantOptions, QuantType};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  mftcoder quantize --model fixtures/llama/gqa_tied --out out/gqa_tied-nf4
  mftcoder quantize --model .cache/smollm2-135m-instruct --out out/smollm2-nf4 --quant nf4 --double-quant")]
pub struct QuantizeArgs {
    /// Hugging Face model directory (config.json + safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Output directory (must not exist): model.safetensors, config.json with `quantization_config`,
    /// generation and tokenizer files copied.
    #[arg(long)]
    pub out: PathBuf,
    /// 4-bit codebook: `nf4` (QLoRA) or `fp4`.
    #[arg(long, default_value = "nf4")]
    pub quant: String,
    /// Also quantize the block scales to 8 bits (`bnb_4bit_use_double_quant`).
    #[arg(long)]
    pub double_quant: bool,
    /// Weights per block (bitsandbytes accepts 32 … 4096; transformers always uses 64).
    #[arg(long, default_value_t = 64)]
    pub blocksize: usize,
    /// torch's thread count in the run to match: it changes the double-quant offset of tensors with ≥ 32768
    /// blocks (default: the number of CPUs, as torch).
    #[arg(long)]
    pub torch_threads: Option<usize>,
}

pub fn quantize(args: QuantizeArgs) -> Result<()> {
    crate::io::model_dir::check_model_dir("--model", &args.model)?;
    let quant_type = QuantType::parse(&args.quant)?;
    let mut opts =
        QuantOptions { blocksize: args.blocksize, double_quant: args.double_quant, ..QuantOptions::default() };
    if let Some(t) = args.torch_threads {
        opts.torch_threads = t.max(1);
    }
    let r = quantize_checkpoint(&args.model, &args.out, quant_type, opts)?;
    eprintln!(
        "quantized {} linear weights ({} parameters) to {}{}: {:.4} bits/parameter; kept {} tensors ({} parameters) in f32",
        r.quantized_tensors,
        r.quantized_params,
        quant_type.name(),
        if opts.double_quant { " + double quant" } else { "" },
        r.bits_per_param,
        r.kept_tensors,
        r.kept_params
    );
    eprintln!("wrote {} ({} bytes of weights)", args.out.display(), r.file_bytes);
    Ok(())
}
