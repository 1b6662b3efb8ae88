//! Multi-task SFT data: one task per data path, encoded, cut to length, shuffled, split and blended.

use super::blend::{DataSplit, blend_by_count};
use super::collate::{Batch, CollateOptions, collate};
use super::encode::{Encoded, Encoder};
use super::mt19937::Mt19937;
use super::pack::{Overlong, PaddingMode, Window, Windower};
use super::records::{jsonl_lines, parse_line};
use super::template::{RoleMarkers, TokenizeMode};
use crate::io::tokenizer::Tokenizer;
use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the trainer's config says about data (MFTCoder field names and defaults).
#[derive(Clone, Debug)]
pub struct DataConfig {
    /// One task per path: a `*.jsonl` file, or a directory searched recursively for `*.jsonl`.
    pub data_paths: Vec<PathBuf>,
    pub seq_length: usize,
    pub padding_mode: PaddingMode,
    pub tokenize_mode: TokenizeMode,
    /// `None` = the default `<s>system\n`, `<s>human\n`, `<s>bot\n`.
    pub role_markers: Option<RoleMarkers>,
    pub data_split: DataSplit,
    /// numpy `RandomState` seed for the per-task shuffle (MFTCoder: `seed`, default 1234).
    pub seed: u32,
    pub overlong: Overlong,
    /// Skip (and count) malformed records instead of failing on the first one.
    pub skip_bad_records: bool,
    /// Reproduce MFTCoder's pack/concat exactly: one buffer shared by all tasks, never flushed, overlong dropped.
    pub mftcoder_quirks: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            data_paths: Vec::new(),
            seq_length: 4096,
            padding_mode: PaddingMode::Padding,
            tokenize_mode: TokenizeMode::Sft,
            role_markers: None,
            data_split: DataSplit::default(),
            seed: 1234,
            overlong: Overlong::Drop,
            skip_bad_records: false,
            mftcoder_quirks: false,
        }
    }
}

/// One training sample of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub task: usize,
    pub window: Window,
}

/// Counts for the per-task summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskStats {
    pub files: usize,
    pub records: usize,
    pub bad_records: usize,
    pub dropped: usize,
    pub truncated: usize,
    pub samples: usize,
    /// Tokens in the samples, padding excluded.
    pub tokens: usize,
    pub supervised_tokens: usize,
}

/// A task's samples in file and line order, before shuffling.
#[derive(Clone, Debug)]
pub struct Task {
    pub id: usize,
    pub name: String,
    pub path: PathBuf,
    pub samples: Vec<Sample>,
    pub stats: TaskStats,
}

/// `"[a,b]"` (MFTCoder's string form), `"a,b"`, or a JSON array of strings. Spaces around paths are trimmed.
pub fn parse_data_paths(s: &str) -> Result<Vec<PathBuf>> {
    let s = s.trim();
    if let Ok(v) = serde_json::from_str::<Vec<String>>(s) {
        return check_paths(v.into_iter().map(|p| p.trim().to_string()).collect(), s);
    }
    let inner = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
    check_paths(inner.split(',').map(|p| p.trim().to_string()).collect(), s)
}

fn check_paths(paths: Vec<String>, s: &str) -> Result<Vec<PathBuf>> {
    if paths.is_empty() || paths.iter().any(String::is_empty) {
        bail!("data_paths: `{s}` has an empty path (expected \"[path1,path2]\" or a JSON array)");
    }
    Ok(paths.into_iter().map(PathBuf::from).collect())
}

/// A task's name: the last component of its path (MFTCoder: `path.split("/")[-1]`, after dropping a trailing `/`).
pub fn task_name(path: &Path) -> Result<String> {
    let s = path.to_string_lossy();
    let name = s.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if name.is_empty() || name == "." || name == ".." {
        bail!("{}: cannot name a task after this path", path.display());
    }
    Ok(name.to_string())
}

/// The jsonl files of one data path, sorted (MFTCoder takes the file system's order).
pub fn task_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.to_string_lossy().ends_with(".jsonl") {
        if !path.is_file() {
            bail!("{}: no such file", path.display());
        }
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        bail!("{}: not a directory or a .jsonl file", path.display());
    }
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| format!("{}: cannot list", dir.display()))?;
        for entry in entries {
            let p = entry.with_context(|| format!("{}: cannot list", dir.display()))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "jsonl") {
                files.push(p);
            }
        }
    }
    if files.is_empty() {
        bail!("{}: no *.jsonl files under this directory", path.display());
    }
    files.sort();
    Ok(files)
}

// ANCHOR: long_records
/// What to do with a record whose jsonl line is far longer than any sample can be: with `truncate`, cut
/// its text to `limit` bytes before tokenizing; otherwise drop it unread. Either way it is never tokenized
/// whole, so memory follows `seq_length`, not the record (a tokenizer takes hundreds of bytes per byte).
#[derive(Clone, Copy, Debug)]
pub struct LongRecords {
    pub limit: usize,
    pub truncate: bool,
}

impl LongRecords {
    /// For samples of `tokens` tokens: 32 bytes of jsonl per token (no tokenizer packs more into one token,
    /// escapes included), and at least 64 KiB.
    pub fn for_tokens(tokens: usize, truncate: bool) -> Self {
        LongRecords { limit: tokens.saturating_mul(32).max(64 << 10), truncate }
    }
}
// ANCHOR_END: long_records

/// How one line came out.
enum Line {
    Encoded(Encoded),
    /// Dropped before parsing: this many bytes.
    TooLong(usize),
    /// Cut to the limit before tokenizing.
    Cut(Encoded, usize),
}

/// Read a jsonl file (memory-mapped) and encode its records in parallel, keeping line order. A malformed
/// record is an error `file:line: problem`, or with `skip_bad` is counted and left out. `each` receives the
/// records in order; records beyond `long` are dropped (counted in `too_long`) or cut, with a warning.
pub fn encode_file(
    file: &Path,
    encoder: &Encoder,
    skip_bad: bool,
    bad: &mut usize,
    long: Option<LongRecords>,
    too_long: &mut usize,
    mut each: impl FnMut(Encoded),
) -> Result<()> {
    let handle = std::fs::File::open(file).with_context(|| format!("{}: cannot read", file.display()))?;
    let len = handle.metadata().with_context(|| format!("{}: cannot read", file.display()))?.len();
    // SAFETY: the map is read-only; a data file rewritten while it is read is outside our contract.
    let map = if len == 0 { None } else { Some(unsafe { memmap2::Mmap::map(&handle) }?) };
    let lines: Vec<(usize, &[u8])> = jsonl_lines(map.as_deref().unwrap_or_default()).collect();
    let mut warned = 0;
    for chunk in lines.chunks(4096) {
        let encoded: Vec<(usize, Result<Line>)> = chunk
            .par_iter()
            .map(|&(n, line)| {
                let parsed = || parse_line(line).map_err(anyhow::Error::from);
                let result = match long {
                    Some(l) if line.len() > l.limit && !l.truncate => Ok(Line::TooLong(line.len())),
                    Some(l) if line.len() > l.limit => {
                        parsed().and_then(|r| encoder.encode_within(&r, l.limit)).map(|e| Line::Cut(e, line.len()))
                    }
                    _ => parsed().and_then(|r| encoder.encode(&r)).map(Line::Encoded),
                };
                (n, result)
            })
            .collect();
        for (n, result) in encoded {
            let limit = long.map_or(0, |l| l.limit);
            let mut warn = |what: String| {
                warned += 1;
                if warned <= 10 {
                    eprintln!("warning: {}:{n}: {what}", file.display());
                }
            };
            match result {
                Ok(Line::Encoded(e)) => each(e),
                Ok(Line::TooLong(bytes)) => {
                    *too_long += 1;
                    warn(format!(
                        "a record of {bytes} bytes, far beyond seq_length (at most {limit} bytes can fit); dropped \
                         without tokenizing it (`truncate: true` keeps its start)"
                    ));
                }
                Ok(Line::Cut(e, bytes)) => {
                    warn(format!(
                        "a record of {bytes} bytes, far beyond seq_length; cut to {limit} bytes before tokenizing"
                    ));
                    each(e);
                }
                Err(_) if skip_bad => *bad += 1,
                Err(e) => bail!("{}:{n}: {e:#}", file.display()),
            }
        }
    }
    if warned > 10 {
        eprintln!("warning: {}: {} more records far beyond seq_length", file.display(), warned - 10);
    }
    Ok(())
}

/// Encode every task: the samples of each, in order, with counts. Task names must be unique.
pub fn load_tasks(tokenizer: &Tokenizer, cfg: &DataConfig) -> Result<(Vec<Task>, u32)> {
    if cfg.data_paths.is_empty() {
        bail!("data_paths: no data path given");
    }
    if cfg.seq_length == 0 {
        bail!("seq_length: must be positive");
    }
    let mut seen: BTreeMap<String, &Path> = BTreeMap::new();
    for p in &cfg.data_paths {
        let name = task_name(p)?;
        if let Some(other) = seen.insert(name.clone(), p) {
            bail!(
                "data_paths: `{}` and `{}` would both be task `{name}` (task names are the last path component)",
                other.display(),
                p.display()
            );
        }
    }
    let markers = cfg.role_markers.clone().unwrap_or_default();
    let encoder = Encoder::new(tokenizer, markers, cfg.tokenize_mode)?;
    let mk = || match cfg.mftcoder_quirks {
        true => Windower::mftcoder(cfg.padding_mode, cfg.seq_length),
        false => Windower::new(cfg.padding_mode, cfg.seq_length, cfg.overlong),
    };
    let mut shared = mk(); // MFTCoder: one buffer for the whole run
    let mut tasks = Vec::with_capacity(cfg.data_paths.len());
    for (id, path) in cfg.data_paths.iter().enumerate() {
        let files = task_files(path)?;
        let mut own = mk();
        let windower = if cfg.mftcoder_quirks { &mut shared } else { &mut own };
        let (dropped0, truncated0) = (windower.dropped, windower.truncated);
        let mut stats = TaskStats { files: files.len(), ..Default::default() };
        let mut windows = Vec::new();
        // concat cuts every record into windows, so no record is too long for it
        let long = (cfg.padding_mode != PaddingMode::Concat)
            .then(|| LongRecords::for_tokens(cfg.seq_length + 1, cfg.overlong == Overlong::Truncate));
        let mut too_long = 0;
        for file in &files {
            let mut records = 0;
            encode_file(file, &encoder, cfg.skip_bad_records, &mut stats.bad_records, long, &mut too_long, |e| {
                records += 1;
                windower.push(e, &mut windows);
            })?;
            stats.records += records;
        }
        stats.records += too_long;
        if !cfg.mftcoder_quirks {
            windower.finish(&mut windows); // MFTCoder carries the buffer into the next task, and loses it at the end
        }
        stats.dropped = windower.dropped - dropped0 + too_long;
        stats.truncated = windower.truncated - truncated0;
        stats.samples = windows.len();
        stats.tokens = windows.iter().map(Window::len).sum();
        stats.supervised_tokens = windows.iter().map(Window::supervised_tokens).sum();
        let samples = windows.into_iter().map(|window| Sample { task: id, window }).collect();
        tasks.push(Task { id, name: task_name(path)?, path: path.clone(), samples, stats });
    }
    Ok((tasks, encoder.eos_id))
}

/// The dataset a trainer iterates: per-task train and validation samples and the blended training order.
#[derive(Clone, Debug)]
pub struct MultiTaskDataset {
    pub task_names: Vec<String>,
    pub stats: Vec<TaskStats>,
    /// `train[k]`, `valid[k]`: task k's samples after the seeded shuffle and the split.
    pub train: Vec<Vec<Sample>>,
    pub valid: Vec<Vec<Sample>>,
    /// The blended order over all training samples: `(task, index into train[task])`.
    pub train_order: Vec<(usize, usize)>,
    pub seq_length: usize,
    /// The EOS id, also used for padding.
    pub pad_id: u32,
}

impl MultiTaskDataset {
    /// Tokenize the data paths and build the dataset.
    pub fn build(tokenizer: &Tokenizer, cfg: &DataConfig) -> Result<Self> {
        let (tasks, eos) = load_tasks(tokenizer, cfg)?;
        Ok(Self::from_tasks(tasks, eos, cfg))
    }

    // ANCHOR: from_tasks
    /// Shuffle each task with `RandomState(seed)` (a fresh generator per task, as MFTCoder does), split by
    /// `data_split`, and blend the training parts in proportion to their sizes.
    pub fn from_tasks(tasks: Vec<Task>, pad_id: u32, cfg: &DataConfig) -> Self {
        let (mut train, mut valid, mut names, mut stats) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for mut task in tasks {
            Mt19937::new(cfg.seed).shuffle(&mut task.samples);
            let n_train = cfg.data_split.train_count(task.samples.len());
            valid.push(task.samples.split_off(n_train));
            train.push(task.samples);
            names.push(task.name);
            stats.push(task.stats);
        }
        let counts: Vec<usize> = train.iter().map(Vec::len).collect();
        let train_order = blend_by_count(&counts);
        MultiTaskDataset { task_names: names, stats, train, valid, train_order, seq_length: cfg.seq_length, pad_id }
    }
    // ANCHOR_END: from_tasks

    pub fn num_tasks(&self) -> usize {
        self.task_names.len()
    }

    pub fn train_len(&self) -> usize {
        self.train_order.len()
    }

    /// The `i`-th training sample in blended order.
    pub fn train_sample(&self, i: usize) -> &Sample {
        let (task, j) = self.train_order[i];
        &self.train[task][j]
    }

    /// A seeded permutation of `0..train_len()` for one epoch (the DataLoader's `shuffle=True`; our own
    /// generator, so it is reproducible but not torch's stream).
    pub fn epoch_order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let mut rng = crate::rng::Rng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order: Vec<usize> = (0..self.train_len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        order
    }

    /// Collate training samples given by blended-order indices.
    pub fn train_batch(&self, indices: &[usize], opts: CollateOptions) -> Batch {
        let samples: Vec<&Sample> = indices.iter().map(|&i| self.train_sample(i)).collect();
        collate(&samples, self.seq_length, self.pad_id, opts)
    }

    /// Task `k`'s validation set in batches of `batch_size` (the last may be smaller).
    pub fn valid_batches(&self, k: usize, batch_size: usize, opts: CollateOptions) -> Vec<Batch> {
        self.valid[k]
            .chunks(batch_size.max(1))
            .map(|c| collate(&c.iter().collect::<Vec<_>>(), self.seq_length, self.pad_id, opts))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{temp_dir, tiny_tokenizer};

    #[test]
    fn data_paths_parse_in_every_form() {
        let want = vec![PathBuf::from("a/b"), PathBuf::from("c")];
        assert_eq!(parse_data_paths("[a/b,c]").unwrap(), want);
        assert_eq!(parse_data_paths("a/b, c").unwrap(), want);
        assert_eq!(parse_data_paths(r#"["a/b", "c"]"#).unwrap(), want);
        assert!(parse_data_paths("[a,,b]").is_err());
        assert_eq!(task_name(Path::new("data/code_exercise/")).unwrap(), "code_exercise");
        assert_eq!(task_name(Path::new("x/t.jsonl")).unwrap(), "t.jsonl");
        assert!(task_name(Path::new("/")).is_err());
    }

    #[test]
    fn tasks_are_found_named_split_and_blended() {
        let dir = temp_dir("dataset");
        std::fs::create_dir_all(dir.join("a/sub")).unwrap();
        let rec = |i: usize| format!("{{\"prompt\":\"p{i}\",\"answer\":\"a{i}\"}}\n");
        std::fs::write(dir.join("a/one.jsonl"), (0..5).map(rec).collect::<String>()).unwrap();
        std::fs::write(dir.join("a/sub/two.jsonl"), (5..8).map(rec).collect::<String>()).unwrap();
        std::fs::write(dir.join("a/ignored.txt"), "not data").unwrap();
        std::fs::write(dir.join("b.jsonl"), (0..4).map(rec).collect::<String>()).unwrap();
        let tok = tiny_tokenizer();
        let cfg = DataConfig {
            data_paths: vec![dir.join("a"), dir.join("b.jsonl")],
            seq_length: 64,
            data_split: "75,25,0".parse().unwrap(),
            ..Default::default()
        };
        let (tasks, _) = load_tasks(&tok, &cfg).unwrap();
        assert_eq!(tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), vec!["a", "b.jsonl"]);
        assert_eq!((tasks[0].stats.files, tasks[0].stats.records, tasks[0].stats.samples), (2, 8, 8));
        let ds = MultiTaskDataset::from_tasks(tasks, 0, &cfg);
        assert_eq!((ds.train[0].len(), ds.valid[0].len(), ds.train[1].len(), ds.valid[1].len()), (6, 2, 3, 1));
        assert_eq!(ds.train_len(), 9);
        assert!(ds.train.iter().flatten().chain(ds.valid.iter().flatten()).all(|s| s.window.supervised_tokens() > 0));
        let batch = ds.train_batch(&[0, 1, 2], CollateOptions::default());
        assert_eq!(batch.input_ids.nrows(), 3);
        let mut order = ds.epoch_order(1, 0);
        assert_ne!(order, ds.epoch_order(1, 1));
        order.sort();
        assert_eq!(order, (0..9).collect::<Vec<_>>());

        let clash = DataConfig { data_paths: vec![dir.join("a"), dir.join("sub/a")], ..cfg.clone() };
        assert!(load_tasks(&tok, &clash).unwrap_err().to_string().contains("would both be task `a`"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_record_names_file_and_line_or_is_counted_when_skipped() {
        let dir = temp_dir("badrec");
        let f = dir.join("t.jsonl");
        std::fs::write(&f, "{\"text\":\"ok\"}\n\n{\"text\": 3}\n{\"text\":\"ok\"}\n").unwrap();
        let tok = tiny_tokenizer();
        let cfg = DataConfig { data_paths: vec![f.clone()], seq_length: 32, ..Default::default() };
        let e = format!("{:#}", load_tasks(&tok, &cfg).unwrap_err());
        assert_eq!(e, format!("{}:3: field `text` must be a string, found a number", f.display()));
        let (tasks, _) = load_tasks(&tok, &DataConfig { skip_bad_records: true, ..cfg }).unwrap();
        assert_eq!((tasks[0].stats.records, tasks[0].stats.bad_records), (2, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
