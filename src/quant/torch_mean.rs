//! `torch.Tensor.mean()` of a 1-D f32 tensor on the CPU, bit for bit.
//!
//! Double quantization subtracts the mean of the block absmax values before quantizing them to 8 bits, and
//! stores that mean (`nested_offset`). Every dequantized weight depends on it, so to reproduce bitsandbytes
//! exactly we must add the numbers in the order torch does. f32 addition is not associative, and torch's order
//! is neither left to right nor pairwise. On the CPU, `mean` is `sum(x) / n`, and `sum` (ATen `SumKernel.cpp`,
//! `cascade_sum`) works like this:
//!
//! - the accumulator is f32; the input is read as vectors of 8 lanes (the AVX2 kernel is used even on AVX512
//!   machines), four vectors at a time (`ilp_factor = 4`), each of the four into its own accumulator;
//! - accumulators cascade through 4 levels: every 16 loads level 0 is added into level 1 and cleared, every
//!   16·16 into level 2, and so on, which keeps the rounding error logarithmic;
//! - the partial sums are folded: leftover vectors into row 0, rows 1–3 into row 0, then the leftover scalars are
//!   summed left to right and the 8 lanes added to them one by one;
//! - tensors of at least 32768 elements (`GRAIN_SIZE`) are split over the threads: `min(threads, ⌈n/32768⌉)`
//!   equal chunks of `⌈n/chunks⌉`, summed as above, then the chunk sums are added in order. So the result of
//!   torch itself depends on its thread count once a tensor has 32768 blocks (2,097,152 weights).
//!
//! Verified against torch 2.15.0 on lengths 1 to 262150 and 2–4 threads (`fixtures/quant`).

const LANES: usize = 8; // Vectorized<float>::size() of the AVX2 kernel
const ILP: usize = 4; // ilp_factor: rows summed side by side
const LEVELS: usize = 4; // num_levels of the cascade
const GRAIN_SIZE: usize = 32768; // at::internal::GRAIN_SIZE

/// `ceil(log2(x))`, with torch's convention that it is 1 for x <= 2.
fn ceil_log2(x: usize) -> usize {
    if x <= 2 { 1 } else { (usize::BITS - (x - 1).leading_zeros()) as usize }
}

/// Four W-lane accumulators side by side, one per row.
type Rows<const W: usize> = [[f32; W]; ILP];

fn add_rows<const W: usize>(dst: &mut Rows<W>, src: &Rows<W>) {
    for (d, s) in dst.iter_mut().zip(src) {
        d.iter_mut().zip(s).for_each(|(a, b)| *a += b);
    }
}

/// `multi_row_sum`: `size` steps; step `i` adds `item(i, k)` (a W-lane value) into row `k < 4`.
fn multi_row_sum<const W: usize>(size: usize, item: impl Fn(usize, usize) -> [f32; W]) -> Rows<W> {
    let level_power = 4.max(ceil_log2(size) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let zero = [[0.0f32; W]; ILP];
    let mut acc = [zero; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            add_rows(&mut acc[0], &std::array::from_fn(|k| item(i, k)));
            i += 1;
        }
        for j in 1..LEVELS {
            let lower = std::mem::replace(&mut acc[j - 1], zero);
            add_rows(&mut acc[j], &lower);
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        add_rows(&mut acc[0], &std::array::from_fn(|k| item(i, k)));
        i += 1;
    }
    let (first, upper) = acc.split_at_mut(1);
    for level in upper.iter() {
        add_rows(&mut first[0], level);
    }
    first[0]
}

/// `row_sum`: `n` W-lane items, summed as a (-1, 4) array of rows, leftovers into row 0, then rows folded.
fn row_sum<const W: usize>(n: usize, item: impl Fn(usize) -> [f32; W]) -> [f32; W] {
    let groups = n / ILP;
    let mut rows = multi_row_sum(groups, |g, k| item(g * ILP + k));
    for i in groups * ILP..n {
        let v = item(i);
        rows[0].iter_mut().zip(&v).for_each(|(d, s)| *d += s);
    }
    let mut out = rows[0];
    for row in &rows[1..] {
        out.iter_mut().zip(row).for_each(|(d, s)| *d += s);
    }
    out
}

/// One thread's sum of a contiguous slice (`vectorized_inner_sum`, or the scalar path below 8 elements).
fn chunk_sum(x: &[f32]) -> f32 {
    if x.len() < LANES {
        return 0.0 + row_sum::<1>(x.len(), |i| [x[i]])[0];
    }
    let vectors = x.len() / LANES;
    let lanes = row_sum::<LANES>(vectors, |i| x[i * LANES..(i + 1) * LANES].try_into().expect("8 lanes"));
    let mut acc = 0.0f32;
    for &v in &x[vectors * LANES..] {
        acc += v;
    }
    for l in lanes {
        acc += l;
    }
    0.0 + acc // the output starts at zero and the kernel accumulates into it
}

// ANCHOR: torch_sum
/// `x.sum()` as torch computes it on the CPU with `threads` intra-op threads.
pub fn torch_sum(x: &[f32], threads: usize) -> f32 {
    if x.len() < GRAIN_SIZE || threads <= 1 {
        return chunk_sum(x);
    }
    let chunks = threads.min(x.len().div_ceil(GRAIN_SIZE));
    let chunk = x.len().div_ceil(chunks);
    x.chunks(chunk).map(chunk_sum).fold(0.0f32, |acc, s| acc + s)
}

/// `x.mean()`: the sum divided by n, in f32.
pub fn torch_mean(x: &[f32], threads: usize) -> f32 {
    torch_sum(x, threads) / x.len() as f32
}
// ANCHOR_END: torch_sum

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_sums_are_exact_and_order_shows_up_in_rounding() {
        let x: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(torch_sum(&x, 2), 5050.0);
        assert_eq!(torch_mean(&x, 2), 50.5);
        assert_eq!(torch_sum(&[], 2), 0.0);
        // 1 + 2^-24 (eight times) + ...: a left-to-right f32 sum loses the small terms; torch's lanes keep them.
        let mut y = vec![1.0f32];
        y.extend(std::iter::repeat_n(f32::EPSILON / 2.0, 63));
        let naive = y.iter().fold(0.0f32, |a, b| a + b);
        assert_eq!(naive, 1.0);
        assert!(torch_sum(&y, 1) > 1.0);
    }

    #[test]
    fn ceil_log2_follows_torch() {
        assert_eq!([0, 1, 2, 3, 4, 5, 8, 9].map(ceil_log2), [1, 1, 1, 2, 2, 3, 3, 4]);
    }
}
