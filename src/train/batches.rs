//! Where training batches come from — MFTCoder's jsonl tasks or Megatron `.bin/.idx` corpora — and how a
//! `[B, T]` batch becomes the one packed sequence the model runs.

use crate::config::TrainConfig;
use crate::data::{self, Batch, CollateOptions, DataConfig, IndexedDataset, MultiTaskDataset, PaddingMode};
use crate::io::tokenizer::Tokenizer;
use crate::rng::Rng;
use anyhow::{Context, Result, anyhow};
use ndarray::Array2;
use std::path::{Path, PathBuf};

/// Where batches come from: MFTCoder's jsonl tasks, or Megatron `.bin/.idx` corpora (continued pre-training).
pub enum TrainData {
    Sft(MultiTaskDataset),
    Corpus(Corpus),
}

/// Continued pre-training data: one task per `.bin/.idx` prefix, Megatron's sample index over each.
pub struct Corpus {
    pub names: Vec<String>,
    sets: Vec<(IndexedDataset, data::megatron::SampleIndex, data::megatron::SampleIndex)>,
    order: Vec<(usize, usize)>,
    seq_length: usize,
}

impl Corpus {
    pub fn open(prefixes: &[PathBuf], seq_length: usize, split: [f64; 3], seed: u32) -> Result<Self> {
        let mut sets = Vec::new();
        let mut names = Vec::new();
        for prefix in prefixes {
            // MFTCoder's bin path: `data_paths` name prefixes; the token ids live in `{prefix}_input_ids.bin/.idx`
            let mut ids_prefix = prefix.as_os_str().to_owned();
            ids_prefix.push("_input_ids");
            let ds = IndexedDataset::open(Path::new(&ids_prefix))?;
            let [train, valid, _] = data::megatron::split_documents(split, ds.len())?;
            let train = data::megatron::SampleIndex::build(&ds.sizes, train, seq_length, 1, seed)?;
            let valid = data::megatron::SampleIndex::build(&ds.sizes, valid, seq_length, 1, seed)?;
            names.push(prefix.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            sets.push((ds, train, valid));
        }
        let counts: Vec<usize> = sets.iter().map(|(_, t, _)| t.len()).collect();
        Ok(Corpus { names, order: data::blend_by_count(&counts), sets, seq_length })
    }

    fn batch(&self, samples: &[(usize, Vec<u32>)]) -> Batch {
        let t = self.seq_length;
        let b = samples.len();
        let mut batch = Batch {
            input_ids: Array2::zeros((b, t)),
            labels: Array2::zeros((b, t)),
            loss_mask: Array2::ones((b, t)),
            segment_ids: Array2::ones((b, t)),
            position_ids: Array2::from_shape_fn((b, t), |(_, j)| j as u32),
            task_ids: samples.iter().map(|(k, _)| *k).collect(),
        };
        for (r, (_, tokens)) in samples.iter().enumerate() {
            for j in 0..t {
                batch.input_ids[[r, j]] = tokens[j];
                batch.labels[[r, j]] = tokens[j + 1];
            }
        }
        batch
    }
}

impl TrainData {
    pub fn task_names(&self) -> &[String] {
        match self {
            TrainData::Sft(d) => &d.task_names,
            TrainData::Corpus(c) => &c.names,
        }
    }

    pub fn train_len(&self) -> usize {
        match self {
            TrainData::Sft(d) => d.train_len(),
            TrainData::Corpus(c) => c.order.len(),
        }
    }

    /// Tokens in the longest training or validation sample (corpus samples are all `seq_length + 1`).
    pub fn longest_sample(&self) -> usize {
        match self {
            TrainData::Sft(d) => d.train.iter().chain(&d.valid).flatten().map(|s| s.window.len()).max().unwrap_or(0),
            TrainData::Corpus(c) => c.seq_length + 1,
        }
    }

    pub fn train_batch(&self, indices: &[usize], opts: CollateOptions) -> Batch {
        match self {
            TrainData::Sft(d) => d.train_batch(indices, opts),
            TrainData::Corpus(c) => {
                let samples: Vec<(usize, Vec<u32>)> = indices
                    .iter()
                    .map(|&i| {
                        let (k, j) = c.order[i];
                        (k, c.sets[k].1.sample(&c.sets[k].0, j))
                    })
                    .collect();
                c.batch(&samples)
            }
        }
    }

    pub fn valid_batches(&self, k: usize, batch_size: usize, opts: CollateOptions) -> Vec<Batch> {
        match self {
            TrainData::Sft(d) => d.valid_batches(k, batch_size, opts),
            TrainData::Corpus(c) => {
                let (ds, _, valid) = &c.sets[k];
                let idx: Vec<usize> = (0..valid.len()).collect();
                idx.chunks(batch_size.max(1))
                    .map(|ch| c.batch(&ch.iter().map(|&j| (k, valid.sample(ds, j))).collect::<Vec<_>>()))
                    .collect()
            }
        }
    }

    /// The seeded order of epoch `epoch`: it depends only on (seed, epoch), which makes resume exact.
    pub fn epoch_order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order: Vec<usize> = (0..self.train_len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        order
    }
}

/// A batch laid out as one sequence for the model: rows become documents (segments) that never attend to
/// each other, positions restart per row (and per packed sample inside a row).
pub struct FlatBatch {
    pub ids: Vec<u32>,
    pub positions: Vec<usize>,
    pub segment_ids: Vec<u32>,
    pub targets: Vec<u32>,
    pub loss_mask: Vec<f32>,
    pub row_len: usize,
    pub task_ids: Vec<usize>,
}

// ANCHOR: flatten
pub fn flatten(batch: &Batch) -> FlatBatch {
    let (rows, t) = batch.input_ids.dim();
    let mut segment_ids = Vec::with_capacity(rows * t);
    for r in 0..rows {
        segment_ids.extend(batch.segment_ids.row(r).iter().map(|&s| ((r as u32) << 16) | (s & 0xFFFF)));
    }
    FlatBatch {
        ids: batch.input_ids.iter().copied().collect(),
        positions: batch.position_ids.iter().map(|&p| p as usize).collect(),
        segment_ids,
        targets: batch.labels.iter().copied().collect(),
        loss_mask: batch.loss_mask.iter().copied().collect(),
        row_len: t,
        task_ids: batch.task_ids.clone(),
    }
}
// ANCHOR_END: flatten

impl FlatBatch {
    /// MFTCoder's collator mask for the MoE aux loss: in each row, the input tokens up to the last supervised
    /// one (`attention_mask[b, t] = t ≤ last_one_pos[b]`, with `last_one_pos` indexed before the label shift).
    pub fn router_mask(&self) -> Vec<f32> {
        let n = self.row_len;
        self.loss_mask
            .chunks(n)
            .flat_map(|row| {
                let last_one = row.iter().rposition(|&m| m != 0.0).map_or(0, |j| j + 1);
                (0..n).map(move |t| if t <= last_one { 1.0 } else { 0.0 })
            })
            .collect()
    }
}

/// Load the data a config names.
pub fn load_data(cfg: &TrainConfig, tokenizer: &Tokenizer) -> Result<TrainData> {
    let paths: Vec<PathBuf> = cfg.data_paths.iter().map(PathBuf::from).collect();
    let split: data::DataSplit = cfg.data_split.parse().map_err(|e| anyhow!("field `data_split`: {e}"))?;
    if cfg.load_raw_dataset {
        let role_markers = match &cfg.role_markers {
            Some(v) => Some(data::RoleMarkers::from_json(&v.to_string()).context("field `role_markers`")?),
            None => None,
        };
        let dc = DataConfig {
            data_paths: paths,
            seq_length: cfg.seq_length,
            padding_mode: cfg.padding_mode.parse::<PaddingMode>().map_err(|e| anyhow!("field `padding_mode`: {e}"))?,
            tokenize_mode: cfg.tokenize_mode.parse().map_err(|e| anyhow!("field `tokenize_mode`: {e}"))?,
            role_markers,
            data_split: split,
            seed: cfg.seed as u32,
            overlong: if cfg.truncate { data::Overlong::Truncate } else { data::Overlong::Drop },
            skip_bad_records: cfg.skip_bad_records,
            mftcoder_quirks: false,
        };
        Ok(TrainData::Sft(MultiTaskDataset::build(tokenizer, &dc)?))
    } else {
        let fractions = [split.train, split.valid, split.test];
        Ok(TrainData::Corpus(Corpus::open(&paths, cfg.seq_length, fractions, cfg.seed as u32)?))
    }
}
