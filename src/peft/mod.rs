//! Parameter-efficient fine-tuning: LoRA's math, init and merge (`lora`), and PEFT's adapter files
//! (`adapter_io`), so adapters trained here load in PEFT and the other way round.
pub mod adapter_io;
pub mod attach;
pub mod locate;
pub mod lora;
pub mod merge;
pub mod target_modules;

pub use adapter_io::Adapter;
pub use lora::{LoraBias, LoraConfig, TargetModules};
