//! Layers the architectures share, written against the Backend seam: the linear layer, with its optional
//! LoRA adapter, forward and backward side by side.

use crate::backend::{Backend, ReadBy};
use crate::io::safetensors::WeightStore;
use crate::quant::{QuantType, Quantized4bit};
use anyhow::Result;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Parameter gradients by Hugging Face name (`model.layers.0.self_attn.q_proj.weight`; LoRA factors as
/// `….q_proj.lora_A` / `….q_proj.lora_B`), in the backend's layout (vectors as [1, n] rows).
pub type Gradients<B> = BTreeMap<String, <B as Backend>::Tensor>;

/// A low-rank update of a frozen linear layer (Hu et al., 2021): y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ,
/// A: [r, in], B: [out, r], s = α/r (or α/√r with rsLoRA).
pub struct Lora<B: Backend> {
    pub a: B::Tensor,
    pub b: B::Tensor,
    pub scaling: f32,
    /// Dropout probability on the adapter's input while training (PEFT's `lora_dropout`).
    pub dropout: f32,
}

/// Where a linear layer's W lives.
pub enum Weight<B: Backend> {
    /// A backend tensor [out, in].
    Dense(B::Tensor),
    /// 4-bit blocks (NF4/FP4, bitsandbytes' layout), dequantized into a temporary at every use and never kept
    /// in full precision: QLoRA's frozen base. The host blocks (what a checkpoint saves) and the backend's copy.
    Packed(Quantized4bit, B::Packed),
    /// Rows of a [`StackedBase`](super::stacked_base::StackedBase) [out, in]: a frozen base computed in one
    /// product with its siblings' (q, k, v; gate, up). The layer keeps its adapter, bias flags and name.
    InStack { out: usize, inp: usize },
}

/// Whether a backward computes its layer's input gradient.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum InputGradient {
    Wanted,
    NotNeeded,
}

/// A linear layer's parameters: weight [out, in], optional bias [1, out], optional LoRA adapter.
pub struct Linear<B: Backend> {
    pub weight: Weight<B>,
    pub bias: Option<B::Tensor>,
    pub lora: Option<Lora<B>>,
    /// Train the bias even while the base is frozen (PEFT's `bias: "lora_only"` / `"all"`).
    pub train_bias: bool,
}

impl<B: Backend> Linear<B> {
    pub fn new(weight: B::Tensor, bias: Option<B::Tensor>) -> Self {
        Linear { weight: Weight::Dense(weight), bias, lora: None, train_bias: false }
    }

    /// `{path}.weight` [out, in] (and `{path}.bias` [out]) from a checkpoint.
    pub fn load(b: &B, store: &WeightStore, path: &str, out: usize, inp: usize, bias: bool) -> Result<Self> {
        let weight = b.upload_weight(store.matrix(&format!("{path}.weight"), out, inp)?);
        let bias = match bias {
            true => Some(b.upload(store.vector(&format!("{path}.bias"), out)?.insert_axis(ndarray::Axis(0)))),
            false => None,
        };
        Ok(Linear::new(weight, bias))
    }

    /// (out, in)
    pub fn dims(&self, b: &B) -> (usize, usize) {
        match &self.weight {
            Weight::Dense(w) => b.dims(w),
            Weight::Packed(q, _) => (q.shape[0], q.shape[1]),
            Weight::InStack { out, inp } => (*out, *inp),
        }
    }

    /// x·Wᵀ + b, through the backend's 4-bit product for a packed weight.
    fn base_forward(&self, b: &B, x: &B::Tensor) -> B::Tensor {
        match &self.weight {
            Weight::Dense(w) => b.linear(x, w, self.bias.as_ref()),
            Weight::Packed(q, on_backend) => b.linear_4bit(x, q, on_backend, self.bias.as_ref()),
            Weight::InStack { .. } => unreachable!("a stacked projection runs through its StackedBase"),
        }
    }

    /// Replace a dense W by its 4-bit blocks (bitsandbytes' quantization, optionally double-quantized).
    pub fn quantize(&mut self, b: &B, quant_type: QuantType, double_quant: bool) -> Result<()> {
        if let Weight::InStack { .. } = self.weight {
            anyhow::bail!("quantize: this layer's weight is stacked with its siblings'; quantize before freezing");
        }
        if let Weight::Dense(w) = &self.weight {
            let host = b.download(w);
            let q = Quantized4bit::quantize(host.view(), quant_type, double_quant)?;
            let on_backend = b.upload_4bit(&q);
            self.weight = Weight::Packed(q, on_backend);
        }
        Ok(())
    }

    // ANCHOR: linear_layer_forward
    /// x: [T, in] → y: [T, out] (inference).
    pub fn forward(&self, b: &B, x: &B::Tensor) -> B::Tensor {
        self.forward_train(b, x, None).0
    }

    /// y and, with an adapter, h = x̃·Aᵀ [T, r]: the one extra activation the LoRA backward needs.
    /// `dropout_seed` (training only) turns on the adapter's dropout: x̃ = x ∘ m, m drawn from the seed.
    pub fn forward_train(&self, b: &B, x: &B::Tensor, dropout_seed: Option<u64>) -> (B::Tensor, Option<B::Tensor>) {
        if self.lora.is_none() {
            return (self.base_forward(b, x), None);
        }
        // one rounding of x for both products where the backend rounds operands (the GPU's bf16)
        let x_operand = match self.weight {
            Weight::Dense(_) => b.product_operand(x),
            _ => Cow::Borrowed(x),
        };
        let mut y = self.base_forward(b, &x_operand);
        let h = self.add_lora_branch(b, (&mut y, 0), x, &x_operand, dropout_seed);
        (y, h)
    }

    /// The adapter's branch added into the base output: y[:, at .. at + out] += s·(x̃·Aᵀ)·Bᵀ → h = x̃·Aᵀ
    /// (`None` without an adapter); `at` is 0 but for a part of a stacked product. x̃ is x under dropout (a
    /// training forward with a seed), else `x_operand` (x as the products read it, the base's own operand).
    pub(super) fn add_lora_branch(
        &self,
        b: &B,
        (y, at): (&mut B::Tensor, usize),
        x: &B::Tensor,
        x_operand: &B::Tensor,
        dropout_seed: Option<u64>,
    ) -> Option<B::Tensor> {
        let lora = self.lora.as_ref()?;
        let h = match dropout_seed.filter(|_| lora.dropout > 0.0) {
            Some(seed) => {
                let x_dropped = b.dropout(x, lora.dropout, seed); // x̃ = x ∘ m, for the branch only
                b.lora_forward_into(y, at, &x_dropped, &lora.a, &lora.b, lora.scaling)
            }
            None => b.lora_forward_into(y, at, x_operand, &lora.a, &lora.b, lora.scaling), // y += s·h·Bᵀ
        };
        Some(h)
    }
    // ANCHOR_END: linear_layer_forward

    // ANCHOR: linear_layer_backward
    /// dy: [T, out], x: [T, in] (the forward's input), h: the forward's x·Aᵀ → dx: [T, in]; parameter gradients
    /// go into `grads` under `name` (the layer's HF path). A frozen base (`train_base = false`, LoRA training)
    /// computes no dW at all — only the activation gradient flows through it.
    ///
    /// With d = s·dy:  ∂L/∂B = dᵀ·h,  ∂L/∂h = d·B,  ∂L/∂A = (∂L/∂h)ᵀ·x,  dx += (∂L/∂h)·A
    /// (`Backend::lora_backward_into`).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        b: &B,
        dy: &B::Tensor,
        x: &B::Tensor,
        h: Option<&B::Tensor>,
        train_base: bool,
        dropout_seed: Option<u64>,
        name: &str,
        grads: &mut Gradients<B>,
    ) -> B::Tensor {
        let dx = self.backward_with(b, dy, x, h, train_base, dropout_seed, name, grads, InputGradient::Wanted);
        dx.expect("asked for")
    }

    /// The parameter gradients of [`Linear::backward`] without its dx: the layer reads an input whose
    /// gradient nobody needs (layer 0 below a frozen embedding). A frozen base then costs no product at all
    /// (a 4-bit one is not even dequantized); an adapter costs its dB and dA products.
    #[allow(clippy::too_many_arguments)]
    pub fn parameter_backward(
        &self,
        b: &B,
        dy: &B::Tensor,
        x: &B::Tensor,
        h: Option<&B::Tensor>,
        train_base: bool,
        dropout_seed: Option<u64>,
        name: &str,
        grads: &mut Gradients<B>,
    ) {
        self.backward_with(b, dy, x, h, train_base, dropout_seed, name, grads, InputGradient::NotNeeded);
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_with(
        &self,
        b: &B,
        dy: &B::Tensor,
        x: &B::Tensor,
        h: Option<&B::Tensor>,
        train_base: bool,
        dropout_seed: Option<u64>,
        name: &str,
        grads: &mut Gradients<B>,
        input_gradient: InputGradient,
    ) -> Option<B::Tensor> {
        let train_bias = (train_base || self.train_bias) && self.bias.is_some();
        let train_weight = train_base && matches!(self.weight, Weight::Dense(_)); // 4-bit bases are always frozen
        let wanted = input_gradient == InputGradient::Wanted;
        // one rounding of dy for the base's dx and the adapter's two products where the backend rounds operands
        // (the GPU's bf16) and only products read it (a bias gradient sums dy itself)
        let dy_operand = match (&self.weight, &self.lora) {
            (Weight::Dense(_), Some(_)) if !train_bias && wanted => b.product_operand(dy),
            _ => Cow::Borrowed(dy),
        };
        // the base layer's products: dx (when wanted) and the parameter gradients it trains
        let mut dx = None;
        if wanted || train_weight || train_bias {
            let (base_dx, dw, db) = match &self.weight {
                Weight::Dense(w) => b.linear_backward(&dy_operand, x, w, train_weight, train_bias),
                Weight::Packed(q, on_backend) => {
                    let (dx, db) = b.linear_4bit_backward(dy, x, q, on_backend, train_bias);
                    (dx, None, db)
                }
                Weight::InStack { .. } => unreachable!("a stacked projection runs through its StackedBase"),
            };
            if let Some(dw) = dw {
                grads.insert(format!("{name}.weight"), dw);
            }
            if let Some(db) = db {
                grads.insert(format!("{name}.bias"), db);
            }
            dx = wanted.then_some(base_dx);
        }
        self.lora_branch_backward(b, dx.as_mut(), (dy, &dy_operand, 0), (x, x), h, dropout_seed, name, grads);
        dx
    }

    /// Who reads the gradient of this layer's output in its backward: products alone, unless a bias gradient
    /// is taken (a column sum of dy itself).
    pub fn gradient_read_by(&self, train_base: bool) -> ReadBy {
        match self.bias.is_some() && (train_base || self.train_bias) {
            true => ReadBy::AnyOp,
            false => ReadBy::Products,
        }
    }

    /// Whether this layer's adapter reads x itself (not a dropped-out x̃) in a forward with `dropout_seed`:
    /// the parts of a stack that can share one rounding of x.
    pub(super) fn adapter_reads_x(&self, dropout_seed: Option<u64>) -> bool {
        self.lora.as_ref().is_some_and(|lora| dropout_seed.is_none() || lora.dropout == 0.0)
    }

    /// The adapter's branch in reverse (nothing without an adapter): ∂L/∂A and ∂L/∂B into `grads` as
    /// `{name}.lora_A` / `{name}.lora_B`, and the branch's input gradient added into `dx` when one is asked
    /// for. `dy_operand` is dy as the products read it (dy itself, or its bf16 rounding shared with the base);
    /// the branch's dy is their columns `at .. at + out` (0 but for a part of a stacked product). `x_operand`
    /// is x as the products read it, rounded once for the siblings of a stack (x itself for a lone layer).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lora_branch_backward(
        &self,
        b: &B,
        dx: Option<&mut B::Tensor>,
        (dy, dy_operand, at): (&B::Tensor, &B::Tensor, usize),
        (x, x_operand): (&B::Tensor, &B::Tensor),
        h: Option<&B::Tensor>,
        dropout_seed: Option<u64>,
        name: &str,
        grads: &mut Gradients<B>,
    ) {
        let Some(lora) = &self.lora else { return };
        let h = h.expect("the LoRA forward cached h = x·Aᵀ");
        let (da, db_lora) = match dropout_seed.filter(|_| lora.dropout > 0.0) {
            Some(seed) => {
                // the forward's mask again: x̃ = x ∘ m, and ∂L/∂x picks up (∂L/∂x̃) ∘ m
                let x_dropped = b.dropout(x, lora.dropout, seed);
                match dx {
                    Some(dx) => {
                        let (rows, cols) = b.dims(x);
                        let mut dx_dropped = b.zeros(rows, cols);
                        let (a, up) = (&lora.a, &lora.b);
                        let dx_part = Some(&mut dx_dropped);
                        let grads = b.lora_backward_into(dx_part, dy, at, &x_dropped, h, a, up, lora.scaling);
                        b.add_dropout_backward(dx, &dx_dropped, lora.dropout, seed);
                        grads
                    }
                    None => b.lora_backward_into(None, dy, at, &x_dropped, h, &lora.a, &lora.b, lora.scaling),
                }
            }
            None => b.lora_backward_into(dx, dy_operand, at, x_operand, h, &lora.a, &lora.b, lora.scaling),
        };
        grads.insert(format!("{name}.lora_A"), da);
        grads.insert(format!("{name}.lora_B"), db_lora);
    }
    // ANCHOR_END: linear_layer_backward
}

// ANCHOR: norm
/// Which normalisation a decoder applies before attention, before the MLP and before the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// RMSNorm, y = x̂·w (Llama, Mistral, Qwen2).
    Rms,
    /// RMSNorm with the weight stored as an offset from one, y = x̂·(1 + w) (Gemma).
    RmsUnitOffset,
    /// LayerNorm with a bias, y = (x − μ)·r·w + b (StarCoder2).
    Layer,
}

/// A norm's parameters: weight [1, H], and a bias [1, H] for LayerNorm.
pub struct Norm<B: Backend> {
    pub weight: B::Tensor,
    pub bias: Option<B::Tensor>,
    kind: NormKind,
    eps: f32,
    /// The 1 of Gemma's 1 + w, as a [1, H] row of ones.
    ones: Option<B::Tensor>,
}

impl<B: Backend> Norm<B> {
    pub fn new(b: &B, kind: NormKind, eps: f32, weight: B::Tensor, bias: Option<B::Tensor>) -> Self {
        assert_eq!(bias.is_some(), kind == NormKind::Layer, "a bias exactly for LayerNorm");
        let ones = (kind == NormKind::RmsUnitOffset).then(|| b.upload(ndarray::Array2::ones(b.dims(&weight))));
        Norm { weight, bias, kind, eps, ones }
    }

    /// The weight the RMSNorm op multiplies by: w, or 1 + w.
    fn scale(&self, b: &B) -> Cow<'_, B::Tensor> {
        match &self.ones {
            Some(ones) => Cow::Owned(b.add(&self.weight, ones)),
            None => Cow::Borrowed(&self.weight),
        }
    }

    /// x: [T, H] → [T, H], stored for the ops `read_by` names (bf16 on a mixed-precision GPU when only
    /// products read it).
    pub fn forward(&self, b: &B, x: &B::Tensor, read_by: ReadBy) -> B::Tensor {
        match (self.kind, &self.bias) {
            (NormKind::Layer, Some(bias)) => b.layer_norm(x, &self.weight, bias, self.eps, read_by),
            _ => b.rms_norm(x, &self.scale(b), self.eps, read_by),
        }
    }

    /// The residual add and this norm after it: (s = x + a, norm(s)), in one pass where the backend fuses them
    /// (the GPU); norm(s) stored for `read_by`.
    pub fn forward_after_add(&self, b: &B, x: &B::Tensor, a: &B::Tensor, read_by: ReadBy) -> (B::Tensor, B::Tensor) {
        match (self.kind, &self.bias) {
            (NormKind::Layer, Some(bias)) => b.add_layer_norm(x, a, &self.weight, bias, self.eps, read_by),
            _ => b.add_rms_norm(x, a, &self.scale(b), self.eps, read_by),
        }
    }

    /// [`Norm::backward`] with its dx added into `dx_acc` (the residual stream's gradient) rather than
    /// returned, in the same pass where the backend fuses them (the GPU).
    pub fn backward_into(
        &self,
        b: &B,
        dx_acc: &mut B::Tensor,
        (dy, x): (&B::Tensor, &B::Tensor),
        train: bool,
        name: &str,
        grads: &mut Gradients<B>,
    ) {
        if self.kind == NormKind::Layer {
            if let Some((dw, db)) = b.layer_norm_backward_into(dx_acc, dy, x, &self.weight, self.eps, train) {
                grads.insert(format!("{name}.weight"), dw);
                grads.insert(format!("{name}.bias"), db);
            }
            return;
        }
        if let Some(dw) = b.rms_norm_backward_into(dx_acc, dy, x, &self.scale(b), self.eps, train) {
            grads.insert(format!("{name}.weight"), dw);
        }
    }

    /// dy, x (the forward's input): [T, H] → dx; with `train`, ∂L/∂w (and ∂L/∂b) go into `grads` as
    /// `{name}.weight` (`{name}.bias`); without it they are never computed. For 1 + w, ∂L/∂w is the gradient
    /// of the effective weight itself.
    pub fn backward(
        &self,
        b: &B,
        dy: &B::Tensor,
        x: &B::Tensor,
        train: bool,
        name: &str,
        grads: &mut Gradients<B>,
    ) -> B::Tensor {
        let (dx, dweight, dbias) = match self.kind {
            NormKind::Layer => {
                let (dx, params) = b.layer_norm_backward(dy, x, &self.weight, self.eps, train);
                let (dw, db) = params.unzip();
                (dx, dw, db)
            }
            _ => {
                let (dx, dw) = b.rms_norm_backward(dy, x, &self.scale(b), self.eps, train);
                (dx, dw, None)
            }
        };
        if let Some(dw) = dweight {
            grads.insert(format!("{name}.weight"), dw);
        }
        if let Some(db) = dbias {
            grads.insert(format!("{name}.bias"), db);
        }
        dx
    }
}
// ANCHOR_END: norm
