//! A sandbox for untrusted programs (`mftcoder eval --execute` runs model-written Python), Linux only, with
//! no system dependency: every run gets a fresh temporary directory as its working directory, a session and
//! process group of its own, an empty environment, resource limits, and whatever isolation the kernel grants:
//!
//! ```text
//!  mftcoder ──fork──▶ guard: setsid, unshare(user + network + PID namespaces), child subreaper
//!                       └──fork──▶ program: setrlimit, Landlock (writes only in its directory; no TCP,
//!                                  no signals out, on kernels that have it) ──exec──▶ python3
//! ```
//!
//! The guard is the program's parent. It waits for it with a deadline, then kills every process the program
//! left behind (orphans are reparented to the guard, a child subreaper; in a PID namespace the kernel kills
//! them when the program, its init, exits), and it dies with mftcoder (parent-death signal). mftcoder kills
//! the whole group at its own deadline, when the run is dropped (an error, a panic) and on SIGINT, SIGTERM
//! and SIGHUP. Output is drained by two threads into bounded buffers while the program runs.
//!
//! What it does not isolate: reading files the user can read, CPU and memory pressure on the machine within
//! the limits, and — where the kernel lacks user namespaces and Landlock — the network, file writes outside
//! the directory (RLIMIT_FSIZE still applies) and signals to the user's other processes. [`Isolation`] says
//! what a run got; `eval` prints once what is missing.

use anyhow::{Context, Result, bail};
use std::ffi::{CStr, CString};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The limits of one run.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Wall-clock time; CPU seconds are limited to this plus one.
    pub timeout: Duration,
    /// Address space (RLIMIT_AS).
    pub memory_bytes: u64,
    /// Largest file the program may write (RLIMIT_FSIZE).
    pub file_bytes: u64,
    /// Processes beyond those the user already runs (RLIMIT_NPROC; Linux does not enforce it for root).
    pub processes: u64,
    /// Open file descriptors (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Bytes kept of each of stdout and stderr (the first and the last half); the rest is read and dropped.
    pub output_bytes: usize,
}

impl Limits {
    pub fn new(timeout: Duration, memory_bytes: u64) -> Self {
        Limits { timeout, memory_bytes, file_bytes: 16 << 20, processes: 32, open_files: 256, output_bytes: 64 << 10 }
    }
}

/// What the kernel granted a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Isolation {
    pub user_namespace: bool,
    /// A network namespace of its own: no interface but a loopback that is down.
    pub network_namespace: bool,
    /// A PID namespace of its own: no other process can be seen by number or signalled.
    pub pid_namespace: bool,
    /// The Landlock ABI in force (0: none). ≥ 1: writes only inside the run's directory; ≥ 4: no TCP bind or
    /// connect; ≥ 6: no signals to processes outside the sandbox.
    pub landlock_abi: u8,
}

impl Isolation {
    /// What this run was not isolated from, for a notice (empty: everything this module isolates).
    pub fn gaps(&self) -> Vec<&'static str> {
        let mut gaps = Vec::new();
        if !self.network_namespace && self.landlock_abi < 4 {
            gaps.push("the network is not isolated (no network namespace, no Landlock ≥ 4)");
        } else if !self.network_namespace {
            gaps.push("only TCP is blocked (Landlock), UDP and other sockets are not (no network namespace)");
        }
        if self.landlock_abi == 0 {
            gaps.push("file writes are not confined to the run's directory (no Landlock; RLIMIT_FSIZE still applies)");
        }
        if !self.pid_namespace && self.landlock_abi < 6 {
            gaps.push("the program can signal this user's other processes (no PID namespace, no Landlock ≥ 6)");
        }
        gaps
    }
}

/// How the program ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Its exit code; 128 + n when it was killed by signal n.
    Code(i32),
    /// Still running at the time limit (then killed with everything it started).
    TimedOut,
}

/// A finished run.
#[derive(Debug)]
pub struct Finished {
    pub exit: Exit,
    pub stdout: Capture,
    pub stderr: Capture,
    pub elapsed: Duration,
    pub isolation: Isolation,
}

/// A bounded record of one output stream: its first and last bytes, its length, and whether a needle
/// (the harness's pass token) appeared anywhere in it.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    limit: usize,
    pub total: u64,
    needle: Vec<u8>,
    carry: Vec<u8>,
    pub found: bool,
}

impl Capture {
    pub fn new(limit: usize, needle: Option<&[u8]>) -> Self {
        Capture { limit, needle: needle.unwrap_or_default().to_vec(), ..Default::default() }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if !self.needle.is_empty() && !self.found {
            let mut window = std::mem::take(&mut self.carry);
            window.extend_from_slice(chunk);
            self.found = window.windows(self.needle.len()).any(|w| w == self.needle.as_slice());
            let keep = (self.needle.len() - 1).min(window.len());
            self.carry = window.split_off(window.len() - keep);
        }
        let half = self.limit / 2;
        let room = half.saturating_sub(self.head.len()).min(chunk.len());
        self.head.extend_from_slice(&chunk[..room]);
        self.tail.extend(&chunk[room..]);
        let excess = self.tail.len().saturating_sub(half);
        self.tail.drain(..excess);
    }

    /// The kept bytes as text, with a marker where bytes were dropped.
    pub fn text(&self) -> String {
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        let dropped = self.total - (self.head.len() + tail.len()) as u64;
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        if dropped > 0 {
            s += &format!("\n[… {dropped} bytes …]\n");
        }
        s + &String::from_utf8_lossy(&tail)
    }

    /// The last line that is not blank.
    pub fn last_line(&self) -> Option<String> {
        self.text().lines().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string())
    }
}

// ---- the run's directory ----

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

// ---- interruption ----

static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_interrupt(sig: libc::c_int) {
    INTERRUPTED.store(sig, Ordering::SeqCst);
}

/// While alive, SIGINT, SIGTERM and SIGHUP only set a flag: a run in progress sees it, kills its program and
/// returns an error, so the caller's clean-up (temporary directories) still runs. Dropping it restores the
/// previous handlers.
pub struct InterruptGuard {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl InterruptGuard {
    pub fn install() -> Self {
        let mut previous = Vec::new();
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: a plain sigaction with a handler that only stores into an atomic.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_interrupt as *const () as usize;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &action, &mut old) == 0 {
                    previous.push((sig, old));
                }
            }
        }
        InterruptGuard { previous }
    }
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        for (sig, old) in &self.previous {
            // SAFETY: restores the action saved by `install`.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
}

/// The signal that interrupted this process while an [`InterruptGuard`] was installed.
pub fn interrupted() -> Option<i32> {
    Some(INTERRUPTED.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

// ---- running ----

/// The interpreter's own path (`sys.executable`), asked of `python` in the user's environment: the sandbox
/// runs it with an empty one, where a launcher such as a pyenv shim would not work.
pub fn resolve_python(python: &str) -> Result<PathBuf> {
    let hint = "set --python to a Python 3 interpreter";
    let out = Command::new(python)
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{python}` ({hint})"))?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.is_absolute() || !path.is_file() {
        bail!("`{python}` did not report its interpreter's path ({hint})");
    }
    Ok(path)
}

// ANCHOR: sandbox_run
/// Run `program args…` in `workspace` under `limits`, feeding it `stdin`; `needle` is looked for in stdout.
pub fn run(
    program: &Path,
    args: &[&str],
    workspace: &Workspace,
    stdin: &[u8],
    limits: &Limits,
    needle: Option<&[u8]>,
) -> Result<Finished> {
    if let Some(sig) = interrupted() {
        bail!("interrupted by signal {sig}");
    }
    let setup = ChildSetup::new(workspace.path(), limits)?;
    let (status_read, status_write) = pipe()?;
    let status_fd = status_write.as_raw_fd();
    let mut path_var = std::ffi::OsString::new();
    if let Some(dir) = program.parent() {
        path_var.push(dir);
        path_var.push(":");
    }
    path_var.push("/usr/local/bin:/usr/bin:/bin");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(workspace.path())
        .env_clear()
        .env("PATH", path_var)
        .env("HOME", workspace.path())
        .env("TMPDIR", workspace.path())
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: `ChildSetup::enter` makes only async-signal-safe system calls on memory prepared beforehand.
    unsafe { cmd.pre_exec(move || setup.enter(status_fd)) };
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| format!("cannot start {}", program.display()))?;
    drop(status_write);
    let mut group = Group { child, stopped: false };
    let isolation = read_isolation(status_read);

    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = group.child.stdout.take().context("stdout pipe")?;
    let stderr = group.child.stderr.take().context("stderr pipe")?;
    for (which, mut pipe, needle) in
        [(0, Box::new(stdout) as Box<dyn Read + Send>, needle), (1, Box::new(stderr), None)]
    {
        let (tx, mut capture) = (tx.clone(), Capture::new(limits.output_bytes, needle));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                capture.push(&buf[..n]);
            }
            let _ = tx.send((which, capture));
        });
    }
    if let Some(mut input) = group.child.stdin.take() {
        let _ = input.write_all(stdin); // a program that exits without reading closes the pipe: fine
    }

    let exit = loop {
        if let Some(code) = group.exit_code() {
            break Exit::Code(code);
        }
        if started.elapsed() >= limits.timeout {
            break Exit::TimedOut;
        }
        if let Some(sig) = interrupted() {
            group.stop();
            bail!("interrupted by signal {sig}; the sandboxed program was killed");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = started.elapsed();
    group.stop();
    // everything that held the pipes is dead now, so both readers end at once
    let (mut out, mut err) = (Capture::new(0, None), Capture::new(0, None));
    let until = Instant::now() + Duration::from_millis(500);
    for _ in 0..2 {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok((0, c)) => out = c,
            Ok((_, c)) => err = c,
            Err(_) => break,
        }
    }
    Ok(Finished { exit, stdout: out, stderr: err, elapsed, isolation })
}
// ANCHOR_END: sandbox_run

/// The guard process; its pid is the process group's id. Dropping it kills the group.
struct Group {
    child: Child,
    stopped: bool,
}

impl Group {
    /// The guard's exit code once it has exited, without reaping it (so its pid, the group's id, stays
    /// reserved until the group is killed).
    fn exit_code(&self) -> Option<i32> {
        // SAFETY: waitid on our own child with WNOWAIT only reads its state into `info`.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            if libc::waitid(libc::P_PID, self.child.id(), &mut info, flags) != 0 || info.si_pid() == 0 {
                return None;
            }
            Some(match info.si_code {
                libc::CLD_EXITED => info.si_status(),
                _ => 128 + info.si_status(),
            })
        }
    }

    /// Ask the guard to kill what it started, give it a moment, then kill the whole group and reap the guard.
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = self.child.id() as libc::pid_t;
        if self.exit_code().is_none() {
            // SAFETY: signals our own child, which is not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let until = Instant::now() + Duration::from_millis(300);
            while self.exit_code().is_none() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // SAFETY: the group's leader is our unreaped child, so the id cannot belong to anyone else.
        unsafe { libc::killpg(pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two new descriptors, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot create a pipe");
    }
    // SAFETY: both descriptors are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Two bytes: the guard's namespaces, then the program's Landlock ABI.
fn read_isolation(fd: OwnedFd) -> Isolation {
    let mut bytes = Vec::new();
    let _ = std::fs::File::from(fd).read_to_end(&mut bytes);
    let ns = bytes.first().copied().unwrap_or(0);
    Isolation {
        user_namespace: ns & NS_USER != 0,
        network_namespace: ns & NS_NET != 0,
        pid_namespace: ns & NS_PID != 0,
        landlock_abi: bytes.get(1).copied().unwrap_or(0),
    }
}

/// How many processes this user runs now (the base RLIMIT_NPROC counts from).
fn processes_of_this_user() -> u64 {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
        .count() as u64
}

// ---- in the child: async-signal-safe system calls only ----

const NS_USER: u8 = 1;
const NS_NET: u8 = 2;
const NS_PID: u8 = 4;

/// Everything the child needs, prepared before the fork (the child may not allocate).
struct ChildSetup {
    parent: libc::pid_t,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    workspace: CString,
    limits: [(libc::__rlimit_resource_t, u64, u64); 6],
    guard_deadline: libc::timespec,
}

impl ChildSetup {
    fn new(workspace: &Path, limits: &Limits) -> Result<Self> {
        // SAFETY: these getters cannot fail.
        let (uid, gid, parent) = unsafe { (libc::getuid(), libc::getgid(), libc::getpid()) };
        // inside the user namespace the program is not root (root's id maps to nobody), so exec drops every
        // capability it would have there
        let inside = |id: u32| if id == 0 { 65534 } else { id };
        let cpu = limits.timeout.as_secs_f64().ceil() as u64 + 1;
        let nproc = processes_of_this_user() + limits.processes;
        let backstop = limits.timeout + Duration::from_secs(2);
        Ok(ChildSetup {
            parent,
            uid_map: format!("{} {uid} 1\n", inside(uid)).into_bytes(),
            gid_map: format!("{} {gid} 1\n", inside(gid)).into_bytes(),
            workspace: CString::new(workspace.as_os_str().as_bytes()).context("workspace path")?,
            limits: [
                (libc::RLIMIT_AS, limits.memory_bytes, limits.memory_bytes),
                (libc::RLIMIT_CPU, cpu, cpu + 1),
                (libc::RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes),
                (libc::RLIMIT_NPROC, nproc, nproc),
                (libc::RLIMIT_NOFILE, limits.open_files, limits.open_files),
                (libc::RLIMIT_CORE, 0, 0),
            ],
            guard_deadline: libc::timespec {
                tv_sec: backstop.as_secs() as libc::time_t,
                tv_nsec: backstop.subsec_nanos() as libc::c_long,
            },
        })
    }

    // ANCHOR: sandbox_enter
    /// Runs in the forked child: become the guard, fork the program, and return (to exec) in the program only.
    fn enter(&self, status_fd: libc::c_int) -> std::io::Result<()> {
        // SAFETY: a freshly forked, single-threaded child; only async-signal-safe calls follow.
        unsafe {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0);
            if libc::getppid() != self.parent {
                libc::_exit(125); // mftcoder died before the parent-death signal was armed
            }
            write_byte(status_fd, self.enter_namespaces());
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
            let mut wait_for: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut wait_for);
            for sig in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut wait_for, sig);
            }
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigprocmask(libc::SIG_BLOCK, &wait_for, &mut old);
            let program = libc::fork();
            if program < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if program == 0 {
                libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
                for &(resource, soft, hard) in &self.limits {
                    set_limit(resource, soft, hard)?;
                }
                write_byte(status_fd, landlock::restrict(&self.workspace));
                return Ok(()); // std execs the program
            }
            // the guard holds no descriptor: the pipes end when the program's processes are gone
            if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
                for fd in 0..1024 {
                    libc::close(fd);
                }
            }
            libc::_exit(guard(program, &wait_for, &self.guard_deadline))
        }
    }
    // ANCHOR_END: sandbox_enter

    /// User, network and PID namespaces where permitted (unprivileged user namespaces, or root); the first
    /// combination the kernel accepts.
    unsafe fn enter_namespaces(&self) -> u8 {
        // SAFETY: (caller) single-threaded child; unshare and plain file writes.
        unsafe {
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWPID) == 0 {
                write_file(c"/proc/self/setgroups", b"deny");
                write_file(c"/proc/self/uid_map", &self.uid_map);
                write_file(c"/proc/self/gid_map", &self.gid_map);
                return NS_USER | NS_NET | NS_PID;
            }
            for (flags, bits) in [
                (libc::CLONE_NEWNET | libc::CLONE_NEWPID, NS_NET | NS_PID),
                (libc::CLONE_NEWNET, NS_NET),
                (libc::CLONE_NEWPID, NS_PID),
            ] {
                if libc::unshare(flags) == 0 {
                    return bits;
                }
            }
            0
        }
    }
}

unsafe fn write_byte(fd: libc::c_int, b: u8) {
    // SAFETY: (caller) `fd` is the status pipe; a one-byte write from a stack value.
    unsafe { libc::write(fd, (&raw const b).cast(), 1) };
}

unsafe fn write_file(path: &CStr, bytes: &[u8]) {
    // SAFETY: (caller) open, write and close on a NUL-terminated path and a prepared buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, bytes.as_ptr().cast(), bytes.len());
            libc::close(fd);
        }
    }
}

unsafe fn set_limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
    // SAFETY: (caller) getrlimit/setrlimit on stack structs.
    unsafe {
        let mut cur: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(resource, &mut cur);
        let hard = hard.min(cur.rlim_max);
        let limit = libc::rlimit { rlim_cur: soft.min(hard), rlim_max: hard };
        if libc::setrlimit(resource, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

fn now() -> libc::timespec {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t
}

fn nanos(t: &libc::timespec) -> i128 {
    t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128
}

/// The guard: wait for the program (until it exits, the backstop deadline passes, or mftcoder asks or dies),
/// kill whatever it left behind, and exit with its code (128 + signal if it was killed, 124 if we killed it).
unsafe fn guard(program: libc::pid_t, wait_for: &libc::sigset_t, limit: &libc::timespec) -> libc::c_int {
    let deadline = nanos(&now()) + nanos(limit);
    let mut status: Option<libc::c_int> = None;
    // SAFETY: (caller) the guard process; waitpid, sigtimedwait, kill and /proc reads.
    unsafe {
        'wait: loop {
            loop {
                let mut st = 0;
                match libc::waitpid(-1, &mut st, libc::WNOHANG) {
                    r if r == program => {
                        status = Some(st);
                        break 'wait;
                    }
                    r if r > 0 => {} // an orphan the subreaper inherited
                    _ => break,
                }
            }
            let left = deadline - nanos(&now());
            if left <= 0 {
                break;
            }
            let ts = libc::timespec {
                tv_sec: (left / 1_000_000_000) as libc::time_t,
                tv_nsec: (left % 1_000_000_000) as libc::c_long,
            };
            let mut info: libc::siginfo_t = std::mem::zeroed();
            match libc::sigtimedwait(wait_for, &mut info, &ts) {
                libc::SIGTERM | libc::SIGINT | libc::SIGHUP => break,
                _ => {} // SIGCHLD, the deadline, or EINTR: look again
            }
        }
        if status.is_none() {
            libc::kill(program, libc::SIGKILL);
        }
        // kill and reap every child until none is left; orphans of killed ones come to us in turn
        for _ in 0..2000 {
            kill_children();
            let mut st = 0;
            match libc::waitpid(-1, &mut st, libc::WNOHANG) {
                r if r > 0 => {}
                0 => {
                    let pause = libc::timespec { tv_sec: 0, tv_nsec: 500_000 };
                    libc::nanosleep(&pause, std::ptr::null_mut());
                }
                _ => break, // ECHILD: nothing left
            }
        }
        match status {
            Some(st) if libc::WIFEXITED(st) => libc::WEXITSTATUS(st),
            Some(st) if libc::WIFSIGNALED(st) => 128 + libc::WTERMSIG(st),
            _ => 124,
        }
    }
}

/// SIGKILL every child of this thread, as listed in /proc/thread-self/children.
unsafe fn kill_children() {
    // SAFETY: (caller) open/read/close into a stack buffer, kill on numbers read from it.
    unsafe {
        let fd = libc::open(c"/proc/thread-self/children".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return;
        }
        let mut buf = [0u8; 4096];
        let mut pid: libc::pid_t = 0;
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                break;
            }
            for &b in &buf[..n as usize] {
                if b.is_ascii_digit() {
                    pid = pid * 10 + (b - b'0') as libc::pid_t;
                } else if pid > 0 {
                    libc::kill(pid, libc::SIGKILL);
                    pid = 0;
                }
            }
        }
        if pid > 0 {
            libc::kill(pid, libc::SIGKILL);
        }
        libc::close(fd);
    }
}

/// Landlock (Linux ≥ 5.13, unprivileged): confine writes to the run's directory (and /dev/null); with ABI
/// ≥ 4 also deny TCP bind and connect, with ABI ≥ 6 signals and abstract UNIX sockets outside the sandbox.
mod landlock {
    use std::ffi::CStr;

    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
        handled_access_net: u64,
        scoped: u64,
    }

    #[repr(C, packed)]
    struct PathBeneathAttr {
        allowed_access: u64,
        parent_fd: i32,
    }

    const CREATE_RULESET_VERSION: u32 = 1;
    const RULE_PATH_BENEATH: u32 = 1;
    const WRITE_FILE: u64 = 1 << 1;
    const WRITES: u64 = WRITE_FILE | (0b11 << 4) | (0x7f << 6); // remove dir/file, make char/dir/reg/sock/fifo/block/sym
    const REFER: u64 = 1 << 13;
    const TRUNCATE: u64 = 1 << 14;
    const NET_BIND_TCP: u64 = 1;
    const NET_CONNECT_TCP: u64 = 2;
    const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1;
    const SCOPE_SIGNAL: u64 = 2;

    /// Restrict this process and its future children; the ABI in force, or 0.
    pub(super) unsafe fn restrict(workspace: &CStr) -> u8 {
        // SAFETY: (caller) Landlock system calls on stack structs and NUL-terminated paths.
        unsafe {
            let abi = libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                CREATE_RULESET_VERSION,
            );
            if abi < 1 {
                return 0;
            }
            let fs = WRITES | if abi >= 2 { REFER } else { 0 } | if abi >= 3 { TRUNCATE } else { 0 };
            let attr = RulesetAttr {
                handled_access_fs: fs,
                handled_access_net: if abi >= 4 { NET_BIND_TCP | NET_CONNECT_TCP } else { 0 },
                scoped: if abi >= 6 { SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL } else { 0 },
            };
            let ruleset = libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                std::mem::size_of::<RulesetAttr>(),
                0u32,
            ) as libc::c_int;
            if ruleset < 0 {
                return 0;
            }
            let allowed = allow(ruleset, workspace, fs);
            allow(ruleset, c"/dev/null", WRITE_FILE | if abi >= 3 { TRUNCATE } else { 0 });
            let ok = allowed
                && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                && libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) == 0;
            libc::close(ruleset);
            if ok { abi.min(255) as u8 } else { 0 }
        }
    }

    unsafe fn allow(ruleset: libc::c_int, path: &CStr, access: u64) -> bool {
        // SAFETY: (caller) an O_PATH descriptor handed to landlock_add_rule, then closed.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
            if fd < 0 {
                return false;
            }
            let rule = PathBeneathAttr { allowed_access: access, parent_fd: fd };
            let r = libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset,
                RULE_PATH_BENEATH,
                &rule as *const PathBeneathAttr,
                0u32,
            );
            libc::close(fd);
            r == 0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_keeps_both_ends_and_finds_a_needle_across_chunks() {
        let mut c = Capture::new(8, Some(b"TOKEN"));
        for chunk in [&b"abcdefTO"[..], b"KEN", b"xyz0123"] {
            c.push(chunk);
        }
        assert!(c.found);
        assert_eq!(c.total, 18);
        let text = c.text();
        assert!(text.starts_with("abcd") && text.ends_with("0123") && text.contains("[… 10 bytes …]"), "{text}");
        let mut c = Capture::new(100, Some(b"TOKEN"));
        c.push(b"TOK");
        c.push(b"EX TOKE");
        assert!(!c.found);
        assert_eq!(c.last_line().as_deref(), Some("TOKEX TOKE"));
    }
}
