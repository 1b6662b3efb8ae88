//! Under mixed precision, the outputs only matrix products read, written in bf16 by the ops that make them
//! (`ReadBy::Products`), against the same ops' f32 results rounded to nearest even: entry for entry.

#![cfg(feature = "cuda")]

use mftcoder::backend::cuda::{CudaTensor, Precision};
use mftcoder::backend::{AttentionShape, Backend, FusedQkv, ReadBy};
use ndarray::Array2;

#[path = "kernel_emulator/compile.rs"]
mod compile;
#[path = "cuda_shared/mod.rs"]
mod cuda_shared;
#[path = "kernel_emulator/emulated_device.rs"]
mod emulated_device;
use cuda_shared::{assert_close, gpu, matrix};

// ANCHOR: product_only_outputs
/// Under mixed precision an output only products read is written in bf16 by the op that makes it: each norm
/// (alone and after the residual add), SwiGLU (on two tensors and on the halves of one), LoRA's dropout (from
/// an f32 x and from a bf16 one), and in the backward SwiGLU's ∂L/∂[gate | up] and the joined ∂L/∂[q | k | v]. Each entry is exactly the f32 op's result rounded to nearest even — the cast
/// it replaces — at 2 bytes per entry, and a product reads it as it read the cast.
#[test]
fn product_only_outputs_are_the_f32_results_rounded() {
    let Some(g) = gpu(Precision::Bf16) else { return };
    let bits = |t: &Array2<f32>| t.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let rounded = |t: &Array2<f32>| bits(&t.mapv(|v| half::bf16::from_f32(v).to_f32()));
    let (t, h) = (37, 300); // more columns than a block has threads
    let (x, a) = (g.upload(matrix(t, h, 41, 1.0)), g.upload(matrix(t, h, 42, 1.0)));
    let (w, bias) = (g.upload(matrix(1, h, 43, 1.0)), g.upload(matrix(1, h, 44, 0.5)));
    let mut pairs: Vec<(&str, CudaTensor, CudaTensor)> = vec![
        ("rms_norm", g.rms_norm(&x, &w, 1e-6, ReadBy::AnyOp), g.rms_norm(&x, &w, 1e-6, ReadBy::Products)),
        (
            "layer_norm",
            g.layer_norm(&x, &w, &bias, 1e-5, ReadBy::AnyOp),
            g.layer_norm(&x, &w, &bias, 1e-5, ReadBy::Products),
        ),
        ("add_rms_norm", g.add_rms_norm(&x, &a, &w, 1e-6, ReadBy::AnyOp).1, {
            let (sum, normed) = g.add_rms_norm(&x, &a, &w, 1e-6, ReadBy::Products);
            assert_eq!(g.stored_bytes(&sum), 4 * t * h, "the residual stream stays f32");
            normed
        }),
        (
            "add_layer_norm",
            g.add_layer_norm(&x, &a, &w, &bias, 1e-5, ReadBy::AnyOp).1,
            g.add_layer_norm(&x, &a, &w, &bias, 1e-5, ReadBy::Products).1,
        ),
    ];
    // the backward's product-only gradients: ∂L/∂[gate | up] and the joined, turned-back ∂L/∂[q | k | v]
    let (gate_up, dy) = (g.upload(matrix(t, 2 * h, 46, 2.0)), g.upload(matrix(t, h, 47, 1.0)));
    let (shape, layout) = (AttentionShape::new(4, 2, 50, 1.0), FusedQkv { groups: 2 });
    let (positions, inv_freq): (Vec<usize>, Vec<f32>) = ((0..t).map(|i| 3 * i).collect(), vec![1.0, 0.1, 0.01]);
    let (dq, dk, dv) =
        (g.upload(matrix(t, 200, 48, 1.0)), g.upload(matrix(t, 100, 49, 1.0)), g.upload(matrix(t, 100, 50, 1.0)));
    let join = |read_by| g.join_qkv_rotated(&dq, &dk, &dv, &shape, layout, &positions, &inv_freq, read_by);
    pairs.push((
        "swiglu_halves_backward",
        g.swiglu_halves_backward(&dy, &gate_up, ReadBy::AnyOp),
        g.swiglu_halves_backward(&dy, &gate_up, ReadBy::Products),
    ));
    pairs.push(("join_qkv_rotated", join(ReadBy::AnyOp), join(ReadBy::Products)));
    let exact = gpu(Precision::F32);
    for (name, f32_out, bf16_out) in &pairs {
        let (rows, cols) = g.dims(f32_out);
        assert_eq!((g.stored_bytes(f32_out), g.stored_bytes(bf16_out)), (4 * rows * cols, 2 * rows * cols), "{name}");
        assert_eq!(bits(&g.download(bf16_out)), rounded(&g.download(f32_out)), "{name}: the f32 result rounded");
    }
    // SwiGLU and dropout have no f32 twin under mixed precision: the f32 device's results, rounded
    let Some(e) = exact else { return };
    let gate_up = matrix(t, 2 * h, 45, 2.0);
    let (gate, up) = (gate_up.slice(ndarray::s![.., ..h]).to_owned(), gate_up.slice(ndarray::s![.., h..]).to_owned());
    let want_swiglu = e.download(&e.swiglu_halves(&e.upload(gate_up.clone())));
    let got = g.swiglu_halves(&g.upload(gate_up));
    assert_eq!((g.stored_bytes(&got), bits(&g.download(&got))), (2 * t * h, rounded(&want_swiglu)), "swiglu_halves");
    // a [gate | up] a stacked base wrote in bf16 (`linear_for`): SwiGLU and its backward read it as stored
    let (x_in, w_gate_up) = (matrix(t, 64, 51, 1.0), matrix(2 * h, 64, 52, 0.2));
    let stacked = g.linear_for(&g.upload(x_in.clone()), &g.upload_weight(w_gate_up.clone()), None, ReadBy::Products);
    let want_stacked = e.download(&e.linear(&e.upload(x_in), &e.upload_weight(w_gate_up), None));
    assert_eq!(g.stored_bytes(&stacked), 2 * t * 2 * h, "a product-only product output is bf16");
    let stacked_rounded = want_stacked.mapv(|v| half::bf16::from_f32(v).to_f32());
    assert_close("linear_for in bf16", &stacked_rounded, &g.download(&stacked), 2e-2);
    let read_back = e.upload(g.download(&stacked)); // the bf16 values, exactly, in f32
    let want = e.download(&e.swiglu_halves(&read_back));
    assert_eq!(bits(&g.download(&g.swiglu_halves(&stacked))), rounded(&want), "swiglu_halves of a bf16 [gate | up]");
    let dy_host = matrix(t, h, 53, 1.0);
    let want = e.download(&e.swiglu_halves_backward(&e.upload(dy_host.clone()), &read_back, ReadBy::AnyOp));
    let got = g.swiglu_halves_backward(&g.upload(dy_host), &stacked, ReadBy::Products);
    assert_eq!(bits(&g.download(&got)), rounded(&want), "swiglu_halves_backward of a bf16 [gate | up]");
    let got = g.swiglu(&g.upload(gate.clone()), &g.upload(up.clone()));
    let want = e.download(&e.swiglu(&e.upload(gate), &e.upload(up)));
    assert_eq!(bits(&g.download(&got)), rounded(&want), "swiglu");
    let x_host = matrix(t, h, 41, 1.0);
    let want_dropout = e.download(&e.dropout(&e.upload(x_host.clone()), 0.25, 7));
    let from_f32 = g.dropout(&x, 0.25, 7);
    assert_eq!((g.stored_bytes(&from_f32), bits(&g.download(&from_f32))), (2 * t * h, rounded(&want_dropout)));
    // from a bf16 x: x rounded, then the same mask and keep scale (×4/3, rounded again)
    let x_rounded = x_host.mapv(|v| half::bf16::from_f32(v).to_f32());
    let want = e.download(&e.dropout(&e.upload(x_rounded), 0.25, 7));
    let mut x_bf16 = g.upload_weight(x_host);
    g.freeze(&mut x_bf16); // stored as its bf16 rounding, as a product-only norm output is
    assert_eq!(g.stored_bytes(&x_bf16), 2 * t * h);
    let from_bf16 = g.dropout(&x_bf16, 0.25, 7);
    assert_eq!(bits(&g.download(&from_bf16)), rounded(&want), "dropout of a bf16 x");
}
// ANCHOR_END: product_only_outputs

// ---- without a GPU: the same tests on the emulated device ----

#[test]
fn product_outputs_on_an_emulated_device() {
    let Some(summary) = cuda_shared::rerun_on_the_emulated_device_without_a_gpu("product-outputs", &[]) else { return };
    assert!(summary.contains("2 passed"), "the emulated run: {summary}"); // the test, and this one returning at once
}
