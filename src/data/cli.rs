//! `mftcoder encode` (inspect the training samples) and `mftcoder tokenize` (jsonl → Megatron `.bin/.idx`).

use super::dataset::{DataConfig, load_tasks, parse_data_paths};
use super::offline::tokenize_to_bin;
use super::pack::{Overlong, PaddingMode};
use super::template::{RoleMarkers, TokenizeMode};
use crate::io::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use clap::Args;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  mftcoder encode --tokenizer fixtures/tokenizer --data fixtures/data/tasks/pairs.jsonl --seq-length 64 --unpadded
  mftcoder encode --tokenizer .cache/smollm2-135m-instruct --data book/examples/own-data/data/docstring --seq-length 256 --padding-mode pack")]
pub struct EncodeArgs {
    /// Directory with tokenizer.json (and tokenizer_config.json / config.json for the EOS), or the file itself.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Data paths, one task each: `*.jsonl` files or directories searched recursively; comma-separated,
    /// `[a,b]` also accepted.
    #[arg(long)]
    pub data: String,
    /// Tokens per sample after the label shift; samples hold `seq_length + 1` tokens.
    #[arg(long)]
    pub seq_length: usize,
    /// How samples fill `seq_length`: one per row padded, several packed per row, or one concatenated stream
    /// (MFTCoder's `padding_mode`).
    #[arg(long, default_value = "padding", value_parser = ["padding", "pack", "concat"])]
    pub padding_mode: String,
    /// `sft`: loss on the bot turns only; `pretrain`: on every token (MFTCoder's `tokenize_mode`).
    #[arg(long, default_value = "sft", value_parser = ["sft", "pretrain"])]
    pub tokenize_mode: String,
    /// Role markers as JSON: `{"system": "...", "user": "...", "assistant": "..."}` (default: MFTCoder's
    /// `<s>system`, `<s>human`, `<s>bot`).
    #[arg(long)]
    pub role_markers: Option<String>,
    /// Keep the first `seq_length + 1` tokens of a longer record instead of dropping it.
    #[arg(long)]
    pub truncate: bool,
    /// Skip malformed records (counted in the summary) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_records: bool,
    /// Reproduce MFTCoder's pack/concat exactly: one buffer across tasks, the last one lost.
    #[arg(long)]
    pub mftcoder_quirks: bool,
    /// Print samples without their padding (by default they are padded to `seq_length + 1`, as MFTCoder stores them).
    #[arg(long)]
    pub unpadded: bool,
    /// Write the samples to this file (atomically) instead of standard output (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One line of `encode`'s output, keys in this order.
#[derive(serde::Serialize)]
struct SampleLine<'a> {
    task: &'a str,
    task_id: usize,
    input_ids: &'a [u32],
    loss_mask: &'a [u8],
    segment_ids: &'a [u32],
}

/// Print one JSON object per training sample (stdout or `--out`), then a per-task summary on stderr.
pub fn encode(args: EncodeArgs) -> Result<()> {
    let tokenizer = Tokenizer::load(&args.tokenizer)?;
    let cfg = DataConfig {
        data_paths: parse_data_paths(&args.data)?,
        seq_length: args.seq_length,
        padding_mode: args.padding_mode.parse::<PaddingMode>()?,
        tokenize_mode: args.tokenize_mode.parse::<TokenizeMode>()?,
        role_markers: args.role_markers.as_deref().map(RoleMarkers::from_json).transpose()?,
        overlong: if args.truncate { Overlong::Truncate } else { Overlong::Drop },
        skip_bad_records: args.skip_bad_records,
        mftcoder_quirks: args.mftcoder_quirks,
        ..DataConfig::default()
    };
    let (tasks, pad_id) = load_tasks(&tokenizer, &cfg)?;
    let l = cfg.seq_length + 1;
    let write_all = |w: &mut dyn Write| -> Result<()> {
        for task in &tasks {
            for s in &task.samples {
                let win = if args.unpadded { s.window.clone() } else { s.window.padded(l, pad_id) };
                let line = SampleLine {
                    task: &task.name,
                    task_id: task.id,
                    input_ids: &win.ids,
                    loss_mask: &win.loss_mask,
                    segment_ids: &win.segment_ids,
                };
                writeln!(w, "{}", serde_json::to_string(&line)?)?;
            }
        }
        w.flush()?;
        Ok(())
    };
    match &args.out {
        Some(path) => {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(format!(".tmp{}", std::process::id()));
            let tmp = PathBuf::from(tmp);
            let file = std::fs::File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
            let written = write_all(&mut BufWriter::new(file));
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                return Err(e.context(format!("{}: cannot write", path.display())));
            }
            std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", path.display()))?;
        }
        None => {
            let stdout = std::io::stdout();
            match write_all(&mut BufWriter::new(stdout.lock())) {
                // A closed pipe (`| head`) is not an error worth a message.
                Err(e)
                    if e.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => {}
                r => r?,
            }
        }
    }
    for t in &tasks {
        let s = &t.stats;
        eprintln!(
            "task {} (id {}): {} records in {} files → {} samples, {} tokens, {} supervised; {} dropped (too long), {} truncated, {} bad records skipped",
            t.name,
            t.id,
            s.records,
            s.files,
            s.samples,
            s.tokens,
            s.supervised_tokens,
            s.dropped,
            s.truncated,
            s.bad_records
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  mftcoder tokenize --tokenizer fixtures/tokenizer --data fixtures/data/pretrain --out out/tokenized/pretrain
  mftcoder tokenize --tokenizer .cache/smollm2-135m-instruct --data book/examples/own-data/data/docstring --out out/tokenized/docstring --threads 2")]
pub struct TokenizeArgs {
    /// Directory with tokenizer.json (and tokenizer_config.json / config.json for the EOS).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// A directory searched recursively for `*.jsonl` (or one `.jsonl` file).
    #[arg(long)]
    pub data: PathBuf,
    /// Output prefix: writes `PREFIX_input_ids.bin` and `PREFIX_input_ids.idx`.
    #[arg(long)]
    pub out: PathBuf,
    /// Skip malformed records (counted) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_records: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Offline tokenization into MMIDIDX v1 files, with a progress bar on a terminal and a summary on stderr.
pub fn tokenize(args: TokenizeArgs) -> Result<()> {
    let tokenizer = Tokenizer::load(&args.tokenizer)?;
    let run =
        || tokenize_to_bin(&tokenizer, &args.data, &args.out, args.skip_bad_records, std::io::stderr().is_terminal());
    let start = Instant::now();
    let stats = match args.threads {
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
            .context("cannot start threads")?
            .install(run)?,
        None => run()?,
    };
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{} files → {} documents, {} tokens (dtype code {}), {} records skipped; {:.2} s, {:.0} tokens/s\n{}\n{}",
        stats.files,
        stats.documents,
        stats.tokens,
        stats.dtype_code,
        stats.skipped,
        secs,
        stats.tokens as f64 / secs.max(1e-9),
        stats.bin.display(),
        stats.idx.display()
    );
    Ok(())
}
