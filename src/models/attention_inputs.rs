//! A layer's attention inputs in training: the q/k/v projections (separate, stacked, fused or latent), the
//! per-head norms, RoPE, and all of it in reverse. `project_qkv` is shared with inference.

use super::decoder::{Decoder, DecoderLayer, Gradients, Norm, Positions, QkvNames, QkvProjection, RotaryPairing};
use super::latent_attention::LatentCache;
use crate::backend::{Backend, FusedQkv, ReadBy};
use crate::nn::column_gather::{gather_columns, gather_columns_backward};
use crate::nn::rope::interleaved_to_halves;

/// What the q/k/v projections' backward needs.
pub(super) enum QkvSaved<B: Backend> {
    /// Separate or fused projections: q, k before their per-head norms (qk_norm only), and x·Aᵀ of each
    /// adapted projection (q or the fused one, k, v).
    Direct {
        qk_raw: Option<(B::Tensor, B::Tensor)>,
        lora_h: [Option<B::Tensor>; 3],
    },
    Latent(LatentCache<B>),
}

impl<B: Backend> QkvSaved<B> {
    pub(super) fn tensors(&self) -> Vec<&B::Tensor> {
        match self {
            QkvSaved::Direct { qk_raw, lora_h } => {
                qk_raw.iter().flat_map(|(q, k)| [q, k]).chain(lora_h.iter().flatten()).collect()
            }
            QkvSaved::Latent(cache) => cache.tensors().collect(),
        }
    }
}

/// A layer's attention inputs as attention reads them, with what their backward needs.
pub(super) struct ProjectedQkv<B: Backend> {
    pub q: B::Tensor,
    pub k: B::Tensor,
    pub v: B::Tensor,
    pub(super) saved: QkvSaved<B>,
}

/// A norm applied to each head of x: [T, heads·d] viewed as [T·heads, d].
fn per_head<B: Backend>(b: &B, norm: &Norm<B>, x: &B::Tensor, heads: usize) -> B::Tensor {
    let (t, width) = b.dims(x);
    // RoPE reads it element by element
    b.reshape(&norm.forward(b, &b.reshape(x, t * heads, width / heads), ReadBy::AnyOp), t, width)
}

impl<B: Backend> Decoder<B> {
    // ANCHOR: rotate
    /// RoPE on x: [T, heads·d] at `positions` with frequencies `inv_freq`, in the config's pairing:
    /// interleaved pairs are first reordered to halves (the same order for q and k, so q·k is unchanged).
    fn rotate(&self, b: &B, x: &B::Tensor, heads: usize, positions: &[usize], inv_freq: &[f32]) -> B::Tensor {
        let d = self.config.head_dim;
        match self.config.positions {
            Positions::Rotary { pairing: RotaryPairing::Interleaved, dims, .. } => {
                b.rope(&gather_columns(b, x, &interleaved_to_halves(heads, d, dims)), heads, d, positions, inv_freq)
            }
            _ => b.rope(x, heads, d, positions, inv_freq),
        }
    }

    /// The backward of [`Decoder::rotate`]: ∂L/∂(rotated x) → ∂L/∂x.
    fn rotate_backward(&self, b: &B, dy: &B::Tensor, heads: usize, positions: &[usize]) -> B::Tensor {
        let d = self.config.head_dim;
        let dx = b.rope_backward(dy, heads, d, positions, &self.inv_freq);
        match self.config.positions {
            Positions::Rotary { pairing: RotaryPairing::Interleaved, dims, .. } => {
                gather_columns_backward(b, &dx, &interleaved_to_halves(heads, d, dims), heads * d)
            }
            _ => dx,
        }
    }
    // ANCHOR_END: rotate

    /// Whether RoPE runs inside the split of a stacked or fused [q | k | v] (`Backend::split_qkv_rotated`):
    /// nothing comes between the split and the rotation (no per-head norm), and the pairing is halves.
    fn rotates_in_split(&self, layer: &DecoderLayer<B>) -> bool {
        self.joined_layout(layer).is_some()
            && layer.qk_norms.is_none()
            && matches!(self.config.positions, Positions::Rotary { pairing: RotaryPairing::Halves, .. })
    }

    /// How a stacked or fused projection lays out [q | k | v] in its one output (`None` for separate and
    /// latent projections): a stack is one group, a fused projection's layout is its config's.
    fn joined_layout(&self, layer: &DecoderLayer<B>) -> Option<FusedQkv> {
        match layer.qkv {
            QkvProjection::Separate { stacked: Some(_), .. } => Some(FusedQkv { groups: 1 }),
            QkvProjection::Fused(_) => Some(self.config.attention.fused_qkv.expect("checked at load")),
            _ => None,
        }
    }

    /// A stacked or fused projection's output split into (q, k, v, whether q and k are already rotated).
    fn split_joined(
        &self,
        b: &B,
        layer: &DecoderLayer<B>,
        qkv: &B::Tensor,
        positions: &[usize],
        inv_freq: &[f32],
    ) -> (B::Tensor, B::Tensor, B::Tensor, bool) {
        let (shape, layout) = (self.config.attention_shape(), self.joined_layout(layer).expect("stacked or fused"));
        if self.rotates_in_split(layer) {
            let (q, k, v) = b.split_qkv_rotated(qkv, &shape, layout, positions, inv_freq);
            return (q, k, v, true);
        }
        let (q, k, v) = b.split_qkv(qkv, &shape, layout);
        (q, k, v, false)
    }

    // ANCHOR: project_qkv
    /// h: [T, H] (the normed input) → q [T, heads·d], k, v [T, kv·d]: projected (or split from the fused
    /// projection), per-head normed where the config says so, and rotated at `positions` with RoPE of
    /// frequencies `inv_freq`.
    pub(super) fn project_qkv(
        &self,
        b: &B,
        layer: &DecoderLayer<B>,
        h: &B::Tensor,
        positions: &[usize],
        inv_freq: &[f32],
        seed: impl Fn(u64) -> Option<u64>,
    ) -> ProjectedQkv<B> {
        let shape = self.config.attention_shape();
        let (q, k, v, lora_h) = match &layer.qkv {
            QkvProjection::Latent(mla) => {
                let la = self.config.attention.latent.as_ref().expect("checked at load");
                let (q, k, v, cache) = mla.forward_train(b, la, h, positions, &self.inv_freq, &seed);
                return ProjectedQkv { q, k, v, saved: QkvSaved::Latent(cache) };
            }
            QkvProjection::Separate { q, k, v, stacked: None } => {
                let (q, hq) = q.forward_train(b, h, seed(0));
                let (k, hk) = k.forward_train(b, h, seed(1));
                let (v, hv) = v.forward_train(b, h, seed(2));
                (q, k, v, [hq, hk, hv])
            }
            QkvProjection::Separate { q, k, v, stacked: Some(stack) } => {
                let (qkv, lora_h) = stack.forward_train(b, [q, k, v], h, [seed(0), seed(1), seed(2)], ReadBy::AnyOp);
                let (q, k, v, rotated) = self.split_joined(b, layer, &qkv, positions, inv_freq);
                if rotated {
                    return ProjectedQkv { q, k, v, saved: QkvSaved::Direct { qk_raw: None, lora_h } };
                }
                (q, k, v, lora_h)
            }
            QkvProjection::Fused(qkv) => {
                let (fused, h_qkv) = qkv.forward_train(b, h, seed(0));
                let lora_h = [h_qkv, None, None];
                let (q, k, v, rotated) = self.split_joined(b, layer, &fused, positions, inv_freq);
                if rotated {
                    return ProjectedQkv { q, k, v, saved: QkvSaved::Direct { qk_raw: None, lora_h } };
                }
                (q, k, v, lora_h)
            }
        };
        let (q, k, qk_raw) = match &layer.qk_norms {
            Some((q_norm, k_norm)) => {
                let normed = (per_head(b, q_norm, &q, shape.n_heads), per_head(b, k_norm, &k, shape.n_kv_heads));
                (normed.0, normed.1, Some((q, k)))
            }
            None => (q, k, None),
        };
        let (q, k) = match self.config.positions {
            Positions::Rotary { .. } => (
                self.rotate(b, &q, shape.n_heads, positions, inv_freq),
                self.rotate(b, &k, shape.n_kv_heads, positions, inv_freq),
            ),
            Positions::Learned | Positions::Alibi => (q, k),
        };
        ProjectedQkv { q, k, v, saved: QkvSaved::Direct { qk_raw, lora_h } }
    }
    // ANCHOR_END: project_qkv

    /// The separate or fused q/k/v projections in reverse: dq, dk, dv (attention's input gradients, rotated
    /// and per-head normed as attention read them) → ∂L/∂h, h the layer's normed input, when
    /// `(input_gradient_needed, _)` asks for it (otherwise only the parameters' gradients).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn direct_qkv_backward(
        &self,
        b: &B,
        layer: &DecoderLayer<B>,
        saved: &QkvSaved<B>,
        (dq, dk, dv): (B::Tensor, B::Tensor, B::Tensor),
        h: &B::Tensor,
        pos: &[usize],
        (input_gradient_needed, train_base): (bool, bool),
        seed: &dyn Fn(u64) -> Option<u64>,
        p: &str,
        grads: &mut Gradients<B>,
    ) -> Option<B::Tensor> {
        let QkvSaved::Direct { qk_raw, lora_h: [hq, hk, hv] } = saved else {
            unreachable!("separate and fused projections cache their own activations")
        };
        let c = &self.config;
        let (n, shape) = (c.names, c.attention_shape());
        let needs = (input_gradient_needed, train_base);
        if let (true, Some(layout)) = (self.rotates_in_split(layer), self.joined_layout(layer)) {
            let read_by = match &layer.qkv {
                QkvProjection::Fused(qkv) => qkv.gradient_read_by(train_base),
                _ => ReadBy::Products, // a stacked base is frozen, its bias too
            };
            let dqkv = b.join_qkv_rotated(&dq, &dk, &dv, &shape, layout, pos, &self.inv_freq, read_by);
            return self.joined_qkv_backward(b, layer, &dqkv, [hq, hk, hv], h, needs, seed, p, grads);
        }
        let (dq, dk) = match c.positions {
            Positions::Rotary { .. } => {
                (self.rotate_backward(b, &dq, shape.n_heads, pos), self.rotate_backward(b, &dk, shape.n_kv_heads, pos))
            }
            Positions::Learned | Positions::Alibi => (dq, dk),
        };
        let (dq, dk) = match (&layer.qk_norms, qk_raw, n.qk_norms) {
            (Some((q_norm, k_norm)), Some((q_raw, k_raw)), Some((qn, kn))) => {
                let mut per_head_backward =
                    |norm: &Norm<B>, dy: &B::Tensor, x: &B::Tensor, heads: usize, name: &str| {
                        let (t, width) = b.dims(dy);
                        let (dy, x) = (b.reshape(dy, t * heads, width / heads), b.reshape(x, t * heads, width / heads));
                        b.reshape(&norm.backward(b, &dy, &x, train_base, &format!("{p}.{name}"), grads), t, width)
                    };
                (
                    per_head_backward(q_norm, &dq, q_raw, shape.n_heads, qn),
                    per_head_backward(k_norm, &dk, k_raw, shape.n_kv_heads, kn),
                )
            }
            _ => (dq, dk),
        };
        if let Some(layout) = self.joined_layout(layer) {
            let dqkv = b.join_qkv(&dq, &dk, &dv, &shape, layout);
            return self.joined_qkv_backward(b, layer, &dqkv, [hq, hk, hv], h, needs, seed, p, grads);
        }
        match (&layer.qkv, n.qkv) {
            (QkvProjection::Separate { q, k, v, stacked: None }, QkvNames::Separate { q: qn, k: kn, v: vn }) => {
                let projections = [(&dq, q, hq, qn, 0), (&dk, k, hk, kn, 1), (&dv, v, hv, vn, 2)];
                let mut dh: Option<B::Tensor> = None;
                for (dproj, proj, lora_h, name, idx) in projections {
                    let (name, lora_h) = (format!("{p}.{name}"), lora_h.as_ref());
                    if !input_gradient_needed {
                        proj.parameter_backward(b, dproj, h, lora_h, train_base, seed(idx), &name, grads);
                        continue;
                    }
                    let dh_part = proj.backward(b, dproj, h, lora_h, train_base, seed(idx), &name, grads);
                    match dh.as_mut() {
                        Some(dh) => b.add_assign(dh, &dh_part),
                        None => dh = Some(dh_part),
                    }
                }
                dh
            }
            _ => unreachable!("checked at load"),
        }
    }

    /// A stacked or fused projection in reverse from dqkv, the gradient of its whole output [T, (H + 2·KV)·d].
    #[allow(clippy::too_many_arguments)]
    fn joined_qkv_backward(
        &self,
        b: &B,
        layer: &DecoderLayer<B>,
        dqkv: &B::Tensor,
        [hq, hk, hv]: [&Option<B::Tensor>; 3],
        h: &B::Tensor,
        (input_gradient_needed, train_base): (bool, bool),
        seed: &dyn Fn(u64) -> Option<u64>,
        p: &str,
        grads: &mut Gradients<B>,
    ) -> Option<B::Tensor> {
        match (&layer.qkv, self.config.names.qkv) {
            (QkvProjection::Separate { q, k, v, stacked: Some(stack) }, QkvNames::Separate { q: qn, k: kn, v: vn }) => {
                let names = [qn, kn, vn].map(|name| format!("{p}.{name}"));
                let (seeds, hs) = ([seed(0), seed(1), seed(2)], [hq.as_ref(), hk.as_ref(), hv.as_ref()]);
                let names = [names[0].as_str(), names[1].as_str(), names[2].as_str()];
                stack.backward(b, [q, k, v], dqkv, h, hs, seeds, names, input_gradient_needed, grads)
            }
            (QkvProjection::Fused(qkv), QkvNames::Fused(name)) => {
                let (name, lora_h) = (format!("{p}.{name}"), hq.as_ref());
                if !input_gradient_needed {
                    qkv.parameter_backward(b, dqkv, h, lora_h, train_base, seed(0), &name, grads);
                    return None;
                }
                Some(qkv.backward(b, dqkv, h, lora_h, train_base, seed(0), &name, grads))
            }
            _ => unreachable!("only stacked and fused projections join their gradients"),
        }
    }
}
