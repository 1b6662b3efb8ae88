//! The output head and the cross-entropy in chunks of rows: a training step never holds the whole logits.
//!
//! The head and the loss of T tokens over a vocabulary of V, h: [T, H] (the final norm's output), W: [V, H],
//! b: [1, V], targets y and coefficients c (the loss mode's weights, `loss::mft`):
//!
//!   z = h·Wᵀ + b  [T, V],   ℓₜ = log Σᵥ exp(zₜᵥ) − zₜ,yₜ,   L = Σₜ cₜ·ℓₜ
//!
//! and the gradients, with G = ∂L/∂z [T, V]:
//!
//!   Gₜ = cₜ·(softmax(zₜ) − onehot(yₜ))      (row t of G needs only row t of z)
//!   dh = G·W   [T, H]                         (row t of dh needs only row t of G)
//!   dW = Gᵀ·h = Σₜ Gₜᵀ·hₜ  [V, H],   db = Σₜ Gₜ  [1, V]
//!
//! Done whole, z and G are two [T, V] f32 tensors at once: for T = 2048 and V = 152k, 1.2 GB each, more than
//! the rest of a LoRA step's activations. But every row of ℓ, G and dh depends on its own row of h alone, and
//! dW, db are sums over rows. So the rows can go through in chunks — z_c = h_c·Wᵀ + b, (ℓ_c, G_c) from z_c,
//! dh_c = G_c·W, dW += G_cᵀ·h_c, db += Σ G_c — and only one chunk's z_c and G_c exist at a time. ℓ and dh
//! come out the same numbers as unchunked (each entry is the same dot product; a GEMM may tile a shorter
//! product differently, which moves it by ulps at most), and dW, db are the same sums grouped by chunk: equal
//! up to the order of floating-point summation. The one-chunk case runs exactly the ops of the unchunked
//! step (`linear`, `cross_entropy_on_device`, `linear_backward`), so every CPU golden is unchanged.
//!
//! Memory: a chunk's z_c and G_c, `chunk_rows(V, budget)` rows each, instead of T rows; dW stays [V, H] (it is
//! the parameter's gradient), and is asked for only when the head trains (full fine-tuning).

use crate::backend::Backend;

// ANCHOR: chunk_rows
/// The logits a chunk may hold, in bytes (one f32 [rows, V] tensor; its gradient is another of the same size):
/// 64 MiB is 110 rows of Qwen2's 152k vocabulary, 524 of Llama's 32k.
pub const DEFAULT_HEAD_CHUNK_BYTES: usize = 64 << 20;

/// Rows per chunk: as many as keep a chunk's f32 logits [rows, V] within `chunk_bytes`, at least one.
pub fn chunk_rows(vocab: usize, chunk_bytes: usize) -> usize {
    (chunk_bytes / (vocab.max(1) * std::mem::size_of::<f32>())).max(1)
}
// ANCHOR_END: chunk_rows

/// Which gradients of the head a step needs besides dh: W's and the bias's (a frozen base needs neither).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadGradsWanted {
    pub weight: bool,
    pub bias: bool,
}

/// What [`Backend::linear_cross_entropy`] returns.
pub struct HeadLoss<T> {
    /// ℓₜ for every row, [T, 1], not yet read (`Backend::cross_entropy_on_device`)
    pub token_losses: T,
    /// ∂L/∂h [T, H]
    pub dh: T,
    /// ∂L/∂W [V, H], where asked
    pub dhead: Option<T>,
    /// ∂L/∂b [1, V], where asked
    pub dbias: Option<T>,
}

// ANCHOR: linear_cross_entropy
/// The default [`Backend::linear_cross_entropy`], written against the backend's own ops: the rows of h in
/// chunks of [`chunk_rows`], each chunk's losses and dh written into preallocated outputs (`write_rows`), dW and
/// db summed over chunks. On the GPU every buffer has the same size every step, so the pool serves them all.
#[allow(clippy::too_many_arguments)]
pub fn linear_cross_entropy_in_chunks<B: Backend>(
    b: &B,
    h: &B::Tensor,    // [T, H]
    head: &B::Tensor, // [V, H]
    bias: Option<&B::Tensor>,
    targets: &[u32],
    coefficients: &[f32],
    wanted: HeadGradsWanted,
    chunk_bytes: usize,
) -> HeadLoss<B::Tensor> {
    let ((t, hidden), (vocab, _)) = (b.dims(h), b.dims(head));
    assert_eq!((targets.len(), coefficients.len()), (t, t), "linear_cross_entropy: one target and weight per row");
    // rows → (ℓ [n, 1], dh [n, H], dW [V, H], db [1, V]) of one chunk
    let chunk = |h_c: &B::Tensor, rows: std::ops::Range<usize>| {
        let logits = b.linear(h_c, head, bias); // [n, V]
        let (losses, dlogits) = b.cross_entropy_on_device(&logits, &targets[rows.clone()], &coefficients[rows]);
        drop(logits); // before the backward's products: only z_c or G_c is alive past this line
        let (dh, dhead, dbias) = b.linear_backward(&dlogits, h_c, head, wanted.weight, wanted.bias);
        (losses, dh, dhead, dbias)
    };
    let rows = chunk_rows(vocab, chunk_bytes);
    if rows >= t {
        let (token_losses, dh, dhead, dbias) = chunk(h, 0..t); // one chunk: the unchunked ops exactly
        return HeadLoss { token_losses, dh, dhead, dbias };
    }
    let mut out = HeadLoss { token_losses: b.zeros(t, 1), dh: b.zeros(t, hidden), dhead: None, dbias: None };
    let sum_into = |total: &mut Option<B::Tensor>, part: Option<B::Tensor>| match (total.as_mut(), part) {
        (Some(total), Some(part)) => b.add_assign(total, &part),
        (None, part) => *total = part,
        (Some(_), None) => unreachable!("every chunk computes the same gradients"),
    };
    for start in (0..t).step_by(rows) {
        let end = (start + rows).min(t);
        let (losses, dh, dhead, dbias) = chunk(&b.slice_rows(h, start, end), start..end);
        b.write_rows(&mut out.token_losses, start, &losses);
        b.write_rows(&mut out.dh, start, &dh);
        sum_into(&mut out.dhead, dhead); // dW = Σ_chunks G_cᵀ·h_c
        sum_into(&mut out.dbias, dbias);
    }
    out
}
// ANCHOR_END: linear_cross_entropy

// ANCHOR: token_losses_in_chunks
/// ℓₜ alone, [T, 1] on the device: the forward half of [`linear_cross_entropy_in_chunks`], no gradient
/// product. A preference step scores each answer this way first: the pair's loss needs both answers'
/// log-probabilities before either answer's gradient weights are known, so its head runs twice, the second
/// time (`linear_cross_entropy`) with those weights, and neither pass holds the [T, V] logits.
pub fn token_losses_in_chunks<B: Backend>(
    b: &B,
    h: &B::Tensor,    // [T, H]
    head: &B::Tensor, // [V, H]
    bias: Option<&B::Tensor>,
    targets: &[u32],
    chunk_bytes: usize,
) -> B::Tensor {
    let ((t, _), (vocab, _)) = (b.dims(h), b.dims(head));
    assert_eq!(targets.len(), t, "token_losses: one target per row");
    let no_weights = vec![0.0f32; t];
    let chunk = |h_c: &B::Tensor, rows: std::ops::Range<usize>| {
        let logits = b.linear(h_c, head, bias); // [n, V]
        b.cross_entropy_on_device(&logits, &targets[rows.clone()], &no_weights[rows]).0
    };
    let rows = chunk_rows(vocab, chunk_bytes);
    if rows >= t {
        return chunk(h, 0..t);
    }
    let mut losses = b.zeros(t, 1);
    for start in (0..t).step_by(rows) {
        let end = (start + rows).min(t);
        b.write_rows(&mut losses, start, &chunk(&b.slice_rows(h, start, end), start..end));
    }
    losses
}
// ANCHOR_END: token_losses_in_chunks

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::nn::grad_check::random;
    use crate::rng::Rng;
    use ndarray::Array2;

    /// The largest |a − b| relative to the largest |a| (at least 1e-6, for all-zero gradients).
    fn rel_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
        assert_eq!(a.dim(), b.dim());
        let scale = a.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
    }

    #[test]
    fn chunk_rows_keeps_a_chunk_within_the_budget() {
        assert_eq!(chunk_rows(152_064, DEFAULT_HEAD_CHUNK_BYTES), 110);
        assert_eq!(chunk_rows(32_000, DEFAULT_HEAD_CHUNK_BYTES), 524);
        assert_eq!(chunk_rows(1000, 4000), 1);
        assert_eq!(chunk_rows(1000, 3999), 1, "at least one row");
        assert_eq!(chunk_rows(1000, 12_000), 3);
        for vocab in [1usize, 7, 97, 50_257] {
            for budget in [1usize, 4096, 1 << 20] {
                let rows = chunk_rows(vocab, budget);
                assert!(rows == 1 || rows * vocab * 4 <= budget, "{vocab} {budget} → {rows}");
                assert!((rows + 1) * vocab * 4 > budget, "{vocab} {budget} → {rows}: one more would fit");
            }
        }
    }

    /// Chunks of 1 row, 3 rows (11 = 3 + 3 + 3 + 2) and all rows against the whole product and cross-entropy,
    /// with and without a bias and the weight's gradient.
    #[test]
    fn chunks_give_the_unchunked_losses_and_gradients() {
        let b = Cpu;
        let (t, hidden, vocab) = (11, 6, 13);
        let mut rng = Rng::new(5);
        let (h, w, bias) = (random(t, hidden, &mut rng), random(vocab, hidden, &mut rng), random(1, vocab, &mut rng));
        let (h, w, bias) = (b.upload(h), b.upload_weight(w), b.upload(bias * 3.0));
        let targets: Vec<u32> = (0..t).map(|i| (i * 5 % vocab) as u32).collect();
        let coefficients: Vec<f32> = (0..t).map(|i| if i % 4 == 3 { 0.0 } else { 0.1 + i as f32 * 0.02 }).collect();
        for with_bias in [false, true] {
            let bias = with_bias.then_some(&bias);
            // the whole thing, op by op
            let (want_losses, dlogits) = b.cross_entropy_on_device(&b.linear(&h, &w, bias), &targets, &coefficients);
            let (want_dh, want_dw, want_db) = b.linear_backward(&dlogits, &h, &w, true, with_bias);
            for (rows, budget) in [(1, vocab * 4), (3, 3 * vocab * 4 + 3), (t, t * vocab * 4), (t, usize::MAX)] {
                assert_eq!(chunk_rows(vocab, budget).min(t), rows);
                for weight in [false, true] {
                    let wanted = HeadGradsWanted { weight, bias: with_bias };
                    let got = b.linear_cross_entropy(&h, &w, bias, &targets, &coefficients, wanted, budget);
                    let what = format!("{rows}-row chunks, bias {with_bias}, dW {weight}");
                    assert!(rel_diff(&want_losses, &got.token_losses) <= 1e-6, "{what}: losses");
                    assert!(rel_diff(&want_dh, &got.dh) <= 1e-6, "{what}: dh");
                    assert_eq!(got.dhead.is_some(), weight, "{what}");
                    assert_eq!(got.dbias.is_some(), with_bias, "{what}");
                    if let Some(dw) = &got.dhead {
                        assert!(rel_diff(want_dw.as_ref().unwrap(), dw) <= 1e-5, "{what}: dW");
                    }
                    if let Some(db) = &got.dbias {
                        assert!(rel_diff(want_db.as_ref().unwrap(), db) <= 1e-5, "{what}: db");
                    }
                }
            }
        }
    }

    #[test]
    fn write_rows_replaces_exactly_its_rows() {
        let b = Cpu;
        let mut dst = Array2::from_shape_fn((5, 3), |(i, j)| (10 * i + j) as f32);
        let src = Array2::from_shape_fn((2, 3), |(i, j)| -((10 * i + j) as f32) - 1.0);
        let mut want = dst.clone();
        want.slice_mut(ndarray::s![2..4, ..]).assign(&src);
        b.write_rows(&mut dst, 2, &src);
        assert_eq!(dst, want);
    }
}
