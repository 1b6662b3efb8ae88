//! A GGUF file's tokenizer, rebuilt as Hugging Face `tokenizer.json` and `tokenizer_config.json`.
//!
//! llama.cpp keeps the vocabulary as metadata: `tokenizer.ggml.model` says which algorithm (`gpt2`: byte-level
//! BPE with `merges`; `llama`: SentencePiece-style pieces with `scores`, byte fallback through `<0xXX>` tokens),
//! `tokens` and `token_type` list every id, `pre` names the pre-tokenizer regex the merges were learned with,
//! and the special ids sit in `bos_token_id`, `eos_token_id`, `unknown_token_id`, `padding_token_id`. This
//! module writes the same tokenizer in the `tokenizers` JSON form, as transformers' GGUF loader does (its
//! `gguf_tokenizer_mapping.py`), except where that loader splits text differently from llama.cpp — the
//! file's own runtime — and from the model's original `tokenizer.json`:
//! - the `pre` types llama.cpp splits digits for (`smollm`, `starcoder`, ...) get `Digits` before
//!   `ByteLevel` (transformers uses GPT-2's regex, which differs on a space before a non-ASCII digit);
//! - a SentencePiece vocabulary gets Llama-2's normalizer (prepend `▁`, spaces to `▁`), so text that starts
//!   with a space gets its prefix too (transformers' `Metaspace` skips it).

use super::container::GgufFile;
use anyhow::{Result, bail};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// `enum llama_token_type` in llama.cpp (the GGUF `token_type` values).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// The two files, and anything worth telling the user.
pub struct RebuiltTokenizer {
    pub tokenizer_json: Value,
    pub tokenizer_config: Value,
    pub notes: Vec<String>,
}

// ANCHOR: bytes_to_unicode
/// GPT-2's byte-level alphabet: every byte as one printable character. Printable Latin-1 bytes stand for
/// themselves; the other 68 (controls, space, …) are shifted to U+0100 and up, in byte order (a space is `Ġ`).
pub fn byte_alphabet() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut out = ['\0'; 256];
    let mut shifted = 0;
    for b in 0..256u32 {
        out[b as usize] = if printable(b) {
            char::from_u32(b).expect("Latin-1")
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).expect("below U+0200")
        };
    }
    out
}
// ANCHOR_END: bytes_to_unicode

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split(pattern: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

// ANCHOR: pre_tokenizer
/// The pre-tokenizer of a byte-level vocabulary, by llama.cpp's `tokenizer.ggml.pre` name (its
/// `llama-vocab.cpp` lists the regexes); `None` for a name not known here.
pub(super) fn byte_level_pre_tokenizer(pre: &str) -> Option<Value> {
    let digits = json!({"type": "Digits", "individual_digits": true});
    Some(match pre {
        "default" | "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" | "roberta-bpe" | "jina-v2-code" => byte_level(true),
        // `\p{N}` first, then GPT-2's regex
        "starcoder" | "smollm" | "refact" | "codeshell" | "exaone" | "minerva" => {
            json!({"type": "Sequence", "pretokenizers": [digits, byte_level(true)]})
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" | "pixtral" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]})
        }
        "qwen2" | "deepseek-r1-qwen" => {
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]})
        }
        "deepseek-coder" => json!({"type": "Sequence", "pretokenizers": [
            split(r"[\r\n]"), split(r"\s?\p{L}+"), split(r"\s?\p{P}+"), split("[一-龥ࠀ-一가-퟿]+"),
            digits, byte_level(false)]}),
        _ => return None,
    })
}
// ANCHOR_END: pre_tokenizer

fn added_token(id: usize, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": special})
}

/// transformers' `update_post_processor`: BOS before and EOS after each sequence, as the flags say.
fn post_processor(
    bos: Option<&str>,
    eos: Option<&str>,
    tokens: &[String],
    ids: (Option<usize>, Option<usize>),
) -> Value {
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    let one = |part: &str, type_id: u32| -> Vec<Value> {
        let mut out: Vec<Value> = bos.map(|b| special(b, type_id)).into_iter().collect();
        out.push(seq(part, type_id));
        out.extend(eos.map(|e| special(e, type_id)));
        out
    };
    let single = one("A", 0);
    let pair = [one("A", 0), one("B", 1)].concat();
    let mut specials = Map::new();
    for (t, id) in [(bos, ids.0), (eos, ids.1)] {
        if let (Some(t), Some(id)) = (t, id) {
            specials.insert(t.into(), json!({"id": t, "ids": [id], "tokens": [tokens[id]]}));
        }
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

// ANCHOR: generate_merges
/// Merges a SentencePiece vocabulary implies (transformers' `generate_merges`): every split of every piece
/// into two pieces of the vocabulary, best score of the merged piece first (ties: the longer left piece,
/// then the longer right one; then vocabulary order).
fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    // a duplicated piece counts once, with the score and id of its last occurrence, as in a Python dict
    let mut order: Vec<usize> = Vec::new();
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        match first_seen.get(t.as_str()) {
            Some(&slot) => order[slot] = i,
            None => {
                first_seen.insert(t, order.len());
                order.push(i);
            }
        }
    }
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for &i in &order {
        let piece = tokens[i].as_str();
        let mut local: Vec<(&str, &str, f32)> = piece
            .char_indices()
            .skip(1)
            .map(|(at, _)| piece.split_at(at))
            .filter(|(l, r)| ids.contains_key(l) && ids.contains_key(r))
            .map(|(l, r)| (l, r, scores[i]))
            .collect();
        local.sort_by_key(|(l, r, _)| (ids[l], ids[r]));
        merges.extend(local);
    }
    let chars = |s: &str| s.chars().count();
    // stable, descending on (score, len(left), len(right)), as Python's sorted(..., reverse=True)
    merges.sort_by(|a, b| {
        (b.2, chars(b.0), chars(b.1)).partial_cmp(&(a.2, chars(a.0), chars(a.1))).unwrap_or(std::cmp::Ordering::Equal)
    });
    merges.into_iter().map(|(l, r, _)| (l.to_string(), r.to_string())).collect()
}
// ANCHOR_END: generate_merges

fn special_id(g: &GgufFile, key: &str, n: usize) -> Result<Option<usize>> {
    match g.opt_u64(&format!("tokenizer.ggml.{key}"))? {
        Some(id) if id as usize >= n => {
            bail!("{}: metadata `tokenizer.ggml.{key}` is {id}, past the {n} tokens", g.path.display())
        }
        id => Ok(id.map(|id| id as usize)),
    }
}

// ANCHOR: rebuild
/// `tokenizer.json` and `tokenizer_config.json` for the tokenizer a GGUF file describes.
pub fn rebuild(g: &GgufFile) -> Result<RebuiltTokenizer> {
    let model = g.str("tokenizer.ggml.model")?;
    let tokens: Vec<String> = g.array("tokenizer.ggml.tokens", "a string", |v| v.as_str().map(str::to_owned))?;
    let n = tokens.len();
    let types: Vec<i32> = match g.get("tokenizer.ggml.token_type") {
        Some(_) => g.array("tokenizer.ggml.token_type", "an integer", |v| v.as_i64().map(|t| t as i32))?,
        None => vec![token_type::NORMAL; n],
    };
    if types.len() != n {
        bail!("{}: metadata `tokenizer.ggml.token_type` has {} entries for {n} tokens", g.path.display(), types.len());
    }
    let [bos, eos, unk, pad] =
        ["bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"].map(|k| special_id(g, k, n));
    let (bos, eos, unk, pad) = (bos?, eos?, unk?, pad?);
    let mut notes = Vec::new();
    let add_bos = g.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(model == "llama");
    let add_eos = g.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);

    let mut added = Vec::new();
    let (model_json, pre_tokenizer, normalizer, decoder) = match model {
        "gpt2" => {
            let alphabet = byte_alphabet();
            let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
            let mut vocab = Map::new();
            for (i, t) in tokens.iter().enumerate() {
                // llama.cpp stores user-defined tokens as raw text; the vocabulary spells every token in bytes
                let spelled =
                    if in_alphabet(t) { t.clone() } else { t.bytes().map(|b| alphabet[b as usize]).collect() };
                vocab.insert(spelled, json!(i));
                let kind = types[i];
                if (kind == token_type::CONTROL || kind == token_type::USER_DEFINED) && in_alphabet(t) {
                    added.push(added_token(i, t, kind == token_type::CONTROL));
                }
            }
            let merges: Vec<Value> = g
                .array("tokenizer.ggml.merges", "a string `left right`", |v| v.as_str())?
                .into_iter()
                .map(|m| match m.split_once(' ') {
                    Some((l, r)) => Ok(json!([l, r])),
                    None => bail!("{}: merge `{m}` in `tokenizer.ggml.merges` has no space", g.path.display()),
                })
                .collect::<Result<_>>()?;
            let pre = g.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
            let pre_tokenizer = byte_level_pre_tokenizer(pre).unwrap_or_else(|| {
                notes.push(format!(
                    "tokenizer.ggml.pre `{pre}` is not known here; using GPT-2's pre-tokenizer (as transformers does), \
                     which may split some text differently from llama.cpp"
                ));
                byte_level(true)
            });
            let model = json!({"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges});
            let decoder =
                json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (model, pre_tokenizer, Value::Null, decoder)
        }
        "llama" => {
            let scores: Vec<f32> = g.array("tokenizer.ggml.scores", "a number", |v| v.as_f64().map(|s| s as f32))?;
            if scores.len() != n {
                bail!(
                    "{}: metadata `tokenizer.ggml.scores` has {} entries for {n} tokens",
                    g.path.display(),
                    scores.len()
                );
            }
            let mut vocab = Map::new();
            for (i, t) in tokens.iter().enumerate() {
                vocab.insert(t.clone(), json!(i));
                match types[i] {
                    token_type::CONTROL | token_type::UNKNOWN => added.push(added_token(i, t, true)),
                    token_type::USER_DEFINED => added.push(added_token(i, t, false)),
                    _ => {}
                }
            }
            let merges: Vec<Value> = match g.get("tokenizer.ggml.merges") {
                Some(_) => g
                    .array("tokenizer.ggml.merges", "a string `left right`", |v| v.as_str())?
                    .into_iter()
                    .filter_map(|m| m.split_once(' ').map(|(l, r)| json!([l, r])))
                    .collect(),
                None => merges_from_scores(&tokens, &scores).into_iter().map(|(l, r)| json!([l, r])).collect(),
            };
            // llama.cpp (and SentencePiece) put a space before the text and after every special token, even
            // where the text starts with one: the normalizer of Llama-2's own tokenizer.json, not `Metaspace`
            // (which skips the prefix before a leading space; transformers' GGUF loader uses that)
            let prefix = g.opt_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
            let normalizer = match prefix {
                true => json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, replace]}),
                false => replace,
            };
            let model = json!({"type": "BPE", "dropout": null, "unk_token": unk.map(|u| tokens[u].clone()),
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges});
            let mut steps = vec![
                json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if prefix {
                steps.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (model, Value::Null, normalizer, json!({"type": "Sequence", "decoders": steps}))
        }
        other => bail!(
            "{}: metadata `tokenizer.ggml.model` is `{other}`, which cannot be rebuilt (supported: gpt2, llama)",
            g.path.display()
        ),
    };
    for (what, id) in [("bos", bos), ("eos", eos), ("unknown", unk), ("padding", pad)] {
        if let Some(id) = id.filter(|&id| !added.iter().any(|a| a["id"] == json!(id))) {
            added.push(added_token(id, &tokens[id], true)); // a special id the token types did not mark
            notes.push(format!(
                "the {what} token `{}` (id {id}) is not marked as a control token; added as special",
                tokens[id]
            ));
        }
    }
    added.sort_by_key(|a| a["id"].as_u64());
    let name = |id: Option<usize>| id.map(|i| tokens[i].as_str());
    let tokenizer_json = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor(name(bos).filter(|_| add_bos), name(eos).filter(|_| add_eos), &tokens, (bos, eos)),
        "decoder": decoder, "model": model_json,
    });
    let mut config = Map::new();
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    for (key, id) in [("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)] {
        config.insert(key.into(), json!(name(id)));
    }
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(add_eos));
    if let Some(template) = g.opt_str("tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(template));
    }
    let max_len = g.opt_u64(&format!("{}.context_length", g.str("general.architecture")?))?;
    config.insert("model_max_length".into(), json!(max_len.unwrap_or(1 << 20)));
    Ok(RebuiltTokenizer { tokenizer_json, tokenizer_config: Value::Object(config), notes })
}
// ANCHOR_END: rebuild

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_alphabet_is_gpt2s() {
        let a = byte_alphabet();
        assert_eq!((a[b' ' as usize], a[b'\n' as usize], a[b'A' as usize], a[0]), ('Ġ', 'Ċ', 'A', 'Ā'));
        let mut sorted = a.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
    }

    #[test]
    fn merges_follow_the_merged_pieces_scores() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"].map(String::from).to_vec();
        let scores = [0.0, 0.0, 0.0, -1.0, -0.5, -2.0];
        let m = merges_from_scores(&tokens, &scores);
        let m: Vec<String> = m.iter().map(|(l, r)| format!("{l} {r}")).collect();
        // bc (−0.5) before ab (−1); abc's two splits, longer left piece first
        assert_eq!(m, ["b c", "a b", "ab c", "a bc"]);
    }
}
