//! The GGUF container, written (version 3, little-endian, alignment 32): the header and metadata first, then
//! each tensor's data produced on demand and streamed out, so a model is never held twice in memory.

use super::container::{DEFAULT_ALIGNMENT, MAGIC, Value, ValueType};
use super::ggml_type::GgmlType;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::Path;

/// One tensor to write: its name, `ne` (fastest dimension first) and type.
pub struct TensorEntry {
    pub name: String,
    pub ne: Vec<u64>,
    pub ggml_type: GgmlType,
}

#[derive(Default)]
pub struct GgufWriter {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorEntry>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

// ANCHOR: put_value
fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(ty, items) => {
            out.extend((*ty as u32).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| put_value(out, item));
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}
// ANCHOR_END: put_value

impl GgufWriter {
    pub fn kv(&mut self, key: &str, value: Value) {
        self.metadata.push((key.to_string(), value));
    }

    pub fn tensor(&mut self, name: &str, ne: Vec<u64>, ggml_type: GgmlType) {
        self.tensors.push(TensorEntry { name: name.to_string(), ne, ggml_type });
    }

    fn sizes(&self) -> Result<Vec<u64>> {
        self.tensors
            .iter()
            .map(|t| t.ggml_type.bytes_for(t.ne.iter().product()).with_context(|| format!("tensor `{}`", t.name)))
            .collect()
    }

    /// Header, metadata and tensor descriptions, padded to where the data starts.
    fn header(&self, sizes: &[u64]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend((value.value_type() as u32).to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0u64;
        for (t, size) in self.tensors.iter().zip(sizes) {
            put_string(&mut out, &t.name);
            out.extend((t.ne.len() as u32).to_le_bytes());
            t.ne.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(t.ggml_type.id().to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += size.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        }
        out.resize(out.len().div_ceil(DEFAULT_ALIGNMENT as usize) * DEFAULT_ALIGNMENT as usize, 0);
        out
    }

    /// Write everything to `sink`, asking `data(i)` for tensor i's bytes when it is its turn.
    pub fn write_to(&self, sink: &mut impl Write, mut data: impl FnMut(usize) -> Result<Vec<u8>>) -> Result<()> {
        if let Some(bad) = self.metadata.iter().find(|(_, v)| matches!(v, Value::Array(ValueType::Array, _))) {
            bail!("metadata `{}`: GGUF arrays cannot hold arrays", bad.0);
        }
        let sizes = self.sizes()?;
        sink.write_all(&self.header(&sizes))?;
        for (i, size) in sizes.iter().enumerate() {
            let bytes = data(i)?;
            if bytes.len() as u64 != *size {
                bail!("tensor `{}`: {} bytes of data, {size} expected", self.tensors[i].name, bytes.len());
            }
            sink.write_all(&bytes)?;
            sink.write_all(&vec![0u8; (size.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT - size) as usize])?;
        }
        Ok(())
    }

    /// Write `path` through a temporary sibling renamed into place (no partial file on failure).
    pub fn write_file(&self, path: &Path, data: impl FnMut(usize) -> Result<Vec<u8>>) -> Result<()> {
        let name = path.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
        let written = (|| -> Result<()> {
            let file = std::fs::File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
            let mut sink = std::io::BufWriter::new(file);
            self.write_to(&mut sink, data)?;
            sink.flush().with_context(|| format!("{}: cannot write", tmp.display()))?;
            std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot move into place", path.display()))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::super::container::GgufFile;
    use super::*;

    fn sample() -> (GgufWriter, Vec<Vec<u8>>) {
        let mut w = GgufWriter::default();
        w.kv("general.architecture", Value::String("llama".into()));
        w.kv("a.u8", Value::U8(7));
        w.kv("a.i16", Value::I16(-3));
        w.kv("a.f64", Value::F64(0.1));
        w.kv("a.bool", Value::Bool(true));
        w.kv("a.strings", Value::Array(ValueType::String, vec![Value::String("x".into()), Value::String("".into())]));
        w.kv("a.empty", Value::Array(ValueType::I32, vec![]));
        w.tensor("t.weight", vec![32, 2], GgmlType::Q8_0);
        w.tensor("n.weight", vec![3], GgmlType::F32);
        let data =
            vec![(0..68).map(|i| i as u8).collect(), [1f32, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect()];
        (w, data)
    }

    fn bytes(w: &GgufWriter, data: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        w.write_to(&mut out, |i| Ok(data[i].clone())).unwrap();
        out
    }

    #[test]
    fn what_is_written_reads_back() {
        let (w, data) = sample();
        let g = GgufFile::from_bytes(Path::new("mem.gguf"), bytes(&w, &data)).unwrap();
        assert_eq!((g.version, g.alignment, g.data_offset % 32), (3, 32, 0));
        assert_eq!(g.metadata, w.metadata);
        assert_eq!(g.tensors[1].torch_shape(), vec![3]);
        assert_eq!(g.tensors[0].torch_shape(), vec![2, 32]);
        assert_eq!(g.tensors[1].offset, 96, "68 bytes padded to 96");
        for (t, d) in g.tensors.iter().zip(&data) {
            assert_eq!(g.tensor_bytes(t), d.as_slice());
        }
    }

    #[test]
    fn corrupt_files_are_one_line_errors() {
        let (w, data) = sample();
        let good = bytes(&w, &data);
        let err = |b: Vec<u8>| {
            let e = GgufFile::from_bytes(Path::new("x.gguf"), b).err().expect("refused");
            let text = format!("{e:#}");
            assert!(text.starts_with("x.gguf: not a valid GGUF file: "), "{text}");
            assert_eq!(text.lines().count(), 1, "{text}");
            text
        };
        assert!(err(good[..good.len() - 21].to_vec()).contains("runs past the end of the file")); // 20 bytes are padding
        assert!(err(b"GGML....".to_vec()).contains("not the magic `GGUF`"));
        let mut v1 = good.clone();
        v1[4] = 1;
        assert!(err(v1).contains("version 1"));
        let mut big_endian = good.clone();
        big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(err(big_endian).contains("big-endian"));
        let mut huge = good.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes()); // kv_count
        assert!(err(huge).contains("the metadata count at byte 16 is 18446744073709551615"));
        let mut string_len = good.clone();
        string_len[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes()); // the first key's length
        assert!(err(string_len).contains("a string length at byte 24"));
        assert!(err(good[..12].to_vec()).contains("truncated at byte 8"));
        let mut w2 = GgufWriter::default();
        w2.kv("general.alignment", Value::U32(48));
        assert!(err(bytes(&w2, &[])).contains("`general.alignment` must be a u32 power of two"));
    }
}
