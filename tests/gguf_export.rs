//! GGUF export, read back by our import: f32 gives the source's logits (Llama with the Q/K permutation,
//! Qwen2 without it), f16 the f16-rounded tensors exactly, q8_0 / q4_k every value within its quantization
//! step, and the tokenizer the same ids. (llama.cpp itself runs the exports in
//! scripts/gguf_llama_cpp_check.py; its numbers are in fixtures/gguf/README.md.)

use mftcoder::backend::Backend;
use mftcoder::backend::cpu::Cpu;
use mftcoder::gguf::container::GgufFile;
use mftcoder::gguf::export::{Quant, export_gguf};
use mftcoder::io::safetensors::{OwnedTensor, WeightStore, save};
use mftcoder::io::tokenizer::Tokenizer;
use mftcoder::models::{self, decoder::Logits};
use mftcoder::rng::Rng;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::Scratch;

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(path)
}

const TEXTS: [&str; 3] =
    ["def add(a, b):\n    return a + b\n", "  x = [1, 2, 3]  # spaces\n", "<s>human\nhi\n<s>bot\n"];

fn golden_logits_match(model: &Path, golden_dir: &Path) -> f32 {
    let golden = WeightStore::open(&golden_dir.join("golden.safetensors")).unwrap();
    let ids: Vec<u32> = golden.tensor_i64("input_ids").unwrap().iter().map(|&i| i as u32).collect();
    let m = models::load_causal_lm(&Cpu, model).unwrap();
    let logits = Cpu.download(&m.forward(&Cpu, &ids, None, Logits::All).unwrap());
    let want = golden.tensor_f32("logits").unwrap();
    logits.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

#[test]
fn an_f32_export_reads_back_with_transformers_logits_for_llama_and_qwen2() {
    let dir = Scratch::new("f32");
    for case in ["llama/gqa_tied", "llama/mqa_headdim_linear", "families/qwen2_bias_tied"] {
        let src = fixture(case);
        let out = dir.join(format!("{}.gguf", case.replace('/', "_")));
        export_gguf(&src, &out, Quant::F32).unwrap();
        let diff = golden_logits_match(&out, &src);
        assert!(diff <= 1e-4, "{case}: max |Δlogits| = {diff} against transformers (tolerance 1e-4)");
        let (ours, theirs) = (Tokenizer::load(&out).unwrap(), Tokenizer::load(&src).unwrap());
        for text in TEXTS {
            assert_eq!(ours.encode(text, true).unwrap(), theirs.encode(text, true).unwrap(), "{case} {text:?}");
        }
    }
}

#[test]
fn f16_round_trips_exactly_to_f16_and_keeps_tokenizer_and_chat_template() {
    let dir = Scratch::new("f16");
    let src = fixture("gguf/mqa_spm_f16.gguf"); // a SentencePiece vocabulary with a chat template
    let imported = dir.join("imported");
    let run = Command::new(env!("CARGO_BIN_EXE_mftcoder"))
        .args(["import", "--gguf", src.to_str().unwrap(), "--out", imported.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for (quant, source) in [(Quant::F16, &imported), (Quant::F16, &fixture("llama/gqa_tied"))] {
        let out = dir.join(format!("{}-{quant:?}.gguf", source.file_name().unwrap().to_string_lossy()));
        export_gguf(source, &out, quant).unwrap();
        let (back, orig) = (WeightStore::open(&out).unwrap(), WeightStore::open(source).unwrap());
        assert_eq!(
            back.names().collect::<Vec<_>>(),
            orig.names().filter(|n| *n != "lm_head.weight" || back.contains(n)).collect::<Vec<_>>()
        );
        for name in back.names() {
            let (b, o) = (back.tensor_f32(name).unwrap(), orig.tensor_f32(name).unwrap());
            let rounded = o.mapv(|v| if o.ndim() == 2 { half::f16::from_f32(v).to_f32() } else { v });
            assert_eq!(b, rounded, "{name}: not the f16-rounded source");
        }
        let (ours, theirs) = (Tokenizer::load(&out).unwrap(), Tokenizer::load(source).unwrap());
        for text in TEXTS {
            assert_eq!(ours.encode(text, true).unwrap(), theirs.encode(text, true).unwrap(), "{text:?}");
        }
    }
    let g = GgufFile::open(&dir.join("imported-F16.gguf")).unwrap();
    assert!(g.str("tokenizer.chat_template").unwrap().contains("m['role']"));
    assert_eq!(g.str("tokenizer.ggml.model").unwrap(), "llama");
    let g = GgufFile::open(&dir.join("gqa_tied-F16.gguf")).unwrap();
    assert_eq!((g.str("tokenizer.ggml.model").unwrap(), g.str("tokenizer.ggml.pre").unwrap()), ("gpt2", "gpt-2"));
    let tokens = g.array("tokenizer.ggml.tokens", "a string", |v| v.as_str()).unwrap();
    assert_eq!((tokens.len(), tokens[319]), (320, "[PAD319]"), "padded to the embedding's rows");
    assert_eq!(g.opt_bool("tokenizer.ggml.add_bos_token").unwrap(), Some(true));
}

/// A model whose rows are whole Q4_K super-blocks (256 columns), with random weights.
fn wide_model(dir: &Path) -> PathBuf {
    let model = dir.join("wide");
    std::fs::create_dir_all(&model).unwrap();
    let config = serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 320,
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "max_position_embeddings": 128, "bos_token_id": 1, "eos_token_id": 2});
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(fixture("llama/gqa_tied/tokenizer.json"), model.join("tokenizer.json")).unwrap();
    let mut rng = Rng::new(16);
    let mut tensor = |name: &str, shape: &[usize], scale: f32| {
        let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.normal() as f32 * scale).collect();
        OwnedTensor::f32(name, shape, &values)
    };
    let mut tensors =
        vec![tensor("model.embed_tokens.weight", &[320, 256], 1.0), tensor("lm_head.weight", &[320, 256], 0.05)];
    tensors.push(tensor("model.norm.weight", &[256], 1.0));
    let l = "model.layers.0";
    for (name, shape) in [
        ("self_attn.q_proj", [256, 256]),
        ("self_attn.k_proj", [128, 256]),
        ("self_attn.v_proj", [128, 256]),
        ("self_attn.o_proj", [256, 256]),
        ("mlp.gate_proj", [512, 256]),
        ("mlp.up_proj", [512, 256]),
        ("mlp.down_proj", [256, 512]),
    ] {
        tensors.push(tensor(&format!("{l}.{name}.weight"), &shape, 0.06));
    }
    tensors.push(tensor(&format!("{l}.input_layernorm.weight"), &[256], 1.0));
    tensors.push(tensor(&format!("{l}.post_attention_layernorm.weight"), &[256], 1.0));
    save(&model.join("model.safetensors"), &tensors).unwrap();
    model
}

#[test]
fn q8_0_and_q4_k_exports_read_back_within_their_quantization_step() {
    let dir = Scratch::new("quant");
    let model = wide_model(&dir);
    for (quant, levels) in [(Quant::Q8_0, 254.0f32), (Quant::Q4K, 15.0)] {
        let out = dir.join(format!("{quant:?}.gguf"));
        export_gguf(&model, &out, quant).unwrap();
        let g = GgufFile::open(&out).unwrap();
        let want = if quant == Quant::Q4K { "Q4_K" } else { "Q8_0" };
        assert!(g.tensors.iter().filter(|t| t.ne.len() == 2).all(|t| t.ggml_type.name() == want), "{quant:?}");
        let (back, orig) = (WeightStore::open(&out).unwrap(), WeightStore::open(&model).unwrap());
        let mut worst = 0f32;
        for name in orig.names() {
            let (b, o) = (back.tensor_f32(name).unwrap(), orig.tensor_f32(name).unwrap());
            if o.ndim() == 1 {
                assert_eq!(b, o, "{name}: vectors stay f32");
                continue;
            }
            let (b, o) = (b.as_slice().unwrap().to_vec(), o.as_slice().unwrap().to_vec());
            // per 32 values: Q8_0 steps amax/127 (so errors ≤ half of it); Q4_K 15 levels over [min(x, 0), max]
            for (bb, oo) in b.chunks(32).zip(o.chunks(32)) {
                let (lo, hi) = oo.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                let step = if quant == Quant::Q8_0 { 2.0 * lo.abs().max(hi) / levels } else { (hi - lo) / levels };
                for (x, y) in bb.iter().zip(oo) {
                    let err = (x - y).abs();
                    worst = worst.max(err / step);
                    assert!(err <= step * 1.01 + 1e-7, "{quant:?} {name}: |Δ| = {err} > step {step}");
                }
            }
        }
        assert!(worst > 0.2, "{quant:?}: errors suspiciously small ({worst} of a step): not quantized?");
        let (ours, theirs) = (Tokenizer::load(&out).unwrap(), Tokenizer::load(&model).unwrap());
        assert_eq!(ours.encode(TEXTS[0], true).unwrap(), theirs.encode(TEXTS[0], true).unwrap());
    }
}

#[test]
fn export_refuses_what_it_cannot_write_in_one_line() {
    let dir = Scratch::new("refuse");
    let cases = [
        (fixture("families/gemma_tied"), "`model_type` is `gemma`, which cannot be exported to GGUF yet"),
        (fixture("llama/gqa_tied"), "already exists"),
    ];
    std::fs::write(dir.join("exists.gguf"), b"").unwrap();
    for (i, (model, needle)) in cases.iter().enumerate() {
        let out = if i == 1 { dir.join("exists.gguf") } else { dir.join(format!("{i}.gguf")) };
        let run = Command::new(env!("CARGO_BIN_EXE_mftcoder"))
            .args(["export", "--model", model.to_str().unwrap(), "--gguf", "--quant", "q8_0", out.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{err}");
        assert!(err.contains(needle) && err.trim_end().lines().count() == 1, "{err}");
        assert!(i == 1 || !out.exists(), "no partial file");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}
