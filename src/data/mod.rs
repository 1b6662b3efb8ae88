//! MFTCoder's data pipeline: from jsonl records to training batches, and to Megatron `.bin/.idx` files.
//!
//! ```text
//! jsonl line ──records──▶ Record ──template──▶ segments ──encode──▶ ids + loss mask
//!     ──pack──▶ samples of ≤ seq_length+1 tokens ──dataset──▶ per task: shuffle, split ──blend──▶ order
//!     ──collate──▶ Batch { input_ids, labels, loss_mask, task_ids, segment_ids, position_ids }
//! ```
//!
//! The library API the trainer uses:
//!
//! ```no_run
//! use mftcoder::data::{CollateOptions, DataConfig, MultiTaskDataset, PaddingMode};
//! use mftcoder::io::tokenizer::Tokenizer;
//! # fn main() -> anyhow::Result<()> {
//! let tokenizer = Tokenizer::load("model_dir".as_ref())?;
//! let cfg = DataConfig {
//!     data_paths: mftcoder::data::parse_data_paths("[data/code_exercise,data/code_completion]")?,
//!     seq_length: 2048,
//!     padding_mode: PaddingMode::Pack,
//!     data_split: "95,5,0".parse()?,
//!     ..DataConfig::default() // sft, default role markers, seed 1234, drop over-long records
//! };
//! let ds = MultiTaskDataset::build(&tokenizer, &cfg)?;
//! let order = ds.epoch_order(42, 0); // a seeded permutation of the blended training samples
//! let batch = ds.train_batch(&order[..8], CollateOptions::default());
//! // batch.input_ids / labels / loss_mask / segment_ids / position_ids: [B, T]; batch.task_ids: [B]
//! let valid = ds.valid_batches(0, 8, CollateOptions::default()); // task 0's validation batches
//! # let _ = (batch, valid); Ok(()) }
//! ```
//!
//! Where this differs from MFTCoder on purpose (reference §10): a pack never mixes tasks and the last pack is
//! kept; packed samples carry segment ids, and the collator masks labels across segments and restarts
//! positions (a block-diagonal causal mask makes them independent); over-long records can be truncated;
//! duplicate task names are an error; a bad record stops the run with `file:line` (or is counted and skipped);
//! an EOS id of 0 is accepted. `DataConfig::mftcoder_quirks` and `CollateOptions { isolate_samples: false }`
//! restore the original behaviour, which the golden tests compare against a Python transcription.

pub mod blend;
pub mod cli;
pub mod collate;
pub mod dataset;
pub mod encode;
pub mod indexed;
pub mod megatron;
pub mod mt19937;
pub mod offline;
pub mod pack;
pub mod records;
pub mod template;

pub use blend::{DataSplit, blend_by_count, blending_indices};
pub use collate::{Batch, CollateOptions, collate};
pub use dataset::{DataConfig, MultiTaskDataset, Sample, Task, TaskStats, load_tasks, parse_data_paths};
pub use encode::{Encoded, Encoder, resolve_eos};
pub use indexed::{IndexedDataset, IndexedWriter, TokenDtype};
pub use pack::{Overlong, PaddingMode, Window, Windower};
pub use records::{Record, parse_line};
pub use template::{RoleMarkers, TokenizeMode};

#[cfg(test)]
pub(crate) mod testutil {
    use crate::io::tokenizer::Tokenizer;
    use std::path::PathBuf;

    /// The byte-level BPE the project trains itself (`fixtures/golden/common.py`, 300 tokens, `<unk>` `<s>`
    /// `</s>` special, EOS `</s>`): committed, so these tests need no download.
    pub fn tiny_tokenizer_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tokenizer")
    }

    pub fn tiny_tokenizer() -> Tokenizer {
        Tokenizer::load(&tiny_tokenizer_dir()).expect("fixtures/tokenizer/tokenizer.json")
    }

    /// A fresh, empty directory under the system temp dir.
    pub fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mftcoder-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
