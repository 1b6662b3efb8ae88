//! SentencePiece's precompiled character map (`normalizer_spec.precompiled_charsmap`, e.g. `nmt_nfkc`): a
//! darts-clone double-array trie over UTF-8 byte strings whose values point into a blob of NUL-terminated
//! replacements. The normalizer walks the text taking, at each position, the *longest* entry that starts there
//! (else one character unchanged). `tokenizers`' `Precompiled` looks entries up per grapheme and takes the shortest
//! prefix, which turns `"\r\n"` into one space where SentencePiece writes two; this one does what SentencePiece does.

use anyhow::{Result, bail};

// ANCHOR: charsmap
/// The parsed map: `u32 trie size (LE) | trie units (u32 LE each) | replacements`.
#[derive(Clone, Debug)]
pub struct CharsMap {
    units: Vec<u32>,
    replacements: Vec<u8>,
}

impl CharsMap {
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let Some((size, rest)) = bytes.split_first_chunk::<4>() else { bail!("precompiled_charsmap is truncated") };
        let size = u32::from_le_bytes(*size) as usize;
        if !size.is_multiple_of(4) || size > rest.len() || size == 0 {
            bail!("precompiled_charsmap's trie size {size} does not fit its {} bytes", rest.len());
        }
        let units = rest[..size].chunks_exact(4).map(|u| u32::from_le_bytes(u.try_into().expect("4 bytes"))).collect();
        Ok(CharsMap { units, replacements: rest[size..].to_vec() })
    }

    /// The longest entry that `key` starts with: (its length in bytes, its replacement).
    fn longest_prefix(&self, key: &[u8]) -> Option<(usize, &[u8])> {
        let unit = |pos: usize| self.units.get(pos).copied();
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let mut pos = offset(unit(0)?);
        let mut found = None;
        for (i, &byte) in key.iter().enumerate() {
            pos ^= byte as usize;
            let u = unit(pos)?;
            if u & ((1 << 31) | 0xff) != byte as u32 {
                break; // the label differs: no entry continues with this byte
            }
            pos ^= offset(u);
            if (u >> 8) & 1 == 1 {
                let value = (unit(pos)? & ((1 << 31) - 1)) as usize;
                found = Some((i + 1, value));
            }
        }
        let (len, start) = found?;
        let tail = self.replacements.get(start..)?;
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        Some((len, &tail[..end]))
    }

    /// `text` with every entry replaced, longest match first, left to right.
    pub fn normalize(&self, text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut at = 0;
        while at < bytes.len() {
            match self.longest_prefix(&bytes[at..]) {
                Some((len, replacement)) if text.is_char_boundary(at + len) => {
                    out.extend_from_slice(replacement);
                    at += len;
                }
                _ => {
                    let len = text[at..].chars().next().map_or(1, char::len_utf8);
                    out.extend_from_slice(&bytes[at..at + len]);
                    at += len;
                }
            }
        }
        String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}
// ANCHOR_END: charsmap

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_whose_trie_does_not_fit_is_refused() {
        assert!(CharsMap::parse(&[1, 0]).unwrap_err().to_string().contains("truncated"));
        let err = CharsMap::parse(&[8, 0, 0, 0, 1, 2, 3, 4]).unwrap_err().to_string();
        assert!(err.contains("trie size 8 does not fit its 4 bytes"), "{err}");
        let empty = CharsMap::parse(&[4, 0, 0, 0, 0, 0, 0, 0]).unwrap(); // a root with no children
        assert_eq!(empty.normalize("a\r\nb"), "a\r\nb");
    }
}
