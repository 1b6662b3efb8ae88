//! Shared by the gradient-golden tests: every gradient against PyTorch's, under the tolerance of DESIGN §5.

use mftcoder::backend::cpu::Cpu;
use mftcoder::io::safetensors::WeightStore;
use mftcoder::models::decoder::{Gradients, hf_shape};

/// Compare every gradient with `{prefix}grad.<name>` in `golden`: the two name sets must be equal, the shapes
/// HF's, and each tensor within 1e-3 of its largest magnitude. Returns the worst relative error and where.
pub fn compare_grads(what: &str, golden: &WeightStore, prefix: &str, grads: &Gradients<Cpu>) -> (f32, String) {
    let grad_prefix = format!("{prefix}grad.");
    let wanted: Vec<&str> = golden.names().filter_map(|n| n.strip_prefix(&grad_prefix)).collect();
    let mut got: Vec<&str> = grads.keys().map(String::as_str).collect();
    got.sort();
    assert_eq!(got, wanted, "{what}: parameter sets differ");
    let mut worst = (0.0f32, String::new());
    for (name, grad) in grads {
        let want = golden.tensor_f32(&format!("{grad_prefix}{name}")).unwrap();
        assert_eq!(hf_shape(name, grad.dim()), want.shape(), "{what}: {name}");
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
        let diff = grad.iter().zip(want.iter()).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        let rel = diff / scale;
        assert!(rel <= 1e-3, "{what}: {name}: max |Δgrad| {diff:.3e} is {rel:.2e} of the tensor's max {scale:.3e}");
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    worst
}

/// Token ids stored as i64 in a golden file.
#[allow(dead_code)] // not every test binary that shares this module reads ids
pub fn token_ids(golden: &WeightStore, name: &str) -> Vec<u32> {
    golden.tensor_i64(name).unwrap().iter().map(|&i| u32::try_from(i).expect("token id")).collect()
}

/// The model in `dir` continues `greedy_prompt_ids` greedily, through the KV cache, with `greedy_ids`.
#[allow(dead_code)]
pub fn assert_greedy_matches(case: &str, dir: &std::path::Path, golden: &WeightStore) {
    use mftcoder::infer::generate::{Decoding, generate};
    use mftcoder::io::hf_config::{HfConfig, generation_eos_ids};
    let (prompt, want) = (token_ids(golden, "greedy_prompt_ids"), token_ids(golden, "greedy_ids"));
    let model = mftcoder::models::load_causal_lm(&Cpu, dir).unwrap();
    let eos = generation_eos_ids(dir, &HfConfig::read(dir).unwrap()).unwrap();
    let got = generate(&model, &Cpu, &prompt, 24, &Decoding::Greedy, &eos).unwrap();
    assert_eq!(got, want, "{case}");
}

/// transformers' `model(ids, labels=ids)` on the golden's `input_ids`: the mean next-token loss over the T − 1
/// predictions (plus the aux term of a mixture of experts) and every gradient.
#[allow(dead_code)]
pub fn loss_on_input_ids(
    model: &mftcoder::models::decoder::Decoder<Cpu>,
    golden: &WeightStore,
) -> mftcoder::loss::causal_lm::LossAndGrads<Cpu> {
    use mftcoder::loss::causal_lm::{mean_token_loss, next_token_targets};
    let ids = token_ids(golden, "input_ids");
    let positions: Vec<usize> = (0..ids.len()).collect();
    let (targets, weights) = next_token_targets(&ids, None, None);
    let seq = mftcoder::models::decoder::Sequence { ids: &ids, positions: &positions, segment_ids: None };
    mean_token_loss(model, &Cpu, seq, &targets, &weights).unwrap()
}

/// The largest |a − b| of two equally shaped matrices.
#[allow(dead_code)]
pub fn max_abs_diff(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>) -> f32 {
    assert_eq!(a.dim(), b.dim());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Every position's logits, no cache.
#[allow(dead_code)]
pub fn all_logits(model: &mftcoder::models::decoder::Decoder<Cpu>, ids: &[u32]) -> ndarray::Array2<f32> {
    use mftcoder::backend::Backend;
    Cpu.download(&model.forward(&Cpu, ids, None, mftcoder::models::decoder::Logits::All).unwrap())
}

/// [`loss_on_input_ids`] against the golden's `loss` (≤ 1e-5 relative) and every gradient ([`compare_grads`]);
/// prints the numbers.
#[allow(dead_code)]
pub fn assert_loss_and_grads(case: &str, model: &mftcoder::models::decoder::Decoder<Cpu>, golden: &WeightStore) {
    let result = loss_on_input_ids(model, golden);
    let want = golden.tensor_f32("loss").unwrap()[[0]] as f64;
    assert!((result.loss - want).abs() <= 1e-5 * want.abs(), "{case}: loss {} vs {want}", result.loss);
    let (worst, _) = compare_grads(case, golden, "", &result.grads);
    eprintln!(
        "{case}: loss {:.6} ({want:.6}), {} gradients, worst relative error {worst:.2e}",
        result.loss,
        result.grads.len()
    );
}
