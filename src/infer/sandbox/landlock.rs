//! Landlock (Linux ≥ 5.13, unprivileged): confine writes to the run's directory (and /dev/null); with ABI
//! ≥ 4 also deny TCP bind and connect, with ABI ≥ 6 signals and abstract UNIX sockets outside the sandbox.

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
