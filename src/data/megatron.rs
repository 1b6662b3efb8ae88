//! Megatron's GPT sample index over an indexed dataset (MFTCoder's `.bin` path, `GPT2PromptDataset`):
//! the documents are split train/valid/test, shuffled, laid end to end, and cut into samples of
//! `seq_length + 1` tokens where consecutive samples share one boundary token; a shuffled index then
//! picks the samples in random order.

use super::indexed::IndexedDataset;
use super::mt19937::Mt19937;
use anyhow::{Result, bail};
use std::ops::Range;

/// `get_train_valid_test_split_`: normalise the three numbers, place boundaries at the running
/// `round(fraction · n)` (Python rounds half to even), then shift them so the last is exactly `n`.
pub fn split_documents(split: [f64; 3], n: usize) -> Result<[Range<usize>; 3]> {
    let sum: f64 = split.iter().sum();
    if sum.is_nan() || sum <= 0.0 {
        bail!("data_split: the three numbers must not all be 0");
    }
    let mut idx = [0i64; 4];
    for i in 0..3 {
        idx[i + 1] = idx[i] + (split[i] / sum * n as f64).round_ties_even() as i64;
    }
    let diff = idx[3] - n as i64;
    for b in idx.iter_mut().skip(1) {
        *b -= diff;
    }
    let r = |a: i64, b: i64| a.max(0) as usize..b.max(a).max(0) as usize;
    Ok([r(idx[0], idx[1]), r(idx[1], idx[2]), r(idx[2], idx[3])])
}

/// The three index arrays of one split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleIndex {
    /// The documents in the order they are laid out (each repeated `num_epochs` times, shuffled).
    pub doc_idx: Vec<u32>,
    /// `(position in doc_idx, token offset)` where each sample starts; `num_samples + 1` entries.
    pub sample_idx: Vec<(u32, u32)>,
    /// The order in which samples are served.
    pub shuffle_idx: Vec<u32>,
    pub seq_length: usize,
}

impl SampleIndex {
    /// Build the index for `documents` of `data` (one generator `RandomState(seed)` shuffles the documents and
    /// then the samples, as `_build_index_mappings` does). Megatron's separate-last-epoch rule for
    /// `num_epochs > 1` is not reproduced: all epochs are shuffled together.
    pub fn build(
        sizes: &[i32],
        documents: Range<usize>,
        seq_length: usize,
        num_epochs: usize,
        seed: u32,
    ) -> Result<Self> {
        if seq_length == 0 || num_epochs == 0 {
            bail!("seq_length and num_epochs must be positive");
        }
        let mut rng = Mt19937::new(seed);
        let mut doc_idx: Vec<u32> = (0..num_epochs).flat_map(|_| documents.clone().map(|d| d as u32)).collect();
        rng.shuffle(&mut doc_idx);
        let tokens_per_epoch: usize = documents.clone().map(|d| sizes[d].max(0) as usize).sum();
        let sample_idx = build_sample_idx(sizes, &doc_idx, seq_length, num_epochs, tokens_per_epoch);
        let mut shuffle_idx: Vec<u32> = (0..sample_idx.len().saturating_sub(1) as u32).collect();
        rng.shuffle(&mut shuffle_idx);
        Ok(SampleIndex { doc_idx, sample_idx, shuffle_idx, seq_length })
    }

    pub fn len(&self) -> usize {
        self.shuffle_idx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shuffle_idx.is_empty()
    }

    /// Sample `j`: the `seq_length + 1` tokens from `sample_idx[shuffle_idx[j]]` through the next entry, inclusive.
    pub fn sample(&self, data: &IndexedDataset, j: usize) -> Vec<u32> {
        let s = self.shuffle_idx[j] as usize;
        let (d0, o0) = (self.sample_idx[s].0 as usize, self.sample_idx[s].1 as usize);
        let (d1, o1) = (self.sample_idx[s + 1].0 as usize, self.sample_idx[s + 1].1 as usize);
        let doc = |i: usize| self.doc_idx[i] as usize;
        if d0 == d1 {
            return data.get_range(doc(d0), o0, o1 - o0 + 1);
        }
        let mut out = data.get_range(doc(d0), o0, data.sizes[doc(d0)] as usize - o0);
        for i in d0 + 1..d1 {
            out.extend(data.get(doc(i)));
        }
        out.extend(data.get_range(doc(d1), 0, o1 + 1));
        out
    }
}

// ANCHOR: sample_idx
/// `build_sample_idx`: walk the document stream in steps of `seq_length` tokens; each sample needs
/// `seq_length + 1` tokens, so it ends on the token where the next one starts.
pub fn build_sample_idx(
    sizes: &[i32],
    doc_idx: &[u32],
    seq_length: usize,
    num_epochs: usize,
    tokens_per_epoch: usize,
) -> Vec<(u32, u32)> {
    let num_samples = (num_epochs * tokens_per_epoch).saturating_sub(1) / seq_length;
    let mut out = Vec::with_capacity(num_samples + 1);
    let (mut doc_i, mut offset) = (0usize, 0i64);
    out.push((0, 0));
    for _ in 0..num_samples {
        let mut remaining = seq_length as i64 + 1;
        while remaining != 0 {
            let doc_len = sizes[doc_idx[doc_i] as usize] as i64 - offset;
            remaining -= doc_len;
            if remaining <= 0 {
                offset += remaining + doc_len - 1;
                remaining = 0;
            } else {
                doc_i += 1;
                offset = 0;
            }
        }
        out.push((doc_i as u32, offset as u32));
    }
    out
}
// ANCHOR_END: sample_idx

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_round_half_to_even_and_end_at_n() {
        assert_eq!(split_documents([98.0, 2.0, 0.0], 10).unwrap(), [0..10, 10..10, 10..10]); // round(9.8)=10, round(.2)=0
        assert_eq!(split_documents([50.0, 50.0, 0.0], 5).unwrap(), [0..3, 3..5, 5..5]); // round(2.5)=2, 2+2=4 → every boundary shifts +1
        assert_eq!(split_documents([1.0, 1.0, 1.0], 3).unwrap(), [0..1, 1..2, 2..3]);
        assert!(split_documents([0.0; 3], 3).is_err());
    }

    #[test]
    fn sample_idx_windows_share_one_boundary_token() {
        // Three documents of 3, 2, 4 tokens in order: stream length 9, seq_length 3 → (9-1)//3 = 2 samples.
        let sizes = [3, 2, 4];
        let idx = build_sample_idx(&sizes, &[0, 1, 2], 3, 1, 9);
        // sample 0 = stream[0..=3] ends at doc 1 offset 0; sample 1 = stream[3..=6] ends at doc 2 offset 1.
        assert_eq!(idx, vec![(0, 0), (1, 0), (2, 1)]);
    }
}
