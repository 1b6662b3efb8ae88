//! Per-task train/validation split and the greedy multi-task blending (`build_blending_indices`).

use anyhow::{Result, bail};

/// `data_split` "a,b,c" (or "a/b/c"; missing parts are 0). MFTCoder uses only `a`, the train percentage:
/// a task of `n` samples keeps `ceil(a/100 · n)` for training and the rest for validation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DataSplit {
    pub train: f64,
    pub valid: f64,
    pub test: f64,
}

impl Default for DataSplit {
    fn default() -> Self {
        DataSplit { train: 98.0, valid: 2.0, test: 0.0 }
    }
}

impl std::str::FromStr for DataSplit {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let sep = if s.contains('/') { '/' } else { ',' };
        let mut parts = Vec::new();
        for p in s.split(sep) {
            match p.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => parts.push(v),
                _ => bail!("data_split: `{s}` is not 1 to 3 non-negative numbers like \"98,2,0\""),
            }
        }
        if parts.is_empty() || parts.len() > 3 || parts[0] > 100.0 {
            bail!("data_split: `{s}` is not 1 to 3 non-negative numbers like \"98,2,0\" (train ≤ 100)");
        }
        parts.resize(3, 0.0);
        Ok(DataSplit { train: parts[0], valid: parts[1], test: parts[2] })
    }
}

impl DataSplit {
    // ANCHOR: train_count
    /// How many of `n` shuffled samples go to training: `ceil(train / 100 · n)`, in f64 as Python computes it.
    pub fn train_count(&self, n: usize) -> usize {
        ((self.train / 100.0 * n as f64).ceil() as usize).min(n)
    }
    // ANCHOR_END: train_count
}

// ANCHOR: blend
/// Megatron's greedy blending: for position `s`, pick the task whose share is furthest behind its weight,
/// `argmax_k (w_k · max(s, 1) − used_k)` (the first on ties), and take that task's next sample.
/// Returns `(task, sample index within the task)` for each of `size` positions. Tasks of weight 0 are never
/// picked (Megatron's rule would pick one on a tie at error 0, and MFTCoder then indexes an empty task).
pub fn blending_indices(weights: &[f64], size: usize) -> Vec<(usize, usize)> {
    let mut used = vec![0usize; weights.len()];
    let mut out = Vec::with_capacity(size);
    for s in 0..size {
        let s_f = (s as f64).max(1.0);
        let mut best = 0;
        let mut best_err = f64::NEG_INFINITY;
        for (k, &w) in weights.iter().enumerate().filter(|(_, w)| **w > 0.0) {
            let err = w * s_f - used[k] as f64;
            if err > best_err {
                best_err = err;
                best = k;
            }
        }
        out.push((best, used[best]));
        used[best] += 1;
    }
    out
}
// ANCHOR_END: blend

/// MFTCoder's blend of the per-task training sets: weights proportional to the sample counts, size = their sum,
/// so every task's samples appear exactly once, spread evenly. (Empty tasks get weight 0.)
pub fn blend_by_count(counts: &[usize]) -> Vec<(usize, usize)> {
    let total: usize = counts.iter().sum();
    if total == 0 {
        return Vec::new();
    }
    let weights: Vec<f64> = counts.iter().map(|&n| n as f64 / total as f64).collect();
    let mut order = blending_indices(&weights, total);
    // The greedy rule cannot overdraw a task (used_k ≤ w_k·(N−1)+1 ≤ n_k), but rounding must never index out
    // of range: fold as MFTCoder's `i % len` would (a picked task has weight > 0, so it is not empty).
    for (task, i) in order.iter_mut() {
        *i %= counts[*task];
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_parses_and_counts_like_python() {
        let s: DataSplit = "98,2,0".parse().unwrap();
        assert_eq!(s.train_count(10), 10); // ceil(9.8)
        assert_eq!(s.train_count(100), 98);
        assert_eq!(s.train_count(0), 0);
        let s: DataSplit = "95/5".parse().unwrap();
        assert_eq!((s.train, s.valid, s.test), (95.0, 5.0, 0.0));
        assert_eq!(s.train_count(7), 7); // ceil(6.65)
        let s: DataSplit = "50".parse().unwrap();
        assert_eq!(s.train_count(5), 3);
        for bad in ["", "a,b", "101,0,0", "1,2,3,4", "-1,2"] {
            assert!(bad.parse::<DataSplit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn blending_follows_the_weights_and_uses_every_sample_once() {
        let order = blend_by_count(&[6, 3, 1]);
        assert_eq!(order.len(), 10);
        for (k, n) in [6usize, 3, 1].iter().enumerate() {
            let mine: Vec<usize> = order.iter().filter(|(t, _)| *t == k).map(|&(_, i)| i).collect();
            assert_eq!(mine, (0..*n).collect::<Vec<_>>());
        }
        // By hand: s=0 → task 0 (largest weight); s=1: errors .6−1, .3, .1 → task 1; s=2: 1.2−1 vs .6−1 vs .2
        // → in f64 0.6·2−1 = 0.19999999999999996 < 0.1·2 = 0.2, so task 2.
        let tasks: Vec<usize> = order.iter().map(|&(t, _)| t).collect();
        assert_eq!(&tasks[..3], &[0, 1, 2]);
        assert!(blend_by_count(&[0, 0]).is_empty());
        assert_eq!(blend_by_count(&[0, 2]), vec![(1, 0), (1, 1)]);
    }
}
