//! The kernel sources (`kernels/*.cu`, one file per CPU module they mirror), compiled by NVRTC at first use
//! and cached for the rest of the process, and loaded onto a device as its own machine code or as PTX.

use anyhow::{Result, anyhow, bail};
use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::Arc;
use std::sync::{Mutex, OnceLock};

/// Prepended to every file, in order: warp/block reductions, the bf16 conversion and the grid-stride loop
/// (common.cuh); the attention kernels' sizes, scores, masks and loop bounds (attention_masks.cuh); the
/// tensor-core instruction and its fragments (mma.cuh). The emulator's harness.cpp includes the same three.
const HEADERS: &[(&str, &str)] = &[
    ("common.cuh", include_str!("kernels/common.cuh")),
    ("attention_masks.cuh", include_str!("kernels/attention_masks.cuh")),
    ("mma.cuh", include_str!("kernels/mma.cuh")),
];

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
            "swiglu_to_bf16",
            "swiglu_backward",
            "swiglu_halves",
            "swiglu_halves_to_bf16",
            "swiglu_halves_bf16",
            "swiglu_halves_backward",
            "swiglu_halves_backward_to_bf16",
            "swiglu_halves_backward_bf16",
            "gelu_tanh",
            "gelu_tanh_backward",
            "gelu_erf",
            "gelu_erf_backward",
            "add_bias_rows",
            "add_bias_rows_bf16",
            "column_sum",
            "f32_to_bf16",
            "concat_rows",
        ],
    ),
    ("embedding.cu", include_str!("kernels/embedding.cu"), &["embedding", "embedding_backward", "embedding_bf16"]),
    (
        "rms_norm.cu",
        include_str!("kernels/rms_norm.cu"),
        &[
            "rms_norm",
            "rms_norm_to_bf16",
            "add_rms_norm",
            "add_rms_norm_to_bf16",
            "rms_norm_backward",
            "rms_norm_backward_input",
            "rms_norm_backward_add",
            "rms_norm_backward_input_add",
        ],
    ),
    (
        "layer_norm.cu",
        include_str!("kernels/layer_norm.cu"),
        &[
            "layer_norm",
            "layer_norm_to_bf16",
            "add_layer_norm",
            "add_layer_norm_to_bf16",
            "layer_norm_backward",
            "layer_norm_backward_input",
            "layer_norm_backward_add",
            "layer_norm_backward_input_add",
        ],
    ),
    ("rope.cu", include_str!("kernels/rope.cu"), &["rope", "split_qkv_rope", "join_qkv_rope", "join_qkv_rope_to_bf16"]),
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
            "attention_delta_bf16",
            "attention_backward_dq_per_key",
            "attention_backward_dkdv_per_key",
        ],
    ),
    (
        "flash_attention.cu",
        include_str!("kernels/flash_attention.cu"),
        &[
            "flash_attention_forward_d64",
            "flash_attention_forward_d128",
            "flash_attention_forward_d256",
            "flash_attention_forward_d64_to_bf16",
            "flash_attention_forward_d128_to_bf16",
            "flash_attention_forward_d256_to_bf16",
            "flash_attention_dq_d64",
            "flash_attention_dq_d128",
            "flash_attention_dq_d256",
            "flash_attention_dkdv_d64",
            "flash_attention_dkdv_d128",
            "flash_attention_dkdv_d256",
            "mma_bf16_tile_product",
        ],
    ),
    ("cross_entropy.cu", include_str!("kernels/cross_entropy.cu"), &["cross_entropy"]),
    (
        "quant4.cu",
        include_str!("kernels/quant4.cu"),
        &["dequantize_4bit", "dequantize_4bit_dq", "dequantize_4bit_bf16", "dequantize_4bit_dq_bf16"],
    ),
    (
        "optim.cu",
        include_str!("kernels/optim.cu"),
        &["adamw", "sum_squares", "grad_norm_partials", "grad_norm_finish", "adamw_multi"],
    ),
    (
        "random.cu",
        include_str!("kernels/random.cu"),
        &["dropout_mask", "dropout_apply", "dropout_apply_to_bf16", "dropout_apply_bf16", "dropout_add"],
    ),
];

/// A file as NVRTC compiles it: the shared headers first, with `#line`s so errors name the right file.
fn full_source(file: &str, source: &str) -> String {
    let mut full = String::new();
    for (name, header) in HEADERS {
        full.push_str(&format!("#line 1 \"{name}\"\n{header}\n"));
    }
    full + &format!("#line 1 \"{file}\"\n{source}")
}

/// Precise `expf`/division (no fast math): the property tests compare against the CPU path at f32 tolerances.
fn options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "--std=c++17".to_string()]
}

// ANCHOR: compile
/// Compile one file to PTX for a virtual architecture such as `compute_90`: portable, but the driver must
/// JIT it, and a driver older than the NVRTC refuses PTX of a newer ISA version (the PyPI NVRTC 13.2 against
/// a CUDA 13.0 driver).
pub fn compile(file: &str, source: &str, arch: &str) -> Result<Ptx> {
    let opts = CompileOptions { name: Some(file.to_string()), options: options(arch), ..Default::default() };
    compile_ptx_with_opts(full_source(file, source), opts)
        .map_err(|e| anyhow!("NVRTC could not compile {file} for {arch}: {e}"))
}

/// Compile one file to a cubin for a real architecture such as `sm_90`: the device's own machine code, which
/// the driver loads without a JIT, so an NVRTC newer than the driver (within its major version) still works.
pub fn compile_cubin(file: &str, source: &str, sm: &str) -> Result<Vec<u8>> {
    Ok(cubin_and_log(file, source, sm, false)?.0)
}

/// What ptxas says of each kernel of one file compiled for `sm` (`--ptxas-options=-v`): registers, stack frame,
/// spill stores and loads, shared memory, per entry function. Registers are what the attention kernels run out
/// of first; a test holds every kernel to no spills.
pub fn ptxas_report(file: &str, source: &str, sm: &str) -> Result<String> {
    Ok(cubin_and_log(file, source, sm, true)?.1)
}

fn cubin_and_log(file: &str, source: &str, sm: &str, verbose: bool) -> Result<(Vec<u8>, String)> {
    use cudarc::nvrtc::{result, sys};
    let src = CString::new(full_source(file, source)).map_err(|_| anyhow!("{file}: a NUL byte in the source"))?;
    let name = CString::new(file).map_err(|_| anyhow!("{file}: a NUL byte in the name"))?;
    let program = result::create_program(&src, Some(&name)).map_err(|e| anyhow!("NVRTC: {file}: {e:?}"))?;
    let mut opts = options(sm);
    if verbose {
        opts.push("--ptxas-options=-v".to_string());
    }
    // SAFETY: `program` was created above and is destroyed once, below; `src` and `name` outlive it.
    unsafe {
        let log = || match result::get_program_log(program) {
            Ok(log) if !log.is_empty() => CStr::from_ptr(log.as_ptr()).to_string_lossy().into_owned(),
            _ => String::new(),
        };
        let cubin = (|| {
            if let Err(e) = result::compile_program(program, &opts) {
                return Err(anyhow!("NVRTC could not compile {file} for {sm}: {e:?}\n{}", log()));
            }
            let mut size = 0usize;
            sys::nvrtcGetCUBINSize(program, &mut size).result().map_err(|e| anyhow!("{file}: no cubin: {e:?}"))?;
            let mut cubin = vec![0u8; size];
            sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr().cast()).result().map_err(|e| anyhow!("{file}: {e:?}"))?;
            Ok((cubin, log()))
        })();
        let _ = result::destroy_program(program);
        cubin
    }
}
// ANCHOR_END: compile

/// What the kernels were compiled to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KernelCode {
    /// Machine code for `sm_XY`.
    Cubin(String),
    /// PTX for `compute_XY`, for the driver to JIT.
    Ptx(String),
}

/// Every file compiled for a device of compute capability `major.minor`, once per process (the first backend
/// opened pays ~1 s): `KernelCode::Cubin` when NVRTC can build `sm_XY` machine code, otherwise PTX.
pub fn compiled(code: &KernelCode) -> Result<Vec<(&'static str, Ptx)>> {
    type Images = Vec<(&'static str, Vec<u8>)>; // (file, cubin or PTX text)
    static CACHE: OnceLock<Mutex<HashMap<KernelCode, Images>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().map_err(|_| anyhow!("the kernel cache lock is poisoned"))?;
    if !cache.contains_key(code) {
        let mut images = Vec::with_capacity(SOURCES.len());
        for &(file, source, _) in SOURCES {
            let image = match code {
                KernelCode::Cubin(sm) => compile_cubin(file, source, sm)?,
                KernelCode::Ptx(arch) => compile(file, source, arch)?.to_src().into_bytes(),
            };
            images.push((file, image));
        }
        cache.insert(code.clone(), images);
    }
    Ok(cache[code]
        .iter()
        .map(|(file, image)| match code {
            KernelCode::Cubin(_) => (*file, Ptx::from_binary(image.clone())),
            KernelCode::Ptx(_) => (*file, Ptx::from_src(String::from_utf8_lossy(image).into_owned())),
        })
        .collect())
}

// ANCHOR: load_kernels
/// Every kernel of the device's compute capability: its own `sm_XY` machine code where NVRTC builds it and
/// the driver loads it, else PTX for `compute_XY` (an NVRTC that does not know the GPU yet, a driver that
/// rejects the image). Both failures are reported when neither works.
pub(super) fn load_kernels(
    ctx: &Arc<CudaContext>,
    major: i32,
    minor: i32,
) -> Result<(HashMap<&'static str, CudaFunction>, KernelCode)> {
    let load = |code: &KernelCode| -> Result<HashMap<&'static str, CudaFunction>> {
        let mut functions = HashMap::new();
        for ((file, image), &(_, _, names)) in compiled(code)?.into_iter().zip(SOURCES) {
            let module = ctx.load_module(image).map_err(|e| anyhow!("loading {file} ({code:?}): {e:?}"))?;
            for &name in names {
                let f = module.load_function(name).map_err(|e| anyhow!("{file}: kernel `{name}`: {e:?}"))?;
                functions.insert(name, f);
            }
        }
        Ok(functions)
    };
    let cubin = KernelCode::Cubin(format!("sm_{major}{minor}"));
    let ptx = KernelCode::Ptx(format!("compute_{major}{minor}"));
    match load(&cubin) {
        Ok(functions) => Ok((functions, cubin)),
        Err(cubin_error) => match load(&ptx) {
            Ok(functions) => Ok((functions, ptx)),
            Err(ptx_error) => {
                bail!("the CUDA kernels load neither as {cubin:?} ({cubin_error}) nor as {ptx:?} ({ptx_error})")
            }
        },
    }
}
// ANCHOR_END: load_kernels

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
                // the tensor-core attention is the instruction itself on sm_80 and later, not mma.cuh's fallback
                if file == "flash_attention.cu" {
                    assert!(
                        text.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"),
                        "{arch}: no mma.sync"
                    );
                }
            }
        }
        // and to the machine code of Hopper (the H200) and Ampere: ELF images naming every kernel
        for sm in ["sm_90", "sm_80"] {
            for &(file, source, names) in SOURCES {
                let cubin = compile_cubin(file, source, sm).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(&cubin[..4], b"\x7fELF", "{file} ({sm}): not an ELF image");
                for name in names {
                    let found = cubin
                        .windows(name.len() + 1)
                        .any(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0);
                    assert!(found, "{file} ({sm}) has no symbol `{name}`");
                }
            }
        }
    }

    /// Spilled registers go to local memory, on every tile of the loops that hold them. On Hopper no kernel
    /// may spill: ptxas reports "0 bytes spill stores" for each (the dk/dv pass at head_dim 256 spilled 1212
    /// bytes per thread before it split into a dV and a dK pass).
    #[test]
    fn no_kernel_spills_registers_on_hopper() {
        // SAFETY: only probes whether the library can be loaded.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipping: libnvrtc is not installed here, so the kernels cannot be compiled");
            return;
        }
        let mut kernels = 0;
        for &(file, source, _) in SOURCES {
            let report = ptxas_report(file, source, "sm_90").unwrap_or_else(|e| panic!("{e}"));
            let mut entry = "";
            for line in report.lines() {
                if let Some(at) = line.find("Compiling entry function '") {
                    entry = line[at + 26..].split('\'').next().unwrap_or("");
                    kernels += 1;
                }
                if let Some(at) = line.find(" bytes spill stores") {
                    let bytes = line[..at].rsplit(|c: char| !c.is_ascii_digit()).next().unwrap_or("");
                    assert_eq!(bytes, "0", "{file}: kernel `{entry}` spills registers on sm_90: {}", line.trim());
                }
            }
        }
        assert!(kernels >= 20, "only {kernels} kernels in ptxas' report");
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
            include_str!("linear_4bit.rs"),
            include_str!("lora.rs"),
            include_str!("norms.rs"),
            include_str!("rope.rs"),
            include_str!("cross_entropy.rs"),
            include_str!("gate_up.rs"),
            include_str!("tensor.rs"),
            include_str!("linear.rs"),
            include_str!("rows.rs"),
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
