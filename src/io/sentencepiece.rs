//! A SentencePiece `tokenizer.model` as the equivalent `tokenizers` pipeline (the steps of transformers'
//! slow→fast conversion), plus a decoder that writes exactly what `SentencePieceProcessor.DecodePieces` writes.
//!
//! SentencePiece encodes the whole normalized text at once (no pre-tokenizer): the normalizer escapes
//! spaces as `▁` and may prepend one (the dummy prefix); BPE then joins, again and again, the adjacent pair
//! whose concatenation is the piece with the highest score (leftmost on ties), and a character that is no
//! piece becomes its UTF-8 bytes `<0xXX>` (byte fallback) or `<unk>`.

use super::sp_proto::{ModelProto, ModelType, PieceKind};
use anyhow::{Context, Result, anyhow};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::models::bpe::BPE;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Prepend, Replace, Sequence};
use tokenizers::{AddedToken, NormalizerWrapper};

/// SentencePiece's whitespace symbol.
const SPACE: char = '\u{2581}';

// ANCHOR: bpe_merges
/// The merges a `tokenizers` BPE needs to take SentencePiece's steps: every split `(a, b)` of every normal
/// piece whose halves are pieces too, ordered by the joined piece's score (highest first; then its id).
/// A BPE model's scores are its merge order, so the `tokenizers` rank order is the score order.
fn merges_from_scores(m: &ModelProto) -> Vec<(String, String)> {
    let id_of: HashMap<&str, usize> = m.pieces.iter().enumerate().map(|(i, p)| (p.piece.as_str(), i)).collect();
    let mut targets: Vec<(usize, &str)> = m
        .pieces
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind == PieceKind::Normal && p.piece.chars().nth(1).is_some())
        .map(|(i, p)| (i, p.piece.as_str()))
        .collect();
    targets.sort_by(|a, b| m.pieces[b.0].score.total_cmp(&m.pieces[a.0].score).then(a.0.cmp(&b.0)));
    let mut merges = Vec::new();
    for (_, piece) in targets {
        for (k, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(k);
            if id_of.contains_key(left) && id_of.contains_key(right) {
                merges.push((left.to_string(), right.to_string()));
            }
        }
    }
    merges
}
// ANCHOR_END: bpe_merges

// ANCHOR: sp_normalizer
/// SentencePiece's normalizer after its character map (which [`super::sp_charsmap`] applies to the text before
/// the pipeline sees it): extra spaces removed (leading, trailing, runs) when asked, spaces escaped as `▁`, and
/// the dummy `▁` in front. `Prepend` acts on each stretch between added tokens, as the slow tokenizers call
/// SentencePiece on each.
fn normalizer(m: &ModelProto, dummy_prefix: bool) -> Result<NormalizerWrapper> {
    let replace = |pattern: tokenizers::normalizers::replace::ReplacePattern, with: &str| {
        Replace::new(pattern, with).map(NormalizerWrapper::from).map_err(|e| anyhow!("normalizer: {e}"))
    };
    use tokenizers::normalizers::replace::ReplacePattern::{Regex, String as Literal};
    let mut steps: Vec<NormalizerWrapper> = Vec::new();
    if m.remove_extra_whitespaces {
        // trailing `▁` typed in the text goes too: SentencePiece strips the escaped end
        steps.push(replace(Regex("^ +|[ \u{2581}]+$".into()), "")?);
        steps.push(replace(Regex(" {2,}".into()), " ")?);
    }
    if m.escape_whitespaces {
        steps.push(replace(Literal(" ".into()), &SPACE.to_string())?);
    }
    if dummy_prefix {
        steps.push(Prepend::new(SPACE.to_string()).into());
    }
    Ok(Sequence::new(steps).into())
}
// ANCHOR_END: sp_normalizer

// ANCHOR: sp_tokenizer
/// The `tokenizers` pipeline that encodes as SentencePiece does with `m`: BPE (merges from the scores) or
/// Unigram (the scores as log-probabilities), byte fallback as the model says, and USER_DEFINED pieces as
/// added tokens matched in the normalized text (as SentencePiece matches them before its model runs).
pub fn build(path: &Path, m: &ModelProto) -> Result<tokenizers::Tokenizer> {
    let at = |what: &str, e: &dyn std::fmt::Display| anyhow!("{}: {what}: {e}", path.display());
    let unk = m.pieces[m.unk_id as usize].piece.clone();
    let model: tokenizers::ModelWrapper = match m.model_type {
        ModelType::Bpe => {
            let vocab: tokenizers::models::bpe::Vocab =
                m.pieces.iter().enumerate().map(|(i, p)| (p.piece.clone(), i as u32)).collect();
            BPE::builder()
                .vocab_and_merges(vocab, merges_from_scores(m))
                .unk_token(unk)
                .fuse_unk(true)
                .byte_fallback(m.byte_fallback)
                .build()
                .map_err(|e| at("cannot build the BPE", &e))?
                .into()
        }
        ModelType::Unigram => {
            // pieces SentencePiece's lattice never uses (control, unknown, byte, unused): a score no path takes
            // while another exists (every path pays the same for the unknown characters it must cover)
            let floor = -1e6;
            let vocab = m
                .pieces
                .iter()
                .map(|p| {
                    let usable = matches!(p.kind, PieceKind::Normal | PieceKind::UserDefined);
                    (p.piece.clone(), if usable { p.score as f64 } else { floor })
                })
                .collect();
            Unigram::from(vocab, Some(m.unk_id as usize), m.byte_fallback)
                .map_err(|e| at("cannot build the Unigram model", &e))?
                .into()
        }
    };
    let user_defined: Vec<&str> =
        m.pieces.iter().filter(|p| p.kind == PieceKind::UserDefined).map(|p| p.piece.as_str()).collect();
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(
            normalizer(m, m.add_dummy_prefix && !dummy_prefix_by_wrapper(m)).map_err(|e| at("normalizer", &e))?,
        ))
        .map_err(|e| at("normalizer", &e))?;
    let added: Vec<AddedToken> =
        user_defined.iter().map(|p| AddedToken::from(p.to_string(), false).normalized(true)).collect();
    tokenizer.add_tokens(added).map_err(|e| at("USER_DEFINED pieces", &e))?;
    Ok(tokenizer)
}
// ANCHOR_END: sp_tokenizer

/// Whether the dummy prefix is left to the wrapper ([`super::sp_family::SpTokenizer::prepare`]) rather than a
/// `Prepend` normalizer: with USER_DEFINED pieces, whose added tokens the normalizer would spell with a `▁` in
/// front. (The wrapper's prefix goes once in front of the text, as SentencePiece's; `Prepend`'s in front of each
/// stretch between added tokens, as the slow tokenizers' — the two differ only with special tokens in the text.)
pub fn dummy_prefix_by_wrapper(m: &ModelProto) -> bool {
    m.add_dummy_prefix && m.pieces.iter().any(|p| p.kind == PieceKind::UserDefined)
}

/// `tokenizer` (built by [`build`]) for text that continues a text already encoded: without the dummy prefix,
/// which SentencePiece puts only in front of the whole text. `None` when no normalizer puts one.
pub fn continuation(m: &ModelProto, tokenizer: &tokenizers::Tokenizer) -> Result<Option<tokenizers::Tokenizer>> {
    if !m.add_dummy_prefix || dummy_prefix_by_wrapper(m) {
        return Ok(None);
    }
    let mut cont = tokenizer.clone();
    cont.with_normalizer(Some(normalizer(m, false)?)).map_err(|e| anyhow!("normalizer: {e}"))?;
    Ok(Some(cont))
}

/// Read and check `tokenizer.model`.
pub fn read(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    super::sp_proto::parse(path, &bytes)
}

/// One item to decode: a vocabulary id, or text a wrapper puts in the piece stream itself (what
/// `DecodePieces` does with a string that is no piece: it writes it as it is).
#[derive(Clone, Copy, Debug)]
pub enum DecodeItem<'a> {
    Id(u32),
    Text(&'a str),
}

/// What `DecodePieces` needs from the model.
#[derive(Clone, Debug)]
pub struct SpDecoder {
    pieces: Vec<(String, PieceKind)>,
    unk_surface: String,
    /// Drop the `▁` that starts the first visible piece (the dummy prefix).
    strip_first_space: bool,
    /// With `remove_extra_whitespaces`: drop every `▁` that starts the text, not only the first.
    strip_all_leading: bool,
}

/// `<0xE4>` → 0xE4.
fn byte_of(piece: &str) -> Option<u8> {
    u8::from_str_radix(piece.strip_prefix("<0x")?.strip_suffix('>')?, 16).ok()
}

// ANCHOR: sp_decode
impl SpDecoder {
    pub fn new(m: &ModelProto) -> Self {
        SpDecoder {
            pieces: m.pieces.iter().map(|p| (p.piece.clone(), p.kind)).collect(),
            unk_surface: m.unk_surface.clone(),
            strip_first_space: m.add_dummy_prefix || m.remove_extra_whitespaces,
            strip_all_leading: m.remove_extra_whitespaces,
        }
    }

    /// SentencePiece's decode: control pieces vanish, the unknown piece is `unk_surface`, a run of byte
    /// pieces is UTF-8 with one U+FFFD per byte that starts no valid character, `▁` is a space, and the
    /// first piece that writes something (or starts with `▁`) loses one leading `▁` — every leading `▁` of the
    /// text when the model removes extra whitespace.
    pub fn decode(&self, items: &[DecodeItem]) -> Result<String> {
        let mut out = String::new();
        let mut bytes = Vec::new();
        let mut at_start = true;
        for item in items {
            let text = match *item {
                DecodeItem::Text(t) => t,
                DecodeItem::Id(id) => {
                    let (piece, kind) = self
                        .pieces
                        .get(id as usize)
                        .with_context(|| format!("id {id} is out of range (the model has {})", self.pieces.len()))?;
                    match kind {
                        PieceKind::Byte => {
                            bytes.push(byte_of(piece).with_context(|| format!("byte piece {piece:?} is not <0xXX>"))?);
                            at_start = false;
                            continue;
                        }
                        PieceKind::Control => "",
                        PieceKind::Unknown => &self.unk_surface,
                        _ => piece,
                    }
                }
            };
            flush_bytes(&mut bytes, &mut out);
            let mut text = text;
            let mut consumed = false;
            if at_start
                && self.strip_first_space
                && matches!(item, DecodeItem::Id(_))
                && let Some(rest) = text.strip_prefix(SPACE)
            {
                text = if self.strip_all_leading { rest.trim_start_matches(SPACE) } else { rest };
                consumed = true;
            }
            // what ends the start: a visible piece, or (keeping every `▁` after it) a consumed prefix
            if !text.is_empty() || (consumed && !self.strip_all_leading) {
                at_start = false;
            }
            out.extend(text.chars().map(|c| if c == SPACE { ' ' } else { c }));
        }
        flush_bytes(&mut bytes, &mut out);
        Ok(out)
    }
}

/// Decode a run of bytes: each valid UTF-8 character, else U+FFFD for the one byte that starts no character.
fn flush_bytes(bytes: &mut Vec<u8>, out: &mut String) {
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let len = match rest[0] {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 0,
        };
        match rest.get(..len).filter(|_| len > 0).and_then(|c| std::str::from_utf8(c).ok()) {
            Some(c) => {
                out.push_str(c);
                rest = &rest[len..];
            }
            None => {
                out.push('\u{fffd}');
                rest = &rest[1..];
            }
        }
    }
    bytes.clear();
}
// ANCHOR_END: sp_decode
