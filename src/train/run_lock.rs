//! One run per output directory. A run holds an exclusive lock on its `output_dir` from start to exit
//! (`.mftcoder.lock`: an advisory `flock` that the kernel drops when the process dies, plus the holder's pid
//! for people and messages), and records who it is beside its checkpoints (`mftcoder_run.json`: the command,
//! the config, fingerprints of the base model and of the data, a run id). A later run into the same
//! directory resumes only if it is the same run; otherwise it stops, naming the first field that differs,
//! unless `--overwrite-output-dir` (transformers' `overwrite_output_dir`) clears the previous run's files.
//! Each checkpoint carries the run id, so `saving_limit` never removes another run's checkpoints.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = ".mftcoder.lock";
const RUN_FILE: &str = "mftcoder_run.json";
/// In every checkpoint directory: the id of the run that wrote it.
pub const CHECKPOINT_RUN_FILE: &str = "mftcoder_run_id";

// ANCHOR: run_lock
/// The exclusive lock on an output directory, released (and its file removed) when dropped or when the
/// process dies. A directory the run created and left without a checkpoint (it failed before the first)
/// is removed with it: a failed start leaves nothing behind.
pub struct RunLock {
    path: PathBuf,
    file: File,
    created: Option<PathBuf>,
}

impl RunLock {
    pub fn acquire(output_dir: &Path) -> Result<Self> {
        let created = (!output_dir.exists()).then(|| output_dir.to_path_buf());
        std::fs::create_dir_all(output_dir)
            .with_context(|| format!("{}: cannot create the output directory", output_dir.display()))?;
        let path = output_dir.join(LOCK_FILE);
        loop {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("{}: the output directory is not writable", output_dir.display()))?;
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim().parse::<u32>().ok();
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let who = holder.map_or("another process".to_string(), |p| format!("process {p}"));
                bail!(
                    "{}: in use by another run ({who} holds {LOCK_FILE}); wait for it or choose another output_dir",
                    output_dir.display()
                );
            }
            // the holder we locked out may have removed the file just before we locked it: lock the new one
            let same = std::fs::metadata(&path)
                .is_ok_and(|m| file.metadata().is_ok_and(|f| f.ino() == m.ino() && f.dev() == m.dev()));
            if !same {
                continue;
            }
            if let Some(pid) = holder.filter(|&p| p != std::process::id()) {
                eprintln!(
                    "note: {}: taking over the lock of process {pid}, which is no longer running",
                    output_dir.display()
                );
            }
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            file.flush()?;
            return Ok(RunLock { path, file, created });
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // remove the file while still holding the lock, so nobody locks an unlinked file (see `acquire`)
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = &self.created {
            let only_the_record = std::fs::read_dir(dir)
                .map(|entries| entries.flatten().all(|e| e.file_name() == RUN_FILE || e.file_name() == "metrics.jsonl"))
                .unwrap_or(false);
            if only_the_record && std::fs::metadata(dir.join("metrics.jsonl")).map_or(true, |m| m.len() == 0) {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // SAFETY: unlock our own descriptor (closing it would too).
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}
// ANCHOR_END: run_lock

/// What makes a run the same run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    /// `train`, `pretrain` or `dpo`.
    pub command: String,
    /// The config as JSON, without the fields that may change between a run and its resume.
    pub config: serde_json::Map<String, Value>,
    pub base_model: String,
    pub data: String,
    pub run_id: String,
}

/// Config fields that may differ between a run and its resume.
const RESUMABLE_CHANGES: &[&str] =
    &["output_dir", "tb_dir", "device", "precision", "auto_resume", "resume_from_checkpoint"];

impl RunRecord {
    /// This run's record: `config` is the config serialised; `field_order` the order to compare fields in.
    pub fn new(command: &str, config: Value, base_model: &Path, data: &[PathBuf]) -> Result<Self> {
        let Value::Object(mut config) = config else { bail!("a config serialises to an object") };
        for field in RESUMABLE_CHANGES {
            config.remove(*field);
        }
        Ok(RunRecord {
            command: command.into(),
            config,
            base_model: fingerprint(&[base_model.to_path_buf()])
                .with_context(|| format!("{}: cannot read the base model", base_model.display()))?,
            data: fingerprint(data).context("cannot read the data")?,
            run_id: format!("{:016x}", crate::infer::sandbox::random_u64()),
        })
    }

    /// How `self` (this run) differs from `earlier`, in `field_order`: the first difference, as a phrase.
    fn first_difference(&self, earlier: &RunRecord, field_order: &[&str]) -> Option<String> {
        if self.command != earlier.command {
            return Some(format!(
                "it was written by `mftcoder {}`, this is `mftcoder {}`",
                earlier.command, self.command
            ));
        }
        let mut fields: Vec<&str> = field_order.to_vec();
        fields.extend(self.config.keys().chain(earlier.config.keys()).map(String::as_str));
        for field in fields {
            let (was, now) = (earlier.config.get(field), self.config.get(field));
            if was != now {
                let show = |v: Option<&Value>| v.map_or("absent".to_string(), |v| v.to_string());
                return Some(format!("field `{field}` was {}, is now {}", show(was), show(now)));
            }
        }
        if self.base_model != earlier.base_model {
            return Some("the base model's files changed (pretrained_model_path holds other weights)".into());
        }
        if self.data != earlier.data {
            return Some("the data files changed".into());
        }
        None
    }
}

// ANCHOR: claim_output_dir
/// Decide what this run may do with `output_dir` (which it holds the lock of): continue the run recorded
/// there (the same one), start a new run in an empty directory, or — with `overwrite` — remove the previous
/// run's files and start over. Anything else is an error naming the first difference. Returns this run's
/// record (with the recorded run id when it is the same run), already written.
pub fn claim_output_dir(
    output_dir: &Path,
    mut run: RunRecord,
    field_order: &[&str],
    overwrite: bool,
) -> Result<RunRecord> {
    let path = output_dir.join(RUN_FILE);
    let earlier: Option<RunRecord> = match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_json::from_str(&text).with_context(|| format!("{}: not a run record", path.display()))?),
        Err(_) => None,
    };
    let previous_files = run_artifacts(output_dir)?;
    let hint = "pass --overwrite-output-dir to discard it and start over, or choose another output_dir";
    let trained = previous_files.iter().any(|p| p.file_name().is_some_and(|n| n != RUN_FILE));
    match &earlier {
        // a recorded run that never wrote anything (it failed at its start) is no run to protect
        Some(_) if !trained => {}
        Some(e) => match run.first_difference(e, field_order) {
            None => run.run_id = e.run_id.clone(),
            Some(_) if overwrite => remove_previous_run(output_dir, &previous_files)?,
            Some(diff) => bail!("{}: holds another run ({diff}); {hint}", output_dir.display()),
        },
        None if previous_files.is_empty() => {}
        None if overwrite => remove_previous_run(output_dir, &previous_files)?,
        None => bail!(
            "{}: holds checkpoints of a run with no {RUN_FILE} (another tool, or an older mftcoder); {hint}",
            output_dir.display()
        ),
    }
    crate::io::write_atomic(&path, serde_json::to_string_pretty(&run)?.as_bytes())?;
    Ok(run)
}
// ANCHOR_END: claim_output_dir

/// The files and directories a run writes into its output directory (never anything else).
fn run_artifacts(output_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(output_dir).with_context(|| format!("{}: cannot list", output_dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let numbered = |prefix: &str| {
            name.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        let ours = numbered("step_")
            || numbered("epoch_")
            || numbered("checkpoint-")
            || matches!(
                name.as_str(),
                "epoch_final" | "latest" | "metrics.jsonl" | "loss.png" | "lr.png" | "coba_weights.png" | RUN_FILE
            );
        if ours {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

fn remove_previous_run(output_dir: &Path, files: &[PathBuf]) -> Result<()> {
    for path in files {
        let removed = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
        removed.with_context(|| format!("{}: cannot remove", path.display()))?;
    }
    eprintln!(
        "note: {}: --overwrite-output-dir: removed {} files of the previous run",
        output_dir.display(),
        files.len()
    );
    Ok(())
}

/// Whether checkpoint directory `dir` was written by run `run_id`.
pub fn written_by(dir: &Path, run_id: &str) -> bool {
    std::fs::read_to_string(dir.join(CHECKPOINT_RUN_FILE)).is_ok_and(|id| id.trim() == run_id)
}

// ANCHOR: fingerprint
/// A fingerprint of files (directories walked in sorted order, only the entries a model or a data set is
/// made of: `*.json`, `*.jsonl`, `*.safetensors`, `*.bin`, `*.idx`, `*.model`, `*.txt`): each one's relative
/// path and size, and its bytes — all of them up to 64 MiB, beyond that the first and last 4 MiB and 32
/// blocks of 64 KiB spread over the rest. FNV-1a, 64 bits: it tells files apart, it is not a security hash.
pub fn fingerprint(paths: &[PathBuf]) -> Result<String> {
    let mut h = Fnv::default();
    for root in paths {
        let mut files = Vec::new();
        collect(root, &mut files)?;
        files.sort();
        let base = if root.is_dir() { root.as_path() } else { root.parent().unwrap_or(Path::new("")) };
        for file in files {
            h.bytes(file.strip_prefix(base).unwrap_or(&file).to_string_lossy().as_bytes());
            h.bytes(&[0]);
            hash_contents(&file, &mut h).with_context(|| format!("{}: cannot read", file.display()))?;
        }
    }
    Ok(format!("fnv1a64:{:016x}", h.0))
}
// ANCHOR_END: fingerprint

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(meta) = std::fs::metadata(path) else {
        // a Megatron prefix (`data/code` for `data/code_input_ids.bin` and `.idx`): the files it begins
        let (dir, stem) = (path.parent().unwrap_or(Path::new(".")), path.file_name().unwrap_or_default());
        let before = out.len();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_name().as_encoded_bytes().starts_with(stem.as_encoded_bytes()) && entry.path().is_file() {
                out.push(entry.path());
            }
        }
        if out.len() == before {
            bail!("{}: no such file, directory or prefix", path.display());
        }
        return Ok(());
    };
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path).with_context(|| format!("{}: cannot list", path.display()))?.flatten() {
        let p = entry.path();
        let wanted = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "json" | "jsonl" | "safetensors" | "bin" | "idx" | "model" | "txt"));
        if p.is_dir() {
            collect(&p, out)?;
        } else if wanted {
            out.push(p);
        }
    }
    Ok(())
}

fn hash_contents(file: &Path, h: &mut Fnv) -> std::io::Result<()> {
    const WHOLE: u64 = 64 << 20;
    const END: u64 = 4 << 20;
    const BLOCK: u64 = 64 << 10;
    let mut f = File::open(file)?;
    let len = f.metadata()?.len();
    h.bytes(&len.to_le_bytes());
    let mut read_at = |offset: u64, n: u64, h: &mut Fnv| -> std::io::Result<()> {
        f.seek(std::io::SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; n as usize];
        f.read_exact(&mut buf)?;
        h.bytes(&buf);
        Ok(())
    };
    if len <= WHOLE {
        let mut offset = 0;
        while offset < len {
            let n = (len - offset).min(END);
            read_at(offset, n, h)?;
            offset += n;
        }
        return Ok(());
    }
    read_at(0, END, h)?;
    let span = len - 2 * END - BLOCK;
    for i in 0..32 {
        read_at(END + span * i / 31, BLOCK, h)?;
    }
    read_at(len - END, END, h)
}

#[derive(Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Remove what crashed or killed runs left in `output_dir`: `.NAME.partial-PID` checkpoint directories,
/// `.write-test-PID` probes and `.NAME.tmp-PID` files whose process is gone (the caller holds the lock, so
/// no live run of this directory is writing them).
pub fn remove_stale_partials(output_dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let Ok(entries) = std::fs::read_dir(output_dir) else { return Ok(0) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            continue;
        }
        let pid = [".partial-", ".tmp-", ".write-test-"]
            .iter()
            .find_map(|marker| name.rfind(marker).map(|i| &name[i + marker.len()..]))
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid == std::process::id() || crate::infer::sandbox::process_exists(pid) {
            continue;
        }
        let path = entry.path();
        let gone = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        gone.with_context(|| format!("{}: cannot remove what a killed run left", path.display()))?;
        removed += 1;
    }
    if removed > 0 {
        eprintln!("note: {}: removed {removed} partial files of runs that no longer run", output_dir.display());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mftcoder-runlock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused_until_the_first_is_dropped() {
        let dir = temp("lock");
        let first = RunLock::acquire(&dir).unwrap();
        let err = format!("{:#}", RunLock::acquire(&dir).err().unwrap());
        assert!(err.contains("in use by another run") && err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        assert!(!dir.join(LOCK_FILE).exists());
        let _again = RunLock::acquire(&dir).unwrap();
        drop(_again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_run_is_the_same_run_only_with_the_same_config_model_and_data() {
        let dir = temp("claim");
        let data = dir.join("d.jsonl");
        std::fs::write(&data, "{\"text\": \"a\"}\n").unwrap();
        let model = dir.join("m");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let record = |lr: f64| {
            RunRecord::new(
                "train",
                serde_json::json!({"learning_rate": lr, "output_dir": "x"}),
                &model,
                std::slice::from_ref(&data),
            )
            .unwrap()
        };
        let first = claim_output_dir(&out, record(1e-3), &["learning_rate"], false).unwrap();
        std::fs::create_dir_all(out.join("step_5")).unwrap();
        let again = claim_output_dir(&out, record(1e-3), &["learning_rate"], false).unwrap();
        assert_eq!(again.run_id, first.run_id, "the same run keeps its id");
        let err = claim_output_dir(&out, record(2e-3), &["learning_rate"], false).unwrap_err().to_string();
        assert!(
            err.contains("field `learning_rate` was 0.001, is now 0.002") && err.contains("--overwrite-output-dir"),
            "{err}"
        );
        std::fs::write(&data, "{\"text\": \"b\"}\n").unwrap();
        let err = claim_output_dir(&out, record(1e-3), &[], false).unwrap_err().to_string();
        assert!(err.contains("the data files changed"), "{err}");
        let fresh = claim_output_dir(&out, record(2e-3), &[], true).unwrap();
        assert_ne!(fresh.run_id, first.run_id);
        assert!(!out.join("step_5").exists(), "overwrite removes the previous run's checkpoints");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn partials_of_dead_processes_are_removed_and_live_ones_kept() {
        let dir = temp("partials");
        let dead = 999_999_999u32; // above pid_max
        let me = std::process::id();
        std::fs::create_dir_all(dir.join(format!(".step_4.partial-{dead}"))).unwrap();
        std::fs::write(dir.join(format!(".write-test-{dead}")), b"ok").unwrap();
        std::fs::write(dir.join(format!(".latest.tmp-{dead}")), b"{}").unwrap();
        std::fs::write(dir.join(format!(".latest.tmp-{me}")), b"{}").unwrap();
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        assert_eq!(remove_stale_partials(&dir).unwrap(), 3);
        let left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
