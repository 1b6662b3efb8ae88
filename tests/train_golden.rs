//! AdamW, global-norm clipping, the learning-rate schedules and the fused cross-entropy against PyTorch 2.15.0 /
//! transformers 5.24.0 (`fixtures/generate.py --only train`).
//!
//! Tolerances:
//! - AdamW parameters ≤ 1e-6 absolute after each of 10 steps (with and without clipping): our step repeats
//!   torch's single-tensor CPU arithmetic operation by operation and agrees bit for bit on this fixture; the
//!   margin allows for torch's MKL `sqrt`, which can be one ulp off on other machines and sizes.
//! - clip norms ≤ 1e-6 relative (our sums of squares run in f64, torch's in f32).
//! - schedules ≤ 1e-12 relative: the same f64 formulas; JSON parsing may move the last bit.
//! - cross-entropy losses and dlogits ≤ 1e-5 absolute (f64 logsumexp here, f32 in torch).

use mftcoder::io::safetensors::WeightStore;
use mftcoder::nn::cross_entropy::cross_entropy;
use mftcoder::train::optim::{AdamW, AdamWConfig, clip_grad_norm};
use mftcoder::train::schedule::{LrSchedule, learning_rate};
use ndarray::{Array2, Array3, Axis};
use std::path::{Path, PathBuf};

const PARAMS: [&str; 3] = ["w0", "w1", "bias"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/train").join(name)
}

fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn stacked(store: &WeightStore, name: &str) -> Array3<f32> {
    store.tensor_f32(name).unwrap().into_dimensionality().unwrap()
}

/// Runs the 10 golden steps, clipping or not, and returns the worst |Δparam| over all steps and parameters.
fn adamw_run(store: &WeightStore, run: &str) -> f32 {
    let meta = store.metadata().unwrap();
    let json = |key: &str| -> serde_json::Value { serde_json::from_str(&meta[key]).unwrap() };
    let lrs: Vec<f64> = serde_json::from_value(json("lrs")).unwrap();
    let betas: Vec<f64> = serde_json::from_value(json("betas")).unwrap();
    let decay_map = json("decay");
    let config = AdamWConfig {
        beta1: betas[0] as f32,
        beta2: betas[1] as f32,
        eps: meta["eps"].parse().unwrap(),
        weight_decay: meta["weight_decay"].parse().unwrap(),
    };
    assert_eq!(config, AdamWConfig::default(), "the golden uses MFTCoder's defaults");
    let max_norm: f32 = meta["max_norm"].parse().unwrap();
    let decay: Vec<bool> = PARAMS.iter().map(|p| decay_map[p].as_bool().unwrap()).collect();

    let mut params: Vec<Array2<f32>> =
        PARAMS.iter().map(|p| store.tensor_f32(&format!("init.{p}")).unwrap().into_dimensionality().unwrap()).collect();
    let grads: Vec<Array3<f32>> = PARAMS.iter().map(|p| stacked(store, &format!("grads.{p}"))).collect();
    let want: Vec<Array3<f32>> = PARAMS.iter().map(|p| stacked(store, &format!("{run}.{p}"))).collect();
    let want_norms = (run == "clip").then(|| store.tensor_f32("clip.norms").unwrap());
    let shapes: Vec<(usize, usize)> = params.iter().map(|p| p.dim()).collect();
    let mut opt = AdamW::new(config, &shapes);

    let mut worst = 0.0f32;
    for (step, &lr) in lrs.iter().enumerate() {
        let mut g: Vec<Array2<f32>> = grads.iter().map(|s| s.index_axis(Axis(0), step).to_owned()).collect();
        if let Some(norms) = &want_norms {
            let norm = clip_grad_norm(&mut g.iter_mut().collect::<Vec<_>>(), max_norm);
            let rel = ((norm - norms[step]) / norms[step]).abs();
            assert!(rel <= 1e-6, "step {step}: clip norm {norm} vs torch {}", norms[step]);
        }
        let mut refs: Vec<&mut Array2<f32>> = params.iter_mut().collect();
        opt.step(&mut refs, &g.iter().collect::<Vec<_>>(), lr as f32, &decay);
        for (i, p) in params.iter().enumerate() {
            let diff = max_abs_diff(p, &want[i].index_axis(Axis(0), step).to_owned());
            assert!(diff <= 1e-6, "{run} step {step} {}: max |Δ| = {diff:e}", PARAMS[i]);
            worst = worst.max(diff);
        }
    }
    worst
}

#[test]
fn adamw_matches_torch() {
    let store = WeightStore::open(&fixture("adamw_golden.safetensors")).unwrap();
    let worst = adamw_run(&store, "plain");
    eprintln!("AdamW, 10 steps: max |Δparam| = {worst:e}");
}

#[test]
fn adamw_with_clipping_matches_torch() {
    let store = WeightStore::open(&fixture("adamw_golden.safetensors")).unwrap();
    let worst = adamw_run(&store, "clip");
    eprintln!("AdamW + clip_grad_norm_, 10 steps: max |Δparam| = {worst:e}");
}

#[test]
fn schedules_match_transformers() {
    let text = std::fs::read_to_string(fixture("schedule_golden.json")).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    let mut worst = 0.0f64;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let kind: LrSchedule = case["kind"].as_str().unwrap().parse().unwrap();
        let (base_lr, min_lr) = (case["base_lr"].as_f64().unwrap(), case["min_lr"].as_f64().unwrap());
        let (warmup, total) = (case["warmup"].as_u64().unwrap() as usize, case["total"].as_u64().unwrap() as usize);
        let lrs = case["lrs"].as_array().unwrap();
        assert_eq!(lrs.len(), total + 1, "{name}");
        for (step, want) in lrs.iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = learning_rate(kind, base_lr, min_lr, step, warmup, total);
            let rel = if want == 0.0 { got.abs() } else { ((got - want) / want).abs() };
            assert!(rel <= 1e-12, "{name} step {step}: {got:e} vs transformers {want:e}");
            worst = worst.max(rel);
        }
    }
    eprintln!("schedules: {} cases, max relative difference {worst:e}", cases.len());
}

#[test]
fn cross_entropy_matches_torch() {
    let store = WeightStore::open(&fixture("cross_entropy_golden.safetensors")).unwrap();
    let logits: Array2<f32> = store.tensor_f32("logits").unwrap().into_dimensionality().unwrap();
    let targets: Vec<u32> = store.tensor_i64("targets").unwrap().into_iter().map(|t| t as u32).collect();
    let mask: Vec<f32> = store.tensor_f32("mask").unwrap().into_iter().collect();
    let want_losses = store.tensor_f32("losses").unwrap();
    let want_dlogits: Array2<f32> = store.tensor_f32("dlogits").unwrap().into_dimensionality().unwrap();
    let ce = cross_entropy(logits.view(), &targets, &mask);
    let loss_diff = ce.losses.iter().zip(&want_losses).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    let grad_diff = max_abs_diff(&ce.dlogits, &want_dlogits);
    eprintln!("cross-entropy: max |Δloss| = {loss_diff:e}, max |Δdlogits| = {grad_diff:e}");
    assert!(loss_diff <= 1e-5, "losses differ by {loss_diff}");
    assert!(grad_diff <= 1e-5, "dlogits differ by {grad_diff}");
}
