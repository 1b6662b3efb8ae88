//! Qwen-1 and ChatGLM2/3 — the families MFTCoder runs from its own copies of their remote code — against that
//! code under transformers 4.44.2 (`fixtures/golden/remote_qwen_chatglm.py`, described in
//! `fixtures/remote_code/README.md`).
//!
//! Tolerances as for every f32 golden (DESIGN §5): logits ≤ 1e-4, the training loss ≤ 1e-5 relative, every
//! gradient ≤ 1e-3 of its tensor's largest magnitude, greedy continuations through the KV cache equal.
//! `qwen_long` is trained on 16 positions and scored on 40: its eval logits run with dynamic NTK (α = 7)
//! and log-length query scaling, its training loss with neither, and its greedy run passes position 16
//! with the prefill's α = 1 kept — each path a different part of the reference.

mod golden_grads;

use mftcoder::backend::Backend;
use mftcoder::backend::cpu::Cpu;
use mftcoder::io::hf_config::{HfConfig, RopeScaling};
use mftcoder::io::safetensors::WeightStore;
use mftcoder::models::decoder::{Decoder, Logits, MlpKind, Positions, Residual, RotaryPairing};
use mftcoder::models::{self, load_causal_lm};
use ndarray::Array2;
use std::path::{Path, PathBuf};

const CASES: [&str; 4] = ["qwen_long", "qwen_partial_bias", "chatglm2_mqa", "chatglm3_postln"];

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/remote_code").join(case)
}

fn golden(case: &str) -> WeightStore {
    WeightStore::open(&case_dir(case).join("golden.safetensors")).unwrap()
}

fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn golden_logits(golden: &WeightStore) -> Array2<f32> {
    golden.tensor_f32("logits").unwrap().into_dimensionality().unwrap()
}

fn logits(model: &Decoder<Cpu>, ids: &[u32]) -> Array2<f32> {
    Cpu.download(&model.forward(&Cpu, ids, None, Logits::All).unwrap())
}

#[test]
fn configs_resolve_as_the_remote_code_reads_them() {
    let config = |case: &str| models::decoder_config(&HfConfig::read(&case_dir(case)).unwrap()).unwrap();
    let qwen = config("qwen_long");
    assert_eq!((qwen.intermediate_size, qwen.attention.logn_beyond), (48, Some(16)));
    assert_eq!(qwen.rope().unwrap().scaling, RopeScaling::QwenDynamicNtk { seq_length: 16 });
    let partial = config("qwen_partial_bias");
    assert!(matches!(partial.positions, Positions::Rotary { dims: 6, pairing: RotaryPairing::Halves, .. }));
    assert!(partial.attention.o_bias && partial.mlp_bias && partial.attention.logn_beyond.is_none());
    let glm2 = config("chatglm2_mqa");
    assert_eq!((glm2.num_key_value_heads, glm2.mlp, glm2.vocab_size), (2, MlpKind::FusedSwiGlu, 320));
    assert!(matches!(glm2.positions, Positions::Rotary { dims: 6, pairing: RotaryPairing::Interleaved, .. }));
    let glm3 = config("chatglm3_postln");
    assert_eq!((glm3.residual, glm3.rope().unwrap().theta), (Residual::SequentialNormedSkip, 30_000.0));
}

#[test]
fn logits_match_the_remote_code() {
    for case in CASES {
        let (model, golden) = (load_causal_lm(&Cpu, &case_dir(case)).unwrap(), golden(case));
        let diff =
            max_abs_diff(&logits(&model, &golden_grads::token_ids(&golden, "input_ids")), &golden_logits(&golden));
        assert!(diff <= 1e-4, "{case}: max |Δlogits| {diff:.3e}");
    }
}

/// What each option contributes, by turning it off: the goldens pin every one of them.
#[test]
fn each_option_is_pinned_by_the_goldens() {
    let mutated = |case: &str, change: &dyn Fn(&mut models::decoder::DecoderConfig)| {
        let dir = case_dir(case);
        let mut c = models::decoder_config(&HfConfig::read(&dir).unwrap()).unwrap();
        change(&mut c);
        let model = Decoder::load(&Cpu, &WeightStore::open(&dir.join("model.safetensors")).unwrap(), c).unwrap();
        let golden = golden(case);
        max_abs_diff(&logits(&model, &golden_grads::token_ids(&golden, "input_ids")), &golden_logits(&golden))
    };
    let no_logn = mutated("qwen_long", &|c| c.attention.logn_beyond = None);
    let no_ntk = mutated("qwen_long", &|c| {
        if let Positions::Rotary { rope, .. } = &mut c.positions {
            rope.scaling = RopeScaling::None;
        }
    });
    let halves = mutated("chatglm2_mqa", &|c| {
        if let Positions::Rotary { pairing, .. } = &mut c.positions {
            *pairing = RotaryPairing::Halves;
        }
    });
    let plain_skip = mutated("chatglm3_postln", &|c| c.residual = Residual::Sequential);
    for (what, diff) in
        [("logn", no_logn), ("dynamic NTK", no_ntk), ("interleaved pairs", halves), ("normed skips", plain_skip)]
    {
        assert!(diff > 1e-2, "dropping {what} moves the logits by only {diff:.3e}");
    }
}

#[test]
fn loss_and_gradients_match_pytorch_autograd() {
    for case in CASES {
        let (model, golden) = (load_causal_lm(&Cpu, &case_dir(case)).unwrap(), golden(case));
        let result = golden_grads::loss_on_input_ids(&model, &golden);
        let want = golden.tensor_f32("loss").unwrap()[[0]] as f64;
        assert!(((result.loss - want) / want).abs() <= 1e-5, "{case}: loss {} vs {want}", result.loss);
        golden_grads::compare_grads(case, &golden, "", &result.grads);
    }
}

#[test]
fn greedy_continuation_through_the_kv_cache_matches_the_remote_code() {
    for case in CASES {
        golden_grads::assert_greedy_matches(case, &case_dir(case), &golden(case));
    }
}
