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
