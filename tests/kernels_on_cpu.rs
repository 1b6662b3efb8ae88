//! The CUDA kernels, run on the CPU and compared with the CPU reference path — no GPU needed.
//!
//! `tests/kernel_emulator/harness.cpp` includes the kernel sources unchanged (`src/backend/cuda/kernels/*.cu`)
//! after `cuda_on_cpu.hpp`, a small CUDA stand-in: a block's threads are real threads, `__syncthreads` a
//! barrier, warp shuffles an exchange between two barriers, `__shared__` arrays shared by the block. The test
//! compiles it with g++ into a shared library, loads it, and calls each kernel on the inputs the CPU ops get.
//! So the kernels' index arithmetic, reductions, grid-stride loops, masks and GQA mapping are executed and
//! checked here and in CI; what only a GPU can show (cuBLAS, the driver, timing) is tests/cuda_vs_cpu.rs's.
//! Without g++ each test says it skips.

use mftcoder::backend::cpu::Cpu;
use mftcoder::backend::{
    AttentionDims, AttentionMask, AttentionShape, Backend, FusedQkv, ReadBy, dropout_threshold, segment_bounds,
};
use mftcoder::quant::{QuantOptions, QuantType, Quantized4bit};
use mftcoder::rng::Rng;
use mftcoder::train::optim::{AdamWScalars, adamw_update_matrix, matrix_sum_squares};
use ndarray::Array2;
use std::path::PathBuf;

#[path = "kernel_emulator/compile.rs"]
mod compile;
#[path = "kernel_emulator/harness_library.rs"]
mod harness_library;
use harness_library::{Emulator, emulator};

/// The launch shapes: element-wise kernels get a deliberately small grid (2 blocks of 64 threads) so their
/// grid-stride loops run many rounds; row kernels one block of 128 per row; warp kernels 4 warps per block.
const EW: (u32, u32, u32) = (2, 1, 64);
fn rows(n: usize) -> (u32, u32, u32) {
    (n as u32, 1, 128)
}
fn warps(n: usize) -> (u32, u32, u32) {
    (n.div_ceil(4) as u32, 1, 128)
}

fn matrix(r: usize, c: usize, seed: u64, scale: f64) -> Array2<f32> {
    let mut rng = Rng::new(seed);
    Array2::from_shape_fn((r, c), |_| (rng.normal() * scale) as f32)
}

fn zeros(r: usize, c: usize) -> Array2<f32> {
    Array2::zeros((r, c))
}

#[track_caller]
fn assert_close(what: &str, want: &Array2<f32>, got: &Array2<f32>, tol: f32) {
    assert_close_above_noise(what, want, got, tol, 0.0);
}

/// As `assert_close`, also allowing `noise`: the rounding error a quantity inherits whatever the order of its sums.
#[track_caller]
fn assert_close_above_noise(what: &str, want: &Array2<f32>, got: &Array2<f32>, tol: f32, noise: f32) {
    assert_eq!(want.dim(), got.dim(), "{what}: shape");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in want.iter().zip(got.iter()).enumerate() {
        assert!(
            (a - b).abs() <= tol * scale + noise,
            "{what}: element {i}: cpu {a}, kernel {b} (tolerance {tol} · {scale} + {noise})"
        );
    }
}

type P = *mut f32;
type C = *const f32;
type Ids = *const u32;

fn p(a: &mut Array2<f32>) -> P {
    a.as_mut_ptr()
}
fn c(a: &Array2<f32>) -> C {
    a.as_ptr()
}

#[test]
fn elementwise_kernels() {
    let Some(emu) = emulator() else { return };
    let (r, n) = (7, 45);
    let (x, y, dy) = (matrix(r, n, 1, 1.0), matrix(r, n, 2, 2.0), matrix(r, n, 3, 1.0));
    let len = (r * n) as i64;
    let (gx, gy, bx) = EW;
    unsafe {
        let add: unsafe extern "C" fn(u32, u32, u32, P, C, C, i64) = emu.kernel("add");
        let mut out = zeros(r, n);
        add(gx, gy, bx, p(&mut out), c(&x), c(&y), len);
        assert_close("add", &(&x + &y), &out, 0.0);

        let add_scaled: unsafe extern "C" fn(u32, u32, u32, P, C, f32, i64) = emu.kernel("add_scaled");
        let mut acc = x.clone();
        add_scaled(gx, gy, bx, p(&mut acc), c(&y), -0.37, len);
        let mut want = x.clone();
        Cpu.add_scaled(&mut want, &y, -0.37);
        assert_close("add_scaled", &want, &acc, 1e-7);

        let scale: unsafe extern "C" fn(u32, u32, u32, P, C, f32, i64) = emu.kernel("scale");
        scale(gx, gy, bx, p(&mut out), c(&x), 3.5, len);
        assert_close("scale", &Cpu.scale(&x, 3.5), &out, 0.0);

        let mul: unsafe extern "C" fn(u32, u32, u32, P, C, C, i64) = emu.kernel("mul");
        mul(gx, gy, bx, p(&mut out), c(&x), c(&y), len);
        assert_close("mul", &Cpu.mul(&x, &y), &out, 0.0);

        let swiglu: unsafe extern "C" fn(u32, u32, u32, P, C, C, i64) = emu.kernel("swiglu");
        swiglu(gx, gy, bx, p(&mut out), c(&x), c(&y), len);
        assert_close("swiglu", &Cpu.swiglu(&x, &y), &out, 1e-6);

        let swiglu_backward: unsafe extern "C" fn(u32, u32, u32, P, P, C, C, C, i64) = emu.kernel("swiglu_backward");
        let (mut dg, mut du) = (zeros(r, n), zeros(r, n));
        swiglu_backward(gx, gy, bx, p(&mut dg), p(&mut du), c(&dy), c(&x), c(&y), len);
        let (want_dg, want_du) = Cpu.swiglu_backward(&dy, &x, &y);
        assert_close("swiglu dgate", &want_dg, &dg, 1e-6);
        assert_close("swiglu dup", &want_du, &du, 1e-6);

        let gelu: unsafe extern "C" fn(u32, u32, u32, P, C, i64) = emu.kernel("gelu_tanh");
        gelu(gx, gy, bx, p(&mut out), c(&y), len);
        assert_close("gelu_tanh", &Cpu.gelu_tanh(&y), &out, 1e-6);
        let gelu_backward: unsafe extern "C" fn(u32, u32, u32, P, C, C, i64) = emu.kernel("gelu_tanh_backward");
        gelu_backward(gx, gy, bx, p(&mut out), c(&dy), c(&y), len);
        assert_close("gelu_tanh backward", &Cpu.gelu_tanh_backward(&dy, &y), &out, 1e-6);
        // the exact GELU: erff / expf in f32 against the CPU's f64 erf rounded once (y spans about ±6: both tails)
        let gelu_erf: unsafe extern "C" fn(u32, u32, u32, P, C, i64) = emu.kernel("gelu_erf");
        gelu_erf(gx, gy, bx, p(&mut out), c(&y), len);
        assert_close("gelu_erf", &Cpu.gelu_erf(&y), &out, 1e-6);
        let gelu_erf_backward: unsafe extern "C" fn(u32, u32, u32, P, C, C, i64) = emu.kernel("gelu_erf_backward");
        gelu_erf_backward(gx, gy, bx, p(&mut out), c(&dy), c(&y), len);
        assert_close("gelu_erf backward", &Cpu.gelu_erf_backward(&dy, &y), &out, 1e-6);

        let concat: unsafe extern "C" fn(u32, u32, u32, P, C, i64, C, i64) = emu.kernel("concat_rows");
        let mut joined = zeros(2 * r, n);
        concat(gx, gy, bx, p(&mut joined), c(&x), len, c(&y), len);
        assert_close("concat_rows", &Cpu.concat_rows(&x, &y), &joined, 0.0);
    }
}

#[test]
fn bias_and_two_level_column_sums() {
    let Some(emu) = emulator() else { return };
    let (r, n) = (200, 37); // 200 rows: 4 chunks of 64, then one more pass over the 4 partial rows
    let x = matrix(r, n, 4, 1.0);
    let bias = matrix(1, n, 5, 1.0);
    unsafe {
        let add_bias: unsafe extern "C" fn(u32, u32, u32, P, C, i32, i32, i32) = emu.kernel("add_bias_rows");
        let mut y = x.clone();
        add_bias(2, 1, 64, p(&mut y), c(&bias), r as i32, n as i32, n as i32);
        assert_close("add_bias_rows", &(&x + &bias), &y, 0.0);
        // one band's columns 5 .. 17 of the rows, n apart: the rest stays as it was
        let (start, width) = (5, 12);
        let mut y = x.clone();
        let band_bias = bias.slice(ndarray::s![.., ..width]).to_owned();
        let at = y.as_mut_ptr().wrapping_add(start);
        add_bias(2, 1, 64, at, c(&band_bias), r as i32, width as i32, n as i32);
        let mut want = x.clone();
        want.slice_mut(ndarray::s![.., start..start + width]).zip_mut_with(&band_bias, |w, b| *w += b);
        assert_close("add_bias_rows on a band", &want, &y, 0.0);

        let column_sum: unsafe extern "C" fn(u32, u32, u32, P, C, i32, i32, i32) = emu.kernel("column_sum");
        let chunks = r.div_ceil(64);
        let mut partial = zeros(chunks, n);
        column_sum(1, chunks as u32, 64, p(&mut partial), c(&x), r as i32, n as i32, 64);
        let mut total = zeros(1, n);
        column_sum(1, 1, 64, p(&mut total), c(&partial), chunks as i32, n as i32, 64);
        let want = x.sum_axis(ndarray::Axis(0)).insert_axis(ndarray::Axis(0));
        assert_close("column_sum", &want, &total, 1e-6);
    }
}

#[test]
fn bf16_rounding_matches_the_half_crate_bit_for_bit() {
    let Some(emu) = emulator() else { return };
    // ordinary values, exact ties (1 + 2⁻⁸ rounds to even), the largest finite f32, infinities, a NaN
    let mut values: Vec<f32> = matrix(1, 300, 6, 10.0).into_iter().collect();
    values.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, f32::MAX, f32::INFINITY, f32::NEG_INFINITY, -0.0, 1e-40]);
    let mut out = vec![0u16; values.len()];
    unsafe {
        let cast: unsafe extern "C" fn(u32, u32, u32, *mut u16, C, i64) = emu.kernel("f32_to_bf16");
        cast(2, 1, 64, out.as_mut_ptr(), values.as_ptr(), values.len() as i64);
    }
    for (v, bits) in values.iter().zip(&out) {
        assert_eq!(*bits, half::bf16::from_f32(*v).to_bits(), "bf16 of {v}");
    }
    let nan = [f32::NAN];
    let mut nan_bits = [0u16];
    unsafe {
        let cast: unsafe extern "C" fn(u32, u32, u32, *mut u16, C, i64) = emu.kernel("f32_to_bf16");
        cast(1, 1, 32, nan_bits.as_mut_ptr(), nan.as_ptr(), 1);
    }
    assert!(half::bf16::from_bits(nan_bits[0]).is_nan());
}

#[test]
fn embedding_rms_norm_rope_and_cross_entropy() {
    let Some(emu) = emulator() else { return };
    let (t, heads, d) = (9, 3, 10);
    let h = heads * d;
    let (x, w, dy) = (matrix(t, h, 7, 1.0), matrix(1, h, 8, 1.0), matrix(t, h, 9, 1.0));
    let table = matrix(20, h, 10, 1.0);
    let ids: Vec<u32> = vec![3, 7, 3, 0, 19, 3, 7, 11, 2]; // repeats: the backward's atomics add them
    unsafe {
        let embedding: unsafe extern "C" fn(u32, u32, u32, P, C, Ids, i32, i32) = emu.kernel("embedding");
        let mut out = zeros(t, h);
        embedding(EW.0, EW.1, EW.2, p(&mut out), c(&table), ids.as_ptr(), t as i32, h as i32);
        assert_close("embedding", &Cpu.embedding(&table, &ids), &out, 0.0);
        let embedding_backward: unsafe extern "C" fn(u32, u32, u32, P, C, Ids, i32, i32) =
            emu.kernel("embedding_backward");
        let mut dtable = zeros(20, h);
        embedding_backward(EW.0, EW.1, EW.2, p(&mut dtable), c(&dy), ids.as_ptr(), t as i32, h as i32);
        assert_close("embedding backward", &Cpu.embedding_backward(&dy, &ids, 20), &dtable, 1e-6);

        let rms_norm: unsafe extern "C" fn(u32, u32, u32, P, C, C, i32, f32) = emu.kernel("rms_norm");
        let (g0, g1, g2) = rows(t);
        let mut y = zeros(t, h);
        rms_norm(g0, g1, g2, p(&mut y), c(&x), c(&w), h as i32, 1e-6);
        assert_close("rms_norm", &Cpu.rms_norm(&x, &w, 1e-6, ReadBy::AnyOp), &y, 1e-6);
        let rms_backward: unsafe extern "C" fn(u32, u32, u32, P, P, C, C, C, i32, f32) =
            emu.kernel("rms_norm_backward");
        let (mut dx, mut dw_rows) = (zeros(t, h), zeros(t, h));
        rms_backward(g0, g1, g2, p(&mut dx), p(&mut dw_rows), c(&dy), c(&x), c(&w), h as i32, 1e-6);
        let (want_dx, want_dw) = Cpu.rms_norm_backward(&dy, &x, &w, 1e-6, true);
        assert_close("rms_norm dx", &want_dx, &dx, 1e-5);
        let want_dw = want_dw.expect("asked for");
        assert_close("rms_norm dw", &want_dw, &dw_rows.sum_axis(ndarray::Axis(0)).insert_axis(ndarray::Axis(0)), 1e-5);
        // a frozen norm's entry point: the same dx, bit for bit, and nothing else
        let rms_backward_input: unsafe extern "C" fn(u32, u32, u32, P, C, C, C, i32, f32) =
            emu.kernel("rms_norm_backward_input");
        let mut frozen_dx = zeros(t, h);
        rms_backward_input(g0, g1, g2, p(&mut frozen_dx), c(&dy), c(&x), c(&w), h as i32, 1e-6);
        assert_eq!(frozen_dx, dx, "rms_norm_backward_input");

        // LayerNorm on rows shifted far from zero (mean 3): the two-pass variance must not cancel
        let (shifted, bias) = (x.mapv(|v| v + 3.0), matrix(1, h, 11, 0.5));
        let layer_norm: unsafe extern "C" fn(u32, u32, u32, P, C, C, C, i32, f32) = emu.kernel("layer_norm");
        layer_norm(g0, g1, g2, p(&mut y), c(&shifted), c(&w), c(&bias), h as i32, 1e-5);
        assert_close("layer_norm", &Cpu.layer_norm(&shifted, &w, &bias, 1e-5, ReadBy::AnyOp), &y, 1e-5);
        let ln_backward: unsafe extern "C" fn(u32, u32, u32, P, P, C, C, C, i32, f32) =
            emu.kernel("layer_norm_backward");
        ln_backward(g0, g1, g2, p(&mut dx), p(&mut dw_rows), c(&dy), c(&shifted), c(&w), h as i32, 1e-5);
        let (want_dx, want_params) = Cpu.layer_norm_backward(&dy, &shifted, &w, 1e-5, true);
        let (want_dw, _) = want_params.expect("asked for");
        assert_close("layer_norm dx", &want_dx, &dx, 1e-5);
        let ln_backward_input: unsafe extern "C" fn(u32, u32, u32, P, C, C, C, i32, f32) =
            emu.kernel("layer_norm_backward_input");
        let mut frozen_dx = zeros(t, h);
        ln_backward_input(g0, g1, g2, p(&mut frozen_dx), c(&dy), c(&shifted), c(&w), h as i32, 1e-5);
        assert_eq!(frozen_dx, dx, "layer_norm_backward_input");
        assert_close(
            "layer_norm dw",
            &want_dw,
            &dw_rows.sum_axis(ndarray::Axis(0)).insert_axis(ndarray::Axis(0)),
            1e-5,
        );

        let rope: unsafe extern "C" fn(u32, u32, u32, P, C, Ids, C, i32, i32, i32, i32, f32) = emu.kernel("rope");
        let positions: Vec<usize> = (0..t).map(|i| 5 * i + 3).collect();
        let pos32: Vec<u32> = positions.iter().map(|&q| q as u32).collect();
        // full rotary (5 pairs per head of 10), then partial: 2 and 4 pairs rotate, the other 6 and 2 entries copy
        for half in [d / 2, 2, 4] {
            let inv_freq: Vec<f32> = (0..half).map(|i| 10_000f32.powf(-(i as f32) / half as f32)).collect();
            for (direction, input) in [(1.0, &x), (-1.0, &dy)] {
                // NaN-filled: an entry the kernel forgot to write (a pass-through copy) fails the comparison
                let mut rotated = Array2::from_elem((t, h), f32::NAN);
                rope(
                    EW.0,
                    EW.1,
                    EW.2,
                    p(&mut rotated),
                    c(input),
                    pos32.as_ptr(),
                    inv_freq.as_ptr(),
                    t as i32,
                    heads as i32,
                    d as i32,
                    half as i32,
                    direction,
                );
                let (what, want) = if direction > 0.0 {
                    ("rope", Cpu.rope(input, heads, d, &positions, &inv_freq))
                } else {
                    ("rope backward", Cpu.rope_backward(input, heads, d, &positions, &inv_freq))
                };
                assert_close(&format!("{what}, {half} of {} pairs rotated", d / 2), &want, &rotated, 1e-5);
            }
        }

        let cross_entropy: unsafe extern "C" fn(u32, u32, u32, P, P, C, Ids, C, i32) = emu.kernel("cross_entropy");
        let vocab = 333;
        let logits = matrix(t, vocab, 11, 3.0);
        let targets: Vec<u32> = (0..t as u32).map(|i| (i * 37) % vocab as u32).collect();
        let weights: Vec<f32> = (0..t).map(|i| if i % 3 == 0 { 0.0 } else { 0.125 }).collect();
        let (mut losses, mut dlogits) = (zeros(1, t), zeros(t, vocab));
        let (g0, g1, g2) = rows(t);
        cross_entropy(
            g0,
            g1,
            g2,
            p(&mut losses),
            p(&mut dlogits),
            c(&logits),
            targets.as_ptr(),
            weights.as_ptr(),
            vocab as i32,
        );
        let (want_losses, want_dlogits) = Cpu.cross_entropy(&logits, &targets, &weights);
        assert_close("cross_entropy losses", &Array2::from_shape_vec((1, t), want_losses).unwrap(), &losses, 1e-6);
        assert_close("cross_entropy dlogits", &want_dlogits, &dlogits, 1e-6);
    }
}

#[test]
fn fused_qkv_split_and_join_kernels() {
    let Some(emu) = emulator() else { return };
    // (tokens, query heads, key/value heads, head_dim, groups)
    for (t, heads, kv_heads, d, groups) in [
        (5, 4, 1, 3, 1), // GPT-BigCode multi-query: [q | k | v] blocks
        (4, 3, 3, 2, 3), // GPT-NeoX: per head [qₕ, kₕ, vₕ]
        (3, 6, 2, 4, 2), // GQA in two groups of [3 q heads | 1 k head | 1 v head]
        (7, 4, 2, 5, 1), // GQA in one block, head_dim odd
    ] {
        let shape = AttentionShape::new(heads, kv_heads, d, 1.0);
        let layout = FusedQkv { groups };
        let (qw, kw) = (heads / groups * d, kv_heads / groups * d);
        let qkv = matrix(t, (heads + 2 * kv_heads) * d, 22, 1.0);
        let (want_q, want_k, want_v) = Cpu.split_qkv(&qkv, &shape, layout);
        let what = format!("fused qkv: {t} tokens, {heads} q / {kv_heads} kv heads of {d}, {groups} groups");
        // NaN-filled: an entry the kernel forgot to write fails the comparison
        let nans = |cols: usize| Array2::from_elem((t, cols), f32::NAN);
        let (mut q, mut k, mut v) = (nans(heads * d), nans(kv_heads * d), nans(kv_heads * d));
        let (dq, dk, dv) =
            (matrix(t, heads * d, 23, 1.0), matrix(t, kv_heads * d, 24, 1.0), matrix(t, kv_heads * d, 25, 1.0));
        let mut joined = nans(qkv.ncols());
        let (ti, g, qw, kw) = (t as i32, groups as i32, qw as i32, kw as i32);
        unsafe {
            let split: unsafe extern "C" fn(u32, u32, u32, P, P, P, C, i32, i32, i32, i32) = emu.kernel("split_qkv");
            split(EW.0, EW.1, EW.2, p(&mut q), p(&mut k), p(&mut v), c(&qkv), ti, g, qw, kw);
            let join: unsafe extern "C" fn(u32, u32, u32, P, C, C, C, i32, i32, i32, i32) = emu.kernel("join_qkv");
            join(EW.0, EW.1, EW.2, p(&mut joined), c(&dq), c(&dk), c(&dv), ti, g, qw, kw);
        }
        assert_close(&format!("{what}: join"), &Cpu.join_qkv(&dq, &dk, &dv, &shape, layout), &joined, 0.0);
        assert_close(&format!("{what}: q"), &want_q, &q, 0.0);
        assert_close(&format!("{what}: k"), &want_k, &k, 0.0);
        assert_close(&format!("{what}: v"), &want_v, &v, 0.0);
    }
}

#[test]
fn row_scale_and_row_dot_kernels() {
    let Some(emu) = emulator() else { return };
    // (rows, hidden): rows longer than a block (128 threads here, 256 in the backend), one row, one column
    for (t, h) in [(6, 45), (5, 300), (3, 1000), (1, 37), (1, 513), (7, 1), (1, 1)] {
        let (x, a, b) = (matrix(t, h, 31, 1.0), matrix(t, h, 32, 1.0), matrix(t, h, 33, 2.0));
        // a zero weight (an expert slot a token did not pick) and negative ones
        let weights: Vec<f32> = (0..t).map(|i| if i == 1 { 0.0 } else { 0.75 - 0.4 * i as f32 }).collect();
        // NaN-filled: an entry the kernel forgot to write fails the comparison
        let (mut y, mut dots) = (Array2::from_elem((t, h), f32::NAN), Array2::from_elem((1, t), f32::NAN));
        unsafe {
            let scale_rows: unsafe extern "C" fn(u32, u32, u32, P, C, C, i32, i32) = emu.kernel("scale_rows");
            scale_rows(EW.0, EW.1, EW.2, p(&mut y), c(&x), weights.as_ptr(), t as i32, h as i32);
            let row_dots: unsafe extern "C" fn(u32, u32, u32, P, C, C, i32) = emu.kernel("row_dots");
            let (g0, g1, g2) = rows(t);
            row_dots(g0, g1, g2, p(&mut dots), c(&a), c(&b), h as i32);
        }
        let what = format!("{t} rows of {h}");
        // the same one f32 product per entry on both sides
        assert_close(&format!("scale_rows, {what}"), &Cpu.scale_rows(&x, &weights), &y, 0.0);
        // float partials and a warp-shuffle tree against the CPU's sequential f64 sum
        let want = Array2::from_shape_vec((1, t), Cpu.row_dots(&a, &b)).unwrap();
        assert_close(&format!("row_dots, {what}"), &want, &dots, 1e-6);
    }
}

/// The attention launch shapes, as `Cuda::attention_forward` / `attention_backward` (src/backend/cuda/attention.rs)
/// choose them: up to `TILED_MAX_D` the tiled kernels on a grid of (⌈rows / TILE_WARPS⌉, heads) blocks of
/// TILE_WARPS warps; above it the per-key kernels, one warp per (row, head), 4 warps per block.
const TILE_WARPS: usize = 8;
const TILED_MAX_D: usize = 128;

fn tile_grid(rows: usize, heads: usize) -> (u32, u32, u32) {
    (rows.div_ceil(TILE_WARPS).max(1) as u32, heads as u32, 32 * TILE_WARPS as u32)
}

/// The value of `#define NAME value` in a kernel source.
fn define(source: &str, name: &str) -> usize {
    let line = source.lines().find_map(|l| l.strip_prefix(&format!("#define {name} "))).expect(name);
    line.split_whitespace().next().and_then(|v| v.parse().ok()).expect(name)
}

#[test]
fn the_attention_launch_shapes_match_the_kernel_source() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/backend/cuda/kernels/attention.cu");
    let source = std::fs::read_to_string(path).unwrap();
    assert_eq!(define(&source, "TILE_WARPS"), TILE_WARPS, "warps per block");
    assert_eq!(define(&source, "TILED_MAX_D"), TILED_MAX_D, "largest tiled head_dim");
}

/// (tq, cached keys, KV heads, query heads per KV head, head_dim, packed, sliding window)
type AttentionCase = (usize, usize, usize, usize, usize, bool, Option<usize>);

/// What a case adds to the scores: ALiBi, a clamp, and a factor on q (large q makes scores pass the clamp),
/// and the relative tolerance: 1e-5, or 1e-3 where scores are near ±1024 — there an f32 score carries an
/// absolute rounding of ~1e-4, so p = exp(s − lse) carries ~1e-4 relative, whatever the order of summation.
#[derive(Clone, Copy, Debug)]
struct ScoreExtras {
    alibi: bool,
    clamp: Option<f32>,
    q_scale: f64,
    tol: f32,
}

const PLAIN: ScoreExtras = ScoreExtras { alibi: false, clamp: None, q_scale: 1.0, tol: 1e-5 };

fn attention_case(emu: &Emulator, (tq, cached, kv_heads, group, d, packed, window): AttentionCase, x: ScoreExtras) {
    let (heads, tk) = (kv_heads * group, cached + tq);
    let shape = AttentionShape {
        alibi: x.alibi,
        score_clamp: x.clamp,
        ..AttentionShape::new(heads, kv_heads, d, 1.0 / (d as f32).sqrt())
    };
    // three documents of uneven length
    let segments: Vec<u32> = (0..tk).map(|j| u32::from(j >= tk / 3) + u32::from(j >= tk - tk / 4)).collect();
    let mask = AttentionMask { q_offset: cached, segment_ids: packed.then_some(segments.as_slice()), window };
    let (q, k, v) =
        (matrix(tq, heads * d, 12, x.q_scale), matrix(tk, kv_heads * d, 13, 1.0), matrix(tk, kv_heads * d, 14, 1.0));
    let dout = matrix(tq, heads * d, 15, 1.0);
    let (out, lse) = Cpu.causal_attention_with_lse(&q, &k, &v, &shape, &mask, ReadBy::AnyOp);
    let (dq, dk, dv) = Cpu.causal_attention_backward(&dout, &q, &k, &v, &out, &lse, &shape, &mask);
    if x.clamp.is_some() {
        let unclamped = Cpu.causal_attention(&q, &k, &v, &AttentionShape { score_clamp: None, ..shape }, &mask);
        let moved = out.iter().zip(&unclamped).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(moved > 1e-2, "{x:?}: the clamp never bound (output moved by {moved})");
    }

    let dims = AttentionDims::new(tq, tk, &shape, &mask);
    let (first, last) = segment_bounds(&segments);
    let null: Ids = std::ptr::null();
    let (seg, seg_first, seg_last) =
        if packed { (segments.as_ptr(), first.as_ptr(), last.as_ptr()) } else { (null, null, null) };
    // the kernels and grids attention.rs launches for this head_dim
    let tiled = d <= TILED_MAX_D;
    let suffix = if tiled { "tiled" } else { "per_key" };
    let (per_query, per_key) =
        if tiled { (tile_grid(tq, heads), tile_grid(tk, kv_heads)) } else { (warps(tq * heads), warps(tk * kv_heads)) };
    let what = format!(
        "attention ({suffix}) tq {tq} cached {cached} kv {kv_heads}×{group} d {d} packed {packed} window {window:?} {x:?}"
    );
    unsafe {
        let forward: unsafe extern "C" fn(u32, u32, u32, P, P, C, C, C, Ids, Ids, AttentionDims) =
            emu.kernel(&format!("attention_forward_{suffix}"));
        let (g0, g1, g2) = per_query;
        let (mut e_out, mut e_lse) = (zeros(tq, heads * d), zeros(tq, heads));
        forward(g0, g1, g2, p(&mut e_out), p(&mut e_lse), c(&q), c(&k), c(&v), seg, seg_first, dims);
        assert_close(&format!("{what}: out"), &out, &e_out, x.tol);
        assert_close(&format!("{what}: lse"), &lse, &e_lse, x.tol);

        // attention_delta is one warp per (query, head) for every head_dim
        let delta_k: unsafe extern "C" fn(u32, u32, u32, P, C, C, AttentionDims) = emu.kernel("attention_delta");
        let (w0, w1, w2) = warps(tq * heads);
        let mut delta = zeros(tq, heads);
        delta_k(w0, w1, w2, p(&mut delta), c(&dout), c(&out), dims);
        let dq_k: unsafe extern "C" fn(u32, u32, u32, P, C, C, C, C, C, C, Ids, Ids, AttentionDims) =
            emu.kernel(&format!("attention_backward_dq_{suffix}"));
        let mut e_dq = zeros(tq, heads * d);
        dq_k(g0, g1, g2, p(&mut e_dq), c(&dout), c(&q), c(&k), c(&v), c(&lse), c(&delta), seg, seg_first, dims);
        assert_close(&format!("{what}: dq"), &dq, &e_dq, x.tol);

        let dkdv_k: unsafe extern "C" fn(u32, u32, u32, P, P, C, C, C, C, C, C, Ids, Ids, AttentionDims) =
            emu.kernel(&format!("attention_backward_dkdv_{suffix}"));
        let (k0, k1, k2) = per_key;
        // NaN-filled: a row the kernel forgot to write fails the comparison
        let (mut e_dk, mut e_dv) =
            (Array2::from_elem((tk, kv_heads * d), f32::NAN), Array2::from_elem((tk, kv_heads * d), f32::NAN));
        dkdv_k(
            k0,
            k1,
            k2,
            p(&mut e_dk),
            p(&mut e_dv),
            c(&dout),
            c(&q),
            c(&k),
            c(&v),
            c(&lse),
            c(&delta),
            seg,
            seg_last,
            dims,
        );
        // dK = scale·Σᵢ dSᵢⱼ·qᵢ with dSᵢⱼ = Pᵢⱼ·(dPᵢⱼ − Dᵢ), a difference that cancels to ~0 where one key takes
        // the whole row (P = 1, so D = dP). What is left is f32 rounding, ε·|dP| ≈ ε·√d, which dK multiplies
        // by scale·|q| for each query: negligible for unit-size q, ~10⁻³ for Aquila's q × 3000, where dK itself
        // is no larger (the clamp zeroes the rest), so the two orders of summation may disagree by that much.
        let largest_q = q.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let ds_noise = f32::EPSILON * (d as f32).sqrt();
        let dk_noise = ds_noise * shape.scale * largest_q * tq as f32;
        assert_close_above_noise(&format!("{what}: dk"), &dk, &e_dk, x.tol, dk_noise);
        assert_close(&format!("{what}: dv"), &dv, &e_dv, x.tol);
    }
}

#[test]
fn attention_forward_and_backward_kernels() {
    let Some(emu) = emulator() else { return };
    for case in [
        // tiled (head_dim ≤ 128): 8 query rows (or keys) per block, tiles of 32 keys (or queries)
        (7, 0, 1, 1, 8, false, None), // one head, head_dim below a warp, 7 rows: less than one block
        (12, 0, 2, 2, 48, true, None), // GQA, head_dim not a multiple of 32, three packed documents
        (5, 6, 1, 4, 64, false, None), // queries after 6 cached keys, MQA (one KV head, 4 query heads)
        (9, 3, 2, 1, 128, true, None), // cached keys and segments together, tq not a multiple of 8
        (1, 40, 2, 2, 64, false, None), // decoding: one query after 40 cached keys, tk = 41 (two key tiles), GQA
        (1, 44, 1, 3, 48, true, None), // decoding in a packed batch: only the last document's 11 keys are seen
        (70, 0, 2, 2, 64, true, None), // three key tiles, tk = 70 not a multiple of 32, documents across tiles
        (37, 30, 1, 3, 48, true, None), // 30 cached keys, packed, MQA: blocks whose keys start mid-tile
        (33, 0, 1, 2, 128, false, None), // the last query one past a tile boundary
        // sliding windows (Mistral, Qwen2): key j is visible from position p iff p − j < window
        (40, 0, 2, 2, 64, false, Some(8)), // tiled: each query sees at most 8 keys
        (70, 0, 1, 2, 48, true, Some(33)), // windows longer than a tile, with documents
        (1, 44, 1, 3, 48, false, Some(5)), // decoding: the last 5 of 45 keys
        (12, 3, 1, 1, 32, false, Some(1)), // a window of 1: every query sees only itself
        // per-key fallback (128 < head_dim ≤ 256)
        (11, 5, 2, 2, 256, true, None),
        (6, 0, 1, 2, 200, false, None),
        (20, 10, 2, 1, 256, true, Some(7)),
    ] {
        attention_case(emu, case, PLAIN);
    }
}

/// ALiBi (head counts that are and are not powers of two) and the clamp: a small bound that many normal scores
/// pass, and Aquila2's 1024 with q × 3000 so that most scores lie beyond ±1024 (checked: the clamp changes the
/// output).
#[test]
fn attention_kernels_with_alibi_and_the_score_clamp() {
    let Some(emu) = emulator() else { return };
    let alibi = ScoreExtras { alibi: true, ..PLAIN };
    let small_clamp = ScoreExtras { clamp: Some(0.5), ..PLAIN };
    let aquila = ScoreExtras { clamp: Some(1024.0), q_scale: 3000.0, tol: 1e-3, ..PLAIN };
    for (case, extras) in [
        ((12, 0, 5, 1, 48, true, None), alibi), // 5 heads: the interleaved slopes, packed documents
        ((9, 3, 2, 2, 64, false, None), alibi), // 4 heads after cached keys
        ((1, 44, 3, 1, 48, true, None), alibi), // decoding in a packed batch, 3 heads
        ((70, 0, 3, 2, 32, true, Some(33)), alibi), // 6 heads, tiles, documents and a window
        ((11, 5, 5, 1, 256, true, None), alibi), // per-key kernels
        ((12, 0, 2, 2, 48, true, None), small_clamp),
        ((5, 6, 1, 4, 64, false, None), small_clamp),
        ((11, 5, 2, 2, 256, true, None), small_clamp),
        ((12, 3, 2, 2, 64, false, None), aquila),
        ((6, 0, 1, 2, 200, false, None), aquila),
    ] {
        attention_case(emu, case, extras);
    }
}

/// All four dequantization kernels (f32 and bf16 out, plain and double-quantized absmax) against the CPU,
/// bitwise: the whole matrix and a band of rows starting mid-matrix (the banded products' launches). The
/// double-quant scale is `__fadd_rn(__fmul_rn(map, nested), offset)` on the device and the same two roundings on
/// the CPU; bf16 is the `half` crate's round-to-nearest-even of the f32 value.
#[test]
fn four_bit_dequantization_kernels() {
    let Some(emu) = emulator() else { return };
    type Plain = unsafe extern "C" fn(u32, u32, u32, *mut u8, *const u8, C, C, i64, i64, i32);
    type Double = unsafe extern "C" fn(u32, u32, u32, *mut u8, *const u8, *const u8, C, C, f32, C, i64, i64, i32);
    for (quant_type, double_quant, (r, n)) in
        [(QuantType::Nf4, true, (40, 64 * 7)), (QuantType::Fp4, false, (9, 37)), (QuantType::Nf4, true, (300, 61))]
    {
        let w = matrix(r, n, 16, 0.05);
        let q = Quantized4bit::quantize_with(w.view(), quant_type, QuantOptions { double_quant, ..Default::default() })
            .unwrap();
        let want = q.dequantize();
        let want: Vec<f32> = want.iter().copied().collect();
        for (row0, rows) in [(0, r), (r / 3, r - r / 3 - 1)] {
            let (start, count) = (row0 * n, rows * n);
            let want = &want[start..start + count];
            for bf16 in [false, true] {
                let mut out = vec![0u8; count * if bf16 { 2 } else { 4 }];
                let (bs, code) = (q.blocksize as i32, q.quant_type.code().as_ptr());
                let (o, pk, s0, c0) = (out.as_mut_ptr(), q.packed.as_ptr(), start as i64, count as i64);
                let variant = match (&q.absmax, bf16) {
                    (mftcoder::quant::Absmax::Plain(_), false) => "dequantize_4bit",
                    (mftcoder::quant::Absmax::Plain(_), true) => "dequantize_4bit_bf16",
                    (mftcoder::quant::Absmax::Double(_), false) => "dequantize_4bit_dq",
                    (mftcoder::quant::Absmax::Double(_), true) => "dequantize_4bit_dq_bf16",
                };
                unsafe {
                    match &q.absmax {
                        mftcoder::quant::Absmax::Plain(a) => {
                            let kernel: Plain = emu.kernel(variant);
                            kernel(EW.0, EW.1, EW.2, o, pk, a.as_ptr(), code, s0, c0, bs)
                        }
                        mftcoder::quant::Absmax::Double(dq) => {
                            let kernel: Double = emu.kernel(variant);
                            let (codes, nested, map) =
                                (dq.codes.as_ptr(), dq.nested_absmax.as_ptr(), dq.nested_quant_map.as_ptr());
                            kernel(EW.0, EW.1, EW.2, o, pk, codes, nested, map, dq.offset, code, s0, c0, bs)
                        }
                    }
                }
                let mismatch = if bf16 {
                    let got: Vec<u16> = out.chunks(2).map(|b| u16::from_ne_bytes([b[0], b[1]])).collect();
                    got.iter().zip(want).position(|(g, w)| *g != half::bf16::from_f32(*w).to_bits())
                } else {
                    let got: Vec<u32> = out.chunks(4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect();
                    got.iter().zip(want).position(|(g, w)| *g != w.to_bits())
                };
                assert_eq!(mismatch, None, "{variant} ({quant_type:?}, rows {row0}..+{rows} of {r}×{n}): not bitwise");
            }
        }
    }
}

#[test]
fn adamw_and_sum_of_squares_kernels() {
    let Some(emu) = emulator() else { return };
    let (r, n) = (13, 29);
    let k = AdamWScalars {
        decay_factor: 0.999,
        one_minus_beta1: 0.1,
        beta2: 0.999,
        one_minus_beta2: 0.001,
        bias_correction2_sqrt: 0.0447,
        eps: 1e-8,
        neg_step_size: -0.0105,
    };
    let (mut p_cpu, g, mut m_cpu) = (matrix(r, n, 17, 1.0), matrix(r, n, 18, 0.3), matrix(r, n, 19, 0.1));
    let mut v_cpu = matrix(r, n, 20, 0.1).mapv(|x| x * x);
    let (mut p_k, mut m_k, mut v_k) = (p_cpu.clone(), m_cpu.clone(), v_cpu.clone());
    adamw_update_matrix(&mut p_cpu, &g, &mut m_cpu, &mut v_cpu, &k);
    unsafe {
        let adamw: unsafe extern "C" fn(u32, u32, u32, P, C, P, P, i64, f32, f32, f32, f32, f32, f32, f32) =
            emu.kernel("adamw");
        adamw(
            EW.0,
            EW.1,
            EW.2,
            p(&mut p_k),
            c(&g),
            p(&mut m_k),
            p(&mut v_k),
            (r * n) as i64,
            k.decay_factor,
            k.one_minus_beta1,
            k.beta2,
            k.one_minus_beta2,
            k.bias_correction2_sqrt,
            k.eps,
            k.neg_step_size,
        );
    }
    // the same operations in the same order, fused where the CPU fuses: bit for bit
    assert_eq!(p_cpu, p_k, "AdamW parameters");
    assert_eq!(m_cpu, m_k, "AdamW first moments");
    assert_eq!(v_cpu, v_k, "AdamW second moments");

    let x = matrix(301, 7, 21, 2.0);
    let blocks = 3;
    let mut partial = vec![0.0f32; blocks];
    unsafe {
        let sum_squares: unsafe extern "C" fn(u32, u32, u32, P, C, i64) = emu.kernel("sum_squares");
        sum_squares(blocks as u32, 1, 64, partial.as_mut_ptr(), c(&x), x.len() as i64);
    }
    let (want, got) = (matrix_sum_squares(&x), partial.iter().map(|&v| v as f64).sum::<f64>());
    assert!((want - got).abs() <= 1e-6 * want, "sum of squares: cpu {want}, kernel {got}");
}

/// splitmix64 of (seed, index), the top 24 bits: the draw random.cu makes, written again here from its
/// definition so the kernel is checked against the formula, not against itself.
fn uniform24(seed: u64, i: u64) -> u32 {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as u32
}

#[test]
fn dropout_mask_kernel() {
    let Some(emu) = emulator() else { return };
    let (r, n, p_drop) = (64, 100, 0.1f32);
    let (threshold, keep) = dropout_threshold(p_drop);
    let draw = |seed: u64| {
        let mut mask = zeros(r, n);
        unsafe {
            let kernel: unsafe extern "C" fn(u32, u32, u32, P, i64, u64, u32, f32) = emu.kernel("dropout_mask");
            kernel(EW.0, EW.1, EW.2, p(&mut mask), (r * n) as i64, seed, threshold, keep);
        }
        mask
    };
    let mask = draw(42);
    let want =
        Array2::from_shape_fn((r, n), |(i, j)| if uniform24(42, (i * n + j) as u64) >= threshold { keep } else { 0.0 });
    assert_eq!(mask, want, "the kernel's mask is the formula's");
    let dropped = mask.iter().filter(|&&v| v == 0.0).count() as f64 / mask.len() as f64;
    // 6400 Bernoulli(0.1) draws: standard deviation 0.00375, so 0.1 ± 0.015 is four of them
    assert!((dropped - 0.1).abs() < 0.015, "dropped fraction {dropped}");
    assert!(mask.iter().all(|&v| v == 0.0 || v == keep));
    assert_eq!(draw(42), mask, "a pure function of the seed");
    assert_ne!(draw(43), mask, "another seed, another mask");

    // LoRA's fused dropout: x ∘ m and dx += g ∘ m with the mask drawn inside, bit for bit the stored mask's
    let (x, g, dx0) = (matrix(r, n, 21, 1.0), matrix(r, n, 22, 1.0), matrix(r, n, 23, 1.0));
    let (mut applied, mut dx) = (zeros(r, n), dx0.clone());
    unsafe {
        let apply: unsafe extern "C" fn(u32, u32, u32, P, C, i64, u64, u32, f32) = emu.kernel("dropout_apply");
        apply(EW.0, EW.1, EW.2, p(&mut applied), c(&x), (r * n) as i64, 42, threshold, keep);
        let add: unsafe extern "C" fn(u32, u32, u32, P, C, i64, u64, u32, f32) = emu.kernel("dropout_add");
        add(EW.0, EW.1, EW.2, p(&mut dx), c(&g), (r * n) as i64, 42, threshold, keep);
    }
    assert_eq!(applied, &x * &mask, "dropout_apply is x ∘ mask");
    assert_eq!(dx, &dx0 + &(&g * &mask), "dropout_add is dx + g ∘ mask");
}
