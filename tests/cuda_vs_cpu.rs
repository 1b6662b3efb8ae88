//! The GPU path against the CPU reference, op by op: every Backend op on random shapes (proptest), the bf16
//! products and tensor-core attention, and the kernels' machine code; whole training steps are in
//! tests/cuda_training_steps.rs. Run with `cargo test --features cuda --test cuda_vs_cpu`; without a GPU the
//! same tests run on the emulated device (the last test below).
//!
//! Tolerances, relative to the largest magnitude of the CPU result (`max|Δ| ≤ tol · max(max|cpu|, 1)`):
//! - f32 (`Precision::F32`): 1e-5 for element-wise and row ops, 1e-4 for products, attention and whole steps.
//!   Both sides compute in f32 and differ only in summation order (cuBLAS's split-K and tiling against the
//!   CPU's blocked GEMM; warp-shuffle trees against sequential f64 row sums), which moves a dot product of
//!   length K by a few ulps·√K — about 1e-6 relative for K in the hundreds.
//! - bf16 (`Precision::Bf16`): 2e-2 for a matrix product. Each operand is rounded to 8 significant bits
//!   (unit round-off u = 2⁻⁹ ≈ 2e-3), so each product term carries a relative error up to 2u and a sum of K
//!   terms with random signs drifts by about 2u·√K·rms(term), while the sum itself is about √K·rms(term):
//!   ≈ 4e-3 relative, and 2e-2 leaves a factor 5 for unlucky draws. llm.c checks its bf16 GPT-2 against the
//!   f32 reference at tolerances of the same order (1e-2 on logits and loss).

#![cfg(feature = "cuda")]

use mftcoder::backend::cpu::Cpu;
use mftcoder::backend::cuda::Precision;
use mftcoder::backend::{AttentionMask, AttentionShape, Backend, FusedQkv, ReadBy};
use mftcoder::train::optim::{AdamW, AdamWConfig};
use ndarray::Array2;
use proptest::prelude::*;

#[path = "kernel_emulator/compile.rs"]
mod compile;
#[path = "kernel_emulator/emulated_device.rs"]
mod emulated_device;

#[path = "cuda_shared/mod.rs"]
mod cuda_shared;
use cuda_shared::{assert_close, gpu, matrix};

/// Compare the outputs of one generic op function run on the CPU and on the GPU.
#[track_caller]
fn check(what: &str, tol: f32, cpu: Vec<Array2<f32>>, gpu: Vec<Array2<f32>>) {
    assert_eq!(cpu.len(), gpu.len());
    for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        assert_close(&format!("{what} (output {i})"), c, g, tol);
    }
}

fn downloaded<B: Backend>(b: &B, ts: Vec<B::Tensor>) -> Vec<Array2<f32>> {
    ts.iter().map(|t| b.download(t)).collect()
}

fn elementwise<B: Backend>(b: &B, rows: usize, cols: usize, seed: u64) -> Vec<Array2<f32>> {
    let x = b.upload(matrix(rows, cols, seed, 1.0));
    let y = b.upload(matrix(rows, cols, seed + 1, 2.0));
    let mut acc = b.add(&x, &y);
    b.add_scaled(&mut acc, &y, -0.37);
    b.add_assign(&mut acc, &x);
    let dy = b.upload(matrix(rows, cols, seed + 2, 1.0));
    let (dgate, dup) = b.swiglu_backward(&dy, &x, &y);
    let (gelu, dgelu) = (b.gelu_tanh(&y), b.gelu_tanh_backward(&dy, &y));
    let (gelu_erf, dgelu_erf) = (b.gelu_erf(&y), b.gelu_erf_backward(&dy, &y));
    let (scaled, product, swiglu) = (b.scale(&x, 3.5), b.mul(&x, &y), b.swiglu(&x, &y));
    // the halves of one [gate | up]: the same values as x, y side by side
    let gate_up = b.upload(ndarray::concatenate![ndarray::Axis(1), b.download(&x), b.download(&y)]);
    let (halves, dhalves) = (b.swiglu_halves(&gate_up), b.swiglu_halves_backward(&dy, &gate_up, ReadBy::AnyOp));
    let ts = vec![acc, scaled, product, swiglu, dgate, dup, gelu, dgelu, gelu_erf, dgelu_erf, halves, dhalves];
    downloaded(b, ts)
}

// ANCHOR: linear_case
fn linear<B: Backend>(b: &B, t: usize, inp: usize, out: usize, seed: u64) -> Vec<Array2<f32>> {
    let x = b.upload(matrix(t, inp, seed, 1.0));
    let w = b.upload_weight(matrix(out, inp, seed + 1, 0.1));
    let bias = b.upload(matrix(1, out, seed + 2, 1.0));
    let y = b.linear(&x, &w, Some(&bias));
    let dy = b.upload(matrix(t, out, seed + 3, 1.0));
    let (dx, dw, db) = b.linear_backward(&dy, &x, &w, true, true);
    downloaded(b, vec![y, dx, dw.unwrap(), db.unwrap()])
}
// ANCHOR_END: linear_case

/// LoRA's branch into a base output and its backward into an input gradient (on the GPU: s in the products'
/// α, the adds in their β), x rounded once for its products; the output is columns 3 .. 3 + out of a wider
/// one, as a part of a stacked product is. The dropout drawn in place is checked on each backend against that
/// backend's stored mask of the same seed (the two backends' generators differ).
fn lora_branch<B: Backend>(b: &B, t: usize, (inp, out, r): (usize, usize, usize), seed: u64) -> Vec<Array2<f32>> {
    let s = 1.7;
    let x = b.upload(matrix(t, inp, seed, 1.0));
    let (a, up) = (b.upload(matrix(r, inp, seed + 1, 0.2)), b.upload(matrix(out, r, seed + 2, 0.2)));
    let mut y = b.upload(matrix(t, out + 5, seed + 3, 1.0)); // "the stacked base output"
    let h = b.lora_forward_into(&mut y, 3, &b.product_operand(&x), &a, &up, s);
    let dy = b.upload(matrix(t, out + 5, seed + 4, 1.0));
    let mut dx = b.upload(matrix(t, inp, seed + 5, 1.0)); // "the base layer's dx"
    let (da, db) = b.lora_backward_into(Some(&mut dx), &dy, 3, &x, &h, &a, &up, s);

    let mask = b.dropout_mask(t, inp, 0.3, seed);
    let (dropped, mut want) = (b.dropout(&x, 0.3, seed), b.download(&b.mul(&x, &mask)));
    if b.stored_bytes(&dropped) == 2 * t * inp {
        want.mapv_inplace(|v| half::bf16::from_f32(v).to_f32()); // only A reads x̃: written in its bf16
    }
    assert_eq!(b.download(&dropped), want, "{}: x ∘ m", b.name());
    let (mut added, g_dropped) = (b.upload(matrix(t, inp, seed + 6, 1.0)), b.upload(matrix(t, inp, seed + 7, 1.0)));
    let want = b.download(&b.add(&added, &b.mul(&g_dropped, &mask)));
    b.add_dropout_backward(&mut added, &g_dropped, 0.3, seed);
    let got = b.download(&added);
    let worst = want.iter().zip(&got).map(|(w, g)| (w - g).abs()).fold(0.0f32, f32::max);
    assert!(worst <= 1e-6, "{}: dx += g ∘ m off by {worst}", b.name()); // one rounding (the GPU may fuse it)
    downloaded(b, vec![y, h, dx, da, db])
}

/// RMSNorm, LayerNorm, RoPE on heads of d = 2·half + pass_through (partial rotary when pass_through > 0: the
/// last entries of each head are copied) and the embedding, each with its backward.
fn norm_rope_embedding<B: Backend>(
    b: &B,
    t: usize,
    heads: usize,
    (half, pass_through): (usize, usize),
    seed: u64,
) -> Vec<Array2<f32>> {
    let d = 2 * half + pass_through;
    let x = b.upload(matrix(t, heads * d, seed, 1.0));
    let w = b.upload(matrix(1, heads * d, seed + 1, 1.0));
    let dy = b.upload(matrix(t, heads * d, seed + 2, 1.0));
    let (dx, dw) = b.rms_norm_backward(&dy, &x, &w, 1e-6, true);
    let (frozen_dx, no_dw) = b.rms_norm_backward(&dy, &x, &w, 1e-6, false); // a frozen norm: dx alone
    let (shifted, bias) =
        (b.upload(matrix(t, heads * d, seed, 1.0).mapv(|v| v + 3.0)), b.upload(matrix(1, heads * d, seed + 4, 0.5)));
    let (ln_dx, ln_params) = b.layer_norm_backward(&dy, &shifted, &w, 1e-5, true);
    let (ln_frozen_dx, no_params) = b.layer_norm_backward(&dy, &shifted, &w, 1e-5, false);
    assert!(no_dw.is_none() && no_params.is_none(), "{}: a frozen norm's weight gradient was computed", b.name());
    let (dw, (ln_dw, ln_db)) = (dw.expect("asked for"), ln_params.expect("asked for"));
    // the residual add fused with the norm after it, and the norm's backward added into the stream's gradient
    let a = b.upload(matrix(t, heads * d, seed + 5, 1.0));
    let (sum, normed) = b.add_rms_norm(&x, &a, &w, 1e-6, ReadBy::AnyOp);
    let (mut dx_acc, mut frozen_dx_acc) = (b.upload(matrix(t, heads * d, seed + 6, 1.0)), b.zeros(t, heads * d));
    let dw_acc = b.rms_norm_backward_into(&mut dx_acc, &dy, &x, &w, 1e-6, true).expect("asked for");
    b.add_assign(&mut frozen_dx_acc, &a);
    assert!(b.rms_norm_backward_into(&mut frozen_dx_acc, &dy, &x, &w, 1e-6, false).is_none());
    // the same for LayerNorm: the add fused with it, and its backward accumulating (with and without dw, db)
    let (ln_sum, ln_normed) = b.add_layer_norm(&shifted, &a, &w, &bias, 1e-5, ReadBy::AnyOp);
    let (mut ln_dx_acc, mut ln_frozen_dx_acc) =
        (b.upload(matrix(t, heads * d, seed + 6, 1.0)), b.upload(matrix(t, heads * d, seed + 7, 1.0)));
    let (ln_dw_acc, ln_db_acc) =
        b.layer_norm_backward_into(&mut ln_dx_acc, &dy, &shifted, &w, 1e-5, true).expect("asked for");
    assert!(b.layer_norm_backward_into(&mut ln_frozen_dx_acc, &dy, &shifted, &w, 1e-5, false).is_none());
    let positions: Vec<usize> = (0..t).map(|i| 3 * i + 7).collect();
    let inv_freq: Vec<f32> = (0..half).map(|i| 10_000f32.powf(-(i as f32) / half as f32)).collect();
    let table = b.upload(matrix(50, heads * d, seed + 3, 1.0));
    let ids: Vec<u32> = (0..t as u32).map(|i| (i * 7 + seed as u32) % 50).collect();
    downloaded(
        b,
        vec![
            b.rms_norm(&x, &w, 1e-6, ReadBy::AnyOp),
            dx,
            dw,
            frozen_dx,
            b.layer_norm(&shifted, &w, &bias, 1e-5, ReadBy::AnyOp),
            ln_dx,
            ln_dw,
            ln_db,
            ln_frozen_dx,
            sum,
            normed,
            dx_acc,
            dw_acc,
            frozen_dx_acc,
            ln_sum,
            ln_normed,
            ln_dx_acc,
            ln_dw_acc,
            ln_db_acc,
            ln_frozen_dx_acc,
            b.rope(&x, heads, d, &positions, &inv_freq),
            b.rope_backward(&dy, heads, d, &positions, &inv_freq),
            b.embedding(&table, &ids),
            b.embedding_backward(&dy, &ids, 50),
        ],
    )
}

/// (tq, cached keys, KV heads, query heads per KV head, head_dim, packed, sliding window, ALiBi, score clamp)
type AttentionCase = (usize, usize, usize, usize, usize, bool, Option<usize>, bool, Option<f32>);

fn attention<B: Backend>(b: &B, case: AttentionCase, seed: u64) -> Vec<Array2<f32>> {
    attention_read_by(b, case, seed, ReadBy::AnyOp)
}

/// [`attention`] with its output stored for `read_by`.
fn attention_read_by<B: Backend>(b: &B, case: AttentionCase, seed: u64, read_by: ReadBy) -> Vec<Array2<f32>> {
    let (tq, cached, kv_heads, group, d, packed, window, alibi, score_clamp) = case;
    let (heads, tk) = (kv_heads * group, cached + tq);
    let shape =
        AttentionShape { alibi, score_clamp, ..AttentionShape::new(heads, kv_heads, d, 1.0 / (d as f32).sqrt()) };
    // two packed documents, split at a third of the keys
    let segments: Vec<u32> = (0..tk).map(|j| u32::from(j >= tk / 3)).collect();
    let mask = AttentionMask { q_offset: cached, segment_ids: packed.then_some(segments.as_slice()), window };
    let q = b.upload(matrix(tq, heads * d, seed, 1.0));
    let k = b.upload(matrix(tk, kv_heads * d, seed + 1, 1.0));
    let v = b.upload(matrix(tk, kv_heads * d, seed + 2, 1.0));
    let (out, lse) = b.causal_attention_with_lse(&q, &k, &v, &shape, &mask, read_by);
    let dout = b.upload(matrix(tq, heads * d, seed + 3, 1.0));
    let (dq, dk, dv) = b.causal_attention_backward(&dout, &q, &k, &v, &out, &lse, &shape, &mask);
    downloaded(b, vec![out, lse, dq, dk, dv])
}

/// A fused projection's output split into q, k, v and (the backward) gradients joined back: a permutation, so
/// both sides agree exactly. case: (query heads, key/value heads, head_dim, groups).
fn fused_qkv<B: Backend>(
    b: &B,
    t: usize,
    (heads, kv_heads, d, groups): (usize, usize, usize, usize),
    seed: u64,
) -> Vec<Array2<f32>> {
    let shape = AttentionShape::new(heads, kv_heads, d, 1.0);
    let layout = FusedQkv { groups };
    let qkv = b.upload(matrix(t, (heads + 2 * kv_heads) * d, seed, 1.0));
    let (q, k, v) = b.split_qkv(&qkv, &shape, layout);
    let dq = b.upload(matrix(t, heads * d, seed + 1, 1.0));
    let (dk, dv) = (b.upload(matrix(t, kv_heads * d, seed + 2, 1.0)), b.upload(matrix(t, kv_heads * d, seed + 3, 1.0)));
    let dqkv = b.join_qkv(&dq, &dk, &dv, &shape, layout);
    downloaded(b, vec![q, k, v, dqkv])
}

/// The split with q and k rotated in the same pass, and its backward, on heads whose first 2·half entries
/// rotate; then the same through `split_qkv` and `rope` apart, which the fused kernels must match exactly.
/// case: (query heads, key/value heads, head_dim, groups).
fn fused_qkv_rotated<B: Backend>(
    b: &B,
    t: usize,
    (heads, kv_heads, d, groups): (usize, usize, usize, usize),
    half: usize,
    seed: u64,
) -> (Vec<Array2<f32>>, Vec<Array2<f32>>) {
    let shape = AttentionShape::new(heads, kv_heads, d, 1.0);
    let layout = FusedQkv { groups };
    let positions: Vec<usize> = (0..t).map(|i| 5 * i + 2).collect();
    let inv_freq: Vec<f32> = (0..half).map(|i| 10_000f32.powf(-(i as f32) / half as f32)).collect();
    let qkv = b.upload(matrix(t, (heads + 2 * kv_heads) * d, seed, 1.0));
    let dq = b.upload(matrix(t, heads * d, seed + 1, 1.0));
    let (dk, dv) = (b.upload(matrix(t, kv_heads * d, seed + 2, 1.0)), b.upload(matrix(t, kv_heads * d, seed + 3, 1.0)));
    let (q, k, v) = b.split_qkv_rotated(&qkv, &shape, layout, &positions, &inv_freq);
    let dqkv = b.join_qkv_rotated(&dq, &dk, &dv, &shape, layout, &positions, &inv_freq, ReadBy::AnyOp);
    let fused = downloaded(b, vec![q, k, v, dqkv]);
    let (q, k, v) = b.split_qkv(&qkv, &shape, layout);
    let (q, k) = (b.rope(&q, heads, d, &positions, &inv_freq), b.rope(&k, kv_heads, d, &positions, &inv_freq));
    let (dq, dk) = (
        b.rope_backward(&dq, heads, d, &positions, &inv_freq),
        b.rope_backward(&dk, kv_heads, d, &positions, &inv_freq),
    );
    let dqkv = b.join_qkv(&dq, &dk, &dv, &shape, layout);
    (fused, downloaded(b, vec![q, k, v, dqkv]))
}

/// Rows scaled by per-row weights from the host (a mixture of experts' combine step) and the per-row dots that
/// are its weight gradient, which come back to the host.
fn row_scale<B: Backend>(b: &B, t: usize, h: usize, seed: u64) -> Vec<Array2<f32>> {
    let (x, dy) = (b.upload(matrix(t, h, seed, 1.0)), b.upload(matrix(t, h, seed + 1, 1.0)));
    let weights: Vec<f32> = matrix(1, t, seed + 2, 1.0).iter().copied().collect();
    let dots = b.row_dots(&dy, &x);
    vec![b.download(&b.scale_rows(&x, &weights)), Array2::from_shape_vec((1, t), dots).unwrap()]
}

fn cross_entropy<B: Backend>(b: &B, t: usize, vocab: usize, seed: u64) -> Vec<Array2<f32>> {
    let logits = b.upload(matrix(t, vocab, seed, 3.0));
    let targets: Vec<u32> = (0..t).map(|i| ((i * 31 + seed as usize) % vocab) as u32).collect();
    let weights: Vec<f32> = (0..t).map(|i| if i % 3 == 0 { 0.0 } else { 0.25 }).collect();
    let (losses, dlogits) = b.cross_entropy(&logits, &targets, &weights);
    vec![Array2::from_shape_vec((1, t), losses).unwrap(), b.download(&dlogits)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn elementwise_ops(rows in 1usize..40, cols in 1usize..300, seed in 0u64..1000) {
        let Some(g) = gpu(Precision::F32) else { return Ok(()) };
        check("add/add_scaled/scale/mul/swiglu/gelu", 1e-5, elementwise(&Cpu, rows, cols, seed), elementwise(g, rows, cols, seed));
    }

    #[test]
    fn linear_and_its_backward(t in 1usize..50, inp in 1usize..200, out in 1usize..200, seed in 0u64..1000) {
        let Some(g) = gpu(Precision::F32) else { return Ok(()) };
        // ANCHOR: linear_property
        check("linear", 1e-4, linear(&Cpu, t, inp, out, seed), linear(g, t, inp, out, seed));
        // ANCHOR_END: linear_property
    }

    #[test]
    fn lora_branch_and_its_backward(
        t in 1usize..40,
        inp in 1usize..120,
        out in 1usize..120,
        r in prop::sample::select(vec![1usize, 4, 8, 16]),
        seed in 0u64..1000,
    ) {
        let Some(g) = gpu(Precision::F32) else { return Ok(()) };
        let shape = (inp, out, r);
        check("lora_forward_into/lora_backward_into", 1e-4, lora_branch(&Cpu, t, shape, seed), lora_branch(g, t, shape, seed));
    }

    #[test]
    fn rms_norm_rope_embedding(
        t in 1usize..40,
        heads in 1usize..5,
        half in 1usize..33,
        pass_through in prop::sample::select(vec![0usize, 0, 1, 6, 32]), // > 0: partial rotary
        seed in 0u64..1000,
    ) {
        let Some(g) = gpu(Precision::F32) else { return Ok(()) };
        let rotary = (half, pass_through);
        let cpu = norm_rope_embedding(&Cpu, t, heads, rotary, seed);
        let gpu_out = norm_rope_embedding(g, t, heads, rotary, seed);
        check("rms_norm/layer_norm/rope (partial rotary)/embedding", 1e-5, cpu, gpu_out);
    }

    #[test]
    fn fused_qkv_split_and_join(
        t in 1usize..40,
        kv_heads in 1usize..5,
        group in 1usize..4,
        d in 1usize..70,
        per_kv_head in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let Some(g) = gpu(Precision::F32) else { return Ok(()) };
        // one block [q | k | v] (GPT-BigCode, Qwen-1), or a group per KV head (GPT-NeoX's interleave at group 1)
        let case = (kv_heads * group, kv_heads, d, if per_kv_head { kv_heads } else { 1 });
        check("split_qkv/join_qkv", 0.0, fused_qkv(&Cpu, t, case, seed), fused_qkv(g, t, case, seed));
    }

    #[test]
    fn fused_qkv_split_rotated_and_its_backward(
        t in 1usize..30,
        kv_heads in 1usize..4,
        group in 1usize..4,
        d in 1usize..40,
        partial_rotary in any::<bool>(),
        per_kv_head in any::<bool>(),
        seed in 0u64..1000,
    ) {
        let Some(g) = gpu(Precision::F32) else { return Ok(()) };
        let case = (kv_heads * group, kv_heads, d, if per_kv_head { kv_heads } else { 1 });
        let half = if partial_rotary { d / 4 } else { d / 2 };
        let (gpu_fused, gpu_apart) = fused_qkv_rotated(g, t, case, half, seed);
        let (cpu_fused, _) = fused_qkv_rotated(&Cpu, t, case, half, seed);
        // the same sincosf and the same products on the device, so the one pass is the two kernels exactly
        check("split_qkv_rotated against split_qkv + rope on the device", 0.0, gpu_apart, gpu_fused.clone());
        check("split_qkv_rotated/join_qkv_rotated", 1e-5, cpu_fused, gpu_fused);
    }

    #[test]
    fn attention_forward_and_backward(
        tq in 1usize..24,
        cached in 0usize..8,
        kv_heads in 1usize..3,
        group in 1usize..3,
        d in prop::sample::select(vec![8usize, 32, 48, 64, 128, 256]),
        packed in any::<bool>(),
        window in prop::option::of(1usize..20),
        alibi in any::<bool>(),
        clamp in prop::option::of(Just(0.75f32)), // a bound that normal scores pass (Aquila2's is 1024)
        seed in 0u64..1000,
    ) {
        let Some(g) = gpu(Precision::F32) else { return Ok(()) };
        let case = (tq, cached, kv_heads, group, d, packed, window, alibi, clamp);
        check("attention", 1e-4, attention(&Cpu, case, seed), attention(g, case, seed));
    }

    #[test]
    fn scale_rows_and_row_dots(
        t in prop_oneof![1 => Just(1usize), 3 => 1usize..40],
        h in prop_oneof![1 => Just(1usize), 3 => 1usize..2000], // up to 8 times the 256 threads of a row's block
        seed in 0u64..1000,
    ) {
        let Some(g) = gpu(Precision::F32) else { return Ok(()) };
        check("scale_rows/row_dots", 1e-5, row_scale(&Cpu, t, h, seed), row_scale(g, t, h, seed));
    }

    #[test]
    fn cross_entropy_rows(t in 1usize..30, vocab in 2usize..3000, seed in 0u64..1000) {
        let Some(g) = gpu(Precision::F32) else { return Ok(()) };
        check("cross_entropy", 1e-5, cross_entropy(&Cpu, t, vocab, seed), cross_entropy(g, t, vocab, seed));
    }
}

#[test]
fn concat_slice_and_sum_squares() {
    let Some(g) = gpu(Precision::F32) else { return };
    fn concat_slice<B: Backend>(b: &B) -> Vec<Array2<f32>> {
        let a = b.upload(matrix(3, 17, 1, 1.0));
        let c = b.upload(matrix(5, 17, 2, 1.0));
        let joined = b.concat_rows(&a, &c);
        downloaded(b, vec![b.slice_rows(&joined, 2, 6), joined])
    }
    check("concat/slice", 0.0, concat_slice(&Cpu), concat_slice(g));
    let x = matrix(123, 457, 3, 2.0);
    let (cpu, gpu_sum) = (Cpu.sum_squares(&x), g.sum_squares(&g.upload(x.clone())));
    assert!((cpu - gpu_sum).abs() <= 1e-5 * cpu, "sum of squares: cpu {cpu}, gpu {gpu_sum}");
}

/// The head and its loss in chunks (`loss::chunked_head`) on both backends: chunks of 1 row, 3 rows (11 =
/// 3 + 3 + 3 + 2) and all rows, with a bias and every gradient; and `write_rows`, which fills the chunks'
/// outputs in place on the GPU.
#[test]
fn linear_cross_entropy_in_chunks_and_write_rows() {
    use mftcoder::backend::HeadGradsWanted;
    let Some(g) = gpu(Precision::F32) else { return };
    fn head_loss<B: Backend>(b: &B, rows: usize) -> Vec<Array2<f32>> {
        let (t, hidden, vocab) = (11, 24, 300);
        let (h, w) = (b.upload(matrix(t, hidden, 1, 1.0)), b.upload_weight(matrix(vocab, hidden, 2, 0.5)));
        let bias = b.upload(matrix(1, vocab, 3, 1.0));
        let targets: Vec<u32> = (0..t).map(|i| (i * 37 % vocab) as u32).collect();
        let weights: Vec<f32> = (0..t).map(|i| if i % 4 == 1 { 0.0 } else { 0.1 }).collect();
        let wanted = HeadGradsWanted { weight: true, bias: true };
        let r = b.linear_cross_entropy(&h, &w, Some(&bias), &targets, &weights, wanted, rows * vocab * 4);
        downloaded(b, vec![r.token_losses, r.dh, r.dhead.unwrap(), r.dbias.unwrap()])
    }
    for rows in [1, 3, 11] {
        check(&format!("linear_cross_entropy, {rows}-row chunks"), 1e-4, head_loss(&Cpu, rows), head_loss(g, rows));
    }
    fn written<B: Backend>(b: &B) -> Vec<Array2<f32>> {
        let mut dst = b.upload(matrix(6, 5, 4, 1.0));
        b.write_rows(&mut dst, 2, &b.upload(matrix(3, 5, 5, 1.0)));
        b.write_rows(&mut dst, 5, &b.upload(matrix(1, 5, 6, 1.0)));
        b.write_rows(&mut dst, 0, &b.upload(matrix(0, 5, 7, 1.0)));
        downloaded(b, vec![dst])
    }
    check("write_rows", 0.0, written(&Cpu), written(g));
}

#[test]
fn adamw_update_matches() {
    let Some(g) = gpu(Precision::F32) else { return };
    let config = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
    let shapes = [(13, 29), (1, 64)];
    let mut params: Vec<Array2<f32>> =
        shapes.iter().enumerate().map(|(i, &(r, c))| matrix(r, c, i as u64, 1.0)).collect();
    let mut dev_params: Vec<_> = params.iter().map(|p| g.upload(p.clone())).collect();
    let (mut host_opt, mut dev_opt) = (AdamW::new_on(&Cpu, config, &shapes), AdamW::new_on(g, config, &shapes));
    for step in 0..5u64 {
        let grads: Vec<Array2<f32>> =
            shapes.iter().enumerate().map(|(i, &(r, c))| matrix(r, c, 100 * step + i as u64, 0.3)).collect();
        let dev_grads: Vec<_> = grads.iter().map(|x| g.upload(x.clone())).collect();
        host_opt.step_on(
            &Cpu,
            &mut params.iter_mut().collect::<Vec<_>>(),
            &grads.iter().map(Some).collect::<Vec<_>>(),
            1e-2,
            &[true, false],
        );
        dev_opt.step_on(
            g,
            &mut dev_params.iter_mut().collect::<Vec<_>>(),
            &dev_grads.iter().map(Some).collect::<Vec<_>>(),
            1e-2,
            &[true, false],
        );
    }
    for (i, (p, d)) in params.iter().zip(&dev_params).enumerate() {
        assert_close(&format!("AdamW parameter {i} after 5 steps"), p, &g.download(d), 1e-6);
    }
}

#[test]
fn bf16_products_stay_within_the_argued_tolerance() {
    let Some(g) = gpu(Precision::Bf16) else { return };
    // LoRA's branch with its operands rounded once each: the same bound as one product
    for (t, shape) in [(16, (64, 48, 8)), (33, (300, 200, 16))] {
        check(
            &format!("bf16 LoRA branch {t}×{shape:?}"),
            2e-2,
            lora_branch(&Cpu, t, shape, 9),
            lora_branch(g, t, shape, 9),
        );
    }
    for (t, k, n) in [(16, 64, 32), (64, 768, 256), (33, 2048, 100)] {
        let x = matrix(t, k, 5, 1.0);
        let w = matrix(n, k, 6, 0.05);
        let cpu = Cpu.linear(&x, &Cpu.upload_weight(w.clone()), None);
        let gpu_y = g.download(&g.linear(&g.upload(x), &g.upload_weight(w), None));
        assert_close(&format!("bf16 linear {t}×{k}×{n}"), &cpu, &gpu_y, 2e-2);
    }
}

/// Mixed precision sends attention to the tensor-core kernels (flash_attention.cu) through the backend's own
/// launches (grids, segment tables, the head_dim bound): three launches per forward and backward, within 3e-2 —
/// the bf16 tolerance argued in tests/flash_attention_kernels.rs (scores, probabilities and the gradients'
/// second product each round to 8 significant bits; measured there at ≤ 8e-3). The score clamp (Aquila2) stays
/// on the exact f32 kernels, so it keeps the f32 attention's 1e-4 and launches no tensor-core kernel.
#[test]
fn bf16_attention_runs_on_the_tensor_core_kernels() {
    let Some(g) = gpu(Precision::Bf16) else { return };
    assert!(!mftcoder::backend::cuda::attention_kernels(Precision::F32, 64, None).flash, "f32 stays exact");
    for (case, flash) in [
        ((70, 0, 2, 2, 64, true, None, false, None), true), // two query blocks, GQA, packed
        ((1, 40, 2, 2, 128, false, Some(17), false, None), true), // decoding, a window
        ((24, 3, 1, 2, 256, true, None, true, None), true), // head_dim 256, ALiBi
        ((12, 3, 2, 2, 48, false, None, false, Some(0.75f32)), false), // the clamp: the f32 kernels
    ] {
        let before = mftcoder::backend::cuda::flash_attention_launches();
        let gpu_out = attention(g, case, 11);
        let launched = mftcoder::backend::cuda::flash_attention_launches() - before;
        // deterministic: no atomics, every sum in a fixed order, so a second run gives the same bits
        for (first, again) in gpu_out.iter().zip(attention(g, case, 11)) {
            assert!(first.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()), "{case:?}: not deterministic");
        }
        let tol = if flash { 3e-2 } else { 1e-4 };
        if flash {
            // read by o's products only, the output comes in bf16: the f32 one rounded, and a backward whose
            // row terms read it so stays within the same tolerance
            let products = attention_read_by(g, case, 11, ReadBy::Products);
            let rounded = gpu_out[0].mapv(|v| half::bf16::from_f32(v).to_f32());
            assert_eq!(products[0], rounded, "{case:?}: the bf16 output is the f32 one rounded");
            assert_eq!(products[1], gpu_out[1], "{case:?}: the same lse");
            check(&format!("bf16 attention, bf16 output {case:?}"), tol, attention(&Cpu, case, 11), products);
        }
        check(&format!("bf16 attention {case:?}"), tol, attention(&Cpu, case, 11), gpu_out);
        // other tests may launch at the same time on a real GPU (the emulated run is one test at a time)
        assert!(
            if flash { launched >= 3 } else { launched == 0 || gpu(Precision::F32).is_some() },
            "{case:?}: {launched}"
        );
    }
}

/// The kernels are the device's own machine code (`sm_XY` cubins), which a driver older than the NVRTC still
/// loads; PTX is only the fallback.
#[test]
fn kernels_load_as_the_devices_machine_code() {
    let Some(g) = gpu(Precision::F32) else { return };
    let code = g.kernel_code();
    assert!(
        matches!(code, mftcoder::backend::cuda::kernels::KernelCode::Cubin(sm) if sm.starts_with("sm_")),
        "{code:?}"
    );
    eprintln!("{} runs the kernels as {code:?}", g.device_name());
}

// ---- without a GPU: all of the above on an emulated device ----

/// Where no GPU answers, run this file's tests again in a child process whose libcuda, libnvrtc and libcublas
/// are `tests/kernel_emulator/fake_cuda.cpp`: host memory for device memory, the kernels' unchanged sources
/// on CPU fibers, a reference GEMM for cuBLAS. So the whole CUDA backend — its launches and their argument
/// lists, its shapes, segment tables, column-sum recursion, 4-bit upload, bf16 casts and cuBLAS arguments —
/// runs and is compared with the CPU on every `cargo test --features cuda`. What only real hardware can show
/// (NVRTC's code generation, the driver, real cuBLAS, timing) is left to a machine with a GPU.
#[test]
fn everything_above_on_an_emulated_device() {
    cuda_shared::rerun_on_the_emulated_device_without_a_gpu("emulated-device", &["tensors within", "runs the kernels"]);
}
