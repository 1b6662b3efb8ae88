//! The kernel harness (`harness.cpp`: the .cu sources unchanged after `cuda_on_cpu.hpp`), compiled once per
//! test binary and loaded, with each kernel looked up as `emu_<kernel>` (shared by tests/kernels_on_cpu.rs and
//! tests/flash_attention_kernels.rs; the includer declares `mod compile` beside it).

use std::ffi::{CString, c_void};
use std::sync::OnceLock;

/// The loaded harness library.
pub struct Emulator(*mut c_void);
// SAFETY: the handle is only used to look up symbols, which dlsym allows from any thread.
unsafe impl Send for Emulator {}
unsafe impl Sync for Emulator {}

/// The harness, built and loaded at first use; `None` (the test skips, saying why) without g++.
pub fn emulator() -> Option<&'static Emulator> {
    static LOADED: OnceLock<Option<Emulator>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let lib = std::env::temp_dir().join(format!("mftcoder-kernels-{}.so", std::process::id()));
            super::compile::shared_library("harness.cpp", &lib)?;
            let path = CString::new(lib.to_str().unwrap()).unwrap();
            // SAFETY: a library we just built; RTLD_NOW resolves everything at load.
            let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
            assert!(!handle.is_null(), "dlopen {}", lib.display());
            let _ = std::fs::remove_file(&lib); // the loaded library stays mapped; the file is not needed
            Some(Emulator(handle))
        })
        .as_ref()
}

impl Emulator {
    /// `emu_<kernel>` as a function of type F (the caller states the C signature).
    pub fn kernel<F: Copy>(&self, name: &str) -> F {
        let sym = CString::new(format!("emu_{name}")).unwrap();
        // SAFETY: dlsym on a live handle.
        let f = unsafe { libc::dlsym(self.0, sym.as_ptr()) };
        assert!(!f.is_null(), "no kernel {name} in the harness");
        assert_eq!(size_of::<F>(), size_of::<*mut c_void>());
        // SAFETY: F is the `extern "C"` type of emu_<name> as harness.cpp declares it.
        unsafe { std::mem::transmute_copy(&f) }
    }
}
