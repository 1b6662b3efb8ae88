//! The hand-written backward of the Llama stack against PyTorch autograd (transformers 5.24.0,
//! `fixtures/generate.py --only llama_grads`), and ten AdamW steps against `torch.optim.AdamW`.
//!
//! Tolerances (DESIGN §5): loss ≤ 1e-5 absolute; every gradient ≤ 1e-3 of its tensor's largest magnitude;
//! AdamW losses ≤ 1e-4 absolute after ten steps (llm.c's test shape).

mod golden_grads;

use mftcoder::backend::cpu::Cpu;
use mftcoder::io::safetensors::WeightStore;
use mftcoder::loss::causal_lm::{mean_token_loss, next_token_targets};
use mftcoder::models::decoder::{Decoder, Sequence};
use mftcoder::models::load_causal_lm;
use mftcoder::train::optim::{AdamW, AdamWConfig};
use ndarray::Array2;
use std::path::{Path, PathBuf};

fn cases() -> Vec<(PathBuf, WeightStore)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut out = Vec::new();
    for case in ["gqa_tied", "mqa_headdim_linear", "odd_sizes_bf16_bias"] {
        let golden = WeightStore::open(&root.join(format!("llama_grads/{case}.safetensors"))).unwrap();
        out.push((root.join("llama").join(case), golden));
    }
    out
}

fn ids_u32(v: Vec<i64>) -> Vec<u32> {
    v.into_iter().map(|i| i as u32).collect()
}

/// Every gradient against `{prefix}grad.<name>` in the golden (shared checks), with a line on the worst one.
fn compare_grads(case: &Path, golden: &WeightStore, prefix: &str, grads: &mftcoder::models::decoder::Gradients<Cpu>) {
    let (worst, at) = golden_grads::compare_grads(&case.display().to_string(), golden, prefix, grads);
    eprintln!("{} {prefix}: {} gradients, worst relative error {worst:.2e} ({at})", case.display(), grads.len());
}

#[test]
fn gradients_match_pytorch_autograd() {
    for (case, golden) in cases() {
        let ids = ids_u32(golden.tensor_i64("input_ids").unwrap());
        let positions: Vec<usize> = (0..ids.len()).collect();
        let model = load_causal_lm(&Cpu, &case).unwrap();
        let (targets, weights) = next_token_targets(&ids, None, None);
        let seq = Sequence { ids: &ids, positions: &positions, segment_ids: None };
        let result = mean_token_loss(&model, &Cpu, seq, &targets, &weights).unwrap();
        let want = golden.tensor_f32("loss").unwrap()[[0]] as f64;
        assert!((result.loss - want).abs() <= 1e-5, "{}: loss {} vs {want}", case.display(), result.loss);
        compare_grads(&case, &golden, "", &result.grads);
    }
}

#[test]
fn packed_documents_do_not_see_each_other() {
    for (case, golden) in cases() {
        let ids = ids_u32(golden.tensor_i64("packed.input_ids").unwrap());
        let segments: Vec<u32> =
            golden.tensor_i64("packed.segment_ids").unwrap().into_iter().map(|s| s as u32).collect();
        // positions restart at each document
        let positions: Vec<usize> =
            segments.iter().enumerate().map(|(t, &s)| t - segments.iter().position(|&x| x == s).unwrap()).collect();
        let model = load_causal_lm(&Cpu, &case).unwrap();
        let (targets, weights) = next_token_targets(&ids, Some(&segments), None);
        let seq = Sequence { ids: &ids, positions: &positions, segment_ids: Some(&segments) };
        let result = mean_token_loss(&model, &Cpu, seq, &targets, &weights).unwrap();
        let want = golden.tensor_f32("packed.loss").unwrap()[[0]] as f64;
        assert!((result.loss - want).abs() <= 1e-5, "{}: packed loss {} vs {want}", case.display(), result.loss);
        compare_grads(&case, &golden, "packed.", &result.grads);
    }
}

/// Ten full-parameter AdamW steps on one sequence: the loss before each step and after the last.
fn adamw_losses(model: &mut Decoder<Cpu>, ids: &[u32], lr: f32) -> (Vec<f64>, f64, Vec<f64>) {
    let positions: Vec<usize> = (0..ids.len()).collect();
    let (targets, weights) = next_token_targets(ids, None, None);
    let shapes: Vec<(usize, usize)> = model.named_parameters_mut().iter().map(|(_, p)| p.dim()).collect();
    let mut opt = AdamW::new(AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }, &shapes);
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for _ in 0..=10 {
        let seq = Sequence { ids, positions: &positions, segment_ids: None };
        let result = mean_token_loss(model, &Cpu, seq, &targets, &weights).unwrap();
        losses.push(result.loss);
        if losses.len() == 11 {
            break;
        }
        let mut params = model.named_parameters_mut();
        let grads: Vec<&Array2<f32>> = params.iter().map(|(n, _)| &result.grads[n]).collect();
        norms.push(grads.iter().flat_map(|g| g.iter()).map(|&v| v as f64 * v as f64).sum::<f64>().sqrt());
        let mut refs: Vec<&mut Array2<f32>> = params.iter_mut().map(|(_, p)| &mut **p).collect();
        let decay = vec![true; refs.len()]; // MFTCoder decays every parameter
        opt.step(&mut refs, &grads, lr, &decay);
    }
    let last = losses.pop().unwrap();
    (losses, last, norms)
}

#[test]
fn ten_adamw_steps_match_pytorch() {
    for (case, golden) in cases() {
        let ids = ids_u32(golden.tensor_i64("input_ids").unwrap());
        for (prefix, lr) in [("adamw_mft", 5e-5f32), ("adamw_fast", 1e-3)] {
            let mut model = load_causal_lm(&Cpu, &case).unwrap();
            let (losses, last, norms) = adamw_losses(&mut model, &ids, lr);
            let want = golden.tensor_f32(&format!("{prefix}.losses")).unwrap();
            let want_last = golden.tensor_f32(&format!("{prefix}.final_loss")).unwrap()[[0]] as f64;
            let want_norms = golden.tensor_f32(&format!("{prefix}.grad_norm")).unwrap();
            let mut worst = 0.0f64;
            for (step, (&got, &w)) in losses.iter().zip(want.iter()).enumerate() {
                let d = (got - w as f64).abs();
                worst = worst.max(d);
                assert!(d <= 1e-4, "{} {prefix} step {step}: loss {got} vs {w}", case.display());
                let n = norms[step];
                assert!(
                    (n - want_norms[step] as f64).abs() <= 1e-3 * n.max(1.0),
                    "{} {prefix} step {step}: grad norm {n} vs {}",
                    case.display(),
                    want_norms[step]
                );
            }
            assert!((last - want_last).abs() <= 1e-4, "{} {prefix}: final loss {last} vs {want_last}", case.display());
            eprintln!(
                "{} {prefix}: losses {:.5} → {last:.5}, worst |Δloss| {worst:.2e}, final Δ {:.2e}",
                case.display(),
                losses[0],
                (last - want_last).abs()
            );
        }
    }
}

#[test]
fn activation_checkpointing_gives_identical_gradients_with_less_memory() {
    for (case, golden) in cases() {
        let ids = ids_u32(golden.tensor_i64("input_ids").unwrap());
        let positions: Vec<usize> = (0..ids.len()).collect();
        let seq = Sequence { ids: &ids, positions: &positions, segment_ids: None };
        let (targets, weights) = next_token_targets(&ids, None, None);
        let mut model = load_causal_lm(&Cpu, &case).unwrap();
        let kept_bytes = model.forward_train(&Cpu, seq).unwrap().1.activation_bytes(&Cpu);
        let kept = mean_token_loss(&model, &Cpu, seq, &targets, &weights).unwrap();
        model.recompute_activations = true;
        let recomputed_bytes = model.forward_train(&Cpu, seq).unwrap().1.activation_bytes(&Cpu);
        let recomputed = mean_token_loss(&model, &Cpu, seq, &targets, &weights).unwrap();
        assert_eq!(kept.loss, recomputed.loss);
        for (name, g) in &kept.grads {
            assert!(g == &recomputed.grads[name], "{}: {name} differs with recomputation", case.display());
        }
        assert!(recomputed_bytes * 3 < kept_bytes, "{recomputed_bytes} vs {kept_bytes}");
        eprintln!("{}: activations held {kept_bytes} B → {recomputed_bytes} B with checkpointing", case.display());
    }
}
