//! The GGUF container, read: a header, typed metadata key/values, tensor descriptions, then the tensor data.
//!
//! ```text
//! magic "GGUF" | version u32 (2 or 3) | tensor_count u64 | kv_count u64
//! kv_count × { key: string | value_type u32 | value }
//! tensor_count × { name: string | n_dims u32 | ne[n_dims] u64 | ggml_type u32 | offset u64 }
//! padding to `general.alignment` (default 32)
//! tensor data: each tensor at data_start + offset, offsets aligned the same way
//! ```
//! Everything is little-endian; a string is a u64 byte length and UTF-8 bytes (no terminator); an array is an
//! element type u32, a count u64 and the elements. `ne[0]` is the fastest-varying dimension, so a PyTorch
//! `[rows, cols]` matrix is stored with `ne = [cols, rows]`. Version 1 (u32 counts) is long gone and refused.
//!
//! Every length is checked against the bytes that remain before anything is allocated from it, so a
//! corrupt count is an error naming the file and the offset, not an out-of-memory abort.

use super::ggml_type::GgmlType;
use anyhow::{Context, Result, anyhow, bail};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;

// ANCHOR: value
/// A metadata value. Arrays keep their element type, so an empty array still says what it would hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// Metadata in file order.
pub type Metadata = Vec<(String, Value)>;

/// The type tags of `enum gguf_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}
// ANCHOR_END: value

impl ValueType {
    fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        [U8, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64].get(id as usize).copied()
    }

    /// The fewest bytes one element of this type takes (a string: its length prefix), to bound counts.
    fn min_size(self) -> usize {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any integer type as u64 (negative ones are not).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A float (f32 widened exactly) or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, items) => Some(items),
            _ => None,
        }
    }
}

/// One tensor's description: its name, `ne` (fastest dimension first), type and offset in the data section.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub ne: Vec<u64>,
    pub ggml_type: GgmlType,
    pub offset: u64,
    /// Bytes of data, from `ne` and the type's block size.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }

    /// The shape as PyTorch writes it: `ne` reversed (`[rows, cols]` for a matrix).
    pub fn torch_shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }
}

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

/// A parsed GGUF file over its bytes (memory-mapped from disk, or owned).
pub struct GgufFile {
    pub path: PathBuf,
    bytes: Bytes,
    pub version: u32,
    pub alignment: u64,
    /// In file order (a writer that round-trips keeps it).
    pub metadata: Vec<(String, Value)>,
    index: BTreeMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    /// Where tensor data starts (a multiple of `alignment`).
    pub data_offset: u64,
}

/// The largest dimension count ggml allows (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

// ANCHOR: cursor
/// A bounds-checked little-endian reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            anyhow!("truncated at byte {}: {n} more bytes needed, {} left", self.pos, self.bytes.len() - self.pos)
        })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items of at least `min_size` bytes each, checked against what is left.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64()?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.checked_mul(min_size as u64).is_none_or(|need| need > left) {
            bail!("{what} at byte {at} is {n}, more than the {left} bytes left can hold");
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String> {
        let at = self.pos;
        let n = self.count(1, "a string length")?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| anyhow!("the string at byte {at} is not valid UTF-8"))
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>()?[0]),
            ValueType::I8 => Value::I8(self.array::<1>()?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array()?)),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array()?)),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array()?)),
            ValueType::Bool => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => bail!("a bool at byte {} is {b}, not 0 or 1", self.pos - 1),
            },
            ValueType::String => Value::String(self.string()?),
            ValueType::Array => {
                if depth > 0 {
                    bail!("an array nested in an array at byte {} (GGUF arrays hold scalars or strings)", self.pos);
                }
                let at = self.pos;
                let id = self.u32()?;
                let item = ValueType::from_id(id).ok_or_else(|| anyhow!("array at byte {at}: unknown type {id}"))?;
                let n = self.count(item.min_size(), "an array length")?;
                let items = (0..n).map(|_| self.value(item, depth + 1)).collect::<Result<Vec<_>>>()?;
                Value::Array(item, items)
            }
        })
    }
}
// ANCHOR_END: cursor

impl GgufFile {
    /// Memory-map and parse `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: read-only map; a file rewritten underneath a running process is outside our contract.
        let mmap =
            unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot map into memory", path.display()))?;
        Self::parse(path, Bytes::Mapped(mmap))
    }

    /// Parse GGUF bytes held in memory (tests, and files built before they are written).
    pub fn from_bytes(label: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(label, Bytes::Owned(bytes))
    }

    fn parse(path: &Path, bytes: Bytes) -> Result<Self> {
        let data: &[u8] = match &bytes {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        };
        let header = read_header(data).with_context(|| format!("{}: not a valid GGUF file", path.display()))?;
        let (version, metadata, tensors, data_offset, alignment) = header;
        let index = metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        Ok(GgufFile { path: path.to_path_buf(), bytes, version, alignment, metadata, index, tensors, data_offset })
    }

    fn data(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn missing(&self, key: &str, what: &str) -> anyhow::Error {
        match self.get(key) {
            None => anyhow!("{}: metadata `{key}` is missing", self.path.display()),
            Some(v) => anyhow!("{}: metadata `{key}` must be {what}, got {v:?}", self.path.display()),
        }
    }

    /// An unsigned integer of any width.
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| self.missing(key, "a non-negative integer"))
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key).map(|_| self.u64(key)).transpose()
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|v| v.as_f64().ok_or_else(|| self.missing(key, "a number"))).transpose()
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| self.missing(key, "true or false"))).transpose()
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        self.get(key).and_then(Value::as_str).ok_or_else(|| self.missing(key, "a string"))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key).map(|_| self.str(key)).transpose()
    }

    /// An array whose every element `f` accepts, or an error naming the key and the first bad index.
    pub fn array<'a, T>(&'a self, key: &str, what: &str, f: impl Fn(&'a Value) -> Option<T>) -> Result<Vec<T>> {
        let items = self.get(key).and_then(Value::as_array).ok_or_else(|| self.missing(key, what))?;
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                f(v).ok_or_else(|| anyhow!("{}: metadata `{key}`[{i}] must be {what}, got {v:?}", self.path.display()))
            })
            .collect()
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of one tensor (checked against the file when it was parsed).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.data()[start..start + t.size as usize]
    }
}

type Header = (u32, Vec<(String, Value)>, Vec<TensorInfo>, u64, u64);

// ANCHOR: read_header
fn read_header(bytes: &[u8]) -> Result<Header> {
    let mut c = Cursor { bytes, pos: 0 };
    let magic = c.take(4).context("shorter than a GGUF header")?;
    if magic != MAGIC {
        bail!("it starts with {magic:02x?}, not the magic `GGUF`");
    }
    let version = c.u32()?;
    match version {
        2 | 3 => {}
        1 => bail!("GGUF version 1 (32-bit counts) is not supported; convert it again with a current llama.cpp"),
        v if v.swap_bytes() <= 3 => bail!("a big-endian GGUF (version {}) is not supported", v.swap_bytes()),
        v => bail!("GGUF version {v} is not supported (supported: 2, 3)"),
    }
    let n_tensors = c.count(24, "the tensor count")?; // name length + n_dims + type + offset, at least
    let n_kv = c.count(12, "the metadata count")?;
    let mut metadata = Vec::with_capacity(n_kv);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n_kv {
        let key = c.string().context("a metadata key")?;
        let at = c.pos;
        let id = c.u32()?;
        let ty = ValueType::from_id(id).ok_or_else(|| anyhow!("metadata `{key}` at byte {at}: unknown type {id}"))?;
        let value = c.value(ty, 0).with_context(|| format!("metadata `{key}`"))?;
        if !seen.insert(key.clone()) {
            bail!("metadata `{key}` appears twice");
        }
        metadata.push((key, value));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
        Some((_, v)) => bail!("metadata `general.alignment` must be a u32 power of two, got {v:?}"),
    };
    let mut tensors = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = c.string().context("a tensor name")?;
        let n_dims = c.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            bail!("tensor `{name}` has {n_dims} dimensions (allowed: 1 to {MAX_DIMS})");
        }
        let ne = (0..n_dims).map(|_| c.u64()).collect::<Result<Vec<_>>>()?;
        let type_id = c.u32()?;
        let ggml_type = GgmlType::from_id(type_id).with_context(|| format!("tensor `{name}`"))?;
        let offset = c.u64()?;
        let n = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let n = n.ok_or_else(|| anyhow!("tensor `{name}`: shape {ne:?} overflows"))?;
        if ne[0] % ggml_type.block().0 as u64 != 0 {
            bail!("tensor `{name}`: a row of {} values is not a whole number of {} blocks", ne[0], ggml_type.name());
        }
        let size = ggml_type.bytes_for(n).with_context(|| format!("tensor `{name}`"))?;
        if offset % alignment != 0 {
            bail!("tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}");
        }
        if tensors.iter().any(|t: &TensorInfo| t.name == name) {
            bail!("tensor `{name}` is listed twice");
        }
        tensors.push(TensorInfo { name, ne, ggml_type, offset, size });
    }
    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    for t in &tensors {
        let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.size));
        if end.is_none_or(|e| e > bytes.len() as u64) {
            bail!(
                "tensor `{}` ({} bytes at offset {}) runs past the end of the file ({} bytes)",
                t.name,
                t.size,
                t.offset,
                bytes.len()
            );
        }
    }
    Ok((version, metadata, tensors, data_offset, alignment))
}
// ANCHOR_END: read_header
