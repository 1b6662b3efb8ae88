//! Baichuan2 and Aquila2 against MFTCoder's own modeling files (`fixtures/golden/remote_baichuan_aquila.py`,
//! described in `fixtures/remote_code/README.md`): Baichuan2's 13B file (ALiBi, W_pack, NormHead) under
//! transformers 5.24.0, the 7B math (RoPE) through transformers' Llama, Aquila2's file (the ±1024 clamp)
//! under transformers 4.44.2.
//!
//! Tolerances as for Llama (DESIGN §5): logits ≤ 1e-4 absolute; loss ≤ 1e-5 absolute; every gradient ≤ 1e-3
//! of its tensor's largest magnitude; greedy continuations through our KV cache equal.

mod golden_grads;

use golden_grads::{all_logits as logits, max_abs_diff};

use mftcoder::backend::cpu::Cpu;
use mftcoder::io::hf_config::{HfConfig, RopeScaling, RopeSpec};
use mftcoder::io::safetensors::WeightStore;
use mftcoder::models::decoder::{Decoder, DecoderConfig, FusedQkv, Positions};
use mftcoder::models::{self, load_causal_lm};
use ndarray::Array2;
use std::path::{Path, PathBuf};

const CASES: [&str; 5] =
    ["baichuan_alibi_5heads", "baichuan_alibi_8heads", "baichuan_rope_7b", "aquila_gqa", "aquila_clamp_binds"];

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/remote_code").join(case)
}

/// The 7B case needs its modeling file to say RoPE; the real one is not available offline, so a copy of the
/// case gets a stand-in that defines what the rule looks for (see `models::baichuan::variant`).
fn model_dir(case: &str) -> (PathBuf, Option<tempfile::TempDir>) {
    if case != "baichuan_rope_7b" {
        return (case_dir(case), None);
    }
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(case_dir(case)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    let stand_in = "# stand-in for Baichuan2-7B's modeling file\ndef apply_rotary_pos_emb(q, k, cos, sin, position_ids):\n    ...\n";
    std::fs::write(tmp.path().join("modeling_baichuan.py"), stand_in).unwrap();
    (tmp.path().to_path_buf(), Some(tmp))
}

fn golden(case: &str) -> WeightStore {
    WeightStore::open(&case_dir(case).join("golden.safetensors")).unwrap()
}

fn config(dir: &Path) -> DecoderConfig {
    models::decoder_config(&HfConfig::read(dir).unwrap()).unwrap()
}

#[test]
fn configs_resolve_as_the_modeling_files_do() {
    let alibi = config(&case_dir("baichuan_alibi_5heads"));
    assert_eq!((alibi.positions.clone(), alibi.max_position_embeddings), (Positions::Alibi, 64));
    assert!(alibi.normalized_head && alibi.attention.fused_qkv == Some(FusedQkv { groups: 1 }));
    assert_eq!((alibi.num_attention_heads, alibi.head_dim), (5, 8));
    // the 7B case's own directory has auto_map but no modeling file: the stated default, ALiBi
    assert_eq!(config(&case_dir("baichuan_rope_7b")).positions, Positions::Alibi);
    let (dir, _keep) = model_dir("baichuan_rope_7b");
    assert!(matches!(config(&dir).positions, Positions::Rotary { dims: 8, .. }));
    let aquila = config(&case_dir("aquila_clamp_binds"));
    assert_eq!((aquila.attention.score_clamp, aquila.num_key_value_heads), (Some(1024.0), 2));
    assert!(!aquila.normalized_head && aquila.positions != Positions::Alibi);
}

#[test]
fn logits_match_the_reference() {
    for case in CASES {
        let golden = golden(case);
        let ids = golden_grads::token_ids(&golden, "input_ids");
        let want = golden.tensor_f32("logits").unwrap().into_dimensionality().unwrap();
        let (dir, _keep) = model_dir(case);
        let diff = max_abs_diff(&logits(&load_causal_lm(&Cpu, &dir).unwrap(), &ids), &want);
        eprintln!("{case}: T = {}, max |Δlogits| = {diff:.2e}", ids.len());
        assert!(diff <= 1e-4, "{case}: max |Δlogits| = {diff}");
    }
}

/// Rotary positions on none of a head's entries: no position input at all.
fn no_positions() -> Positions {
    Positions::rotary(RopeSpec { theta: 10_000.0, scaling: RopeScaling::None }, 0)
}

/// Each part the goldens are to pin down: without it the logits move.
#[test]
fn without_alibi_normhead_rope_or_the_clamp_the_logits_differ() {
    type Change = fn(&mut DecoderConfig);
    let changes: [(&str, &str, Change); 5] = [
        ("baichuan_alibi_5heads", "ALiBi", |c| c.positions = no_positions()),
        ("baichuan_alibi_5heads", "NormHead", |c| c.normalized_head = false),
        ("baichuan_alibi_8heads", "ALiBi", |c| c.positions = no_positions()),
        ("baichuan_rope_7b", "RoPE", |c| c.positions = Positions::Alibi),
        ("aquila_clamp_binds", "the clamp", |c| c.attention.score_clamp = None),
    ];
    for (case, part, change) in changes {
        let golden = golden(case);
        let ids = golden_grads::token_ids(&golden, "input_ids");
        let want: Array2<f32> = golden.tensor_f32("logits").unwrap().into_dimensionality().unwrap();
        let (dir, _keep) = model_dir(case);
        let mut cfg = config(&dir);
        change(&mut cfg);
        let model = Decoder::load(&Cpu, &mftcoder::quant::checkpoint::open_weights(&dir).unwrap(), cfg).unwrap();
        let diff = max_abs_diff(&logits(&model, &ids), &want);
        assert!(diff > 1e-3, "{case}: without {part} the logits still match ({diff:.2e})");
    }
}

#[test]
fn loss_and_gradients_match_pytorch_autograd() {
    for case in CASES {
        let golden = golden(case);
        let (dir, _keep) = model_dir(case);
        golden_grads::assert_loss_and_grads(case, &load_causal_lm(&Cpu, &dir).unwrap(), &golden);
    }
}

#[test]
fn greedy_continuation_through_the_kv_cache_matches_the_reference() {
    for case in CASES {
        let (dir, _keep) = model_dir(case);
        golden_grads::assert_greedy_matches(case, &dir, &golden(case));
    }
}

#[test]
fn info_names_alibi_normhead_the_variant_rule_and_the_clamp() {
    let info = |case: &str| {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_mftcoder"))
            .args(["info", "--model", case_dir(case).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        String::from_utf8(run.stdout).unwrap()
    };
    let baichuan = info("baichuan_alibi_5heads");
    assert!(baichuan.contains("positions:    ALiBi") && baichuan.contains("NormHead"), "{baichuan}");
    assert!(baichuan.contains("variant:      ALiBi") && baichuan.contains("MFTCoder's Baichuan2 file"), "{baichuan}");
    let aquila = info("aquila_clamp_binds");
    assert!(aquila.contains("clamped to ±1024") && !aquila.contains("NormHead"), "{aquila}");
    assert!(!info("aquila_gqa").contains("NormHead"));
}

/// MFTCoder's training-config keys for these families (`baichuan`, `aquila2`) accept their checkpoints and
/// refuse each other's.
#[test]
fn mftcoder_model_type_keys_match_the_checkpoints() {
    use mftcoder::io::model_dir::check_model_type;
    check_model_type(Some("baichuan"), &case_dir("baichuan_alibi_5heads")).unwrap();
    check_model_type(Some("aquila2"), &case_dir("aquila_gqa")).unwrap();
    let err = check_model_type(Some("baichuan"), &case_dir("aquila_gqa")).unwrap_err().to_string();
    assert!(err.contains("set model_type to aquila2 (or null)"), "{err}");
}
