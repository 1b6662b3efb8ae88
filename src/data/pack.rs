//! Length handling (`padding_mode`): turn a stream of encoded records into training samples of at most
//! `L = seq_length + 1` tokens (the extra token is consumed by the label shift).
//!
//! * `padding` — one record per sample; the collator pads it.
//! * `pack` — greedy, order-preserving: records are appended to a buffer until the next one does not fit, then
//!   the buffer becomes a sample. Each record in a pack gets its own segment id, so the batch can give it its
//!   own causal attention block and positions.
//! * `concat` — the records form one token stream, cut into windows of `L` tokens every `seq_length` tokens
//!   (consecutive windows share one boundary token); segment ids mark the records inside each window.
//!
//! Differences from MFTCoder (each a defect listed in the reference, §10): the last pack (and the last concat
//! remainder) is flushed instead of lost; a [`Windower`] serves one task, so a pack never mixes tasks; records
//! longer than `L` may be truncated instead of dropped ([`Overlong::Truncate`]). [`Windower::mftcoder`] keeps
//! the original behaviour for golden comparisons.

use super::encode::Encoded;
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaddingMode {
    Padding,
    Pack,
    Concat,
}

impl std::str::FromStr for PaddingMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "padding" => Ok(PaddingMode::Padding),
            "pack" => Ok(PaddingMode::Pack),
            "concat" => Ok(PaddingMode::Concat),
            other => bail!("padding_mode: `{other}` is not one of padding, pack, concat"),
        }
    }
}

/// What to do with a record longer than `seq_length + 1` tokens (padding and pack modes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// Drop it and count it (MFTCoder drops silently).
    Drop,
    /// Keep its first `seq_length + 1` tokens.
    Truncate,
}

/// One training sample before the label shift, unpadded (`len() <= seq_length + 1`). `segment_ids` number the
/// records inside the sample from 1; padding added later gets segment 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub ids: Vec<u32>,
    pub loss_mask: Vec<u8>,
    pub segment_ids: Vec<u32>,
}

impl Window {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn push_record(&mut self, e: &Encoded, segment: u32) {
        self.ids.extend_from_slice(&e.ids);
        self.loss_mask.extend_from_slice(&e.loss_mask);
        self.segment_ids.extend(std::iter::repeat_n(segment, e.ids.len()));
    }

    /// Right-pad to `len` with `pad_id`, mask 0 and segment 0 (MFTCoder's `pad`).
    pub fn padded(&self, len: usize, pad_id: u32) -> Window {
        let mut w = self.clone();
        let n = len.saturating_sub(w.len());
        w.ids.extend(std::iter::repeat_n(pad_id, n));
        w.loss_mask.extend(std::iter::repeat_n(0, n));
        w.segment_ids.extend(std::iter::repeat_n(0, n));
        w
    }

    pub fn supervised_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m != 0).count()
    }
}

/// The stateful cutter for one task (or, in MFTCoder mode, for the whole run).
pub struct Windower {
    mode: PaddingMode,
    seq_length: usize,
    overlong: Overlong,
    flush: bool,
    buf: Window,
    /// concat: the record number of each buffered token, renumbered per window into segment ids.
    doc: Vec<u64>,
    next_doc: u64,
    pub dropped: usize,
    pub truncated: usize,
}

impl Windower {
    pub fn new(mode: PaddingMode, seq_length: usize, overlong: Overlong) -> Self {
        assert!(seq_length > 0, "seq_length must be positive");
        Windower {
            mode,
            seq_length,
            overlong,
            flush: true,
            buf: Window::default(),
            doc: Vec::new(),
            next_doc: 0,
            dropped: 0,
            truncated: 0,
        }
    }

    /// MFTCoder's behaviour: overlong records dropped, the last buffer never flushed.
    pub fn mftcoder(mode: PaddingMode, seq_length: usize) -> Self {
        Windower { flush: false, ..Windower::new(mode, seq_length, Overlong::Drop) }
    }

    /// `seq_length + 1`.
    pub fn sample_len(&self) -> usize {
        self.seq_length + 1
    }

    // ANCHOR: push
    /// Feed one encoded record; completed samples are appended to `out`.
    pub fn push(&mut self, mut e: Encoded, out: &mut Vec<Window>) {
        let l = self.sample_len();
        if self.mode != PaddingMode::Concat && e.ids.len() > l {
            match self.overlong {
                Overlong::Drop => {
                    self.dropped += 1;
                    return;
                }
                Overlong::Truncate => {
                    e.ids.truncate(l);
                    e.loss_mask.truncate(l);
                    self.truncated += 1;
                }
            }
        }
        match self.mode {
            PaddingMode::Padding => {
                let mut w = Window::default();
                w.push_record(&e, 1);
                out.push(w);
            }
            PaddingMode::Pack => {
                if self.buf.len() + e.ids.len() > l {
                    out.push(std::mem::take(&mut self.buf));
                }
                let segment = self.buf.segment_ids.last().map_or(1, |s| s + 1);
                self.buf.push_record(&e, segment);
            }
            PaddingMode::Concat => {
                self.buf.push_record(&e, 0);
                self.doc.extend(std::iter::repeat_n(self.next_doc, e.ids.len()));
                self.next_doc += 1;
                let mut cursor = 0;
                while cursor + l <= self.buf.len() {
                    out.push(self.concat_window(cursor, cursor + l));
                    cursor += self.seq_length; // the last token of this window starts the next one
                }
                self.drain_front(cursor);
            }
        }
    }
    // ANCHOR_END: push

    /// End of the task's stream: emit what is buffered (unless in MFTCoder mode, which loses it).
    pub fn finish(&mut self, out: &mut Vec<Window>) {
        let keep = self.flush;
        let buf = std::mem::take(&mut self.buf);
        let n = buf.len();
        match self.mode {
            PaddingMode::Pack if keep && n > 0 => out.push(buf),
            // A remainder of one token is the boundary token already used as the previous window's last label.
            PaddingMode::Concat if keep && n > 1 => {
                self.buf = buf;
                out.push(self.concat_window(0, n));
                self.buf = Window::default();
            }
            _ => {}
        }
        self.doc.clear();
    }

    fn concat_window(&self, start: usize, end: usize) -> Window {
        let first = self.doc[start];
        Window {
            ids: self.buf.ids[start..end].to_vec(),
            loss_mask: self.buf.loss_mask[start..end].to_vec(),
            segment_ids: self.doc[start..end].iter().map(|d| (d - first + 1) as u32).collect(),
        }
    }

    fn drain_front(&mut self, n: usize) {
        self.buf.ids.drain(..n);
        self.buf.loss_mask.drain(..n);
        self.buf.segment_ids.drain(..n);
        self.doc.drain(..n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(first: u32, n: usize, mask: u8) -> Encoded {
        Encoded { ids: (first..first + n as u32).collect(), loss_mask: vec![mask; n] }
    }

    fn run(w: &mut Windower, recs: &[Encoded]) -> Vec<Window> {
        let mut out = Vec::new();
        for r in recs {
            w.push(r.clone(), &mut out);
        }
        w.finish(&mut out);
        out
    }

    #[test]
    fn padding_keeps_records_whole_and_drops_or_truncates_overlong_ones() {
        let recs = [rec(10, 3, 1), rec(20, 6, 1), rec(30, 5, 0)];
        let mut w = Windower::new(PaddingMode::Padding, 4, Overlong::Drop);
        let out = run(&mut w, &recs);
        assert_eq!(
            out.iter().map(|w| w.ids.clone()).collect::<Vec<_>>(),
            vec![vec![10, 11, 12], vec![30, 31, 32, 33, 34]]
        );
        assert_eq!((w.dropped, w.truncated), (1, 0));
        let mut w = Windower::new(PaddingMode::Padding, 4, Overlong::Truncate);
        let out = run(&mut w, &recs);
        assert_eq!(out[1].ids, vec![20, 21, 22, 23, 24]);
        assert_eq!((w.dropped, w.truncated), (0, 1));
        assert_eq!(out[0].padded(5, 2).ids, vec![10, 11, 12, 2, 2]);
        assert_eq!(out[0].padded(5, 2).segment_ids, vec![1, 1, 1, 0, 0]);
    }

    #[test]
    fn pack_is_greedy_flushes_the_last_pack_and_numbers_segments() {
        let recs = [rec(10, 2, 1), rec(20, 2, 1), rec(30, 3, 1), rec(40, 9, 1), rec(50, 1, 1)];
        let mut w = Windower::new(PaddingMode::Pack, 4, Overlong::Drop);
        let out = run(&mut w, &recs);
        let ids: Vec<Vec<u32>> = out.iter().map(|w| w.ids.clone()).collect();
        assert_eq!(ids, vec![vec![10, 11, 20, 21], vec![30, 31, 32, 50]]);
        assert_eq!(out[0].segment_ids, vec![1, 1, 2, 2]);
        assert_eq!(out[1].segment_ids, vec![1, 1, 1, 2]);
        assert_eq!(w.dropped, 1);
        // MFTCoder loses the last pack.
        let mut m = Windower::mftcoder(PaddingMode::Pack, 4);
        assert_eq!(run(&mut m, &recs).len(), 1);
    }

    #[test]
    fn concat_windows_overlap_by_one_token_and_mark_records() {
        let recs = [rec(10, 3, 1), rec(20, 4, 0), rec(30, 2, 1)];
        let mut w = Windower::new(PaddingMode::Concat, 3, Overlong::Drop);
        let out = run(&mut w, &recs);
        let ids: Vec<Vec<u32>> = out.iter().map(|w| w.ids.clone()).collect();
        // stream 10 11 12 20 21 22 23 30 31, windows of 4 every 3, then the flushed remainder.
        assert_eq!(ids, vec![vec![10, 11, 12, 20], vec![20, 21, 22, 23], vec![23, 30, 31]]);
        assert_eq!(out[0].segment_ids, vec![1, 1, 1, 2]);
        assert_eq!(out[1].segment_ids, vec![1, 1, 1, 1]);
        assert_eq!(out[2].segment_ids, vec![1, 2, 2]);
        assert_eq!(out[0].loss_mask, vec![1, 1, 1, 0]);
        let mut m = Windower::mftcoder(PaddingMode::Concat, 3);
        assert_eq!(run(&mut m, &recs).len(), 2);
    }

    #[test]
    fn modes_parse() {
        assert_eq!("pack".parse::<PaddingMode>().unwrap(), PaddingMode::Pack);
        assert!("packed".parse::<PaddingMode>().unwrap_err().to_string().contains("padding, pack, concat"));
    }
}
