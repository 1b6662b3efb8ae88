//! The Backend seam (DESIGN §2.3): the primitive ops every model is written against.
//!
//! A model file calls only these methods, so the same model runs on the CPU reference path ([`cpu::Cpu`],
//! readable ndarray code from `crate::nn`) and on the GPU (the `cuda` feature), and property tests can run one
//! op on both and compare. Tensors are row-major 2-D `[rows, cols]` f32 matrices; a vector is a `[1, n]` row.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod device;
mod read_by;

pub use device::Device;
pub use read_by::ReadBy;

pub use crate::loss::chunked_head::{HeadGradsWanted, HeadLoss};
pub use crate::nn::attention::{AttentionMask, AttentionShape};
pub use crate::nn::fused_qkv::FusedQkv;
use crate::quant::Quantized4bit;
use crate::train::optim::AdamWScalars;
use crate::train::step_update::{StepReport, StepUpdate, reference_update};
use ndarray::Array2;

/// A LayerNorm's (∂L/∂w, ∂L/∂b), [1, H] each.
pub type WeightAndBias<T> = (T, T);

// ANCHOR: backend_trait
pub trait Backend: Sync {
    type Tensor: Clone + Send + Sync;
    /// The backend's copy of a 4-bit matrix (QLoRA's frozen base). The CPU needs none (`()`): it reads the
    /// host blocks; the GPU keeps the packed codes and scales in device memory.
    type Packed: Send + Sync;

    fn name(&self) -> &'static str;
    /// Host matrix → backend tensor.
    fn upload(&self, host: Array2<f32>) -> Self::Tensor;
    /// A matrix that will only ever be the W of `linear` (x·Wᵀ), logically [out, in]. A backend may store it in
    /// whatever memory layout its matrix product prefers; the CPU backend keeps it column-major, i.e. Wᵀ
    /// row-major, which the GEMM reads without reshuffling (measured 10–50 % faster on the model's shapes).
    fn upload_weight(&self, host: Array2<f32>) -> Self::Tensor {
        self.upload(host)
    }
    /// `w` (an [`upload_weight`](Backend::upload_weight) matrix) in the layout that products of one row — a
    /// decoding step — read fastest, or `None` where that is the layout it has. The CPU's answer is row-major:
    /// each output is then one contiguous dot product (measured 1.8× faster per token than column-major).
    fn decoding_layout(&self, _w: &Self::Tensor) -> Option<Self::Tensor> {
        None
    }
    /// Backend tensor → host matrix.
    fn download(&self, t: &Self::Tensor) -> Array2<f32>;
    // ANCHOR: freeze
    /// `w` (an [`upload_weight`](Backend::upload_weight) matrix) will never be trained again — the base of a
    /// LoRA or QLoRA run: a backend may store it more compactly, as long as its products give what they gave.
    /// The GPU under mixed precision keeps it as bf16, which its products round every operand to anyway; the CPU
    /// keeps it as it is.
    fn freeze(&self, _w: &mut Self::Tensor) {}
    /// A matrix the optimizer trains and the products read (a LoRA factor): the GPU under mixed precision
    /// keeps its bf16 rounding beside the f32 master, rewritten by each optimizer update, so no product casts
    /// it. Nothing anywhere else.
    fn prepare_trained_matrix(&self, _w: &mut Self::Tensor) {}
    /// Bytes of backend memory `t`'s entries take (4 per f32 entry; 2 for a frozen bf16 one).
    fn stored_bytes(&self, t: &Self::Tensor) -> usize {
        let (rows, cols) = self.dims(t);
        4 * rows * cols
    }
    /// Bytes a 4-bit matrix takes where [`Backend::linear_4bit`] reads it: by default the host blocks (packed
    /// codes, scales and their double-quantization statistics).
    fn packed_bytes(&self, host: &Quantized4bit, _packed: &Self::Packed) -> usize {
        host.stored_bytes()
    }
    // ANCHOR_END: freeze
    /// (rows, cols)
    fn dims(&self, t: &Self::Tensor) -> (usize, usize);
    /// A [rows, cols] matrix of zeros.
    fn zeros(&self, rows: usize, cols: usize) -> Self::Tensor;
    /// Copy the blocks of a 4-bit matrix to where [`Backend::dequantize_4bit`] reads them.
    fn upload_4bit(&self, q: &Quantized4bit) -> Self::Packed;
    /// The dequantized W [out, in] of a 4-bit matrix, in the layout of `upload_weight`: a temporary for one
    /// product, never kept.
    fn dequantize_4bit(&self, host: &Quantized4bit, packed: &Self::Packed) -> Self::Tensor;
    /// x: [T, in], a 4-bit W [out, in] → x·Ŵᵀ + b: [T, out]. By default through a dequantized temporary; a
    /// backend may never form all of Ŵ (the CPU dequantizes a band of rows at a time: `nn::linear_4bit`).
    fn linear_4bit(
        &self,
        x: &Self::Tensor,
        host: &Quantized4bit,
        packed: &Self::Packed,
        bias: Option<&Self::Tensor>,
    ) -> Self::Tensor {
        self.linear(x, &self.dequantize_4bit(host, packed), bias)
    }
    /// The backward of [`Backend::linear_4bit`] (a frozen W has no gradient): dy: [T, out] →
    /// (dx = dy·Ŵ [T, in], db [1, out] if `bias_grad`). x is the forward's input, for the shapes only.
    fn linear_4bit_backward(
        &self,
        dy: &Self::Tensor,
        x: &Self::Tensor,
        host: &Quantized4bit,
        packed: &Self::Packed,
        bias_grad: bool,
    ) -> (Self::Tensor, Option<Self::Tensor>) {
        let (dx, _, db) = self.linear_backward(dy, x, &self.dequantize_4bit(host, packed), false, bias_grad);
        (dx, db)
    }
    /// x: [T, in] and the 4-bit parts Ŵᵢ [outᵢ, in] of a stacked frozen base (`models::stacked_base`) →
    /// [x·Ŵ₁ᵀ | x·Ŵ₂ᵀ | …]: [T, Σ outᵢ]. Each part keeps its own blocks and statistics and is decoded into its
    /// own columns: one output, no copies, and a dx product that adds every part's share as it goes.
    /// The output is stored for `read_by`, as [`Backend::linear_for`]'s.
    fn linear_4bit_stacked(
        &self,
        x: &Self::Tensor,
        parts: &[(&Quantized4bit, &Self::Packed)],
        read_by: ReadBy,
    ) -> Self::Tensor;
    /// The backward of [`Backend::linear_4bit_stacked`]: dy [T, Σ outᵢ] → dx = Σᵢ dy[:, partᵢ]·Ŵᵢ [T, in].
    fn linear_4bit_stacked_backward(
        &self,
        dy: &Self::Tensor,
        parts: &[(&Quantized4bit, &Self::Packed)],
    ) -> Self::Tensor;

    /// table: [V, H], ids: [T] → [T, H]. Also the gather of any rows: a mixture of experts collects each
    /// expert's tokens with it, and scatters them back with `embedding_backward`
    fn embedding(&self, table: &Self::Tensor, ids: &[u32]) -> Self::Tensor;
    /// x: [T, in], weight: [out, in], bias: [1, out] → x·Wᵀ + b: [T, out]
    fn linear(&self, x: &Self::Tensor, weight: &Self::Tensor, bias: Option<&Self::Tensor>) -> Self::Tensor;
    /// `linear` with its output stored for `read_by`: a stacked frozen base's [gate | up], which SwiGLU reads in
    /// the products' precision. By default (the CPU) `linear`.
    fn linear_for(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        _read_by: ReadBy,
    ) -> Self::Tensor {
        self.linear(x, weight, bias)
    }
    /// a + b, same shapes
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;
    /// x: [T, H], weight: [1, H] → RMSNorm(x)·w
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Tensor, eps: f32, read_by: ReadBy) -> Self::Tensor;
    /// x: [T, heads·d] rotated at `positions` with the inverse frequencies ω: the first 2·len(ω) ≤ d entries
    /// of each head rotate (all of them unless the rotary is partial), the rest are copied
    fn rope(
        &self,
        x: &Self::Tensor,
        heads: usize,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Self::Tensor;
    /// q: [Tq, H·d], k, v: [Tk, KV·d] → [Tq, H·d]
    fn causal_attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        shape: &AttentionShape,
        mask: &AttentionMask,
    ) -> Self::Tensor;
    /// x: [T, H], weight, bias: [1, H] → LayerNorm(x)·w + b
    fn layer_norm(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
        eps: f32,
        read_by: ReadBy,
    ) -> Self::Tensor;
    /// silu(gate) ⊙ up, both [T, I]: the down projection's input, which only products read (a backend with
    /// mixed precision may write it rounded, as for [`ReadBy::Products`])
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Self::Tensor;
    /// `swiglu` of the two halves of one [T, 2I] tensor whose rows are [gate | up] (a stacked or fused
    /// gate/up product) → [T, I], reading the halves where they lie; like `swiglu`'s output, read by products only
    fn swiglu_halves(&self, gate_up: &Self::Tensor) -> Self::Tensor;
    /// GELU, tanh approximation, element-wise
    fn gelu_tanh(&self, x: &Self::Tensor) -> Self::Tensor;
    /// GELU, exact (x·Φ(x) through erf), element-wise
    fn gelu_erf(&self, x: &Self::Tensor) -> Self::Tensor;
    /// A fused projection's output qkv: [T, (H + 2·KV)·d] → (q [T, H·d], k [T, KV·d], v [T, KV·d]), the columns
    /// grouped as `layout` says (`nn::fused_qkv`)
    fn split_qkv(
        &self,
        qkv: &Self::Tensor,
        shape: &AttentionShape,
        layout: FusedQkv,
    ) -> (Self::Tensor, Self::Tensor, Self::Tensor);
    /// `split_qkv`, then `rope` of q and k at `positions` (halves pairing, the first 2·len(ω) entries of each
    /// head): one pass on a backend that fuses them. v is not rotated.
    fn split_qkv_rotated(
        &self,
        qkv: &Self::Tensor,
        shape: &AttentionShape,
        layout: FusedQkv,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> (Self::Tensor, Self::Tensor, Self::Tensor) {
        let (q, k, v) = self.split_qkv(qkv, shape, layout);
        let d = shape.head_dim;
        (
            self.rope(&q, shape.n_heads, d, positions, inv_freq),
            self.rope(&k, shape.n_kv_heads, d, positions, inv_freq),
            v,
        )
    }
    /// [a; b] stacked by rows (the KV cache grows this way)
    fn concat_rows(&self, a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;
    /// rows: [T, C], new: [N, C] → rows is [T + N, C]: a KV cache growing by a step. A backend whose tensors
    /// can keep spare capacity appends without copying the rows already there.
    fn append_rows(&self, rows: &mut Self::Tensor, new: &Self::Tensor) {
        *rows = self.concat_rows(rows, new);
    }
    /// x: [T, H], weights: [T] (on the host) → row t times weights[t]
    fn scale_rows(&self, x: &Self::Tensor, weights: &[f32]) -> Self::Tensor;
    /// a, b: [T, H] → ⟨a[t], b[t]⟩ per row, on the host (the backward of `scale_rows` for its weights; a
    /// router's decisions are made on the host)
    fn row_dots(&self, a: &Self::Tensor, b: &Self::Tensor) -> Vec<f32>;
    /// The same row-major entries viewed as [rows, cols] (rows·cols must equal the size): per-head work on
    /// [T, heads·d] as [T·heads, d]
    fn reshape(&self, t: &Self::Tensor, rows: usize, cols: usize) -> Self::Tensor;
    /// rows start..end
    fn slice_rows(&self, t: &Self::Tensor, start: usize, end: usize) -> Self::Tensor;
    /// dst: [R, C], src: [N, C] → rows start..start + N of dst become src's, the others stay: an output filled
    /// piece by piece (`loss::chunked_head`). The default rebuilds dst around src; a backend writes in place.
    fn write_rows(&self, dst: &mut Self::Tensor, start: usize, src: &Self::Tensor) {
        let (rows, n) = (self.dims(dst).0, self.dims(src).0);
        assert!(start + n <= rows, "write_rows: {n} rows at {start} into {rows}");
        let above = self.concat_rows(&self.slice_rows(dst, 0, start), src);
        *dst = self.concat_rows(&above, &self.slice_rows(dst, start + n, rows));
    }

    // ---- training: each backward mirrors the forward above it ----

    /// Attention that also returns lse [Tq, H] = log Σⱼ exp(sᵢⱼ), all its backward needs besides q, k, v, out;
    /// out stored for `read_by` (besides them, only the backward's row terms read it).
    fn causal_attention_with_lse(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        shape: &AttentionShape,
        mask: &AttentionMask,
        read_by: ReadBy,
    ) -> (Self::Tensor, Self::Tensor);
    /// → (dq, dk, dv)
    #[allow(clippy::too_many_arguments)]
    fn causal_attention_backward(
        &self,
        dout: &Self::Tensor,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        out: &Self::Tensor,
        lse: &Self::Tensor,
        shape: &AttentionShape,
        mask: &AttentionMask,
    ) -> (Self::Tensor, Self::Tensor, Self::Tensor);
    /// dy: [T, out] → (dx [T, in], dW [out, in] if `weight_grad`, db [1, out] if `bias_grad`)
    fn linear_backward(
        &self,
        dy: &Self::Tensor,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        weight_grad: bool,
        bias_grad: bool,
    ) -> (Self::Tensor, Option<Self::Tensor>, Option<Self::Tensor>);
    // ANCHOR: lora_ops
    /// `x` as the matrix products read it. Under mixed precision the GPU rounds every f32 operand to bf16 in a
    /// copy before each product; a caller that feeds one activation to several products (the base layer and
    /// LoRA's A) rounds it once here and hands the result to those products only (`linear`,
    /// `lora_forward_into`, `linear_backward`'s x). Everywhere else: `x` itself.
    fn product_operand<'a>(&self, x: &'a Self::Tensor) -> std::borrow::Cow<'a, Self::Tensor> {
        std::borrow::Cow::Borrowed(x)
    }
    /// LoRA's branch added into the base output: y[:, at .. at + out] += s·(x·Aᵀ)·Bᵀ → h = x·Aᵀ [T, r], what the
    /// backward needs. x: [T, in], A: [r, in], B: [out, r], y: [T, ≥ at + out]: the whole output of a lone
    /// layer (at = 0), or one part's columns of a stacked product's (`models::stacked_base`). Two products, the
    /// second accumulating into y with s as its scale (GEMM's C ← α·A·B + β·C with α = s, β = 1): no
    /// temporary for B·(A·x), no separate scale and add (`peft::lora` on the CPU, `cuda/lora.rs`).
    fn lora_forward_into(
        &self,
        y: &mut Self::Tensor,
        at: usize,
        x: &Self::Tensor,
        a: &Self::Tensor,
        b: &Self::Tensor,
        s: f32,
    ) -> Self::Tensor;
    /// The branch's backward, reading its dy from columns `at .. at + out` of `dy` (as the forward wrote them),
    /// its input gradient added into `dx` [T, in] when one is asked for (`None`: the layer's input gradient is
    /// not needed, as below a frozen embedding). With d = s·dy: ∂L/∂B = dᵀ·h [out, r], ∂L/∂h = d·B [T, r],
    /// ∂L/∂A = (∂L/∂h)ᵀ·x [r, in], dx += (∂L/∂h)·A → (∂L/∂A, ∂L/∂B); s goes into the products' α and the add
    /// into the last one's β.
    #[allow(clippy::too_many_arguments)]
    fn lora_backward_into(
        &self,
        dx: Option<&mut Self::Tensor>,
        dy: &Self::Tensor,
        at: usize,
        x: &Self::Tensor,
        h: &Self::Tensor,
        a: &Self::Tensor,
        b: &Self::Tensor,
        s: f32,
    ) -> (Self::Tensor, Self::Tensor);
    /// LoRA's input dropout: x ∘ m with m = `dropout_mask(rows, cols, p, seed)`. The GPU draws m inside the
    /// multiply, never storing it. Only A's products read x̃ (under mixed precision the GPU writes it
    /// rounded), and x may be a product-only tensor itself.
    fn dropout(&self, x: &Self::Tensor, p: f32, seed: u64) -> Self::Tensor {
        let (rows, cols) = self.dims(x);
        self.mul(x, &self.dropout_mask(rows, cols, p, seed))
    }
    /// The backward of `dropout` added into `dx`: dx += g ∘ m, the same m.
    fn add_dropout_backward(&self, dx: &mut Self::Tensor, g: &Self::Tensor, p: f32, seed: u64) {
        let (rows, cols) = self.dims(g);
        self.add_assign(dx, &self.mul(g, &self.dropout_mask(rows, cols, p, seed)));
    }
    // ANCHOR_END: lora_ops
    /// The residual add and the RMSNorm after it: (s = x + a, RMSNorm(s)·w), both [T, H], the norm's output
    /// for `read_by` (s is the residual stream: any op reads it). By default `add` then `rms_norm`; the GPU
    /// does both in one pass over each row.
    fn add_rms_norm(
        &self,
        x: &Self::Tensor,
        a: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
        read_by: ReadBy,
    ) -> (Self::Tensor, Self::Tensor) {
        let sum = self.add(x, a);
        let normed = self.rms_norm(&sum, weight, eps, read_by);
        (sum, normed)
    }
    /// RMSNorm's input gradient added into `dx` (the residual stream's gradient picks up the norm's share)
    /// → ∂L/∂w if `weight_grad`. By default `rms_norm_backward` then `add_assign`; the GPU adds in the same
    /// pass.
    fn rms_norm_backward_into(
        &self,
        dx: &mut Self::Tensor,
        dy: &Self::Tensor,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
        weight_grad: bool,
    ) -> Option<Self::Tensor> {
        let (d, dw) = self.rms_norm_backward(dy, x, weight, eps, weight_grad);
        self.add_assign(dx, &d);
        dw
    }
    fn rms_norm_backward(
        &self,
        dy: &Self::Tensor,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
        weight_grad: bool,
    ) -> (Self::Tensor, Option<Self::Tensor>);
    /// The residual add and the LayerNorm after it: (s = x + a, LayerNorm(s)·w + b). By default `add` then
    /// `layer_norm`; the GPU does both in one launch.
    fn add_layer_norm(
        &self,
        x: &Self::Tensor,
        a: &Self::Tensor,
        weight: &Self::Tensor,
        bias: &Self::Tensor,
        eps: f32,
        read_by: ReadBy,
    ) -> (Self::Tensor, Self::Tensor) {
        let sum = self.add(x, a);
        let normed = self.layer_norm(&sum, weight, bias, eps, read_by);
        (sum, normed)
    }
    /// LayerNorm's input gradient added into `dx` → (∂L/∂w, ∂L/∂b) if `weight_grad`. By default
    /// `layer_norm_backward` then `add_assign`; the GPU adds in the same pass.
    fn layer_norm_backward_into(
        &self,
        dx: &mut Self::Tensor,
        dy: &Self::Tensor,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
        weight_grad: bool,
    ) -> Option<WeightAndBias<Self::Tensor>> {
        let (d, params) = self.layer_norm_backward(dy, x, weight, eps, weight_grad);
        self.add_assign(dx, &d);
        params
    }
    /// → (dx [T, H], (dweight [1, H], dbias [1, H]) if `weight_grad`)
    fn layer_norm_backward(
        &self,
        dy: &Self::Tensor,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
        weight_grad: bool,
    ) -> (Self::Tensor, Option<WeightAndBias<Self::Tensor>>);
    fn rope_backward(
        &self,
        dy: &Self::Tensor,
        heads: usize,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Self::Tensor;
    /// → (dgate, dup)
    fn swiglu_backward(
        &self,
        dy: &Self::Tensor,
        gate: &Self::Tensor,
        up: &Self::Tensor,
    ) -> (Self::Tensor, Self::Tensor);
    /// The backward of `swiglu_halves`: dy [T, I] → ∂L/∂[gate | up] [T, 2I], in the input's layout
    /// The backward of `swiglu_halves`: ∂L/∂[gate | up] [T, 2I], stored for `read_by` (products alone, unless
    /// the projection behind it takes a bias gradient)
    fn swiglu_halves_backward(&self, dy: &Self::Tensor, gate_up: &Self::Tensor, read_by: ReadBy) -> Self::Tensor;
    /// dx = dy·gelu′(x)
    fn gelu_tanh_backward(&self, dy: &Self::Tensor, x: &Self::Tensor) -> Self::Tensor;
    /// dx = dy·gelu′(x), exact GELU
    fn gelu_erf_backward(&self, dy: &Self::Tensor, x: &Self::Tensor) -> Self::Tensor;
    /// The backward of `split_qkv` (a permutation of columns, so also its inverse): (dq, dk, dv) → dqkv
    fn join_qkv(
        &self,
        dq: &Self::Tensor,
        dk: &Self::Tensor,
        dv: &Self::Tensor,
        shape: &AttentionShape,
        layout: FusedQkv,
    ) -> Self::Tensor;
    /// The backward of `split_qkv_rotated`: ∂L/∂(rotated q), ∂L/∂(rotated k), ∂L/∂v → ∂L/∂qkv, stored for
    /// `read_by` (products alone, unless the projection behind it takes a bias gradient; the default composes
    /// f32 ops and ignores it)
    #[allow(clippy::too_many_arguments)]
    fn join_qkv_rotated(
        &self,
        dq: &Self::Tensor,
        dk: &Self::Tensor,
        dv: &Self::Tensor,
        shape: &AttentionShape,
        layout: FusedQkv,
        positions: &[usize],
        inv_freq: &[f32],
        _read_by: ReadBy,
    ) -> Self::Tensor {
        let d = shape.head_dim;
        let dq = self.rope_backward(dq, shape.n_heads, d, positions, inv_freq);
        let dk = self.rope_backward(dk, shape.n_kv_heads, d, positions, inv_freq);
        self.join_qkv(&dq, &dk, dv, shape, layout)
    }
    /// dy: [T, H] → dtable [vocab, H] (repeated ids accumulate)
    fn embedding_backward(&self, dy: &Self::Tensor, ids: &[u32], vocab: usize) -> Self::Tensor;
    /// Fused softmax + cross-entropy: per-row losses ℓₜ (on the host: they drive logging and loss weighting)
    /// and dlogits = wₜ·(softmax(zₜ) − onehot(yₜ)).
    fn cross_entropy(&self, logits: &Self::Tensor, targets: &[u32], weights: &[f32]) -> (Vec<f32>, Self::Tensor);
    /// `cross_entropy` with the per-row losses left where the tensors live, as a [T, 1] column: a training step
    /// reads them once, at its end, with the update's report (`train::step_update`), not before the backward.
    fn cross_entropy_on_device(
        &self,
        logits: &Self::Tensor,
        targets: &[u32],
        weights: &[f32],
    ) -> (Self::Tensor, Self::Tensor) {
        let (losses, dlogits) = self.cross_entropy(logits, targets, weights);
        let rows = losses.len();
        (self.upload(Array2::from_shape_vec((rows, 1), losses).expect("one loss per row")), dlogits)
    }
    /// The output head and its loss in one, never the whole logits: h [T, H] (the final norm's output), W
    /// [V, H] (an [`upload_weight`](Backend::upload_weight) matrix, or the tied embedding table), bias [1, V] →
    /// the per-row losses [T, 1] (left where the tensors live, as `cross_entropy_on_device` leaves them), dh
    /// [T, H] and, where asked, dW [V, H] and db [1, V], with dlogits = cₜ·(softmax(zₜ) − onehot(yₜ)) as in
    /// `cross_entropy`. The logits exist [`chunk_rows`](crate::loss::chunked_head::chunk_rows)`(V, chunk_bytes)`
    /// rows at a time (`loss::chunked_head` has the math and why chunking is exact).
    #[allow(clippy::too_many_arguments)]
    fn linear_cross_entropy(
        &self,
        h: &Self::Tensor,
        head: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        targets: &[u32],
        coefficients: &[f32],
        wanted: HeadGradsWanted,
        chunk_bytes: usize,
    ) -> HeadLoss<Self::Tensor>
    where
        Self: Sized,
    {
        crate::loss::chunked_head::linear_cross_entropy_in_chunks(
            self,
            h,
            head,
            bias,
            targets,
            coefficients,
            wanted,
            chunk_bytes,
        )
    }
    /// a += b
    fn add_assign(&self, a: &mut Self::Tensor, b: &Self::Tensor);
    /// a += s·b
    fn add_scaled(&self, a: &mut Self::Tensor, b: &Self::Tensor, s: f32);
    /// s·t
    fn scale(&self, t: &Self::Tensor, s: f32) -> Self::Tensor;
    /// a ∘ b (element-wise)
    fn mul(&self, a: &Self::Tensor, b: &Self::Tensor) -> Self::Tensor;
    /// A LoRA dropout mask [rows, cols]: 0 with probability p, else 1/(1−p), a pure function of `seed` (so the
    /// backward, a recompute and a resumed run see the same mask). The default draws it on the host from the
    /// project's generator and uploads it; a backend may draw it where its tensors live instead (with its own
    /// generator: the GPU's masks are not the CPU's).
    fn dropout_mask(&self, rows: usize, cols: usize, p: f32, seed: u64) -> Self::Tensor {
        self.upload(crate::peft::lora::dropout_mask(rows, cols, p as f64, &mut crate::rng::Rng::new(seed)))
    }

    // ---- the optimizer ----

    /// Σ t² accumulated in f64 (global-norm clipping; not finite iff some entry is not).
    fn sum_squares(&self, t: &Self::Tensor) -> f64;
    /// One AdamW update of a parameter p with gradient g and moments m, v (see `train::optim`).
    fn adamw_update(
        &self,
        p: &mut Self::Tensor,
        g: &Self::Tensor,
        m: &mut Self::Tensor,
        v: &mut Self::Tensor,
        k: &AdamWScalars,
    );
    /// A step's end (`train::step_update`): the loss and gradient finiteness checks, global-norm clipping and
    /// AdamW over every parameter, and one report back. The default runs `reference_update`, op by op; the
    /// GPU fuses it and reads the device once.
    fn clipped_adamw_update(&self, update: StepUpdate<'_, '_, '_, Self::Tensor>) -> StepReport
    where
        Self: Sized,
    {
        reference_update(self, update)
    }
}
// ANCHOR_END: backend_trait

/// The sizes every GPU attention kernel takes by value: `struct AttentionDims` in `cuda/kernels/attention.cu`,
/// field for field (here, not under the `cuda` feature, so the kernel tests that run without it use it too).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    pub tq: i32,
    pub tk: i32,
    pub heads: i32,
    pub kv_heads: i32,
    pub d: i32,
    pub q_offset: i32,
    pub scale: f32,
    /// The sliding window, 0 for none.
    pub window: i32,
    /// The score clamp (Aquila2), 0 for none.
    pub clamp: f32,
    /// ALiBi's bias on (1) or off (0).
    pub alibi: i32,
}

impl AttentionDims {
    /// tq queries after `mask.q_offset` cached keys, tk keys in all. Sizes must fit an i32 (the caller checks).
    pub fn new(tq: usize, tk: usize, shape: &AttentionShape, mask: &AttentionMask) -> Self {
        AttentionDims {
            tq: tq as i32,
            tk: tk as i32,
            heads: shape.n_heads as i32,
            kv_heads: shape.n_kv_heads as i32,
            d: shape.head_dim as i32,
            q_offset: mask.q_offset as i32,
            scale: shape.scale,
            window: mask.window.unwrap_or(0) as i32,
            clamp: shape.score_clamp.unwrap_or(0.0),
            alibi: i32::from(shape.alibi),
        }
    }
}

/// For each position of a packed batch, the first and the last position holding its segment id: how the GPU's
/// attention loops skip other documents (see `cuda/kernels/attention.cu`).
pub fn segment_bounds(segment_ids: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let mut span: std::collections::HashMap<u32, (u32, u32)> = std::collections::HashMap::new();
    for (p, &id) in segment_ids.iter().enumerate() {
        span.entry(id).and_modify(|e| e.1 = p as u32).or_insert((p as u32, p as u32));
    }
    segment_ids.iter().map(|id| span[id]).unzip()
}

/// The GPU dropout kernel's integer threshold ⌈p·2²⁴⌉ (it keeps a 24-bit draw u iff u ≥ the threshold) and the
/// kept entries' value 1/(1−p) (see `cuda/kernels/random.cu`).
pub fn dropout_threshold(p: f32) -> (u32, f32) {
    (((p as f64) * (1u64 << 24) as f64).ceil() as u32, (1.0 / (1.0 - p as f64)) as f32)
}
