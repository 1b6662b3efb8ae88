//! `mftcoder train`, `pretrain` and `dpo`: read the config, print its notices, run, report.

use crate::cli::DeviceArgs;
use crate::config::TrainConfig;
use crate::on_backend;
use crate::train::preference::{self, PreferenceConfig};
use crate::train::trainer;
use anyhow::Result;
use std::path::PathBuf;

pub const TRAIN_HELP: &str = "The config: an MFTCoder MftTrainArgs JSON file. `mftcoder config --explain` lists \
every field (meaning, default, allowed values, what this project does with it); `mftcoder config --example \
lora|qlora|full|coba` prints a ready one.

Examples:
  mftcoder train --config book/examples/own-data/config.json
  mftcoder train --config book/examples/own-data/config-full.json --overwrite-output-dir";

pub const PRETRAIN_HELP: &str = "The config: an MFTCoder MptTrainArgs JSON file (`load_raw_dataset: false` reads the \
`.bin/.idx` prefixes `mftcoder tokenize` writes). `mftcoder config --explain` lists every field; `mftcoder config \
--example pretrain` prints a ready one.

Examples:
  mftcoder tokenize --tokenizer .cache/smollm2-135m-instruct --data book/examples/own-data/data/docstring --out out/tokenized/docstring
  mftcoder pretrain --config pretrain.json --quiet";

pub const DPO_HELP: &str = "The config: MFTCoder's xxpo config (XXPOTrainArgs, xxpo/xxpo_arguments.py): `xxpo` dpo \
or orpo, `beta`, `rpo_alpha` (RPO), LoRA / QLoRA / full parameters by `peft_type`. `mftcoder config --explain` \
lists every field; `mftcoder config --example dpo` prints a ready one.

Examples:
  mftcoder dpo --config book/examples/preference/config.json";

#[derive(clap::Args)]
pub struct TrainArgs {
    /// JSON config with MFTCoder's field names (`MftTrainArgs` / `MptTrainArgs`; `mftcoder config --explain`).
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args)]
pub struct DpoArgs {
    /// JSON config with the field names of MFTCoder's xxpo config (`XXPOTrainArgs`; `mftcoder config --explain`).
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// When `output_dir` holds another run (another config, base model or data), remove that run's files
    /// and start over instead of stopping (transformers' `overwrite_output_dir`).
    #[arg(long)]
    pub overwrite_output_dir: bool,
}

/// `mftcoder train` (`pretrain`: continued pre-training, every parameter).
pub fn train(args: TrainArgs, pretrain: bool) -> Result<()> {
    let loaded = TrainConfig::from_file(&args.config)?;
    for notice in &loaded.notices {
        eprintln!("note: {notice}");
    }
    let mut cfg = loaded.config;
    if pretrain {
        cfg.peft_type = None; // continued pre-training trains every parameter (MptTrainArgs has no PEFT fields)
    }
    if let Some(device) = &args.run.device.device {
        cfg.device = device.clone();
    }
    if let Some(precision) = &args.run.device.precision {
        cfg.precision = precision.clone();
    }
    let options =
        trainer::RunOptions { quiet: args.run.quiet, pretrain, overwrite_output_dir: args.run.overwrite_output_dir };
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

/// `mftcoder dpo`.
pub fn dpo(args: DpoArgs) -> Result<()> {
    let mut cfg = PreferenceConfig::from_file(&args.config)?;
    for notice in &cfg.notices {
        eprintln!("note: {notice}");
    }
    if let Some(device) = &args.run.device.device {
        cfg.device = device.clone();
    }
    if let Some(precision) = &args.run.device.precision {
        cfg.precision = precision.clone();
    }
    let options = trainer::RunOptions {
        quiet: args.run.quiet,
        pretrain: false,
        overwrite_output_dir: args.run.overwrite_output_dir,
    };
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

fn train_on<B: crate::backend::Backend>(
    b: &B,
    cfg: &TrainConfig,
    options: trainer::RunOptions,
) -> Result<trainer::TrainReport> {
    trainer::train(b, cfg, options)
}

fn dpo_on<B: crate::backend::Backend>(
    b: &B,
    cfg: &PreferenceConfig,
    options: trainer::RunOptions,
) -> Result<preference::PreferenceReport> {
    preference::train_preference(b, cfg, options)
}
