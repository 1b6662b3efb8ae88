//! QLoRA's 4-bit base on the GPU against the CPU: the dequantization bit for bit, the banded products
//! (forward and backward, several bands and a short last one), the device bytes of a 4-bit base, and a QLoRA
//! step. Run with `cargo test --features cuda --test cuda_qlora`; without a GPU the same tests run on the
//! emulated device (tests/kernel_emulator/).
//!
//! Tolerances (relative to the CPU result's largest magnitude, as in tests/cuda_vs_cpu.rs): dequantization
//! 0 (bitwise); f32 products 1e-5 (the same dequantized weights, only the summation order differs: a few ulps ·
//! √K); bf16 products 2e-2 (operands rounded to 8 significant bits, argued in tests/cuda_vs_cpu.rs); a whole
//! f32 QLoRA step 1e-4.

#![cfg(feature = "cuda")]

use mftcoder::backend::cpu::Cpu;
use mftcoder::backend::cuda::{Cuda, Precision};
use mftcoder::backend::{Backend, ReadBy};
use mftcoder::loss::causal_lm::weighted_token_loss;
use mftcoder::models::decoder::{Decoder, DecoderConfig, Sequence};
use mftcoder::peft::attach::init_adapters;
use mftcoder::peft::{LoraConfig, TargetModules};
use mftcoder::quant::{QuantOptions, QuantType, Quantized4bit};
use mftcoder::rng::Rng;
use ndarray::Array2;

#[path = "kernel_emulator/compile.rs"]
mod compile;
#[path = "cuda_shared/mod.rs"]
mod cuda_shared;
#[path = "kernel_emulator/emulated_device.rs"]
mod emulated_device;

use cuda_shared::{assert_close, gpu, matrix};

fn quantized(rows: usize, cols: usize, quant_type: QuantType, double_quant: bool, seed: u64) -> Quantized4bit {
    let w = matrix(rows, cols, seed, 0.05);
    Quantized4bit::quantize_with(w.view(), quant_type, QuantOptions { double_quant, ..Default::default() }).unwrap()
}

#[test]
fn four_bit_dequantization_is_exact() {
    let Some(g) = gpu(Precision::F32) else { return };
    // NF4 with double quantization (two nested blocks of 256), FP4 with plain scales and a short last block
    for (quant_type, double_quant, (r, c)) in [(QuantType::Nf4, true, (96, 800)), (QuantType::Fp4, false, (7, 37))] {
        let q = quantized(r, c, quant_type, double_quant, 11);
        let host = Cpu.dequantize_4bit(&q, &());
        let dev = g.download(&g.dequantize_4bit(&q, &g.upload_4bit(&q)));
        let differing = host.iter().zip(&dev).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differing, 0, "{quant_type:?}: {differing} weights differ from the CPU's bits");
    }
}

/// y = x·Ŵᵀ + b and dx = dy·Ŵ (+ db) on both backends, the GPU's with at most `band_bytes` of Ŵ at a time.
fn banded_case(g: &Cuda, q: &Quantized4bit, t: usize, band_bytes: usize, tol: f32) {
    let [out, inp] = q.shape;
    let (x, dy, bias) = (matrix(t, inp, 1, 1.0), matrix(t, out, 2, 1.0), matrix(1, out, 3, 0.1));
    let y_cpu = Cpu.linear_4bit(&x, q, &(), Some(&bias));
    let (dx_cpu, db_cpu) = Cpu.linear_4bit_backward(&dy, &x, q, &(), true);
    let p = g.upload_4bit(q);
    let (gx, gdy, gb) = (g.upload(x), g.upload(dy), g.upload(bias));
    let y = g.download(&g.linear_4bit_banded(&gx, q, &p, Some(&gb), band_bytes));
    let (dx, db) = g.linear_4bit_backward_banded(&gdy, q, &p, true, band_bytes);
    let what = format!("{:?} [{out}, {inp}], T {t}, bands of {band_bytes} bytes", g.precision);
    assert_close(&format!("{what}: y"), &y_cpu, &y, tol);
    assert_close(&format!("{what}: dx"), &dx_cpu, &g.download(&dx), tol);
    assert_close(&format!("{what}: db"), &db_cpu.unwrap(), &g.download(&db.unwrap()), 1e-5);
}

#[test]
fn banded_4bit_products_match_the_cpu() {
    for (precision, tol) in [(Precision::F32, 1e-5), (Precision::Bf16, 2e-2)] {
        let Some(g) = gpu(precision) else { return };
        let entry = if precision == Precision::Bf16 { 2 } else { 4 };
        // [out, in] = [203, 96]: bands of 16 rows leave a short last band of 11; blocks of 64 straddle rows
        let q = quantized(203, 96, QuantType::Nf4, true, 21);
        for band_bytes in [16 * 96 * entry, 50 * 96 * entry + 7, usize::MAX / 4] {
            banded_case(g, &q, 13, band_bytes, tol);
        }
        // plain scales, a one-row band, and an odd width (the band starts mid-byte)
        banded_case(g, &quantized(9, 37, QuantType::Fp4, false, 22), 5, 37 * entry, tol);
    }
}

/// A stacked 4-bit base (three parts of [203, 96], [40, 96], [40, 96], each with its own statistics), forward
/// and backward, in several bands per part and in one, against the CPU's stacked products.
#[test]
fn stacked_4bit_products_match_the_cpu() {
    for (precision, tol) in [(Precision::F32, 1e-5), (Precision::Bf16, 2e-2)] {
        let Some(g) = gpu(precision) else { return };
        let entry = if precision == Precision::Bf16 { 2 } else { 4 };
        let parts = [(203, 21), (40, 22), (40, 23)].map(|(out, seed)| quantized(out, 96, QuantType::Nf4, true, seed));
        let on_device: Vec<_> = parts.iter().map(|q| g.upload_4bit(q)).collect();
        let cpu_parts: Vec<_> = parts.iter().map(|q| (q, &())).collect();
        let gpu_parts: Vec<_> = parts.iter().zip(&on_device).collect();
        let (x, dy) = (matrix(13, 96, 1, 1.0), matrix(13, 283, 2, 1.0));
        let (y_cpu, dx_cpu) =
            (Cpu.linear_4bit_stacked(&x, &cpu_parts, ReadBy::AnyOp), Cpu.linear_4bit_stacked_backward(&dy, &cpu_parts));
        let (gx, gdy) = (g.upload(x), g.upload(dy));
        for band_bytes in [16 * 96 * entry, usize::MAX / 4] {
            let y = g.download(&g.linear_4bit_stacked_banded(&gx, &gpu_parts, band_bytes, ReadBy::AnyOp));
            let dx = g.download(&g.linear_4bit_stacked_backward_banded(&gdy, &gpu_parts, band_bytes));
            let what = format!("{:?} stacked [283, 96], bands of {band_bytes} bytes", g.precision);
            assert_close(&format!("{what}: y"), &y_cpu, &y, tol);
            assert_close(&format!("{what}: dx"), &dx_cpu, &dx, tol);
        }
    }
}

/// A step's loss and named gradients (downloaded), and the model it ran on.
type QloraStep<B> = (f64, Vec<(String, Array2<f32>)>, Decoder<B>);

/// A one-layer Llama whose seven projections are all [1024, 1024], quantized to NF4 + DQ, with LoRA r = 8 on
/// every projection (B given values, so both factors' gradients are compared): (loss, gradients, model).
fn qlora_step<B: Backend>(b: &B) -> QloraStep<B> {
    let config = DecoderConfig::with_shape(64, 1024, 1024, 1, 8, 8);
    let mut model: Decoder<B> = Decoder::random(b, config, 5);
    for (_, linear) in model.linears_mut() {
        linear.quantize(b, QuantType::Nf4, true).unwrap();
    }
    let lora = LoraConfig { r: 8, lora_alpha: 16.0, target_modules: TargetModules::AllLinear, ..LoraConfig::default() };
    init_adapters(&mut model, b, &lora, &mut Rng::new(7)).unwrap();
    for (i, (_, linear)) in model.linears_mut().into_iter().enumerate() {
        if let Some(l) = linear.lora.as_mut() {
            let (rows, cols) = b.dims(&l.b);
            l.b = b.upload(matrix(rows, cols, 600 + i as u64, 0.02));
        }
    }
    let ids: Vec<u32> = (0..12u32).map(|i| (i * 17 + 3) % 64).collect();
    let positions: Vec<usize> = (0..12).collect();
    let targets: Vec<u32> = ids.iter().skip(1).copied().chain([0]).collect();
    let coefficients: Vec<f32> = (0..12).map(|i| if i == 11 { 0.0 } else { 1.0 / 11.0 }).collect();
    let seq = Sequence { ids: &ids, positions: &positions, segment_ids: None };
    let result = weighted_token_loss(&model, b, seq, &targets, &coefficients, None).unwrap();
    let grads = result.grads.iter().map(|(n, g)| (n.clone(), b.download(g))).collect();
    (result.loss, grads, model)
}

#[test]
fn four_bit_bases_stay_packed_on_the_device() {
    let Some(g) = gpu(Precision::F32) else { return };
    let (gpu_loss, gpu_grads, mut model) = qlora_step(g);
    let packed = model.frozen_base_bytes(g).packed;
    assert_eq!(packed.params, 7 * 1024 * 1024, "every projection is 4-bit");
    // codes 0.5 + u8 block codes 1/64 + nested absmax, map and code table ≈ 0.517; an f32 absmax would be 0.5625
    let per_param = packed.per_param();
    assert!(per_param > 0.5 && per_param < 0.53, "4-bit base: {per_param:.4} device bytes per parameter");
    let (cpu_loss, cpu_grads, _) = qlora_step(&Cpu);
    assert!((cpu_loss - gpu_loss).abs() <= 1e-5 * cpu_loss.abs().max(1.0), "loss: cpu {cpu_loss}, gpu {gpu_loss}");
    assert_eq!(cpu_grads.len(), gpu_grads.len(), "different gradient sets");
    assert_eq!(cpu_grads.len(), 14, "A and B of seven adapters");
    for ((name, c), (gname, gv)) in cpu_grads.iter().zip(&gpu_grads) {
        assert_eq!(name, gname);
        assert_close(&format!("QLoRA grad {name}"), c, gv, 1e-4);
    }
    eprintln!("QLoRA step: {per_param:.4} device bytes per 4-bit parameter; loss cpu {cpu_loss:.6} gpu {gpu_loss:.6}");
}

// ---- without a GPU: the same tests on the emulated device ----

#[test]
fn qlora_on_an_emulated_device() {
    cuda_shared::rerun_on_the_emulated_device_without_a_gpu("qlora", &["QLoRA step"]);
}
