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

criterion_group!(benches, forward);
criterion_main!(benches);
