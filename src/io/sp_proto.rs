//! SentencePiece's `tokenizer.model`: a protobuf `ModelProto` (sentencepiece_model.proto), read with a small
//! wire-format reader. Only the fields an encoder and decoder need are kept; every other field is skipped.
//!
//! ```text
//! ModelProto      1: repeated SentencePiece pieces   2: TrainerSpec   3: NormalizerSpec
//! SentencePiece   1: piece (string)   2: score (float)   3: type (enum, default NORMAL)
//! TrainerSpec     3: model_type (UNIGRAM=1 default, BPE=2, WORD=3, CHAR=4)   24: treat_whitespace_as_suffix
//!                 35: byte_fallback   40..43: unk_id, bos_id, eos_id, pad_id (0, 1, 2, -1)   44: unk_surface
//! NormalizerSpec  1: name   2: precompiled_charsmap   3: add_dummy_prefix   4: remove_extra_whitespaces
//!                 5: escape_whitespaces (the last three default true)
//! ModelProto      5: denormalizer_spec (a NormalizerSpec applied when decoding: refused unless its map is empty)
//! ```

use anyhow::{Result, bail};
use std::path::Path;

// ANCHOR: sp_proto_types
/// A piece's role (`SentencePiece.Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    Unigram,
    Bpe,
}

/// What `tokenizer.model` says about its pieces, model and normalizer.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelProto {
    pub pieces: Vec<Piece>,
    pub model_type: ModelType,
    pub byte_fallback: bool,
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
    /// What the decoder writes for the unknown piece (`" ⁇ "` unless the trainer set another).
    pub unk_surface: String,
    pub normalizer_name: String,
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}
// ANCHOR_END: sp_proto_types

// ANCHOR: wire_reader
/// One protobuf field: its number and its value by wire type.
enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
    Fixed64,
}

/// Reads `(number, value)` pairs from a message's bytes; `what` names the message in errors.
struct Wire<'a> {
    buf: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Wire<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Wire { buf, at: 0, what }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.buf.get(self.at) else { bail!("{}: truncated varint", self.what) };
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("{}: varint longer than 10 bytes", self.what)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else { bail!("{}: a field runs past the end of the message", self.what) };
        let bytes = &self.buf[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.at == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = self.varint()? as usize;
                Field::Bytes(self.take(n)?)
            }
            5 => Field::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"))),
            w => bail!("{}: field {} has wire type {w} (allowed: 0, 1, 2, 5)", self.what, key >> 3),
        };
        Ok(Some((key >> 3, field)))
    }
}
// ANCHOR_END: wire_reader

fn text(bytes: &[u8], what: &str) -> Result<String> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_string()),
        Err(_) => bail!("{what} is not UTF-8"),
    }
}

/// A proto `int32` sent as a varint (negative values are ten-byte two's complement).
fn int32(v: u64) -> i32 {
    v as i64 as i32
}

fn read_piece(bytes: &[u8]) -> Result<Piece> {
    let mut piece = Piece { piece: String::new(), score: 0.0, kind: PieceKind::Normal };
    let mut wire = Wire::new(bytes, "pieces");
    while let Some((number, field)) = wire.next()? {
        match (number, field) {
            (1, Field::Bytes(b)) => piece.piece = text(b, "pieces.piece")?,
            (2, Field::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, Field::Varint(t)) => {
                piece.kind = match t {
                    1 => PieceKind::Normal,
                    2 => PieceKind::Unknown,
                    3 => PieceKind::Control,
                    4 => PieceKind::UserDefined,
                    5 => PieceKind::Unused,
                    6 => PieceKind::Byte,
                    t => bail!("pieces.type is {t} (allowed: 1 NORMAL .. 6 BYTE)"),
                }
            }
            _ => {}
        }
    }
    Ok(piece)
}

// ANCHOR: read_model_proto
/// Parse `tokenizer.model`'s bytes. Refuses what the encoder cannot reproduce: WORD/CHAR models and
/// suffix whitespace, naming the field and its value.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<ModelProto> {
    let at = |e: anyhow::Error| anyhow::anyhow!("{}: {e}", path.display());
    let mut m = ModelProto {
        pieces: Vec::new(),
        model_type: ModelType::Unigram,
        byte_fallback: false,
        unk_id: 0,
        bos_id: 1,
        eos_id: 2,
        pad_id: -1,
        unk_surface: " \u{2047} ".into(),
        normalizer_name: String::new(),
        precompiled_charsmap: Vec::new(),
        add_dummy_prefix: true,
        remove_extra_whitespaces: true,
        escape_whitespaces: true,
    };
    let mut suffix = false;
    let mut wire = Wire::new(bytes, "ModelProto");
    while let Some((number, field)) = wire.next().map_err(at)? {
        match (number, field) {
            (1, Field::Bytes(b)) => m.pieces.push(read_piece(b).map_err(at)?),
            (2, Field::Bytes(b)) => {
                let mut spec = Wire::new(b, "trainer_spec");
                while let Some((number, field)) = spec.next().map_err(at)? {
                    match (number, field) {
                        (3, Field::Varint(t)) => {
                            m.model_type = match t {
                                1 => ModelType::Unigram,
                                2 => ModelType::Bpe,
                                t => bail!(
                                    "{}: trainer_spec.model_type is {t} (supported: 1 UNIGRAM, 2 BPE)",
                                    path.display()
                                ),
                            }
                        }
                        (24, Field::Varint(v)) => suffix = v != 0,
                        (35, Field::Varint(v)) => m.byte_fallback = v != 0,
                        (40, Field::Varint(v)) => m.unk_id = int32(v),
                        (41, Field::Varint(v)) => m.bos_id = int32(v),
                        (42, Field::Varint(v)) => m.eos_id = int32(v),
                        (43, Field::Varint(v)) => m.pad_id = int32(v),
                        (44, Field::Bytes(b)) => m.unk_surface = text(b, "trainer_spec.unk_surface").map_err(at)?,
                        _ => {}
                    }
                }
            }
            (3, Field::Bytes(b)) => {
                let mut spec = Wire::new(b, "normalizer_spec");
                while let Some((number, field)) = spec.next().map_err(at)? {
                    match (number, field) {
                        (1, Field::Bytes(b)) => m.normalizer_name = text(b, "normalizer_spec.name").map_err(at)?,
                        (2, Field::Bytes(b)) => m.precompiled_charsmap = b.to_vec(),
                        (3, Field::Varint(v)) => m.add_dummy_prefix = v != 0,
                        (4, Field::Varint(v)) => m.remove_extra_whitespaces = v != 0,
                        (5, Field::Varint(v)) => m.escape_whitespaces = v != 0,
                        _ => {}
                    }
                }
            }
            (5, Field::Bytes(b)) => {
                let mut spec = Wire::new(b, "denormalizer_spec");
                while let Some((number, field)) = spec.next().map_err(at)? {
                    if let (2, Field::Bytes(map)) = (number, field)
                        && !map.is_empty()
                    {
                        bail!("{}: denormalizer_spec.precompiled_charsmap is set (supported: empty)", path.display());
                    }
                }
            }
            _ => {}
        }
    }
    if suffix {
        bail!("{}: trainer_spec.treat_whitespace_as_suffix is true (supported: false)", path.display());
    }
    if m.pieces.is_empty() {
        bail!("{}: no pieces (not a SentencePiece model?)", path.display());
    }
    let n = m.pieces.len() as i32;
    if !(0..n).contains(&m.unk_id) || m.pieces[m.unk_id as usize].kind != PieceKind::Unknown {
        bail!("{}: trainer_spec.unk_id is {} (must name the UNKNOWN piece, one of 0..{n})", path.display(), m.unk_id);
    }
    Ok(m)
}
// ANCHOR_END: read_model_proto

impl ModelProto {
    /// A special id (`bos_id`, `eos_id`, `pad_id`) when the model has one.
    pub fn id(&self, id: i32) -> Option<u32> {
        (0..self.pieces.len() as i32).contains(&id).then_some(id as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn bytes_field(number: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn piece(text: &str, score: f32, kind: u64) -> Vec<u8> {
        let mut p = Vec::new();
        bytes_field(1, text.as_bytes(), &mut p);
        varint(2 << 3 | 5, &mut p);
        p.extend_from_slice(&score.to_le_bytes());
        varint(3 << 3, &mut p);
        varint(kind, &mut p);
        p
    }

    #[test]
    fn reads_pieces_specs_and_defaults_and_skips_unknown_fields() {
        let mut m = Vec::new();
        bytes_field(1, &piece("<unk>", 0.0, 2), &mut m);
        bytes_field(1, &piece("\u{2581}a", -1.5, 1), &mut m);
        let mut trainer = Vec::new();
        varint(3 << 3, &mut trainer);
        varint(2, &mut trainer);
        varint(43 << 3, &mut trainer);
        varint(u64::MAX, &mut trainer); // pad_id -1 as ten bytes
        varint(99 << 3 | 1, &mut trainer); // an unknown fixed64 field
        trainer.extend_from_slice(&[0; 8]);
        bytes_field(2, &trainer, &mut m);
        let mut norm = Vec::new();
        varint(3 << 3, &mut norm);
        varint(0, &mut norm);
        bytes_field(3, &norm, &mut m);
        let p = parse(Path::new("t.model"), &m).unwrap();
        assert_eq!(p.pieces[1], Piece { piece: "\u{2581}a".into(), score: -1.5, kind: PieceKind::Normal });
        assert_eq!((p.model_type, p.pad_id, p.eos_id), (ModelType::Bpe, -1, 2));
        assert!(!p.add_dummy_prefix && p.remove_extra_whitespaces && p.escape_whitespaces);
        assert_eq!(p.unk_surface, " \u{2047} ");
    }

    #[test]
    fn refuses_word_models_truncation_and_a_missing_unknown_piece() {
        let mut unk = Vec::new();
        bytes_field(1, &piece("<unk>", 0.0, 2), &mut unk);
        let mut word = unk.clone();
        bytes_field(2, &[3 << 3, 3], &mut word);
        let err = parse(Path::new("t.model"), &word).unwrap_err().to_string();
        assert!(err.contains("t.model: trainer_spec.model_type is 3"), "{err}");
        let mut denorm = unk.clone();
        bytes_field(5, &[2 << 3 | 2, 1, 0], &mut denorm);
        let err = parse(Path::new("t.model"), &denorm).unwrap_err().to_string();
        assert!(err.contains("denormalizer_spec.precompiled_charsmap is set"), "{err}");
        let err = parse(Path::new("t.model"), &unk[..unk.len() - 2]).unwrap_err().to_string();
        assert!(err.contains("past the end"), "{err}");
        let mut normal = Vec::new();
        bytes_field(1, &piece("a", 0.0, 1), &mut normal);
        let err = parse(Path::new("t.model"), &normal).unwrap_err().to_string();
        assert!(err.contains("trainer_spec.unk_id is 0"), "{err}");
    }
}
