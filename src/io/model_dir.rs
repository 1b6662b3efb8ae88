//! Before a model directory is opened: that it exists, that it is one, and that it is the architecture a
//! config's `model_type` names — each failure one line that says which argument or field to fix.

use anyhow::{Result, bail};
use std::path::Path;

/// Where the book's model lives, and what fetches it.
const BOOK_MODEL: (&str, &str) = ("smollm2-135m-instruct", "scripts/fetch_smollm2.sh");

// ANCHOR: check_model_dir
/// `path` is a Hugging Face model directory (it holds config.json). `source` names where the path came from —
/// a flag (`--model`) or a config field (`pretrained_model_path`) — so the message says what to fix.
pub fn check_model_dir(source: &str, path: &Path) -> Result<()> {
    let shown = path.display();
    if !path.exists() {
        let fetch = match path.file_name().and_then(|n| n.to_str()) {
            Some(name) if name.eq_ignore_ascii_case(BOOK_MODEL.0) => format!(" (fetch it with {})", BOOK_MODEL.1),
            _ => String::new(),
        };
        bail!("{source}: {shown} does not exist{fetch}");
    }
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "gguf") {
            return Ok(()); // a GGUF file: its reader says whether it can be read
        }
        bail!("{source}: {shown} is a file, not a model directory (a directory with config.json and safetensors)");
    }
    if !path.join("config.json").is_file() {
        let hint = if path.join("adapter_config.json").is_file() {
            " — it is a LoRA adapter: pass it as --adapter, with its base model as the model"
        } else if path.join("latest").is_file() {
            " — it is a training output: pass the checkpoint its `latest` names, or --adapter for LoRA"
        } else {
            ""
        };
        bail!("{source}: {shown} is not a model directory (it has no config.json){hint}");
    }
    Ok(())
}
// ANCHOR_END: check_model_dir

/// MFTCoder's `model_type` keys (`MODEL_TYPES`) and the `model_type` each one's class reads in config.json.
pub const MODEL_TYPES: &[(&str, &str)] = &[
    ("llama", "llama"),
    ("code_llama", "llama"),
    ("deepseek", "llama"),
    ("mistral", "mistral"),
    ("mixtral", "mixtral"),
    ("qwen2", "qwen2"),
    ("qwen2_moe", "qwen2_moe"),
    ("starcoder", "gpt_bigcode"),
    ("starcoder2", "starcoder2"),
    ("gemma", "gemma"),
    ("gpt_neox", "gpt_neox"),
    ("phi", "phi"),
    ("deepseek_v2", "deepseek_v2"),
    ("qwen", "qwen"),
    ("chatglm2", "chatglm"),
    ("chatglm3", "chatglm"),
    ("baichuan", "baichuan"),
    ("aquila2", "aquila"),
];

// ANCHOR: check_model_type
/// A config's `model_type` against the checkpoint. MFTCoder loads `MODEL_TYPES[model_type].from_pretrained(path)`
/// whatever config.json says, so `"starcoder"` on a Llama checkpoint builds a GPT-BigCode model whose weights
/// mostly fail to load and start random — a run that trains, silently, the wrong model. Here that is refused;
/// `null` (or leaving the field out) skips the check.
pub fn check_model_type(model_type: Option<&str>, model_dir: &Path) -> Result<()> {
    let Some(key) = model_type else { return Ok(()) };
    let Some(&(_, wanted)) = MODEL_TYPES.iter().find(|(k, _)| *k == key) else {
        let keys: Vec<&str> = MODEL_TYPES.iter().map(|(k, _)| *k).collect();
        bail!("field `model_type` is \"{key}\"; allowed: {}, or null", keys.join(", "));
    };
    let actual = crate::io::hf_config::HfConfig::read(model_dir)?.model_type()?;
    if actual != wanted {
        let fitting: Vec<&str> = MODEL_TYPES.iter().filter(|(_, t)| *t == actual).map(|(k, _)| *k).collect();
        let instead = match fitting.as_slice() {
            [] => "null".to_owned(),
            keys => format!("{} (or null)", keys.join(" or ")),
        };
        bail!(
            "field `model_type` is \"{key}\" (a `{wanted}` model), but {}/config.json is a `{actual}` model; \
             MFTCoder would load these weights into the wrong class — set model_type to {instead}",
            model_dir.display()
        );
    }
    Ok(())
}
// ANCHOR_END: check_model_type

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama/gqa_tied")
    }

    #[test]
    fn a_missing_model_names_its_source_and_the_fetch_script() {
        let err = check_model_dir("pretrained_model_path", Path::new(".cache/smollm2-135m-instruct-x")).unwrap_err();
        assert_eq!(err.to_string(), "pretrained_model_path: .cache/smollm2-135m-instruct-x does not exist");
        let err = check_model_dir("pretrained_model_path", Path::new("/nowhere/smollm2-135m-instruct")).unwrap_err();
        assert!(err.to_string().ends_with("does not exist (fetch it with scripts/fetch_smollm2.sh)"), "{err}");
        let err = check_model_dir("--model", &fixture().join("config.json")).unwrap_err();
        assert!(err.to_string().contains("is a file, not a model directory"), "{err}");
        let err = check_model_dir("--model", &fixture().join("..")).unwrap_err();
        assert!(err.to_string().contains("is not a model directory (it has no config.json)"), "{err}");
        check_model_dir("--model", &fixture()).unwrap();
    }

    #[test]
    fn model_type_must_name_the_checkpoints_architecture() {
        for ok in [None, Some("llama"), Some("code_llama"), Some("deepseek")] {
            check_model_type(ok, &fixture()).unwrap();
        }
        let err = check_model_type(Some("starcoder"), &fixture()).unwrap_err().to_string();
        assert!(err.contains("`gpt_bigcode` model") && err.contains("is a `llama` model"), "{err}");
        assert!(err.contains("set model_type to llama or code_llama or deepseek (or null)"), "{err}");
        let err = check_model_type(Some("gpt2"), &fixture()).unwrap_err().to_string();
        assert!(err.starts_with("field `model_type` is \"gpt2\"; allowed: llama, code_llama"), "{err}");
    }
}
