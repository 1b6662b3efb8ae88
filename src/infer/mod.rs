//! Inference: generation with a KV cache, sampling, the MFTCoder chat template, and pass@k evaluation.
pub mod chat_template;
pub mod generate;
pub mod humaneval;
pub mod sandbox;
