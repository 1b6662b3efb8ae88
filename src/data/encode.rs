//! From a record to token ids and a loss mask (`UniformEncoder`), and MFTCoder's EOS resolution.

use super::records::Record;
use super::template::{RoleMarkers, TokenizeMode, segments};
use crate::io::tokenizer::Tokenizer;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::Path;

/// A record's tokens before any length handling: `loss_mask[j] = 1` when token `j` is a prediction target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub loss_mask: Vec<u8>,
}

/// Turns records into ids and masks with one tokenizer, one set of markers and one mode.
pub struct Encoder<'t> {
    pub tokenizer: &'t Tokenizer,
    pub eos_id: u32,
    pub markers: RoleMarkers,
    pub mode: TokenizeMode,
}

impl<'t> Encoder<'t> {
    /// An encoder with the EOS resolved from the tokenizer's directory (see [`resolve_eos`]).
    pub fn new(tokenizer: &'t Tokenizer, markers: RoleMarkers, mode: TokenizeMode) -> Result<Self> {
        let eos_id = resolve_eos(tokenizer)?;
        Ok(Encoder { tokenizer, eos_id, markers, mode })
    }

    // ANCHOR: encode
    /// Tokenize each segment separately — no special tokens added, added tokens such as `<s>` matched —
    /// and concatenate, with an EOS after every assistant answer. Mask: the segment's loss flag.
    pub fn encode(&self, record: &Record) -> Result<Encoded> {
        self.encode_within(record, usize::MAX)
    }
    // ANCHOR_END: encode

    /// [`Encoder::encode`] of at most the first `max_bytes` bytes of the record's text: a record far longer
    /// than a sample is cut before it is tokenized (its first tokens are the same; what follows the cut is
    /// lost, as truncation loses it anyway).
    pub fn encode_within(&self, record: &Record, max_bytes: usize) -> Result<Encoded> {
        let mut out = Encoded::default();
        let mut budget = max_bytes;
        for mut seg in segments(record, &self.markers, self.mode)? {
            if budget == 0 {
                break;
            }
            if seg.text.len() > budget {
                let mut cut = budget;
                while !seg.text.is_char_boundary(cut) {
                    cut -= 1;
                }
                seg.text.truncate(cut);
                seg.eos = false;
            }
            budget -= seg.text.len().min(budget);
            let ids = self.tokenizer.encode_bounded(&seg.text)?;
            out.loss_mask.extend(std::iter::repeat_n(seg.loss as u8, ids.len()));
            out.ids.extend(ids);
            if seg.eos {
                out.ids.push(self.eos_id);
                out.loss_mask.push(seg.loss as u8);
            }
        }
        Ok(out)
    }
}

/// MFTCoder's EOS (`init_tokenizer`): the tokenizer class's own EOS where it has one that no config names (a
/// SentencePiece family's: ChatGLM's `eos_token_id` is the model's `eos_id`, Baichuan2's is `eos_token` or
/// `</s>`), else `tokenizer_config.json` `eos_token` beside the tokenizer, else the model's
/// `config.json` `eos_token_id` (the first of a list), else its `eos_token`. The pad id is this EOS too.
///
/// Unlike MFTCoder (which tests `if tokenizer.eos_token_id:`), an EOS id of 0 is accepted.
pub fn resolve_eos(tokenizer: &Tokenizer) -> Result<u32> {
    if crate::gguf::is_gguf(&tokenizer.path) {
        return crate::gguf::eos_token_id(&tokenizer.path); // what its rebuilt tokenizer_config.json names
    }
    if let Some(eos) = tokenizer.class_eos() {
        return Ok(eos);
    }
    let dir = tokenizer.path.parent().unwrap_or(Path::new("."));
    let token_named = |name: &str, file: &Path| -> Result<u32> {
        tokenizer
            .token_to_id(name)
            .with_context(|| format!("{}: eos_token `{name}` is not in the tokenizer's vocabulary", file.display()))
    };
    let tc_path = dir.join("tokenizer_config.json");
    if let Some(tc) = read_json(&tc_path)? {
        match tc.get("eos_token") {
            Some(Value::String(s)) => return token_named(s, &tc_path),
            Some(Value::Object(o)) => {
                if let Some(Value::String(s)) = o.get("content") {
                    return token_named(s, &tc_path);
                }
            }
            _ => {}
        }
    }
    let cfg_path = dir.join("config.json");
    if let Some(cfg) = read_json(&cfg_path)? {
        let id = match cfg.get("eos_token_id") {
            Some(Value::Array(a)) => a.first().and_then(Value::as_u64),
            Some(v) => v.as_u64(),
            None => None,
        };
        if let Some(id) = id {
            return u32::try_from(id)
                .with_context(|| format!("{}: eos_token_id {id} is out of range", cfg_path.display()));
        }
        if let Some(Value::String(s)) = cfg.get("eos_token") {
            return token_named(s, &cfg_path);
        }
    }
    bail!(
        "{}: cannot resolve the EOS token (looked for eos_token in tokenizer_config.json, eos_token_id/eos_token in config.json)",
        dir.display()
    )
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let v = serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::records::parse_line;
    use crate::data::testutil::tiny_tokenizer;

    #[test]
    fn masks_follow_segments_and_eos_is_supervised() {
        let tok = tiny_tokenizer();
        let enc = Encoder::new(&tok, RoleMarkers::default(), TokenizeMode::Sft).unwrap();
        let eos = tok.token_to_id("</s>").unwrap();
        assert_eq!(enc.eos_id, eos);
        let r =
            parse_line(br#"{"chat_rounds":[{"role":"human","content":"hi"},{"role":"bot","content":"yes"}]}"#).unwrap();
        let e = enc.encode(&r).unwrap();
        let prompt = tok.encode("<s>human\nhi\n<s>bot\n", false).unwrap();
        let answer = tok.encode("yes\n", false).unwrap();
        let nl = tok.encode("\n", false).unwrap();
        let mut ids = prompt.clone();
        ids.extend(&answer);
        ids.push(eos);
        ids.extend(&nl);
        assert_eq!(e.ids, ids);
        let mut mask = vec![0u8; prompt.len()];
        mask.extend(vec![1u8; answer.len() + 1]);
        mask.extend(vec![0u8; nl.len()]);
        assert_eq!(e.loss_mask, mask);
        // `<s>` is matched as the added token, not spelled out.
        assert_eq!(prompt[0], tok.token_to_id("<s>").unwrap());

        let pre = Encoder::new(&tok, RoleMarkers::default(), TokenizeMode::Pretrain).unwrap();
        let p = pre.encode(&r).unwrap();
        assert!(p.loss_mask.iter().all(|&m| m == 1));
        assert_eq!(p.ids.len(), p.loss_mask.len());
    }

    #[test]
    fn eos_comes_from_tokenizer_config_then_config_json() {
        let dir = crate::data::testutil::temp_dir("eos");
        let src = crate::data::testutil::tiny_tokenizer_dir();
        std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
        let tok = Tokenizer::load(&dir).unwrap();
        assert!(resolve_eos(&tok).unwrap_err().to_string().contains("cannot resolve the EOS"));
        std::fs::write(dir.join("config.json"), r#"{"eos_token_id": [0, 5]}"#).unwrap();
        assert_eq!(resolve_eos(&tok).unwrap(), 0);
        std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": {"content": "<s>"}}"#).unwrap();
        assert_eq!(resolve_eos(&tok).unwrap(), tok.token_to_id("<s>").unwrap());
        std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "<nope>"}"#).unwrap();
        assert!(resolve_eos(&tok).unwrap_err().to_string().contains("`<nope>` is not in the tokenizer's vocabulary"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
