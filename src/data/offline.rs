//! Offline tokenization (`concat_sst_bin_tokenization.py` with `PackSSTBinEncoder`): every jsonl record under
//! a directory becomes one document of pure language-model tokens in a Megatron `.bin/.idx` pair.
//!
//! A record's document: `content` or `text` → `encode(text) + [eos]` (no newline appended);
//! `chat_rounds` → system turns skipped, each user turn opens a buffer (`\n` appended if missing), each
//! assistant turn appends its content (same rule) and emits `encode(buffer) + [eos]`; the pieces of one
//! record are concatenated. No role markers, no loss mask. Records are encoded in parallel, written in order.

use super::dataset::task_files;
use super::encode::resolve_eos;
use super::indexed::{IndexedWriter, TokenDtype};
use super::records::jsonl_lines;
use crate::io::tokenizer::Tokenizer;
use anyhow::{Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfflineStats {
    pub files: usize,
    pub documents: usize,
    pub tokens: u64,
    /// Records that were malformed (only with `skip_bad_records`) or produced no text.
    pub skipped: usize,
    pub bin: PathBuf,
    pub idx: PathBuf,
    pub dtype_code: u8,
}

fn with_newline(s: &str) -> String {
    if s.ends_with('\n') { s.to_string() } else { format!("{s}\n") }
}

// ANCHOR: document
/// The texts of one record, each to be encoded and followed by an EOS. `None`: a falsy record (`{}`), skipped.
pub fn document_texts(value: &Value) -> Result<Option<Vec<String>>, String> {
    let Value::Object(map) = value else { return Err("expected a JSON object".into()) };
    if map.is_empty() {
        return Ok(None);
    }
    for key in ["content", "text"] {
        if let Some(v) = map.get(key) {
            return match v {
                Value::String(s) => Ok(Some(vec![s.clone()])),
                _ => Err(format!("field `{key}` must be a string")),
            };
        }
    }
    let Some(Value::Array(rounds)) = map.get("chat_rounds") else {
        return Err("no `content`, `text` or `chat_rounds` field".into());
    };
    let mut texts = Vec::new();
    let mut buf = String::new();
    for (i, round) in rounds.iter().enumerate() {
        let (Some(Value::String(role)), Some(Value::String(content))) = (round.get("role"), round.get("content"))
        else {
            return Err(format!("chat_rounds[{i}] needs string `role` and `content`"));
        };
        match role.as_str() {
            "system" => {}
            "human" | "user" => buf = with_newline(content),
            _ => {
                buf.push_str(&with_newline(content));
                texts.push(std::mem::take(&mut buf));
            }
        }
    }
    Ok(Some(texts))
}
// ANCHOR_END: document

/// Tokenize every `*.jsonl` under `data` (recursively, sorted) into `{out_prefix}_input_ids.bin/.idx`.
pub fn tokenize_to_bin(
    tokenizer: &Tokenizer,
    data: &Path,
    out_prefix: &Path,
    skip_bad_records: bool,
    progress: bool,
) -> Result<OfflineStats> {
    let files = task_files(data)?;
    let eos = resolve_eos(tokenizer)?;
    // MFTCoder decides on `tokenizer.vocab_size` (without added tokens); counting them too can only widen
    // the type, which keeps ids of added tokens above 65,535 intact.
    let dtype = TokenDtype::for_vocab(tokenizer.vocab_size());
    let mut prefix = out_prefix.as_os_str().to_owned();
    prefix.push("_input_ids");
    let prefix = PathBuf::from(prefix);
    if let Some(parent) = prefix.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| anyhow!("{}: cannot create: {e}", parent.display()))?;
    }
    let total_bytes: u64 = files.iter().map(|f| f.metadata().map(|m| m.len()).unwrap_or(0)).sum();
    let bar = if progress { ProgressBar::new(total_bytes) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} tokenize [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut writer = IndexedWriter::create(&prefix, dtype)?;
    let mut stats = OfflineStats { files: files.len(), dtype_code: dtype.code(), ..Default::default() };
    let result = (|| -> Result<()> {
        for file in &files {
            let bytes = std::fs::read(file).map_err(|e| anyhow!("{}: cannot read: {e}", file.display()))?;
            let lines: Vec<(usize, &[u8])> = jsonl_lines(&bytes).collect();
            for chunk in lines.chunks(2048) {
                let docs: Vec<(usize, LineResult)> =
                    chunk.par_iter().map(|&(n, line)| (n, encode_line(tokenizer, line, eos))).collect();
                for (n, doc) in docs {
                    match doc {
                        Ok(Some(ids)) => writer.add(&ids)?,
                        Ok(None) => stats.skipped += 1,
                        Err(_) if skip_bad_records => stats.skipped += 1,
                        Err(e) => bail!("{}:{n}: {e}", file.display()),
                    }
                }
                let done: usize = chunk.iter().map(|(_, l)| l.len() + 1).sum();
                bar.inc(done as u64);
                bar.set_message(format!("{} docs, {} tokens", writer.documents(), writer.tokens()));
            }
        }
        Ok(())
    })();
    bar.finish_and_clear();
    if let Err(e) = result {
        writer.abandon();
        return Err(e);
    }
    stats.documents = writer.documents();
    stats.tokens = writer.tokens();
    let (bin, idx) = writer.finish()?;
    stats.bin = bin;
    stats.idx = idx;
    Ok(stats)
}

/// One line's document ids; `None` for a record that yields none; `Err` says what is wrong with the line.
type LineResult = Result<Option<Vec<u32>>, String>;

fn encode_line(tokenizer: &Tokenizer, line: &[u8], eos: u32) -> LineResult {
    let text = std::str::from_utf8(line).map_err(|e| format!("not valid UTF-8 (byte {})", e.valid_up_to()))?;
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Some(texts) = document_texts(&value)? else { return Ok(None) };
    let mut ids = Vec::new();
    for t in texts {
        ids.extend(tokenizer.encode_bounded(&t).map_err(|e| format!("{e:#}"))?);
        ids.push(eos);
    }
    Ok(if ids.is_empty() { None } else { Some(ids) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::indexed::IndexedDataset;
    use crate::data::testutil::{temp_dir, tiny_tokenizer};

    #[test]
    fn documents_follow_the_offline_encoder() {
        let v: Value = serde_json::from_str(
            r#"{"chat_rounds":[{"role":"system","content":"S"},{"role":"human","content":"q"},{"role":"bot","content":"a\n"},{"role":"user","content":"q2"},{"role":"assistant","content":"a2"}]}"#,
        )
        .unwrap();
        assert_eq!(document_texts(&v).unwrap(), Some(vec!["q\na\n".to_string(), "q2\na2\n".to_string()]));
        let v: Value = serde_json::from_str(r#"{"content":"c","text":"t"}"#).unwrap();
        assert_eq!(document_texts(&v).unwrap(), Some(vec!["c".to_string()]));
        assert_eq!(document_texts(&serde_json::json!({})).unwrap(), None);
        assert!(document_texts(&serde_json::json!({"prompt": "p"})).unwrap_err().contains("no `content`"));
    }

    #[test]
    fn tokenize_writes_documents_in_order_and_reads_back() {
        let dir = temp_dir("offline");
        std::fs::create_dir_all(dir.join("in/z")).unwrap();
        std::fs::write(dir.join("in/a.jsonl"), "{\"text\":\"def f(): pass\"}\n{}\n{\"content\":\"x = 1\"}\n").unwrap();
        std::fs::write(
            dir.join("in/z/b.jsonl"),
            "{\"chat_rounds\":[{\"role\":\"human\",\"content\":\"hi\"},{\"role\":\"bot\",\"content\":\"yo\"}]}\n",
        )
        .unwrap();
        let tok = tiny_tokenizer();
        let eos = resolve_eos(&tok).unwrap();
        let stats = tokenize_to_bin(&tok, &dir.join("in"), &dir.join("out/code"), false, false).unwrap();
        assert_eq!((stats.files, stats.documents, stats.skipped), (2, 3, 1));
        let ds = IndexedDataset::open(&dir.join("out/code_input_ids")).unwrap();
        let enc = |s: &str| {
            let mut v = tok.encode(s, false).unwrap();
            v.push(eos);
            v
        };
        assert_eq!(ds.get(0), enc("def f(): pass"));
        assert_eq!(ds.get(1), enc("x = 1"));
        assert_eq!(ds.get(2), enc("hi\nyo\n"));
        assert_eq!(stats.tokens as usize, ds.sizes.iter().map(|&s| s as usize).sum::<usize>());

        std::fs::write(dir.join("in/z/c.jsonl"), "{\"text\":\"fine\"}\n{\"text\":[1]}\n").unwrap();
        let e = tokenize_to_bin(&tok, &dir.join("in"), &dir.join("out/bad"), false, false).unwrap_err();
        assert!(e.to_string().ends_with("c.jsonl:2: field `text` must be a string"), "{e}");
        assert!(!dir.join("out/bad_input_ids.bin").exists() && !dir.join("out/bad_input_ids.idx").exists());
        assert_eq!(std::fs::read_dir(dir.join("out")).unwrap().count(), 2, "no temporary file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
