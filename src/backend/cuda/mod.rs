//! The CUDA backend (feature `cuda`), through cudarc.
//!
//! cudarc loads libcuda, libnvrtc and libcublas when first used, so this module compiles and type-checks on a
//! machine with no CUDA at all. So far it opens a device and reports cleanly when there is none; the kernels
//! that implement the [`Backend`](super::Backend) ops on the GPU are the CUDA issue's work.

use anyhow::{Result, anyhow};
use cudarc::driver::CudaContext;
use std::sync::Arc;

/// Open CUDA device `ordinal`, or say in one line why there is none.
pub fn open_device(ordinal: usize) -> Result<Arc<CudaContext>> {
    // SAFETY: only probes whether the driver library can be loaded; no CUDA call is made.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(anyhow!("no CUDA device: the CUDA driver library (libcuda) is not installed on this machine"));
    }
    CudaContext::new(ordinal).map_err(|e| anyhow!("CUDA device {ordinal}: {e:?}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn opening_a_device_either_works_or_explains_why_not() {
        match super::open_device(0) {
            Ok(ctx) => eprintln!("CUDA device 0 opened: {:?}", ctx.name()),
            Err(e) => {
                eprintln!("skipping: {e}");
                assert!(e.to_string().contains("CUDA"));
            }
        }
    }
}
