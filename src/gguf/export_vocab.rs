//! A Hugging Face `tokenizer.json` as GGUF `tokenizer.ggml.*` metadata: the reverse of [`super::vocab`].
//!
//! A byte-level BPE (GPT-2, SmolLM2, StarCoder, Llama 3, Qwen2) becomes `model = gpt2` with its merges and the
//! llama.cpp name of its pre-tokenizer (found by comparing the JSON with the ones [`super::vocab`] writes for
//! each name); a SentencePiece-style BPE with byte fallback (Llama 2, CodeLlama) becomes `model = llama`, each
//! piece scored by the rank of the merge that makes it (−rank; single characters and bytes 0), so that
//! llama.cpp's score-driven merging takes the merges in the same order. Ids the vocabulary leaves out, up to
//! the embedding's rows, are filled with `[PADn]` tokens of type UNUSED, as llama.cpp's converter does.

use super::container::{Value, ValueType};
use super::vocab::{byte_level_pre_tokenizer, token_type};
use anyhow::{Context, Result, bail};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::Path;

/// The pre-tokenizer names llama.cpp knows that [`super::vocab`] can write back.
const PRE_NAMES: &[&str] = &["gpt-2", "smollm", "llama-bpe", "qwen2", "deepseek-coder"];

/// Drop what does not change how text is split (`trim_offsets` only moves offsets).
fn split_shape(v: &Json) -> Json {
    match v {
        Json::Object(m) => Json::Object(
            m.iter().filter(|(k, _)| *k != "trim_offsets").map(|(k, v)| (k.clone(), split_shape(v))).collect(),
        ),
        Json::Array(items) => Json::Array(items.iter().map(split_shape).collect()),
        other => other.clone(),
    }
}

fn pre_name(pre_tokenizer: &Json) -> Option<&'static str> {
    let shape = split_shape(pre_tokenizer);
    PRE_NAMES
        .iter()
        .copied()
        .find(|name| byte_level_pre_tokenizer(name).map(|p| split_shape(&p)) == Some(shape.clone()))
}

fn strings(items: Vec<String>) -> Value {
    Value::Array(ValueType::String, items.into_iter().map(Value::String).collect())
}

/// Whether the post-processor puts a special token first (BOS) / last (EOS) around a single sequence.
fn adds_bos_eos(post: &Json) -> (bool, bool) {
    match post.get("type").and_then(Json::as_str) {
        Some("TemplateProcessing") => {
            let single = post["single"].as_array().cloned().unwrap_or_default();
            let special = |item: Option<&Json>| item.is_some_and(|i| i.get("SpecialToken").is_some());
            (special(single.first()), single.len() > 1 && special(single.last()))
        }
        Some("Sequence") => post["processors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(adds_bos_eos)
            .fold((false, false), |(a, b), (c, d)| (a || c, b || d)),
        _ => (false, false),
    }
}

/// The text of a special-token field of tokenizer_config.json (a string, or an AddedToken object).
fn token_text(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_owned),
        _ => None,
    }
}

/// The chat template: tokenizer_config.json's `chat_template` (a string, or a list with a `default` entry),
/// else `chat_template.jinja` beside it.
fn chat_template(dir: &Path, config: &Json) -> Result<Option<String>> {
    match config.get("chat_template") {
        Some(Json::String(t)) => return Ok(Some(t.clone())),
        Some(Json::Array(list)) => {
            let default = list.iter().find(|t| t["name"] == "default").or(list.first());
            return Ok(default.and_then(|t| t["template"].as_str()).map(str::to_owned));
        }
        _ => {}
    }
    let file = dir.join("chat_template.jinja");
    if file.is_file() {
        return Ok(Some(std::fs::read_to_string(&file).with_context(|| format!("{}: cannot read", file.display()))?));
    }
    Ok(None)
}

// ANCHOR: tokenizer_metadata
/// The `tokenizer.*` keys for the tokenizer of `dir` (tokenizer.json, tokenizer_config.json, chat template),
/// with `n_vocab` ids (the embedding's rows) and the special ids config.json names as the fallback.
pub fn tokenizer_metadata(
    dir: &Path,
    tok: &Json,
    n_vocab: usize,
    config_ids: [Option<u32>; 3],
) -> Result<Vec<(String, Value)>> {
    let path = dir.join("tokenizer.json");
    let model = &tok["model"];
    if model["type"] != "BPE" {
        bail!("{}: model type {} cannot be exported to GGUF (supported: BPE)", path.display(), model["type"]);
    }
    let mut by_id: Vec<Option<(String, i32)>> = vec![None; n_vocab];
    let mut put = |id: u64, text: &str, kind: i32| -> Result<()> {
        match by_id.get_mut(id as usize) {
            Some(slot) => {
                *slot = Some((text.to_string(), kind));
                Ok(())
            }
            None => bail!("{}: token `{text}` has id {id}, past the model's {n_vocab} embeddings", path.display()),
        }
    };
    let vocab =
        model["vocab"].as_object().with_context(|| format!("{}: `model.vocab` is not an object", path.display()))?;
    let is_spm = model["byte_fallback"] == true;
    for (text, id) in vocab {
        let id = id.as_u64().with_context(|| format!("{}: vocab id of `{text}` is not an integer", path.display()))?;
        let byte = is_spm && text.len() == 6 && text.starts_with("<0x") && text.ends_with('>');
        put(id, text, if byte { token_type::BYTE } else { token_type::NORMAL })?;
    }
    for added in tok["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (added["id"].as_u64(), added["content"].as_str()) else { continue };
        put(id, text, if added["special"] == true { token_type::CONTROL } else { token_type::USER_DEFINED })?;
    }
    let (tokens, types): (Vec<String>, Vec<i32>) = by_id
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), token_type::UNUSED)))
        .unzip();
    let merges: Vec<String> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(p) => Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?)),
            _ => None,
        })
        .collect::<Option<_>>()
        .with_context(|| format!("{}: `model.merges` holds something other than pairs", path.display()))?;

    let mut m: Vec<(String, Value)> = Vec::new();
    let key = |k: &str| format!("tokenizer.ggml.{k}");
    if is_spm {
        m.push((key("model"), Value::String("llama".into())));
        m.push((key("pre"), Value::String("default".into())));
        // a piece scores −(rank of the merge that makes it): llama.cpp merges the best-scored pair first
        let rank: HashMap<String, usize> =
            merges.iter().enumerate().rev().map(|(r, mg)| (mg.replacen(' ', "", 1), r)).collect();
        let scores = tokens.iter().map(|t| Value::F32(rank.get(t).map_or(0.0, |&r| -(r as f32) - 1.0))).collect();
        let mut types = types.clone();
        let unk = token_text(model.get("unk_token"));
        for (t, kind) in tokens.iter().zip(types.iter_mut()) {
            if Some(t) == unk.as_ref() {
                *kind = token_type::UNKNOWN;
            }
        }
        let normalizer = tok["normalizer"].to_string();
        let prefix = normalizer.contains("Prepend")
            || tok["pre_tokenizer"]["prepend_scheme"].as_str().is_some_and(|s| s != "never");
        m.push((key("tokens"), strings(tokens.clone())));
        m.push((key("scores"), Value::Array(ValueType::F32, scores)));
        m.push((key("token_type"), Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect())));
        m.push((key("merges"), strings(merges)));
        m.push((key("add_space_prefix"), Value::Bool(prefix)));
    } else {
        let pre = pre_name(&tok["pre_tokenizer"]).with_context(|| {
            format!(
                "{}: the pre_tokenizer is not one llama.cpp knows by name (exportable: ByteLevel as in GPT-2, \
                 Digits + ByteLevel as in SmolLM2/StarCoder, the Llama 3, Qwen2 and DeepSeek-Coder splits)",
                path.display()
            )
        })?;
        m.push((key("model"), Value::String("gpt2".into())));
        m.push((key("pre"), Value::String(pre.into())));
        m.push((key("tokens"), strings(tokens.clone())));
        m.push((key("token_type"), Value::Array(ValueType::I32, types.into_iter().map(Value::I32).collect())));
        m.push((key("merges"), strings(merges)));
    }

    let config_path = dir.join("tokenizer_config.json");
    let config: Json = match std::fs::read_to_string(&config_path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config_path.display()))?
        }
        Err(_) => Json::Null,
    };
    let id_of = |text: &str| tokens.iter().position(|t| t == text).map(|i| i as u32);
    let [bos, eos, pad] = config_ids;
    let specials = [
        ("bos_token_id", token_text(config.get("bos_token")).and_then(|t| id_of(&t)).or(bos)),
        ("eos_token_id", token_text(config.get("eos_token")).and_then(|t| id_of(&t)).or(eos)),
        (
            "unknown_token_id",
            token_text(config.get("unk_token")).or_else(|| token_text(model.get("unk_token"))).and_then(|t| id_of(&t)),
        ),
        ("padding_token_id", token_text(config.get("pad_token")).and_then(|t| id_of(&t)).or(pad)),
    ];
    for (name, id) in specials {
        if let Some(id) = id {
            m.push((key(name), Value::U32(id)));
        }
    }
    let (add_bos, add_eos) = adds_bos_eos(&tok["post_processor"]);
    m.push((key("add_bos_token"), Value::Bool(add_bos)));
    m.push((key("add_eos_token"), Value::Bool(add_eos)));
    if let Some(template) = chat_template(dir, &config)? {
        m.push(("tokenizer.chat_template".into(), Value::String(template)));
    }
    Ok(m)
}
// ANCHOR_END: tokenizer_metadata
