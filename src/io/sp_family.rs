//! What the remote-code tokenizer classes add around a SentencePiece model: ChatGLM2's and ChatGLM3's
//! `tokenization_chatglm.py` (tokens after the pieces, the `[gMASK] sop` prefix) and Baichuan2's
//! `tokenization_baichuan.py` (`<s>`/`</s>`/`<unk>` matched in the text, `add_bos_token`/`add_eos_token`),
//! as transformers 4.44 runs them (the version MFTCoder pins).
//!
//! The family comes from the directory's `tokenizer_config.json` (`tokenizer_class`, `auto_map`), else from
//! `config.json`'s `model_type`; with neither, the model is plain SentencePiece (`SentencePieceProcessor`'s
//! encode and decode, nothing added). ChatGLM2 and ChatGLM3 share a class name: ChatGLM3 is recognised by its
//! `tokenization_chatglm.py` (which knows `<|observation|>`) or, without that file, by a `chatglm3` in
//! `name_or_path`/`_name_or_path`; otherwise the directory is ChatGLM2.

use super::sentencepiece::{self, DecodeItem, SpDecoder};
use super::sp_charsmap::CharsMap;
use super::sp_proto::ModelProto;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::borrow::Cow;
use std::path::Path;
use tokenizers::AddedToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    ChatGlm2,
    ChatGlm3,
    Baichuan2,
    Plain,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::ChatGlm2 => "ChatGLM2",
            Family::ChatGlm3 => "ChatGLM3",
            Family::Baichuan2 => "Baichuan2",
            Family::Plain => "plain SentencePiece",
        }
    }
}

// ANCHOR: chatglm_tokens
/// The tokens `SPTokenizer` numbers after the pieces, in order.
fn chatglm_tokens(family: Family) -> Vec<String> {
    let mut tokens = vec!["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"];
    if family == Family::ChatGlm3 {
        tokens.extend(["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]);
    }
    tokens.into_iter().map(String::from).collect()
}
// ANCHOR_END: chatglm_tokens

/// A SentencePiece model with its family's additions.
#[derive(Clone, Debug)]
pub struct SpTokenizer {
    pub family: Family,
    /// `BPE` or `Unigram`.
    pub model: &'static str,
    decoder: SpDecoder,
    pieces: u32,
    /// ChatGLM's tokens after the pieces (ids `pieces..`).
    extra: Vec<String>,
    /// Ids `add_special_tokens` puts before and after the text.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    /// The class's special tokens (Baichuan's are matched in the text; ChatGLM's are not).
    specials: Vec<(u32, String)>,
    /// ChatGLM: ids whose token is the empty string (bos, eos, and pad = unk).
    hidden: Vec<u32>,
    pub eos: Option<u32>,
    /// The pipeline for text after a cut in a longer text (no dummy prefix; see [`sentencepiece::continuation`]).
    pub continuation: Option<tokenizers::Tokenizer>,
    /// The model's precompiled character map, applied to the text before the pipeline.
    charsmap: Option<CharsMap>,
    /// Put the dummy prefix in front of the text here (see [`sentencepiece::dummy_prefix_by_wrapper`]), after
    /// dropping leading spaces when the model removes extra whitespace.
    wrapper_prefix: Option<bool>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?))
}

/// A token given as a string or as an `AddedToken` object (`{"content": ...}`).
fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

// ANCHOR: pick_family
/// The family the directory's configs name (see the module comment).
fn family_of(dir: &Path, tc: Option<&Value>, cfg: Option<&Value>) -> Result<Family> {
    let tc_path = dir.join("tokenizer_config.json");
    let class = tc.and_then(|t| {
        let auto = t.pointer("/auto_map/AutoTokenizer/0").and_then(Value::as_str);
        auto.or_else(|| t.get("tokenizer_class").and_then(Value::as_str)).map(String::from)
    });
    let kind = match class {
        Some(c) if c.contains("ChatGLM") || c.contains("tokenization_chatglm") => "chatglm",
        Some(c) if c.contains("Baichuan") || c.contains("tokenization_baichuan") => "baichuan",
        Some(c) => bail!(
            "{}: tokenizer_class {c:?} has no tokenizer.model wrapper here (supported: ChatGLMTokenizer, \
             BaichuanTokenizer; or no tokenizer_config.json for plain SentencePiece)",
            tc_path.display()
        ),
        None => match cfg.and_then(|c| c.get("model_type")).and_then(Value::as_str) {
            Some("chatglm") => "chatglm",
            Some("baichuan") => "baichuan",
            Some(other) => bail!(
                "{}: model_type {other:?} has no tokenizer.model wrapper here (supported: chatglm, baichuan)",
                dir.join("config.json").display()
            ),
            None => return Ok(Family::Plain),
        },
    };
    if kind == "baichuan" {
        return Ok(Family::Baichuan2);
    }
    let code = dir.join("tokenization_chatglm.py");
    if code.is_file() {
        let text = std::fs::read_to_string(&code).with_context(|| format!("{}: cannot read", code.display()))?;
        return Ok(if text.contains("<|observation|>") { Family::ChatGlm3 } else { Family::ChatGlm2 });
    }
    let named_3 = [tc.and_then(|t| t.get("name_or_path")), cfg.and_then(|c| c.get("_name_or_path"))]
        .into_iter()
        .flatten()
        .any(|v| v.as_str().is_some_and(|s| s.to_lowercase().contains("chatglm3")));
    Ok(if named_3 { Family::ChatGlm3 } else { Family::ChatGlm2 })
}
// ANCHOR_END: pick_family

impl SpTokenizer {
    // ANCHOR: sp_load
    /// Load `tokenizer.model` and its family's additions from the directory it is in.
    pub fn load(path: &Path) -> Result<(tokenizers::Tokenizer, SpTokenizer)> {
        let m: ModelProto = sentencepiece::read(path)?;
        let mut inner = sentencepiece::build(path, &m)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tc_path = dir.join("tokenizer_config.json");
        let tc = read_json(&tc_path)?;
        let cfg = read_json(&dir.join("config.json"))?;
        let family = family_of(dir, tc.as_ref(), cfg.as_ref())?;
        let pieces = m.pieces.len() as u32;
        let mut sp = SpTokenizer {
            family,
            model: match m.model_type {
                super::sp_proto::ModelType::Bpe => "BPE",
                super::sp_proto::ModelType::Unigram => "Unigram",
            },
            decoder: SpDecoder::new(&m),
            pieces,
            extra: Vec::new(),
            prefix: Vec::new(),
            suffix: Vec::new(),
            specials: Vec::new(),
            hidden: Vec::new(),
            eos: m.id(m.eos_id),
            continuation: None,
            wrapper_prefix: sentencepiece::dummy_prefix_by_wrapper(&m).then_some(m.remove_extra_whitespaces),
            charsmap: match m.precompiled_charsmap.is_empty() {
                true => None,
                false => Some(
                    CharsMap::parse(&m.precompiled_charsmap)
                        .map_err(|e| anyhow!("{}: normalizer_spec ({}): {e}", path.display(), m.normalizer_name))?,
                ),
            },
        };
        match family {
            Family::ChatGlm2 | Family::ChatGlm3 => {
                sp.extra = chatglm_tokens(family);
                sp.prefix = vec![pieces + 1, pieces + 3]; // [gMASK] sop
                sp.specials = sp.extra.iter().enumerate().map(|(i, t)| (pieces + i as u32, t.clone())).collect();
                sp.hidden = [m.bos_id, m.eos_id, m.unk_id].into_iter().filter_map(|i| m.id(i)).collect();
            }
            Family::Baichuan2 => {
                let tc = tc.unwrap_or(Value::Null);
                let flag = |key: &str, default: bool| tc.get(key).and_then(Value::as_bool).unwrap_or(default);
                let named = |key: &str, default: Option<&str>| -> Result<Option<(u32, String)>> {
                    let Some(text) = token_text(tc.get(key)).or(default.map(String::from)) else { return Ok(None) };
                    let id = inner.token_to_id(&text).with_context(|| {
                        format!("{}: {key} {text:?} is not a piece of {}", tc_path.display(), path.display())
                    })?;
                    Ok(Some((id, text)))
                };
                let bos = named("bos_token", Some("<s>"))?;
                let eos = named("eos_token", Some("</s>"))?;
                let unk = named("unk_token", Some("<unk>"))?;
                let pad = named("pad_token", None)?;
                let mut specials: Vec<(u32, String)> =
                    [&bos, &eos, &unk, &pad].into_iter().flatten().cloned().collect();
                specials.sort();
                specials.dedup();
                // matched in the raw text, each stretch between them encoded on its own (the slow tokenizer's split)
                let added: Vec<AddedToken> =
                    specials.iter().map(|(_, t)| AddedToken::from(t.clone(), true).normalized(false)).collect();
                inner.add_special_tokens(added).map_err(|e| anyhow!("{}: special tokens: {e}", path.display()))?;
                sp.specials = specials;
                sp.eos = eos.as_ref().map(|(id, _)| *id);
                sp.prefix = bos.filter(|_| flag("add_bos_token", true)).map(|(id, _)| id).into_iter().collect();
                sp.suffix = eos.filter(|_| flag("add_eos_token", false)).map(|(id, _)| id).into_iter().collect();
            }
            Family::Plain => sp.eos = None, // the configs, as for any tokenizer
        }
        sp.continuation = sentencepiece::continuation(&m, &inner).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok((inner, sp))
    }
    // ANCHOR_END: sp_load

    /// `text` through the model's character map (SentencePiece's first normalization step), if it has one,
    /// and with the dummy prefix where the wrapper puts it (`first`: the text does not continue another).
    /// (Baichuan2's special tokens are then matched after the map rather than before; its models have none.)
    pub fn prepare<'t>(&self, text: &'t str, first: bool) -> Cow<'t, str> {
        let mut text = match &self.charsmap {
            Some(map) => Cow::Owned(map.normalize(text)),
            None => Cow::Borrowed(text),
        };
        if let (Some(strip), true) = (self.wrapper_prefix, first) {
            let rest = if strip { text.trim_start_matches(' ') } else { &text };
            if !rest.is_empty() {
                text = Cow::Owned(format!("\u{2581}{rest}"));
            }
        }
        text
    }

    /// `build_inputs_with_special_tokens`: the family's prefix and suffix around `ids`.
    pub fn with_special_tokens(&self, ids: Vec<u32>) -> Vec<u32> {
        [self.prefix.as_slice(), &ids, &self.suffix].concat()
    }

    pub fn vocab_size(&self) -> usize {
        (self.pieces as usize) + self.extra.len()
    }

    /// ChatGLM's tokens after the pieces.
    pub fn extra_token_to_id(&self, token: &str) -> Option<u32> {
        self.extra.iter().position(|t| t == token).map(|i| self.pieces + i as u32)
    }

    pub fn extra_id_to_token(&self, id: u32) -> Option<String> {
        self.extra.get(id.checked_sub(self.pieces)? as usize).cloned()
    }

    pub fn special_tokens(&self) -> Vec<(u32, String)> {
        self.specials.clone()
    }

    // ANCHOR: family_decode
    /// `tokenizer.decode(ids, skip_special_tokens)` as the family's class does it under transformers 4.44.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let range = |id: u32| -> Result<()> {
            if id as usize >= self.vocab_size() {
                return Err(anyhow!("id {id} is out of range (the tokenizer has {})", self.vocab_size()));
            }
            Ok(())
        };
        match self.family {
            // ids -> tokens (bos/eos/pad are "", ChatGLM2's own tokens too, ChatGLM3 writes their names),
            // then one DecodePieces; the class registers no special tokens, so nothing is skipped
            Family::ChatGlm2 | Family::ChatGlm3 => {
                let items: Vec<DecodeItem> = ids
                    .iter()
                    .map(|&id| {
                        range(id)?;
                        Ok(match self.extra_id_to_token(id) {
                            Some(_) if self.family == Family::ChatGlm2 => DecodeItem::Text(""),
                            Some(_) => DecodeItem::Text(&self.extra[(id - self.pieces) as usize]),
                            None if self.hidden.contains(&id) => DecodeItem::Text(""),
                            None => DecodeItem::Id(id),
                        })
                    })
                    .collect::<Result<_>>()?;
                self.decoder.decode(&items)
            }
            // `convert_tokens_to_string`: each special token is written as itself, the pieces between them
            // decoded run by run, and a space is put before a run that a special token ends (Baichuan's quirk)
            Family::Baichuan2 => {
                let mut out = String::new();
                let mut run: Vec<DecodeItem> = Vec::new();
                let mut prev_special = false;
                let mut first = true;
                for &id in ids {
                    range(id)?;
                    let special = self.specials.iter().find(|(s, _)| *s == id);
                    match special {
                        Some(_) if skip_special_tokens => continue,
                        Some((_, text)) => {
                            if !prev_special && !first {
                                out.push(' ');
                            }
                            out.push_str(&self.decoder.decode(&run)?);
                            out.push_str(text);
                            run.clear();
                            prev_special = true;
                        }
                        None => {
                            run.push(DecodeItem::Id(id));
                            prev_special = false;
                        }
                    }
                    first = false;
                }
                out.push_str(&self.decoder.decode(&run)?);
                Ok(out)
            }
            Family::Plain => {
                let items: Vec<DecodeItem> =
                    ids.iter().map(|&id| range(id).map(|_| DecodeItem::Id(id))).collect::<Result<_>>()?;
                self.decoder.decode(&items)
            }
        }
    }
    // ANCHOR_END: family_decode
}
