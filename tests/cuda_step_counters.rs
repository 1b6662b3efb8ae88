//! What a training step costs the device besides its arithmetic, counted on a 2-layer LoRA and a 2-layer
//! QLoRA step and asserted for the steady state (the 2nd and 3rd steps, after the first has filled the pool and
//! the upload cache): no device allocation, exactly one blocking device→host read (the step's report), a few
//! uploads at most, and the launches measured when the fused step's end landed (`book/src/cuda.md`, "What a
//! step costs besides arithmetic", has the numbers before and after).
//!
//! Run with `cargo test --features cuda --test cuda_step_counters`. Without a GPU the tests run again in a child
//! process on the emulated device (`tests/kernel_emulator/fake_cuda.cpp`), which counts the same driver calls.

#![cfg(feature = "cuda")]

use mftcoder::backend::Backend;
use mftcoder::backend::cuda::counters::CounterSnapshot;
use mftcoder::backend::cuda::{Cuda, Precision};
use mftcoder::bench::training_step;
use mftcoder::loss::chunked_head::DEFAULT_HEAD_CHUNK_BYTES;
use mftcoder::models::decoder::{Decoder, DecoderConfig, NormKind, Sequence};
use mftcoder::peft::LoraConfig;
use mftcoder::peft::attach::init_adapters;
use mftcoder::quant::QuantType;
use mftcoder::rng::Rng;
use mftcoder::train::optim::{AdamW, AdamWConfig};
use std::sync::OnceLock;

#[path = "kernel_emulator/compile.rs"]
mod compile;
#[path = "kernel_emulator/emulated_device.rs"]
mod emulated_device;

fn gpu() -> Option<&'static Cuda> {
    static GPU: OnceLock<Option<Cuda>> = OnceLock::new();
    GPU.get_or_init(|| open(Precision::F32)).as_ref()
}

fn gpu_bf16() -> Option<&'static Cuda> {
    static GPU: OnceLock<Option<Cuda>> = OnceLock::new();
    GPU.get_or_init(|| open(Precision::Bf16)).as_ref()
}

fn open(precision: Precision) -> Option<Cuda> {
    match Cuda::new(0, precision) {
        Ok(cuda) => Some(cuda),
        Err(e) => {
            eprintln!("skipping the GPU step counters: {e}");
            None
        }
    }
}

/// The shape of the steps counted: the model's vocabulary, and the bytes of logits its loss holds at once.
#[derive(Clone, Copy)]
struct Head {
    vocab: usize,
    chunk_bytes: usize,
}

/// The model of the launch bounds: 97 tokens, the logits of a step in one chunk.
const SMALL_VOCAB: Head = Head { vocab: 97, chunk_bytes: DEFAULT_HEAD_CHUNK_BYTES };

/// Tokens per step.
const T: usize = 40;

/// What is trained: PEFT's default LoRA (r 8 on q and v), on a base in NF4 + double quantization when
/// `quantized`; `layers` decoder layers.
#[derive(Clone)]
struct Trained {
    layers: usize,
    quantized: bool,
    lora: LoraConfig,
    norm: NormKind,
}

/// The model of the launch bounds: 2 layers, PEFT's default LoRA, the base dense or 4-bit.
fn pefts_default(quantized: bool) -> Trained {
    let lora = LoraConfig { r: 8, lora_alpha: 16.0, ..LoraConfig::default() };
    Trained { layers: 2, quantized, lora, norm: NormKind::Rms }
}

/// The counters of `steps` consecutive training steps of a Llama (GQA, a packed batch of two documents), and
/// the losses.
fn counted_steps(g: &Cuda, quantized: bool, steps: usize, head: Head) -> (Vec<CounterSnapshot>, Vec<f64>) {
    counted_steps_of(g, &pefts_default(quantized), steps, head)
}

fn counted_steps_of(g: &Cuda, trained: &Trained, steps: usize, head: Head) -> (Vec<CounterSnapshot>, Vec<f64>) {
    let mut config = DecoderConfig::with_shape(head.vocab, 64, 160, trained.layers, 4, 2);
    config.norm = trained.norm; // LayerNorm: with biases (StarCoder2, GPT-NeoX, Phi's norms)
    let mut model: Decoder<Cuda> = Decoder::random(g, config, 42);
    model.head_chunk_bytes = head.chunk_bytes;
    if trained.quantized {
        for (_, linear) in model.linears_mut() {
            linear.quantize(g, QuantType::Nf4, true).unwrap();
        }
    }
    init_adapters(&mut model, g, &trained.lora, &mut Rng::new(7)).unwrap();
    let shapes: Vec<(usize, usize)> = model.trainable_parameters_mut().iter().map(|(_, t)| g.dims(t)).collect();
    let mut opt = AdamW::new_on(g, AdamWConfig::default(), &shapes);

    let ids: Vec<u32> = (0..T as u32).map(|i| (i * 13 + 5) % 97).collect();
    let positions: Vec<usize> = (0..25).chain(0..T - 25).collect();
    let segments: Vec<u32> = (0..T).map(|i| u32::from(i >= 25)).collect();
    let targets: Vec<u32> = ids.iter().skip(1).copied().chain([0]).collect();
    let coefficients: Vec<f32> = (0..T).map(|i| if i == 24 || i == T - 1 { 0.0 } else { 1.0 / 38.0 }).collect();
    let (mut counted, mut losses) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let before = g.counters();
        let seq = Sequence { ids: &ids, positions: &positions, segment_ids: Some(&segments) };
        losses.push(training_step(g, &mut model, &mut opt, seq, &targets, &coefficients, 1e-3).unwrap());
        g.synchronize();
        counted.push(g.counters().since(before));
    }
    (counted, losses)
}

// ANCHOR: step_counters
/// (kernel launches, cuBLAS products) of one steady-state step: bounds, so a change that adds launches has to
/// say so here. The history: LoRA 79 + 54 and QLoRA 107 + 54 before the fused step's end, whose 3 launches (the
/// norm's partial sums, its finish, the multi-tensor AdamW) replaced 16 and 8 blocking reads; 66 + 54 and
/// 94 + 54 after it. The head in chunks (`loss::chunked_head`) left these as they were: the logits of 40 tokens
/// fit one chunk, which runs the unchunked ops exactly. LoRA with its scale and adds folded into the products
/// (`backend/cuda/lora.rs`: 1 launch fewer per adapter forward, 2 backward, on 4 adapters) and frozen norms
/// computing no weight gradient (one column sum fewer on each of 5 norms): 17 fewer, 49 + 54 and 77 + 54. The
/// banded 4-bit products (`cuda/linear_4bit.rs`) leave the QLoRA figures as they are: every [≤ 160, 64] matrix
/// is one band, so a 4-bit product is one dequantization launch and one cuBLAS product (under f32, as here).
/// Layer 0 below the frozen embedding computing no input gradient (`Linear::parameter_backward`): no dx
/// products for q, k, v (3), none for the q and v adapters (2), no adds of their parts and no dx-only norm
/// backward (4 launches; for QLoRA also the 3 dequantizations): 45 + 49 and 70 + 49. The residual adds fused
/// into the norms (`add_rms_norm` forward, the accumulating norm backward): one launch fewer per layer forward
/// (the MLP's norm) and one per norm backward that adds into the stream (3 in the two layers, layer 0's input
/// norm having none): 40 + 49 and 65 + 49. The frozen q/k/v and gate/up bases stacked into one product each
/// (`models::stacked_base`): 3 products fewer forward in each layer, 3 dx products fewer in layer 1 and 1 in
/// layer 0 (whose q, k, v compute none); the split and join of [q | k | v] (2 launches per layer) in place of
/// the adds of partial dx (3 in layer 1, 1 in layer 0), SwiGLU on the halves of [gate | up] as they lie:
/// 40 + 39. QLoRA's 4-bit bases are not stacked. RoPE in the split of [q | k | v] (`split_qkv_rotated`: one
/// launch for the split and both rotations, one for their backward and the join): 2 fewer forward and 2
/// backward in each layer, 32 + 39. Each layer's last residual add done by the norm after it (the next
/// layer's input norm, or the final norm: `add_rms_norm`), one launch fewer per layer: 30 + 39 and 63 + 49.
/// The 4-bit bases stacked too (`Backend::linear_4bit_stacked`, each part decoded into its own columns): RoPE
/// in the q/k/v split (1 fewer forward and 1 backward per layer) and the parts' dx added up by the products
/// (the 2 adds of q/k/v's in layer 1, the gate/up add in both): 55 + 49. The losses moved in the eighth
/// digit from step 3 on (4.567783377197182 against 4.567783389745529), the dx sums being in another order.
const LORA_LAUNCHES: (u64, u64) = (30, 39);
const QLORA_LAUNCHES: (u64, u64) = (55, 49);
/// The LoRA step with its head in 5 chunks of 8 rows: each chunk after the first adds its own cross-entropy
/// launch and two products (the logits, dh = G·W; a frozen head has no dW): 4 launches and 8 products more.
/// The chunks' rows are copied in and out by the stream (`slice_rows`, `write_rows`), which launches nothing.
const CHUNKED_LORA_LAUNCHES: (u64, u64) = (LORA_LAUNCHES.0 + 4, LORA_LAUNCHES.1 + 8);
/// Uploads a steady-state step may make: none when the batch repeats (as here), a handful when it changes
/// (ids, targets, weights, positions, three segment tables, the optimizer's two pointer tables).
const MAX_UPLOADS: u64 = 9;

fn check_steady_state(mode: &str, quantized: bool, head: Head, (max_launches, max_gemms): (u64, u64)) {
    let Some(g) = gpu() else { return };
    let (steps, losses) = counted_steps(g, quantized, 4, head);
    let (first, steady) = (steps[0], steps[2]);
    eprintln!("{mode}: first step {first}");
    eprintln!("{mode}: steady-state step {steady}; losses {losses:?}");
    assert_eq!(steps[1], steps[2], "{mode}: the 2nd and 3rd steps cost the same");
    assert_eq!(steady.allocations, 0, "{mode}: a steady-state step allocates nothing: {steady}");
    assert_eq!(steady.host_reads, 1, "{mode}: one blocking read per step (the report): {steady}");
    assert_eq!(steady.heuristic_queries, 0, "{mode}: every product's cuBLASLt plan is reused: {steady}");
    assert!(steady.uploads <= MAX_UPLOADS, "{mode}: {steady}");
    assert!(steady.reuses > 0, "{mode}: the pool serves the step: {steady}");
    assert!(steady.launches <= max_launches, "{mode}: more launches than measured: {steady}");
    assert!(steady.gemms <= max_gemms, "{mode}: more products than measured: {steady}");
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "{mode}: the loss goes down: {losses:?}");
}
// ANCHOR_END: step_counters

#[test]
fn a_steady_state_lora_step_allocates_nothing_and_reads_once() {
    check_steady_state("2-layer LoRA", false, SMALL_VOCAB, LORA_LAUNCHES);
}

#[test]
fn a_steady_state_qlora_step_allocates_nothing_and_reads_once() {
    check_steady_state("2-layer QLoRA", true, SMALL_VOCAB, QLORA_LAUNCHES);
}

// ANCHOR: chunked_head_counters
/// The head in chunks (`loss::chunked_head`), seen from the pool: with 997 tokens in the vocabulary the whole
/// logits of the step's 40 tokens (40 × 997 f32, 160 kB) would be its largest buffer by far (the MLP's
/// [40, 160] is 26 kB; the frozen [997, 64] head is uploaded once, not asked for per step). In chunks of 8 rows
/// no steady-state request comes near it, and the step still allocates nothing and reads the device once.
#[test]
fn a_steady_state_step_with_the_head_in_chunks_never_asks_for_the_whole_logits() {
    let Some(g) = gpu() else { return };
    let (vocab, rows) = (997, 8);
    let whole_logits = (T * vocab * 4) as u64;
    let chunked = Head { vocab, chunk_bytes: rows * vocab * 4 };
    check_steady_state("2-layer LoRA, head in chunks", false, chunked, CHUNKED_LORA_LAUNCHES);
    let steady = counted_steps(g, false, 3, chunked).0[2];
    assert!(steady.largest_take < whole_logits, "no [T, V] buffer ({whole_logits} bytes) is asked for: {steady}");
    assert!(steady.largest_take >= (rows * vocab * 4) as u64, "a chunk's logits are: {steady}");
    // the counter sees the whole logits where they are formed: the same step in one chunk
    let whole = counted_steps(g, false, 3, Head { vocab, chunk_bytes: DEFAULT_HEAD_CHUNK_BYTES }).0[2];
    eprintln!("2-layer LoRA, head in one chunk: steady-state step {whole}");
    assert!(whole.largest_take >= whole_logits, "unchunked, the logits are the largest request: {whole}");
}
// ANCHOR_END: chunked_head_counters

/// A step whose gradients are NaN is refused on the device: the weights and moments stay as they were, and the
/// report names the first parameter (in the model's order) whose gradient is not finite.
#[test]
fn a_nan_step_leaves_the_weights_alone() {
    let Some(g) = gpu() else { return };
    let p0 = ndarray::Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f32 * 0.1);
    let mut params = [g.upload(p0.clone()), g.upload(p0.clone())];
    let mut grads = [g.upload(p0.mapv(|x| x - 0.5)), g.upload(p0.mapv(|x| if x > 0.6 { f32::NAN } else { x }))];
    let losses = g.upload(ndarray::Array2::from_elem((5, 1), 1.5f32));
    let mut opt = AdamW::new_on(g, AdamWConfig::default(), &[(3, 4), (3, 4)]);
    let [p_a, p_b] = &mut params;
    let [g_a, g_b] = &mut grads;
    let report = opt.clipped_step_on(
        g,
        &mut [p_a, p_b],
        &mut [g_a, g_b],
        &[Some(0), Some(1)],
        1e-2,
        &[true, true],
        1.0,
        &[&losses],
    );
    assert_eq!(report.outcome, mftcoder::train::step_update::Outcome::NonFiniteGradient(1), "{report:?}");
    assert_eq!(report.token_losses, vec![vec![1.5f32; 5]]);
    assert_eq!(opt.step, 0, "a refused step does not count");
    for p in &params {
        assert_eq!(g.download(p), p0, "the parameters are untouched");
    }
    for m in opt.m.iter().chain(&opt.v) {
        assert!(g.download(m).iter().all(|&x| x == 0.0), "the moments are untouched");
    }
}

/// The fused step's end against the CPU's op-by-op reference over five steps: three gradients in an order
/// that is not the parameters', a parameter without a gradient, clipping active on some steps (gradients of
/// norm ≈ 3 and ≈ 0.3 against a threshold of 1), two micro-batches of token losses carried back.
#[test]
fn the_fused_step_end_matches_the_reference() {
    use mftcoder::backend::cpu::Cpu;
    use ndarray::Array2;
    let Some(g) = gpu() else { return };
    let draw = |rows: usize, cols: usize, seed: u64, scale: f64| {
        let mut rng = Rng::new(seed);
        Array2::from_shape_fn((rows, cols), |_| (rng.normal() * scale) as f32)
    };
    let shapes = [(13, 29), (1, 64), (7, 3), (300, 5)];
    let config = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
    let mut host: Vec<Array2<f32>> = shapes.iter().enumerate().map(|(i, &(r, c))| draw(r, c, i as u64, 1.0)).collect();
    let mut dev: Vec<_> = host.iter().map(|p| g.upload(p.clone())).collect();
    let (mut host_opt, mut dev_opt) = (AdamW::new_on(&Cpu, config, &shapes), AdamW::new_on(g, config, &shapes));
    let grad_of = [Some(0), None, Some(2), Some(1)]; // parameter 1 has no gradient
    let decay = [true, true, false, true];
    for step in 0..5u64 {
        let scale = if step % 2 == 0 { 0.1 } else { 0.01 };
        let mut grads: Vec<Array2<f32>> =
            [0usize, 3, 2].iter().map(|&p| draw(shapes[p].0, shapes[p].1, 100 * step + p as u64, scale)).collect();
        let mut dev_grads: Vec<_> = grads.iter().map(|x| g.upload(x.clone())).collect();
        let losses = [draw(6, 1, 7 + step, 1.0), draw(3, 1, 9 + step, 1.0)];
        let dev_losses: Vec<_> = losses.iter().map(|l| g.upload(l.clone())).collect();
        let want = host_opt.clipped_step_on(
            &Cpu,
            &mut host.iter_mut().collect::<Vec<_>>(),
            &mut grads.iter_mut().collect::<Vec<_>>(),
            &grad_of,
            1e-2,
            &decay,
            1.0,
            &losses.iter().collect::<Vec<_>>(),
        );
        let got = dev_opt.clipped_step_on(
            g,
            &mut dev.iter_mut().collect::<Vec<_>>(),
            &mut dev_grads.iter_mut().collect::<Vec<_>>(),
            &grad_of,
            1e-2,
            &decay,
            1.0,
            &dev_losses.iter().collect::<Vec<_>>(),
        );
        assert_eq!((&want.outcome, &want.token_losses), (&got.outcome, &got.token_losses), "step {step}");
        // the norms differ only in summation order: f32 block sums on the device, f64 lanes on the CPU
        let rel = ((want.grad_norm - got.grad_norm) / want.grad_norm).abs();
        assert!(rel < 1e-5, "step {step}: norm {} vs {}", want.grad_norm, got.grad_norm);
    }
    // the moments too: AdamW's step is nearly blind to a gradient's scale, its moments are not
    let host_tensors = host.iter().chain(&host_opt.m).chain(&host_opt.v);
    for (i, (p, d)) in host_tensors.zip(dev.iter().chain(&dev_opt.m).chain(&dev_opt.v)).enumerate() {
        let (d, largest) = (g.download(d), p.iter().fold(1e-3f32, |m, x| m.max(x.abs())));
        let diff = p.iter().zip(&d).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff <= 1e-5 * largest, "tensor {i} (parameters, then m, then v) after 5 steps: max |Δ| {diff}");
    }
    assert_eq!(host_opt.step, dev_opt.step);
}

/// The other two refusals, on both backends alike: a NaN token loss updates nothing; an update that overflows a
/// weight (3·10³⁸ pushed up by a learning rate of 10³⁸) is named.
#[test]
fn a_nan_loss_and_an_overflowing_update_are_reported() {
    use mftcoder::backend::cpu::Cpu;
    use mftcoder::train::step_update::{Outcome, StepReport};
    use ndarray::Array2;
    let Some(g) = gpu() else { return };
    fn step<B: Backend>(b: &B, start: f32, lr: f32, loss: f32) -> (StepReport, Array2<f32>) {
        let mut p = b.upload(Array2::from_elem((2, 3), start));
        let mut grad = b.upload(Array2::from_elem((2, 3), -1.0f32));
        let losses = b.upload(Array2::from_shape_vec((2, 1), vec![1.0, loss]).unwrap());
        let mut opt = AdamW::new_on(b, AdamWConfig { weight_decay: 0.0, ..AdamWConfig::default() }, &[(2, 3)]);
        let report = opt.clipped_step_on(b, &mut [&mut p], &mut [&mut grad], &[Some(0)], lr, &[true], 1.0, &[&losses]);
        (report, b.download(&p))
    }
    let (cpu, cpu_p) = step(&Cpu, 0.5, 1e-2, f32::NAN);
    let (dev, dev_p) = step(g, 0.5, 1e-2, f32::NAN);
    assert_eq!((&cpu.outcome, &dev.outcome), (&Outcome::NonFiniteLoss, &Outcome::NonFiniteLoss));
    assert!(cpu_p.iter().chain(&dev_p).all(|&x| x == 0.5), "a NaN loss leaves the weights alone");
    let (cpu, _) = step(&Cpu, 3e38, 1e38, 1.0);
    let (dev, _) = step(g, 3e38, 1e38, 1.0);
    assert_eq!((&cpu.outcome, &dev.outcome), (&Outcome::NonFiniteParameter(0), &Outcome::NonFiniteParameter(0)));
}

// ANCHOR: launches_per_layer
/// What one more decoder layer adds to a steady-state step (3 layers minus 2): r-16 adapters on all seven
/// projections, as the bench trains them.
///
/// Under f32: the frozen bases in 4 products forward (q/k/v stacked, gate/up stacked, o, down) and 4 dx
/// products backward, and 7 adapters at 2 + 4 products each (x·Aᵀ and s·h·Bᵀ accumulated into their columns of
/// y; s·dyᵀ·h, s·dy·B, dhᵀ·x and dh·A accumulated into dx): 50 products and no launch. The 12 launches are the
/// layer's own kernels: 2 RMSNorms, each fused with the residual add before it, and their dx-only backward
/// adding into the stream's gradient; the split of [q | k | v] with RoPE, and its backward; the attention
/// passes; SwiGLU on [gate | up]. History: 13 with the layer's last residual add apart from the next norm; 17
/// with the split and the two rotations apart (each way); 56 + 18 with separate products (3 adds of partial dx
/// instead of the split and join); 21 before the norms took in the adds. Before LoRA's scale and adds went
/// into the products and the frozen norms stopped computing weight gradients, each adapter cost 3 launches
/// more and each norm 1.
///
/// Under bf16, 2 roundings come on top: the residual stream's gradient, which o's and down's dx products read
/// (the stream itself is read element-wise too, so it stays f32). Every other tensor only products read is
/// written in bf16 by the op that makes it (`ReadBy::Products`): the two norms' outputs, SwiGLU's, the
/// attention's, and in the backward SwiGLU's ∂L/∂[gate | up] and the joined ∂L/∂[q | k | v]. Each of the
/// forward four took a rounding before its products and another for the adapters' backward, and each gradient
/// one: 24 launches with the casts (10 more). Before that, x was rounded backward once per adapter rather than
/// once per stack (27). h and ∂L/∂h come out of their products in bf16 (`Cuda::product_output`); rounded by a
/// cast (forward and backward for h, once for ∂L/∂h) they were 3 more per adapter. With separate products x and
/// dy were rounded once per projection: 60. A and B are not among them: each keeps a bf16 copy beside its f32
/// master, rewritten by the optimizer's update (`Cuda::keep_bf16_copy`); with a cast of each before each of its
/// two products they were 10 per adapter and 91 launches.
///
/// A 4-bit base adds the dequantization before each of its 14 products. Stacked like the dense one (its 7
/// parts decoded into two stacked outputs), which takes the rotations into the split and the adds of partial
/// dx into the products, it costs 26 launches; apart, 31.
const PER_LAYER_F32: (u64, u64) = (12, 50);
const PER_LAYER_BF16: (u64, u64) = (14, 50);
const PER_LAYER_QLORA_F32: (u64, u64) = (26, 56);
/// The same layer with LayerNorms (biases and all) in place of the RMSNorms: the residual adds go into them
/// as into RMSNorm (`add_layer_norm`, the accumulating `layer_norm_backward_input_add`); apart they were 4
/// launches more.
const PER_LAYER_LAYER_NORM_F32: (u64, u64) = (12, 50);

#[test]
fn launches_per_layer() {
    let Some(g) = gpu() else { return };
    let Some(g16) = gpu_bf16() else { return };
    let all_linear = LoraConfig {
        r: 16,
        lora_alpha: 32.0,
        target_modules: mftcoder::peft::TargetModules::AllLinear,
        ..LoraConfig::default()
    };
    let per_layer = |g: &Cuda, quantized: bool, norm: NormKind| {
        let step = |layers| {
            let trained = Trained { layers, quantized, lora: all_linear.clone(), norm };
            counted_steps_of(g, &trained, 3, SMALL_VOCAB).0[2]
        };
        let (two, three) = (step(2), step(3));
        (three.launches - two.launches, three.gemms - two.gemms)
    };
    let measured = [
        ("LoRA, f32", per_layer(g, false, NormKind::Rms), PER_LAYER_F32),
        ("LoRA, bf16", per_layer(g16, false, NormKind::Rms), PER_LAYER_BF16),
        ("QLoRA, f32", per_layer(g, true, NormKind::Rms), PER_LAYER_QLORA_F32),
        ("LoRA with LayerNorm, f32", per_layer(g, false, NormKind::Layer), PER_LAYER_LAYER_NORM_F32),
    ];
    for (what, got, _) in measured {
        eprintln!("one more layer of an all-linear r-16 {what} step: {} launches + {} products", got.0, got.1);
    }
    for (what, got, want) in measured {
        assert_eq!(got, want, "{what}: launches and products per layer changed; say why above");
    }
}
// ANCHOR_END: launches_per_layer

// ---- without a GPU: the same tests on the emulated device ----

#[test]
fn step_counters_on_an_emulated_device() {
    if emulated_device::is_the_emulated_run() {
        return; // this is the child run
    }
    if gpu().is_some() {
        eprintln!("a real GPU answered: the emulated run is not needed");
        return;
    }
    let Some((_, stderr)) = emulated_device::rerun_on_the_emulated_device("step-counters") else { return };
    assert!(!stderr.contains("skipping the GPU"), "the emulated device did not open:\n{stderr}");
    for line in stderr.lines().filter(|l| l.contains("step")) {
        eprintln!("emulated device: {line}");
    }
}
