//! The tensor-core attention kernels (`src/backend/cuda/kernels/flash_attention.cu`, what `Precision::Bf16`
//! runs), executed on the CPU by the kernel emulator (`tests/kernel_emulator/harness.cpp`, the .cu source
//! unchanged, `mma_bf16_16x8x16` by its plain C++ definition) and compared with the CPU reference attention
//! (`nn::attention`). First the fragment layout of the matrix instruction, bit for bit; then forward and
//! backward on masks, windows, GQA, ALiBi, head_dim 64/128/256 and sizes that are not multiples of the tiles.
//!
//! Tolerance (relative to the largest magnitude of the CPU result, `max|Δ| ≤ tol · max(max|cpu|, 1)`, as in
//! tests/cuda_vs_cpu.rs). bf16 keeps 8 significant bits: rounding a value moves it by at most u = 2⁻⁹ ≈ 2e-3
//! relative. A score s = scale·Σ_e q_e·k_e over d terms of random sign, each term carrying ≤ 2u from its two
//! rounded operands and the sum kept in f32, moves by about 2u·√d·rms(term) = 2u·|s|-scale: with s ~ 1 that
//! is ≈ 4e-3 absolute, which becomes ≈ 4e-3 relative in p = exp(s − lse) and in the lse itself. The output
//! O = Σ_j p_j·v_j / l rounds p and v once more (2u) and averages, so its error is ≈ 6e-3 of max|v|, below the
//! 2e-2 of a bf16 product (cuda_vs_cpu.rs), which is the forward's tolerance here. The gradients chain one more
//! rounded product: dS = P ∘ (dO·Vᵀ − delta) carries the errors of P and of dO·Vᵀ (≈ 4e-3 each) and is rounded
//! again before dQ = dS·K and dK = dSᵀ·Q (another 2u per term): ≈ 1e-2 of their scale, and 3e-2 leaves room for
//! unlucky draws. The errors measured are printed (`--nocapture`); they sit well inside these bounds.

use mftcoder::backend::cpu::Cpu;
use mftcoder::backend::{AttentionDims, AttentionMask, AttentionShape, Backend, ReadBy, segment_bounds};
use mftcoder::rng::Rng;
use ndarray::Array2;

#[path = "kernel_emulator/compile.rs"]
mod compile;
#[path = "kernel_emulator/harness_library.rs"]
mod harness_library;
use harness_library::{Emulator, emulator};

/// The tolerance of the forward (out, lse) and of the gradients (dq, dk, dv); see the module docs.
const FORWARD_TOL: f32 = 2e-2;
const BACKWARD_TOL: f32 = 3e-2;

type P = *mut f32;
type C = *const f32;
type Ids = *const u32;

fn matrix(r: usize, c: usize, seed: u64, scale: f64) -> Array2<f32> {
    let mut rng = Rng::new(seed);
    Array2::from_shape_fn((r, c), |_| (rng.normal() * scale) as f32)
}

/// f32 → bf16 bits, round to nearest even (common.cuh's `f32_to_bf16_bits`), and back.
fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}
fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `max|Δ| / max(max|cpu|, 1)`, the measure every tolerance here bounds.
fn relative_error(want: &Array2<f32>, got: &Array2<f32>) -> f32 {
    assert_eq!(want.dim(), got.dim());
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let worst =
        want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0.0f32, |m, x| if x.is_nan() { x } else { m.max(x) });
    worst / scale
}

// ---- the matrix instruction ----

/// c [16 × 8] = a [16 × 16] · b [16 × 8] through `mma_bf16_16x8x16` on one warp, b given by column.
fn tile_product(emu: &Emulator, a: &[u16; 256], b_by_column: &[u16; 128]) -> [f32; 128] {
    let mut c = [f32::NAN; 128];
    let product: unsafe extern "C" fn(u32, u32, u32, *mut f32, *const u16, *const u16) =
        emu.kernel("mma_bf16_tile_product");
    // SAFETY: one warp reads 256 + 128 bf16s and writes 128 floats, the sizes of these arrays.
    unsafe { product(1, 1, 32, c.as_mut_ptr(), a.as_ptr(), b_by_column.as_ptr()) };
    c
}

/// The fragment layout, bit for bit: with small integers every sum is exact in any order, so a product that
/// takes any element from the wrong lane or register differs from the plain one (as it would on a GPU, whose
/// summation order is its own). Then arbitrary bf16s, summed in k order: on the emulator also bit for bit.
#[test]
fn the_matrix_instruction_fragment_layout_is_a_plain_product() {
    let Some(emu) = emulator() else { return };
    let mut rng = Rng::new(7);
    for integers in [true, false] {
        let mut draw = || {
            let x = rng.normal() * 6.0;
            bf16_bits(if integers { x.round() as f32 } else { x as f32 })
        };
        let a: [u16; 256] = std::array::from_fn(|_| draw());
        let b: [u16; 128] = std::array::from_fn(|_| draw()); // b[n·16 + k]
        let c = tile_product(emu, &a, &b);
        for m in 0..16 {
            for n in 0..8 {
                let want = (0..16).fold(0.0f32, |s, k| from_bf16(a[m * 16 + k]).mul_add(from_bf16(b[n * 16 + k]), s));
                assert_eq!(c[m * 8 + n].to_bits(), want.to_bits(), "C[{m}][{n}] (integers {integers})");
            }
        }
    }
    // and a single 1 moves to where the layout says: A = e_m e_kᵀ, B = e_k e_nᵀ gives C = e_m e_nᵀ
    for (m, k, n) in [(0, 0, 0), (15, 15, 7), (9, 3, 5), (4, 12, 2), (8, 8, 1)] {
        let (mut a, mut b) = ([0u16; 256], [0u16; 128]);
        a[m * 16 + k] = bf16_bits(1.0);
        b[n * 16 + k] = bf16_bits(1.0);
        let c = tile_product(emu, &a, &b);
        for (at, &value) in c.iter().enumerate() {
            assert_eq!(value, if at == m * 8 + n { 1.0 } else { 0.0 }, "one at A[{m}][{k}], B[{k}][{n}]: C[{at}]");
        }
    }
}

// ---- attention ----

/// (tq, cached keys, KV heads, query heads per KV head, head_dim, packed, sliding window, ALiBi)
type Case = (usize, usize, usize, usize, usize, bool, Option<usize>, bool);

/// The kernel of `pass` compiled for the smallest head_dim bound that holds d (attention.rs's choice).
fn flash_kernel(pass: &str, d: usize) -> String {
    let bound = match d {
        0..=64 => 64,
        65..=128 => 128,
        _ => 256,
    };
    format!("flash_attention_{pass}_d{bound}")
}

/// (tq rows, heads) → the grid attention.rs launches: ⌈rows / 64⌉ × heads blocks of 4 warps.
fn grid(rows: usize, heads: usize) -> (u32, u32, u32) {
    (rows.div_ceil(64).max(1) as u32, heads as u32, 128)
}

/// One case forward and backward, on the CPU and the emulated kernels; the relative errors of out, lse, dq, dk
/// and dv.
fn flash_case(emu: &Emulator, case: Case, seed: u64) -> [f32; 5] {
    let (tq, cached, kv_heads, group, d, packed, window, alibi) = case;
    let (heads, tk) = (kv_heads * group, cached + tq);
    let shape = AttentionShape { alibi, ..AttentionShape::new(heads, kv_heads, d, 1.0 / (d as f32).sqrt()) };
    // three documents of uneven length
    let segments: Vec<u32> = (0..tk).map(|j| u32::from(j >= tk / 3) + u32::from(j >= tk - tk / 4)).collect();
    let mask = AttentionMask { q_offset: cached, segment_ids: packed.then_some(segments.as_slice()), window };
    let (q, k, v) = (
        matrix(tq, heads * d, seed, 1.0),
        matrix(tk, kv_heads * d, seed + 1, 1.0),
        matrix(tk, kv_heads * d, seed + 2, 1.0),
    );
    let dout = matrix(tq, heads * d, seed + 3, 1.0);
    let (out, lse) = Cpu.causal_attention_with_lse(&q, &k, &v, &shape, &mask, ReadBy::AnyOp);
    let (dq, dk, dv) = Cpu.causal_attention_backward(&dout, &q, &k, &v, &out, &lse, &shape, &mask);

    let dims = AttentionDims::new(tq, tk, &shape, &mask);
    let (first, last) = segment_bounds(&segments);
    let null: Ids = std::ptr::null();
    let (seg, seg_first, seg_last) =
        if packed { (segments.as_ptr(), first.as_ptr(), last.as_ptr()) } else { (null, null, null) };
    let (pq, pk) = (grid(tq, heads), grid(tk, kv_heads));
    // NaN-filled: an entry a kernel forgot to write fails the comparison
    let nan = |r: usize, c: usize| Array2::from_elem((r, c), f32::NAN);
    let (mut e_out, mut e_lse, mut delta) = (nan(tq, heads * d), nan(tq, heads), nan(tq, heads));
    let (mut e_dq, mut e_dk, mut e_dv) = (nan(tq, heads * d), nan(tk, kv_heads * d), nan(tk, kv_heads * d));
    // SAFETY: every buffer has the shape the kernels index for these dims; the segment tables hold tk entries.
    unsafe {
        let forward: unsafe extern "C" fn(u32, u32, u32, P, P, C, C, C, Ids, Ids, AttentionDims) =
            emu.kernel(&flash_kernel("forward", d));
        forward(
            pq.0,
            pq.1,
            pq.2,
            e_out.as_mut_ptr(),
            e_lse.as_mut_ptr(),
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            seg,
            seg_first,
            dims,
        );
        // the backward's row term from the kernel's own output, as attention.rs computes it
        let delta_k: unsafe extern "C" fn(u32, u32, u32, P, C, C, AttentionDims) = emu.kernel("attention_delta");
        delta_k((tq * heads).div_ceil(4) as u32, 1, 128, delta.as_mut_ptr(), dout.as_ptr(), e_out.as_ptr(), dims);
        let dq_k: unsafe extern "C" fn(u32, u32, u32, P, C, C, C, C, C, C, Ids, Ids, AttentionDims) =
            emu.kernel(&flash_kernel("dq", d));
        let (o, l, dl) = (dout.as_ptr(), e_lse.as_ptr(), delta.as_ptr());
        dq_k(pq.0, pq.1, pq.2, e_dq.as_mut_ptr(), o, q.as_ptr(), k.as_ptr(), v.as_ptr(), l, dl, seg, seg_first, dims);
        let dkdv_k: unsafe extern "C" fn(u32, u32, u32, P, P, C, C, C, C, C, C, Ids, Ids, AttentionDims) =
            emu.kernel(&flash_kernel("dkdv", d));
        let (ek, ev) = (e_dk.as_mut_ptr(), e_dv.as_mut_ptr());
        dkdv_k(pk.0, pk.1, pk.2, ek, ev, o, q.as_ptr(), k.as_ptr(), v.as_ptr(), l, dl, seg, seg_last, dims);
    }
    let errors = [
        relative_error(&out, &e_out),
        relative_error(&lse, &e_lse),
        relative_error(&dq, &e_dq),
        relative_error(&dk, &e_dk),
        relative_error(&dv, &e_dv),
    ];
    eprintln!(
        "flash {case:?}: relative errors out {:.1e} lse {:.1e} dq {:.1e} dk {:.1e} dv {:.1e}",
        errors[0], errors[1], errors[2], errors[3], errors[4]
    );
    for (what, (err, tol)) in ["out", "lse", "dq", "dk", "dv"].iter().zip(errors.iter().zip([
        FORWARD_TOL,
        FORWARD_TOL,
        BACKWARD_TOL,
        BACKWARD_TOL,
        BACKWARD_TOL,
    ])) {
        assert!(*err <= tol, "flash {case:?}: {what} relative error {err:e} > {tol:e}");
    }
    errors
}

#[test]
fn flash_attention_forward_and_backward_match_the_cpu() {
    let Some(emu) = emulator() else { return };
    let mut worst = [0.0f32; 5];
    for (n, case) in [
        (7, 0, 1, 1, 64, false, None, false),     // less than one block, one head
        (70, 0, 2, 2, 64, false, None, false),    // two query blocks, three key tiles, GQA, tq not a multiple of 64
        (45, 0, 2, 2, 48, true, None, false),     // three packed documents; head_dim 48 (zero-padded to 64)
        (33, 20, 1, 4, 128, true, None, false),   // 20 cached keys, packed, MQA (one KV head for 4 query heads)
        (1, 40, 2, 2, 64, false, None, false),    // decoding: one query after 40 cached keys
        (1, 44, 1, 3, 128, true, None, false),    // decoding in a packed batch: only the last document seen
        (70, 0, 2, 1, 64, false, Some(8), false), // a sliding window of 8
        (66, 5, 1, 2, 80, true, Some(33), false), // a window longer than a tile, documents, head_dim 80 → 128
        (40, 0, 3, 2, 64, true, None, true),      // ALiBi on 6 heads (not a power of two), packed
        (20, 3, 2, 2, 128, false, None, true),    // ALiBi after cached keys, head_dim 128
        (24, 0, 1, 2, 256, false, None, false),   // head_dim 256 (Gemma)
        (19, 7, 2, 1, 256, true, Some(9), true),  // head_dim 256 with everything: cache, documents, window, ALiBi
        (130, 0, 1, 1, 32, false, None, false),   // three query blocks; head_dim 32 (half a bound)
        (80, 24, 2, 2, 64, true, Some(40), true), // two query blocks after 24 cached keys, documents, window, ALiBi
    ]
    .into_iter()
    .enumerate()
    {
        let errors = flash_case(emu, case, 100 + 10 * n as u64);
        for (w, e) in worst.iter_mut().zip(errors) {
            *w = w.max(e);
        }
    }
    eprintln!(
        "flash attention, worst relative errors: out {:.1e} lse {:.1e} (tolerance {FORWARD_TOL:e}), dq {:.1e} dk {:.1e} dv {:.1e} (tolerance {BACKWARD_TOL:e})",
        worst[0], worst[1], worst[2], worst[3], worst[4]
    );
}
