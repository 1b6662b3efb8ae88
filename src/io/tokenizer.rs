//! `tokenizer.json` (or Qwen-1's `qwen.tiktoken`, see [`super::tiktoken`], or a SentencePiece `tokenizer.model`,
//! see [`super::sentencepiece`] and [`super::sp_family`]) through the Hugging Face `tokenizers` crate (no network
//! features: built from local files).

use super::sp_family::SpTokenizer;
use super::tiktoken;
use anyhow::{Result, anyhow};
use std::path::{Path, PathBuf};

/// Qwen-1's tiktoken ranks file.
const QWEN_RANKS: &str = "qwen.tiktoken";
/// SentencePiece's model file (ChatGLM2/3, Baichuan2).
const SP_MODEL: &str = "tokenizer.model";

pub struct Tokenizer {
    pub path: PathBuf,
    inner: tokenizers::Tokenizer,
    /// A SentencePiece model's family wrapper: special tokens, prefix and decode as its tokenizer class does.
    sp: Option<SpTokenizer>,
}

impl Tokenizer {
    /// Load `dir/tokenizer.json`, or else Qwen-1's `dir/qwen.tiktoken`, or else SentencePiece's
    /// `dir/tokenizer.model` (or any of them given directly), or the tokenizer a GGUF file's metadata describes.
    pub fn load(path: &Path) -> Result<Self> {
        if crate::gguf::is_gguf(path) {
            let json = crate::gguf::tokenizer_json(path)?; // rebuilt from the file's tokenizer.ggml.* metadata
            let inner = <tokenizers::Tokenizer as std::str::FromStr>::from_str(&json)
                .map_err(|e| anyhow!("{}: cannot load the rebuilt tokenizer: {e}", path.display()))?;
            return Ok(Tokenizer { path: path.to_path_buf(), inner, sp: None });
        }
        let no_json = path.is_dir() && !path.join("tokenizer.json").is_file();
        let path = if no_json && path.join(QWEN_RANKS).is_file() {
            path.join(QWEN_RANKS)
        } else if no_json && path.join(SP_MODEL).is_file() {
            path.join(SP_MODEL)
        } else if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        if !path.is_file() {
            return Err(anyhow!(
                "{}: no such file (a tokenizer.json, {QWEN_RANKS} or {SP_MODEL} is needed to work with text)",
                path.display()
            ));
        }
        if path.extension().is_some_and(|e| e == "model") {
            let (inner, sp) = SpTokenizer::load(&path)?;
            return Ok(Tokenizer { path, inner, sp: Some(sp) });
        }
        let inner = if path.extension().is_some_and(|e| e == "tiktoken") {
            tiktoken::load_qwen(&path)?
        } else {
            tokenizers::Tokenizer::from_file(&path)
                .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?
        };
        Ok(Tokenizer { path, inner, sp: None })
    }

    /// The file format that was loaded, for `info`.
    pub fn format(&self) -> String {
        match &self.sp {
            Some(sp) => format!("SentencePiece {SP_MODEL}, {} wrapper", sp.family.name()),
            None if crate::gguf::is_gguf(&self.path) => "GGUF metadata".into(),
            None if self.path.extension().is_some_and(|e| e == "tiktoken") => "tiktoken ranks".into(),
            None => "tokenizer.json".into(),
        }
    }

    /// The EOS the tokenizer class itself names (`tokenizer.eos_token_id`, MFTCoder's first choice), where
    /// that is not read from `tokenizer_config.json`: ChatGLM's is the SentencePiece model's `eos_id`.
    pub fn class_eos(&self) -> Option<u32> {
        self.sp.as_ref().and_then(|sp| sp.eos)
    }

    // ANCHOR: tokenizer_encode
    /// Encode `text`. With `add_special_tokens` the tokenizer's post-processor runs (a Llama tokenizer adds
    /// its BOS), as `tokenizer(text)` does in transformers; added tokens (`<s>`, `<|im_start|>`) are always matched.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let text = self.map_chars(text);
        let encoding = self
            .inner
            .encode(text.as_ref(), add_special_tokens && self.sp.is_none())
            .map_err(|e| anyhow!("{}: cannot encode text: {e}", self.path.display()))?;
        Ok(self.with_special_tokens(encoding.get_ids().to_vec(), add_special_tokens))
    }
    // ANCHOR_END: tokenizer_encode

    /// A SentencePiece model's character map applied to `text` (nothing for other tokenizers).
    fn map_chars<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        match &self.sp {
            Some(sp) => sp.prepare(text, true),
            None => std::borrow::Cow::Borrowed(text),
        }
    }

    /// A SentencePiece family's prefix/suffix (ChatGLM's `[gMASK] sop`, Baichuan's BOS) when asked for.
    fn with_special_tokens(&self, ids: Vec<u32>, add_special_tokens: bool) -> Vec<u32> {
        match &self.sp {
            Some(sp) if add_special_tokens => sp.with_special_tokens(ids),
            _ => ids,
        }
    }

    /// The same ids as [`Tokenizer::encode`], without computing offsets (the data pipeline's hot path).
    pub fn encode_fast(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let text = self.map_chars(text);
        let encoding = self
            .inner
            .encode_fast(text.as_ref(), add_special_tokens && self.sp.is_none())
            .map_err(|e| anyhow!("{}: cannot encode text: {e}", self.path.display()))?;
        Ok(self.with_special_tokens(encoding.get_ids().to_vec(), add_special_tokens))
    }

    // ANCHOR: encode_bounded
    /// [`Tokenizer::encode_fast`] without special tokens, in pieces of at most 1 MiB cut after a line break,
    /// so the tokenizer's working memory (hundreds of bytes per input byte) stays bounded however long the
    /// text. Texts up to 1 MiB are encoded whole; a longer one can differ from a whole encoding only at its cuts
    /// (the pieces after the first continue the text: no SentencePiece dummy prefix in front of them; a model
    /// that maps the cut's newline to a space and removes extra whitespace drops that space).
    pub fn encode_bounded(&self, text: &str) -> Result<Vec<u32>> {
        const PIECE: usize = 1 << 20;
        let mut ids = Vec::new();
        let mut rest = text;
        let mut first = true;
        while rest.len() > PIECE {
            let mut cut = PIECE;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            // after the last line break that a non-blank character follows (whitespace runs stay whole)
            let window = &rest.as_bytes()[..cut];
            let line_end =
                (1..window.len()).rev().find(|&i| window[i - 1] == b'\n' && !window[i].is_ascii_whitespace());
            let cut = line_end.unwrap_or(cut);
            ids.extend(self.encode_piece(&rest[..cut], first)?);
            rest = &rest[cut..];
            first = false;
        }
        ids.extend(self.encode_piece(rest, first)?);
        Ok(ids)
    }
    // ANCHOR_END: encode_bounded

    fn encode_piece(&self, text: &str, first: bool) -> Result<Vec<u32>> {
        let Some(sp) = self.sp.as_ref().filter(|_| !first) else { return self.encode_fast(text, false) };
        let encoding = sp
            .continuation
            .as_ref()
            .unwrap_or(&self.inner)
            .encode_fast(sp.prepare(text, false).as_ref(), false)
            .map_err(|e| anyhow!("{}: cannot encode text: {e}", self.path.display()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Vocabulary size without the added tokens: what transformers calls `tokenizer.vocab_size`.
    /// (ChatGLM's counts its own tokens after the pieces, as its `vocab_size` does.)
    pub fn base_vocab_size(&self) -> usize {
        match &self.sp {
            Some(sp) => sp.vocab_size(),
            None => self.inner.get_vocab_size(false),
        }
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = match &self.sp {
            Some(sp) => sp.decode(ids, skip_special_tokens),
            None => self.inner.decode(ids, skip_special_tokens).map_err(|e| anyhow!("{e}")),
        };
        text.map_err(|e| anyhow!("{}: cannot decode: {e}", self.path.display()))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        match &self.sp {
            Some(sp) => sp.vocab_size(),
            None => self.inner.get_vocab_size(true),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.sp.as_ref().and_then(|sp| sp.extra_token_to_id(token)).or_else(|| self.inner.token_to_id(token))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.sp.as_ref().and_then(|sp| sp.extra_id_to_token(id)).or_else(|| self.inner.id_to_token(id))
    }

    /// The added tokens flagged special (a SentencePiece family: its class's special tokens), sorted by id.
    pub fn special_tokens(&self) -> Vec<(u32, String)> {
        if let Some(sp) = &self.sp {
            return sp.special_tokens();
        }
        let mut specials: Vec<(u32, String)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (id, t.content))
            .collect();
        specials.sort();
        specials
    }

    /// One line for `info`: the format loaded, the model kind, vocabulary and special tokens.
    pub fn summary(&self) -> String {
        let kind = match self.inner.get_model() {
            tokenizers::ModelWrapper::BPE(_) => "BPE",
            tokenizers::ModelWrapper::WordPiece(_) => "WordPiece",
            tokenizers::ModelWrapper::WordLevel(_) => "WordLevel",
            tokenizers::ModelWrapper::Unigram(_) => "Unigram",
        };
        let specials: Vec<String> = self.special_tokens().iter().take(8).map(|(id, t)| format!("{t}={id}")).collect();
        let more = self.special_tokens().len().saturating_sub(8);
        format!(
            "{} ({kind}), {} tokens (incl. added), special: [{}{}]",
            self.format(),
            self.vocab_size(),
            specials.join(", "),
            if more > 0 { format!(", … {more} more") } else { String::new() }
        )
    }
}
