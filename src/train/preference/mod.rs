//! Preference training, `mftcoder dpo --config cfg.json`: MFTCoder's `xxpo` module (reference §4, §7.3) —
//! DPO, RPO or ORPO on LoRA, QLoRA or full parameters — written natively instead of through TRL.
//!
//! The reference model of DPO/RPO is the base itself: the policy with its adapters switched off (LoRA, QLoRA),
//! or a second, frozen copy loaded from `pretrained_model_path` (full parameters). ORPO has none.

mod config;
mod data;

pub use config::PreferenceConfig;
pub use data::{PairIds, load_pairs, pair_ids, pair_texts};

use crate::backend::Backend;
use crate::io::tokenizer::Tokenizer;
use crate::loss::preference::{Objective, PairLogps, PairTerm, cross_entropy_weights, pair_term};
use crate::models::decoder::{Decoder, Gradients, Logits, Sequence, TrainCache, joint_aux_loss};
use crate::models::load_causal_lm;
use crate::peft::attach::init_adapters;
use crate::rng::Rng;
use crate::train::checkpoint::{self, TrainerState};
use crate::train::metrics::{MetricsLog, Tags};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::run_lock::{self, RunLock, RunRecord};
use crate::train::schedule::{LrSchedule, learning_rate};
use crate::train::step_update::Outcome;
use crate::train::trainer::{RunOptions, quantize_base};
use anyhow::{Context, Result, anyhow, bail};
use std::path::PathBuf;

/// prompt + answer, and the rows whose next-token target is an answer token (row t predicts token t+1; an
/// answer's first token is predicted from the prompt's last row, so an empty prompt cannot score it).
fn sequence(prompt: &[u32], answer: &[u32]) -> (Vec<u32>, Vec<u32>, std::ops::Range<usize>) {
    let ids: Vec<u32> = prompt.iter().chain(answer).copied().collect();
    let targets: Vec<u32> = ids.iter().skip(1).copied().chain([0]).collect();
    let answer_rows = if prompt.is_empty() { 0..answer.len() - 1 } else { prompt.len() - 1..ids.len() - 1 };
    (ids, targets, answer_rows)
}

/// The rows an objective's NLL scores in a chosen sequence: its answer, or (ORPO) every next-token prediction.
fn nll_rows(objective: &Objective, ids: usize, answer_rows: &std::ops::Range<usize>) -> std::ops::Range<usize> {
    if objective.nll_includes_prompt() { 0..ids - 1 } else { answer_rows.clone() }
}

// ANCHOR: answer_logp
/// Σ over the answer's tokens of log p(token | everything before it): a sequence's log-probability, no
/// gradient (the reference model's numbers, and evaluation).
pub fn answer_logp<B: Backend>(model: &Decoder<B>, b: &B, prompt: &[u32], answer: &[u32]) -> Result<f64> {
    Ok(scored(model, b, prompt, answer, None)?.0)
}

/// The answer's log-probability and, for an objective, the sum of −log p over the rows its NLL scores.
fn scored<B: Backend>(
    model: &Decoder<B>,
    b: &B,
    prompt: &[u32],
    answer: &[u32],
    objective: Option<&Objective>,
) -> Result<(f64, f64)> {
    let (ids, targets, rows) = sequence(prompt, answer);
    let h = model.forward_hidden(b, &ids, None, Logits::All)?;
    let losses = read_token_losses(b, &model.head_token_losses(b, &h, &targets));
    let sum = |r: std::ops::Range<usize>| losses[r].iter().map(|&l| l as f64).sum::<f64>();
    let nll = objective.map_or(0.0, |o| sum(nll_rows(o, ids.len(), &rows)));
    Ok((-sum(rows), nll))
}
// ANCHOR_END: answer_logp

/// The per-token losses [T, 1] on the host: the one read an answer's score makes.
fn read_token_losses<B: Backend>(b: &B, losses: &B::Tensor) -> Vec<f32> {
    b.download(losses).into_iter().collect()
}

/// What one batch of pairs gave.
pub struct BatchOutcome<B: Backend> {
    /// (1/B)·Σ pair terms + w·NLL
    pub loss: f64,
    pub terms: Vec<PairTerm>,
    pub policy: Vec<PairLogps>,
    /// The pooled chosen-answer NLL (per token).
    pub nll: f64,
    pub grads: Gradients<B>,
}

// ANCHOR: preference_batch
/// Forward and backward of the policy on every answer of a batch. Per answer: one forward, its sequence
/// log-probability from the per-token cross-entropies, the pair's derivative ∂L/∂ℓ from the objective, then
/// the backward with per-token weights that make `cross_entropy`'s gradient exactly ∂L/∂logits. Both answers
/// of a pair are forwarded before either goes backward (the pair term needs both ℓ), so two caches are alive;
/// a mixture of experts balances its load over the whole batch, as TRL's one concatenated forward does, so
/// there every answer of the batch is forwarded first.
pub fn preference_batch<B: Backend>(
    policy: &mut Decoder<B>,
    b: &B,
    pairs: &[PairIds],
    reference: &[PairLogps],
    objective: &Objective,
    dropout_seed: Option<u64>,
) -> Result<BatchOutcome<B>> {
    let nll_tokens: usize = pairs
        .iter()
        .map(|p| if objective.nll_includes_prompt() { p.prompt.len() + p.chosen.len() - 1 } else { p.chosen.len() })
        .sum();
    let nll_per_token = objective.nll_weight() / nll_tokens.max(1) as f64;
    let mut grads: Gradients<B> = Gradients::<B>::new();
    let (mut terms, mut logps, mut nll_sum) = (Vec::new(), Vec::new(), 0.0);
    let all_answers: Vec<_> = pairs
        .iter()
        .map(|pair| {
            [&pair.chosen, &pair.rejected].map(|answer| {
                let (ids, targets, rows) = sequence(&pair.prompt, answer);
                let positions: Vec<usize> = (0..ids.len()).collect();
                (ids, targets, rows, positions)
            })
        })
        .collect();
    // the pairs forwarded together before their backward: one, or the whole batch for a mixture of experts
    let group = if policy.config.moe.is_some() { pairs.len().max(1) } else { 1 };
    let mut aux_loss = None;
    for start in (0..pairs.len()).step_by(group) {
        let range = start..(start + group).min(pairs.len());
        let mut forwards = Vec::with_capacity(range.len());
        for i in range.clone() {
            let (pair, answers) = (&pairs[i], &all_answers[i]);
            let mut sides = Vec::with_capacity(2);
            for (side, (ids, targets, rows, positions)) in answers.iter().enumerate() {
                policy.dropout_seed =
                    dropout_seed.map(|s| s ^ ((2 * i + side) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let seq = Sequence { ids, positions, segment_ids: None };
                let cache = policy.forward_train_hidden(b, seq)?;
                // scored first, the head in chunks; the gradients' pass comes once the pair's term is known
                let losses = read_token_losses(b, &policy.head_token_losses(b, cache.h_final(), targets));
                let logp = -losses[rows.clone()].iter().map(|&l| l as f64).sum::<f64>();
                if side == 0 {
                    nll_sum += losses[nll_rows(objective, ids.len(), rows)].iter().map(|&l| l as f64).sum::<f64>();
                }
                sides.push((cache, logp, policy.dropout_seed));
            }
            let policy_logps = PairLogps { chosen: sides[0].1, rejected: sides[1].1 };
            terms.push(pair_term(objective, policy_logps, reference[i], (pair.chosen.len(), pair.rejected.len())));
            logps.push(policy_logps);
            forwards.push(sides);
        }
        if let Some(moe) = &policy.config.moe {
            let mut caches: Vec<&mut TrainCache<'_, B>> =
                forwards.iter_mut().flat_map(|sides| sides.iter_mut().map(|side| &mut side.0)).collect();
            aux_loss = joint_aux_loss(&mut caches, moe).map(|aux| aux * moe.aux_loss.loss_weight() as f64);
        }
        for (sides, i) in forwards.into_iter().zip(range) {
            let term = &terms[i];
            for (side, ((cache, _, seed), (ids, targets, rows, _))) in
                sides.into_iter().zip(all_answers[i].iter()).enumerate()
            {
                let d_answer = if side == 0 { term.d_chosen } else { term.d_rejected };
                let nll = if side == 0 { nll_rows(objective, ids.len(), rows) } else { 0..0 };
                let weights = cross_entropy_weights(ids.len(), rows.clone(), d_answer, pairs.len(), nll, nll_per_token);
                let (_, head) = policy.head_loss(b, &cache, targets, &weights);
                policy.dropout_seed = seed; // the backward recomputes the forward's dropout masks from it
                for (name, g) in policy.backward_from_hidden(b, cache, head) {
                    match grads.get_mut(&name) {
                        Some(acc) => b.add_assign(acc, &g),
                        None => {
                            grads.insert(name, g);
                        }
                    }
                }
            }
        }
    }
    policy.dropout_seed = None;
    let nll = nll_sum / nll_tokens.max(1) as f64;
    // + router_aux_loss_coef·aux for a mixture of experts (TRL's `aux_loss_enabled`)
    let loss = terms.iter().map(|t| t.loss).sum::<f64>() / pairs.len() as f64
        + objective.nll_weight() * nll
        + aux_loss.unwrap_or(0.0);
    if !loss.is_finite() {
        bail!("the preference loss is {loss} (not finite)");
    }
    Ok(BatchOutcome { loss, terms, policy: logps, nll, grads })
}
// ANCHOR_END: preference_batch

/// The reference log-probabilities of each pair: the base model's (LoRA: the policy with its adapters taken
/// out for the call; full parameters: the frozen copy), or zeros when the objective has no reference.
fn reference_logps<B: Backend>(
    policy: &mut Decoder<B>,
    frozen: Option<&Decoder<B>>,
    b: &B,
    pairs: &[PairIds],
    objective: &Objective,
) -> Result<Vec<PairLogps>> {
    if !objective.needs_reference() {
        return Ok(vec![PairLogps { chosen: 0.0, rejected: 0.0 }; pairs.len()]);
    }
    let score = |model: &Decoder<B>| -> Result<Vec<PairLogps>> {
        pairs
            .iter()
            .map(|p| {
                Ok(PairLogps {
                    chosen: answer_logp(model, b, &p.prompt, &p.chosen)?,
                    rejected: answer_logp(model, b, &p.prompt, &p.rejected)?,
                })
            })
            .collect()
    };
    match frozen {
        Some(reference) => score(reference),
        None => {
            let adapters: Vec<_> = policy.linears_mut().into_iter().map(|(_, l)| l.lora.take()).collect();
            let result = score(policy);
            for ((_, linear), lora) in policy.linears_mut().into_iter().zip(adapters) {
                linear.lora = lora;
            }
            result
        }
    }
}

// ANCHOR: validation_pairs
/// How many of `n` pairs validate: MFTCoder's `train_test_split(test_size = s1 / (s0 + s1))` of `data_split`
/// "s0,s1[,…]", where datasets takes ceil(test_size · n) — so "99,1" of 40 pairs validates on 1, not 0.
pub fn validation_pairs(data_split: &str, n: usize) -> Result<usize> {
    let shares: Vec<f64> = data_split
        .split(',')
        .map(|s| s.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow!("field `data_split` must be comma-separated numbers, got `{data_split}`"))?;
    let (s0, s1) = (shares[0], shares.get(1).copied().unwrap_or(0.0));
    if s0 + s1 <= 0.0 {
        return Ok(0);
    }
    Ok((s1 / (s0 + s1) * n as f64).ceil() as usize)
}
// ANCHOR_END: validation_pairs

/// Fisher–Yates with the project's generator (the same order on every machine).
fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

/// Validation numbers: the mean loss, and how often the chosen answer's reward beats the rejected one's.
#[derive(Clone, Debug, PartialEq)]
pub struct PreferenceEval {
    pub step: usize,
    pub loss: f64,
    pub reward_accuracy: f64,
    pub reward_margin: f64,
}

fn evaluate<B: Backend>(
    policy: &mut Decoder<B>,
    frozen: Option<&Decoder<B>>,
    b: &B,
    pairs: &[PairIds],
    objective: &Objective,
    step: usize,
) -> Result<PreferenceEval> {
    let reference = reference_logps(policy, frozen, b, pairs, objective)?;
    let (mut loss, mut wins, mut margin, mut nll, mut nll_tokens) = (0.0, 0.0, 0.0, 0.0, 0usize);
    for (pair, reference) in pairs.iter().zip(reference) {
        let (chosen, chosen_nll) = scored(policy, b, &pair.prompt, &pair.chosen, Some(objective))?;
        let logps = PairLogps { chosen, rejected: answer_logp(policy, b, &pair.prompt, &pair.rejected)? };
        let term = pair_term(objective, logps, reference, (pair.chosen.len(), pair.rejected.len()));
        loss += term.loss;
        wins += f64::from(u8::from(term.chosen_reward > term.rejected_reward));
        margin += term.chosen_reward - term.rejected_reward;
        nll += chosen_nll;
        nll_tokens +=
            if objective.nll_includes_prompt() { pair.prompt.len() + pair.chosen.len() - 1 } else { pair.chosen.len() };
    }
    let n = pairs.len() as f64;
    let loss = loss / n + objective.nll_weight() * nll / nll_tokens.max(1) as f64;
    Ok(PreferenceEval { step, loss, reward_accuracy: wins / n, reward_margin: margin / n })
}

pub struct PreferenceReport {
    pub completed_steps: usize,
    pub final_checkpoint: PathBuf,
    pub evaluations: Vec<PreferenceEval>,
}

// ANCHOR: preference_train
pub fn train_preference<B: Backend>(b: &B, cfg: &PreferenceConfig, opts: RunOptions) -> Result<PreferenceReport> {
    crate::io::model_dir::check_model_dir("pretrained_model_path", &cfg.pretrained_model_path)?;
    crate::io::model_dir::check_model_type(cfg.model_type.as_deref(), &cfg.pretrained_model_path)?;
    let quiet = opts.quiet;
    let objective = cfg.objective()?;
    let lora = cfg.lora()?;
    let out = &cfg.output_dir;
    let _lock = RunLock::acquire(out)?; // the output directory is this run's until it returns
    run_lock::remove_stale_partials(out)?;
    checkpoint::check_writable(out)?;
    let data_files: Vec<PathBuf> = cfg.data_paths.iter().map(PathBuf::from).collect();
    let record = RunRecord::new("dpo", serde_json::to_value(cfg)?, &cfg.pretrained_model_path, &data_files)?;
    let run = run_lock::claim_output_dir(out, record, &[], opts.overwrite_output_dir)?;
    crate::train::memory::check_preference_memory(cfg, lora.as_ref().map(|l| l.r))?;
    let schedule: LrSchedule =
        cfg.lr_scheduler_type.parse().map_err(|e: String| anyhow!("field `lr_scheduler_type`: {e}"))?;
    let base = &cfg.pretrained_model_path;
    let tok = Tokenizer::load(base)?;
    let mut policy: Decoder<B> = load_causal_lm(b, base)?;
    let eos = crate::data::resolve_eos(&tok)?; // as the MFT trainer resolves it (the tokenizer's first)
    let mut pairs = load_pairs(cfg, &tok, eos)?;

    // split: a seeded shuffle, then the validation pairs off the end
    shuffle(&mut pairs, &mut Rng::new(cfg.seed));
    let n_eval = validation_pairs(&cfg.data_split, pairs.len())?;
    let eval_pairs = pairs.split_off(pairs.len() - n_eval.min(pairs.len() - 1));
    let per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps;
    let steps_per_epoch = pairs.len() / per_step;
    if steps_per_epoch == 0 {
        bail!("{} training pairs are fewer than one optimizer step needs ({per_step})", pairs.len());
    }
    let total_steps = if cfg.max_steps > 0 { cfg.max_steps as usize } else { cfg.num_train_epochs * steps_per_epoch };
    let warmup = cfg.warmup_steps.max(0.0) as usize;

    // the policy: QLoRA's 4-bit base, adapters, or every parameter; the reference for full-parameter DPO
    let frozen = match (&lora, objective.needs_reference()) {
        (None, true) => Some(load_causal_lm::<B>(b, base)?),
        _ => None,
    };
    if cfg.peft_type.as_deref() == Some("qlora") {
        quantize_base(b, &mut policy)?;
    }
    if let Some(lora) = &lora {
        let n = init_adapters(&mut policy, b, lora, &mut Rng::new(cfg.seed))?;
        eprintln!("LoRA: r = {}, α = {}, {n} adapted layers, base frozen", lora.r, lora.lora_alpha);
    }
    eprintln!(
        "{}: {} training pairs, {} validation pairs, {total_steps} steps of {per_step} pairs",
        match objective {
            Objective::Dpo { rpo_alpha: Some(a), beta } => format!("RPO (β = {beta}, α = {a})"),
            Objective::Dpo { beta, .. } => format!("DPO (β = {beta})"),
            Objective::Orpo { beta } => format!("ORPO (β = {beta})"),
        },
        pairs.len(),
        eval_pairs.len()
    );
    let names: Vec<String> = policy.trainable_parameters_mut().into_iter().map(|(n, _)| n).collect();
    let shapes: Vec<(usize, usize)> = policy.trainable_parameters_mut().iter().map(|(_, t)| b.dims(t)).collect();
    let mut opt =
        AdamW::new_on(b, AdamWConfig { weight_decay: cfg.weight_decay as f32, ..AdamWConfig::default() }, &shapes);
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let mut metrics = MetricsLog::open(out, cfg.tb_dir.as_deref(), 0, Tags::Trainer)?;
    let mut rng = Rng::new(cfg.seed ^ 0x5EED);
    let (mut evaluations, mut saved) = (Vec::new(), Vec::new());
    let mut state = TrainerState::start(total_steps, rng.state());
    if !eval_pairs.is_empty() {
        // where the policy starts (DPO: the reference itself, so loss log 2 and margin 0)
        policy.normalize_head_in_place(b); // an eval-mode forward: Baichuan2's NormHead normalises its weight
        let ev = evaluate(&mut policy, frozen.as_ref(), b, &eval_pairs, &objective, 0)?;
        metrics.record(&serde_json::json!({"step": 0, "eval_loss": ev.loss,
            "eval_rewards/accuracies": ev.reward_accuracy, "eval_rewards/margins": ev.reward_margin}))?;
        evaluations.push(ev);
    }
    let started = std::time::Instant::now();
    'epochs: for epoch in 0.. {
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        shuffle(&mut order, &mut Rng::new(cfg.seed.wrapping_add(epoch as u64)));
        for chunk in order.chunks_exact(per_step) {
            if state.completed_steps >= total_steps {
                break 'epochs;
            }
            let step = state.completed_steps;
            let lr = learning_rate(schedule, cfg.learning_rate, 0.0, step, warmup, total_steps);
            let batch: Vec<PairIds> = chunk.iter().map(|&i| pairs[i].clone()).collect();
            let mut acc: Option<Gradients<B>> = None;
            let (mut loss, mut terms) = (0.0, Vec::new());
            for micro in batch.chunks(cfg.per_device_train_batch_size) {
                let reference = reference_logps(&mut policy, frozen.as_ref(), b, micro, &objective)?;
                let seed = (cfg.lora_dropout > 0.0).then(|| rng.next_u64());
                let outcome = preference_batch(&mut policy, b, micro, &reference, &objective, seed)
                    .with_context(|| format!("step {}", step + 1))?;
                loss += outcome.loss / cfg.gradient_accumulation_steps as f64;
                terms.extend(outcome.terms);
                let scale = 1.0 / cfg.gradient_accumulation_steps as f32;
                match acc.as_mut() {
                    None => acc = Some(outcome.grads.into_iter().map(|(n, g)| (n, b.scale(&g, scale))).collect()),
                    Some(acc) => {
                        for (n, g) in outcome.grads {
                            b.add_scaled(acc.get_mut(&n).expect("same parameters every micro-batch"), &g, scale);
                        }
                    }
                }
            }
            let mut grads = acc.expect("at least one micro-batch");
            let clipping = cfg.max_grad_norm > 0.0;
            let max_norm = if clipping { cfg.max_grad_norm as f32 } else { f32::INFINITY };
            let mut params = policy.trainable_parameters_mut();
            let decay: Vec<bool> = vec![true; params.len()];
            // the losses were read by `preference_batch` (the preference loss needs the log-probabilities)
            let report = opt.clipped_step_on_named(b, &mut params, &mut grads, lr as f32, &decay, max_norm, &[]);
            let grad_norm = if clipping { report.grad_norm } else { 0.0 };
            match report.outcome {
                Outcome::Updated | Outcome::NonFiniteLoss => {}
                Outcome::NonFiniteGradient(i) => bail!(
                    "step {}: the gradient of `{}` is not finite; nothing was updated, so the last checkpoint \
                     stays the last finite one",
                    step + 1,
                    names[i]
                ),
                Outcome::NonFiniteParameter(i) => bail!(
                    "step {}: the update made parameter `{}` non-finite (learning rate {lr:e}); stopped before \
                     saving it, so the last checkpoint stays the last finite one",
                    step + 1,
                    names[i]
                ),
            }
            state.completed_steps += 1;
            state.lr = lr;
            let n = terms.len() as f64;
            let chosen_reward = terms.iter().map(|t| t.chosen_reward).sum::<f64>() / n;
            let rejected_reward = terms.iter().map(|t| t.rejected_reward).sum::<f64>() / n;
            let accuracy = terms.iter().filter(|t| t.chosen_reward > t.rejected_reward).count() as f64 / n;
            metrics.record(&serde_json::json!({"step": state.completed_steps, "epoch": epoch, "lr": lr,
                "loss": loss, "grad_norm": grad_norm, "rewards/chosen": chosen_reward,
                "rewards/rejected": rejected_reward, "rewards/accuracies": accuracy,
                "rewards/margins": chosen_reward - rejected_reward, "elapsed_s": started.elapsed().as_secs_f64()}))?;
            let c = state.completed_steps;
            if !quiet && (cfg.logging_steps > 0 && c % cfg.logging_steps == 0 || c == total_steps) {
                eprintln!(
                    "step {c}/{total_steps}: loss {loss:.4}, reward margin {:.4}, accuracy {accuracy:.2}",
                    chosen_reward - rejected_reward
                );
            }
            if !eval_pairs.is_empty() && (cfg.eval_steps > 0 && c % cfg.eval_steps == 0 || c == total_steps) {
                policy.normalize_head_in_place(b);
                let ev = evaluate(&mut policy, frozen.as_ref(), b, &eval_pairs, &objective, c)?;
                metrics.record(&serde_json::json!({"step": c, "eval_loss": ev.loss,
                    "eval_rewards/accuracies": ev.reward_accuracy, "eval_rewards/margins": ev.reward_margin}))?;
                evaluations.push(ev);
            }
            if cfg.save_steps > 0 && c % cfg.save_steps == 0 && c < total_steps {
                let dir = out.join(format!("checkpoint-{c}"));
                checkpoint::save_checkpoint(b, &dir, base, &mut policy, &opt, &state, lora.as_ref(), &run.run_id)?;
                saved.push(dir);
                if let Some(limit) = cfg.saving_limit.filter(|&l| l > 0) {
                    while saved.len() > limit {
                        let old = saved.remove(0);
                        std::fs::remove_dir_all(&old).with_context(|| format!("{}: cannot remove", old.display()))?;
                    }
                }
            }
        }
    }
    let final_dir = out.join("epoch_final");
    checkpoint::save_checkpoint(b, &final_dir, base, &mut policy, &opt, &state, lora.as_ref(), &run.run_id)?;
    Ok(PreferenceReport { completed_steps: state.completed_steps, final_checkpoint: final_dir, evaluations })
}
// ANCHOR_END: preference_train

#[cfg(test)]
mod tests {
    use super::validation_pairs;

    #[test]
    fn validation_share_rounds_up_as_datasets_does() {
        // datasets 5.2.0 `Dataset.train_test_split(test_size=s1/(s0+s1))` on 40 rows: 39/1 for "99,1", 32/8 for "80,20"
        assert_eq!(validation_pairs("99,1", 40).unwrap(), 1);
        assert_eq!(validation_pairs("80,20", 40).unwrap(), 8);
        assert_eq!(validation_pairs("98,2,0", 40).unwrap(), 1, "the third share is not part of test_size");
        assert_eq!(validation_pairs("100,0", 40).unwrap(), 0);
        assert!(validation_pairs("a,b", 40).is_err());
    }
}
