//! The CUDA backend (feature `cuda`), through cudarc: every [`Backend`] op on the GPU.
//!
//! cudarc loads libcuda, libnvrtc and libcublas when first used, so this module compiles and type-checks on a
//! machine with no CUDA at all. The kernels live in `kernels/*.cu`, one file per CPU module they mirror, and
//! are compiled by NVRTC the first time a device is opened ([`kernels`]); matrix products go to cuBLAS
//! ([`blas`]). Tensors are row-major f32 matrices in device memory, like the CPU path's, so an op can be run
//! on both and compared (tests/cuda_vs_cpu.rs). Their buffers come from a caching allocator ([`pool`]) and small
//! per-step inputs from a cache keyed by content ([`upload_cache`]), so a steady-state training step allocates
//! nothing and reads the device back once ([`Backend::clipped_adamw_update`]).
//!
//! Precision: [`Precision::F32`] is the reference (f32 everywhere, cuBLAS without TF32).
//! [`Precision::Bf16`] is mixed precision: every matrix product reads its operands rounded to bf16 and
//! accumulates in f32 on the tensor cores; parameters, their gradients, the AdamW moments and the
//! element-wise ops stay f32 (the f32 master weights of mixed-precision training).

pub mod blas;
pub mod blas_lt;
pub mod counters;
pub mod kernels;
pub mod pool;
pub mod upload_cache;

use super::{AttentionMask, AttentionShape, Backend, FusedQkv, ReadBy};
use crate::quant::Quantized4bit;
use crate::train::optim::AdamWScalars;
use crate::train::step_update::{StepReport, StepUpdate};
use counters::DeviceCounters;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use kernels::KernelCode;
use ndarray::Array2;
use pool::Pool;
use std::collections::HashMap;
use std::sync::Arc;
use upload_cache::UploadCache;

/// The GPU backend: one device, one stream, the compiled kernels, a cuBLAS handle, the caching allocator
/// (`pool.rs`) and the cache of small per-step inputs (`upload_cache.rs`).
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    blas_lt: blas_lt::BlasLt,
    functions: HashMap<&'static str, CudaFunction>,
    pub precision: Precision,
    kernel_code: KernelCode,
    counters: Arc<DeviceCounters>,
    pool: Arc<Pool<f32>>,
    /// bf16 copies of matrix operands (`Precision::Bf16`)
    pool_bf16: Arc<Pool<u16>>,
    ids: UploadCache<u32>,
    floats: UploadCache<f32>,
    /// device pointers and sizes: the multi-tensor optimizer's tables (uploaded each step, not cached)
    words: UploadCache<u64>,
}

// ANCHOR: launch_macro
/// GPU failures inside an op (out of memory, a driver error) end the run with this one line: the `Backend`
/// ops return tensors, not `Result`s, as the CPU ops cannot fail.
fn fail(what: &str, e: impl std::fmt::Debug) -> ! {
    eprintln!("error: CUDA {what}: {e:?}");
    std::process::exit(3)
}

/// Launch kernel `name` with the arguments in the order of its C signature.
macro_rules! launch {
    ($cuda:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let name: &str = $name;
        let cfg: LaunchConfig = $cfg;
        let mut args = $cuda.stream.launch_builder($cuda.function(name));
        $cuda.counters.launch();
        $( args.arg($arg); )+
        // SAFETY: each call site passes the argument list of the kernel it names, in order, with device
        // buffers sized for the launch (checked by the shape asserts before it).
        unsafe { args.launch(cfg) }.unwrap_or_else(|e| fail(name, e));
    }};
}

// ANCHOR_END: launch_macro

mod attention; // the attention launches: segment tables, the kernel family by precision, head_dim and clamp
mod cross_entropy; // the fused softmax + cross-entropy, its losses left on the device
mod device; // opening a device, the precision of its products, and the backend on it
mod fused_qkv; // a fused q/k/v projection's column split and join
mod gate_up; // SwiGLU on the halves of one [gate | up] product, forward and backward
mod grids; // the launch shapes: element-wise, one block per row, one warp per row
mod linear; // a dense layer: its products, in the storage its readers take, and the bias kernel
mod linear_4bit; // products with a 4-bit weight, one dequantized band of rows at a time
mod lora; // LoRA's branch with its scale and add folded into the products, and dropout drawn in place
mod norms; // the norms' backward rows and the column sums of their weight gradients
mod optim; // the squared norm, the AdamW update, and a step's end: clipping + multi-tensor AdamW, one read
mod quant4; // 4-bit blocks on the device as stored, and the dequantization of a band of rows
mod rope; // RoPE's rotation, forward and backward, alone or in the split of [q | k | v]
mod row_scale; // rows scaled by per-row weights, and per-row dot products
mod rows; // rows gathered (the embedding lookup) and scattered back, sliced, written, joined, reshaped
mod tensor; // f32 / bf16 storage, buffers from the pool, uploads and reads, frozen weights in bf16

pub use attention::{AttentionKernels, attention_kernels, flash_attention_launches};
pub use device::{Precision, open_device};
use grids::{THREADS, elementwise_grid, row_grid, warp_grid};
pub use linear_4bit::DEFAULT_BAND_BYTES;
pub use quant4::CudaPacked;
pub use tensor::{CudaTensor, Storage};

fn int(n: usize, what: &str) -> i32 {
    i32::try_from(n).unwrap_or_else(|_| fail(what, format!("{n} does not fit the kernels' 32-bit sizes")))
}

impl Cuda {
    fn function(&self, name: &str) -> &CudaFunction {
        self.functions.get(name).unwrap_or_else(|| fail("kernel lookup", format!("no kernel `{name}`")))
    }

    fn same_shape(a: &CudaTensor, b: &CudaTensor, op: &str) {
        assert_eq!((a.rows, a.cols), (b.rows, b.cols), "{op}: shapes differ");
    }

    fn elementwise2(&self, name: &str, a: &CudaTensor, b: &CudaTensor) -> CudaTensor {
        Self::same_shape(a, b, name);
        let mut out = self.tensor(a.rows, a.cols);
        let n = a.len() as i64;
        launch!(self, name, elementwise_grid(a.len()), out.f32_mut(), a.f32(), b.f32(), &n);
        out
    }
}

// ANCHOR: cuda_backend
impl Backend for Cuda {
    type Tensor = CudaTensor;
    type Packed = CudaPacked;

    fn name(&self) -> &'static str {
        "cuda"
    }
    fn upload(&self, host: Array2<f32>) -> CudaTensor {
        let (rows, cols) = host.dim();
        let mut t = self.tensor(rows, cols);
        let row_major;
        let values = match host.as_slice() {
            Some(s) => s,
            None => {
                row_major = host.iter().copied().collect::<Vec<f32>>();
                &row_major
            }
        };
        if !values.is_empty() {
            self.counters.upload();
            let mut head = t.f32_mut().slice_mut(0..values.len());
            self.stream.memcpy_htod(values, &mut head).unwrap_or_else(|e| fail("copy to device", e));
        }
        t
    }
    fn download(&self, t: &CudaTensor) -> Array2<f32> {
        let v = match t.storage() {
            Storage::F32(data) | Storage::Master { f32: data, .. } => self.to_host(data, t.len()),
            Storage::Bf16(data) => self.download_bf16(data, t.len()),
        };
        Array2::from_shape_vec((t.rows, t.cols), v).expect("rows·cols values")
    }
    fn freeze(&self, w: &mut CudaTensor) {
        self.freeze_weight(w)
    }
    fn prepare_trained_matrix(&self, w: &mut CudaTensor) {
        self.keep_bf16_copy(w)
    }
    fn stored_bytes(&self, t: &CudaTensor) -> usize {
        t.stored_bytes()
    }
    fn dims(&self, t: &CudaTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }
    fn zeros(&self, rows: usize, cols: usize) -> CudaTensor {
        let mut t = self.tensor(rows, cols);
        self.stream.memset_zeros(&mut **t.f32_mut()).unwrap_or_else(|e| fail("memset", e));
        t
    }
    fn upload_4bit(&self, q: &Quantized4bit) -> CudaPacked {
        self.upload_packed(q)
    }
    fn dequantize_4bit(&self, host: &Quantized4bit, p: &CudaPacked) -> CudaTensor {
        self.dequantize_packed(host, p)
    }
    fn packed_bytes(&self, _host: &Quantized4bit, p: &CudaPacked) -> usize {
        p.device_bytes()
    }
    fn linear_4bit(
        &self,
        x: &CudaTensor,
        host: &Quantized4bit,
        p: &CudaPacked,
        bias: Option<&CudaTensor>,
    ) -> CudaTensor {
        self.linear_4bit_banded(x, host, p, bias, DEFAULT_BAND_BYTES)
    }
    fn linear_4bit_stacked(
        &self,
        x: &CudaTensor,
        parts: &[(&Quantized4bit, &CudaPacked)],
        read_by: ReadBy,
    ) -> CudaTensor {
        self.linear_4bit_stacked_banded(x, parts, DEFAULT_BAND_BYTES, read_by)
    }
    fn linear_4bit_stacked_backward(&self, dy: &CudaTensor, parts: &[(&Quantized4bit, &CudaPacked)]) -> CudaTensor {
        self.linear_4bit_stacked_backward_banded(dy, parts, DEFAULT_BAND_BYTES)
    }
    fn linear_4bit_backward(
        &self,
        dy: &CudaTensor,
        _x: &CudaTensor,
        host: &Quantized4bit,
        p: &CudaPacked,
        bias_grad: bool,
    ) -> (CudaTensor, Option<CudaTensor>) {
        self.linear_4bit_backward_banded(dy, host, p, bias_grad, DEFAULT_BAND_BYTES)
    }

    fn embedding(&self, table: &CudaTensor, ids: &[u32]) -> CudaTensor {
        self.gather_rows(table, ids)
    }
    fn linear(&self, x: &CudaTensor, weight: &CudaTensor, bias: Option<&CudaTensor>) -> CudaTensor {
        self.linear_for(x, weight, bias, ReadBy::AnyOp)
    }
    // ANCHOR_END: cuda_backend
    fn linear_for(
        &self,
        x: &CudaTensor,
        weight: &CudaTensor,
        bias: Option<&CudaTensor>,
        read_by: ReadBy,
    ) -> CudaTensor {
        self.dense_linear(x, weight, bias, read_by)
    }
    fn add(&self, a: &CudaTensor, b: &CudaTensor) -> CudaTensor {
        self.elementwise2("add", a, b)
    }
    fn rms_norm(&self, x: &CudaTensor, weight: &CudaTensor, eps: f32, read_by: ReadBy) -> CudaTensor {
        self.rms_norm_for(read_by, x, weight, eps)
    }
    fn rope(&self, x: &CudaTensor, heads: usize, head_dim: usize, positions: &[usize], inv_freq: &[f32]) -> CudaTensor {
        self.rope_rotate(x, heads, head_dim, positions, inv_freq, 1.0)
    }
    fn causal_attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        shape: &AttentionShape,
        mask: &AttentionMask,
    ) -> CudaTensor {
        self.causal_attention_with_lse(q, k, v, shape, mask, ReadBy::AnyOp).0
    }
    fn swiglu(&self, gate: &CudaTensor, up: &CudaTensor) -> CudaTensor {
        self.swiglu_of(gate, up)
    }
    fn swiglu_halves(&self, gate_up: &CudaTensor) -> CudaTensor {
        self.swiglu_of_halves(gate_up)
    }
    fn layer_norm(
        &self,
        x: &CudaTensor,
        weight: &CudaTensor,
        bias: &CudaTensor,
        eps: f32,
        read_by: ReadBy,
    ) -> CudaTensor {
        self.layer_norm_for(read_by, x, (weight, bias), eps)
    }
    fn gelu_tanh(&self, x: &CudaTensor) -> CudaTensor {
        let mut out = self.tensor(x.rows, x.cols);
        let n = x.len() as i64;
        launch!(self, "gelu_tanh", elementwise_grid(x.len()), out.f32_mut(), x.f32(), &n);
        out
    }
    fn gelu_erf(&self, x: &CudaTensor) -> CudaTensor {
        let mut out = self.tensor(x.rows, x.cols);
        let n = x.len() as i64;
        launch!(self, "gelu_erf", elementwise_grid(x.len()), out.f32_mut(), x.f32(), &n);
        out
    }
    fn split_qkv(
        &self,
        qkv: &CudaTensor,
        shape: &AttentionShape,
        layout: FusedQkv,
    ) -> (CudaTensor, CudaTensor, CudaTensor) {
        self.split_fused_qkv(qkv, shape, layout)
    }
    fn split_qkv_rotated(
        &self,
        qkv: &CudaTensor,
        shape: &AttentionShape,
        layout: FusedQkv,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> (CudaTensor, CudaTensor, CudaTensor) {
        self.split_fused_qkv_rotated(qkv, shape, layout, positions, inv_freq)
    }
    fn scale_rows(&self, x: &CudaTensor, weights: &[f32]) -> CudaTensor {
        self.scale_each_row(x, weights)
    }
    fn row_dots(&self, a: &CudaTensor, b: &CudaTensor) -> Vec<f32> {
        self.dots_of_rows(a, b) // a sync: the dots come back to the host
    }
    fn concat_rows(&self, a: &CudaTensor, b: &CudaTensor) -> CudaTensor {
        self.rows_of_both(a, b)
    }
    fn reshape(&self, t: &CudaTensor, rows: usize, cols: usize) -> CudaTensor {
        self.reshaped(t, rows, cols)
    }
    fn slice_rows(&self, t: &CudaTensor, start: usize, end: usize) -> CudaTensor {
        self.rows_of(t, start, end)
    }
    fn write_rows(&self, dst: &mut CudaTensor, start: usize, src: &CudaTensor) {
        self.rows_into(dst, start, src)
    }

    fn causal_attention_with_lse(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        shape: &AttentionShape,
        mask: &AttentionMask,
        read_by: ReadBy,
    ) -> (CudaTensor, CudaTensor) {
        self.attention_forward(q, k, v, shape, mask, read_by)
    }
    fn causal_attention_backward(
        &self,
        dout: &CudaTensor,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        out: &CudaTensor,
        lse: &CudaTensor,
        shape: &AttentionShape,
        mask: &AttentionMask,
    ) -> (CudaTensor, CudaTensor, CudaTensor) {
        self.attention_backward(dout, q, k, v, out, lse, shape, mask)
    }
    fn linear_backward(
        &self,
        dy: &CudaTensor,
        x: &CudaTensor,
        weight: &CudaTensor,
        weight_grad: bool,
        bias_grad: bool,
    ) -> (CudaTensor, Option<CudaTensor>, Option<CudaTensor>) {
        self.dense_linear_backward(dy, x, weight, (weight_grad, bias_grad))
    }
    fn product_operand<'a>(&self, x: &'a CudaTensor) -> std::borrow::Cow<'a, CudaTensor> {
        Cuda::product_operand(self, x)
    }
    fn lora_forward_into(
        &self,
        y: &mut CudaTensor,
        at: usize,
        x: &CudaTensor,
        a: &CudaTensor,
        b: &CudaTensor,
        s: f32,
    ) -> CudaTensor {
        self.lora_forward(y, at, x, a, b, s)
    }
    fn lora_backward_into(
        &self,
        dx: Option<&mut CudaTensor>,
        dy: &CudaTensor,
        at: usize,
        x: &CudaTensor,
        h: &CudaTensor,
        a: &CudaTensor,
        b: &CudaTensor,
        s: f32,
    ) -> (CudaTensor, CudaTensor) {
        self.lora_backward(dx, (dy, at), x, h, a, b, s)
    }
    fn dropout(&self, x: &CudaTensor, p: f32, seed: u64) -> CudaTensor {
        self.dropout_apply(x, p, seed)
    }
    fn add_dropout_backward(&self, dx: &mut CudaTensor, g: &CudaTensor, p: f32, seed: u64) {
        self.dropout_add(dx, g, p, seed)
    }
    fn rms_norm_backward(
        &self,
        dy: &CudaTensor,
        x: &CudaTensor,
        weight: &CudaTensor,
        eps: f32,
        weight_grad: bool,
    ) -> (CudaTensor, Option<CudaTensor>) {
        let (dx, dw_rows) = self.norm_backward_rows(false, dy, x, weight, eps, weight_grad);
        (dx, dw_rows.map(|rows| self.column_sum(&rows)))
    }
    fn add_rms_norm(
        &self,
        x: &CudaTensor,
        a: &CudaTensor,
        weight: &CudaTensor,
        eps: f32,
        read_by: ReadBy,
    ) -> (CudaTensor, CudaTensor) {
        self.add_then_rms_norm(read_by, x, a, weight, eps)
    }
    fn rms_norm_backward_into(
        &self,
        dx: &mut CudaTensor,
        dy: &CudaTensor,
        x: &CudaTensor,
        weight: &CudaTensor,
        eps: f32,
        weight_grad: bool,
    ) -> Option<CudaTensor> {
        self.norm_backward_rows_into(false, dx, dy, x, weight, eps, weight_grad).map(|rows| self.column_sum(&rows))
    }
    fn add_layer_norm(
        &self,
        x: &CudaTensor,
        a: &CudaTensor,
        weight: &CudaTensor,
        bias: &CudaTensor,
        eps: f32,
        read_by: ReadBy,
    ) -> (CudaTensor, CudaTensor) {
        self.add_then_layer_norm(read_by, x, a, (weight, bias), eps)
    }
    fn layer_norm_backward_into(
        &self,
        dx: &mut CudaTensor,
        dy: &CudaTensor,
        x: &CudaTensor,
        weight: &CudaTensor,
        eps: f32,
        weight_grad: bool,
    ) -> Option<(CudaTensor, CudaTensor)> {
        let dw_rows = self.norm_backward_rows_into(true, dx, dy, x, weight, eps, weight_grad);
        dw_rows.map(|rows| (self.column_sum(&rows), self.column_sum(dy)))
    }
    fn rope_backward(
        &self,
        dy: &CudaTensor,
        heads: usize,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> CudaTensor {
        self.rope_rotate(dy, heads, head_dim, positions, inv_freq, -1.0)
    }
    fn layer_norm_backward(
        &self,
        dy: &CudaTensor,
        x: &CudaTensor,
        weight: &CudaTensor,
        eps: f32,
        weight_grad: bool,
    ) -> (CudaTensor, Option<(CudaTensor, CudaTensor)>) {
        let (dx, dw_rows) = self.norm_backward_rows(true, dy, x, weight, eps, weight_grad);
        (dx, dw_rows.map(|rows| (self.column_sum(&rows), self.column_sum(dy))))
    }
    fn gelu_tanh_backward(&self, dy: &CudaTensor, x: &CudaTensor) -> CudaTensor {
        Self::same_shape(dy, x, "gelu_tanh_backward");
        let mut dx = self.tensor(x.rows, x.cols);
        let n = x.len() as i64;
        launch!(self, "gelu_tanh_backward", elementwise_grid(x.len()), dx.f32_mut(), dy.f32(), x.f32(), &n);
        dx
    }
    fn gelu_erf_backward(&self, dy: &CudaTensor, x: &CudaTensor) -> CudaTensor {
        Self::same_shape(dy, x, "gelu_erf_backward");
        let mut dx = self.tensor(x.rows, x.cols);
        let n = x.len() as i64;
        launch!(self, "gelu_erf_backward", elementwise_grid(x.len()), dx.f32_mut(), dy.f32(), x.f32(), &n);
        dx
    }
    fn join_qkv(
        &self,
        dq: &CudaTensor,
        dk: &CudaTensor,
        dv: &CudaTensor,
        shape: &AttentionShape,
        layout: FusedQkv,
    ) -> CudaTensor {
        self.join_fused_qkv(dq, dk, dv, shape, layout)
    }
    fn join_qkv_rotated(
        &self,
        dq: &CudaTensor,
        dk: &CudaTensor,
        dv: &CudaTensor,
        shape: &AttentionShape,
        layout: FusedQkv,
        positions: &[usize],
        inv_freq: &[f32],
        read_by: ReadBy,
    ) -> CudaTensor {
        self.join_fused_qkv_rotated([dq, dk, dv], shape, layout, (positions, inv_freq), read_by)
    }
    fn swiglu_halves_backward(&self, dy: &CudaTensor, gate_up: &CudaTensor, read_by: ReadBy) -> CudaTensor {
        self.swiglu_of_halves_backward(dy, gate_up, read_by)
    }
    fn swiglu_backward(&self, dy: &CudaTensor, gate: &CudaTensor, up: &CudaTensor) -> (CudaTensor, CudaTensor) {
        Self::same_shape(gate, up, "swiglu_backward");
        Self::same_shape(dy, gate, "swiglu_backward");
        let (mut dgate, mut dup) = (self.tensor(gate.rows, gate.cols), self.tensor(up.rows, up.cols));
        let n = gate.len() as i64;
        launch!(
            self,
            "swiglu_backward",
            elementwise_grid(gate.len()),
            dgate.f32_mut(),
            dup.f32_mut(),
            dy.f32(),
            gate.f32(),
            up.f32(),
            &n
        );
        (dgate, dup)
    }
    fn embedding_backward(&self, dy: &CudaTensor, ids: &[u32], vocab: usize) -> CudaTensor {
        self.gather_rows_backward(dy, ids, vocab)
    }
    fn cross_entropy(&self, logits: &CudaTensor, targets: &[u32], weights: &[f32]) -> (Vec<f32>, CudaTensor) {
        let (losses, dlogits) = self.cross_entropy_on_device(logits, targets, weights);
        (self.to_host(losses.f32(), losses.rows), dlogits)
    }
    fn cross_entropy_on_device(
        &self,
        logits: &CudaTensor,
        targets: &[u32],
        weights: &[f32],
    ) -> (CudaTensor, CudaTensor) {
        self.cross_entropy_rows(logits, targets, weights)
    }
    fn add_assign(&self, a: &mut CudaTensor, b: &CudaTensor) {
        self.add_scaled(a, b, 1.0);
    }
    fn add_scaled(&self, a: &mut CudaTensor, b: &CudaTensor, s: f32) {
        Self::same_shape(a, b, "add_scaled");
        let n = a.len() as i64;
        launch!(self, "add_scaled", elementwise_grid(a.len()), a.f32_mut(), b.f32(), &s, &n);
    }
    fn scale(&self, t: &CudaTensor, s: f32) -> CudaTensor {
        let mut out = self.tensor(t.rows, t.cols);
        let n = t.len() as i64;
        launch!(self, "scale", elementwise_grid(t.len()), out.f32_mut(), t.f32(), &s, &n);
        out
    }
    fn mul(&self, a: &CudaTensor, b: &CudaTensor) -> CudaTensor {
        self.elementwise2("mul", a, b)
    }
    fn dropout_mask(&self, rows: usize, cols: usize, p: f32, seed: u64) -> CudaTensor {
        assert!((0.0..1.0).contains(&p), "dropout probability {p} is not in [0, 1)");
        let mut mask = self.tensor(rows, cols);
        let (threshold, keep) = super::dropout_threshold(p);
        let n = (rows * cols) as i64;
        launch!(self, "dropout_mask", elementwise_grid(rows * cols), mask.f32_mut(), &n, &seed, &threshold, &keep);
        mask
    }

    fn sum_squares(&self, t: &CudaTensor) -> f64 {
        self.squared_norm(t)
    }
    fn adamw_update(
        &self,
        p: &mut CudaTensor,
        g: &CudaTensor,
        m: &mut CudaTensor,
        v: &mut CudaTensor,
        k: &AdamWScalars,
    ) {
        self.adamw_step(p, g, m, v, k)
    }
    fn clipped_adamw_update(&self, update: StepUpdate<'_, '_, '_, CudaTensor>) -> StepReport {
        self.clipped_adamw(update)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn opening_a_device_either_works_or_explains_why_not() {
        match super::open_device(0) {
            Ok(ctx) => eprintln!("CUDA device 0 opened: {:?}", ctx.name()),
            Err(e) => {
                eprintln!("skipping: {e}");
                assert!(e.to_string().contains("CUDA"));
            }
        }
    }
}
