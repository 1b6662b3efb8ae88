//! Reading and writing the files the Hugging Face ecosystem uses.
pub mod hf_config;
pub mod model_dir;
pub mod safetensors;
pub mod sentencepiece;
pub mod side_files;
pub mod sp_charsmap;
pub mod sp_family;
pub mod sp_proto;
pub mod tiktoken;
pub mod tokenizer;

use anyhow::{Context, Result};
use std::path::Path;

/// Write a file atomically: into a temporary sibling, then rename over the target.
/// A crash or an error never leaves a half-written file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp); // a full disk leaves no partial file behind
        return Err(e).with_context(|| format!("{}: cannot write", tmp.display()));
    }
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: cannot move the finished file into place", path.display())
    })
}
