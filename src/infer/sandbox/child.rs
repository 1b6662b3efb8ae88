//! What runs between fork and exec: the guard process and the program's confinement. Only async-signal-safe
//! system calls on memory prepared before the fork (the parent is multi-threaded, so the child may not
//! allocate or take locks).

use super::{Limits, landlock};
use anyhow::{Context, Result};
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

pub(super) const NS_USER: u8 = 1;
pub(super) const NS_NET: u8 = 2;
pub(super) const NS_PID: u8 = 4;

/// Everything the child needs, prepared before the fork (the child may not allocate).
pub(super) struct ChildSetup {
    parent: libc::pid_t,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    workspace: CString,
    limits: [(libc::__rlimit_resource_t, u64, u64); 6],
    guard_deadline: libc::timespec,
}

impl ChildSetup {
    pub(super) fn new(workspace: &Path, limits: &Limits) -> Result<Self> {
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
    pub(super) fn enter(&self, status_fd: libc::c_int) -> std::io::Result<()> {
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
