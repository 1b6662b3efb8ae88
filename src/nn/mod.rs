//! Building blocks on the CPU reference path: each file holds one concept — the math in a short comment,
//! the forward, and its tests. The CPU backend (`backend::cpu`) is a thin seam over these functions.
pub mod attention;
pub mod embedding;
pub mod linear;
pub mod mlp;
pub mod rms_norm;
pub mod rope;
