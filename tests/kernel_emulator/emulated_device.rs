//! Running a test binary's GPU tests again on the emulated device: `fake_cuda.cpp` built as libcuda, libnvrtc,
//! libcublas and libcublasLt in a temporary folder, and the binary re-run as a child with that folder first on the library
//! path and `MFTCODER_EMULATED_DEVICE` set (shared by the cuda_* test files, most through cuda_shared;
//! the includer declares `mod compile` beside it).

/// Whether this process is that child run.
pub fn is_the_emulated_run() -> bool {
    std::env::var_os("MFTCODER_EMULATED_DEVICE").is_some()
}

/// Run this test binary on the emulated device; its (stdout, stderr) once it has passed, `None` where the
/// emulator cannot be built (no g++; the test skips, saying why). A failing child run fails the caller.
pub fn rerun_on_the_emulated_device(tag: &str) -> Option<(String, String)> {
    let dir = std::env::temp_dir().join(format!("mftcoder-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dir.join("libcuda.so");
    if super::compile::shared_library("fake_cuda.cpp", &lib).is_none() {
        let _ = std::fs::remove_dir_all(&dir);
        return None;
    }
    for name in ["libnvrtc.so", "libcublas.so", "libcublasLt.so"] {
        std::fs::copy(&lib, dir.join(name)).unwrap();
    }
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("LD_LIBRARY_PATH", &dir)
        .env("MFTCODER_EMULATED_DEVICE", "1")
        .args(["--test-threads", "1", "--nocapture"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&child.stdout), String::from_utf8_lossy(&child.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(child.status.success(), "on the emulated device:\n{stdout}\n{stderr}");
    Some((stdout.into_owned(), stderr.into_owned()))
}
