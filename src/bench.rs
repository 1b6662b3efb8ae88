//! `mftcoder bench`: training-step throughput on the shapes of the PyTorch table in `shared/reference/gpu.md`
//! (Llama 134M and TinyLlama 1.1B, full and LoRA r = 16 on all seven projections), printed beside PyTorch's
//! figures measured on an H200. Random weights and tokens; `batch` rows of `seq` tokens each, packed into one
//! sequence with a segment per row (so attention never crosses rows, as in a padded batch without padding);
//! forward, backward, global-norm clipping and AdamW, as the trainer does them.

use crate::backend::Backend;
use crate::loss::causal_lm::{deferred_token_loss, weighted_loss};
use crate::models::decoder::{AuxLoss, Decoder, DecoderConfig, Moe, RouterSpec, Selection, Sequence};
use crate::models::parameters::FrozenBaseBytes;
use crate::peft::attach::init_adapters;
use crate::peft::{LoraConfig, TargetModules};
use crate::rng::Rng;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::step_update::Outcome;
use anyhow::{Result, bail};
use clap::Args;
use std::time::Instant;

#[derive(Args, Clone, Debug)]
#[command(after_help = "Examples:
  mftcoder bench --model tiny --mode lora --steps 3 --warmup 1
  mftcoder bench --device cuda --model 134m --mode full")]
pub struct BenchArgs {
    /// `134m` (768 hidden, 12 layers, 12 heads, 2048 MLP, 32k vocab), `1.1b` (TinyLlama: 2048 hidden, 22
    /// layers, 32 heads, 4 KV heads, 5632 MLP), `7b` (Llama-2-7B: 4096 hidden, 32 layers, 32 heads, 11008 MLP,
    /// 32k vocab; for a GPU with room for its f32 copy before quantization), `tiny` (a CPU-sized 4-layer model) or `tiny-moe` (`tiny` with
    /// each MLP split into 8 experts of a quarter of its width, top-2: the same active parameters).
    #[arg(long, default_value = "134m")]
    pub model: String,
    /// `full`, `lora` (r = 16, α = 32, all seven projections) or `qlora` (that LoRA on NF4 + double-quantized
    /// base weights).
    #[arg(long, default_value = "full")]
    pub mode: String,
    /// Rows per step (default: the PyTorch table's, 16 for 134m, 8 for 1.1b, 1 for 7b, 2 for tiny).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Tokens per row (default: 1024 for 134m, 2048 for 1.1b and 7b, 128 for tiny).
    #[arg(long)]
    pub seq: Option<usize>,
    /// Untimed steps first (compilation, allocator and caches warm up).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed steps (the report gives their median).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
}

/// One row of the PyTorch table (H200, bf16, SDPA, fused AdamW), for the printout.
struct PytorchFigure {
    model: &'static str,
    mode: &'static str,
    tokens_per_s: f64,
    step_ms: f64,
    peak_gib: f64,
}

const PYTORCH_H200: [PytorchFigure; 4] = [
    PytorchFigure { model: "134m", mode: "full", tokens_per_s: 270_657.0, step_ms: 60.5, peak_gib: 14.1 },
    PytorchFigure { model: "134m", mode: "lora", tokens_per_s: 156_500.0, step_ms: 104.7, peak_gib: 16.6 },
    PytorchFigure { model: "1.1b", mode: "full", tokens_per_s: 54_576.0, step_ms: 300.2, peak_gib: 42.6 },
    PytorchFigure { model: "1.1b", mode: "lora", tokens_per_s: 36_636.0, step_ms: 447.2, peak_gib: 53.3 },
];

/// (config, default batch, default seq)
fn shape(model: &str) -> Result<(DecoderConfig, usize, usize)> {
    Ok(match model {
        "134m" => (DecoderConfig::with_shape(32_000, 768, 2048, 12, 12, 12), 16, 1024),
        "1.1b" => (DecoderConfig::with_shape(32_000, 2048, 5632, 22, 32, 4), 8, 2048),
        "7b" => (DecoderConfig::with_shape(32_000, 4096, 11008, 32, 32, 32), 1, 2048),
        "tiny" => (DecoderConfig::with_shape(2048, 256, 688, 4, 4, 2), 2, 128),
        // `tiny` with each MLP split into 8 experts of 344, top-2: the same active parameters per token
        "tiny-moe" => {
            let mut config = DecoderConfig::with_shape(2048, 256, 688, 4, 4, 2);
            config.moe = Some(Moe {
                router: RouterSpec {
                    experts: 8,
                    top_k: 2,
                    normalize: true,
                    scaling: 1.0,
                    selection: Selection::Greedy,
                },
                expert_intermediate_size: 344,
                sparse_layers: vec![true; 4],
                shared_expert: None,
                aux_loss: AuxLoss::LoadBalancing { coef: 0.02 },
            });
            config.names = crate::models::mixtral::NAMES;
            (config, 2, 128)
        }
        other => bail!("unknown bench model `{other}` (allowed: 134m, 1.1b, 7b, tiny, tiny-moe)"),
    })
}

/// What a run measured.
pub struct BenchReport {
    pub parameters: usize,
    pub tokens_per_step: usize,
    /// Median step time over the timed steps, seconds.
    pub median_step_s: f64,
    pub losses: Vec<f64>,
    /// Where the backend keeps the base: dense and 4-bit bytes per parameter (`Decoder::frozen_base_bytes`).
    pub frozen: FrozenBaseBytes,
}

/// Time `warmup + steps` training steps; `after_setup` runs once the model is built (the GPU gives back the
/// buffers the dense weights left behind, so the peak reflects the step), `sync` waits for the device (a no-op
/// on the CPU) so a step's time covers its work, and `after_step` samples memory.
pub fn run<B: Backend>(
    b: &B,
    args: &BenchArgs,
    after_setup: &dyn Fn(),
    sync: &dyn Fn(),
    after_step: &mut dyn FnMut(),
) -> Result<BenchReport> {
    let (config, default_batch, default_seq) = shape(&args.model)?;
    let (lora, quantized) = match args.mode.as_str() {
        "full" => (false, false),
        "lora" => (true, false),
        "qlora" => (true, true),
        other => bail!("unknown bench mode `{other}` (allowed: full, lora, qlora)"),
    };
    let (batch, seq) = (args.batch.unwrap_or(default_batch), args.seq.unwrap_or(default_seq));
    let vocab = config.vocab_size;
    let mut model: Decoder<B> = Decoder::random(b, config, 1);
    let parameters: usize = model.trainable_parameters_mut().iter().map(|(_, t)| b.dims(t).0 * b.dims(t).1).sum();
    if quantized {
        for (_, linear) in model.linears_mut() {
            linear.quantize(b, crate::quant::QuantType::Nf4, true)?; // NF4 + double quantization, as QLoRA
        }
    }
    if lora {
        let config =
            LoraConfig { r: 16, lora_alpha: 32.0, target_modules: TargetModules::AllLinear, ..LoraConfig::default() };
        init_adapters(&mut model, b, &config, &mut Rng::new(2))?;
    }
    let frozen = model.frozen_base_bytes(b);
    after_setup();
    let shapes: Vec<(usize, usize)> = model.trainable_parameters_mut().iter().map(|(_, t)| b.dims(t)).collect();
    let mut opt = AdamW::new_on(b, AdamWConfig::default(), &shapes);

    let tokens = batch * seq;
    let mut rng = Rng::new(3);
    let ids: Vec<u32> = (0..tokens).map(|_| rng.below(vocab as u64) as u32).collect();
    let positions: Vec<usize> = (0..tokens).map(|t| t % seq).collect();
    let segments: Vec<u32> = (0..tokens).map(|t| (t / seq) as u32).collect();
    // next-token targets within each row; a row's last token predicts nothing (weight 0), as HF's shift does
    let targets: Vec<u32> = (0..tokens).map(|t| if (t + 1) % seq == 0 { 0 } else { ids[t + 1] }).collect();
    let supervised = (batch * (seq - 1)) as f32;
    let coefficients: Vec<f32> = (0..tokens).map(|t| if (t + 1) % seq == 0 { 0.0 } else { 1.0 / supervised }).collect();

    let (mut times, mut losses) = (Vec::new(), Vec::new());
    for step in 0..args.warmup + args.steps {
        sync();
        let started = Instant::now();
        let seq_in = Sequence { ids: &ids, positions: &positions, segment_ids: Some(&segments) };
        let loss = training_step(b, &mut model, &mut opt, seq_in, &targets, &coefficients, 1e-4)?;
        sync();
        after_step();
        if step >= args.warmup {
            times.push(started.elapsed().as_secs_f64());
        }
        losses.push(loss);
    }
    times.sort_by(f64::total_cmp);
    let median_step_s = if times.is_empty() { f64::NAN } else { times[times.len() / 2] };
    Ok(BenchReport { parameters, tokens_per_step: tokens, median_step_s, losses, frozen })
}

// ANCHOR: training_step
/// One optimizer step as the trainer takes it, without accumulation: forward, the loss's gradient, backward,
/// then clipping to norm 1 and AdamW at `lr` in one backend call whose report brings the token losses back
/// (on the GPU the step's one blocking read).
#[allow(clippy::too_many_arguments)]
pub fn training_step<B: Backend>(
    b: &B,
    model: &mut Decoder<B>,
    opt: &mut AdamW<B::Tensor>,
    seq: Sequence<'_>,
    targets: &[u32],
    coefficients: &[f32],
    lr: f32,
) -> Result<f64> {
    let r = deferred_token_loss(model, b, seq, targets, coefficients, None)?;
    let mut grads = r.grads;
    let mut params = model.trainable_parameters_mut();
    let decay = vec![true; params.len()];
    let report = opt.clipped_step_on_named(b, &mut params, &mut grads, lr, &decay, 1.0, &[&r.token_losses]);
    let loss = weighted_loss(&report.token_losses[0], coefficients, r.aux_weight * r.aux_loss.unwrap_or(0.0))?;
    match report.outcome {
        Outcome::Updated => Ok(loss),
        other => bail!("the step was not taken: {other:?} (loss {loss})"),
    }
}
// ANCHOR_END: training_step

/// The report as a table, with PyTorch's H200 figure for the same shape beside ours when there is one.
/// `peak_flops`: the device's dense peak for the precision used (MFU = 6·N·tokens/s ÷ peak, the convention
/// of the PyTorch table; for LoRA it still counts N as the base model's parameters).
pub fn print_report(
    args: &BenchArgs,
    device: &str,
    report: &BenchReport,
    peak_memory_gib: Option<f64>,
    peak_flops: Option<f64>,
) {
    let tokens_per_s = report.tokens_per_step as f64 / report.median_step_s;
    let mfu = peak_flops.map(|p| 6.0 * report.parameters as f64 * tokens_per_s / p);
    println!(
        "model {} ({:.1} M parameters), {}, {} tokens per step, on {device}",
        args.model,
        report.parameters as f64 / 1e6,
        args.mode,
        report.tokens_per_step
    );
    println!("{:<10} {:>12} {:>10} {:>8} {:>10}", "", "tokens/s", "step ms", "MFU", "peak GiB");
    let fmt_opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".into());
    println!(
        "{:<10} {:>12.0} {:>10.1} {:>8} {:>10}",
        "mftcoder",
        tokens_per_s,
        report.median_step_s * 1e3,
        fmt_opt(mfu, &|m| format!("{:.1}%", 100.0 * m)),
        fmt_opt(peak_memory_gib, &|g| format!("{g:.1}"))
    );
    let default_shape = shape(&args.model).map(|(_, b, s)| b * s).ok() == Some(report.tokens_per_step);
    if let Some(p) = PYTORCH_H200.iter().find(|p| p.model == args.model && p.mode == args.mode && default_shape) {
        println!(
            "{:<10} {:>12.0} {:>10.1} {:>8} {:>10.1}   (H200, bf16, SDPA, fused AdamW; gpu.md)",
            "pytorch", p.tokens_per_s, p.step_ms, "", p.peak_gib
        );
        println!("ratio      {:>11.2}×", tokens_per_s / p.tokens_per_s);
    }
    if args.mode != "full" {
        let (dense, packed) = (&report.frozen.dense, &report.frozen.packed);
        println!(
            "frozen base: {:.3} bytes/param dense ({:.1} M), {:.3} bytes/param 4-bit ({:.1} M), in backend memory",
            dense.per_param(),
            dense.params as f64 / 1e6,
            packed.per_param(),
            packed.params as f64 / 1e6
        );
    }
    let first = report.losses.first().copied().unwrap_or(f64::NAN);
    let last = report.losses.last().copied().unwrap_or(f64::NAN);
    println!("loss {first:.4} → {last:.4} over {} steps (random tokens: ≈ ln(vocab) throughout)", report.losses.len());
}
