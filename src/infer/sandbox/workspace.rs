//! The run's directory: fresh, private, removed afterwards — and, after a `kill -9`, by the next run.

use anyhow::{Context, Result};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

const WORKSPACE_PREFIX: &str = "mftcoder-eval-";

/// A fresh directory `$TMPDIR/mftcoder-eval-PID-N-RANDOM` (mode 0700), removed when dropped. The first one
/// created by a process also removes those left by processes that no longer exist (a `kill -9`).
pub struct Workspace {
    dir: PathBuf,
}

impl Workspace {
    pub fn create() -> Result<Self> {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        SWEPT.call_once(remove_stale_workspaces);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{WORKSPACE_PREFIX}{}-{n}-{:016x}", std::process::id(), random_u64());
        let dir = std::env::temp_dir().join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        Ok(Workspace { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        force_remove(&self.dir);
    }
}

/// Remove a directory tree even where the program took permissions away from its own files.
fn force_remove(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
        return;
    }
    fn open_up(dir: &Path) {
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                open_up(&entry.path());
            }
        }
    }
    open_up(dir);
    let _ = std::fs::remove_dir_all(dir);
}

fn remove_stale_workspaces() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(WORKSPACE_PREFIX)) else { continue };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| p != std::process::id() && !process_exists(p)) {
            force_remove(&entry.path());
        }
    }
}

/// Whether a process with this id exists (Linux: its /proc entry).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// 64 bits from the kernel's generator (time and pid mixed in if it fails).
pub fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into `v`.
    let n = unsafe { libc::getrandom((&raw mut v).cast(), 8, 0) };
    if n != 8 {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        v = (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32);
    }
    v
}
