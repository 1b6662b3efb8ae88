//! The kernel sources (`kernels/*.cu`, one file per CPU module they mirror), compiled by NVRTC at first use
//! and cached for the rest of the process.

use anyhow::{Result, anyhow};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Prepended to every file: warp/block reductions, the bf16 conversion, the grid-stride loop.
const COMMON: &str = include_str!("kernels/common.cuh");

/// (file, source, kernels it defines)
pub const SOURCES: &[(&str, &str, &[&str])] = &[
    (
        "elementwise.cu",
        include_str!("kernels/elementwise.cu"),
        &[
            "add",
            "add_scaled",
            "scale",
            "mul",
            "swiglu",
            "swiglu_backward",
            "add_bias_rows",
            "column_sum",
            "f32_to_bf16",
            "concat_rows",
        ],
    ),
    ("embedding.cu", include_str!("kernels/embedding.cu"), &["embedding", "embedding_backward"]),
    ("rms_norm.cu", include_str!("kernels/rms_norm.cu"), &["rms_norm", "rms_norm_backward"]),
    ("rope.cu", include_str!("kernels/rope.cu"), &["rope"]),
    (
        "attention.cu",
        include_str!("kernels/attention.cu"),
        &["attention_forward", "attention_delta", "attention_backward_dq", "attention_backward_dkdv"],
    ),
    ("cross_entropy.cu", include_str!("kernels/cross_entropy.cu"), &["cross_entropy"]),
    ("quant4.cu", include_str!("kernels/quant4.cu"), &["decode_double_quant", "dequantize_4bit"]),
    ("optim.cu", include_str!("kernels/optim.cu"), &["adamw", "sum_squares"]),
];

// ANCHOR: compile
/// Compile one file for a virtual architecture such as `compute_90`. Precise `expf`/division (no fast math):
/// the property tests compare against the CPU path at f32 tolerances.
pub fn compile(file: &str, source: &str, arch: &str) -> Result<Ptx> {
    let opts = CompileOptions {
        name: Some(file.to_string()),
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".to_string()],
        ..Default::default()
    };
    compile_ptx_with_opts(format!("#line 1 \"common.cuh\"\n{COMMON}\n#line 1 \"{file}\"\n{source}"), opts)
        .map_err(|e| anyhow!("NVRTC could not compile {file} for {arch}: {e}"))
}
// ANCHOR_END: compile

/// Every file's PTX for `arch`, compiled once per process (the first backend opened pays ~1 s).
pub fn compiled(arch: &str) -> Result<Vec<(&'static str, Ptx)>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Vec<(&'static str, String)>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().map_err(|_| anyhow!("the kernel cache lock is poisoned"))?;
    if !cache.contains_key(arch) {
        let mut ptx = Vec::with_capacity(SOURCES.len());
        for &(file, source, _) in SOURCES {
            ptx.push((file, compile(file, source, arch)?.to_src()));
        }
        cache.insert(arch.to_string(), ptx);
    }
    Ok(cache[arch].iter().map(|(file, src)| (*file, Ptx::from_src(src.clone()))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC needs no GPU: where libnvrtc is installed (the CUDA toolkit, or the `nvidia-cuda-nvrtc` wheel on
    /// LD_LIBRARY_PATH) every kernel file must compile for Hopper and Ampere, and define each kernel the
    /// backend looks up.
    #[test]
    fn every_kernel_compiles_with_nvrtc() {
        // SAFETY: only probes whether the library can be loaded.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipping: libnvrtc is not installed here, so the kernels cannot be compiled");
            return;
        }
        for arch in ["compute_90", "compute_80"] {
            for &(file, source, names) in SOURCES {
                let ptx = compile(file, source, arch).unwrap_or_else(|e| panic!("{e}"));
                let text = ptx.to_src();
                for name in names {
                    assert!(text.contains(&format!(".entry {name}(")), "{file} ({arch}) defines no kernel `{name}`");
                }
            }
        }
    }
}
