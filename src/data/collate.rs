//! The collator (`DataCollatorForMFTDataset`): samples → one batch, with the label shift and dynamic padding.
//!
//! Every sample is right-padded (eos id, mask 0, segment 0) to `seq_length + 1`. With dynamic padding the
//! batch is then cut after the last supervised token of its longest row (`max_pos = max_b last_one_pos + 1`);
//! `input_ids = ids[:, :max_pos-1]`, `labels = ids[:, 1:max_pos]`, `loss_mask = mask[:, 1:max_pos]`.
//!
//! Beyond MFTCoder (which passes no attention mask and no positions, so packed samples see each other):
//! with `isolate_samples` a label only counts when it belongs to the same segment as its input token, and
//! `position_ids` restart at 0 at every segment start. A model that attends only within equal `segment_ids`
//! (a block-diagonal causal mask) then trains each packed sample exactly as if it were alone.

use super::dataset::Sample;
use ndarray::Array2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CollateOptions {
    /// Cut the batch after the last supervised token (MFTCoder's `use_dynamic_padding`, default true).
    pub dynamic_padding: bool,
    /// Mask cross-segment labels and restart positions per segment (default true; false = MFTCoder).
    pub isolate_samples: bool,
    /// The legacy `tokenize_mode = "sst"` + `pack` slicing that drops one more token at the end.
    pub sst_pack_trim: bool,
}

impl Default for CollateOptions {
    fn default() -> Self {
        CollateOptions { dynamic_padding: true, isolate_samples: true, sst_pack_trim: false }
    }
}

/// A training batch: `[B, T]` arrays, after the label shift.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub input_ids: Array2<u32>,
    pub labels: Array2<u32>,
    /// 1.0 where `labels[b, t]` is a prediction target.
    pub loss_mask: Array2<f32>,
    /// Segment of each input token (0 = padding); attend only within equal ids.
    pub segment_ids: Array2<u32>,
    pub position_ids: Array2<u32>,
    pub task_ids: Vec<usize>,
}

// ANCHOR: collate
/// Collate samples of at most `seq_length + 1` tokens; `pad_id` is the EOS id.
pub fn collate(samples: &[&Sample], seq_length: usize, pad_id: u32, opts: CollateOptions) -> Batch {
    let l = seq_length + 1;
    let rows: Vec<_> = samples.iter().map(|s| s.window.padded(l, pad_id)).collect();
    // Index of the last supervised token of each row (0 when there is none).
    let last_one = |m: &[u8]| m.iter().rposition(|&x| x != 0).unwrap_or(0);
    let max_pos =
        if opts.dynamic_padding { rows.iter().map(|r| last_one(&r.loss_mask)).max().unwrap_or(0) + 1 } else { l };
    let end = if opts.sst_pack_trim { max_pos.saturating_sub(1) } else { max_pos }; // labels are [1, end)
    let t = end.saturating_sub(1);
    let b = rows.len();
    let mut batch = Batch {
        input_ids: Array2::zeros((b, t)),
        labels: Array2::zeros((b, t)),
        loss_mask: Array2::zeros((b, t)),
        segment_ids: Array2::zeros((b, t)),
        position_ids: Array2::zeros((b, t)),
        task_ids: samples.iter().map(|s| s.task).collect(),
    };
    for (i, r) in rows.iter().enumerate() {
        for j in 0..t {
            let same_segment = r.segment_ids[j + 1] == r.segment_ids[j];
            batch.input_ids[[i, j]] = r.ids[j];
            batch.labels[[i, j]] = r.ids[j + 1];
            let supervised = r.loss_mask[j + 1] != 0 && (same_segment || !opts.isolate_samples);
            batch.loss_mask[[i, j]] = if supervised { 1.0 } else { 0.0 };
            batch.segment_ids[[i, j]] = r.segment_ids[j];
            batch.position_ids[[i, j]] = match j {
                0 => 0,
                _ if opts.isolate_samples && r.segment_ids[j] != r.segment_ids[j - 1] => 0,
                _ => batch.position_ids[[i, j - 1]] + 1,
            };
        }
    }
    batch
}
// ANCHOR_END: collate

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::pack::Window;

    fn sample(task: usize, ids: &[u32], mask: &[u8], segs: &[u32]) -> Sample {
        Sample { task, window: Window { ids: ids.to_vec(), loss_mask: mask.to_vec(), segment_ids: segs.to_vec() } }
    }

    #[test]
    fn dynamic_padding_cuts_after_the_last_supervised_token() {
        let a = sample(0, &[5, 6, 7, 8, 9], &[0, 0, 1, 1, 0], &[1; 5]);
        let b = sample(1, &[5, 6, 7], &[0, 1, 0], &[1; 3]);
        let batch = collate(&[&a, &b], 7, 2, CollateOptions::default());
        // last_one = 3 and 1 → max_pos 4 → T = 3.
        assert_eq!(batch.input_ids.row(0).to_vec(), vec![5, 6, 7]);
        assert_eq!(batch.labels.row(0).to_vec(), vec![6, 7, 8]);
        assert_eq!(batch.loss_mask.row(0).to_vec(), vec![0.0, 1.0, 1.0]);
        assert_eq!(batch.input_ids.row(1).to_vec(), vec![5, 6, 7]);
        assert_eq!(batch.labels.row(1).to_vec(), vec![6, 7, 2]);
        assert_eq!(batch.loss_mask.row(1).to_vec(), vec![1.0, 0.0, 0.0]);
        assert_eq!(batch.segment_ids.row(1).to_vec(), vec![1, 1, 1]);
        assert_eq!(batch.task_ids, vec![0, 1]);

        let full = collate(&[&a, &b], 7, 2, CollateOptions { dynamic_padding: false, ..Default::default() });
        assert_eq!(full.input_ids.dim(), (2, 7));
        assert_eq!(full.labels.row(1).to_vec(), vec![6, 7, 2, 2, 2, 2, 2]);
        assert_eq!(full.segment_ids.row(1).to_vec(), vec![1, 1, 1, 0, 0, 0, 0]);
        let trimmed = collate(&[&a, &b], 7, 2, CollateOptions { sst_pack_trim: true, ..Default::default() });
        assert_eq!(trimmed.labels.row(0).to_vec(), vec![6, 7]);
    }

    #[test]
    fn packed_samples_get_their_own_positions_and_no_cross_sample_label() {
        // Two pretraining records packed: every token supervised.
        let p = sample(0, &[10, 11, 12, 20, 21], &[1; 5], &[1, 1, 1, 2, 2]);
        let batch = collate(&[&p], 4, 0, CollateOptions::default());
        assert_eq!(batch.position_ids.row(0).to_vec(), vec![0, 1, 2, 0]);
        // The label of token 12 is 20, the first token of the next record: not a target.
        assert_eq!(batch.loss_mask.row(0).to_vec(), vec![1.0, 1.0, 0.0, 1.0]);
        let mft = collate(&[&p], 4, 0, CollateOptions { isolate_samples: false, ..Default::default() });
        assert_eq!(mft.position_ids.row(0).to_vec(), vec![0, 1, 2, 3]);
        assert_eq!(mft.loss_mask.row(0).to_vec(), vec![1.0; 4]);
    }

    #[test]
    fn a_batch_without_targets_is_empty_not_a_panic() {
        let z = sample(0, &[1, 2, 3], &[0, 0, 0], &[1; 3]);
        let batch = collate(&[&z], 4, 0, CollateOptions { sst_pack_trim: true, ..Default::default() });
        assert_eq!(batch.input_ids.dim(), (1, 0));
    }
}
