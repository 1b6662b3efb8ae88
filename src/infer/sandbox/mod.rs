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

mod capture;
mod child;
mod interrupt;
mod landlock;
mod workspace;

pub use capture::Capture;
pub use interrupt::{InterruptGuard, interrupted};
pub use workspace::{Workspace, process_exists, random_u64};

use anyhow::{Context, Result, bail};
use child::{ChildSetup, NS_NET, NS_PID, NS_USER};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What `eval --help` says about the sandbox (the book's "Measuring code generation" says the same).
pub const HELP: &str = "\
Sandbox (Linux): each program runs in a fresh temporary directory (its working directory, removed after),
in a session and process group of its own that is killed as a whole at the time limit and whenever mftcoder
exits, with an empty environment (PATH, HOME and TMPDIR only), stdin closed after a token, stdout and stderr
drained into bounded buffers, and limits set before exec: address space (--memory-mb), CPU seconds
(timeout + 1), file size 16 MiB, 32 processes, 256 open files, no core dumps. Where the kernel allows it
(unprivileged user namespaces, or root): no network (a network namespace of its own) and no other process
visible or signallable (a PID namespace). With Landlock (Linux 5.13+): file writes only inside its directory;
6.7+ also no TCP; 6.12+ no signals out. Not isolated: reading any file this user can read, and whatever the
kernel does not grant; eval says once on stderr what is missing. A sample passes only when its `check`
returned: an exit code alone (sys.exit(0) included) never passes.";

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
