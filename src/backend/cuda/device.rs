//! Which device the backend runs on, how its matrix products round, and the backend opened on it: its
//! stream, kernels, cuBLAS handle, pools and counters.

use super::counters::{CounterSnapshot, DeviceCounters};
use super::kernels::{self, KernelCode};
use super::pool::Pool;
use super::upload_cache::UploadCache;
use super::{Cuda, fail};
use anyhow::{Context, Result, anyhow};
use cudarc::cublas::CudaBlas;
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

impl Cuda {
    /// Open device `ordinal` and compile the kernels for its architecture.
    pub fn new(ordinal: usize, precision: Precision) -> Result<Self> {
        let ctx = open_device(ordinal)?;
        let (major, minor) = ctx.compute_capability().map_err(|e| anyhow!("CUDA device {ordinal}: {e:?}"))?;
        // one stream does all the work, in order: cudarc's cross-stream event bookkeeping is pure overhead here
        // SAFETY: no other stream touches this context's buffers.
        unsafe { ctx.disable_event_tracking() };
        // a stream of our own rather than the legacy default stream, which synchronizes with every other
        // stream of the context and cannot be captured into a CUDA graph
        let stream = ctx.new_stream().map_err(|e| anyhow!("CUDA device {ordinal}: creating a stream: {e:?}"))?;
        let (functions, kernel_code) = kernels::load_kernels(&ctx, major, minor)?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| anyhow!("cuBLAS: {e:?}"))?;
        // cudarc panics where the library is missing: one line instead
        let blas_lt = match std::panic::catch_unwind(|| super::blas_lt::BlasLt::new(major)) {
            Ok(Ok(handle)) => handle,
            Ok(Err(e)) => return Err(anyhow!("cuBLASLt: {e:?}")),
            Err(_) => return Err(anyhow!("cuBLASLt: libcublasLt could not be loaded (it ships beside libcublas)")),
        };
        let counters = Arc::new(DeviceCounters::default());
        let pool = Pool::new(stream.clone(), counters.clone());
        let pool_bf16 = Pool::new(stream.clone(), counters.clone());
        let ids = UploadCache::new(Pool::new(stream.clone(), counters.clone()), stream.clone(), counters.clone());
        let floats = UploadCache::new(pool.clone(), stream.clone(), counters.clone());
        let words = UploadCache::new(Pool::new(stream.clone(), counters.clone()), stream.clone(), counters.clone());
        Ok(Cuda {
            ctx,
            stream,
            blas,
            blas_lt,
            functions,
            precision,
            kernel_code,
            counters,
            pool,
            pool_bf16,
            ids,
            floats,
            words,
        })
    }

    /// Launches, allocations, uploads and blocking reads so far (`counters.rs`).
    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    /// What the kernels were compiled to (`sm_90` machine code, or PTX the driver JITs).
    pub fn kernel_code(&self) -> &KernelCode {
        &self.kernel_code
    }

    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown CUDA device".into())
    }

    /// Bytes of device memory in use (total − free), for the benchmark's peak-memory column.
    pub fn memory_used(&self) -> Result<usize> {
        let (free, total) = self.ctx.mem_get_info().context("cuMemGetInfo")?;
        Ok(total - free)
    }

    pub fn synchronize(&self) {
        self.stream.synchronize().unwrap_or_else(|e| fail("synchronize", e));
    }
}
