//! LoRA's factors under mixed precision keep a bf16 copy beside their f32 master (`Storage::Master`,
//! `Cuda::keep_bf16_copy`), which the products read instead of casting the factor each time. The copy is only
//! right if every optimizer update rewrites it: these tests train a few steps and check that a product of each
//! factor equals the product of its master rounded to bf16 — a stale copy (B still the zeros it started as)
//! would be off by all of it. Run with `cargo test --features cuda --test cuda_bf16_master`; without a GPU the
//! same tests run on the emulated device (tests/kernel_emulator/).
//!
//! Tolerance: 1e-5 relative to the largest entry. Both sides multiply the same bf16-rounded operands (exact in
//! f32) and accumulate in f32; only the order of the sums differs, a few ulps · √K for K ≤ 64.

#![cfg(feature = "cuda")]

use mftcoder::backend::Backend;
use mftcoder::backend::cpu::Cpu;
use mftcoder::backend::cuda::{Cuda, Precision};
use mftcoder::bench::training_step;
use mftcoder::models::decoder::{Decoder, DecoderConfig, Sequence};
use mftcoder::peft::LoraConfig;
use mftcoder::peft::attach::init_adapters;
use mftcoder::rng::Rng;
use mftcoder::train::optim::{AdamW, AdamWConfig};
use ndarray::Array2;

#[path = "kernel_emulator/compile.rs"]
mod compile;
#[path = "cuda_shared/mod.rs"]
mod cuda_shared;
#[path = "kernel_emulator/emulated_device.rs"]
mod emulated_device;

use cuda_shared::{assert_close, gpu, matrix};

const T: usize = 24;

/// Round to bf16 (nearest, ties to even) and back: what a bf16 product reads.
fn bf16_rounded(m: &Array2<f32>) -> Array2<f32> {
    m.mapv(|v| half::bf16::from_f32(v).to_f32())
}

/// A 2-layer Llama under PEFT's default LoRA (q and v), trained `steps` steps on one repeated batch.
fn trained(g: &Cuda, steps: usize) -> Decoder<Cuda> {
    let mut model: Decoder<Cuda> = Decoder::random(g, DecoderConfig::with_shape(61, 64, 128, 2, 4, 2), 3);
    init_adapters(&mut model, g, &LoraConfig { r: 8, lora_alpha: 16.0, ..LoraConfig::default() }, &mut Rng::new(1))
        .unwrap();
    let shapes: Vec<(usize, usize)> = model.trainable_parameters_mut().iter().map(|(_, t)| g.dims(t)).collect();
    let mut opt = AdamW::new_on(g, AdamWConfig::default(), &shapes);
    let ids: Vec<u32> = (0..T as u32).map(|i| (i * 7 + 2) % 61).collect();
    let positions: Vec<usize> = (0..T).collect();
    let targets: Vec<u32> = ids.iter().skip(1).copied().chain([0]).collect();
    let coefficients = vec![1.0 / T as f32; T];
    for _ in 0..steps {
        let seq = Sequence { ids: &ids, positions: &positions, segment_ids: None };
        training_step(g, &mut model, &mut opt, seq, &targets, &coefficients, 1e-2).unwrap();
    }
    model
}

#[test]
fn the_products_read_the_factors_the_optimizer_wrote() {
    let Some(g) = gpu(Precision::Bf16) else { return };
    let mut model = trained(g, 3);
    let mut checked = 0;
    for (name, linear) in model.linears_mut() {
        let Some(lora) = &linear.lora else { continue };
        for (factor, what) in [(&lora.a, "A"), (&lora.b, "B")] {
            let master = g.download(factor);
            assert!(master.iter().any(|&v| v != 0.0), "{name}.{what}: trained, so not all zero");
            let (rows, cols) = g.dims(factor);
            assert_eq!(g.stored_bytes(factor), 6 * rows * cols, "{name}.{what}: an f32 master and its bf16 copy");
            let x = matrix(5, cols, 11, 1.0);
            let on_device = g.download(&g.linear(&g.upload(x.clone()), factor, None)); // x·factorᵀ
            let want = Cpu.linear(&bf16_rounded(&x), &bf16_rounded(&master), None);
            assert_close(&format!("x·{name}.{what}ᵀ"), &want, &on_device, 1e-5);
            checked += 1;
        }
    }
    assert_eq!(checked, 8, "2 layers × q, v × A, B");
}

#[test]
fn under_f32_the_factors_stay_plain() {
    let Some(g) = gpu(Precision::F32) else { return };
    let mut model = trained(g, 1);
    for (name, linear) in model.linears_mut() {
        if let Some(lora) = &linear.lora {
            let (rows, cols) = g.dims(&lora.b);
            assert_eq!(g.stored_bytes(&lora.b), 4 * rows * cols, "{name}.B: f32 only");
        }
    }
}

// ---- without a GPU: the same tests on the emulated device ----

#[test]
fn bf16_masters_on_an_emulated_device() {
    let Some(summary) = cuda_shared::rerun_on_the_emulated_device_without_a_gpu("bf16-master", &[]) else { return };
    assert!(summary.contains("3 passed"), "the emulated run: {summary}");
}
