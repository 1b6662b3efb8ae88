//! Who reads an op's output, which decides the storage a mixed-precision backend writes it in.

// ANCHOR: read_by
/// Which ops will read an output. Under mixed precision every matrix product reads its operands rounded to
/// bf16, so an output that only products read can be written rounded by the op that makes it: no cast before
/// its products (forward, and again in the backward), and half the bytes kept for the backward. A few
/// element-wise ops are written to take such an input as well (SwiGLU on a stacked [gate | up], LoRA's
/// dropout, the attention's row terms): their inputs count as read by products. The CPU, exact, writes f32
/// either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadBy {
    /// Only matrix products: a layer's norms feeding its projections, the final norm feeding the head.
    Products,
    /// Element-wise ops too: per-head q/k norms before RoPE, ChatGLM's normed stream that is also its skip.
    AnyOp,
}
// ANCHOR_END: read_by
