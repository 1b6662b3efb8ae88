//! Losses. Each returns the scalar, the per-token numbers the multi-task weighting needs, and the gradient
//! with respect to the logits.
pub mod causal_lm;
pub mod chunked_head;
pub mod coba;
pub mod mft;
pub mod moe_aux;
pub mod preference;
