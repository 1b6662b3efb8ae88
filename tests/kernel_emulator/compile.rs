//! Building the kernel emulator's C++ (shared by every test binary that runs the kernels on the CPU).

use std::path::Path;

/// Compile `tests/kernel_emulator/<source>` into the shared library `output`. `None` (and one line saying why)
/// when there is no g++; a source that does not compile is a test failure, with the compiler's message.
pub fn shared_library(source: &str, output: &Path) -> Option<()> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kernel_emulator").join(source);
    // -U_FORTIFY_SOURCE: the fibers switch stacks with _longjmp, which glibc's fortified longjmp refuses
    let built = std::process::Command::new("g++")
        .args(["-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", "-Wno-unknown-pragmas", "-U_FORTIFY_SOURCE", "-o"])
        .arg(output)
        .arg(&source)
        .output();
    match built {
        Ok(out) if out.status.success() => Some(()),
        Ok(out) => panic!("{} does not compile:\n{}", source.display(), String::from_utf8_lossy(&out.stderr)),
        Err(e) => {
            eprintln!("skipping: g++ is not available ({e}), so the kernels cannot be run on the CPU");
            None
        }
    }
}
