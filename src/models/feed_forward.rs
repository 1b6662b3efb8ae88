//! A layer's feed-forward block, forward and backward: the MLP, or a sparse mixture of experts.
//!
//! Mixture of experts (Shazeer et al. 2017; Mixtral, Qwen2-MoE): a router scores the E experts for each token,
//! the token visits its top k, and their outputs are summed with the router's combine weights
//! (`nn::moe_router`). The dispatch costs what the routed tokens cost — each expert gathers its own tokens
//! and runs one product per projection on them:
//!
//!   y = Σₑ scatter(rowsₑ, wₑ ⊙ expertₑ(gather(rowsₑ, h)))   [+ σ(g·h) ⊙ shared(h)]
//!
//! Backward, per expert: dyₑ = gather(rowsₑ, dy); ∂L/∂wₑ = ⟨dyₑ, expertₑ(hₑ)⟩ row by row; the expert's own
//! backward on wₑ ⊙ dyₑ; its input gradient scattered back. The router's logits get ∂L/∂w (and the load-
//! balancing loss's ∂/∂p) through `route_backward`, and pass it on to h through the router's matrix.

use super::decoder_config::{DecoderConfig, MlpKind, MoeNames, TensorNames};
use super::layers::{Gradients, Linear};
use super::stacked_base::StackedBase;
use crate::backend::{Backend, ReadBy};
use crate::io::safetensors::WeightStore;
use crate::nn::gate_up::{join_gate_up, split_gate_up};
use crate::nn::mlp::Gelu;
use crate::nn::moe_router::{Routing, route, route_backward};
use anyhow::Result;
use ndarray::Array2;

/// down(act(gate(x)) ⊙ up(x)), or down(act(up(x))) without a gate.
pub struct Mlp<B: Backend> {
    pub gate: Option<Linear<B>>,
    pub up: Linear<B>,
    pub down: Linear<B>,
    /// gate's and up's frozen bases as one product [gate | up] (`Decoder::stack_frozen_bases`).
    pub stacked_gate_up: Option<StackedBase<B>>,
}

/// A router, its experts, and optionally a shared expert with a sigmoid gate.
pub struct SparseMoe<B: Backend> {
    pub router: Linear<B>,
    pub experts: Vec<Mlp<B>>,
    pub shared_expert: Option<Mlp<B>>,
    pub shared_expert_gate: Option<Linear<B>>,
}

pub enum FeedForward<B: Backend> {
    Dense(Mlp<B>),
    Sparse(SparseMoe<B>),
}

/// What an MLP's backward needs.
pub struct MlpCache<B: Backend> {
    gate: Option<B::Tensor>,        // [T, I] (gated MLPs)
    up: B::Tensor,                  // [T, I]
    activated: B::Tensor,           // [T, I] down's input
    lora_h: [Option<B::Tensor>; 3], // x·Aᵀ of adapted gate, up, down
}

/// One expert's share of a sparse layer.
struct ExpertCache<B: Backend> {
    expert: usize,
    rows: Vec<u32>,    // the tokens routed to it, ascending
    slots: Vec<usize>, // which of each token's k choices it is
    weights: Vec<f32>, // their combine weights
    input: B::Tensor,  // [n, H] gathered h
    out: B::Tensor,    // [n, H] the expert's output before weighting
    mlp: MlpCache<B>,
}

struct SharedCache<B: Backend> {
    mlp: MlpCache<B>,
    out: B::Tensor,                              // [T, H] before the gate
    gate: Option<(Vec<f32>, Option<B::Tensor>)>, // σ(g·h) per token, and the gate's LoRA h
}

pub struct MoeCache<B: Backend> {
    pub routing: Routing,
    router_h: Option<B::Tensor>,
    experts: Vec<ExpertCache<B>>,
    shared: Option<SharedCache<B>>,
}

pub enum FfnCache<B: Backend> {
    Dense(MlpCache<B>),
    Sparse(MoeCache<B>),
}

// Dropout seed numbers of the projections (0–3 are attention's): the dense MLP keeps 4–6.
const DENSE: u64 = 4;
const ROUTER: u64 = 7;
const SHARED: u64 = 8;
const SHARED_GATE: u64 = 11;
const fn expert_seed(e: usize) -> u64 {
    16 + 3 * e as u64
}

/// The module paths of an MLP's (gate, up, down) under `prefix`, from the dense MLP's leaf names.
fn mlp_paths(prefix: &str, n: &TensorNames) -> [Option<String>; 3] {
    let leaf = |name: &str| name.rsplit('.').next().unwrap_or(name).to_string();
    [
        n.gate.map(|g| format!("{prefix}.{}", leaf(g))),
        Some(format!("{prefix}.{}", leaf(n.up))),
        Some(format!("{prefix}.{}", leaf(n.down))),
    ]
}

/// The paths of a dense layer's MLP (gate, up, down) under the layer prefix `p`.
fn dense_paths(p: &str, n: &TensorNames) -> [Option<String>; 3] {
    [n.gate.map(|g| format!("{p}.{g}")), Some(format!("{p}.{}", n.up)), Some(format!("{p}.{}", n.down))]
}

/// The paths of expert e's (gate, up, down).
fn expert_paths(p: &str, m: &MoeNames, e: usize) -> [Option<String>; 3] {
    let at = |leaf: &str| Some(format!("{p}.{}.{e}.{leaf}", m.experts));
    [at(m.gate), at(m.up), at(m.down)]
}

impl<B: Backend> Mlp<B> {
    /// `up_width`: `inner`, or 2·`inner` when up holds [gate | up].
    fn load(
        b: &B,
        store: &WeightStore,
        paths: &[Option<String>; 3],
        (inner, up_width): (usize, usize),
        hidden: usize,
        bias: bool,
    ) -> Result<Self> {
        let linear = |path: &str, out, inp| Linear::load(b, store, path, out, inp, bias);
        Ok(Mlp {
            gate: paths[0].as_deref().map(|p| linear(p, inner, hidden)).transpose()?,
            up: linear(paths[1].as_deref().expect("an up projection"), up_width, hidden)?,
            down: linear(paths[2].as_deref().expect("a down projection"), hidden, inner)?,
            stacked_gate_up: None,
        })
    }

    fn random(random: &mut dyn FnMut(usize, usize) -> Linear<B>, kind: MlpKind, inner: usize, hidden: usize) -> Self {
        let gated = matches!(kind, MlpKind::GatedSilu | MlpKind::GatedGelu);
        Mlp {
            gate: gated.then(|| random(inner, hidden)),
            up: random(up_width(kind, inner), hidden),
            down: random(hidden, inner),
            stacked_gate_up: None,
        }
    }

    fn linears_mut<'a>(&'a mut self, paths: [Option<String>; 3], out: &mut Vec<(String, &'a mut Linear<B>)>) {
        let [g, u, d] = paths;
        if let (Some(path), Some(gate)) = (g, self.gate.as_mut()) {
            out.push((path, gate));
        }
        out.push((u.expect("up"), &mut self.up));
        out.push((d.expect("down"), &mut self.down));
    }

    /// The activation as this MLP's products deliver its input: stacked, a SiLU-gated MLP's gate and up come as
    /// one [gate | up] output, which SwiGLU reads as it reads ChatGLM's fused one.
    fn activation(&self, kind: MlpKind) -> MlpKind {
        match (kind, &self.stacked_gate_up) {
            (MlpKind::GatedSilu, Some(_)) => MlpKind::FusedSwiGlu,
            _ => kind,
        }
    }

    // ANCHOR: mlp_forward
    /// h: [n, H] → the MLP's output [n, H]. Projection j's dropout seed is `seed(first + j)`.
    fn forward(
        &self,
        b: &B,
        kind: MlpKind,
        h: &B::Tensor,
        seed: &dyn Fn(u64) -> Option<u64>,
        first: u64,
    ) -> (B::Tensor, MlpCache<B>) {
        let kind = self.activation(kind);
        let (gate, up, hg, hu) = match (&self.gate, &self.stacked_gate_up) {
            (Some(gate), Some(stack)) => {
                let seeds = [seed(first), seed(first + 1)];
                // SwiGLU reads the halves in the products' precision (a gated GELU splits them first)
                let read_by = if kind == MlpKind::FusedSwiGlu { ReadBy::Products } else { ReadBy::AnyOp };
                let (gate_up, [hg, hu]) = stack.forward_train(b, [gate, &self.up], h, seeds, read_by);
                match kind {
                    MlpKind::FusedSwiGlu => (None, gate_up, hg, hu), // SwiGLU reads the halves in place
                    _ => {
                        let (g, u) = split_gate_up(b, &gate_up);
                        (Some(g), u, hg, hu)
                    }
                }
            }
            (Some(gate), None) => {
                let (g, hg) = gate.forward_train(b, h, seed(first));
                let (u, hu) = self.up.forward_train(b, h, seed(first + 1));
                (Some(g), u, hg, hu)
            }
            (None, _) => {
                let (u, hu) = self.up.forward_train(b, h, seed(first + 1));
                (None, u, None, hu)
            }
        };
        let activated = activate(b, kind, gate.as_ref(), &up);
        let (out, hd) = self.down.forward_train(b, &activated, seed(first + 2));
        (out, MlpCache { gate, up, activated, lora_h: [hg, hu, hd] })
    }

    /// dy: [n, H] → dh [n, H]; parameter gradients under `paths`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        b: &B,
        kind: MlpKind,
        dy: &B::Tensor,
        h: &B::Tensor,
        cache: &MlpCache<B>,
        train_base: bool,
        seed: &dyn Fn(u64) -> Option<u64>,
        first: u64,
        paths: &[Option<String>; 3],
        grads: &mut Gradients<B>,
    ) -> B::Tensor {
        let [hg, hu, hd] = &cache.lora_h;
        let [gate_path, up_path, down_path] = paths;
        let (up_path, down_path) = (up_path.as_deref().expect("up"), down_path.as_deref().expect("down"));
        let dactivated =
            self.down.backward(b, dy, &cache.activated, hd.as_ref(), train_base, seed(first + 2), down_path, grads);
        let kind = self.activation(kind);
        let d_up_read_by = match &self.stacked_gate_up {
            Some(_) => ReadBy::Products, // a stacked base is frozen, its bias too
            None => self.up.gradient_read_by(train_base),
        };
        let (dgate, dup) = activate_backward(b, kind, &dactivated, cache.gate.as_ref(), (&cache.up, d_up_read_by));
        if let (Some(gate), Some(stack), Some(gate_path)) = (&self.gate, &self.stacked_gate_up, gate_path) {
            let dgate_up = match &dgate {
                None => dup, // ∂L/∂[gate | up] from the halves' SwiGLU, already in the stacked layout
                Some(dgate) => join_gate_up(b, dgate, &dup),
            };
            let (seeds, hs) = ([seed(first), seed(first + 1)], [hg.as_ref(), hu.as_ref()]);
            let names = [gate_path.as_str(), up_path];
            let parts = [gate, &self.up];
            return stack.backward(b, parts, &dgate_up, h, hs, seeds, names, true, grads).expect("asked for");
        }
        let mut dh = self.up.backward(b, &dup, h, hu.as_ref(), train_base, seed(first + 1), up_path, grads);
        if let (Some(gate), Some(dgate), Some(path)) = (&self.gate, dgate, gate_path) {
            let dh_gate = gate.backward(b, &dgate, h, hg.as_ref(), train_base, seed(first), path, grads);
            b.add_assign(&mut dh, &dh_gate);
        }
        dh
    }
    // ANCHOR_END: mlp_forward
}

// ANCHOR: mlp_activation
/// What the MLP's down projection reads: silu(gate) ⊙ up, gelu(gate) ⊙ up, gelu(up) without a gate, or
/// silu(gate) ⊙ up from the halves of one fused output.
fn activate<B: Backend>(b: &B, kind: MlpKind, gate: Option<&B::Tensor>, up: &B::Tensor) -> B::Tensor {
    match (kind, gate) {
        (MlpKind::GatedSilu, Some(gate)) => b.swiglu(gate, up),
        (MlpKind::GatedGelu, Some(gate)) => b.mul(&b.gelu_tanh(gate), up),
        (MlpKind::Plain(Gelu::Tanh), None) => b.gelu_tanh(up),
        (MlpKind::Plain(Gelu::Erf), None) => b.gelu_erf(up),
        (MlpKind::FusedSwiGlu, None) => b.swiglu_halves(up),
        (kind, _) => unreachable!("{kind:?} MLP with the wrong projections"),
    }
}

/// The activation's backward: d(activated) → (dgate, dup), dup of a fused [gate | up] stored for the readers
/// of up's output gradient.
fn activate_backward<B: Backend>(
    b: &B,
    kind: MlpKind,
    dactivated: &B::Tensor,
    gate: Option<&B::Tensor>,
    (up, d_up_read_by): (&B::Tensor, ReadBy),
) -> (Option<B::Tensor>, B::Tensor) {
    match (kind, gate) {
        (MlpKind::GatedSilu, Some(gate)) => {
            let (dgate, dup) = b.swiglu_backward(dactivated, gate, up);
            (Some(dgate), dup)
        }
        // y = gelu(g) ⊙ u:  ∂L/∂u = dy ⊙ gelu(g),  ∂L/∂g = gelu′(g) ⊙ (dy ⊙ u)
        (MlpKind::GatedGelu, Some(gate)) => {
            let dup = b.mul(dactivated, &b.gelu_tanh(gate));
            (Some(b.gelu_tanh_backward(&b.mul(dactivated, up), gate)), dup)
        }
        (MlpKind::Plain(Gelu::Tanh), None) => (None, b.gelu_tanh_backward(dactivated, up)),
        (MlpKind::Plain(Gelu::Erf), None) => (None, b.gelu_erf_backward(dactivated, up)),
        (MlpKind::FusedSwiGlu, None) => (None, b.swiglu_halves_backward(dactivated, up, d_up_read_by)),
        (kind, _) => unreachable!("{kind:?} MLP with the wrong projections"),
    }
}
// ANCHOR_END: mlp_activation

/// The up projection's output width: `inner`, or both halves of a fused [gate | up].
fn up_width(kind: MlpKind, inner: usize) -> usize {
    if kind == MlpKind::FusedSwiGlu { 2 * inner } else { inner }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl<B: Backend> FeedForward<B> {
    /// Layer `l`'s block (under the layer prefix `p`) from a checkpoint.
    pub fn load(b: &B, store: &WeightStore, c: &DecoderConfig, l: usize, p: &str) -> Result<Self> {
        let n = &c.names;
        let h = c.hidden_size;
        let (Some(moe), Some(m)) = (c.moe.as_ref().filter(|_| c.is_sparse(l)), n.moe) else {
            let paths = dense_paths(p, n);
            let widths = (c.intermediate_size, up_width(c.mlp, c.intermediate_size));
            return Ok(FeedForward::Dense(Mlp::load(b, store, &paths, widths, h, c.mlp_bias)?));
        };
        let router = Linear::load(b, store, &format!("{p}.{}", m.router), moe.router.experts, h, false)?;
        let experts = (0..moe.router.experts)
            .map(|e| {
                let inner = moe.expert_intermediate_size;
                Mlp::load(b, store, &expert_paths(p, &m, e), (inner, inner), h, c.mlp_bias)
            })
            .collect::<Result<_>>()?;
        let shared_expert = match (moe.shared_expert, m.shared_expert) {
            (Some((inner, _)), Some(name)) => {
                Some(Mlp::load(b, store, &mlp_paths(&format!("{p}.{name}"), n), (inner, inner), h, c.mlp_bias)?)
            }
            _ => None,
        };
        let shared_expert_gate = match (moe.shared_expert, m.shared_expert_gate) {
            (Some((_, true)), Some(name)) => Some(Linear::load(b, store, &format!("{p}.{name}"), 1, h, false)?),
            _ => None,
        };
        Ok(FeedForward::Sparse(SparseMoe { router, experts, shared_expert, shared_expert_gate }))
    }

    /// Layer `l`'s block with weights from `random(out, in)`.
    pub fn random(c: &DecoderConfig, l: usize, random: &mut dyn FnMut(usize, usize) -> Linear<B>) -> Self {
        let (h, kind) = (c.hidden_size, c.mlp);
        match c.moe.as_ref().filter(|_| c.is_sparse(l)) {
            None => FeedForward::Dense(Mlp::random(random, kind, c.intermediate_size, h)),
            Some(moe) => FeedForward::Sparse(SparseMoe {
                router: random(moe.router.experts, h),
                experts: (0..moe.router.experts)
                    .map(|_| Mlp::random(random, kind, moe.expert_intermediate_size, h))
                    .collect(),
                shared_expert: moe.shared_expert.map(|(inner, _)| Mlp::random(random, kind, inner, h)),
                shared_expert_gate: moe.shared_expert.filter(|s| s.1).map(|_| random(1, h)),
            }),
        }
    }

    /// Every linear layer of the block with its module path, in a fixed order.
    pub fn linears_mut(&mut self, c: &DecoderConfig, p: &str) -> Vec<(String, &mut Linear<B>)> {
        let n = &c.names;
        let mut out = Vec::new();
        match self {
            FeedForward::Dense(mlp) => {
                mlp.linears_mut(dense_paths(p, n), &mut out);
            }
            FeedForward::Sparse(moe) => {
                let m = n.moe.expect("sparse layers have MoE names");
                out.push((format!("{p}.{}", m.router), &mut moe.router));
                for (e, expert) in moe.experts.iter_mut().enumerate() {
                    expert.linears_mut(expert_paths(p, &m, e), &mut out);
                }
                if let (Some(shared), Some(name)) = (moe.shared_expert.as_mut(), m.shared_expert) {
                    shared.linears_mut(mlp_paths(&format!("{p}.{name}"), n), &mut out);
                }
                if let (Some(gate), Some(name)) = (moe.shared_expert_gate.as_mut(), m.shared_expert_gate) {
                    out.push((format!("{p}.{name}"), gate));
                }
            }
        }
        out
    }

    /// The block's MLPs: the dense one, or every expert and the shared expert.
    pub fn mlps_mut(&mut self) -> Vec<&mut Mlp<B>> {
        match self {
            FeedForward::Dense(mlp) => vec![mlp],
            FeedForward::Sparse(moe) => moe.experts.iter_mut().chain(moe.shared_expert.as_mut()).collect(),
        }
    }

    // ANCHOR: moe_forward
    /// h: [T, H] → the block's output [T, H], and what its backward needs.
    pub fn forward(
        &self,
        b: &B,
        c: &DecoderConfig,
        h: &B::Tensor,
        seed: &dyn Fn(u64) -> Option<u64>,
    ) -> (B::Tensor, FfnCache<B>) {
        let moe = match self {
            FeedForward::Dense(mlp) => {
                let (out, cache) = mlp.forward(b, c.mlp, h, seed, DENSE);
                return (out, FfnCache::Dense(cache));
            }
            FeedForward::Sparse(moe) => moe,
        };
        let spec = &c.moe.as_ref().expect("a sparse layer has a MoE config").router;
        let (t, hidden) = b.dims(h);
        let (logits, router_h) = moe.router.forward_train(b, h, seed(ROUTER)); // [T, E]
        let routing = route(b.download(&logits).view(), spec);
        let mut out = b.zeros(t, hidden);
        let mut experts = Vec::new();
        for (e, expert) in moe.experts.iter().enumerate() {
            let (mut rows, mut slots, mut weights) = (Vec::new(), Vec::new(), Vec::new());
            for (row, choices) in routing.experts.rows().into_iter().enumerate() {
                if let Some(slot) = choices.iter().position(|&x| x == e) {
                    rows.push(row as u32);
                    slots.push(slot);
                    weights.push(routing.weights[[row, slot]]);
                }
            }
            if rows.is_empty() {
                continue; // an expert no token chose costs nothing
            }
            let input = b.embedding(h, &rows); // gather: [n, H]
            let (y, mlp) = expert.forward(b, c.mlp, &input, seed, expert_seed(e));
            let spread = b.embedding_backward(&b.scale_rows(&y, &weights), &rows, t); // scatter-add: [T, H]
            b.add_assign(&mut out, &spread);
            experts.push(ExpertCache { expert: e, rows, slots, weights, input, out: y, mlp });
        }
        let shared = moe.shared_expert.as_ref().map(|shared| {
            let (y, mlp) = shared.forward(b, c.mlp, h, seed, SHARED);
            let gate = moe.shared_expert_gate.as_ref().map(|gate| {
                let (g, gh) = gate.forward_train(b, h, seed(SHARED_GATE)); // [T, 1]
                (b.download(&g).iter().map(|&v| sigmoid(v)).collect::<Vec<f32>>(), gh)
            });
            let scaled = match &gate {
                Some((sg, _)) => b.scale_rows(&y, sg),
                None => y.clone(),
            };
            b.add_assign(&mut out, &scaled);
            SharedCache { mlp, out: y, gate }
        });
        (out, FfnCache::Sparse(MoeCache { routing, router_h, experts, shared }))
    }
    // ANCHOR_END: moe_forward

    // ANCHOR: moe_backward
    /// dy: [T, H] → dh [T, H]. `dprobs` [T, E]: ∂L/∂p from the load-balancing loss, for a sparse layer.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        b: &B,
        c: &DecoderConfig,
        dy: &B::Tensor,
        h: &B::Tensor,
        cache: &FfnCache<B>,
        dprobs: Option<&Array2<f32>>,
        train_base: bool,
        seed: &dyn Fn(u64) -> Option<u64>,
        p: &str,
        grads: &mut Gradients<B>,
    ) -> B::Tensor {
        let n = &c.names;
        let (moe, cache) = match (self, cache) {
            (FeedForward::Dense(mlp), FfnCache::Dense(cache)) => {
                return mlp.backward(b, c.mlp, dy, h, cache, train_base, seed, DENSE, &dense_paths(p, n), grads);
            }
            (FeedForward::Sparse(moe), FfnCache::Sparse(cache)) => (moe, cache),
            _ => unreachable!("a block's cache is of its own kind"),
        };
        let spec = &c.moe.as_ref().expect("a sparse layer has a MoE config").router;
        let m = n.moe.expect("sparse layers have MoE names");
        let (t, hidden) = b.dims(h);
        let mut dh = b.zeros(t, hidden);
        let mut dweights = Array2::<f32>::zeros(cache.routing.weights.raw_dim());
        for ec in &cache.experts {
            let dy_e = b.embedding(dy, &ec.rows); // [n, H]
            for ((&row, &slot), dw) in ec.rows.iter().zip(&ec.slots).zip(b.row_dots(&dy_e, &ec.out)) {
                dweights[[row as usize, slot]] = dw; // ∂L/∂w = ⟨dy, expert output⟩
            }
            let paths = expert_paths(p, &m, ec.expert);
            let d_out = b.scale_rows(&dy_e, &ec.weights);
            let expert = &moe.experts[ec.expert];
            let dx = expert.backward(
                b,
                c.mlp,
                &d_out,
                &ec.input,
                &ec.mlp,
                train_base,
                seed,
                expert_seed(ec.expert),
                &paths,
                grads,
            );
            b.add_assign(&mut dh, &b.embedding_backward(&dx, &ec.rows, t));
        }
        let dlogits = route_backward(&cache.routing, dweights.view(), dprobs.map(|d| d.view()), spec);
        let router_path = format!("{p}.{}", m.router);
        let dh_router = moe.router.backward(
            b,
            &b.upload(dlogits),
            h,
            cache.router_h.as_ref(),
            train_base,
            seed(ROUTER),
            &router_path,
            grads,
        );
        b.add_assign(&mut dh, &dh_router);
        if let (Some(shared), Some(sc), Some(name)) = (&moe.shared_expert, &cache.shared, m.shared_expert) {
            let d_out = match (&moe.shared_expert_gate, &sc.gate, m.shared_expert_gate) {
                (Some(gate), Some((sg, gh)), Some(gate_name)) => {
                    // y = σ(g)·s:  ∂L/∂g = ⟨dy, s⟩·σ(g)(1 − σ(g)),  ∂L/∂s = σ(g)·dy
                    let dots = b.row_dots(dy, &sc.out);
                    let dg: Vec<f32> = dots.iter().zip(sg).map(|(&d, &s)| d * s * (1.0 - s)).collect();
                    let dg = b.upload(Array2::from_shape_vec((t, 1), dg).expect("one per token"));
                    let path = format!("{p}.{gate_name}");
                    let dh_gate = gate.backward(b, &dg, h, gh.as_ref(), train_base, seed(SHARED_GATE), &path, grads);
                    b.add_assign(&mut dh, &dh_gate);
                    b.scale_rows(dy, sg)
                }
                _ => dy.clone(),
            };
            let paths = mlp_paths(&format!("{p}.{name}"), n);
            let dh_shared = shared.backward(b, c.mlp, &d_out, h, &sc.mlp, train_base, seed, SHARED, &paths, grads);
            b.add_assign(&mut dh, &dh_shared);
        }
        dh
    }
    // ANCHOR_END: moe_backward
}

impl<B: Backend> FfnCache<B> {
    /// The router's decisions, for a sparse layer.
    pub fn routing(&self) -> Option<&Routing> {
        match self {
            FfnCache::Sparse(cache) => Some(&cache.routing),
            FfnCache::Dense(_) => None,
        }
    }

    /// Every activation held, for `TrainCache::activation_bytes`.
    pub fn tensors(&self) -> Vec<&B::Tensor> {
        let mut out: Vec<&B::Tensor> = Vec::new();
        match self {
            FfnCache::Dense(m) => out.extend(mlp_tensors(m)),
            FfnCache::Sparse(cache) => {
                out.extend(cache.router_h.iter());
                for ec in &cache.experts {
                    out.extend([&ec.input, &ec.out]);
                    out.extend(mlp_tensors(&ec.mlp));
                }
                if let Some(sc) = &cache.shared {
                    out.push(&sc.out);
                    out.extend(mlp_tensors(&sc.mlp));
                    out.extend(sc.gate.iter().filter_map(|(_, gh)| gh.as_ref()));
                }
            }
        }
        out
    }
}

fn mlp_tensors<B: Backend>(m: &MlpCache<B>) -> impl Iterator<Item = &B::Tensor> {
    [&m.up, &m.activated].into_iter().chain(m.gate.iter()).chain(m.lora_h.iter().flatten())
}
