//! The CPU reference backend: ndarray matrices, each op delegating to its `crate::nn` module.
//! Matrix products go through matrixmultiply with its threading feature; elementwise work through rayon.

use super::{AttentionMask, AttentionShape, Backend, FusedQkv, ReadBy};
use crate::nn;
use crate::quant::Quantized4bit;
use crate::train::optim::{self, AdamWScalars};
use ndarray::{Array2, Axis, concatenate, s};

// ANCHOR: cpu_backend
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    type Tensor = Array2<f32>;
    type Packed = ();

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn upload(&self, host: Array2<f32>) -> Array2<f32> {
        host
    }
    fn upload_weight(&self, host: Array2<f32>) -> Array2<f32> {
        nn::linear::column_major(host)
    }
    fn decoding_layout(&self, w: &Array2<f32>) -> Option<Array2<f32>> {
        (!w.is_standard_layout()).then(|| nn::linear::row_major(w.view()))
    }
    fn download(&self, t: &Array2<f32>) -> Array2<f32> {
        t.clone()
    }
    fn dims(&self, t: &Array2<f32>) -> (usize, usize) {
        t.dim()
    }
    fn zeros(&self, rows: usize, cols: usize) -> Array2<f32> {
        Array2::zeros((rows, cols))
    }
    fn upload_4bit(&self, _q: &Quantized4bit) {}
    fn dequantize_4bit(&self, host: &Quantized4bit, _packed: &()) -> Array2<f32> {
        self.upload_weight(host.dequantize())
    }
    fn linear_4bit(
        &self,
        x: &Array2<f32>,
        host: &Quantized4bit,
        _packed: &(),
        bias: Option<&Array2<f32>>,
    ) -> Array2<f32> {
        nn::linear_4bit::linear_4bit(x.view(), host, bias.map(|b| b.row(0)))
    }
    fn linear_4bit_backward(
        &self,
        dy: &Array2<f32>,
        _x: &Array2<f32>,
        host: &Quantized4bit,
        _packed: &(),
        bias_grad: bool,
    ) -> (Array2<f32>, Option<Array2<f32>>) {
        let (dx, db) = nn::linear_4bit::linear_4bit_backward(dy.view(), host, bias_grad);
        (dx, db.map(|b| b.insert_axis(Axis(0))))
    }
    fn linear_4bit_stacked(&self, x: &Array2<f32>, parts: &[(&Quantized4bit, &())], _: ReadBy) -> Array2<f32> {
        let hosts: Vec<&Quantized4bit> = parts.iter().map(|(q, _)| *q).collect();
        nn::linear_4bit::linear_4bit_stacked(x.view(), &hosts)
    }
    fn linear_4bit_stacked_backward(&self, dy: &Array2<f32>, parts: &[(&Quantized4bit, &())]) -> Array2<f32> {
        let hosts: Vec<&Quantized4bit> = parts.iter().map(|(q, _)| *q).collect();
        nn::linear_4bit::linear_4bit_stacked_backward(dy.view(), &hosts)
    }
    fn embedding(&self, table: &Array2<f32>, ids: &[u32]) -> Array2<f32> {
        nn::embedding::embedding(table.view(), ids)
    }
    fn linear(&self, x: &Array2<f32>, weight: &Array2<f32>, bias: Option<&Array2<f32>>) -> Array2<f32> {
        nn::linear::linear(x.view(), weight.view(), bias.map(|b| b.row(0)))
    }
    // ANCHOR_END: cpu_backend
    fn add(&self, a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        nn::elementwise::map2(a.view(), b.view(), |a, b| a + b)
    }
    // f32 whoever reads it: the CPU is exact
    fn rms_norm(&self, x: &Array2<f32>, weight: &Array2<f32>, eps: f32, _: ReadBy) -> Array2<f32> {
        nn::rms_norm::rms_norm(x.view(), weight.row(0), eps)
    }
    fn rope(
        &self,
        x: &Array2<f32>,
        heads: usize,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Array2<f32> {
        nn::rope::rope(x.view(), heads, head_dim, positions, inv_freq)
    }
    fn causal_attention(
        &self,
        q: &Array2<f32>,
        k: &Array2<f32>,
        v: &Array2<f32>,
        shape: &AttentionShape,
        mask: &AttentionMask,
    ) -> Array2<f32> {
        nn::attention::causal_attention(q.view(), k.view(), v.view(), shape, mask)
    }
    fn swiglu(&self, gate: &Array2<f32>, up: &Array2<f32>) -> Array2<f32> {
        nn::mlp::swiglu(gate.view(), up.view())
    }
    fn swiglu_halves(&self, gate_up: &Array2<f32>) -> Array2<f32> {
        nn::mlp::swiglu_halves(gate_up.view())
    }
    fn layer_norm(
        &self,
        x: &Array2<f32>,
        weight: &Array2<f32>,
        bias: &Array2<f32>,
        eps: f32,
        _: ReadBy,
    ) -> Array2<f32> {
        nn::layer_norm::layer_norm(x.view(), weight.row(0), bias.row(0), eps)
    }
    fn gelu_tanh(&self, x: &Array2<f32>) -> Array2<f32> {
        nn::mlp::gelu_tanh_rows(x.view())
    }
    fn gelu_erf(&self, x: &Array2<f32>) -> Array2<f32> {
        nn::mlp::gelu_erf_rows(x.view())
    }
    fn split_qkv(
        &self,
        qkv: &Array2<f32>,
        shape: &AttentionShape,
        layout: FusedQkv,
    ) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
        nn::fused_qkv::split(qkv.view(), shape, layout)
    }
    fn concat_rows(&self, a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        concatenate(Axis(0), &[a.view(), b.view()]).expect("concat_rows: column counts differ")
    }
    fn append_rows(&self, rows: &mut Array2<f32>, new: &Array2<f32>) {
        rows.append(Axis(0), new.view()).expect("append_rows: column counts differ") // amortized, like Vec::push
    }
    fn scale_rows(&self, x: &Array2<f32>, weights: &[f32]) -> Array2<f32> {
        nn::row_scale::scale_rows(x.view(), weights)
    }
    fn row_dots(&self, a: &Array2<f32>, b: &Array2<f32>) -> Vec<f32> {
        nn::row_scale::row_dots(a.view(), b.view())
    }
    fn reshape(&self, t: &Array2<f32>, rows: usize, cols: usize) -> Array2<f32> {
        assert_eq!(t.len(), rows * cols, "reshape: {:?} into [{rows}, {cols}]", t.dim());
        let standard = t.as_standard_layout().into_owned();
        standard.into_shape_with_order((rows, cols)).expect("a standard-layout array reshapes")
    }
    fn slice_rows(&self, t: &Array2<f32>, start: usize, end: usize) -> Array2<f32> {
        t.slice(s![start..end, ..]).to_owned()
    }
    fn write_rows(&self, dst: &mut Array2<f32>, start: usize, src: &Array2<f32>) {
        dst.slice_mut(s![start..start + src.nrows(), ..]).assign(src);
    }

    fn causal_attention_with_lse(
        &self,
        q: &Array2<f32>,
        k: &Array2<f32>,
        v: &Array2<f32>,
        shape: &AttentionShape,
        mask: &AttentionMask,
        _: ReadBy,
    ) -> (Array2<f32>, Array2<f32>) {
        nn::attention::causal_attention_with_lse(q.view(), k.view(), v.view(), shape, mask)
    }
    fn causal_attention_backward(
        &self,
        dout: &Array2<f32>,
        q: &Array2<f32>,
        k: &Array2<f32>,
        v: &Array2<f32>,
        out: &Array2<f32>,
        lse: &Array2<f32>,
        shape: &AttentionShape,
        mask: &AttentionMask,
    ) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
        nn::attention::causal_attention_backward(
            dout.view(),
            q.view(),
            k.view(),
            v.view(),
            out.view(),
            lse.view(),
            shape,
            mask,
        )
    }
    fn linear_backward(
        &self,
        dy: &Array2<f32>,
        x: &Array2<f32>,
        weight: &Array2<f32>,
        weight_grad: bool,
        bias_grad: bool,
    ) -> (Array2<f32>, Option<Array2<f32>>, Option<Array2<f32>>) {
        let g = nn::linear::linear_backward(dy.view(), x.view(), weight.view(), weight_grad, bias_grad);
        (g.dx, g.dweight, g.dbias.map(|b| b.insert_axis(Axis(0))))
    }
    fn lora_forward_into(
        &self,
        y: &mut Array2<f32>,
        at: usize,
        x: &Array2<f32>,
        a: &Array2<f32>,
        b: &Array2<f32>,
        s: f32,
    ) -> Array2<f32> {
        let columns = y.slice_mut(s![.., at..at + b.nrows()]);
        crate::peft::lora::lora_forward_into(columns, x.view(), a.view(), b.view(), s)
    }
    fn lora_backward_into(
        &self,
        dx: Option<&mut Array2<f32>>,
        dy: &Array2<f32>,
        at: usize,
        x: &Array2<f32>,
        h: &Array2<f32>,
        a: &Array2<f32>,
        b: &Array2<f32>,
        s: f32,
    ) -> (Array2<f32>, Array2<f32>) {
        let dx = dx.map(|dx| dx.view_mut());
        let dy = dy.slice(s![.., at..at + b.nrows()]);
        crate::peft::lora::lora_backward_into(dx, dy, x.view(), h.view(), a.view(), b.view(), s)
    }
    fn rms_norm_backward(
        &self,
        dy: &Array2<f32>,
        x: &Array2<f32>,
        weight: &Array2<f32>,
        eps: f32,
        weight_grad: bool,
    ) -> (Array2<f32>, Option<Array2<f32>>) {
        let dx = nn::rms_norm::rms_norm_input_grad(dy.view(), x.view(), weight.row(0), eps);
        let dw = weight_grad.then(|| nn::rms_norm::rms_norm_weight_grad(dy.view(), x.view(), eps).insert_axis(Axis(0)));
        (dx, dw)
    }
    fn rope_backward(
        &self,
        dy: &Array2<f32>,
        heads: usize,
        head_dim: usize,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> Array2<f32> {
        nn::rope::rope_backward(dy.view(), heads, head_dim, positions, inv_freq)
    }
    fn swiglu_backward(&self, dy: &Array2<f32>, gate: &Array2<f32>, up: &Array2<f32>) -> (Array2<f32>, Array2<f32>) {
        nn::mlp::swiglu_backward(dy.view(), gate.view(), up.view())
    }
    fn swiglu_halves_backward(&self, dy: &Array2<f32>, gate_up: &Array2<f32>, _: ReadBy) -> Array2<f32> {
        nn::mlp::swiglu_halves_backward(dy.view(), gate_up.view())
    }
    fn layer_norm_backward(
        &self,
        dy: &Array2<f32>,
        x: &Array2<f32>,
        weight: &Array2<f32>,
        eps: f32,
        weight_grad: bool,
    ) -> (Array2<f32>, Option<(Array2<f32>, Array2<f32>)>) {
        let dx = nn::layer_norm::layer_norm_input_grad(dy.view(), x.view(), weight.row(0), eps);
        let params = weight_grad.then(|| {
            let (dw, db) = nn::layer_norm::layer_norm_params_grad(dy.view(), x.view(), eps);
            (dw.insert_axis(Axis(0)), db.insert_axis(Axis(0)))
        });
        (dx, params)
    }
    fn gelu_tanh_backward(&self, dy: &Array2<f32>, x: &Array2<f32>) -> Array2<f32> {
        nn::mlp::gelu_tanh_backward(dy.view(), x.view())
    }
    fn gelu_erf_backward(&self, dy: &Array2<f32>, x: &Array2<f32>) -> Array2<f32> {
        nn::mlp::gelu_erf_backward(dy.view(), x.view())
    }
    fn join_qkv(
        &self,
        dq: &Array2<f32>,
        dk: &Array2<f32>,
        dv: &Array2<f32>,
        shape: &AttentionShape,
        layout: FusedQkv,
    ) -> Array2<f32> {
        nn::fused_qkv::join(dq.view(), dk.view(), dv.view(), shape, layout)
    }
    fn embedding_backward(&self, dy: &Array2<f32>, ids: &[u32], vocab: usize) -> Array2<f32> {
        nn::embedding::embedding_backward(dy.view(), ids, vocab)
    }
    fn cross_entropy(&self, logits: &Array2<f32>, targets: &[u32], weights: &[f32]) -> (Vec<f32>, Array2<f32>) {
        let ce = nn::cross_entropy::cross_entropy(logits.view(), targets, weights);
        (ce.losses.to_vec(), ce.dlogits)
    }
    fn add_assign(&self, a: &mut Array2<f32>, b: &Array2<f32>) {
        nn::elementwise::add_scaled(a.view_mut(), b.view(), 1.0)
    }
    fn add_scaled(&self, a: &mut Array2<f32>, b: &Array2<f32>, s: f32) {
        nn::elementwise::add_scaled(a.view_mut(), b.view(), s)
    }
    fn scale(&self, t: &Array2<f32>, s: f32) -> Array2<f32> {
        nn::elementwise::scaled(t.view(), s)
    }
    fn mul(&self, a: &Array2<f32>, b: &Array2<f32>) -> Array2<f32> {
        nn::elementwise::map2(a.view(), b.view(), |a, b| a * b)
    }
    fn sum_squares(&self, t: &Array2<f32>) -> f64 {
        optim::matrix_sum_squares(t)
    }
    fn adamw_update(
        &self,
        p: &mut Array2<f32>,
        g: &Array2<f32>,
        m: &mut Array2<f32>,
        v: &mut Array2<f32>,
        k: &AdamWScalars,
    ) {
        optim::adamw_update_matrix(p, g, m, v, k);
    }
}
