//! safetensors checkpoints: one file or a sharded set, memory-mapped, every float dtype read as f32.
//!
//! A Hugging Face model directory holds either `model.safetensors` or `model.safetensors.index.json`, whose
//! `weight_map` names the shard that holds each tensor. We map every file into memory once and parse a tensor
//! only when it is asked for, so loading costs one pass over the bytes we actually use.
//!
//! What a checkpoint may not do: name a shard outside its directory (checked before any file is opened),
//! list a tensor twice in one header (the safetensors crate would keep the last), or — in a model directory —
//! hold NaN or ∞ weights (refused as they are read, naming the tensor; `--allow-non-finite-weights` loads
//! them with a warning).

use anyhow::{Context, Result, anyhow, bail};
use memmap2::Mmap;
use ndarray::{Array1, Array2, ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Every tensor of a checkpoint, by name, with the file it lives in.
pub struct WeightStore {
    files: Vec<(PathBuf, Mmap)>,
    /// tensor name → index into `files`
    location: BTreeMap<String, usize>,
    /// Refuse non-finite float tensors (model directories, adapters, optimizer moments; not golden files).
    check_finite: bool,
}

static ALLOW_NON_FINITE: AtomicBool = AtomicBool::new(false);

/// `--allow-non-finite-weights`: load weights holding NaN or ∞ with a warning instead of refusing them.
pub fn allow_non_finite_weights(allow: bool) {
    ALLOW_NON_FINITE.store(allow, Ordering::Relaxed);
}

/// What `info` prints about one tensor.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl WeightStore {
    // ANCHOR: weight_store_open
    /// Open `dir/model.safetensors`, or every shard listed in `dir/model.safetensors.index.json`,
    /// or a single `.safetensors` file given directly.
    pub fn open(path: &Path) -> Result<Self> {
        if crate::gguf::is_gguf(path) {
            return crate::gguf::weight_store(path); // a GGUF file, dequantized in memory
        }
        let single = if path.is_file() { path.to_path_buf() } else { path.join("model.safetensors") };
        let index = path.join("model.safetensors.index.json");
        if path.is_dir() && index.is_file() {
            Self::open_sharded(path, &index)
        } else if single.is_file() {
            let mut store = WeightStore { files: Vec::new(), location: BTreeMap::new(), check_finite: path.is_dir() };
            store.add_file(&single)?;
            Ok(store)
        } else if path.is_dir() {
            bail!("{}: no model.safetensors or model.safetensors.index.json in this directory", path.display())
        } else {
            bail!("{}: no such file or directory", path.display())
        }
    }
    // ANCHOR_END: weight_store_open

    /// One file, with the finiteness check of a model directory (adapters, optimizer moments).
    pub fn open_checked(file: &Path) -> Result<Self> {
        Ok(WeightStore { check_finite: true, ..Self::open(file)? })
    }

    fn open_sharded(dir: &Path, index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).with_context(|| format!("{}: cannot read", index.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", index.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| anyhow!("{}: missing object field `weight_map`", index.display()))?;
        let mut shards: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_owned)).collect();
        shards.sort();
        shards.dedup();
        // before anything is opened: every shard is a relative path that stays inside the directory
        if let Some(bad) = shards.iter().find(|s| {
            s.is_empty()
                || !Path::new(s.as_str()).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        }) {
            bail!("{}: shard `{bad}` is outside the model directory (shards must be paths inside it)", index.display());
        }
        let mut store = WeightStore { files: Vec::new(), location: BTreeMap::new(), check_finite: true };
        for shard in &shards {
            store.add_file(&dir.join(shard))?;
        }
        for (name, shard) in map {
            let shard = shard.as_str().unwrap_or_default();
            let file = dir.join(shard);
            match store.location.get(name) {
                Some(&i) if store.files[i].0 == file => {}
                _ => bail!("{}: index names `{name}` in {shard}, but that shard does not hold it", index.display()),
            }
        }
        Ok(store)
    }

    // ANCHOR: weight_store_add_file
    fn add_file(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: the map is read-only; a checkpoint rewritten underneath a running process is outside our contract.
        let mmap =
            unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot map into memory", path.display()))?;
        self.add_map(path, mmap)
    }

    fn add_map(&mut self, path: &Path, mmap: Mmap) -> Result<()> {
        if let Some(name) = duplicate_header_key(&mmap) {
            bail!("{}: tensor `{name}` is listed twice in the header (not a valid safetensors file)", path.display());
        }
        let parsed = SafeTensors::deserialize(&mmap)
            .map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
        let file_index = self.files.len();
        for name in parsed.names() {
            if let Some(&other) = self.location.get(name) {
                bail!("{}: tensor `{name}` is also in {}", path.display(), self.files[other].0.display());
            }
            self.location.insert(name.to_string(), file_index);
        }
        self.files.push((path.to_path_buf(), mmap));
        Ok(())
    }
    // ANCHOR_END: weight_store_add_file

    /// A store over safetensors bytes built in memory (a GGUF file loaded without writing), named `label`
    /// in messages; the bytes are copied into an anonymous map.
    pub fn from_bytes(label: &Path, bytes: &[u8]) -> Result<Self> {
        let mut map = memmap2::MmapMut::map_anon(bytes.len().max(1))?;
        map[..bytes.len()].copy_from_slice(bytes);
        let mut store = WeightStore { files: Vec::new(), location: BTreeMap::new(), check_finite: true };
        store.add_map(label, map.make_read_only()?)?;
        Ok(store)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// The files the store reads, for messages.
    pub fn describe(&self) -> String {
        match self.files.as_slice() {
            [(p, _)] => p.display().to_string(),
            files => format!("{} ({} shards)", files[0].0.parent().unwrap_or(Path::new(".")).display(), files.len()),
        }
    }

    fn view(&self, name: &str) -> Result<(&Path, safetensors::tensor::TensorView<'_>)> {
        let &i = self.location.get(name).ok_or_else(|| anyhow!("{}: tensor `{name}` not found", self.describe()))?;
        let (path, mmap) = &self.files[i];
        let parsed = SafeTensors::deserialize(mmap).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let view = parsed.tensor(name).map_err(|e| anyhow!("{}: tensor `{name}`: {e}", path.display()))?;
        Ok((path, view))
    }

    pub fn info(&self, name: &str) -> Result<TensorInfo> {
        let (_, view) = self.view(name)?;
        Ok(TensorInfo { dtype: view.dtype(), shape: view.shape().to_vec() })
    }

    /// Any float tensor, converted to f32, with its own shape.
    pub fn tensor_f32(&self, name: &str) -> Result<ArrayD<f32>> {
        let (path, view) = self.view(name)?;
        let data =
            bytes_to_f32(view.dtype(), view.data()).with_context(|| format!("{}: tensor `{name}`", path.display()))?;
        if self.check_finite
            && let Some(first) = data.iter().position(|v| !v.is_finite())
        {
            let n = data.iter().filter(|v| !v.is_finite()).count();
            let what = format!(
                "{}: tensor `{name}` holds {n} non-finite values (the first, at index {first}, is {})",
                path.display(),
                data[first]
            );
            if !ALLOW_NON_FINITE.load(Ordering::Relaxed) {
                bail!("{what}; refusing to load it (--allow-non-finite-weights loads it anyway)");
            }
            eprintln!("warning: {what}; loading it anyway (--allow-non-finite-weights)");
        }
        Ok(ArrayD::from_shape_vec(IxDyn(view.shape()), data)?)
    }

    /// An integer tensor (I64 / I32 / U32 / U16 / U8) widened to i64, flattened; for token ids in goldens.
    pub fn tensor_i64(&self, name: &str) -> Result<Vec<i64>> {
        let (path, view) = self.view(name)?;
        let b = view.data();
        Ok(match view.dtype() {
            Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            Dtype::I32 => {
                b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64).collect()
            }
            Dtype::U32 => {
                b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")) as i64).collect()
            }
            Dtype::U16 => b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64).collect(),
            Dtype::U8 => b.iter().map(|&v| v as i64).collect(),
            other => bail!("{}: tensor `{name}` has dtype {other:?}, expected an integer dtype", path.display()),
        })
    }

    /// The `__metadata__` string map of the first file.
    pub fn metadata(&self) -> Result<BTreeMap<String, String>> {
        let (path, mmap) = &self.files[0];
        let (_, meta) = SafeTensors::read_metadata(mmap).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(meta.metadata().clone().map(|m| m.into_iter().collect()).unwrap_or_default())
    }

    // ANCHOR: weight_store_matrix
    /// A matrix of exactly `[rows, cols]`; any other shape is an error naming the tensor.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>> {
        let t = self.tensor_f32(name)?;
        if t.shape() != [rows, cols] {
            bail!("{}: tensor `{name}` has shape {:?}, expected [{rows}, {cols}]", self.describe(), t.shape());
        }
        Ok(t.into_dimensionality()?)
    }
    // ANCHOR_END: weight_store_matrix

    /// A vector of exactly `[len]`.
    pub fn vector(&self, name: &str, len: usize) -> Result<Array1<f32>> {
        let t = self.tensor_f32(name)?;
        if t.shape() != [len] {
            bail!("{}: tensor `{name}` has shape {:?}, expected [{len}]", self.describe(), t.shape());
        }
        Ok(t.into_dimensionality()?)
    }
}

/// The first tensor name a safetensors header lists twice (JSON objects may repeat keys; the header's
/// parser keeps the last value, which would silently hide a tensor).
fn duplicate_header_key(bytes: &[u8]) -> Option<String> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
            let (mut seen, mut duplicate) = (std::collections::HashSet::new(), None);
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !seen.insert(key.clone()) && duplicate.is_none() {
                    duplicate = Some(key);
                }
            }
            Ok(duplicate)
        }
    }
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    serde::Deserializer::deserialize_map(&mut serde_json::Deserializer::from_slice(header), Keys).ok().flatten()
}

// ANCHOR: bytes_to_f32
/// Little-endian F32 / BF16 / F16 bytes to f32 values. bf16 and f16 widen exactly.
pub fn bytes_to_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => bail!("unsupported dtype {other:?} (supported: F32, BF16, F16)"),
    })
}
// ANCHOR_END: bytes_to_f32

/// One tensor to write: a name, a dtype, a shape and little-endian bytes.
pub struct OwnedTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl OwnedTensor {
    pub fn f32(name: &str, shape: &[usize], values: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "tensor {name}: shape/data mismatch");
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        OwnedTensor { name: name.into(), dtype: Dtype::F32, shape: shape.to_vec(), bytes }
    }

    pub fn i64(name: &str, shape: &[usize], values: &[i64]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len(), "tensor {name}: shape/data mismatch");
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        OwnedTensor { name: name.into(), dtype: Dtype::I64, shape: shape.to_vec(), bytes }
    }
}

/// Serialize tensors into safetensors bytes (tensors sorted by name, as the reference writer does).
pub fn serialize(tensors: &[OwnedTensor], metadata: Option<BTreeMap<String, String>>) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|t| {
            let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map_err(|e| anyhow!("tensor `{}`: {e}", t.name))?;
            Ok((t.name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = metadata.map(|m| m.into_iter().collect());
    safetensors::serialize(views, metadata).map_err(|e| anyhow!("cannot serialize safetensors: {e}"))
}

/// Write tensors to `path` atomically.
pub fn save(path: &Path, tensors: &[OwnedTensor]) -> Result<()> {
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    super::write_atomic(path, &serialize(tensors, Some(meta))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_and_f16_widen_exactly() {
        let x = [1.5f32, -0.125, 3.0e-3, 65504.0];
        let bf: Vec<u8> = x.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
        let f: Vec<u8> = x.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        let from_bf = bytes_to_f32(Dtype::BF16, &bf).unwrap();
        let from_f = bytes_to_f32(Dtype::F16, &f).unwrap();
        for i in 0..x.len() {
            assert_eq!(from_bf[i], half::bf16::from_f32(x[i]).to_f32());
            assert_eq!(from_f[i], half::f16::from_f32(x[i]).to_f32());
        }
        assert!(bytes_to_f32(Dtype::I32, &[0; 4]).is_err());
    }

    #[test]
    fn save_then_open_round_trips_and_names_missing_tensors() {
        let dir = std::env::temp_dir().join(format!("mftcoder-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        save(&path, &[OwnedTensor::f32("a.weight", &[2, 3], &[1., 2., 3., 4., 5., 6.])]).unwrap();
        let store = WeightStore::open(&dir).unwrap();
        let m = store.matrix("a.weight", 2, 3).unwrap();
        assert_eq!(m[[1, 2]], 6.0);
        let wrong_shape = store.matrix("a.weight", 3, 2).unwrap_err().to_string();
        assert!(wrong_shape.contains("a.weight") && wrong_shape.contains("[3, 2]"), "{wrong_shape}");
        let missing = store.matrix("b.weight", 1, 1).unwrap_err().to_string();
        assert!(missing.contains("`b.weight` not found") && missing.contains("model.safetensors"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_finite_weights_are_refused_in_a_model_directory_but_not_in_a_golden_file() {
        let dir = std::env::temp_dir().join(format!("mftcoder-st-nan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        save(&path, &[OwnedTensor::f32("w", &[3], &[1.0, f32::NAN, f32::INFINITY])]).unwrap();
        let err = WeightStore::open(&dir).unwrap().tensor_f32("w").unwrap_err().to_string();
        assert!(err.contains("tensor `w` holds 2 non-finite values (the first, at index 1, is NaN)"), "{err}");
        assert!(err.contains("--allow-non-finite-weights"), "{err}");
        assert!(WeightStore::open(&path).unwrap().tensor_f32("w").is_ok(), "a single file (a golden) is read as it is");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_tensor_listed_twice_in_the_header_is_an_error() {
        let dir = std::env::temp_dir().join(format!("mftcoder-st-dup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 8]);
        std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
        let err = WeightStore::open(&dir).err().unwrap().to_string();
        assert!(err.contains("tensor `a` is listed twice in the header"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_shard_outside_the_model_directory_is_refused_before_it_is_opened() {
        let dir = std::env::temp_dir().join(format!("mftcoder-st-shard-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("model")).unwrap();
        save(&dir.join("outside.safetensors"), &[OwnedTensor::f32("a", &[1], &[1.0])]).unwrap();
        for shard in ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors"] {
            let index = serde_json::json!({"weight_map": {"a": shard}});
            std::fs::write(dir.join("model/model.safetensors.index.json"), index.to_string()).unwrap();
            let err = WeightStore::open(&dir.join("model")).err().unwrap().to_string();
            assert!(err.contains(&format!("shard `{shard}` is outside the model directory")), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
