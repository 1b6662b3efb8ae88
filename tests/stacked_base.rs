//! Stacked frozen bases (`models::stacked_base`): a LoRA model whose q/k/v and gate/up bases run as one product
//! each gives the logits, loss and adapter gradients of the same model with separate products, on every
//! shape the stacking meets — grouped heads, biases, dropout, a Gemma MLP, experts, activation recomputation,
//! layer 0's skipped input gradient, 4-bit bases part by part — and leaves alone what cannot be stacked (a
//! trained bias, a bias on a 4-bit base).
//! `freeze_base` stacks (on both backends); the separate model is the same one after
//! `unstack_frozen_bases`. `tests/cuda_training_steps.rs` compares the GPU's stacked step with the CPU's.
//!
//! Tolerance: the products sum the same terms in another order (one [T, Σ out] product, one dx product over
//! Σ out), so logits and loss agree to 1e-5 and every gradient to 1e-4 of its tensor's largest magnitude.

use mftcoder::backend::Backend;
use mftcoder::backend::cpu::Cpu;
use mftcoder::loss::causal_lm::{mean_token_loss, next_token_targets};
use mftcoder::models::decoder::{Decoder, DecoderConfig, Logits, MlpKind, Sequence};
use mftcoder::peft::attach::init_adapters;
use mftcoder::peft::lora::{LoraBias, LoraConfig, TargetModules};
use mftcoder::quant::QuantType;
use mftcoder::rng::Rng;
use ndarray::Array2;

fn llama() -> DecoderConfig {
    DecoderConfig::with_shape(61, 48, 80, 2, 4, 2) // 4 query heads sharing 2 key/value heads
}

fn all_linear(bias: LoraBias, dropout: f64) -> LoraConfig {
    LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: dropout,
        bias,
        target_modules: TargetModules::AllLinear,
        ..LoraConfig::default()
    }
}

/// The model with seeded weights and adapters whose B is not zero (PEFT's init would hide the branch).
fn adapted(config: &DecoderConfig, lora: &LoraConfig, quantize: bool) -> Decoder<Cpu> {
    let mut model = Decoder::random(&Cpu, config.clone(), 11);
    if quantize {
        for (_, linear) in model.linears_mut() {
            linear.quantize(&Cpu, QuantType::Nf4, true).unwrap();
        }
    }
    init_adapters(&mut model, &Cpu, lora, &mut Rng::new(3)).unwrap();
    let mut rng = Rng::new(4);
    for (_, linear) in model.linears_mut() {
        if let Some(adapter) = linear.lora.as_mut() {
            let (out, r) = Cpu.dims(&adapter.b);
            adapter.b = Cpu.upload_weight(Array2::from_shape_fn((out, r), |_| (rng.normal() * 0.3) as f32));
        }
    }
    model
}

fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Checks that `stacked` (as `freeze_base` left it) has `expected_stacks` stacks, unstacks a copy, and compares
/// the two on a packed row of two documents: logits, loss and every gradient.
fn assert_same_model(case: &str, mut separate: Decoder<Cpu>, mut stacked: Decoder<Cpu>, expected_stacks: usize) {
    assert_eq!(stacked.stacked_bases_mut().len(), expected_stacks, "{case}: stacks");
    separate.unstack_frozen_bases(&Cpu);
    assert_eq!(separate.stacked_bases_mut().len(), 0, "{case}: unstacked");
    let separate = &separate;
    let ids: Vec<u32> = (0..23u32).map(|i| (i * 7 + 3) % 61).collect();
    let segments: Vec<u32> = (0..23).map(|t| u32::from(t >= 14)).collect();
    let positions: Vec<usize> = (0..23).map(|t| if t >= 14 { t - 14 } else { t }).collect();

    let (l1, l2) = (
        Cpu.download(&separate.forward(&Cpu, &ids, None, Logits::All).unwrap()),
        Cpu.download(&stacked.forward(&Cpu, &ids, None, Logits::All).unwrap()),
    );
    assert!(max_abs_diff(&l1, &l2) <= 1e-5, "{case}: logits differ by {}", max_abs_diff(&l1, &l2));

    let (targets, weights) = next_token_targets(&ids, Some(&segments), None);
    let seq = Sequence { ids: &ids, positions: &positions, segment_ids: Some(&segments) };
    let a = mean_token_loss(separate, &Cpu, seq, &targets, &weights).unwrap();
    let b = mean_token_loss(&stacked, &Cpu, seq, &targets, &weights).unwrap();
    assert!((a.loss - b.loss).abs() <= 1e-5, "{case}: loss {} vs {}", a.loss, b.loss);
    let names = |g: &mftcoder::models::decoder::Gradients<Cpu>| g.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&a.grads), names(&b.grads), "{case}: the same gradients");
    assert!(!a.grads.is_empty());
    for (name, ga) in &a.grads {
        let scale = ga.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        let d = max_abs_diff(ga, &b.grads[name]) / scale;
        assert!(d <= 1e-4, "{case}: {name}: relative difference {d:.2e}");
    }
}

#[test]
fn stacked_products_give_the_separate_products_results() {
    let lora = all_linear(LoraBias::None, 0.0);
    // 2 layers: q/k/v and gate/up stacked in each
    assert_same_model("llama, GQA", adapted(&llama(), &lora, false), adapted(&llama(), &lora, false), 4);

    let mut biased = llama();
    biased.attention.qkv_bias = true; // Qwen2's q/k/v biases, frozen here: stacked with the weights
    assert_same_model("frozen q/k/v biases", adapted(&biased, &lora, false), adapted(&biased, &lora, false), 4);

    let mut gemma = llama();
    gemma.mlp = MlpKind::GatedGelu;
    assert_same_model("gelu(gate) ⊙ up", adapted(&gemma, &lora, false), adapted(&gemma, &lora, false), 4);

    let only_q_v = LoraConfig { r: 4, lora_alpha: 8.0, ..LoraConfig::default() }; // PEFT's default: q and v only
    assert_same_model(
        "adapters on q and v only",
        adapted(&llama(), &only_q_v, false),
        adapted(&llama(), &only_q_v, false),
        4,
    );
}

#[test]
fn dropout_and_recomputation_see_the_same_branches() {
    let lora = all_linear(LoraBias::None, 0.2);
    let (mut separate, mut stacked) = (adapted(&llama(), &lora, false), adapted(&llama(), &lora, false));
    for model in [&mut separate, &mut stacked] {
        model.dropout_seed = Some(17);
        model.recompute_activations = true;
    }
    assert_same_model("dropout 0.2, recomputed layers", separate, stacked, 4);
}

#[test]
fn experts_stack_their_own_gate_and_up() {
    let mut config = llama();
    config.moe = Some(mftcoder::models::decoder::Moe {
        router: mftcoder::nn::moe_router::RouterSpec {
            experts: 4,
            top_k: 2,
            normalize: true,
            scaling: 1.0,
            selection: mftcoder::nn::moe_router::Selection::Greedy,
        },
        expert_intermediate_size: 24,
        sparse_layers: vec![true; 2],
        shared_expert: None,
        aux_loss: mftcoder::models::decoder::AuxLoss::LoadBalancing { coef: 0.02 },
    });
    config.names = mftcoder::models::mixtral::NAMES;
    let lora = all_linear(LoraBias::None, 0.0);
    // per layer: q/k/v, and gate/up of each of the 4 experts
    assert_same_model("4 experts", adapted(&config, &lora, false), adapted(&config, &lora, false), 10);
}

#[test]
fn four_bit_bases_stack_part_by_part() {
    // NF4 + double quantization: each part decoded with its own statistics into its own columns
    let lora = all_linear(LoraBias::None, 0.0);
    assert_same_model("4-bit llama", adapted(&llama(), &lora, true), adapted(&llama(), &lora, true), 4);
    let lora = all_linear(LoraBias::None, 0.1);
    let mut recomputed = adapted(&llama(), &lora, true);
    recomputed.recompute_activations = true;
    assert_same_model("4-bit, dropout, recomputed", adapted(&llama(), &lora, true), recomputed, 4);

    let mut model = adapted(&llama(), &all_linear(LoraBias::None, 0.0), true);
    let stacked_bytes = model.frozen_base_bytes(&Cpu);
    model.unstack_frozen_bases(&Cpu);
    assert_eq!(model.frozen_base_bytes(&Cpu), stacked_bytes, "the same 4-bit blocks, in the same bytes");
}

#[test]
fn trained_biases_and_biased_4_bit_bases_stay_apart() {
    let mut biased = llama();
    biased.attention.qkv_bias = true;
    let lora = all_linear(LoraBias::LoraOnly, 0.0); // q/k/v train their biases: their products stay apart
    assert_same_model("trained q/k/v biases", adapted(&biased, &lora, false), adapted(&biased, &lora, false), 2);

    // 4-bit q/k/v with (frozen) biases stay apart; the bias-free gate/up still stack
    let lora = all_linear(LoraBias::None, 0.0);
    assert_same_model("4-bit, q/k/v biases", adapted(&biased, &lora, true), adapted(&biased, &lora, true), 2);
}

#[test]
fn stacking_keeps_the_frozen_base_its_size_and_unstacking_gives_it_back() {
    let lora = all_linear(LoraBias::None, 0.0);
    let mut model = adapted(&llama(), &lora, false);
    let stacked_bytes = model.frozen_base_bytes(&Cpu);
    let ids = [5u32, 9, 2, 44, 17];
    let logits = Cpu.download(&model.forward(&Cpu, &ids, None, Logits::All).unwrap());
    model.unstack_frozen_bases(&Cpu);
    assert_eq!(model.frozen_base_bytes(&Cpu), stacked_bytes, "the same parameters in the same bytes");
    model.stack_frozen_bases(&Cpu);
    let again = Cpu.download(&model.forward(&Cpu, &ids, None, Logits::All).unwrap());
    assert_eq!(logits, again, "unstacked and stacked again: the same weights, bit for bit");
    let mut decoding = model.for_decoding(&Cpu);
    assert_eq!(decoding.frozen_base_bytes(&Cpu), stacked_bytes);
    assert_eq!(decoding.stacked_bases_mut().len(), 4);
}

#[test]
fn a_model_taken_for_decoding_is_stacked() {
    let model = Decoder::random(&Cpu, llama(), 5);
    let ids = [5u32, 9, 2, 44, 17];
    let separate = Cpu.download(&model.forward(&Cpu, &ids, None, Logits::All).unwrap());
    let mut decoding = Decoder::random(&Cpu, llama(), 5).for_decoding(&Cpu);
    assert_eq!(decoding.stacked_bases_mut().len(), 4);
    let stacked = Cpu.download(&decoding.forward(&Cpu, &ids, None, Logits::All).unwrap());
    assert!(max_abs_diff(&separate, &stacked) <= 1e-5);

    // a 4-bit model (NF4 + double quantization) taken for decoding: its parts stacked as they are packed
    let quantized = || {
        let mut model = Decoder::random(&Cpu, llama(), 5);
        for (_, linear) in model.linears_mut() {
            linear.quantize(&Cpu, QuantType::Nf4, true).unwrap();
        }
        model
    };
    let separate = Cpu.download(&quantized().forward(&Cpu, &ids, None, Logits::All).unwrap());
    let mut decoding = quantized().for_decoding(&Cpu);
    assert_eq!(decoding.stacked_bases_mut().len(), 4);
    let stacked = Cpu.download(&decoding.forward(&Cpu, &ids, None, Logits::All).unwrap());
    assert!(max_abs_diff(&separate, &stacked) <= 1e-5, "4-bit: {}", max_abs_diff(&separate, &stacked));
}
