//! One full-parameter training step on the CPU reference path: forward, masked cross-entropy, the
//! hand-written backward, global-norm clipping and AdamW. The same step is timed in PyTorch by
//! `benches/train_torch.py`; `benches/compare.sh` runs both and prints the ratio.
//!
//! Shape (≈ 15.7 M parameters): vocab 8192, hidden 384, MLP 1024, 6 layers, 6 heads (2 KV heads), untied;
//! batch 4 × seq 256 (the four rows are packed into one 1024-token sequence with block-diagonal attention).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mftcoder::backend::cpu::Cpu;
use mftcoder::loss::causal_lm::{mean_token_loss, next_token_targets};
use mftcoder::models::decoder::{Decoder, DecoderConfig, Sequence};
use mftcoder::peft::attach::init_adapters;
use mftcoder::peft::{LoraBias, LoraConfig, TargetModules};
use mftcoder::train::optim::{AdamW, AdamWConfig, clip_grad_norm};
use ndarray::Array2;

fn config() -> DecoderConfig {
    DecoderConfig::with_shape(8192, 384, 1024, 6, 6, 2)
}

fn train_step(c: &mut Criterion) {
    mftcoder::runtime::tune_allocator();
    let mut group = c.benchmark_group("llama_train_step");
    group.throughput(Throughput::Elements((BATCH * SEQ) as u64));
    group.sample_size(10);
    bench_step(&mut group, "16M_b4_seq256", Decoder::random(&Cpu, config(), 0));
    // LoRA r = 16 on all seven projections of every layer, base frozen (no weight gradients for it)
    let mut lora = Decoder::random(&Cpu, config(), 0);
    let lora_config = LoraConfig {
        r: 16,
        lora_alpha: 32.0,
        lora_dropout: 0.0,
        use_rslora: false,
        bias: LoraBias::None,
        target_modules: TargetModules::AllLinear,
    };
    init_adapters(&mut lora, &Cpu, &lora_config, &mut mftcoder::rng::Rng::new(1)).unwrap();
    bench_step(&mut group, "16M_b4_seq256_lora_r16", lora);
    group.finish();
}

const BATCH: usize = 4;
const SEQ: usize = 256;

fn bench_step(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut model: Decoder<Cpu>,
) {
    model.recompute_activations = std::env::var("BENCH_RECOMPUTE").is_ok();
    let mut rng = mftcoder::rng::Rng::new(0);
    let ids: Vec<u32> = (0..BATCH * SEQ).map(|_| rng.below(8192) as u32).collect();
    let positions: Vec<usize> = (0..BATCH * SEQ).map(|i| i % SEQ).collect();
    let segments: Vec<u32> = (0..BATCH * SEQ).map(|i| (i / SEQ) as u32).collect();
    let (targets, weights) = next_token_targets(&ids, Some(&segments), None);
    let shapes: Vec<(usize, usize)> = model.trainable_parameters_mut().iter().map(|(_, p)| p.dim()).collect();
    let names: Vec<String> = model.trainable_parameters_mut().into_iter().map(|(n, _)| n).collect();
    let mut opt = AdamW::new(AdamWConfig::default(), &shapes);
    let trainable: usize = shapes.iter().map(|(r, c)| r * c).sum();
    eprintln!("{name}: {:.2} M trainable parameters, {BATCH} × {SEQ} tokens", trainable as f64 / 1e6);
    group.bench_function(name, |bench| {
        bench.iter(|| {
            let s = Sequence { ids: &ids, positions: &positions, segment_ids: Some(&segments) };
            let mut r = mean_token_loss(&model, &Cpu, s, &targets, &weights).unwrap();
            let mut grads: Vec<Array2<f32>> =
                names.iter().map(|n| r.grads.remove(n).expect("every trainable parameter")).collect();
            clip_grad_norm(&mut grads.iter_mut().collect::<Vec<_>>(), 1.0);
            let mut named = model.trainable_parameters_mut();
            let mut params: Vec<&mut Array2<f32>> = named.iter_mut().map(|(_, p)| &mut **p).collect();
            opt.step(&mut params, &grads.iter().collect::<Vec<_>>(), 1e-4, &vec![true; grads.len()]);
            r.loss
        })
    });
}

criterion_group!(benches, train_step);
criterion_main!(benches);
