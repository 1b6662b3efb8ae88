//! mftcoder — multi-task fine-tuning of code LLMs, written from first principles.
//!
//! The crate map, one line per module:
pub mod backend; // the Backend seam: the primitive ops a model is written against (CPU: ndarray; CUDA: cudarc)
pub mod bench; // `mftcoder bench`: training-step throughput beside PyTorch's H200 figures
pub mod cli; // what the subcommands share: DeviceArgs, on_backend!, a model opened with its adapter
pub mod config; // training configs with MFTCoder's field names and defaults
pub mod config_examples; // `mftcoder config`: ready configs in MFTCoder's field names, the field reference
pub mod config_reference; // every MFTCoder config field: meaning, allowed values, what this project does with it
pub mod data; // MFTCoder's jsonl formats, templates, loss masks, packing, blending, .bin/.idx
pub mod demo; // `mftcoder demo`: pre-train, multi-task LoRA with CoBa, merge, answer — on a fresh machine
pub mod gguf; // llama.cpp's GGUF files: import (dequantize, un-permute, rebuild the tokenizer) and export
pub mod infer; // generation with a KV cache, sampling, the MFTCoder chat template
pub mod io; // safetensors (mmap, sharded), config.json helpers, tokenizer.json
pub mod loss; // next-token cross-entropy; (later) MFTCoder's multi-task weightings, CoBa, DPO
pub mod models; // one file per architecture, written once against the Backend seam
pub mod nn; // building blocks on the CPU reference path: the math, the forward, the tests
pub mod peft; // LoRA: math, init, merge, PEFT adapter files
pub mod quant; // NF4/FP4 4-bit quantization, bit-identical to bitsandbytes
pub mod rng; // a small seeded generator so runs are reproducible bit for bit
pub mod runtime; // process-wide settings (allocator tuning for training)
pub mod train; // optimizer, schedules, the trainer
