//! A run's numbers: one JSON line per optimizer step and per evaluation in `output_dir/metrics.jsonl`, and,
//! when the config sets `tb_dir`, the same numbers as TensorBoard scalars there. The scalars are read off the
//! JSON line itself, so the two always agree (TensorBoard stores f32).
//!
//! Tags follow what the user of MFTCoder sees: `train` and `pretrain` use MFTCoder's own (`Loss/train`,
//! `{task}_loss/train`, `{task}_coba_weight/train`, `Loss/valid`, `Perplexity/valid`, `{task}_loss/valid`,
//! `Epochs`) plus `LearningRate/train`, `GradNorm/train`, `TokensPerSecond/train` and, for a mixture of
//! experts, `AuxLoss/train`; `dpo` uses the Hugging Face Trainer's (`train/loss`, `train/learning_rate`,
//! `train/rewards/margins`, `eval/loss`, …), as MFTCoder's xxpo runs report through TRL.

use crate::train::tensorboard::EventWriter;
use anyhow::{Context, Result};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Which tag names a run's scalars get.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tags {
    /// MFTCoder's trainer (`train`, `pretrain`); `coba`: also each task's share of the loss weights.
    Mft { coba: bool },
    /// The Hugging Face Trainer (`dpo`): `train/<key>`, and `eval/<key>` for `eval_<key>`.
    Trainer,
}

pub struct MetricsLog {
    jsonl: std::fs::File,
    path: PathBuf,
    tensorboard: Option<EventWriter>,
    tags: Tags,
}

impl MetricsLog {
    /// Open `output_dir/metrics.jsonl` for a run that has `completed_steps` behind it (lines of later steps,
    /// which a resumed run writes again, are dropped), and a new event file in `tb_dir` when there is one.
    pub fn open(output_dir: &Path, tb_dir: Option<&Path>, completed_steps: usize, tags: Tags) -> Result<MetricsLog> {
        let path = output_dir.join("metrics.jsonl");
        truncate_after(&path, completed_steps)?;
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        let first_step = if completed_steps == 0 { 0 } else { completed_steps as u64 + 1 };
        let tensorboard = tb_dir.map(|dir| EventWriter::create(dir, first_step)).transpose()?;
        Ok(MetricsLog { jsonl, path, tensorboard, tags })
    }

    /// Append `line` to metrics.jsonl and its scalars to the event file, both on disk when this returns.
    pub fn record(&mut self, line: &Value) -> Result<()> {
        writeln!(self.jsonl, "{line}")
            .and_then(|()| self.jsonl.flush())
            .with_context(|| format!("{}: cannot write", self.path.display()))?;
        if let Some(tb) = self.tensorboard.as_mut() {
            let step = line["step"].as_u64().unwrap_or(0);
            tb.scalars(step, &scalars(line, self.tags))?;
        }
        Ok(())
    }
}

// ANCHOR: scalars
/// The TensorBoard scalars of one metrics line, in a fixed order; fields that are absent or not numbers
/// (`aux_loss: null` of a dense model) give none.
pub fn scalars(line: &Value, tags: Tags) -> Vec<(String, f32)> {
    let mut out = Vec::new();
    let mut push = |tag: String, v: &Value| {
        if let Some(x) = v.as_f64() {
            out.push((tag, x as f32));
        }
    };
    match tags {
        Tags::Mft { coba } => {
            for (field, tag) in [
                ("loss", "Loss/train"),
                ("lr", "LearningRate/train"),
                ("grad_norm", "GradNorm/train"),
                ("aux_loss", "AuxLoss/train"),
                ("tokens_per_s", "TokensPerSecond/train"),
                ("eval_loss", "Loss/valid"),
                ("perplexity", "Perplexity/valid"),
            ] {
                push(tag.into(), &line[field]);
            }
            if line.get("lr").is_some() {
                push("Epochs".into(), &line["epoch"]);
            }
            for (field, suffix) in [("task_loss", "train"), ("eval_task_loss", "valid")] {
                for (task, v) in line[field].as_object().into_iter().flatten() {
                    push(format!("{task}_loss/{suffix}"), v);
                }
            }
            if let (true, Some(weights)) = (coba, line["task_weights"].as_object()) {
                // MFTCoder logs each task's share w_k / Σ w (CoBa's weights are all 1 during its warm-up)
                let total: f64 = weights.values().filter_map(Value::as_f64).sum();
                for (task, w) in weights {
                    if let Some(w) = w.as_f64() {
                        push(format!("{task}_coba_weight/train"), &Value::from(w / total));
                    }
                }
            }
        }
        Tags::Trainer => {
            for (key, v) in line.as_object().into_iter().flatten() {
                let tag = match key.as_str() {
                    "step" | "elapsed_s" => continue,
                    "lr" => "train/learning_rate".to_owned(),
                    k => match k.strip_prefix("eval_") {
                        Some(rest) => format!("eval/{rest}"),
                        None => format!("train/{k}"),
                    },
                };
                push(tag, v);
            }
        }
    }
    out
}
// ANCHOR_END: scalars

/// On resume, drop metric lines of steps after the checkpoint (they will be recomputed identically).
fn truncate_after(path: &Path, completed: usize) -> Result<()> {
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= completed)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    crate::io::write_atomic(path, body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mft_tags_are_mftcoders() {
        let line = json!({"step": 3, "epoch": 0, "lr": 1e-3, "loss": 2.0, "task_loss": {"add": 1.5},
            "grad_norm": 0.5, "aux_loss": null, "tokens_per_s": 10.0, "elapsed_s": 1.0,
            "task_weights": {"add": 1.0, "rev": 3.0}});
        let tags: Vec<String> = scalars(&line, Tags::Mft { coba: true }).into_iter().map(|(t, _)| t).collect();
        assert_eq!(
            tags,
            [
                "Loss/train",
                "LearningRate/train",
                "GradNorm/train",
                "TokensPerSecond/train",
                "Epochs",
                "add_loss/train",
                "add_coba_weight/train",
                "rev_coba_weight/train"
            ]
        );
        let shares = scalars(&line, Tags::Mft { coba: true });
        assert_eq!(shares[7].1, 0.75);
        assert_eq!(scalars(&line, Tags::Mft { coba: false }).len(), 6, "no weights without CoBa");
        let eval = json!({"step": 3, "eval_loss": 1.0, "perplexity": 2.7, "eval_task_loss": {"add": 0.9}});
        let tags: Vec<String> = scalars(&eval, Tags::Mft { coba: false }).into_iter().map(|(t, _)| t).collect();
        assert_eq!(tags, ["Loss/valid", "Perplexity/valid", "add_loss/valid"]);
    }

    #[test]
    fn trainer_tags_are_hf_trainers() {
        let line = json!({"step": 1, "epoch": 0, "lr": 5e-4, "loss": 0.69, "rewards/margins": 0.1, "elapsed_s": 2.0});
        let mut tags: Vec<String> = scalars(&line, Tags::Trainer).into_iter().map(|(t, _)| t).collect();
        tags.sort();
        assert_eq!(tags, ["train/epoch", "train/learning_rate", "train/loss", "train/rewards/margins"]);
        let eval = json!({"step": 3, "eval_loss": 0.6, "eval_rewards/accuracies": 1.0});
        let tags: Vec<String> = scalars(&eval, Tags::Trainer).into_iter().map(|(t, _)| t).collect();
        assert_eq!(tags, ["eval/loss", "eval/rewards/accuracies"]);
    }
}
