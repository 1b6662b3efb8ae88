//! A LoRA adapter written by PEFT 0.21.2, attached to our decoder: logits, loss and every adapter gradient
//! against PEFT's (`fixtures/generate.py --only lora`, and `--only fused_families` for a LoRA on GPT-BigCode's
//! fused `c_attn`). Tolerances: logits ≤ 1e-4, loss ≤ 1e-5, gradients
//! ≤ 1e-3 of each tensor's largest magnitude. The frozen base gets no gradient at all.

use mftcoder::backend::Backend;
use mftcoder::backend::cpu::Cpu;
use mftcoder::io::safetensors::WeightStore;
use mftcoder::loss::causal_lm::{mean_token_loss, next_token_targets};
use mftcoder::models::decoder::{Logits, Sequence, hf_shape};
use mftcoder::models::load_causal_lm;
use mftcoder::peft::Adapter;
use mftcoder::peft::attach::attach_adapter;
use std::path::Path;

/// (case, base model, adapter case) under fixtures/
const CASES: [(&str, &str, &str); 3] = [
    ("gqa_tied", "llama/gqa_tied", "lora/gqa_tied"),
    ("odd_sizes_bf16_bias", "llama/odd_sizes_bf16_bias", "lora/odd_sizes_bf16_bias"),
    ("gpt_bigcode_mqa", "fused_families/gpt_bigcode_mqa", "fused_families/gpt_bigcode_mqa_lora"),
];

#[test]
fn peft_adapters_give_peft_logits_and_gradients() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for (case, base, lora) in CASES {
        let golden = WeightStore::open(&root.join(lora).join("golden.safetensors")).unwrap();
        let adapter = Adapter::load(&root.join(lora).join("adapter")).unwrap();
        let mut model = load_causal_lm(&Cpu, &root.join(base)).unwrap();
        attach_adapter(&mut model, &Cpu, &adapter).unwrap();
        let ids: Vec<u32> = golden.tensor_i64("input_ids").unwrap().into_iter().map(|i| i as u32).collect();

        let logits = Cpu.download(&model.forward(&Cpu, &ids, None, Logits::All).unwrap());
        let want = golden.tensor_f32("logits").unwrap();
        let diff = logits.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff <= 1e-4, "{case}: max |Δlogits| {diff}");

        let positions: Vec<usize> = (0..ids.len()).collect();
        let (targets, weights) = next_token_targets(&ids, None, None);
        let seq = Sequence { ids: &ids, positions: &positions, segment_ids: None };
        let r = mean_token_loss(&model, &Cpu, seq, &targets, &weights).unwrap();
        let want_loss = golden.tensor_f32("loss").unwrap()[[0]] as f64;
        assert!((r.loss - want_loss).abs() <= 1e-5, "{case}: loss {} vs {want_loss}", r.loss);

        let mut got: Vec<&str> = r.grads.keys().map(String::as_str).collect();
        got.sort();
        let wanted: Vec<&str> = golden.names().filter_map(|n| n.strip_prefix("grad.")).collect();
        assert_eq!(got, wanted, "{case}: only adapter (and trained bias) gradients, exactly PEFT's set");
        let mut worst = 0.0f32;
        for (name, g) in &r.grads {
            let w = golden.tensor_f32(&format!("grad.{name}")).unwrap();
            assert_eq!(hf_shape(name, g.dim()), w.shape(), "{name}");
            let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
            let d = g.iter().zip(w.iter()).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
            assert!(d <= 1e-3, "{case}: {name}: relative error {d:.2e}");
            worst = worst.max(d);
        }
        eprintln!("{case}: logits Δ {diff:.2e}, {} adapter gradients, worst relative error {worst:.2e}", r.grads.len());
    }
}

#[test]
fn merged_model_directory_gives_the_adapted_logits() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for ((case, base, lora), shard) in CASES.into_iter().zip(["100KB", "5GB", "5GB"]) {
        let scratch = tempfile::Builder::new().prefix(&format!("mftcoder-merge-{case}-")).tempdir().unwrap();
        let out = scratch.path().join("merged"); // merge writes a directory that does not exist yet
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_mftcoder"))
            .args([
                "merge",
                "--base",
                root.join(base).to_str().unwrap(),
                "--adapter",
                root.join(lora).join("adapter").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--max-shard-size",
                shard,
            ])
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        assert_eq!(
            out.join("model.safetensors.index.json").is_file(),
            shard == "100KB",
            "sharding follows --max-shard-size"
        );
        assert!(out.join("tokenizer.json").is_file() && out.join("config.json").is_file());
        let golden = WeightStore::open(&root.join(lora).join("golden.safetensors")).unwrap();
        let ids: Vec<u32> = golden.tensor_i64("input_ids").unwrap().into_iter().map(|i| i as u32).collect();
        let merged = load_causal_lm(&Cpu, &out).unwrap();
        let logits = Cpu.download(&merged.forward(&Cpu, &ids, None, Logits::All).unwrap());
        let tol = 1e-4; // merged weights are written in f32 (even from a bf16 base)
        for key in ["merged_logits", "logits"] {
            let want = golden.tensor_f32(key).unwrap();
            let diff = logits.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            eprintln!("{case}: merged vs PEFT {key}: max |Δ| {diff:.2e}");
            assert!(diff <= tol, "{case}: merged logits vs {key}: {diff}");
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn qlora_on_an_nf4_base_matches_peft_with_bitsandbytes() {
    use mftcoder::models::decoder::Weight;
    use mftcoder::quant::QuantType;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let golden = WeightStore::open(&root.join("qlora/gqa_tied/golden.safetensors")).unwrap();
    let adapter = Adapter::load(&root.join("qlora/gqa_tied/adapter")).unwrap();
    let mut model = load_causal_lm(&Cpu, &root.join("qlora/base")).unwrap();
    let (mut dense_bytes, mut packed_bits) = (0usize, 0.0f64);
    for (_, linear) in model.linears_mut() {
        let (out, inp) = linear.dims(&Cpu);
        dense_bytes += out * inp * 4;
        linear.quantize(&Cpu, QuantType::Nf4, true).unwrap();
        let Weight::Packed(q, _) = &linear.weight else { panic!("not packed") };
        packed_bits += q.bits_per_param() * q.numel() as f64;
    }
    attach_adapter(&mut model, &Cpu, &adapter).unwrap();
    let ids: Vec<u32> = golden.tensor_i64("input_ids").unwrap().into_iter().map(|i| i as u32).collect();
    let logits = Cpu.download(&model.forward(&Cpu, &ids, None, Logits::All).unwrap());
    let want = golden.tensor_f32("logits").unwrap();
    let diff = logits.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff <= 1e-4, "QLoRA logits vs PEFT+bitsandbytes: {diff}");
    let positions: Vec<usize> = (0..ids.len()).collect();
    let (targets, weights) = next_token_targets(&ids, None, None);
    let r = mean_token_loss(
        &model,
        &Cpu,
        Sequence { ids: &ids, positions: &positions, segment_ids: None },
        &targets,
        &weights,
    )
    .unwrap();
    assert!((r.loss - golden.tensor_f32("loss").unwrap()[[0]] as f64).abs() <= 1e-5);
    let wanted: Vec<&str> = golden.names().filter_map(|n| n.strip_prefix("grad.")).collect();
    let mut got: Vec<&str> = r.grads.keys().map(String::as_str).collect();
    got.sort();
    assert_eq!(got, wanted);
    let mut worst = 0.0f32;
    for (name, g) in &r.grads {
        let w = golden.tensor_f32(&format!("grad.{name}")).unwrap();
        let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        let d = g.iter().zip(w.iter()).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(d <= 1e-3, "{name}: relative error {d:.2e}");
        worst = worst.max(d);
    }
    eprintln!(
        "QLoRA: logits Δ {diff:.2e}, 28 adapter gradients, worst relative error {worst:.2e}; base linears {dense_bytes} B in f32 → {:.0} B packed ({:.3} bits/param)",
        packed_bits / 8.0,
        packed_bits / (dense_bytes / 4) as f64
    );
}

#[test]
fn lora_dropout_gradients_match_finite_differences_and_survive_recomputation() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut adapter = Adapter::load(&root.join("lora/gqa_tied/adapter")).unwrap();
    adapter.config.lora_dropout = 0.3;
    let mut model = load_causal_lm(&Cpu, &root.join("llama/gqa_tied")).unwrap();
    attach_adapter(&mut model, &Cpu, &adapter).unwrap();
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 % 290 + 3) as u32).collect();
    let positions: Vec<usize> = (0..ids.len()).collect();
    let (targets, weights) = next_token_targets(&ids, None, None);
    let loss_of = |m: &mftcoder::models::decoder::Decoder<Cpu>| {
        mean_token_loss(m, &Cpu, Sequence { ids: &ids, positions: &positions, segment_ids: None }, &targets, &weights)
            .unwrap()
    };
    let clean = loss_of(&model).loss;
    model.dropout_seed = Some(11);
    let r = loss_of(&model);
    assert_ne!(r.loss, clean, "dropout changes the loss");
    assert_eq!(loss_of(&model).loss, r.loss, "the same seed gives the same mask");
    // central differences on a few entries of one A and one B, mask fixed by the seed (f64 objective)
    let name = "model.layers.1.self_attn.q_proj";
    for (which, idx) in [("lora_A", [0usize, 5]), ("lora_A", [3, 17]), ("lora_B", [9, 2]), ("lora_B", [30, 7])] {
        let analytic = r.grads[&format!("{name}.{which}")][idx];
        let eps = 1e-2f32;
        let mut at = |delta: f32| {
            let mut linears = model.linears_mut();
            let lora = linears.iter_mut().find(|(p, _)| p == name).unwrap().1.lora.as_mut().unwrap();
            let t = if which == "lora_A" { &mut lora.a } else { &mut lora.b };
            t[idx] += delta;
            drop(linears);
            let l = loss_of(&model).loss;
            let mut linears = model.linears_mut();
            let lora = linears.iter_mut().find(|(p, _)| p == name).unwrap().1.lora.as_mut().unwrap();
            let t = if which == "lora_A" { &mut lora.a } else { &mut lora.b };
            t[idx] -= delta;
            l
        };
        let numeric = ((at(eps) - at(-eps)) / (2.0 * eps as f64)) as f32;
        assert!(
            (numeric - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs(),
            "{which}{idx:?}: analytic {analytic} vs numeric {numeric}"
        );
    }
    model.recompute_activations = true;
    let recomputed = loss_of(&model);
    for (k, g) in &r.grads {
        assert!(g == &recomputed.grads[k], "{k}: activation checkpointing must redraw the same dropout mask");
    }
}
