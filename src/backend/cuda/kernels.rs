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
            "gelu_tanh",
            "gelu_tanh_backward",
            "gelu_erf",
            "gelu_erf_backward",
            "add_bias_rows",
            "column_sum",
            "f32_to_bf16",
            "concat_rows",
        ],
    ),
    ("embedding.cu", include_str!("kernels/embedding.cu"), &["embedding", "embedding_backward"]),
    ("rms_norm.cu", include_str!("kernels/rms_norm.cu"), &["rms_norm", "rms_norm_backward"]),
    ("layer_norm.cu", include_str!("kernels/layer_norm.cu"), &["layer_norm", "layer_norm_backward"]),
    ("rope.cu", include_str!("kernels/rope.cu"), &["rope"]),
    ("fused_qkv.cu", include_str!("kernels/fused_qkv.cu"), &["split_qkv", "join_qkv"]),
    ("row_scale.cu", include_str!("kernels/row_scale.cu"), &["scale_rows", "row_dots"]),
    (
        "attention.cu",
        include_str!("kernels/attention.cu"),
        &[
            "attention_forward_tiled",
            "attention_backward_dq_tiled",
            "attention_backward_dkdv_tiled",
            "attention_forward_per_key",
            "attention_delta",
            "attention_backward_dq_per_key",
            "attention_backward_dkdv_per_key",
        ],
    ),
    ("cross_entropy.cu", include_str!("kernels/cross_entropy.cu"), &["cross_entropy"]),
    ("quant4.cu", include_str!("kernels/quant4.cu"), &["decode_double_quant", "dequantize_4bit"]),
    ("optim.cu", include_str!("kernels/optim.cu"), &["adamw", "sum_squares"]),
    ("random.cu", include_str!("kernels/random.cu"), &["dropout_mask"]),
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

#[cfg(test)]
mod launch_tests {
    use super::SOURCES;

    /// Split `text` (the inside of a parameter or argument list) at the commas outside parentheses.
    fn top_level_items(text: &str) -> Vec<String> {
        let (mut items, mut depth, mut current) = (Vec::new(), 0i32, String::new());
        for ch in text.chars() {
            match ch {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(ch);
        }
        if !current.trim().is_empty() {
            items.push(current);
        }
        items.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
    }

    /// The text between the parenthesis at `open` and its partner.
    fn parenthesised(text: &str, open: usize) -> &str {
        let mut depth = 0;
        for (i, ch) in text[open..].char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return &text[open + 1..open + i];
                    }
                }
                _ => {}
            }
        }
        panic!("unbalanced parentheses")
    }

    /// Arguments pushed in the wrong number are undefined behaviour on the GPU, and no compiler sees both
    /// sides: count each kernel's C parameters and the arguments of every `launch!` that names it.
    #[test]
    fn every_launch_passes_as_many_arguments_as_its_kernel_takes() {
        let mut arity = std::collections::HashMap::new();
        for &(_, source, names) in SOURCES {
            for &name in names {
                let at = source.find(&format!("void {name}(")).unwrap_or_else(|| panic!("no kernel {name}"));
                let open = at + format!("void {name}").len();
                arity.insert(name, top_level_items(parenthesised(source, open)).len());
            }
        }
        let mut checked = 0;
        for backend in [
            include_str!("mod.rs"),
            include_str!("attention.rs"),
            include_str!("fused_qkv.rs"),
            include_str!("row_scale.rs"),
            include_str!("optim.rs"),
            include_str!("quant4.rs"),
            include_str!("norms.rs"),
            include_str!("rope.rs"),
        ] {
            for (at, _) in backend.match_indices("launch!(") {
                let args = top_level_items(parenthesised(backend, at + "launch!".len()));
                let Some(name) = args.get(1) else { continue };
                // a literal, or a variable bound by `let name = if … { "a" } else { "b" };` before the launch
                let names: Vec<&str> = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                    Some(literal) => vec![literal],
                    None => match backend[..at].rfind(&format!("let {name} = ")) {
                        Some(bound) => {
                            let statement = &backend[bound..bound + backend[bound..].find(';').unwrap()];
                            statement.split('"').skip(1).step_by(2).collect()
                        }
                        None => continue, // the macro's own definition, or a name passed in (elementwise2)
                    },
                };
                for name in names {
                    let expected = arity[name];
                    assert_eq!(
                        args.len() - 3,
                        expected,
                        "launch!({name}) passes {} arguments, the kernel takes {expected}",
                        args.len() - 3
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 20, "only {checked} launches found");
    }
}
