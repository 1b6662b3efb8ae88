//! Forward tokens/s of a small Llama on the CPU reference path.
//! The same shape is timed in PyTorch by `benches/forward_torch.py`; the book reports the ratio.
//!
//! Shape (≈ 33.6 M parameters): vocab 8192, hidden 512, MLP 1536, 8 layers, 8 heads (4 KV heads), seq 256.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mftcoder::backend::cpu::Cpu;
use mftcoder::models::decoder::{Decoder, DecoderConfig, Logits};
use std::hint::black_box;

fn bench_config() -> DecoderConfig {
    DecoderConfig::with_shape(8192, 512, 1536, 8, 8, 4)
}

fn forward(c: &mut Criterion) {
    let seq: usize = std::env::var("BENCH_SEQ").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    let model = Decoder::random(&Cpu, bench_config(), 0);
    let mut rng = mftcoder::rng::Rng::new(0);
    let ids: Vec<u32> = (0..seq).map(|_| rng.below(8192) as u32).collect();
    mftcoder::runtime::tune_allocator();
    let mut group = c.benchmark_group("llama_forward");
    group.throughput(Throughput::Elements(seq as u64));
    group.sample_size(20);
    group.bench_function(format!("34M_seq{seq}"), |bench| {
        bench.iter(|| black_box(model.forward(&Cpu, black_box(&ids), None, Logits::All).unwrap()))
    });
    group.finish();
}

/// One token through the products of SmolLM2-135M's 30 layers (hidden 576, MLP 1536, 3 KV heads of 64):
/// ~135 M f32 weights with the tied head, far more than any cache, so each product streams its weights from memory, as in
/// decoding. Timed for both weight layouts: row-major W [out, in] (a dot product per output) and the
/// column-major W (an axpy per input, what `Cpu::upload_weight` gives the training products).
fn single_token_products(c: &mut Criterion) {
    use mftcoder::nn::linear::{column_major, linear};
    use ndarray::Array2;
    let shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)];
    let mut rng = mftcoder::rng::Rng::new(1);
    let mut random = |rows: usize, cols: usize| Array2::from_shape_fn((rows, cols), |_| rng.next_f32() - 0.5);
    let mut row_major: Vec<Array2<f32>> = (0..30).flat_map(|_| shapes.map(|(o, i)| random(o, i))).collect();
    row_major.push(random(49152, 576)); // the tied head
    let col_major: Vec<Array2<f32>> = row_major.iter().map(|w| column_major(w.clone())).collect();
    let x576 = random(1, 576);
    let x1536 = random(1, 1536);
    let mut group = c.benchmark_group("single_token_products");
    group.sample_size(20);
    for (name, weights) in [("row_major", &row_major), ("column_major", &col_major)] {
        group.bench_function(name, |bench| {
            bench.iter(|| {
                for w in weights.iter() {
                    let x = if w.ncols() == 576 { &x576 } else { &x1536 };
                    black_box(linear(x.view(), w.view(), None));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, forward, single_token_products);
criterion_main!(benches);
