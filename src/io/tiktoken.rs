//! Qwen-1's `qwen.tiktoken` (tiktoken BPE ranks) as an equivalent `tokenizers` byte-level BPE, so encode, decode,
//! added-token matching and the chat template work exactly as for a `tokenizer.json`.
//!
//! The file is one `base64(token bytes) rank` per line. tiktoken has no merges list: a piece (one match of the
//! pre-tokenizer regex) that is itself a token stays whole; otherwise, starting from single bytes, it repeatedly
//! joins the adjacent pair whose concatenation has the lowest rank (leftmost on ties). A merges list with every
//! split `(a, b)` of every token whose halves are tokens too, ordered by the rank of `a + b`, makes the
//! `tokenizers` BPE take the same steps; `ignore_merges` gives the whole-piece shortcut.

use anyhow::{Context, Result, bail};
use base64::Engine;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

// ANCHOR: qwen_constants
/// `tokenization_qwen.py`'s `PAT_STR`.
pub const QWEN_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen-1's special tokens in id order, right after the BPE ranks (`SPECIAL_START_ID = 151643` in the reference,
/// which is where the full `qwen.tiktoken` ends).
pub fn qwen_special_tokens() -> Vec<String> {
    let named = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from);
    named.into_iter().chain((0..205).map(|i| format!("<|extra_{i}|>"))).collect()
}
// ANCHOR_END: qwen_constants

// ANCHOR: read_ranks
/// The ranks file: token bytes by rank (rank `r` at index `r`). Ranks must be `0..n` with no gap or repeat,
/// and tokens distinct, as every shipped file is.
pub fn read_ranks(path: &Path) -> Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{}:{}", path.display(), i + 1);
        let mut fields = line.split_whitespace();
        let (Some(token), Some(rank), None) = (fields.next(), fields.next(), fields.next()) else {
            bail!("{}: expected `base64_token rank`, found {line:?}", at());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(token)
            .with_context(|| format!("{}: token {token:?} is not base64", at()))?;
        let rank: usize = rank.parse().with_context(|| format!("{}: rank {rank:?} is not a number", at()))?;
        if rank >= by_rank.len() {
            by_rank.resize(rank + 1, None);
        }
        if by_rank[rank].replace(bytes).is_some() {
            bail!("{}: rank {rank} appears twice", at());
        }
    }
    let ranks: Vec<Vec<u8>> = by_rank
        .into_iter()
        .enumerate()
        .map(|(r, t)| t.with_context(|| format!("{}: rank {r} is missing (ranks must be 0..n)", path.display())))
        .collect::<Result<_>>()?;
    if ranks.is_empty() {
        bail!("{}: no ranks", path.display());
    }
    Ok(ranks)
}
// ANCHOR_END: read_ranks

/// GPT-2's byte-to-character map that the `tokenizers` byte-level BPE uses: printable bytes stand for
/// themselves, the others for the characters from U+0100 on, in byte order.
fn byte_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = if printable {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("U+0100.. are chars")
        };
    }
    map
}

// ANCHOR: ranks_to_bpe
/// The vocabulary and merges of the byte-level BPE that encodes as tiktoken does with `ranks`.
fn vocab_and_merges(path: &Path, ranks: &[Vec<u8>]) -> Result<(Vocab, Vec<(String, String)>)> {
    let chars = byte_chars();
    let spell = |bytes: &[u8]| -> String { bytes.iter().map(|&b| chars[b as usize]).collect() };
    let rank_of: HashMap<&[u8], u32> = ranks.iter().enumerate().map(|(r, t)| (t.as_slice(), r as u32)).collect();
    if rank_of.len() != ranks.len() {
        bail!("{}: a token appears under two ranks", path.display());
    }
    if let Some(b) = (0..=255u8).find(|b| !rank_of.contains_key([*b].as_slice())) {
        bail!("{}: byte {b:#04x} has no rank (a byte-level BPE needs all 256 single bytes)", path.display());
    }
    let mut merges = Vec::new();
    for token in ranks.iter().filter(|t| t.len() > 1) {
        // every split tiktoken could join, in the order of the rank of its parts
        let mut splits: Vec<(u32, u32, usize)> = (1..token.len())
            .filter_map(|k| Some((*rank_of.get(&token[..k])?, *rank_of.get(&token[k..])?, k)))
            .collect();
        splits.sort_unstable();
        merges.extend(splits.into_iter().map(|(_, _, k)| (spell(&token[..k]), spell(&token[k..]))));
    }
    let vocab = ranks.iter().enumerate().map(|(r, t)| (spell(t), r as u32)).collect();
    Ok((vocab, merges))
}
// ANCHOR_END: ranks_to_bpe

// ANCHOR: qwen_tokenizer
/// Load `qwen.tiktoken` as Qwen-1's tokenizer: NFC, Qwen's regex, the byte-level BPE of the ranks, and the
/// special tokens after the ranks. Specials are matched anywhere in the (NFC) text, as `allowed_special="all"`.
pub fn load_qwen(path: &Path) -> Result<tokenizers::Tokenizer> {
    let ranks = read_ranks(path)?;
    let (vocab, merges) = vocab_and_merges(path, &ranks)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(true)
        .build()
        .map_err(|e| anyhow::anyhow!("{}: cannot build the BPE: {e}", path.display()))?;
    let split = Split::new(SplitPattern::Regex(QWEN_PATTERN.into()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| anyhow::anyhow!("Qwen's pattern: {e}"))?;
    let byte_level = ByteLevel::new(false, false, false);
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(NFC))
        .map_err(|e| anyhow::anyhow!("NFC: {e}"))?
        .with_pre_tokenizer(Some(Sequence::new(vec![split.into(), byte_level.into()])))
        .with_decoder(Some(byte_level));
    // normalized: matched after NFC, as the reference normalises before tiktoken looks for specials
    let specials: Vec<AddedToken> =
        qwen_special_tokens().into_iter().map(|t| AddedToken::from(t, true).normalized(true)).collect();
    tokenizer.add_special_tokens(specials).map_err(|e| anyhow::anyhow!("{}: special tokens: {e}", path.display()))?;
    Ok(tokenizer)
}
// ANCHOR_END: qwen_tokenizer
