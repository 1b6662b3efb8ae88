//! The matrix products of a LoRA step on the 134m shape (T = 512 tokens, hidden 768, MLP 2048, vocab 32k),
//! one by one, in the operand layouts the CPU backend gives them (weights column-major, transposed views read
//! through their strides): the base and head products, the q/k/v and gate/up products stacked as a frozen base
//! stacks them (`models::stacked_base`), and the adapter's five thin products at ranks 16 and 64. Prints one JSON line per product (median of the timed runs, GFLOP/s); `benches/products.sh` runs
//! `benches/products_torch.py` (MKL through PyTorch, the same shapes and transposes) beside it.
//!
//!   cargo bench --bench products

use mftcoder::nn::matmul::scaled_matmul;
use ndarray::{Array2, ArrayView2};
use std::hint::black_box;
use std::time::Instant;

/// (name, m, k, n, a transposed, b transposed): c [m, n] = op(a)·op(b), the transposed operand stored as its
/// transpose (so op(a) is a strided view, as `a.t()` is in the backward).
const PRODUCTS: &[(&str, usize, usize, usize, bool, bool)] = &[
    ("base x·Wᵀ 768→768", 512, 768, 768, false, false),
    ("base x·Wᵀ 768→2048", 512, 768, 2048, false, false),
    ("stacked q/k/v x·Wᵀ 768→2304", 512, 768, 2304, false, false),
    ("stacked gate/up x·Wᵀ 768→4096", 512, 768, 4096, false, false),
    ("base dx = dy·W 768→768", 512, 768, 768, false, true),
    ("stacked q/k/v dx = dy·W 2304→768", 512, 2304, 768, false, true),
    ("stacked gate/up dx = dy·W 4096→768", 512, 4096, 768, false, true),
    ("base dx = dy·W 2048→768", 512, 2048, 768, false, true),
    ("head x·Wᵀ 768→32000", 512, 768, 32000, false, false),
    ("head dh = dlogits·W", 512, 32000, 768, false, true),
    ("lora r16 x·Aᵀ", 512, 768, 16, false, false),
    ("lora r16 h·Bᵀ", 512, 16, 2048, false, false),
    ("lora r16 dB = (hᵀ·dy)ᵀ", 16, 512, 2048, true, false),
    ("lora r16 dh = dy·B", 512, 2048, 16, false, true),
    ("lora r16 dA = (xᵀ·dh)ᵀ", 768, 512, 16, true, false),
    ("lora r16 dx += dh·A", 512, 16, 768, false, true),
    ("lora r64 x·Aᵀ", 512, 768, 64, false, false),
    ("lora r64 dA = (xᵀ·dh)ᵀ", 768, 512, 64, true, false),
    ("lora r64 dh = dy·B", 512, 2048, 64, false, true),
];

fn random(rows: usize, cols: usize, rng: &mut mftcoder::rng::Rng) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |_| rng.next_f32() - 0.5)
}

fn median_seconds(mut run: impl FnMut(), reps: usize) -> f64 {
    for _ in 0..3 {
        run();
    }
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`
    }
    mftcoder::runtime::tune_allocator();
    let mut rng = mftcoder::rng::Rng::new(0);
    for &(name, m, k, n, trans_a, trans_b) in PRODUCTS {
        let a_store = if trans_a { random(k, m, &mut rng) } else { random(m, k, &mut rng) };
        let b_store = if trans_b { random(n, k, &mut rng) } else { random(k, n, &mut rng) };
        // a weight W [out, in] column-major: x·Wᵀ reads Wᵀ [in, out] in standard layout, and dy·W reads W as
        // the transpose of that standard [in, out] array
        let a: ArrayView2<f32> = if trans_a { a_store.t() } else { a_store.view() };
        let b: ArrayView2<f32> = if trans_b { b_store.t() } else { b_store.view() };
        let flops = 2.0 * (m * k * n) as f64;
        let reps = ((2e10 / flops) as usize).clamp(9, 201);
        let seconds = median_seconds(|| drop(black_box(scaled_matmul(a, b, 1.0))), reps);
        println!(r#"{{"name": "{name}", "m": {m}, "k": {k}, "n": {n}, "gflops": {:.1}}}"#, flops / seconds / 1e9);
    }
}
