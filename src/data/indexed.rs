//! Megatron's memory-mapped indexed dataset, `MMIDIDX` version 1: `PREFIX.bin` holds the token arrays back to
//! back, `PREFIX.idx` says where each one starts.
//!
//! `.idx` layout (little-endian): `b"MMIDIDX\0\0"` · `u64 version = 1` · `u8 dtype code` · `u64 n_seqs` ·
//! `u64 n_doc_idx` · `i32 sizes[n_seqs]` · `i64 byte offsets[n_seqs]` · `i64 doc_idx[n_doc_idx]`.
//! Dtype codes: 1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 6 f32, 7 f64, 8 u16. MFTCoder's offline tokenizer writes one
//! sequence per document, `doc_idx = [0, 1, …, n_seqs]`, tokens as u16 when the vocabulary is below 65,500
//! and as i32 otherwise.

use anyhow::{Context, Result, bail};
use memmap2::Mmap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 9] = b"MMIDIDX\x00\x00";

/// Token storage types this crate writes and reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenDtype {
    U8,
    I16,
    I32,
    I64,
    U16,
}

impl TokenDtype {
    pub fn code(self) -> u8 {
        match self {
            TokenDtype::U8 => 1,
            TokenDtype::I16 => 3,
            TokenDtype::I32 => 4,
            TokenDtype::I64 => 5,
            TokenDtype::U16 => 8,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(TokenDtype::U8),
            3 => Some(TokenDtype::I16),
            4 => Some(TokenDtype::I32),
            5 => Some(TokenDtype::I64),
            8 => Some(TokenDtype::U16),
            _ => None,
        }
    }

    pub fn size(self) -> usize {
        match self {
            TokenDtype::U8 => 1,
            TokenDtype::I16 | TokenDtype::U16 => 2,
            TokenDtype::I32 => 4,
            TokenDtype::I64 => 8,
        }
    }

    /// MFTCoder's choice (`make_builder(..., vocab_size=tokenizer.vocab_size)`): u16 below 65,500, else i32.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size < 65_500 { TokenDtype::U16 } else { TokenDtype::I32 }
    }
}

/// `PREFIX.bin` and `PREFIX.idx` for a prefix such as `out/code_input_ids`.
pub fn bin_idx_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let s = prefix.as_os_str().to_owned();
    let mut bin = s.clone();
    bin.push(".bin");
    let mut idx = s;
    idx.push(".idx");
    (PathBuf::from(bin), PathBuf::from(idx))
}

fn tmp_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(format!(".tmp{}", std::process::id()));
    PathBuf::from(s)
}

/// Streams documents into `PREFIX.bin`; [`IndexedWriter::finish`] writes `PREFIX.idx`. Both are written under
/// temporary names and renamed at the end, so a failed run leaves no partial dataset.
pub struct IndexedWriter {
    dtype: TokenDtype,
    bin: BufWriter<File>,
    paths: (PathBuf, PathBuf),
    sizes: Vec<i32>,
    tokens: u64,
}

impl IndexedWriter {
    pub fn create(prefix: &Path, dtype: TokenDtype) -> Result<Self> {
        let paths = bin_idx_paths(prefix);
        let tmp = tmp_path(&paths.0);
        let file = File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        Ok(IndexedWriter { dtype, bin: BufWriter::with_capacity(1 << 20, file), paths, sizes: Vec::new(), tokens: 0 })
    }

    /// Append one document (one sequence).
    pub fn add(&mut self, ids: &[u32]) -> Result<()> {
        let max = match self.dtype {
            TokenDtype::U8 => u8::MAX as u64,
            TokenDtype::I16 => i16::MAX as u64,
            TokenDtype::U16 => u16::MAX as u64,
            TokenDtype::I32 => i32::MAX as u64,
            TokenDtype::I64 => u32::MAX as u64,
        };
        let size = i32::try_from(ids.len()).context("a document longer than 2^31 tokens")?;
        let mut buf = Vec::with_capacity(ids.len() * self.dtype.size());
        for &id in ids {
            if id as u64 > max {
                bail!("token id {id} does not fit the dataset's {:?} tokens", self.dtype);
            }
            match self.dtype {
                TokenDtype::U8 => buf.push(id as u8),
                TokenDtype::I16 => buf.extend_from_slice(&(id as i16).to_le_bytes()),
                TokenDtype::U16 => buf.extend_from_slice(&(id as u16).to_le_bytes()),
                TokenDtype::I32 => buf.extend_from_slice(&(id as i32).to_le_bytes()),
                TokenDtype::I64 => buf.extend_from_slice(&(id as i64).to_le_bytes()),
            }
        }
        self.bin.write_all(&buf).context("cannot write the .bin file")?;
        self.sizes.push(size);
        self.tokens += ids.len() as u64;
        Ok(())
    }

    pub fn documents(&self) -> usize {
        self.sizes.len()
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Write the index and move both files into place. Returns `(bin, idx)` paths.
    pub fn finish(self) -> Result<(PathBuf, PathBuf)> {
        let (bin_path, idx_path) = self.paths.clone();
        let tmp_bin = tmp_path(&bin_path);
        let file = self.bin.into_inner().map_err(|e| e.into_error()).context("cannot write the .bin file")?;
        file.sync_all().ok();
        let idx = index_bytes(self.dtype, &self.sizes);
        let tmp_idx = tmp_path(&idx_path);
        std::fs::write(&tmp_idx, idx).with_context(|| format!("{}: cannot write", tmp_idx.display()))?;
        std::fs::rename(&tmp_bin, &bin_path)
            .with_context(|| format!("{}: cannot rename into place", bin_path.display()))?;
        std::fs::rename(&tmp_idx, &idx_path)
            .with_context(|| format!("{}: cannot rename into place", idx_path.display()))?;
        Ok((bin_path, idx_path))
    }

    /// Remove the temporary file of an abandoned run.
    pub fn abandon(self) {
        let tmp = tmp_path(&self.paths.0);
        drop(self.bin);
        let _ = std::fs::remove_file(tmp);
    }
}

// ANCHOR: index_bytes
/// The `.idx` bytes for sequences of `sizes` tokens, one document each.
pub fn index_bytes(dtype: TokenDtype, sizes: &[i32]) -> Vec<u8> {
    let n = sizes.len();
    let mut out = Vec::with_capacity(34 + n * 20 + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&1u64.to_le_bytes());
    out.push(dtype.code());
    out.extend_from_slice(&(n as u64).to_le_bytes());
    out.extend_from_slice(&(n as u64 + 1).to_le_bytes());
    for &s in sizes {
        out.extend_from_slice(&s.to_le_bytes());
    }
    let mut pointer = 0i64;
    for &s in sizes {
        out.extend_from_slice(&pointer.to_le_bytes());
        pointer += s as i64 * dtype.size() as i64;
    }
    for d in 0..=n as i64 {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out
}
// ANCHOR_END: index_bytes

/// A memory-mapped `.bin/.idx` pair.
pub struct IndexedDataset {
    pub dtype: TokenDtype,
    pub sizes: Vec<i32>,
    pub pointers: Vec<i64>,
    pub doc_idx: Vec<i64>,
    bin: Option<Mmap>,
}

impl IndexedDataset {
    pub fn open(prefix: &Path) -> Result<Self> {
        let (bin_path, idx_path) = bin_idx_paths(prefix);
        let idx = std::fs::read(&idx_path).with_context(|| format!("{}: cannot read", idx_path.display()))?;
        let at = |what: &str| format!("{}: {what}", idx_path.display());
        if idx.len() < 34 || &idx[..9] != MAGIC {
            bail!(at("not an MMIDIDX index (bad magic)"));
        }
        let u64_at = |o: usize| u64::from_le_bytes(idx[o..o + 8].try_into().unwrap());
        if u64_at(9) != 1 {
            bail!(at(&format!("version {} (only 1 is supported)", u64_at(9))));
        }
        let dtype =
            TokenDtype::from_code(idx[17]).with_context(|| at(&format!("unsupported dtype code {}", idx[17])))?;
        let (n, nd) = (u64_at(18) as usize, u64_at(26) as usize);
        let want = 34usize
            .checked_add(n.checked_mul(12).context(at("sequence count overflows"))?)
            .and_then(|x| x.checked_add(nd.checked_mul(8)?))
            .with_context(|| at("counts overflow"))?;
        if idx.len() != want {
            bail!(at(&format!("{} bytes, but {n} sequences and {nd} doc_idx entries need {want}", idx.len())));
        }
        let mut o = 34;
        let sizes: Vec<i32> =
            (0..n).map(|i| i32::from_le_bytes(idx[o + 4 * i..o + 4 * i + 4].try_into().unwrap())).collect();
        o += 4 * n;
        let read_i64s = |o: usize, k: usize| -> Vec<i64> {
            (0..k).map(|i| i64::from_le_bytes(idx[o + 8 * i..o + 8 * i + 8].try_into().unwrap())).collect()
        };
        let pointers = read_i64s(o, n);
        let doc_idx = read_i64s(o + 8 * n, nd);
        let file = File::open(&bin_path).with_context(|| format!("{}: cannot open", bin_path.display()))?;
        let len = file.metadata()?.len();
        // SAFETY: the file is opened read-only; like every memory map it must not be truncated while mapped.
        let bin = if len == 0 {
            None
        } else {
            Some(unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot map", bin_path.display()))?)
        };
        for i in 0..n {
            let end = pointers[i] as i128 + sizes[i] as i128 * dtype.size() as i128;
            if sizes[i] < 0 || pointers[i] < 0 || end > len as i128 {
                bail!(at(&format!(
                    "sequence {i} (offset {}, {} tokens) lies outside the {len}-byte .bin",
                    pointers[i], sizes[i]
                )));
            }
        }
        Ok(IndexedDataset { dtype, sizes, pointers, doc_idx, bin })
    }

    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// Tokens `[offset, offset + len)` of sequence `i`.
    pub fn get_range(&self, i: usize, offset: usize, len: usize) -> Vec<u32> {
        let size = self.dtype.size();
        let start = self.pointers[i] as usize + offset * size;
        let bytes = match &self.bin {
            Some(m) => &m[start..start + len * size],
            None => &[][..],
        };
        bytes
            .chunks_exact(size)
            .map(|c| match self.dtype {
                TokenDtype::U8 => c[0] as u32,
                TokenDtype::I16 => i16::from_le_bytes([c[0], c[1]]) as u32,
                TokenDtype::U16 => u16::from_le_bytes([c[0], c[1]]) as u32,
                TokenDtype::I32 => i32::from_le_bytes(c.try_into().unwrap()) as u32,
                TokenDtype::I64 => i64::from_le_bytes(c.try_into().unwrap()) as u32,
            })
            .collect()
    }

    pub fn get(&self, i: usize) -> Vec<u32> {
        self.get_range(i, 0, self.sizes[i] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::temp_dir;

    #[test]
    fn write_then_read_back_identically() {
        let dir = temp_dir("indexed");
        let docs: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![], vec![65_000, 7], vec![9]];
        for dtype in [TokenDtype::U16, TokenDtype::I32] {
            let prefix = dir.join(format!("d{}_input_ids", dtype.code()));
            let mut w = IndexedWriter::create(&prefix, dtype).unwrap();
            for d in &docs {
                w.add(d).unwrap();
            }
            w.finish().unwrap();
            let r = IndexedDataset::open(&prefix).unwrap();
            assert_eq!(r.dtype, dtype);
            assert_eq!((0..r.len()).map(|i| r.get(i)).collect::<Vec<_>>(), docs);
            assert_eq!(r.doc_idx, vec![0, 1, 2, 3, 4]);
            assert_eq!(r.pointers, [0, 3, 3, 5].iter().map(|&p| p * dtype.size() as i64).collect::<Vec<_>>());
            assert_eq!(r.get_range(2, 1, 1), vec![7]);
        }
        let mut w = IndexedWriter::create(&dir.join("small"), TokenDtype::U16).unwrap();
        assert!(w.add(&[70_000]).unwrap_err().to_string().contains("does not fit"));
        w.abandon();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 4, "no temporary file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_index_is_refused_with_its_path() {
        let dir = temp_dir("indexed_bad");
        let prefix = dir.join("x");
        let (bin, idx) = bin_idx_paths(&prefix);
        std::fs::write(&bin, [1u8, 0, 2, 0]).unwrap();
        let mut bytes = index_bytes(TokenDtype::U16, &[2]);
        std::fs::write(&idx, &bytes).unwrap();
        assert_eq!(IndexedDataset::open(&prefix).unwrap().get(0), vec![1, 2]);
        bytes[0] = b'X';
        std::fs::write(&idx, &bytes).unwrap();
        assert!(IndexedDataset::open(&prefix).err().unwrap().to_string().contains("bad magic"));
        std::fs::write(&idx, index_bytes(TokenDtype::U16, &[3])).unwrap();
        assert!(IndexedDataset::open(&prefix).err().unwrap().to_string().contains("outside the 4-byte .bin"));
        std::fs::write(&idx, &index_bytes(TokenDtype::U16, &[2])[..40]).unwrap();
        assert!(IndexedDataset::open(&prefix).err().unwrap().to_string().contains("x.idx"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
