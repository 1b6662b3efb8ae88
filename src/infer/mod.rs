//! Inference: generation with a KV cache, sampling, and the MFTCoder chat template.
pub mod chat_template;
pub mod generate;
