//! The output head: h [T, H] (the final norm's output) → logits [T, V] = h·Wᵀ (+ b), and the first step of
//! the backward. W is `lm_head`, or the embedding table when the two are tied, and for Baichuan2's NormHead
//! the product reads W's rows made unit length, Ŵ (`norm_head.rs`), whose gradient goes back through the
//! normalisation. A frozen base (LoRA) trains neither W nor the bias, so neither gradient is computed.
//!
//! A training step reaches the head one of two ways, and both end in [`HeadGradients`], where
//! [`Decoder::backward_from_hidden`] takes over:
//! - through the logits: [`Decoder::forward_train`] returns them whole and [`Decoder::backward`] takes their
//!   gradient ([`Decoder::head_backward`]), for a loss that needs every logit at once;
//! - through the chunked loss ([`Decoder::head_loss`], `Backend::linear_cross_entropy`): the causal-LM losses
//!   of every fine-tuning mode and the preference objectives (which first score each answer with
//!   [`Decoder::head_token_losses`]), never holding the [T, V] logits (`loss::chunked_head`).

use super::decoder::Decoder;
use super::decoder_train::TrainCache;
use super::norm_head::{normalize_rows, normalize_rows_backward};
use crate::backend::{Backend, HeadGradsWanted, HeadLoss};
use crate::loss::chunked_head::token_losses_in_chunks;
use std::borrow::Cow;

/// What the head's backward hands to the rest of the model.
pub struct HeadGradients<B: Backend> {
    /// ∂L/∂h [T, H], h the final norm's output: where the backward through the layers starts
    pub dh_final: B::Tensor,
    /// ∂L/∂W [V, H] of the stored head (NormHead: through the normalisation), `None` with a frozen base
    pub dhead: Option<B::Tensor>,
    /// ∂L/∂b [1, V] of an lm_head bias (a trained base only)
    pub dbias: Option<B::Tensor>,
}

/// The head's W as the product reads it: the stored matrix, or NormHead's Ŵ with the inverse row norms its
/// backward needs.
struct HeadWeight<'m, B: Backend> {
    w: Cow<'m, B::Tensor>, // [V, H]
    inv_norms: Option<Vec<f32>>,
}

impl<B: Backend> HeadWeight<'_, B> {
    /// (dh, ∂L/∂(the W that ran), db) → the gradients of the stored parameters.
    fn gradients(self, b: &B, dh: B::Tensor, dw: Option<B::Tensor>, db: Option<B::Tensor>) -> HeadGradients<B> {
        let dhead = match (dw, &self.inv_norms) {
            (Some(g), Some(inv)) => Some(normalize_rows_backward(b, &g, &self.w, inv)), // NormHead: ŵ is what ran
            (dw, _) => dw,
        };
        HeadGradients { dh_final: dh, dhead, dbias: db }
    }
}

impl<B: Backend> Decoder<B> {
    fn head_weight(&self, b: &B) -> HeadWeight<'_, B> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        if self.config.normalized_head {
            let (w_hat, inv_norms) = normalize_rows(b, head);
            return HeadWeight { w: Cow::Owned(w_hat), inv_norms: Some(inv_norms) };
        }
        HeadWeight { w: Cow::Borrowed(head), inv_norms: None }
    }

    /// The head's gradients a step computes: W's and the bias's only when the base trains.
    fn head_grads_wanted(&self) -> HeadGradsWanted {
        let train_base = !self.frozen_base;
        HeadGradsWanted { weight: train_base, bias: train_base && self.lm_head_bias.is_some() }
    }

    /// h: [T, H] after the final norm → logits [T, vocab].
    pub(super) fn head(&self, b: &B, h: &B::Tensor) -> B::Tensor {
        b.linear(h, &self.head_weight(b).w, self.lm_head_bias.as_ref())
    }

    /// dlogits [T, vocab] (the gradient of a loss of the logits `forward_train` returned) → the head's gradients.
    pub fn head_backward(&self, b: &B, cache: &TrainCache<'_, B>, dlogits: &B::Tensor) -> HeadGradients<B> {
        let (weight, wanted) = (self.head_weight(b), self.head_grads_wanted());
        let (dh, dw, db) = b.linear_backward(dlogits, &cache.h_final, &weight.w, wanted.weight, wanted.bias);
        weight.gradients(b, dh, dw, db)
    }

    // ANCHOR: head_loss
    /// The head and the loss L = Σₜ cₜ·ℓₜ together, after [`Decoder::forward_train_hidden`]: the token losses
    /// ℓ [T, 1] (not yet read) and the head's gradients, the logits never whole (`Backend::linear_cross_entropy`
    /// in chunks of `head_chunk_bytes`).
    pub fn head_loss(
        &self,
        b: &B,
        cache: &TrainCache<'_, B>,
        targets: &[u32],
        coefficients: &[f32],
    ) -> (B::Tensor, HeadGradients<B>) {
        let (weight, wanted) = (self.head_weight(b), self.head_grads_wanted());
        let bias = self.lm_head_bias.as_ref();
        let HeadLoss { token_losses, dh, dhead, dbias } = b.linear_cross_entropy(
            &cache.h_final,
            &weight.w,
            bias,
            targets,
            coefficients,
            wanted,
            self.head_chunk_bytes,
        );
        (token_losses, weight.gradients(b, dh, dhead, dbias))
    }
    // ANCHOR_END: head_loss

    /// ℓₜ = −log p(targetₜ) for every row of h [T, H] (the final norm's output), [T, 1] on the device, with no
    /// gradient: the head in chunks (`loss::chunked_head::token_losses_in_chunks`).
    pub fn head_token_losses(&self, b: &B, h: &B::Tensor, targets: &[u32]) -> B::Tensor {
        let weight = self.head_weight(b);
        token_losses_in_chunks(b, h, &weight.w, self.lm_head_bias.as_ref(), targets, self.head_chunk_bytes)
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::Backend;
    use crate::backend::cpu::Cpu;
    use crate::io::hf_config::HfConfig;
    use crate::loss::causal_lm::deferred_token_loss;
    use crate::loss::chunked_head::{DEFAULT_HEAD_CHUNK_BYTES, chunk_rows};
    use crate::models::decoder::{Decoder, DecoderConfig, Sequence};
    use crate::models::{baichuan, phi};
    use crate::peft::attach::init_adapters;
    use crate::peft::{LoraConfig, TargetModules};
    use crate::rng::Rng;
    use ndarray::Array2;

    const VOCAB: usize = 29;
    const T: usize = 11;

    fn family(model_type: &str, extra: serde_json::Value) -> DecoderConfig {
        let mut json = serde_json::json!({
            "model_type": model_type, "vocab_size": VOCAB, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
        });
        json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let cfg = HfConfig { path: "test/config.json".into(), json: json.as_object().unwrap().clone() };
        match model_type {
            "baichuan" => baichuan::config_from_hf(&cfg).unwrap(),
            "phi" => phi::config_from_hf(&cfg).unwrap(),
            other => unreachable!("{other}"),
        }
    }

    /// The head variants: (name, config) — untied, tied, NormHead (Baichuan2), a head with a bias (Phi).
    fn variants() -> Vec<(&'static str, DecoderConfig)> {
        let untied = DecoderConfig::with_shape(VOCAB, 16, 24, 2, 2, 1);
        let mut tied = untied.clone();
        tied.tie_word_embeddings = true;
        let norm_head = family("baichuan", serde_json::json!({"model_max_length": 64}));
        assert!(norm_head.normalized_head);
        let biased = family("phi", serde_json::json!({}));
        assert!(biased.lm_head_bias);
        vec![("untied", untied), ("tied", tied), ("NormHead", norm_head), ("head bias", biased)]
    }

    fn random(rows: usize, cols: usize, rng: &mut Rng, scale: f64) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |_| (rng.normal() * scale) as f32)
    }

    /// A random model of `config`: the whole base trained, or frozen under LoRA adapters (with B ≠ 0, so that
    /// A has a gradient too); a random head bias where it has one, and head rows of unequal lengths (NormHead).
    fn model(b: &Cpu, config: DecoderConfig, lora: bool) -> Decoder<Cpu> {
        let mut model = Decoder::random(b, config, 3);
        let mut rng = Rng::new(11);
        if let Some(bias) = model.lm_head_bias.as_mut() {
            *bias = b.upload(random(1, VOCAB, &mut rng, 0.5));
        }
        if let Some(head) = model.lm_head.as_mut() {
            let lengths: Vec<f32> = (0..VOCAB).map(|v| 1.0 + v as f32 * 0.1).collect();
            *head = b.scale_rows(head, &lengths);
        }
        if lora {
            let targets = TargetModules::AllLinear; // Baichuan's fused W_pack has no q_proj
            let config = LoraConfig { r: 4, lora_alpha: 8.0, target_modules: targets, ..LoraConfig::default() };
            init_adapters(&mut model, b, &config, &mut Rng::new(5)).unwrap();
            for (_, linear) in model.linears_mut() {
                if let Some(adapter) = linear.lora.as_mut() {
                    let (out, r) = b.dims(&adapter.b);
                    adapter.b = b.upload_weight(random(out, r, &mut rng, 0.05));
                }
            }
        }
        model
    }

    /// max |a − b| / max |a|
    fn rel_diff(a: &Array2<f32>, b: &Array2<f32>) -> f64 {
        assert_eq!(a.dim(), b.dim());
        let scale = a.iter().fold(1e-12f32, |m, x| m.max(x.abs())) as f64;
        a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max) / scale
    }

    /// The chunked loss (`deferred_token_loss`: `head_loss` + `backward_from_hidden`) against the logits path
    /// (`forward_train`, `cross_entropy_on_device` on the whole logits, `backward`) for every head variant, a
    /// trained and a frozen base, and chunks of 1 row, 3 rows (11 = 3 + 3 + 3 + 2) and all rows: the same
    /// losses and the same gradients of every parameter, within 1e-5 relative (summation order only).
    #[test]
    fn the_chunked_head_gives_the_logits_paths_losses_and_gradients() {
        let b = Cpu;
        let ids: Vec<u32> = (0..T as u32).map(|i| (i * 7 + 2) % VOCAB as u32).collect();
        let positions: Vec<usize> = (0..6).chain(0..5).collect();
        let segments: Vec<u32> = (0..T as u32).map(|i| u32::from(i >= 6)).collect();
        let seq = Sequence { ids: &ids, positions: &positions, segment_ids: Some(&segments) };
        let targets: Vec<u32> = ids.iter().skip(1).copied().chain([0]).collect();
        let coefficients: Vec<f32> =
            (0..T).map(|i| if i == 5 || i == T - 1 { 0.0 } else { 0.05 + 0.01 * i as f32 }).collect();
        let mut worst = (0.0f64, 0.0f64);
        for (name, config) in variants() {
            for lora in [false, true] {
                let mut model = model(&b, config.clone(), lora);
                let (logits, cache) = model.forward_train(&b, seq).unwrap();
                let (want_losses, dlogits) = b.cross_entropy_on_device(&logits, &targets, &coefficients);
                let want = model.backward(&b, cache, &dlogits);
                assert!(!want.is_empty(), "{name}: something trains");
                for (rows, chunk_bytes) in [(1, VOCAB * 4), (3, 3 * VOCAB * 4), (T, DEFAULT_HEAD_CHUNK_BYTES)] {
                    assert_eq!(chunk_rows(VOCAB, chunk_bytes).min(T), rows);
                    model.head_chunk_bytes = chunk_bytes;
                    let got = deferred_token_loss(&model, &b, seq, &targets, &coefficients, None).unwrap();
                    let what = format!("{name}, {}, {rows}-row chunks", if lora { "LoRA" } else { "full" });
                    let d = rel_diff(&want_losses, &got.token_losses);
                    assert!(d <= 1e-5, "{what}: token losses differ by {d:e}");
                    worst.0 = worst.0.max(d);
                    let names = |g: &crate::models::decoder::Gradients<Cpu>| g.keys().cloned().collect::<Vec<_>>();
                    assert_eq!(names(&want), names(&got.grads), "{what}: the same parameters get gradients");
                    for (param, g) in &want {
                        let d = rel_diff(g, &got.grads[param]);
                        assert!(d <= 1e-5, "{what}: ∂L/∂{param} differs by {d:e}");
                        worst.1 = worst.1.max(d);
                    }
                }
            }
        }
        eprintln!("chunked vs whole logits: max relative difference {:e} (losses), {:e} (gradients)", worst.0, worst.1);
    }
}
