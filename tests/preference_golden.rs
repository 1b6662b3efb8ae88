//! DPO, RPO and ORPO against TRL (`fixtures/generate.py --only preference`; trl 1.16.0, whose numbers the
//! generator also checks against TRL 0.11.4, the version MFTCoder ran). `fixtures/preference/README.md` holds
//! the formulas and how each golden was made.
//!
//! Loss level: per-pair losses, rewards and gradients to 1e-6 relative (f64 here, f32 there). Model level (a
//! tiny Llama policy, another as reference): sequence log-probabilities ≤ 1e-4 absolute, losses ≤ 1e-5
//! absolute, every parameter's gradient ≤ 1e-3 of its tensor's largest entry (DESIGN §5).

mod golden_grads;

use mftcoder::backend::cpu::Cpu;
use mftcoder::io::safetensors::WeightStore;
use mftcoder::loss::preference::{Objective, PairLogps, dpo_pair, orpo_pair};
use mftcoder::models::load_causal_lm;
use mftcoder::train::preference::{PairIds, answer_logp, preference_batch};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn f32s(store: &WeightStore, name: &str) -> Vec<f64> {
    store.tensor_f32(name).unwrap().iter().map(|&v| v as f64).collect()
}

fn ids(store: &WeightStore, name: &str) -> Vec<u32> {
    store.tensor_i64(name).unwrap().iter().map(|&v| v as u32).collect()
}

fn close(what: &str, got: f64, want: f64, rel: f64) {
    assert!((got - want).abs() <= rel * want.abs().max(1e-3), "{what}: {got} vs {want}");
}

#[test]
fn dpo_and_orpo_terms_match_trl() {
    let g = WeightStore::open(&fixtures().join("preference/losses.safetensors")).unwrap();
    let (pc, pr) = (f32s(&g, "policy_chosen_logps"), f32s(&g, "policy_rejected_logps"));
    let (rc, rr) = (f32s(&g, "reference_chosen_logps"), f32s(&g, "reference_rejected_logps"));
    let (nc, nr) = (g.tensor_i64("chosen_lengths").unwrap(), g.tensor_i64("rejected_lengths").unwrap());
    let b = pc.len() as f64;
    for beta in ["0.1", "0.5"] {
        let p = format!("dpo.b{beta}.");
        let (losses, gc, gr) = (
            f32s(&g, &(p.clone() + "losses")),
            f32s(&g, &(p.clone() + "grad_policy_chosen")),
            f32s(&g, &(p.clone() + "grad_policy_rejected")),
        );
        let rewards = (f32s(&g, &(p.clone() + "chosen_rewards")), f32s(&g, &(p.clone() + "rejected_rewards")));
        for i in 0..pc.len() {
            let t = dpo_pair(
                PairLogps { chosen: pc[i], rejected: pr[i] },
                PairLogps { chosen: rc[i], rejected: rr[i] },
                beta.parse().unwrap(),
            );
            close(&format!("{p}loss[{i}]"), t.loss, losses[i], 1e-5);
            close(&format!("{p}d_chosen[{i}]"), t.d_chosen / b, gc[i], 1e-5);
            close(&format!("{p}d_rejected[{i}]"), t.d_rejected / b, gr[i], 1e-5);
            close(&format!("{p}chosen_reward[{i}]"), t.chosen_reward, rewards.0[i], 1e-5);
            close(&format!("{p}rejected_reward[{i}]"), t.rejected_reward, rewards.1[i], 1e-5);
        }
    }
    let p = "orpo.b0.1.";
    let (ratio, gc, gr) = (
        f32s(&g, &format!("{p}ratio_losses")),
        f32s(&g, &format!("{p}grad_avg_chosen")),
        f32s(&g, &format!("{p}grad_avg_rejected")),
    );
    for i in 0..pc.len() {
        let lengths = (nc[i] as usize, nr[i] as usize);
        let t = orpo_pair(PairLogps { chosen: pc[i], rejected: pr[i] }, lengths, 0.1);
        close(&format!("orpo loss[{i}]"), t.loss, -ratio[i], 1e-5);
        // TRL differentiates the mean over pairs with respect to the averages a = ℓ/n: ∂/∂a = n·∂/∂ℓ / B
        close(&format!("orpo d_chosen[{i}]"), t.d_chosen * lengths.0 as f64 / b, gc[i], 1e-5);
        close(&format!("orpo d_rejected[{i}]"), t.d_rejected * lengths.1 as f64 / b, gr[i], 1e-5);
    }
}

#[test]
fn dpo_rpo_and_orpo_gradients_match_trl_on_a_model() {
    let root = fixtures();
    let g = WeightStore::open(&root.join("preference/model.safetensors")).unwrap();
    let pairs: Vec<PairIds> = (0..2)
        .map(|i| PairIds {
            prompt: ids(&g, &format!("pair{i}.prompt")),
            chosen: ids(&g, &format!("pair{i}.chosen")),
            rejected: ids(&g, &format!("pair{i}.rejected")),
        })
        .collect();
    let reference_model = load_causal_lm(&Cpu, &root.join("llama/odd_sizes_bf16_bias")).unwrap();
    let reference: Vec<PairLogps> = pairs
        .iter()
        .map(|p| PairLogps {
            chosen: answer_logp(&reference_model, &Cpu, &p.prompt, &p.chosen).unwrap(),
            rejected: answer_logp(&reference_model, &Cpu, &p.prompt, &p.rejected).unwrap(),
        })
        .collect();
    let want_reference = f32s(&g, "reference_logps");
    for (i, r) in reference.iter().enumerate() {
        assert!(
            (r.chosen - want_reference[2 * i]).abs() < 1e-4 && (r.rejected - want_reference[2 * i + 1]).abs() < 1e-4
        );
    }
    let objectives = [
        ("dpo", Objective::Dpo { beta: 0.1, rpo_alpha: None }),
        ("rpo", Objective::Dpo { beta: 0.1, rpo_alpha: Some(0.5) }),
        ("orpo", Objective::Orpo { beta: 0.1 }),
    ];
    for (name, objective) in objectives {
        let mut policy = load_causal_lm(&Cpu, &root.join("llama/gqa_tied")).unwrap();
        let outcome = preference_batch(&mut policy, &Cpu, &pairs, &reference, &objective, None).unwrap();
        let want_policy = f32s(&g, "policy_logps");
        for (i, p) in outcome.policy.iter().enumerate() {
            assert!((p.chosen - want_policy[2 * i]).abs() < 1e-4, "{name}: pair {i} chosen logp {}", p.chosen);
            assert!(
                (p.rejected - want_policy[2 * i + 1]).abs() < 1e-4,
                "{name}: pair {i} rejected logp {}",
                p.rejected
            );
        }
        let want_loss = f32s(&g, &format!("{name}.loss"))[0];
        assert!((outcome.loss - want_loss).abs() < 1e-5, "{name}: loss {} vs {want_loss}", outcome.loss);
        let (worst, _) = golden_grads::compare_grads(name, &g, &format!("{name}."), &outcome.grads);
        eprintln!(
            "{name}: loss {:.7} (TRL {want_loss:.7}), {} gradients, worst relative error {worst:.2e}",
            outcome.loss,
            outcome.grads.len()
        );
    }
}
