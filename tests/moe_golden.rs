//! Mixtral, Qwen2-MoE and DeepSeek-V2 — the decoder with a sparse mixture of experts, DeepSeek-V2 also with
//! Multi-head Latent Attention and YaRN — against transformers 5.24.0 (`fixtures/generate.py --only moe`,
//! described in `fixtures/moe/README.md`).
//!
//! Tolerances as for every f32 golden (DESIGN §5): logits ≤ 1e-4; router logits ≤ 1e-4; the training loss
//! (cross-entropy + router_aux_loss_coef·aux, as transformers computes it with `output_router_logits`) and
//! the aux loss itself ≤ 1e-5 relative; every gradient ≤ 1e-3 of its tensor's largest magnitude; greedy
//! continuations through the KV cache equal.

mod golden_grads;

use mftcoder::backend::Backend;
use mftcoder::backend::cpu::Cpu;
use mftcoder::io::hf_config::HfConfig;
use mftcoder::io::safetensors::WeightStore;
use mftcoder::loss::causal_lm::{mean_token_loss, next_token_targets};
use mftcoder::loss::moe_aux::load_balancing_loss;
use mftcoder::models::decoder::{AuxLoss, FeedForward, Logits, Sequence};
use mftcoder::models::{self, load_causal_lm};
use mftcoder::nn::moe_router::route;
use ndarray::Array2;
use std::path::{Path, PathBuf};

/// The cases whose training loss carries transformers' load-balancing term.
const CASES: [&str; 3] = ["mixtral_top2", "qwen2_moe_shared", "qwen2_moe_normtopk"];
/// DeepSeek-V2: transformers 5.24 adds no aux loss (its remote code's sequence-level term: see below).
const DEEPSEEK: [&str; 2] = ["deepseek_v2_mla", "deepseek_v2_group_limited"];

fn all_cases() -> impl Iterator<Item = &'static str> {
    CASES.into_iter().chain(DEEPSEEK)
}

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moe").join(case)
}

fn golden(case: &str) -> WeightStore {
    WeightStore::open(&case_dir(case).join("golden.safetensors")).unwrap()
}

fn ids(golden: &WeightStore, name: &str) -> Vec<u32> {
    golden_grads::token_ids(golden, name)
}

fn scalar(golden: &WeightStore, name: &str) -> f64 {
    golden.tensor_f32(name).unwrap()[[0]] as f64
}

fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn configs_resolve_as_transformers_does() {
    let config = |case: &str| models::decoder_config(&HfConfig::read(&case_dir(case)).unwrap()).unwrap();
    let mixtral = config("mixtral_top2");
    let moe = mixtral.moe.as_ref().unwrap();
    assert_eq!((moe.router.experts, moe.router.top_k, moe.router.normalize), (4, 2, true));
    assert_eq!(
        (moe.sparse_layers.clone(), moe.aux_loss, mixtral.attention.windows.clone()),
        (vec![true; 2], AuxLoss::LoadBalancing { coef: 0.02 }, vec![Some(16); 2])
    );
    let qwen = config("qwen2_moe_shared");
    let moe = qwen.moe.as_ref().unwrap();
    assert_eq!(
        (moe.sparse_layers.clone(), moe.router.normalize, moe.shared_expert),
        (vec![true, false, true], false, Some((48, true)))
    );
    let normed = config("qwen2_moe_normtopk");
    let moe = normed.moe.as_ref().unwrap();
    assert_eq!((moe.router.experts, moe.router.top_k, moe.router.normalize), (6, 3, true));
}

#[test]
fn deepseek_configs_resolve_as_transformers_does() {
    use mftcoder::models::decoder::{Positions, Selection};
    let config = |case: &str| models::decoder_config(&HfConfig::read(&case_dir(case)).unwrap()).unwrap();
    let mla = config("deepseek_v2_mla");
    let la = mla.attention.latent.as_ref().unwrap();
    assert_eq!((la.q_rank, la.kv_rank, la.nope_dim, la.rope_dim, la.v_dim), (Some(24), 16, 8, 4, 8));
    assert_eq!((mla.head_dim, la.norm_eps, mla.norm_eps), (12, 1e-6, 1e-6));
    // (8 + 4)^-½ · g(4, 0.707)² (README: 0.348034877); m = g(4, 0.707) / g(4, 0.707) = 1
    assert!((mla.attention.scale - 0.348_034_9).abs() < 1e-7, "{}", mla.attention.scale);
    assert_eq!(la.rope_factor, 1.0);
    let moe = mla.moe.as_ref().unwrap();
    assert_eq!((moe.sparse_layers.clone(), moe.shared_expert), (vec![false, true, true], Some((32, false))));
    assert_eq!((moe.router.normalize, moe.router.scaling, moe.router.selection), (false, 1.5, Selection::Greedy));
    let grouped = config("deepseek_v2_group_limited");
    let la = grouped.attention.latent.as_ref().unwrap();
    assert_eq!((la.q_rank, la.rope_dim, grouped.head_dim, grouped.norm_eps), (None, 8, 16, 1e-2));
    assert!((la.rope_factor - 1.036_992_7).abs() < 1e-6, "{}", la.rope_factor);
    assert!((grouped.attention.scale - 0.301_407).abs() < 1e-7, "{}", grouped.attention.scale);
    let moe = grouped.moe.as_ref().unwrap();
    assert_eq!(moe.router.selection, Selection::GroupLimited { groups: 2, top_groups: 1 });
    assert_eq!((moe.router.scaling, moe.shared_expert), (2.5, Some((32, false))));
    // the hub form (DeepSeek's own config class): top-level rope_theta and a legacy `rope_scaling`, plus the
    // remote-only keys, resolves to the same config
    let mut json = HfConfig::read(&case_dir("deepseek_v2_group_limited")).unwrap();
    let mut params = json.json.remove("rope_parameters").unwrap();
    let theta = params.as_object_mut().unwrap().remove("rope_theta").unwrap();
    params["type"] = params["rope_type"].clone();
    json.json.insert("rope_theta".into(), theta);
    json.json.insert("rope_scaling".into(), params);
    json.json.insert("aux_loss_alpha".into(), serde_json::json!(0.001));
    json.json.insert("moe_layer_freq".into(), serde_json::json!(1));
    let mut hub = models::decoder_config(&json).unwrap();
    // … and the remote code's per-sequence balance term (absent from configs transformers 5 writes)
    let aux = hub.moe.as_ref().unwrap().aux_loss;
    assert_eq!(aux, AuxLoss::SequenceBalance { alpha: 0.001, per_sequence: true });
    hub.moe.as_mut().unwrap().aux_loss = AuxLoss::None;
    assert_eq!(hub, grouped);
    // YaRN's inverse frequencies against transformers' buffer
    for (case, config) in [("deepseek_v2_mla", &mla), ("deepseek_v2_group_limited", &grouped)] {
        let Positions::Rotary { rope, dims, .. } = &config.positions else { panic!("{case}: rotary") };
        let ours = mftcoder::nn::rope::inverse_frequencies(rope, *dims);
        let want = golden(case).tensor_f32("rope_inv_freq").unwrap();
        assert_eq!(ours.len(), want.len());
        for (a, b) in ours.iter().zip(want.iter()) {
            assert!((a - b).abs() <= 1e-6 * b.abs(), "{case}: inv_freq {ours:?} vs {want}");
        }
    }
}

#[test]
fn router_logits_and_logits_match_transformers() {
    for case in all_cases() {
        let golden = golden(case);
        let ids = ids(&golden, "input_ids");
        let model = load_causal_lm(&Cpu, &case_dir(case)).unwrap();
        let want: Array2<f32> = golden.tensor_f32("logits").unwrap().into_dimensionality().unwrap();
        let got = Cpu.download(&model.forward(&Cpu, &ids, None, Logits::All).unwrap());
        let diff = max_abs_diff(&got, &want);
        eprintln!("{case}: max |Δlogits| = {diff:.2e}");
        assert!(diff <= 1e-4, "{case}: max |Δlogits| = {diff}");
        // the goldens hold router logits exactly for the layers this model makes sparse
        let sparse: Vec<usize> =
            (0..model.layers.len()).filter(|&l| matches!(model.layers[l].ffn, FeedForward::Sparse(_))).collect();
        let golden_layers: Vec<usize> =
            golden.names().filter_map(|n| n.strip_prefix("router_logits.")).map(|l| l.parse().unwrap()).collect();
        assert_eq!(sparse, golden_layers, "{case}: sparse layers");
    }
}

#[test]
fn the_load_balancing_loss_matches_transformers() {
    for case in CASES {
        let golden = golden(case);
        let config = models::decoder_config(&HfConfig::read(&case_dir(case)).unwrap()).unwrap();
        let moe = config.moe.as_ref().unwrap();
        // from transformers' own router logits: the aux loss alone, unmasked and masked
        let routings: Vec<_> = golden
            .names()
            .filter(|n| n.starts_with("router_logits."))
            .map(|n| {
                let z: Array2<f32> = golden.tensor_f32(n).unwrap().into_dimensionality().unwrap();
                route(z.view(), &moe.router)
            })
            .collect();
        let refs: Vec<_> = routings.iter().collect();
        let (aux, _) = load_balancing_loss(&refs, moe.router.experts, None);
        let want = scalar(&golden, "aux_loss");
        assert!((aux - want).abs() <= 1e-5 * want.abs(), "{case}: aux {aux} vs {want}");
        let mask: Vec<f32> =
            golden.tensor_i64("aux_attention_mask").map(|m| m.iter().map(|&v| v as f32).collect()).unwrap();
        let (masked, _) = load_balancing_loss(&refs, moe.router.experts, Some(&mask));
        let want_masked = scalar(&golden, "aux_loss_masked");
        assert!(
            (masked - want_masked).abs() <= 1e-5 * want_masked.abs(),
            "{case}: masked aux {masked} vs {want_masked}"
        );
        eprintln!("{case}: aux {aux:.7} (transformers {want:.7}), masked {masked:.7} ({want_masked:.7})");
    }
}

#[test]
fn loss_and_gradients_match_pytorch_autograd() {
    for case in all_cases() {
        let golden = golden(case);
        let model = load_causal_lm(&Cpu, &case_dir(case)).unwrap();
        let result = golden_grads::loss_on_input_ids(&model, &golden);
        let want = scalar(&golden, "loss");
        assert!((result.loss - want).abs() <= 1e-5 * want.abs(), "{case}: loss {} vs {want}", result.loss);
        let aux = result.aux_loss.unwrap_or(0.0);
        if CASES.contains(&case) {
            assert!((aux - scalar(&golden, "aux_loss")).abs() <= 1e-5 * aux, "{case}: aux {aux}");
        }
        let (worst, at) = golden_grads::compare_grads(case, &golden, "", &result.grads);
        eprintln!(
            "{case}: loss {:.6} (aux {aux:.6}), {} gradients, worst relative error {worst:.2e} ({at})",
            result.loss,
            result.grads.len()
        );
    }
}

#[test]
fn greedy_continuation_through_the_kv_cache_matches_transformers() {
    for case in all_cases() {
        golden_grads::assert_greedy_matches(case, &case_dir(case), &golden(case));
    }
}

/// DeepSeek-V2 trained as MFTCoder trains it, through its own model code (`fixtures/moe/remote_seq_aux.py`:
/// transformers 4.44.2, `aux_loss_alpha` 0.05, `seq_aux`): two rows of 20 flattened as the trainer flattens a
/// batch. The reported loss is the cross-entropy; the gradients carry each gate's per-sequence balance term.
#[test]
fn deepseek_v2_trains_with_the_remote_codes_per_sequence_balance() {
    use mftcoder::loss::causal_lm::weighted_token_loss;
    use mftcoder::loss::moe_aux::RouterRows;
    let case = "deepseek_v2_group_limited";
    let remote = WeightStore::open(&case_dir(case).join("remote_seq_aux.safetensors")).unwrap();
    let ids = ids(&remote, "input_ids");
    let (rows, row_len) = (2, ids.len() / 2);
    let positions: Vec<usize> = (0..rows).flat_map(|_| 0..row_len).collect();
    let segments: Vec<u32> = (0..ids.len()).map(|i| ((i / row_len) as u32) << 16).collect();
    let last = |i: usize| i % row_len == row_len - 1;
    let targets: Vec<u32> = (0..ids.len()).map(|i| if last(i) { 0 } else { ids[i + 1] }).collect();
    let predictions = (rows * (row_len - 1)) as f32;
    let coefficients: Vec<f32> = (0..ids.len()).map(|i| if last(i) { 0.0 } else { 1.0 / predictions }).collect();
    let seq = Sequence { ids: &ids, positions: &positions, segment_ids: Some(&segments) };
    let mask = vec![1.0; ids.len()];
    let router_rows = RouterRows { mask: &mask, row_len };
    let mut model = load_causal_lm(&Cpu, &case_dir(case)).unwrap();
    let run = |model: &mftcoder::models::decoder::Decoder<Cpu>| {
        weighted_token_loss(model, &Cpu, seq, &targets, &coefficients, Some(router_rows)).unwrap()
    };
    model.config.moe.as_mut().unwrap().aux_loss = AuxLoss::SequenceBalance { alpha: 0.05, per_sequence: true };
    let result = run(&model);
    let want = scalar(&remote, "loss");
    assert!((result.loss - want).abs() <= 1e-5 * want, "loss {} vs {want} (the cross-entropy alone)", result.loss);
    let want_aux: f64 = remote.tensor_f32("seq_aux_loss").unwrap().iter().map(|&a| a as f64).sum();
    let aux = result.aux_loss.unwrap();
    assert!((aux - want_aux).abs() <= 1e-5 * want_aux, "Σ per-layer balance {aux} vs {want_aux}");
    let (worst, at) = golden_grads::compare_grads(case, &remote, "", &result.grads);
    eprintln!(
        "{case} (remote code, α 0.05): loss {:.6}, Σ aux {aux:.6}, worst gradient {worst:.2e} ({at})",
        result.loss
    );
    // the term is pinned: per batch instead of per sequence, or without it, the gradients miss
    for (aux_loss, what) in [
        (AuxLoss::SequenceBalance { alpha: 0.05, per_sequence: false }, "balanced over the batch"),
        (AuxLoss::None, "without the balance term"),
    ] {
        model.config.moe.as_mut().unwrap().aux_loss = aux_loss;
        let other = run(&model);
        let miss = other
            .grads
            .iter()
            .filter(|(name, _)| name.ends_with("mlp.gate.weight"))
            .map(|(name, g)| {
                let want = remote.tensor_f32(&format!("grad.{name}")).unwrap();
                let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                g.iter().zip(want.iter()).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
            })
            .fold(0.0f32, f32::max);
        eprintln!("{case}: {what} the router gradients miss by {miss:.2e} relative");
        assert!(miss > 1e-2, "{what}: the router gradients still match ({miss:.2e})");
    }
}

/// The load-balancing term's gradient shows in the goldens: without it the routers' gradients miss them.
#[test]
fn the_aux_gradient_is_pinned_by_the_goldens() {
    for case in CASES {
        let golden = golden(case);
        let ids = ids(&golden, "input_ids");
        let positions: Vec<usize> = (0..ids.len()).collect();
        let mut model = load_causal_lm(&Cpu, &case_dir(case)).unwrap();
        model.config.moe.as_mut().unwrap().aux_loss = AuxLoss::None;
        let (targets, weights) = next_token_targets(&ids, None, None);
        let seq = Sequence { ids: &ids, positions: &positions, segment_ids: None };
        let result = mean_token_loss(&model, &Cpu, seq, &targets, &weights).unwrap();
        let worst = result
            .grads
            .iter()
            .filter(|(name, _)| name.ends_with("gate.weight") && !name.contains("experts") && !name.contains("shared"))
            .map(|(name, g)| {
                let want = golden.tensor_f32(&format!("grad.{name}")).unwrap();
                let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                g.iter().zip(want.iter()).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
            })
            .fold(0.0f32, f32::max);
        eprintln!("{case}: without the aux term the router gradients miss by {worst:.2e} relative");
        assert!(worst > 1e-2, "{case}: the router gradients match even without the aux term ({worst:.2e})");
    }
}
