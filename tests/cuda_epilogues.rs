//! A layer's bias added by its product's own kernel, and its gradient summed by the weight gradient's
//! (cuBLASLt's bias and BGRADB epilogues, `backend/cuda/blas_lt.rs`): the same values as the CPU's linear,
//! no kernel launched for either, and, where cuBLASLt has no kernel for a product, the same values again from
//! the plain product and `add_bias_rows` / `column_sum`, each such product counted as a fallback.

#![cfg(feature = "cuda")]

use mftcoder::backend::cpu::Cpu;
use mftcoder::backend::cuda::{Cuda, Precision};
use mftcoder::backend::{Backend, ReadBy};
use mftcoder::quant::{QuantOptions, QuantType, Quantized4bit};
use ndarray::Array2;

#[path = "kernel_emulator/compile.rs"]
mod compile;
#[path = "cuda_shared/mod.rs"]
mod cuda_shared;
#[path = "kernel_emulator/emulated_device.rs"]
mod emulated_device;
use cuda_shared::{assert_close, gpu, matrix};

/// What the emulated cuBLASLt reads to answer "no kernel" to every epilogue (`fake_cuda.cpp`).
const REFUSE: &str = "MFTCODER_EMULATED_LT_REFUSES";

/// y = x·Wᵀ + b, then (dx, dW, db) from dy, on `g`; and (launches, products, fallbacks) of each half.
#[allow(clippy::type_complexity)]
fn biased_linear(g: &Cuda, (t, inp, out): (usize, usize, usize)) -> ([Array2<f32>; 4], [(u64, u64, u64); 2]) {
    let (x, w, bias, dy) =
        (matrix(t, inp, 1, 1.0), matrix(out, inp, 2, 0.2), matrix(1, out, 3, 0.5), matrix(t, out, 4, 1.0));
    let (x, mut w, bias, dy) = (g.upload(x), g.upload(w), g.upload(bias), g.upload(dy));
    g.prepare_trained_matrix(&mut w); // under bf16, a trained W keeps a bf16 copy for the products
    let counted = |before: mftcoder::backend::cuda::counters::CounterSnapshot| {
        g.synchronize();
        let c = g.counters().since(before);
        (c.launches, c.gemms, c.epilogue_fallbacks)
    };
    let before = g.counters();
    let y = g.linear(&x, &w, Some(&bias));
    let forward = counted(before);
    let before = g.counters();
    let (dx, dw, db) = g.linear_backward(&dy, &x, &w, true, true);
    let backward = counted(before);
    let host = |t: &_| g.download(t);
    ([host(&y), host(&dx), host(&dw.unwrap()), host(&db.unwrap())], [forward, backward])
}

fn on_the_cpu((t, inp, out): (usize, usize, usize)) -> [Array2<f32>; 4] {
    let (x, w, bias, dy) =
        (matrix(t, inp, 1, 1.0), matrix(out, inp, 2, 0.2), matrix(1, out, 3, 0.5), matrix(t, out, 4, 1.0));
    let y = Cpu.linear(&x, &w, Some(&bias));
    let (dx, dw, db) = Cpu.linear_backward(&dy, &x, &w, true, true);
    [y, dx, dw.unwrap(), db.unwrap()]
}

const NAMES: [&str; 4] = ["y", "dx", "dW", "db"];

// ANCHOR: epilogue_counts
/// Forward one product, backward two (dx, and dW with db), and no kernel launched: the bias is added, and its
/// gradient summed, by the products. Under bf16 (W an f32 master with its bf16 copy), x is rounded once for the forward,
/// and dy and x once each for the backward's two products.
#[test]
fn the_bias_and_its_gradient_ride_on_the_products() {
    let shape = (37, 96, 80);
    let want = on_the_cpu(shape);
    for (precision, tol, casts) in [(Precision::F32, 1e-5, (0, 0)), (Precision::Bf16, 2e-2, (1, 2))] {
        let Some(g) = gpu(precision) else { return };
        let (got, [forward, backward]) = biased_linear(g, shape);
        for ((name, want), got) in NAMES.iter().zip(&want).zip(&got) {
            assert_close(&format!("{precision:?} {name}"), want, got, tol);
        }
        assert_eq!(forward, (casts.0, 1, 0), "{precision:?} forward: (launches, products, fallbacks)");
        assert_eq!(backward, (casts.1, 2, 0), "{precision:?} backward: (launches, products, fallbacks)");
    }
}
// ANCHOR_END: epilogue_counts

/// Under bf16, a biased product only products read comes out in bf16: the f32 result (the same product and
/// epilogue) rounded, at 2 bytes an entry.
#[test]
fn a_biased_product_writes_bf16_for_products() {
    let Some(g) = gpu(Precision::Bf16) else { return };
    let (x, w, bias) =
        (g.upload(matrix(19, 64, 5, 1.0)), g.upload_weight(matrix(48, 64, 6, 0.2)), g.upload(matrix(1, 48, 7, 0.5)));
    let exact = g.download(&g.linear_for(&x, &w, Some(&bias), ReadBy::AnyOp));
    let stored = g.linear_for(&x, &w, Some(&bias), ReadBy::Products);
    assert_eq!(g.stored_bytes(&stored), 2 * 19 * 48, "a product-only output is bf16");
    let rounded = exact.mapv(|v| half::bf16::from_f32(v).to_f32());
    assert_close("bf16 x·Wᵀ + b", &rounded, &g.download(&stored), 1e-2);
}

/// A 4-bit base with a bias, in three bands: each band's product adds its slice of the bias, so the only
/// launches are the three dequantizations.
#[test]
fn each_band_of_a_4bit_product_adds_its_slice_of_the_bias() {
    let Some(g) = gpu(Precision::F32) else { return };
    let w = matrix(90, 48, 8, 0.05);
    let q = Quantized4bit::quantize_with(
        w.view(),
        QuantType::Nf4,
        QuantOptions { double_quant: true, ..Default::default() },
    )
    .unwrap();
    let (x, bias) = (matrix(11, 48, 9, 1.0), matrix(1, 90, 10, 0.5));
    let want = Cpu.linear_4bit(&x, &q, &(), Some(&bias));
    let (p, gx, gb) = (g.upload_4bit(&q), g.upload(x), g.upload(bias));
    let before = g.counters();
    let y = g.linear_4bit_banded(&gx, &q, &p, Some(&gb), 30 * 48 * 4); // 30 rows a band
    g.synchronize();
    let counted = g.counters().since(before);
    assert_close("banded 4-bit x·Ŵᵀ + b", &want, &g.download(&y), 1e-5);
    assert_eq!(
        (counted.launches, counted.gemms, counted.epilogue_fallbacks),
        (3, 3, 0),
        "(launches, products, fallbacks)"
    );
}

// ANCHOR: epilogue_fallback
/// Where cuBLASLt has no kernel for an epilogue (here the emulated one refuses them all), the same values
/// come from the plain product and the kernel the epilogue replaced, and each such product is counted.
#[test]
fn without_epilogues_the_kernels_do_the_same() {
    if !emulated_device::is_the_emulated_run() {
        return; // only the emulated cuBLASLt can be told to refuse
    }
    // a shape no other test uses: the backend remembers a refusal for the product it was given for
    let shape = (37, 96, 72);
    let want = on_the_cpu(shape);
    for (precision, tol) in [(Precision::F32, 1e-5), (Precision::Bf16, 2e-2)] {
        let Some(g) = gpu(precision) else { return };
        // SAFETY: the emulated run is single-threaded (`--test-threads 1`); nothing reads the environment
        // concurrently.
        unsafe { std::env::set_var(REFUSE, "1") };
        let (got, [forward, backward]) = biased_linear(g, shape);
        unsafe { std::env::remove_var(REFUSE) };
        for ((name, want), got) in NAMES.iter().zip(&want).zip(&got) {
            assert_close(&format!("{precision:?} {name}, no epilogues"), want, got, tol);
        }
        assert_eq!((forward.1, forward.2), (1, 1), "{precision:?} forward: one product, one fallback");
        assert!(forward.0 >= 1, "{precision:?}: the bias kernel ran");
        assert_eq!((backward.1, backward.2), (2, 1), "{precision:?} backward: two products, one fallback");
        assert!(backward.0 >= 1, "{precision:?}: the column sum ran");
    }
}
// ANCHOR_END: epilogue_fallback

// ANCHOR: plan_reuse
/// cuBLASLt's heuristic is asked once per distinct product (`blas_lt::PlanKey`): the forward's biased product
/// and the backward's dW with its bias gradient ask the first time, and an identical second forward and
/// backward ask nothing. A band that starts off a 256-byte boundary (the 4-bit test above, 30 entries a
/// band) is planned for the alignment it has, which the emulated cuBLASLt checks at every product.
#[test]
fn each_distinct_product_asks_the_heuristic_once() {
    let shape = (21, 64, 40); // a shape no other test uses
    let want = on_the_cpu(shape);
    for precision in [Precision::F32, Precision::Bf16] {
        let Some(g) = gpu(precision) else { return };
        let queries: Vec<u64> = (0..2)
            .map(|_| {
                let before = g.counters();
                let (got, _) = biased_linear(g, shape);
                assert_close(&format!("{precision:?} y"), &want[0], &got[0], 2e-2);
                g.counters().since(before).heuristic_queries
            })
            .collect();
        assert_eq!(queries, [2, 0], "{precision:?}: heuristic queries of a first and a second identical step");
    }
}
// ANCHOR_END: plan_reuse

// ---- without a GPU: the same tests on the emulated device ----

#[test]
fn epilogues_on_an_emulated_device() {
    let Some(summary) = cuda_shared::rerun_on_the_emulated_device_without_a_gpu("epilogues", &["note:"]) else {
        return;
    };
    assert!(summary.contains("6 passed"), "the emulated run: {summary}"); // the five tests, and this one at once
}
