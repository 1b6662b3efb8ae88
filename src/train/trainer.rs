//! The training loop: micro-batches, gradient accumulation, clipping, AdamW on a schedule, evaluation,
//! early stopping, checkpoints with `saving_limit`, exact resume, metrics and a progress bar.
//!
//! One optimizer step = `gradient_accumulation_steps` micro-batches of `per_device_train_batch_size` samples;
//! each micro-batch's loss (the configured MFTCoder mode) is back-propagated, the gradients are averaged over the
//! micro-batches, clipped to `gradient_clipping` by global norm, and AdamW takes a step at the scheduled rate.
//! Data order per epoch is a seeded permutation, so `(epoch, step in epoch)` is the whole data position and a
//! resumed run sees exactly the batches an uninterrupted one would.

use crate::backend::Backend;
use crate::config::TrainConfig;
use crate::data::CollateOptions;
use crate::io::tokenizer::Tokenizer;
use crate::loss::causal_lm::{DeferredLoss, deferred_token_loss, weighted_loss};
use crate::loss::coba::{CobaConfig, CobaState, mean_of_samples};
use crate::loss::mft::{LossMode, coefficients, task_losses};
use crate::loss::moe_aux::RouterRows;
use crate::models::decoder::Weight;
use crate::models::decoder::{Decoder, Gradients, Sequence};
use crate::models::load_causal_lm;
use crate::peft::attach::{attach_adapter, init_adapters};
use crate::peft::{Adapter, LoraBias, LoraConfig, TargetModules};
use crate::quant::QuantType;
use crate::rng::Rng;
pub use crate::train::batches::{Corpus, FlatBatch, TrainData, flatten, load_data};
use crate::train::checkpoint::{self, TrainerState};
use crate::train::metrics::{MetricsLog, Tags};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::plots;
use crate::train::run_lock::{self, RunLock, RunRecord};
use crate::train::schedule::{LrSchedule, learning_rate};
use crate::train::step_update::Outcome;
use anyhow::{Context, Result, anyhow, bail};
use std::path::PathBuf;
use std::time::Instant;

/// Per-task validation loss and the overall loss of the configured mode.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Evaluation {
    pub step: usize,
    pub eval_loss: f64,
    pub perplexity: f64,
    pub task_loss: Vec<(String, Option<f64>)>,
}

pub struct TrainReport {
    pub completed_steps: usize,
    pub final_checkpoint: PathBuf,
    pub last_train_loss: Option<f64>,
    pub evaluations: Vec<Evaluation>,
    pub task_names: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// No progress bar (tests, scripts).
    pub quiet: bool,
    /// Continued pre-training (`mftcoder pretrain`): recorded as the run's command.
    pub pretrain: bool,
    /// Discard another run's files in `output_dir` instead of refusing to start (`--overwrite-output-dir`).
    pub overwrite_output_dir: bool,
}

/// The LoRA settings of a config (`peft_type: "lora"`), MFTCoder's way: `target_modules` null means
/// `all-linear`, and the adapted layers' biases train with them (`bias: "lora_only"`).
pub fn lora_config(cfg: &TrainConfig) -> Result<Option<LoraConfig>> {
    lora_settings(
        cfg.peft_type.as_deref(),
        cfg.lora_rank,
        cfg.lora_alpha,
        cfg.lora_dropout,
        cfg.target_modules.as_ref(),
    )
}

/// The LoRA settings from MFTCoder's config fields (shared by `train` and `dpo`).
pub fn lora_settings(
    peft_type: Option<&str>,
    r: usize,
    lora_alpha: f64,
    lora_dropout: f64,
    target_modules: Option<&serde_json::Value>,
) -> Result<Option<LoraConfig>> {
    match peft_type {
        None => Ok(None),
        Some("lora" | "qlora") => {
            let target_modules = match target_modules {
                None | Some(serde_json::Value::Null) => TargetModules::AllLinear,
                Some(serde_json::Value::String(s)) if s == "all-linear" => TargetModules::AllLinear,
                Some(serde_json::Value::String(s)) => TargetModules::Names(crate::config::parse_bracket_list(s)),
                Some(serde_json::Value::Array(items)) => TargetModules::Names(
                    items
                        .iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_owned)
                                .ok_or_else(|| anyhow!("field `target_modules`: entries must be strings"))
                        })
                        .collect::<Result<_>>()?,
                ),
                Some(other) => {
                    bail!("field `target_modules` must be a list of names, \"all-linear\" or null, got {other}")
                }
            };
            Ok(Some(LoraConfig {
                r,
                lora_alpha,
                lora_dropout,
                use_rslora: false,
                bias: LoraBias::LoraOnly,
                target_modules,
            }))
        }
        Some(other) => bail!("field `peft_type` is \"{other}\"; allowed: \"lora\", \"qlora\", null (full parameters)"),
    }
}

/// QLoRA (MFTCoder §5): every decoder linear layer held as NF4 with double quantization, dequantized per use.
pub fn quantize_base<B: Backend>(b: &B, model: &mut Decoder<B>) -> Result<()> {
    let (mut packed_bytes, mut params) = (0usize, 0usize);
    for (_, linear) in model.linears_mut() {
        linear.quantize(b, QuantType::Nf4, true)?;
        if let Weight::Packed(q, _) = &linear.weight {
            packed_bytes += (q.bits_per_param() * q.numel() as f64 / 8.0) as usize;
            params += q.numel();
        }
    }
    eprintln!(
        "QLoRA: {params} base weights in NF4 + double quantization, {:.3} bits each",
        packed_bytes as f64 * 8.0 / params as f64
    );
    crate::runtime::release_free_memory(); // the f32 copies are gone; give their pages back
    Ok(())
}

fn collate_options(cfg: &TrainConfig) -> CollateOptions {
    CollateOptions { dynamic_padding: cfg.use_dynamic_padding, isolate_samples: true, sst_pack_trim: false }
}

/// One optimizer step's accumulated numbers.
struct StepResult {
    loss: f64,
    task_loss: Vec<Option<f64>>,
    tokens: usize,
    grad_norm: f64,
    /// The mean load-balancing loss of the micro-batches (a mixture of experts only).
    aux_loss: Option<f64>,
}

pub fn train<B: Backend>(b: &B, cfg: &TrainConfig, opts: RunOptions) -> Result<TrainReport> {
    crate::io::model_dir::check_model_dir("pretrained_model_path", &cfg.pretrained_model_path)?;
    crate::io::model_dir::check_model_type(cfg.model_type.as_deref(), &cfg.pretrained_model_path)?;
    let lora = lora_config(cfg)?;
    let out = &cfg.output_dir;
    let _lock = RunLock::acquire(out)?; // held until this function returns, however it returns
    run_lock::remove_stale_partials(out)?;
    checkpoint::check_writable(out)?;
    let mode: LossMode = cfg.weighted_loss_mode.parse()?;
    let schedule: LrSchedule =
        cfg.lr_scheduler_type.parse().map_err(|e: String| anyhow!("field `lr_scheduler_type`: {e}"))?;

    let base = &cfg.pretrained_model_path;
    let data_files: Vec<PathBuf> = cfg.data_paths.iter().map(PathBuf::from).collect();
    let command = if opts.pretrain { "pretrain" } else { "train" };
    let record = RunRecord::new(command, serde_json::to_value(cfg)?, base, &data_files)?;
    let run = run_lock::claim_output_dir(out, record, crate::config::KNOWN_FIELDS, opts.overwrite_output_dir)?;
    let tokenizer = Tokenizer::load(base)?;
    let data = load_data(cfg, &tokenizer)?;
    crate::train::memory::check_training_memory(cfg, data.longest_sample(), lora.as_ref().map(|l| l.r))?;
    let names = data.task_names().to_vec();
    let task_weights = match &cfg.task_weights {
        Some(w) if w.len() != names.len() => {
            bail!("field `task_weights` has {} entries for {} tasks", w.len(), names.len())
        }
        Some(w) => w.clone(),
        None => vec![1.0; names.len()],
    };
    let micro = cfg.per_device_train_batch_size;
    let per_step = micro * cfg.gradient_accumulation_steps;
    let steps_per_epoch = data.train_len() / per_step;
    if steps_per_epoch == 0 {
        bail!(
            "{} training samples are fewer than one optimizer step needs ({micro} × {} accumulation)",
            data.train_len(),
            cfg.gradient_accumulation_steps
        );
    }
    let total_steps = cfg.max_train_steps.unwrap_or(cfg.num_train_epochs * steps_per_epoch);
    let warmup = cfg.warmup_steps(total_steps);

    // resume: an explicit checkpoint, or output_dir/latest
    let resume_dir = match &cfg.resume_from_checkpoint {
        Some(dir) => Some(dir.clone()),
        None if cfg.auto_resume => checkpoint::read_latest(out)?,
        None => None,
    };
    // full parameters resume from the checkpoint's weights; LoRA from the base plus the checkpoint's adapter
    let weights_dir = if lora.is_some() { base.as_path() } else { resume_dir.as_deref().unwrap_or(base) };
    let mut model: Decoder<B> = load_causal_lm(b, weights_dir)?;
    let base_config = crate::io::hf_config::HfConfig::read(base)?;
    for (field, p) in crate::models::ignored_dropouts(&base_config)? {
        eprintln!("notice: config.json field `{field}` ({p}) is ignored: training runs without that dropout");
    }
    model.recompute_activations = cfg.activation_checkpointing;
    if cfg.peft_type.as_deref() == Some("qlora") {
        quantize_base(b, &mut model)?;
    }
    if let Some(lora) = &lora {
        match &resume_dir {
            Some(dir) => attach_adapter(&mut model, b, &Adapter::load(dir)?)?,
            None => {
                let n = init_adapters(&mut model, b, lora, &mut Rng::new(cfg.seed))?;
                eprintln!("LoRA: r = {}, α = {}, {n} adapted layers, base frozen", lora.r, lora.lora_alpha);
            }
        }
    }
    let param_names: Vec<String> = model.trainable_parameters_mut().into_iter().map(|(n, _)| n).collect();
    let shapes: Vec<(usize, usize)> = model.trainable_parameters_mut().iter().map(|(_, t)| b.dims(t)).collect();
    let adam = AdamWConfig { weight_decay: cfg.weight_decay as f32, ..AdamWConfig::default() };
    let mut opt = AdamW::new_on(b, adam, &shapes);
    let mut state = TrainerState::start(total_steps, Rng::new(cfg.seed).state());
    if let Some(dir) = &resume_dir {
        state = checkpoint::load_training_state(b, dir, &param_names, &mut opt)?;
        if state.total_steps != total_steps {
            bail!(
                "{}: the checkpoint planned {} steps, this config plans {total_steps}; resume with the same config",
                dir.display(),
                state.total_steps
            );
        }
        eprintln!("resuming from {} at step {}", dir.display(), state.completed_steps);
        if state.completed_steps >= total_steps {
            eprintln!("note: {}: this run is already complete ({total_steps} steps); nothing to train", out.display());
        }
    }
    let mut rng = Rng::from_state(state.rng_state); // LoRA dropout masks; checkpointed so a resumed run draws the same
    let tags = Tags::Mft { coba: cfg.weighted_loss_mode == "coba" };
    let mut metrics = MetricsLog::open(out, cfg.tb_dir.as_deref(), state.completed_steps, tags)?;

    if cfg.weighted_loss_mode == "coba" && state.coba.is_none() {
        // CoBa measures each task's validation loss relative to where it started: evaluate once before step 0
        let config = CobaConfig {
            warmup_steps: cfg.coba_warmup_steps,
            history_length: cfg.coba_history_length,
            tau: cfg.coba_tau,
            update_interval: cfg.coba_update_interval.max(1),
            sample_valid_num: cfg.coba_sample_valid_num.max(1),
            clamp_divergence: true,
        };
        let mut coba = CobaState::new(names.len(), config);
        model.normalize_head_in_place(b); // an eval-mode forward: Baichuan2's NormHead normalises its weight
        let initial = evaluate(b, &model, &data, cfg, mode, &task_weights, 0)?;
        coba.set_initial_losses(&initial.task_loss.iter().map(|(_, l)| *l).collect::<Vec<_>>());
        state.coba = Some(coba);
    }
    let progress = progress_bar(total_steps, state.completed_steps, opts.quiet);
    let collate = collate_options(cfg);
    let mut evaluations = Vec::new();
    let mut last_train_loss = None;
    let mut last_checkpoint: Option<PathBuf> = resume_dir.clone();
    let started = Instant::now();
    let mut tokens_seen = 0usize;
    let epochs = total_steps.div_ceil(steps_per_epoch);

    'epochs: while state.epoch < epochs {
        let order = data.epoch_order(cfg.seed, state.epoch as u64);
        while state.step_in_epoch < steps_per_epoch {
            if state.completed_steps >= total_steps {
                break 'epochs;
            }
            let step = state.completed_steps;
            let lr = learning_rate(schedule, cfg.learning_rate, cfg.min_lr, step, warmup, total_steps);
            let first = state.step_in_epoch * per_step;
            let step_weights = match state.coba.as_mut() {
                Some(coba) => coba.weights(step), // case3 with CoBa's weights
                None => task_weights.clone(),
            };
            let result = optimizer_step(
                b,
                &mut model,
                &mut opt,
                &data,
                &order[first..first + per_step],
                micro,
                mode,
                &step_weights,
                collate,
                cfg,
                lr,
                &param_names,
                &mut rng,
            )
            .with_context(|| format!("step {}", step + 1))?;
            if let Some(coba) = state.coba.as_mut() {
                if coba.wants_validation(step) {
                    model.normalize_head_in_place(b);
                    let samples: Vec<Vec<Option<f64>>> = (0..coba.config.sample_valid_num)
                        .map(|_| sample_validation(b, &model, &data, cfg, &mut rng))
                        .collect::<Result<_>>()?;
                    coba.record_validation(step, &mean_of_samples(&samples));
                }
            }
            state.completed_steps += 1;
            state.step_in_epoch += 1;
            state.rng_state = rng.state();
            state.lr = lr;
            tokens_seen += result.tokens;
            last_train_loss = Some(result.loss);
            let elapsed = started.elapsed().as_secs_f64();
            let task_json: serde_json::Map<String, serde_json::Value> =
                names.iter().zip(&result.task_loss).filter_map(|(n, l)| l.map(|l| (n.clone(), l.into()))).collect();
            metrics.record(&serde_json::json!({"step": state.completed_steps, "epoch": state.epoch, "lr": lr,
                "loss": result.loss, "task_loss": task_json, "grad_norm": result.grad_norm, "tokens": result.tokens,
                "aux_loss": result.aux_loss,
                "tokens_per_s": tokens_seen as f64 / elapsed.max(1e-9), "elapsed_s": elapsed,
                "rss_mib": crate::runtime::resident_bytes().map(|b| b as f64 / (1 << 20) as f64),
                "task_weights": names.iter().cloned().zip(step_weights.iter().map(|&w| serde_json::Value::from(w))).collect::<serde_json::Map<_, _>>()}))?;
            // message first, then position: each redraw shows a step with its own numbers
            let aux = result.aux_loss.map_or(String::new(), |a| format!(" | aux {a:.3}"));
            progress.set_message(format!(
                "loss {:.4} | {}{aux} | {:.0} tok/s",
                result.loss,
                task_summary(&names, &result.task_loss),
                tokens_seen as f64 / elapsed.max(1e-9)
            ));
            progress.set_position(state.completed_steps as u64);

            let c = state.completed_steps;
            let mut stop = false;
            if cfg.evaluation_steps > 0 && c % cfg.evaluation_steps == 0 {
                model.normalize_head_in_place(b);
                let ev = evaluate(b, &model, &data, cfg, mode, &task_weights, c)?;
                metrics.record(&serde_json::json!({"step": c, "eval_loss": ev.eval_loss, "perplexity": ev.perplexity,
                    "eval_task_loss": ev.task_loss.iter().filter_map(|(n, l)| l.map(|l| (n.clone(), serde_json::Value::from(l)))).collect::<serde_json::Map<_, _>>()}))?;
                plots::refresh(out, &progress); // loss, weights and lr PNGs beside the checkpoints
                if state.best_eval_loss.is_none_or(|best| ev.eval_loss <= best) {
                    state.best_eval_loss = Some(ev.eval_loss);
                    state.best_step = Some(c);
                    state.stall = 0;
                } else {
                    state.stall += 1;
                }
                stop = cfg.early_stopping && state.stall >= cfg.early_stopping_stall_num;
                evaluations.push(ev);
            }
            let epoch_done = state.step_in_epoch == steps_per_epoch;
            if epoch_done {
                state.epoch += 1;
                state.step_in_epoch = 0;
            }
            let finished = stop || state.completed_steps >= total_steps;
            if (cfg.checkpointing_steps > 0 && c % cfg.checkpointing_steps == 0) || finished {
                let dir = out.join(format!("step_{c}"));
                checkpoint::save_checkpoint(b, &dir, base, &mut model, &opt, &state, lora.as_ref(), &run.run_id)?;
                checkpoint::write_latest(out, &dir, lr)?;
                let limit = cfg.saving_limit.unwrap_or(2).max(1);
                checkpoint::enforce_saving_limit(out, limit, state.best_step, c, &run.run_id)?;
                last_checkpoint = Some(dir);
            }
            if cfg.epoch_checkpointing && (epoch_done || finished) {
                // MFTCoder's `epoch_{e}` (1-based) after each epoch, and after the one a stop cut short
                let e = if epoch_done { state.epoch } else { state.epoch + 1 };
                let dir = out.join(format!("epoch_{e}"));
                checkpoint::save_checkpoint(b, &dir, base, &mut model, &opt, &state, lora.as_ref(), &run.run_id)?;
                checkpoint::write_latest(out, &dir, lr)?;
                last_checkpoint = Some(dir);
            }
            if stop {
                progress.println(format!("early stopping at step {c}: no improvement in {} evaluations", state.stall));
                break 'epochs;
            }
            if epoch_done {
                continue 'epochs; // the next epoch has its own order
            }
        }
    }
    progress.finish_and_clear();
    plots::refresh(out, &progress);
    let final_checkpoint =
        last_checkpoint.ok_or_else(|| anyhow!("no step was trained (the run was already complete)"))?;
    Ok(TrainReport {
        completed_steps: state.completed_steps,
        final_checkpoint,
        last_train_loss,
        evaluations,
        task_names: names,
    })
}

/// What a micro-batch's loss needs once its token losses are read, at the end of the step.
struct PendingLoss<B: Backend> {
    /// [T, 1], on the backend until the step's report
    token_losses: B::Tensor,
    /// The balance loss of a mixture of experts, and its weight (0 without experts)
    aux: Option<f64>,
    aux_weight: f64,
    coeffs: Vec<f32>,
    flat: FlatBatch,
}

// ANCHOR: optimizer_step
#[allow(clippy::too_many_arguments)]
fn optimizer_step<B: Backend>(
    b: &B,
    model: &mut Decoder<B>,
    opt: &mut AdamW<B::Tensor>,
    data: &TrainData,
    indices: &[usize],
    micro: usize,
    mode: LossMode,
    task_weights: &[f64],
    collate: CollateOptions,
    cfg: &TrainConfig,
    lr: f64,
    param_names: &[String],
    rng: &mut Rng,
) -> Result<StepResult> {
    let n_micro = indices.len() / micro;
    let mut acc: Option<Gradients<B>> = None;
    let mut tokens = 0usize;
    let mut pending: Vec<PendingLoss<B>> = Vec::new();
    for chunk in indices.chunks(micro) {
        let batch = data.train_batch(chunk, collate);
        let flat = flatten(&batch);
        if flat.ids.is_empty() {
            continue;
        }
        let coeffs = coefficients(mode, &flat.loss_mask, flat.row_len, &flat.task_ids, task_weights);
        let seq = Sequence { ids: &flat.ids, positions: &flat.positions, segment_ids: Some(&flat.segment_ids) };
        model.dropout_seed = Some(rng.next_u64()); // LoRA dropout for this micro-batch (no effect without adapters)
        let mask = flat.router_mask();
        let rows = RouterRows { mask: &mask, row_len: flat.row_len };
        let r = deferred_token_loss(model, b, seq, &flat.targets, &coeffs, Some(rows));
        model.dropout_seed = None; // evaluation and inference run without dropout
        let DeferredLoss { token_losses, aux_loss, aux_weight, grads } = r?;
        tokens += flat.ids.len();
        match acc.as_mut() {
            None => acc = Some(grads),
            Some(acc) => {
                for (name, g) in grads {
                    b.add_assign(acc.get_mut(&name).expect("same parameters every micro-batch"), &g);
                }
            }
        }
        pending.push(PendingLoss { token_losses, aux: aux_loss, aux_weight, coeffs, flat });
    }
    let mut grads = acc.ok_or_else(|| anyhow!("every micro-batch of this step was empty"))?;
    let scale = 1.0 / n_micro as f32;
    for g in grads.values_mut() {
        *g = b.scale(g, scale);
    }
    let max_norm = if cfg.gradient_clipping > 0.0 { cfg.gradient_clipping as f32 } else { f32::INFINITY };
    let mut params = model.trainable_parameters_mut();
    let decay = vec![true; params.len()]; // MFTCoder decays every parameter (reference §3)
    let losses: Vec<&B::Tensor> = pending.iter().map(|p| &p.token_losses).collect();
    let report = opt.clipped_step_on_named(b, &mut params, &mut grads, lr as f32, &decay, max_norm, &losses);

    let (mut loss_sum, mut aux_sum) = (0.0, None::<f64>);
    let (mut task_sum, mut task_n) = (vec![0.0; task_weights.len()], vec![0usize; task_weights.len()]);
    for (p, token_losses) in pending.iter().zip(&report.token_losses) {
        loss_sum += weighted_loss(token_losses, &p.coeffs, p.aux_weight * p.aux.unwrap_or(0.0))?;
        if let Some(aux) = p.aux {
            *aux_sum.get_or_insert(0.0) += aux;
        }
        let (flat, tasks) = (&p.flat, task_weights.len());
        let per_task = task_losses(token_losses, &flat.loss_mask, flat.row_len, &flat.task_ids, tasks);
        for (k, l) in per_task.into_iter().enumerate() {
            if let Some(l) = l {
                task_sum[k] += l;
                task_n[k] += 1;
            }
        }
    }
    match report.outcome {
        Outcome::Updated => {}
        // a token loss that is not finite makes its micro-batch's loss not finite: `weighted_loss` said so above
        Outcome::NonFiniteLoss => bail!("a token loss is not finite; the last good checkpoint is kept"),
        // a non-finite gradient stops the run, naming the first offending tensor in parameter order
        Outcome::NonFiniteGradient(i) => bail!(
            "the gradient of `{}` is not finite (loss {:.6}); the last good checkpoint is kept",
            param_names[i],
            loss_sum / n_micro as f64
        ),
        Outcome::NonFiniteParameter(i) => bail!(
            "the update made parameter `{}` non-finite (learning rate {lr:e}); stopped before saving it, so \
             `latest` is still the last finite checkpoint",
            param_names[i]
        ),
    }
    let task_loss = task_sum.iter().zip(&task_n).map(|(&s, &n)| (n > 0).then(|| s / n as f64)).collect();
    let aux_loss = aux_sum.map(|a| a / n_micro as f64);
    let grad_norm = report.grad_norm as f64;
    Ok(StepResult { loss: loss_sum / n_micro as f64, task_loss, tokens, grad_norm, aux_loss })
}
// ANCHOR_END: optimizer_step

/// MFTCoder's evaluation: every validation batch of every task; `eval_loss` is the mean batch loss of the
/// configured mode, each task's loss the mean of its batch token-means, perplexity = exp(eval_loss).
pub fn evaluate<B: Backend>(
    b: &B,
    model: &Decoder<B>,
    data: &TrainData,
    cfg: &TrainConfig,
    mode: LossMode,
    task_weights: &[f64],
    step: usize,
) -> Result<Evaluation> {
    let names = data.task_names();
    let (mut batch_losses, mut task_loss) = (Vec::new(), Vec::new());
    for k in 0..names.len() {
        let (mut sum, mut n) = (0.0, 0usize);
        for batch in data.valid_batches(k, cfg.per_device_eval_batch_size, collate_options(cfg)) {
            let flat = flatten(&batch);
            if flat.ids.is_empty() || flat.loss_mask.iter().all(|&m| m == 0.0) {
                continue;
            }
            let seq = Sequence { ids: &flat.ids, positions: &flat.positions, segment_ids: Some(&flat.segment_ids) };
            let (logits, _) = model.forward_train(b, seq)?;
            let zeros = vec![0.0f32; flat.ids.len()];
            let (token_losses, _) = b.cross_entropy(&logits, &flat.targets, &zeros);
            let coeffs = coefficients(mode, &flat.loss_mask, flat.row_len, &flat.task_ids, task_weights);
            batch_losses.push(token_losses.iter().zip(&coeffs).map(|(&l, &c)| l as f64 * c as f64).sum::<f64>());
            if let Some(l) = task_losses(&token_losses, &flat.loss_mask, flat.row_len, &flat.task_ids, names.len())[k] {
                sum += l;
                n += 1;
            }
        }
        task_loss.push((names[k].clone(), (n > 0).then(|| sum / n as f64)));
    }
    if batch_losses.is_empty() {
        bail!(
            "evaluation: no validation sample (raise the validation share of `data_split` or set `evaluation_steps` to 0)"
        );
    }
    let eval_loss = batch_losses.iter().sum::<f64>() / batch_losses.len() as f64;
    Ok(Evaluation { step, eval_loss, perplexity: eval_loss.exp(), task_loss })
}

/// One random validation batch per task and its token-mean loss (CoBa's `sample_valid_batch`).
fn sample_validation<B: Backend>(
    b: &B,
    model: &Decoder<B>,
    data: &TrainData,
    cfg: &TrainConfig,
    rng: &mut Rng,
) -> Result<Vec<Option<f64>>> {
    let names = data.task_names();
    let mut losses = Vec::with_capacity(names.len());
    for k in 0..names.len() {
        let batches = data.valid_batches(k, cfg.per_device_eval_batch_size, collate_options(cfg));
        if batches.is_empty() {
            losses.push(None);
            continue;
        }
        let flat = flatten(&batches[rng.below(batches.len() as u64) as usize]);
        if flat.ids.is_empty() || flat.loss_mask.iter().all(|&m| m == 0.0) {
            losses.push(None);
            continue;
        }
        let seq = Sequence { ids: &flat.ids, positions: &flat.positions, segment_ids: Some(&flat.segment_ids) };
        let (logits, _) = model.forward_train(b, seq)?;
        let (token_losses, _) = b.cross_entropy(&logits, &flat.targets, &vec![0.0; flat.ids.len()]);
        losses.push(task_losses(&token_losses, &flat.loss_mask, flat.row_len, &flat.task_ids, names.len())[k]);
    }
    Ok(losses)
}

fn task_summary(names: &[String], losses: &[Option<f64>]) -> String {
    names.iter().zip(losses).filter_map(|(n, l)| l.map(|l| format!("{n} {l:.3}"))).collect::<Vec<_>>().join(" ")
}

fn progress_bar(total: usize, done: usize, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]")
            .expect("valid template"),
    );
    bar.set_position(done as u64);
    bar
}
