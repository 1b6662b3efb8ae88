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
use mftcoder::models::decoder::{Decoder, DecoderConfig, Sequence};
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
    GPU.get_or_init(|| match Cuda::new(0, Precision::F32) {
        Ok(cuda) => Some(cuda),
        Err(e) => {
            eprintln!("skipping the GPU step counters: {e}");
            None
        }
    })
    .as_ref()
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

/// The counters of `steps` consecutive training steps of a 2-layer Llama (GQA, a packed batch of two
/// documents, PEFT's default LoRA: r 8 on q and v, the base in NF4 + double quantization when `quantized`), and the losses.
fn counted_steps(g: &Cuda, quantized: bool, steps: usize, head: Head) -> (Vec<CounterSnapshot>, Vec<f64>) {
    let mut model: Decoder<Cuda> = Decoder::random(g, DecoderConfig::with_shape(head.vocab, 64, 160, 2, 4, 2), 42);
    model.head_chunk_bytes = head.chunk_bytes;
    if quantized {
        for (_, linear) in model.linears_mut() {
            linear.quantize(g, QuantType::Nf4, true).unwrap();
        }
    }
    let lora = LoraConfig { r: 8, lora_alpha: 16.0, ..LoraConfig::default() };
    init_adapters(&mut model, g, &lora, &mut Rng::new(7)).unwrap();
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
/// (kernel launches, cuBLAS products) of one steady-state step, as measured when the fused step's end landed:
/// bounds, so a change that adds launches has to say so here. The forward and backward are 63 (LoRA) and 91
/// (QLoRA) of them; the step's end is 3 (the norm's partial sums, its finish, the multi-tensor AdamW) where it
/// was 16 and 8 blocking reads (a squared norm and an AdamW per tensor; 32 and 24 reads with the trainer's
/// finiteness checks of every gradient and parameter). Before: LoRA 79 + 54, QLoRA 107 + 54. The head in
/// chunks (`loss::chunked_head`) left these as they were: the logits of 40 tokens fit one chunk, which runs
/// the unchunked ops exactly (one product, one cross-entropy launch, one product for dh). The banded 4-bit
/// products (`cuda/linear_4bit.rs`) left the QLoRA figures as they were too: every [≤ 160, 64] matrix is one band,
/// so a 4-bit product is still one dequantization launch and one cuBLAS product (under f32, as here).
const LORA_LAUNCHES: (u64, u64) = (66, 54);
const QLORA_LAUNCHES: (u64, u64) = (94, 54);
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
