//! Every family on the one decoder against transformers 5.24.0: Mistral, Qwen2, StarCoder2 and Gemma
//! (`fixtures/generate.py --only families`, described in `fixtures/families/README.md`) and GPT-BigCode,
//! GPT-NeoX and Phi (`--only fused_families`, `fixtures/fused_families/README.md`).
//!
//! Tolerances as for Llama (DESIGN §5): logits ≤ 1e-4 absolute; loss ≤ 1e-5 absolute; every gradient ≤ 1e-3
//! of its tensor's largest magnitude; greedy continuations (through the KV cache, past the window) equal.

mod golden_grads;

use mftcoder::backend::Backend;
use mftcoder::backend::cpu::Cpu;
use mftcoder::io::hf_config::HfConfig;
use mftcoder::io::safetensors::WeightStore;
use mftcoder::models::decoder::{
    Decoder, DecoderConfig, FusedQkv, Gelu, Logits, MlpKind, NormKind, Positions, Residual,
};
use mftcoder::models::{self, load_causal_lm};
use ndarray::Array2;
use std::path::{Path, PathBuf};

const CASES: [&str; 14] = [
    "mistral_window",
    "mistral_headdim_tied",
    "qwen2_bias_tied",
    "qwen2_window_layers",
    "starcoder2_window",
    "starcoder2_untied_nowindow",
    "gemma_tied",
    "gemma_headdim",
    "gpt_bigcode_mqa",
    "gpt_bigcode_mha_noscale",
    "gpt_neox_parallel",
    "gpt_neox_sequential",
    "phi_partial_rotary",
    "phi_qk_layernorm_gqa",
];

/// The fused-projection families have their own fixture section.
fn case_dir(case: &str) -> PathBuf {
    let section = if case.starts_with("gpt_") || case.starts_with("phi") { "fused_families" } else { "families" };
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(section).join(case)
}

fn golden(case: &str) -> WeightStore {
    WeightStore::open(&case_dir(case).join("golden.safetensors")).unwrap()
}

fn ids(golden: &WeightStore, name: &str) -> Vec<u32> {
    golden_grads::token_ids(golden, name)
}

fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn logits(model: &Decoder<Cpu>, ids: &[u32]) -> Array2<f32> {
    Cpu.download(&model.forward(&Cpu, ids, None, Logits::All).unwrap())
}

#[test]
fn configs_resolve_as_transformers_does() {
    let config = |case: &str| models::decoder_config(&HfConfig::read(&case_dir(case)).unwrap()).unwrap();
    let mistral = config("mistral_window");
    assert_eq!(mistral.attention.windows, vec![Some(8); 2]);
    assert!(!mistral.attention.qkv_bias && !mistral.attention.o_bias);
    let tied = config("mistral_headdim_tied");
    assert_eq!((tied.head_dim, tied.attention.windows.clone(), tied.tie_word_embeddings), (24, vec![None; 2], true));
    let qwen = config("qwen2_bias_tied");
    assert!(qwen.attention.qkv_bias && !qwen.attention.o_bias && !qwen.mlp_bias);
    assert_eq!(qwen.attention.windows, vec![None; 2]);
    assert_eq!(config("qwen2_window_layers").attention.windows, vec![None, Some(6), Some(6)]);
    let starcoder = config("starcoder2_window");
    assert_eq!(
        (starcoder.norm, starcoder.mlp, starcoder.norm_eps),
        (NormKind::Layer, MlpKind::Plain(Gelu::Tanh), 1e-5)
    );
    assert!(
        starcoder.attention.qkv_bias
            && starcoder.attention.o_bias
            && starcoder.mlp_bias
            && starcoder.tie_word_embeddings
    );
    assert_eq!(starcoder.attention.windows, vec![Some(8); 2]);
    assert_eq!(config("starcoder2_untied_nowindow").rope().unwrap().theta, 500.0);
    let gemma = config("gemma_headdim");
    assert_eq!((gemma.norm, gemma.mlp, gemma.head_dim), (NormKind::RmsUnitOffset, MlpKind::GatedGelu, 24));
    assert_eq!(gemma.embedding_scale, Some(48f32.sqrt()));

    let mqa = config("gpt_bigcode_mqa");
    assert_eq!(
        (mqa.num_key_value_heads, mqa.attention.fused_qkv, mqa.intermediate_size),
        (1, Some(FusedQkv { groups: 1 }), 192)
    );
    assert_eq!(
        (mqa.positions.clone(), mqa.max_position_embeddings, mqa.tie_word_embeddings),
        (Positions::Learned, 256, true)
    );
    let mha = config("gpt_bigcode_mha_noscale");
    assert_eq!(
        (mha.attention.fused_qkv, mha.attention.scale, mha.mlp),
        (Some(FusedQkv { groups: 4 }), 1.0, MlpKind::Plain(Gelu::Erf))
    );
    let rotary = |case: &str| match config(case).positions {
        Positions::Rotary { rope, dims, .. } => (rope.theta, dims),
        Positions::Learned | Positions::Alibi => panic!("{case}: rotary"),
    };
    assert_eq!((rotary("gpt_neox_parallel"), rotary("gpt_neox_sequential")), ((10_000.0, 4), (500.0, 6)));
    assert_eq!(
        (config("gpt_neox_parallel").residual, config("gpt_neox_sequential").residual),
        (Residual::Parallel, Residual::Sequential)
    );
    assert_eq!((rotary("phi_partial_rotary"), rotary("phi_qk_layernorm_gqa")), ((10_000.0, 8), (500.0, 8)));
    let phi = config("phi_qk_layernorm_gqa");
    assert!(phi.attention.qk_norm && phi.lm_head_bias && phi.residual == Residual::ParallelSharedNorm);
    assert_eq!((phi.num_key_value_heads, phi.head_dim), (2, 20));
}

/// What each of the decoder's parts does shows in the goldens: switching it off misses them by more than ten
/// times the logits tolerance (the two GELUs differ least: 1.6e-3 here).
#[test]
fn each_part_is_pinned_by_the_goldens() {
    type Change = fn(&mut DecoderConfig);
    let changes: [(&str, &str, Change); 6] = [
        ("gpt_bigcode_mha_noscale", "the softmax scale", |c| c.attention.scale = 1.0 / 12f32.sqrt()),
        ("gpt_bigcode_mha_noscale", "the per-head qkv layout", |c| {
            c.attention.fused_qkv = Some(FusedQkv { groups: 1 })
        }),
        ("gpt_neox_parallel", "the parallel residual", |c| c.residual = Residual::Sequential),
        ("gpt_neox_parallel", "the exact GELU", |c| c.mlp = MlpKind::Plain(Gelu::Tanh)),
        ("phi_partial_rotary", "the rotary fraction", |c| {
            if let Positions::Rotary { dims, .. } = &mut c.positions {
                *dims = 16
            }
        }),
        ("phi_qk_layernorm_gqa", "the q/k norms", |c| c.attention.qk_norm = false),
    ];
    for (case, part, change) in changes {
        let golden = golden(case);
        let ids = ids(&golden, "input_ids");
        let want: Array2<f32> = golden.tensor_f32("logits").unwrap().into_dimensionality().unwrap();
        let dir = case_dir(case);
        let mut config = models::decoder_config(&HfConfig::read(&dir).unwrap()).unwrap();
        change(&mut config);
        let store = mftcoder::quant::checkpoint::open_weights(&dir).unwrap();
        let model = Decoder::load(&Cpu, &store, config).unwrap();
        let diff = max_abs_diff(&logits(&model, &ids), &want);
        assert!(diff > 1e-3, "{case}: without {part} the logits still match ({diff:.2e})");
    }
}

#[test]
fn logits_match_transformers() {
    for case in CASES {
        let golden = golden(case);
        let ids = ids(&golden, "input_ids");
        let want = golden.tensor_f32("logits").unwrap().into_dimensionality().unwrap();
        let diff = max_abs_diff(&logits(&load_causal_lm(&Cpu, &case_dir(case)).unwrap(), &ids), &want);
        eprintln!("{case}: T = {}, max |Δlogits| = {diff:.2e}", ids.len());
        assert!(diff <= 1e-4, "{case}: max |Δlogits| = {diff}");
    }
}

/// The windowed cases would fail without their windows: the goldens pin the window down.
#[test]
fn dropping_the_window_changes_the_logits() {
    for case in ["mistral_window", "qwen2_window_layers", "starcoder2_window"] {
        let golden = golden(case);
        let ids = ids(&golden, "input_ids");
        let want: Array2<f32> = golden.tensor_f32("logits").unwrap().into_dimensionality().unwrap();
        let mut model = load_causal_lm(&Cpu, &case_dir(case)).unwrap();
        model.config.attention.windows.fill(None);
        let diff = max_abs_diff(&logits(&model, &ids), &want);
        assert!(diff > 1e-2, "{case}: without the window the logits still match ({diff:.2e})");
    }
}

#[test]
fn loss_and_gradients_match_pytorch_autograd() {
    for case in CASES {
        let golden = golden(case);
        let model = load_causal_lm(&Cpu, &case_dir(case)).unwrap();
        let result = golden_grads::loss_on_input_ids(&model, &golden);
        let want = golden.tensor_f32("loss").unwrap()[[0]] as f64;
        assert!((result.loss - want).abs() <= 1e-5, "{case}: loss {} vs {want}", result.loss);

        let (worst, _) = golden_grads::compare_grads(case, &golden, "", &result.grads);
        eprintln!(
            "{case}: loss {:.6}, {} gradients, worst relative error {worst:.2e}",
            result.loss,
            result.grads.len()
        );
    }
}

#[test]
fn greedy_continuation_through_the_kv_cache_matches_transformers() {
    for case in CASES {
        golden_grads::assert_greedy_matches(case, &case_dir(case), &golden(case));
    }
}
