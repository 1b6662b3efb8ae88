//! 4-bit quantization against bitsandbytes 0.50.2 + transformers 5.24.0 (`fixtures/generate.py --only nf4`).
//! Everything is compared bit for bit (packed bytes, absmax, nested tensors, offsets, dequantized values, the
//! saved checkpoint), except the logits of the loaded 4-bit model: ≤ 1e-4 absolute, as for every f32 forward.

use mftcoder::backend::Backend;
use mftcoder::backend::cpu::Cpu;
use mftcoder::io::safetensors::WeightStore;
use mftcoder::models::{self, decoder::Logits};
use mftcoder::quant::checkpoint::{load_quantized_store, quantize_checkpoint};
use mftcoder::quant::double_quant::{DYNAMIC_MAP, DoubleQuant};
use mftcoder::quant::torch_mean::{torch_mean, torch_sum};
use mftcoder::quant::{Absmax, QuantOptions, QuantType, Quantized4bit};
use ndarray::Array2;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const LOGITS_ATOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn golden() -> WeightStore {
    WeightStore::open(&fixtures().join("quant/tensors.safetensors")).unwrap()
}

fn bytes(store: &WeightStore, name: &str) -> Vec<u8> {
    store.tensor_i64(name).unwrap().into_iter().map(|v| u8::try_from(v).unwrap()).collect()
}

fn floats(store: &WeightStore, name: &str) -> Vec<f32> {
    store.tensor_f32(name).unwrap().iter().copied().collect()
}

/// Bitwise equality (so -0.0 and 0.0 differ); returns how many values were compared.
fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) -> usize {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: {g:e} vs bitsandbytes {w:e}");
    }
    got.len()
}

fn variants() -> [(&'static str, QuantType, bool); 4] {
    [
        ("nf4", QuantType::Nf4, false),
        ("nf4_dq", QuantType::Nf4, true),
        ("fp4", QuantType::Fp4, false),
        ("fp4_dq", QuantType::Fp4, true),
    ]
}

fn cases(store: &WeightStore) -> Vec<String> {
    serde_json::from_str(&store.metadata().unwrap()["cases"]).unwrap()
}

#[test]
fn quantize_is_bit_identical_to_bitsandbytes() {
    let g = golden();
    let threads: usize = g.metadata().unwrap()["torch_threads"].parse().unwrap();
    let (mut codes, mut scales, mut values) = (0usize, 0usize, 0usize);
    for case in cases(&g) {
        let w: Array2<f32> = g.tensor_f32(&format!("{case}.w")).unwrap().into_dimensionality().unwrap();
        for (v, qt, dq) in variants() {
            let p = format!("{case}.{v}");
            let opts = QuantOptions { blocksize: 64, double_quant: dq, torch_threads: threads };
            let q = Quantized4bit::quantize_with(w.view(), qt, opts).unwrap();
            let want_packed = bytes(&g, &format!("{p}.packed"));
            assert_eq!(q.packed.len(), want_packed.len(), "{p}: packed length");
            for (i, (a, b)) in q.packed.iter().zip(&want_packed).enumerate() {
                assert_eq!(a, b, "{p}: packed byte {i} ({a:#04x} vs bitsandbytes {b:#04x})");
            }
            codes += 2 * want_packed.len();
            assert_bits_eq(&format!("{p}.quant_map"), qt.code(), &floats(&g, &format!("{p}.quant_map")));
            match &q.absmax {
                Absmax::Plain(a) => {
                    scales += assert_bits_eq(&format!("{p}.absmax"), a, &floats(&g, &format!("{p}.absmax")))
                }
                Absmax::Double(d) => {
                    assert_eq!(d.codes, bytes(&g, &format!("{p}.absmax")), "{p}: 8-bit absmax codes");
                    scales += d.codes.len();
                    assert_bits_eq(
                        &format!("{p}.nested_absmax"),
                        &d.nested_absmax,
                        &floats(&g, &format!("{p}.nested_absmax")),
                    );
                    assert_bits_eq(
                        &format!("{p}.nested_quant_map"),
                        &d.nested_quant_map,
                        &floats(&g, &format!("{p}.nested_quant_map")),
                    );
                    assert_bits_eq(&format!("{p}.offset"), &[d.offset], &floats(&g, &format!("{p}.offset")));
                }
            }
            assert_bits_eq(&format!("{p}.scales"), &q.scales(), &floats(&g, &format!("{p}.scales")));
            if g.contains(&format!("{p}.dequant")) {
                let d = q.dequantize();
                values += assert_bits_eq(
                    &format!("{p}.dequant"),
                    d.as_slice().unwrap(),
                    &floats(&g, &format!("{p}.dequant")),
                );
            }
        }
    }
    eprintln!("bit-identical to bitsandbytes: {codes} 4-bit codes, {scales} block scales, {values} dequantized values");
    assert!(codes > 50_000 && values > 20_000);
}

#[test]
fn dequantizing_stored_pieces_matches_bitsandbytes() {
    // Independent of our quantizer: rebuild each variant from bitsandbytes' own bytes and dequantize.
    let g = golden();
    for case in cases(&g) {
        let shape = g.info(&format!("{case}.w")).unwrap().shape;
        for (v, qt, dq) in variants() {
            let p = format!("{case}.{v}");
            let absmax = if dq {
                Absmax::Double(DoubleQuant {
                    codes: bytes(&g, &format!("{p}.absmax")),
                    nested_absmax: floats(&g, &format!("{p}.nested_absmax")),
                    nested_quant_map: floats(&g, &format!("{p}.nested_quant_map")),
                    offset: floats(&g, &format!("{p}.offset"))[0],
                })
            } else {
                Absmax::Plain(floats(&g, &format!("{p}.absmax")))
            };
            let q = Quantized4bit {
                packed: bytes(&g, &format!("{p}.packed")),
                absmax,
                shape: [shape[0], shape[1]],
                quant_type: qt,
                blocksize: 64,
                dtype: "float32".into(),
            };
            assert_bits_eq(&format!("{p}.scales"), &q.scales(), &floats(&g, &format!("{p}.scales")));
            if g.contains(&format!("{p}.dequant")) {
                let d = q.dequantize();
                assert_bits_eq(&format!("{p}.dequant"), d.as_slice().unwrap(), &floats(&g, &format!("{p}.dequant")));
            }
        }
    }
}

#[test]
fn dynamic_map_is_bitsandbytes_map() {
    let g = golden();
    assert_bits_eq("nested_quant_map", &DYNAMIC_MAP, &floats(&g, "randn_32x64.nf4_dq.nested_quant_map"));
}

#[test]
fn torch_sum_and_mean_follow_torch_bit_for_bit() {
    let g = golden();
    let ns = g.tensor_i64("torch_sum.n").unwrap();
    let threads = g.tensor_i64("torch_sum.threads").unwrap();
    let sums = floats(&g, "torch_sum.sum");
    let means = floats(&g, "torch_sum.mean");
    for (k, (&n, &t)) in ns.iter().zip(&threads).enumerate() {
        let x: Vec<f32> = (0..n as u64).map(|i| ((i * 2654435761) % (1 << 24)) as f32 / 16777216.0 * 3.0).collect();
        assert_eq!(torch_sum(&x, t as usize).to_bits(), sums[k].to_bits(), "sum of n = {n}, threads = {t}");
        assert_eq!(torch_mean(&x, t as usize).to_bits(), means[k].to_bits(), "mean of n = {n}, threads = {t}");
    }
}

mod common;
use common::Scratch;

/// A scratch directory (removed when the test ends) and a path inside it that does not exist yet.
fn tmp_dir(tag: &str) -> (Scratch, PathBuf) {
    let scratch = Scratch::new(&format!("quant-golden-{tag}"));
    let out = scratch.join("out");
    (scratch, out)
}

/// Every tensor of `want` is in `got` with the same dtype, shape and bytes, and nothing else is.
fn assert_same_tensors(got: &WeightStore, want: &WeightStore, only: Option<&BTreeSet<String>>) -> usize {
    let want_names: BTreeSet<String> = want.names().map(str::to_string).collect();
    let got_names: BTreeSet<String> =
        got.names().map(str::to_string).filter(|n| only.is_none_or(|o| o.contains(n))).collect();
    assert_eq!(got_names, want_names, "key sets differ");
    for name in &want_names {
        let (a, b) = (got.info(name).unwrap(), want.info(name).unwrap());
        assert_eq!((a.dtype, &a.shape), (b.dtype, &b.shape), "{name}: dtype/shape");
        if a.dtype == safetensors::Dtype::U8 {
            assert_eq!(got.tensor_i64(name).unwrap(), want.tensor_i64(name).unwrap(), "{name}: bytes");
        } else {
            let (x, y) = (got.tensor_f32(name).unwrap(), want.tensor_f32(name).unwrap());
            assert_bits_eq(name, x.as_slice().unwrap(), y.as_slice().unwrap());
        }
    }
    want_names.len()
}

#[test]
fn quantize_cli_writes_what_transformers_saves() {
    let want_dir = fixtures().join("quant/odd_sizes_nf4_dq");
    let (_scratch, out) = tmp_dir("cli");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_mftcoder"))
        .args(["quantize", "--model"])
        .arg(fixtures().join("llama/odd_sizes_bf16_bias"))
        .arg("--out")
        .arg(&out)
        .args(["--quant", "nf4", "--double-quant"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let (got, want) = (WeightStore::open(&out).unwrap(), WeightStore::open(&want_dir).unwrap());
    let n = assert_same_tensors(&got, &want, None);
    let same_file = std::fs::read(out.join("model.safetensors")).unwrap()
        == std::fs::read(want_dir.join("model.safetensors")).unwrap();
    eprintln!("{n} tensors equal to transformers' save (whole file byte-identical: {same_file})");
    assert!(same_file, "model.safetensors differs from transformers' file (header layout)");
    let config = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap()
    };
    assert_eq!(config(&out)["quantization_config"], config(&want_dir)["quantization_config"]);
    assert_eq!(config(&out)["dtype"], "float32");
    assert!(out.join("tokenizer.json").is_file() && out.join("generation_config.json").is_file());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn fp4_without_double_quant_matches_transformers_too() {
    let want = WeightStore::open(&fixtures().join("quant/odd_sizes_fp4.safetensors")).unwrap();
    let (_scratch, out) = tmp_dir("fp4");
    let opts = QuantOptions { blocksize: 64, double_quant: false, torch_threads: 2 };
    quantize_checkpoint(&fixtures().join("llama/odd_sizes_bf16_bias"), &out, QuantType::Fp4, opts).unwrap();
    let got = WeightStore::open(&out).unwrap();
    let quantized: BTreeSet<String> = got
        .names()
        .filter(|n| n.contains(".weight.") || got.info(n).unwrap().dtype == safetensors::Dtype::U8)
        .map(str::to_string)
        .collect();
    let n = assert_same_tensors(&got, &want, Some(&quantized));
    assert_eq!(n, 21 * 4);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bnb_checkpoint_loads_with_bnb_dequantized_weights_and_logits() {
    let dir = fixtures().join("quant/odd_sizes_nf4_dq");
    let source = WeightStore::open(&fixtures().join("llama/odd_sizes_bf16_bias")).unwrap();
    let q = load_quantized_store(&dir).unwrap();
    assert_eq!(q.quantized.len(), 21);
    let names: BTreeSet<String> = q.names().into_iter().collect();
    assert_eq!(names, source.names().map(str::to_string).collect(), "parameter names of the 4-bit checkpoint");
    let golden = WeightStore::open(&dir.join("golden.safetensors")).unwrap();
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.2.mlp.down_proj.weight"] {
        let got = q.matrix(name).unwrap();
        assert_bits_eq(name, got.as_slice().unwrap(), &floats(&golden, &format!("dequant.{name}")));
    }
    let bits: f64 = q.quantized.values().map(|w| w.bits_per_param() * w.numel() as f64).sum::<f64>()
        / q.quantized.values().map(|w| w.numel() as f64).sum::<f64>();
    eprintln!("odd_sizes NF4 + double quant: {bits:.4} bits per quantized parameter");

    let ids: Vec<u32> = golden.tensor_i64("input_ids").unwrap().iter().map(|&i| i as u32).collect();
    let want: Array2<f32> = golden.tensor_f32("logits").unwrap().into_dimensionality().unwrap();
    let model = models::load_causal_lm(&Cpu, &dir).unwrap();
    let got = Cpu.download(&model.forward(&Cpu, &ids, None, Logits::All).unwrap());
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("4-bit checkpoint: T = {}, max |Δlogits| vs transformers + bitsandbytes = {diff:.2e}", ids.len());
    assert!(diff <= LOGITS_ATOL, "max |Δlogits| = {diff}");
}
