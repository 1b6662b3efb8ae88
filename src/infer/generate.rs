//! Autoregressive generation with a KV cache: the prompt is run once, then one token at a time, each step
//! attending to the cached keys and values instead of recomputing the whole prefix.

use crate::backend::Backend;
use crate::models::decoder::{Decoder, Logits, Weight};
use crate::models::stacked_base::StackedWeight;
use crate::rng::Rng;
use anyhow::Result;

/// How the next token is chosen.
#[derive(Clone, Debug)]
pub enum Decoding {
    /// argmax of the logits (the first index on ties, as `torch.argmax`).
    Greedy,
    /// Softmax at `temperature`, restricted to the smallest set of most likely tokens whose probability
    /// reaches `top_p` (nucleus sampling), drawn with a seeded generator.
    Sample { temperature: f32, top_p: f32, seed: u64 },
}

// ANCHOR: decoding_layout
impl<B: Backend> Decoder<B> {
    /// The model with every dense weight moved to the layout the backend's one-row products read fastest
    /// ([`Backend::decoding_layout`]), one matrix at a time. For generation only: training and scoring run
    /// products of many rows, which the load-time layout serves best.
    pub fn for_decoding(mut self, b: &B) -> Self {
        self.stack_frozen_bases(b); // nothing trains these weights again
        let relayout = |w: &mut B::Tensor| {
            if let Some(moved) = b.decoding_layout(w) {
                *w = moved;
            }
        };
        for (_, linear) in self.linears_mut() {
            if let Weight::Dense(w) = &mut linear.weight {
                relayout(w);
            }
        }
        for stack in self.stacked_bases_mut() {
            if let StackedWeight::Dense(w) = &mut stack.weight {
                relayout(w);
            }
        }
        match self.lm_head.as_mut() {
            Some(head) => relayout(head),
            None => relayout(&mut self.embed_tokens), // tied: the table is the head's W
        }
        self
    }
}
// ANCHOR_END: decoding_layout

// ANCHOR: generate
/// Continue `prompt` by up to `max_new_tokens` tokens; stops after emitting any id in `eos_ids` (included).
pub fn generate<B: Backend>(
    model: &Decoder<B>,
    b: &B,
    prompt: &[u32],
    max_new_tokens: usize,
    decoding: &Decoding,
    eos_ids: &[u32],
) -> Result<Vec<u32>> {
    let mut rng = match decoding {
        Decoding::Sample { seed, .. } => Some(Rng::new(*seed)),
        Decoding::Greedy => None,
    };
    let mut cache = model.new_cache();
    let mut generated = Vec::with_capacity(max_new_tokens);
    let mut next_input = prompt.to_vec();
    while generated.len() < max_new_tokens {
        let logits = b.download(&model.forward(b, &next_input, Some(&mut cache), Logits::Last)?);
        let row: Vec<f32> = logits.row(0).to_vec();
        let token = match (decoding, rng.as_mut()) {
            (Decoding::Sample { temperature, top_p, .. }, Some(rng)) if *temperature > 0.0 => {
                sample(&row, *temperature, *top_p, rng)
            }
            _ => argmax(&row),
        };
        generated.push(token);
        if eos_ids.contains(&token) {
            break;
        }
        next_input = vec![token];
    }
    Ok(generated)
}
// ANCHOR_END: generate

// ANCHOR: argmax
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}
// ANCHOR_END: argmax

// ANCHOR: sample
/// Temperature + nucleus (top-p) sampling.
pub fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut Rng) -> u32 {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = logits.iter().map(|&l| (((l - max) / temperature) as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
    // keep the most likely tokens until their probability reaches top_p (always at least one)
    let mut kept = 0;
    let mut mass = 0.0;
    for &i in &order {
        kept += 1;
        mass += weights[i] / total;
        if mass >= top_p as f64 {
            break;
        }
    }
    let kept = &order[..kept];
    let kept_total: f64 = kept.iter().map(|&i| weights[i]).sum();
    let mut u = rng.next_f64() * kept_total;
    for &i in kept {
        u -= weights[i];
        if u < 0.0 {
            return i as u32;
        }
    }
    *kept.last().expect("at least one token is kept") as u32
}
// ANCHOR_END: sample

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoding_layout_changes_no_result_but_rounding() {
        use crate::backend::cpu::Cpu;
        use crate::models::decoder::DecoderConfig;
        let mut config = DecoderConfig::with_shape(96, 64, 160, 2, 4, 2);
        config.tie_word_embeddings = true;
        let trained_layout = Decoder::random(&Cpu, config, 3);
        let decoding_layout = Decoder::random(&Cpu, trained_layout.config.clone(), 3).for_decoding(&Cpu);
        assert!(!trained_layout.embed_tokens.is_standard_layout() && decoding_layout.embed_tokens.is_standard_layout());
        let (mut before, mut after) = (trained_layout.new_cache(), decoding_layout.new_cache());
        for ids in [&[5u32, 17, 2, 40][..], &[9], &[63]] {
            let a = trained_layout.forward(&Cpu, ids, Some(&mut before), Logits::Last).unwrap();
            let b = decoding_layout.forward(&Cpu, ids, Some(&mut after), Logits::Last).unwrap();
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "logits moved by {worst}");
        }
        let greedy = |m: &Decoder<Cpu>| generate(m, &Cpu, &[1, 2, 3], 12, &Decoding::Greedy, &[]).unwrap();
        assert_eq!(greedy(&trained_layout), greedy(&decoding_layout));
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn tiny_top_p_is_greedy_and_sampling_follows_the_distribution() {
        let logits = [0.0f32, 2.0, 1.0, -5.0];
        let mut rng = Rng::new(5);
        for _ in 0..50 {
            assert_eq!(sample(&logits, 1.0, 1e-6, &mut rng), 1);
        }
        let n = 40_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[sample(&logits, 1.0, 1.0, &mut rng) as usize] += 1;
        }
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for i in 0..4 {
            let p = (logits[i] as f64).exp() / z;
            assert!((counts[i] as f64 / n as f64 - p).abs() < 0.01, "{counts:?}");
        }
        // top_p = 0.8 keeps tokens 1 and 2 only (p ≈ 0.66 + 0.24)
        for _ in 0..500 {
            let t = sample(&logits, 1.0, 0.8, &mut rng);
            assert!(t == 1 || t == 2);
        }
    }
}
