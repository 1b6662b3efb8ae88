//! What the subcommands of the `mftcoder` tool share: where to run ([`DeviceArgs`], [`on_backend!`]) and how
//! a model is opened with an adapter wherever `--model` and `--adapter` are taken.

use crate::backend::Backend;
use crate::io::model_dir::check_model_dir;
use crate::models::{self, decoder::Decoder};
use crate::peft::locate::{check_adapter_base, resolve_adapter};
use anyhow::{Context, Result};
use std::path::Path;

/// Where to run.
#[derive(clap::Args, Clone)]
pub struct DeviceArgs {
    /// `cpu` (the reference path) or `cuda` / `cuda:N` (a build with `--features cuda` and an NVIDIA GPU)
    /// (default: cpu; train, pretrain, dpo: the config's `device`).
    #[arg(long)]
    pub device: Option<String>,
    /// Matrix products on the GPU: `f32` or `bf16` (mixed precision, f32 accumulation and master weights)
    /// (default: f32; bench on a GPU: bf16; train, pretrain, dpo: the config's `precision`).
    #[arg(long)]
    pub precision: Option<String>,
}

/// Run `$f(&backend, args…)` on the backend the device arguments name: the CPU, or (with the `cuda` feature)
/// a GPU; a GPU asked of a build without the feature is a one-line error.
#[macro_export]
macro_rules! on_backend {
    ($device:expr, $precision:expr, $f:ident($($arg:expr),* $(,)?)) => {{
        let device: $crate::backend::Device = $device.parse()?;
        match device {
            $crate::backend::Device::Cpu => $f(&$crate::backend::cpu::Cpu, $($arg),*),
            #[cfg(feature = "cuda")]
            $crate::backend::Device::Cuda(ordinal) => {
                let precision: $crate::backend::cuda::Precision = $precision.parse()?;
                let gpu = $crate::backend::cuda::Cuda::new(ordinal, precision)?;
                eprintln!("device: {} ({precision:?} matrix products, kernels as {:?})", gpu.device_name(), gpu.kernel_code());
                $f(&gpu, $($arg),*)
            }
            #[cfg(not(feature = "cuda"))]
            $crate::backend::Device::Cuda(_) => {
                let _ = &$precision;
                ::anyhow::bail!("this build has no GPU support: rebuild with `cargo build --release --features cuda`")
            }
        }
    }};
}

/// `--adapter`'s help, the same wherever it is taken.
pub const ADAPTER_HELP: &str = "A LoRA adapter: a PEFT directory (adapter_config.json + adapter_model.safetensors, \
e.g. a LoRA checkpoint `out/lora/step_40`), or a training output directory or its `latest` file, standing for the \
checkpoint `latest` names (default: none, the model alone)";

/// A model directory, with a PEFT LoRA adapter attached when one is given (a training output stands for the
/// checkpoint its `latest` names); an adapter made for another base is refused, saying why.
pub fn load_model<B: Backend>(b: &B, model: &Path, adapter: Option<&Path>) -> Result<Decoder<B>> {
    check_model_dir("--model", model)?;
    let adapter_dir = adapter.map(resolve_adapter).transpose()?;
    if let Some(dir) = &adapter_dir {
        check_adapter_base(dir, model)?;
    }
    let mut decoder = models::load_causal_lm(b, model)?;
    if let Some(dir) = adapter_dir {
        let adapter = crate::peft::Adapter::load(&dir)?;
        crate::peft::attach::attach_adapter(&mut decoder, b, &adapter)
            .with_context(|| format!("{}: does not fit the base {}", dir.display(), model.display()))?;
    }
    Ok(decoder)
}
