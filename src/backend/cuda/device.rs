//! Which device the backend runs on, and how its matrix products round.

use anyhow::{Result, anyhow};
use cudarc::driver::CudaContext;
use std::sync::Arc;

/// Open CUDA device `ordinal`, or say in one line why there is none.
pub fn open_device(ordinal: usize) -> Result<Arc<CudaContext>> {
    // SAFETY: only probes whether the driver library can be loaded; no CUDA call is made.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(anyhow!("no CUDA device: the CUDA driver library (libcuda) is not installed on this machine"));
    }
    // cudarc panics (rather than erring) on some driver failures: keep that to one line too
    let opened = std::panic::catch_unwind(|| CudaContext::new(ordinal));
    match opened {
        Ok(Ok(ctx)) => Ok(ctx),
        Ok(Err(e)) => Err(anyhow!("no CUDA device {ordinal}: {e:?}")),
        Err(_) => Err(anyhow!("no CUDA device {ordinal}: the CUDA driver failed to initialise")),
    }
}

/// How matrix products run (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(anyhow!("unknown precision `{other}` (allowed: f32, bf16)")),
        }
    }
}
