//! Process-wide settings for training workloads.

/// Keep freed tensor memory in the process instead of returning it to the kernel.
///
/// A training step allocates and frees the same large buffers (activations, gradients) every iteration. With
/// glibc's defaults every buffer over a few hundred KiB is a fresh `mmap`: each step then page-faults its way
/// through zeroed pages and each `munmap` flushes TLBs on every core — measured at 8–10 % of a CPU training
/// step. Raising the mmap and trim thresholds lets `malloc` reuse the memory instead.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before the buffers it affects exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Resident memory of this process in bytes (Linux: `VmRSS` of /proc/self/status), for the metrics log.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Hand memory freed in bulk (e.g. full-precision weights just replaced by 4-bit blocks) back to the kernel,
/// which [`tune_allocator`] otherwise keeps for reuse.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Memory the kernel could give this process now without swapping out others' pages (Linux: `MemAvailable`
/// plus `SwapFree` of /proc/meminfo), for the checks made before large allocations.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0))
}

/// Stop with a one-line error when `what` needs more memory than is available (`bytes` is a lower bound of
/// what it will allocate); nothing is allocated to find out.
pub fn ensure_memory(what: &str, bytes: f64) -> anyhow::Result<()> {
    let gib = |b: f64| b / (1u64 << 30) as f64;
    match available_bytes() {
        Some(available) if bytes > available as f64 => anyhow::bail!(
            "{what} needs at least {:.1} GiB of memory; {:.1} GiB are available",
            gib(bytes),
            gib(available as f64)
        ),
        _ => Ok(()),
    }
}
