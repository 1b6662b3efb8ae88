//! Whole training steps on the GPU against the CPU reference: full, LoRA and QLoRA on a small Llama, every
//! family's shape, the preference objectives, bf16 LoRA steps and frozen bf16 bases, and what a step costs the
//! device. Run with `cargo test --features cuda --test cuda_training_steps`; without a GPU the same tests run
//! on the emulated device (the last test below). Tolerances: those argued in tests/cuda_vs_cpu.rs (1e-4 for a
//! whole f32 step, relative to the CPU's largest magnitude).

#![cfg(feature = "cuda")]

use mftcoder::backend::cpu::Cpu;
use mftcoder::backend::cuda::{Cuda, Precision};
use mftcoder::backend::{Backend, FusedQkv};
use mftcoder::loss::causal_lm::weighted_token_loss;
use mftcoder::loss::preference::{Objective, PairLogps};
use mftcoder::models::decoder::{
    AuxLoss, Decoder, DecoderConfig, Gelu, LatentAttention, MlpKind, Moe, NormKind, Positions, Residual, RotaryPairing,
    RouterSpec, Selection, Sequence,
};
use mftcoder::peft::LoraConfig;
use mftcoder::peft::attach::init_adapters;
use mftcoder::quant::QuantType;
use mftcoder::rng::Rng;
use mftcoder::train::optim::{AdamW, AdamWConfig};
use mftcoder::train::preference::{PairIds, preference_batch};
use ndarray::Array2;

#[path = "kernel_emulator/compile.rs"]
mod compile;
#[path = "kernel_emulator/emulated_device.rs"]
mod emulated_device;

#[path = "cuda_shared/mod.rs"]
mod cuda_shared;
use cuda_shared::{assert_close, gpu, matrix};

// ---- whole training steps ----

#[derive(Clone, Copy, Debug)]
enum Mode {
    Full,
    Lora,
    Qlora,
    /// Full fine-tuning of StarCoder2's shape: LayerNorm with biases, c_fc → GELU → c_proj, biases everywhere.
    FullStarCoder2,
    /// Full fine-tuning of Gemma's shape: (1 + w) RMSNorm, GeGLU, embeddings scaled by √hidden.
    FullGemma,
    /// Full fine-tuning of GPT-BigCode's shape: learned positions, one fused multi-query c_attn, LayerNorm,
    /// GELU (tanh), biases everywhere, tied head.
    FullGptBigCode,
    /// Full fine-tuning of GPT-NeoX's shape: fused per-head query_key_value, rotary on 4 of 16 entries, the
    /// parallel residual with two norms, exact GELU, an untied `embed_out`.
    FullGptNeox,
    /// LoRA on Phi's shape: one shared norm feeding attention and MLP, per-head q/k LayerNorms, rotary on 8 of
    /// 16 entries, GQA, a head with a bias.
    LoraPhi,
    /// LoRA on a Mixtral shape: 4 experts, top-2, renormalised, every expert and router adapted; the
    /// load-balancing term in the loss.
    LoraMixtral,
    /// Full fine-tuning of a Qwen2-MoE shape: layer 0 sparse (6 experts, top-3, raw weights, a shared expert
    /// behind a sigmoid gate), layer 1 dense.
    FullQwen2Moe,
    /// LoRA on a DeepSeek-V2 shape: latent attention (low-rank q, value heads narrower than q/k heads, YaRN's
    /// cos/sin factor), layer 0 dense, layer 1 group-limited routing with a routed scale and a shared expert;
    /// every projection adapted.
    LoraDeepseekV2,
    /// Full fine-tuning of Baichuan2-13B's shape: ALiBi (no RoPE), one fused W_pack, NormHead (the head's
    /// gradient through the row normalisation).
    FullBaichuan,
    /// LoRA on Baichuan2 with MFTCoder's targets (W_pack, o_proj, gate/up/down) and Aquila2's score clamp
    /// (at 0.75, a bound this model's scores pass).
    LoraBaichuanClamped,
    /// Full fine-tuning of a ChatGLM shape: fused [q | k | v] with two multi-query groups, RoPE on half of each
    /// head in interleaved pairs, fused [gate | up] SwiGLU, skips from the normed stream, LayerNorm, biases.
    FullChatGlm,
}

/// A small Llama (GQA, packed two-document batch, the second layer with a sliding window of 9 as in Qwen2),
/// one forward + backward, then one AdamW step; returns the loss, every gradient and every updated trainable
/// parameter, downloaded.
fn train_step<B: Backend>(b: &B, mode: Mode) -> (f64, Vec<(String, Array2<f32>)>) {
    let mut config = DecoderConfig::with_shape(97, 64, 160, 2, 4, 2);
    config.attention.windows[1] = Some(9);
    match mode {
        Mode::FullStarCoder2 => {
            (config.norm, config.mlp, config.norm_eps) = (NormKind::Layer, MlpKind::Plain(Gelu::Tanh), 1e-5);
            (config.attention.qkv_bias, config.attention.o_bias, config.mlp_bias) = (true, true, true);
            config.names = mftcoder::models::starcoder2::NAMES;
        }
        Mode::FullGemma => {
            (config.norm, config.mlp, config.embedding_scale) =
                (NormKind::RmsUnitOffset, MlpKind::GatedGelu, Some(8.0));
        }
        Mode::FullGptBigCode => {
            (config.norm, config.mlp, config.norm_eps) = (NormKind::Layer, MlpKind::Plain(Gelu::Tanh), 1e-5);
            (config.num_key_value_heads, config.attention.fused_qkv) = (1, Some(FusedQkv { groups: 1 }));
            (config.attention.qkv_bias, config.attention.o_bias, config.mlp_bias) = (true, true, true);
            (config.positions, config.max_position_embeddings, config.tie_word_embeddings) =
                (Positions::Learned, 64, true);
            config.names = mftcoder::models::gpt_bigcode::NAMES;
        }
        Mode::FullGptNeox => {
            (config.norm, config.mlp, config.residual) =
                (NormKind::Layer, MlpKind::Plain(Gelu::Erf), Residual::Parallel);
            (config.num_key_value_heads, config.attention.fused_qkv) = (4, Some(FusedQkv { groups: 4 }));
            (config.attention.qkv_bias, config.attention.o_bias, config.mlp_bias) = (true, true, true);
            config.positions = Positions::rotary(config.rope().unwrap().clone(), 4);
            config.names = mftcoder::models::gpt_neox::NAMES;
        }
        Mode::LoraMixtral | Mode::FullQwen2Moe => {
            let qwen = matches!(mode, Mode::FullQwen2Moe);
            let (experts, top_k) = if qwen { (6, 3) } else { (4, 2) };
            config.moe = Some(Moe {
                router: RouterSpec { experts, top_k, normalize: !qwen, scaling: 1.0, selection: Selection::Greedy },
                expert_intermediate_size: 48,
                sparse_layers: if qwen { vec![true, false] } else { vec![true; 2] },
                shared_expert: qwen.then_some((80, true)),
                aux_loss: AuxLoss::LoadBalancing { coef: 0.02 },
            });
            config.names = if qwen { mftcoder::models::qwen2_moe::NAMES } else { mftcoder::models::mixtral::NAMES };
        }
        Mode::LoraDeepseekV2 => {
            let la = LatentAttention {
                q_rank: Some(24),
                kv_rank: 16,
                nope_dim: 12,
                rope_dim: 8,
                v_dim: 16,
                rope_factor: 1.04,
                norm_eps: 1e-6,
            };
            (config.num_key_value_heads, config.head_dim) = (4, la.head_width());
            config.attention.scale = 0.2;
            config.positions = Positions::rotary(config.rope().unwrap().clone(), la.rope_dim);
            config.attention.latent = Some(la);
            config.moe = Some(Moe {
                router: RouterSpec {
                    experts: 6,
                    top_k: 2,
                    normalize: false,
                    scaling: 2.5,
                    selection: Selection::GroupLimited { groups: 2, top_groups: 1 },
                },
                expert_intermediate_size: 32,
                sparse_layers: vec![false, true],
                shared_expert: Some((64, false)),
                aux_loss: AuxLoss::SequenceBalance { alpha: 0.05, per_sequence: true },
            });
            config.names = mftcoder::models::deepseek_v2::NAMES;
        }
        Mode::FullBaichuan | Mode::LoraBaichuanClamped => {
            (config.num_key_value_heads, config.attention.fused_qkv) = (4, Some(FusedQkv { groups: 1 }));
            (config.positions, config.normalized_head) = (Positions::Alibi, true);
            if let Mode::LoraBaichuanClamped = mode {
                config.attention.score_clamp = Some(0.75);
            }
            config.names = mftcoder::models::baichuan::NAMES;
        }
        Mode::FullChatGlm => {
            (config.norm, config.mlp, config.residual) =
                (NormKind::Layer, MlpKind::FusedSwiGlu, Residual::SequentialNormedSkip);
            config.attention.fused_qkv = Some(FusedQkv { groups: 1 });
            (config.attention.qkv_bias, config.attention.o_bias, config.mlp_bias) = (true, true, true);
            let rope = config.rope().unwrap().clone();
            config.positions = Positions::Rotary { rope, dims: 8, pairing: RotaryPairing::Interleaved };
            config.names = mftcoder::models::chatglm::NAMES;
        }
        Mode::LoraPhi => {
            (config.norm, config.mlp, config.residual) =
                (NormKind::Layer, MlpKind::Plain(Gelu::Tanh), Residual::ParallelSharedNorm);
            (config.attention.qkv_bias, config.attention.o_bias, config.mlp_bias) = (true, true, true);
            (config.attention.qk_norm, config.lm_head_bias) = (true, true);
            config.positions = Positions::rotary(config.rope().unwrap().clone(), 8);
            config.names = mftcoder::models::phi::NAMES;
        }
        _ => {}
    }
    let mut model: Decoder<B> = Decoder::random(b, config, 42);
    if let Mode::Qlora = mode {
        for (_, linear) in model.linears_mut() {
            linear.quantize(b, QuantType::Nf4, true).unwrap();
        }
    }
    if let Mode::Lora
    | Mode::Qlora
    | Mode::LoraPhi
    | Mode::LoraMixtral
    | Mode::LoraDeepseekV2
    | Mode::LoraBaichuanClamped = mode
    {
        let targets = match mode {
            Mode::LoraMixtral | Mode::LoraDeepseekV2 => mftcoder::peft::TargetModules::AllLinear,
            Mode::LoraBaichuanClamped => mftcoder::peft::TargetModules::Names(
                ["W_pack", "o_proj", "gate_proj", "down_proj", "up_proj"].map(String::from).into(),
            ),
            _ => LoraConfig::default().target_modules,
        };
        let lora = LoraConfig { r: 8, lora_alpha: 16.0, target_modules: targets, ..LoraConfig::default() };
        init_adapters(&mut model, b, &lora, &mut Rng::new(7)).unwrap();
        // PEFT starts B at zero, which would leave A's gradient zero: give B values so both factors are tested
        for (i, (_, linear)) in model.linears_mut().into_iter().enumerate() {
            if let Some(l) = linear.lora.as_mut() {
                let (rows, cols) = b.dims(&l.b);
                l.b = b.upload(matrix(rows, cols, 500 + i as u64, 0.02));
            }
        }
    }
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 13 + 5) % 97).collect();
    let positions: Vec<usize> = (0..25).chain(0..15).collect();
    let segments: Vec<u32> = (0..40).map(|i| u32::from(i >= 25)).collect();
    let targets: Vec<u32> = ids.iter().skip(1).copied().chain([0]).collect();
    let coefficients: Vec<f32> = (0..40).map(|i| if i == 24 || i == 39 { 0.0 } else { 1.0 / 38.0 }).collect();
    let seq = Sequence { ids: &ids, positions: &positions, segment_ids: Some(&segments) };
    let result = weighted_token_loss(&model, b, seq, &targets, &coefficients, None).unwrap();
    let mut out: Vec<(String, Array2<f32>)> =
        result.grads.iter().map(|(n, g)| (format!("grad {n}"), b.download(g))).collect();
    let mut params = model.trainable_parameters_mut();
    let shapes: Vec<(usize, usize)> = params.iter().map(|(_, p)| b.dims(p)).collect();
    let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    let grads: Vec<Option<&B::Tensor>> = names.iter().map(|n| result.grads.get(n)).collect();
    let mut opt = AdamW::new_on(b, AdamWConfig::default(), &shapes);
    let mut refs: Vec<&mut B::Tensor> = params.iter_mut().map(|(_, p)| &mut **p).collect();
    opt.step_on(b, &mut refs, &grads, 1e-3, &vec![true; names.len()]);
    for (name, p) in names.iter().zip(&refs) {
        out.push((format!("param {name}"), b.download(p)));
    }
    (result.loss, out)
}

fn compare_training_step(mode: Mode) {
    let Some(g) = gpu(Precision::F32) else { return };
    let (cpu_loss, cpu) = train_step(&Cpu, mode);
    let (gpu_loss, gpu_out) = train_step(g, mode);
    assert!(
        (cpu_loss - gpu_loss).abs() <= 1e-5 * cpu_loss.abs().max(1.0),
        "{mode:?} loss: cpu {cpu_loss}, gpu {gpu_loss}"
    );
    assert_eq!(cpu.len(), gpu_out.len(), "{mode:?}: different parameter sets");
    for ((name, c), (gname, gv)) in cpu.iter().zip(&gpu_out) {
        assert_eq!(name, gname);
        assert_close(&format!("{mode:?} {name}"), c, gv, 1e-4);
    }
    eprintln!("{mode:?}: loss cpu {cpu_loss:.6} gpu {gpu_loss:.6}; {} tensors within 1e-4", cpu.len());
}

#[test]
fn full_training_step_matches() {
    compare_training_step(Mode::Full);
}

#[test]
fn lora_training_step_matches() {
    compare_training_step(Mode::Lora);
}

#[test]
fn qlora_training_step_matches() {
    compare_training_step(Mode::Qlora);
}

#[test]
fn starcoder2_and_gemma_training_steps_match() {
    compare_training_step(Mode::FullStarCoder2);
    compare_training_step(Mode::FullGemma);
}

#[test]
fn mixture_of_experts_training_steps_match() {
    compare_training_step(Mode::LoraMixtral);
    compare_training_step(Mode::FullQwen2Moe);
    compare_training_step(Mode::LoraDeepseekV2);
}

#[test]
fn gpt_bigcode_gpt_neox_and_phi_training_steps_match() {
    compare_training_step(Mode::FullGptBigCode);
    compare_training_step(Mode::FullGptNeox);
    compare_training_step(Mode::LoraPhi);
}

#[test]
fn baichuan_and_clamped_training_steps_match() {
    compare_training_step(Mode::FullBaichuan);
    compare_training_step(Mode::LoraBaichuanClamped);
}

#[test]
fn chatglm_training_step_matches() {
    compare_training_step(Mode::FullChatGlm);
}

/// DPO, RPO and ORPO batches of two pairs through a small LoRA Llama: the preference loss, the policy's log-
/// probabilities and every adapter gradient, on both backends.
fn preference_step<B: Backend>(b: &B, objective: &Objective) -> (f64, Vec<(String, Array2<f32>)>) {
    let mut model = preference_model(b, 97);
    preference_run(&mut model, b, objective)
}

/// The LoRA Llama of [`preference_step`] with a vocabulary of `vocab`.
fn preference_model<B: Backend>(b: &B, vocab: usize) -> Decoder<B> {
    let mut model: Decoder<B> = Decoder::random(b, DecoderConfig::with_shape(vocab, 64, 160, 2, 4, 2), 42);
    let lora = LoraConfig { r: 8, lora_alpha: 16.0, ..LoraConfig::default() };
    init_adapters(&mut model, b, &lora, &mut Rng::new(7)).unwrap();
    for (i, (_, linear)) in model.linears_mut().into_iter().enumerate() {
        if let Some(l) = linear.lora.as_mut() {
            let (rows, cols) = b.dims(&l.b);
            l.b = b.upload(matrix(rows, cols, 700 + i as u64, 0.02));
        }
    }
    model
}

/// One batch of two pairs (answers of 10 and 12 tokens with their prompts) → the loss, the gradients and the
/// policy's log-probabilities, downloaded.
fn preference_run<B: Backend>(
    model: &mut Decoder<B>,
    b: &B,
    objective: &Objective,
) -> (f64, Vec<(String, Array2<f32>)>) {
    let ids = |n: usize, k: u32| -> Vec<u32> { (0..n as u32).map(|i| (i * 17 + k) % 96 + 1).collect() };
    let pairs = vec![
        PairIds { prompt: ids(7, 3), chosen: ids(5, 11), rejected: ids(3, 29) },
        PairIds { prompt: ids(4, 5), chosen: ids(6, 13), rejected: ids(8, 31) },
    ];
    let reference = [PairLogps { chosen: -20.0, rejected: -15.0 }, PairLogps { chosen: -25.0, rejected: -35.0 }];
    let outcome = preference_batch(model, b, &pairs, &reference, objective, None).unwrap();
    let mut out: Vec<(String, Array2<f32>)> = outcome.grads.iter().map(|(n, g)| (n.clone(), b.download(g))).collect();
    let logps: Vec<f32> = outcome.policy.iter().flat_map(|p| [p.chosen as f32, p.rejected as f32]).collect();
    out.push(("policy logps".into(), Array2::from_shape_vec((1, 4), logps).unwrap()));
    (outcome.loss, out)
}

// ANCHOR: preference_chunked_head
/// A preference batch scores each answer and takes its gradients with the head in chunks: the same loss,
/// log-probabilities and gradients as the CPU's whole head (within 1e-4), and, seen from the pool once a first
/// batch has filled it, no request as large as the shortest answer's [T, V] logits (10 × 997 f32, 39,880 B;
/// the chunks are 2 rows, 7,976 B).
#[test]
fn preference_batches_run_the_head_in_chunks() {
    if gpu(Precision::F32).is_none() {
        return;
    }
    // a device of its own, so that no other test's buffers reach its counters
    let g = &Cuda::new(0, Precision::F32).expect("the device opened once already");
    let (vocab, rows) = (997, 2);
    for objective in [Objective::Dpo { beta: 0.1, rpo_alpha: Some(0.5) }, Objective::Orpo { beta: 0.1 }] {
        let (cpu_loss, cpu) = preference_run(&mut preference_model(&Cpu, vocab), &Cpu, &objective);
        let mut model = preference_model(g, vocab);
        model.head_chunk_bytes = rows * vocab * 4;
        preference_run(&mut model, g, &objective); // fills the pool
        g.counters(); // restarts the high-water mark
        let (gpu_loss, gpu_out) = preference_run(&mut model, g, &objective);
        let seen = g.counters();
        assert!((cpu_loss - gpu_loss).abs() <= 1e-5 * cpu_loss.abs().max(1.0), "{cpu_loss} vs {gpu_loss}");
        for ((name, c), (_, gv)) in cpu.iter().zip(&gpu_out) {
            assert_close(&format!("{objective:?} in chunks {name}"), c, gv, 1e-4);
        }
        let shortest_logits = (10 * vocab * 4) as u64;
        assert!(seen.largest_take < shortest_logits, "{objective:?}: a [T, V] buffer was asked for: {seen:?}");
        assert!(seen.largest_take >= (rows * vocab * 4) as u64, "{objective:?}: a chunk's logits are: {seen:?}");
        eprintln!("{objective:?}, head in chunks: largest request {} B; tensors within 1e-4", seen.largest_take);
    }
}
// ANCHOR_END: preference_chunked_head

#[test]
fn preference_batches_match() {
    let Some(g) = gpu(Precision::F32) else { return };
    for objective in [
        Objective::Dpo { beta: 0.1, rpo_alpha: None },
        Objective::Dpo { beta: 0.1, rpo_alpha: Some(0.5) },
        Objective::Orpo { beta: 0.1 },
    ] {
        let ((cpu_loss, cpu), (gpu_loss, gpu_out)) =
            (preference_step(&Cpu, &objective), preference_step(g, &objective));
        assert!(
            (cpu_loss - gpu_loss).abs() <= 1e-5 * cpu_loss.abs().max(1.0),
            "{objective:?}: {cpu_loss} vs {gpu_loss}"
        );
        for ((name, c), (_, gv)) in cpu.iter().zip(&gpu_out) {
            assert_close(&format!("{objective:?} {name}"), c, gv, 1e-4);
        }
        eprintln!("{objective:?}: loss cpu {cpu_loss:.6} gpu {gpu_loss:.6}; {} tensors within 1e-4", cpu.len());
    }
}

/// Mixed precision, a whole LoRA step: the loss within the bf16 products' 2e-2, and the gradients within 5e-2
/// of their largest entry — each layer's products add their ≈4e-3 and the backward chains two layers of them.
#[test]
fn bf16_lora_training_step_stays_close() {
    let Some(g) = gpu(Precision::Bf16) else { return };
    let (cpu_loss, cpu) = train_step(&Cpu, Mode::Lora);
    let (gpu_loss, gpu_out) = train_step(g, Mode::Lora);
    assert!((cpu_loss - gpu_loss).abs() <= 2e-2 * cpu_loss.abs(), "bf16 loss: cpu {cpu_loss}, gpu {gpu_loss}");
    for ((name, c), (_, gv)) in cpu.iter().zip(&gpu_out).filter(|((n, _), _)| n.starts_with("grad")) {
        assert_close(&format!("bf16 {name}"), c, gv, 5e-2);
    }
}

/// Full fine-tuning under mixed precision, where the base trains: the gradients of fused projections with
/// biases (ChatGLM's query_key_value and dense_h_to_4h, GPT-BigCode's c_attn) take a column sum of dy, so dy
/// stays f32 for them (`Linear::gradient_read_by`); within `bf16_lora_training_step_stays_close`'s tolerances.
#[test]
fn bf16_full_fine_tuning_steps_stay_close() {
    let Some(g) = gpu(Precision::Bf16) else { return };
    for mode in [Mode::Full, Mode::FullChatGlm, Mode::FullGptBigCode] {
        let (cpu_loss, cpu) = train_step(&Cpu, mode);
        let before = g.counters();
        let (gpu_loss, gpu_out) = train_step(g, mode);
        // GPT-BigCode's biases ride on the products (`blas_lt.rs`); the emulated cuBLASLt takes every one of
        // them, a real one may have no kernel for some (then the fallback is counted, and said once)
        let fallbacks = g.counters().since(before).epilogue_fallbacks;
        if emulated_device::is_the_emulated_run() {
            assert_eq!(fallbacks, 0, "{mode:?}: products fell back from their epilogues");
        } else {
            eprintln!("{mode:?} bf16 step: {fallbacks} products without their cuBLASLt epilogue");
        }
        // the same step again asks cuBLASLt's heuristic nothing: every product's plan is kept (`blas_lt.rs`)
        let before = g.counters();
        let (again, _) = train_step(g, mode);
        assert_eq!(g.counters().since(before).heuristic_queries, 0, "{mode:?}: a repeated step re-planned");
        assert_eq!(again, gpu_loss, "{mode:?}: a repeated step gives the same loss");
        assert!((cpu_loss - gpu_loss).abs() <= 2e-2 * cpu_loss.abs(), "{mode:?} bf16 loss: {cpu_loss} vs {gpu_loss}");
        for ((name, c), (_, gv)) in cpu.iter().zip(&gpu_out).filter(|((n, _), _)| n.starts_with("grad")) {
            assert_close(&format!("{mode:?} bf16 {name}"), c, gv, 5e-2);
        }
    }
}

// ANCHOR: bf16_activations
/// What a mixed-precision LoRA step holds for its backward: every activation only products read is kept in
/// bf16. In the 2-layer step of `train_step` (40 tokens, hidden 64, MLP 160, q and v adapted at r 8) that is,
/// per layer, the two norms' outputs and the attention's (40 × 64 each), the stacked [gate | up] (40 × 320),
/// SwiGLU's output (40 × 160) and the two adapters' h (40 × 8 each), plus the final norm's output: 2 bytes
/// fewer per entry than under f32. The residual stream, q, k, v and the softmax statistics stay f32.
#[test]
fn bf16_steps_hold_product_only_activations_in_two_bytes() {
    let (Some(exact), Some(mixed)) = (gpu(Precision::F32), gpu(Precision::Bf16)) else { return };
    let held = |g: &Cuda| {
        let mut model: Decoder<Cuda> = Decoder::random(g, DecoderConfig::with_shape(97, 64, 160, 2, 4, 2), 42);
        let lora = LoraConfig { r: 8, lora_alpha: 16.0, ..LoraConfig::default() };
        init_adapters(&mut model, g, &lora, &mut Rng::new(7)).unwrap();
        let ids: Vec<u32> = (0..40u32).map(|i| (i * 13 + 5) % 97).collect();
        let positions: Vec<usize> = (0..40).collect();
        let seq = Sequence { ids: &ids, positions: &positions, segment_ids: None };
        model.forward_train(g, seq).unwrap().1.activation_bytes(g)
    };
    let per_layer = 3 * 40 * 64 + 40 * 320 + 40 * 160 + 2 * 40 * 8;
    let bf16_entries = 2 * per_layer + 40 * 64;
    let (f32_bytes, bf16_bytes) = (held(exact), held(mixed));
    assert_eq!(f32_bytes - bf16_bytes, 2 * bf16_entries, "f32 {f32_bytes} B, bf16 {bf16_bytes} B");
    eprintln!("a 2-layer LoRA step holds {f32_bytes} B of activations under f32, {bf16_bytes} B under bf16");
}
// ANCHOR_END: bf16_activations

// ANCHOR: frozen_bf16
/// A frozen weight under mixed precision is stored once as bf16 (`Backend::freeze`): the products read it as
/// they read the f32 weight, which they round to bf16 anyway — bit for bit the same output; the embedding
/// lookup and the download give the weight rounded to bf16; it takes 2 bytes per entry where it took 4.
#[test]
fn a_frozen_weight_is_stored_as_bf16_and_multiplies_the_same() {
    let Some(g) = gpu(Precision::Bf16) else { return };
    let (x, w) = (matrix(19, 48, 31, 1.0), matrix(40, 48, 32, 0.1));
    let rounded = w.mapv(|v| half::bf16::from_f32(v).to_f32());
    let (gx, mut frozen) = (g.upload(x), g.upload_weight(w.clone()));
    let unfrozen = g.upload_weight(w);
    g.freeze(&mut frozen);
    assert_eq!((g.stored_bytes(&unfrozen), g.stored_bytes(&frozen)), (4 * 40 * 48, 2 * 40 * 48));
    assert_eq!(g.download(&frozen), rounded, "the download is the weight rounded to bf16");
    let bits = |t: &Array2<f32>| t.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let (y_frozen, y) = (g.download(&g.linear(&gx, &frozen, None)), g.download(&g.linear(&gx, &unfrozen, None)));
    assert_eq!(bits(&y_frozen), bits(&y), "x·Wᵀ: the same bits");
    let dy = g.upload(matrix(19, 40, 33, 1.0));
    let (dx_frozen, dx) =
        (g.linear_backward(&dy, &gx, &frozen, false, false).0, g.linear_backward(&dy, &gx, &unfrozen, false, false).0);
    assert_eq!(bits(&g.download(&dx_frozen)), bits(&g.download(&dx)), "dy·W: the same bits");
    let ids = [3u32, 0, 39, 3];
    let looked_up = g.download(&g.embedding(&frozen, &ids));
    for (row, &id) in ids.iter().enumerate() {
        assert_eq!(looked_up.row(row), rounded.row(id as usize), "embedding row {row}");
    }
    if let Some(exact) = gpu(Precision::F32) {
        let w = matrix(4, 4, 34, 1.0);
        let mut frozen = exact.upload_weight(w.clone());
        exact.freeze(&mut frozen);
        assert_eq!((exact.download(&frozen), exact.stored_bytes(&frozen)), (w, 64), "f32 precision keeps it exact");
    }
}

/// LoRA steps of every family with a frozen base in bf16 (products, embeddings and heads reading bf16
/// storage): the loss within the bf16 products' 2e-2 of the CPU's and the gradients within 5e-2, as
/// `bf16_lora_training_step_stays_close` argues; and the base at 2 bytes per dense parameter.
#[test]
fn bf16_frozen_bases_train_every_family() {
    let Some(g) = gpu(Precision::Bf16) else { return };
    for mode in
        [Mode::Lora, Mode::Qlora, Mode::LoraPhi, Mode::LoraMixtral, Mode::LoraDeepseekV2, Mode::LoraBaichuanClamped]
    {
        let (cpu_loss, cpu) = train_step(&Cpu, mode);
        let (gpu_loss, gpu_out) = train_step(g, mode);
        assert!(
            (cpu_loss - gpu_loss).abs() <= 2e-2 * cpu_loss.abs(),
            "{mode:?} bf16 loss: cpu {cpu_loss}, gpu {gpu_loss}"
        );
        for ((name, c), (_, gv)) in cpu.iter().zip(&gpu_out).filter(|((n, _), _)| n.starts_with("grad")) {
            assert_close(&format!("{mode:?} bf16 {name}"), c, gv, 5e-2);
        }
    }
    let mut model: Decoder<Cuda> = Decoder::random(g, DecoderConfig::with_shape(97, 64, 160, 2, 4, 2), 42);
    let four_bytes = model.frozen_base_bytes(g).dense.per_param();
    init_adapters(&mut model, g, &LoraConfig::default(), &mut Rng::new(7)).unwrap();
    let frozen = model.frozen_base_bytes(g);
    assert_eq!((four_bytes, frozen.dense.per_param(), frozen.packed.params), (4.0, 2.0, 0), "{frozen:?}");
}
// ANCHOR_END: frozen_bf16

/// What a LoRA step costs the device besides arithmetic, counted: once the first run has filled the pool, two
/// identical runs make the same launches and reads and allocate nothing (model set-up, the op-by-op AdamW and
/// the downloads included; `tests/cuda_step_counters.rs` counts the trainer's fused step alone).
#[test]
fn a_training_step_is_counted() {
    let Some(g) = gpu(Precision::F32) else { return };
    let counted = || {
        let before = g.counters();
        train_step(g, Mode::Lora);
        g.counters().since(before)
    };
    let (first, second, third) = (counted(), counted(), counted());
    assert!(first.launches > 0 && first.gemms > 0 && first.host_reads > 0, "{first}");
    assert_eq!(second, third, "two identical steps");
    assert_eq!(second.allocations, 0, "the pool serves a repeated step: {second}");
    eprintln!("a 2-layer LoRA step (model set-up and downloads included): {second}");
}

/// The bench's steady state on the `tiny` shape (4 layers): what one LoRA and one QLoRA step cost the device
/// besides arithmetic, per step and per layer — the numbers the GPU issue sets targets against. Consecutive
/// steps must cost the same.
#[test]
fn bench_steps_are_counted_in_steady_state() {
    let Some(g) = gpu(Precision::F32) else { return };
    for mode in ["lora", "qlora"] {
        let args = mftcoder::bench::BenchArgs {
            model: "tiny".into(),
            mode: mode.into(),
            batch: Some(1),
            seq: Some(32),
            warmup: 1,
            steps: 2,
        };
        let mut counted = vec![g.counters()];
        mftcoder::bench::run(g, &args, &|| {}, &|| g.synchronize(), &mut || counted.push(g.counters())).unwrap();
        let steps: Vec<_> = counted.windows(2).map(|w| w[1].since(w[0])).collect();
        assert_eq!(steps[1], steps[2], "{mode}: two steady-state steps");
        let s = steps[2];
        eprintln!(
            "tiny {mode} step (r 16, all linear layers, 1 × 32): {s}; per layer {:.0} launches + {:.0} products",
            s.launches as f64 / 4.0,
            s.gemms as f64 / 4.0
        );
    }
}

/// A whole mixed-precision LoRA step (2 layers) goes through the tensor-core attention: at least a forward, a
/// dq and a dk/dv launch per layer, and the loss and gradients within `bf16_lora_training_step_stays_close`'s
/// tolerances.
#[test]
fn a_bf16_model_step_uses_the_tensor_core_attention() {
    let Some(g) = gpu(Precision::Bf16) else { return };
    let before = mftcoder::backend::cuda::flash_attention_launches();
    let (gpu_loss, gpu_out) = train_step(g, Mode::Lora);
    let launched = mftcoder::backend::cuda::flash_attention_launches() - before;
    assert!(launched >= 3 * 2, "a 2-layer step launched {launched} tensor-core attention kernels");
    let (cpu_loss, cpu) = train_step(&Cpu, Mode::Lora);
    assert!((cpu_loss - gpu_loss).abs() <= 2e-2 * cpu_loss.abs(), "bf16 loss: cpu {cpu_loss}, gpu {gpu_loss}");
    let mut worst = 0.0f32;
    for ((name, c), (_, gv)) in cpu.iter().zip(&gpu_out).filter(|((n, _), _)| n.starts_with("grad")) {
        assert_close(&format!("bf16 (flash attention) {name}"), c, gv, 5e-2);
        let scale = c.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        worst = c.iter().zip(gv).fold(worst, |m, (a, b)| m.max((a - b).abs() / scale));
    }
    eprintln!(
        "bf16 LoRA step: {launched} tensor-core attention launches; loss cpu {cpu_loss:.6} gpu {gpu_loss:.6}; \
         gradients within {worst:.1e} (tolerance 5e-2)"
    );
}

// ---- without a GPU: the same steps on an emulated device ----

/// Where no GPU answers, run this file's tests again in a child process whose libcuda, libnvrtc and libcublas
/// are `tests/kernel_emulator/fake_cuda.cpp`: host memory for device memory, the kernels' unchanged sources
/// on CPU fibers, a reference GEMM for cuBLAS. So the whole CUDA backend — its launches and their argument
/// lists, its shapes, segment tables, column-sum recursion, 4-bit upload, bf16 casts and cuBLAS arguments —
/// runs and is compared with the CPU on every `cargo test --features cuda`. What only real hardware can show
/// (NVRTC's code generation, the driver, real cuBLAS, timing) is left to a machine with a GPU.
#[test]
fn training_steps_on_an_emulated_device() {
    cuda_shared::rerun_on_the_emulated_device_without_a_gpu("training-steps", &["tensors within", "LoRA step"]);
}
