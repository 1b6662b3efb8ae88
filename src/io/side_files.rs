//! The files of a model directory besides its weights — config, tokenizer, chat template, and the remote
//! code `config.json`'s `auto_map` points transformers at — carried into every directory this crate writes
//! from one (a merged model, a full-parameter checkpoint, a quantized copy), so the new directory loads
//! wherever the original did: `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` included.

use anyhow::{Context, Result};
use std::path::Path;

/// Side files by name: configs, every tokenizer format the loader reads (tokenizer.json, SentencePiece's
/// tokenizer.model, Qwen-1's qwen.tiktoken, GPT-2's vocab.json + merges.txt) and the chat template.
const NAMED: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "qwen.tiktoken",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
];

// ANCHOR: copy_side_files
/// Copy `from`'s side files into `to` (a directory being written): the named ones that exist, except those in
/// `except` (files the caller writes itself), and every top-level `*.py` — the remote code of `auto_map`
/// (`modeling_qwen.py`, `tokenization_chatglm.py`, …). A GGUF source has its side files rebuilt from its
/// metadata instead.
pub fn copy_side_files(from: &Path, to: &Path, except: &[&str]) -> Result<()> {
    if crate::gguf::is_gguf(from) {
        let g = crate::gguf::container::GgufFile::open(from)?;
        for (file, bytes) in crate::gguf::import::side_files_of(&g)?.into_iter().filter(|(f, _)| !except.contains(f)) {
            std::fs::write(to.join(file), bytes).with_context(|| format!("{}: cannot write", to.display()))?;
        }
        return Ok(());
    }
    let mut names: Vec<String> = NAMED.iter().map(|n| n.to_string()).collect();
    let listing = std::fs::read_dir(from).with_context(|| format!("{}: cannot list", from.display()))?;
    for entry in listing {
        let name = entry.with_context(|| format!("{}: cannot list", from.display()))?.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".py") {
            names.push(name.into_owned());
        }
    }
    for name in names.iter().filter(|n| !except.contains(&n.as_str())) {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name)).with_context(|| format!("{}: cannot copy", src.display()))?;
        }
    }
    Ok(())
}
// ANCHOR_END: copy_side_files

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_code_and_every_tokenizer_format_come_along() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for f in
            ["config.json", "modeling_qwen.py", "qwen.tiktoken", "tokenizer.model", "model.safetensors", "notes.txt"]
        {
            std::fs::write(from.path().join(f), f).unwrap();
        }
        std::fs::create_dir(from.path().join("sub.py")).unwrap(); // a directory is not a file to copy
        copy_side_files(from.path(), to.path(), &["config.json"]).unwrap();
        let mut copied: Vec<String> =
            std::fs::read_dir(to.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        copied.sort();
        assert_eq!(copied, ["modeling_qwen.py", "qwen.tiktoken", "tokenizer.model"]);
    }
}
