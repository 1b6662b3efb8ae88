//! Frozen projections that read the same input — a layer's q, k and v; an MLP's gate and up — computed as one
//! product. Their weights stacked by rows,
//!
//!   W = [W₁; W₂; …]  [Σ outᵢ, in],   y = x·Wᵀ = [y₁ | y₂ | …]  [T, Σ outᵢ],
//!
//! give every part's output side by side, and in the backward one product gives the input gradient of them
//! all, with no partial gradients to add up:
//!
//!   ∂L/∂x = Σᵢ dyᵢ·Wᵢ = [dy₁ | dy₂ | …]·W.
//!
//! One launch instead of two or three, one pass over x, and wider products that fill a GPU's tiles (a 1.1B
//! model's grouped k and v are 256 wide). Only a frozen base is stacked (a LoRA run's): the optimizer never
//! writes it, so nothing else needs to address its rows. Each part stays a [`Linear`] with its own name,
//! adapter and gradients; its weight becomes [`Weight::InStack`]. Each adapter adds its branch into its own
//! columns of the stacked output, and in the backward reads its dy there, in place. The q/k/v output is then
//! split as a fused projection of one group ([`FusedQkv`](crate::backend::FusedQkv) `{ groups: 1 }`:
//! [q | k | v]); SwiGLU reads [gate | up] as it lies (`Backend::swiglu_halves`), as ChatGLM's fused one.
//!
//! A 4-bit base (QLoRA's) stacks too, without touching its blocks: each part keeps its own NF4 blocks and
//! double-quantized statistics (re-blocking them would change the groups the statistics were computed over),
//! and `Backend::linear_4bit_stacked` decodes each part into its own columns of the one output.

use super::layers::{Gradients, Linear, Weight};
use crate::backend::{Backend, ReadBy};
use crate::quant::Quantized4bit;
use ndarray::{Array2, Axis, concatenate};

// ANCHOR: stacked_base
/// The stacked frozen weights [Σ outᵢ, in] of sibling projections, and their stacked biases [1, Σ outᵢ].
pub struct StackedBase<B: Backend> {
    pub weight: StackedWeight<B>,
    pub bias: Option<B::Tensor>,
}

/// What a stack multiplies by.
pub enum StackedWeight<B: Backend> {
    /// The parts' dense weights as one matrix [Σ outᵢ, in].
    Dense(B::Tensor),
    /// The parts' 4-bit weights, each as it was quantized (no biases: a 4-bit stack has none).
    Packed(Vec<(Quantized4bit, B::Packed)>),
}

impl<B: Backend> StackedBase<B> {
    /// Moves the dense weights (and biases) of `parts` into one stacked matrix, or their 4-bit weights into
    /// one list; each part keeps [`Weight::InStack`]. `None`, with nothing moved, when they cannot share one
    /// product: dense and 4-bit parts mixed, a part already stacked, different input widths, a bias on some
    /// parts only or on a 4-bit part, or a bias that trains.
    pub fn stack(b: &B, parts: &mut [&mut Linear<B>]) -> Option<Self> {
        let inp = parts.first()?.dims(b).1;
        let same_input = parts.iter().all(|p| p.dims(b).1 == inp && !p.train_bias);
        let with_bias = parts.iter().filter(|p| p.bias.is_some()).count();
        if parts.iter().all(|p| matches!(p.weight, Weight::Packed(..))) && same_input && with_bias == 0 {
            let packed = parts.iter_mut().map(|part| {
                let (out, inp) = part.dims(b);
                match std::mem::replace(&mut part.weight, Weight::InStack { out, inp }) {
                    Weight::Packed(q, on_backend) => (q, on_backend),
                    _ => unreachable!("checked above"),
                }
            });
            return Some(StackedBase { weight: StackedWeight::Packed(packed.collect()), bias: None });
        }
        let dense = parts.iter().all(|p| matches!(p.weight, Weight::Dense(_)));
        if !dense || !same_input || (with_bias != 0 && with_bias != parts.len()) {
            return None;
        }
        let mut weights = Vec::with_capacity(parts.len());
        let mut biases = Vec::with_capacity(parts.len());
        for part in parts.iter_mut() {
            let (out, inp) = part.dims(b);
            let Weight::Dense(w) = std::mem::replace(&mut part.weight, Weight::InStack { out, inp }) else {
                unreachable!("checked above")
            };
            weights.push(b.download(&w));
            if let Some(bias) = part.bias.take() {
                biases.push(b.download(&bias));
            }
        }
        let stack = |rows: &[Array2<f32>], axis| concatenate(axis, &rows.iter().map(|r| r.view()).collect::<Vec<_>>());
        let weight = b.upload_weight(stack(&weights, Axis(0)).expect("equal input widths"));
        let bias = (with_bias > 0).then(|| b.upload(stack(&biases, Axis(1)).expect("bias rows")));
        Some(StackedBase { weight: StackedWeight::Dense(weight), bias })
    }

    /// Gives each part its rows of the stacked weight (and of the bias) back as its own dense weight, or its
    /// own 4-bit weight.
    pub fn unstack(self, b: &B, parts: &mut [&mut Linear<B>]) {
        let weight = match self.weight {
            StackedWeight::Dense(weight) => weight,
            StackedWeight::Packed(packed) => {
                assert_eq!(packed.len(), parts.len(), "unstack: one 4-bit weight per part");
                for (part, (q, on_backend)) in parts.iter_mut().zip(packed) {
                    part.weight = Weight::Packed(q, on_backend);
                }
                return;
            }
        };
        let (weight, bias) = (b.download(&weight), self.bias.as_ref().map(|t| b.download(t)));
        let mut at = 0;
        for part in parts.iter_mut() {
            let (out, _) = part.dims(b);
            let rows = weight.slice(ndarray::s![at..at + out, ..]).to_owned();
            part.weight = Weight::Dense(b.upload_weight(rows));
            part.bias = bias.as_ref().map(|bias| b.upload(bias.slice(ndarray::s![.., at..at + out]).to_owned()));
            at += out;
        }
        assert_eq!(at, weight.nrows(), "unstack: the parts do not cover the stacked rows");
    }

    /// Training forward: x [T, in] → the stacked output [T, Σ outᵢ] stored for `read_by`, each part's adapter
    /// branch added into its own columns, and each adapter's h = x̃·Aᵀ (`None` for a part without one).
    pub fn forward_train<const N: usize>(
        &self,
        b: &B,
        parts: [&Linear<B>; N],
        x: &B::Tensor,
        seeds: [Option<u64>; N],
        read_by: ReadBy,
    ) -> (B::Tensor, [Option<B::Tensor>; N]) {
        let x_operand = b.product_operand(x); // one rounding of x for the stacked product and every adapter
        let mut y = match &self.weight {
            StackedWeight::Dense(w) => b.linear_for(&x_operand, w, self.bias.as_ref(), read_by),
            StackedWeight::Packed(packed) => b.linear_4bit_stacked(&x_operand, &Self::parts_of(packed), read_by),
        };
        let starts = column_starts(b, parts);
        let hs = std::array::from_fn(|i| parts[i].add_lora_branch(b, (&mut y, starts[i]), x, &x_operand, seeds[i]));
        (y, hs)
    }

    /// Backward: dy [T, Σ outᵢ] (the parts' gradients side by side) → ∂L/∂x [T, in] when `input_gradient`
    /// asks for it (one product, plus each adapter's share), and every adapter's gradients into `grads` under
    /// its part's name. The adapters read their dy in place, as columns of the one tensor.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<const N: usize>(
        &self,
        b: &B,
        parts: [&Linear<B>; N],
        dy: &B::Tensor,
        x: &B::Tensor,
        hs: [Option<&B::Tensor>; N],
        seeds: [Option<u64>; N],
        names: [&str; N],
        input_gradient: bool,
        grads: &mut Gradients<B>,
    ) -> Option<B::Tensor> {
        let dy_operand = b.product_operand(dy); // one rounding for the dx product and every adapter
        let mut dx = input_gradient.then(|| match &self.weight {
            StackedWeight::Dense(w) => b.linear_backward(&dy_operand, x, w, false, false).0,
            StackedWeight::Packed(packed) => b.linear_4bit_stacked_backward(&dy_operand, &Self::parts_of(packed)),
        });
        // x rounded once for the adapters' ∂L/∂A products where two or more read it (not a dropped-out x̃)
        let sharing = (0..N).filter(|&i| parts[i].adapter_reads_x(seeds[i])).count();
        let x_operand = if sharing > 1 { b.product_operand(x) } else { std::borrow::Cow::Borrowed(x) };
        let starts = column_starts(b, parts);
        for i in 0..N {
            let dy_part = (dy, &*dy_operand, starts[i]);
            let xs = (x, &*x_operand);
            parts[i].lora_branch_backward(b, dx.as_mut(), dy_part, xs, hs[i], seeds[i], names[i], grads);
        }
        dx
    }

    /// The 4-bit parts as the backend's products take them.
    fn parts_of(packed: &[(Quantized4bit, B::Packed)]) -> Vec<(&Quantized4bit, &B::Packed)> {
        packed.iter().map(|(q, on_backend)| (q, on_backend)).collect()
    }
}

/// Where each part's columns start in the stacked output.
fn column_starts<B: Backend, const N: usize>(b: &B, parts: [&Linear<B>; N]) -> [usize; N] {
    let mut at = 0;
    parts.map(|p| {
        let start = at;
        at += p.dims(b).0;
        start
    })
}
// ANCHOR_END: stacked_base
