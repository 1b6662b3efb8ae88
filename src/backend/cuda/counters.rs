//! What a step costs the device besides its arithmetic, counted where the backend talks to the driver:
//! kernel launches (ours, and cuBLAS's products), device allocations and their bytes, buffers the caching
//! allocator handed out again instead (`pool.rs`) and the largest one asked of it, host→device uploads, and
//! device→host reads (each one blocks the host until the stream has caught up). The emulated device counts the
//! same calls, so these numbers are measured on every `cargo test --features cuda`.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct DeviceCounters {
    launches: AtomicU64,
    gemms: AtomicU64,
    allocations: AtomicU64,
    allocated_bytes: AtomicU64,
    reuses: AtomicU64,
    uploads: AtomicU64,
    host_reads: AtomicU64,
    epilogue_fallbacks: AtomicU64,
    heuristic_queries: AtomicU64,
    /// A high-water mark, not a running count: restarted by each snapshot.
    largest_take: AtomicU64,
}

/// The counters at one moment; `since` gives what happened between two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub launches: u64,
    pub gemms: u64,
    pub allocations: u64,
    pub allocated_bytes: u64,
    pub reuses: u64,
    pub uploads: u64,
    pub host_reads: u64,
    /// Products that asked cuBLASLt for an epilogue (a bias, a bias gradient) and got no kernel for it, so a
    /// kernel of ours did that part after the product (`blas_lt.rs`).
    pub epilogue_fallbacks: u64,
    /// Times cuBLASLt's heuristic was asked for a kernel: once per distinct product (shape, types, epilogue,
    /// alignments), after which the answer is reused (`blas_lt.rs`), so 0 in a steady-state step.
    pub heuristic_queries: u64,
    /// The largest buffer asked of the pool (bytes, as requested, before rounding to its bucket) since the
    /// previous snapshot: what shows that a step never holds a [T, V] tensor (`loss::chunked_head`).
    pub largest_take: u64,
}

impl DeviceCounters {
    pub(super) fn launch(&self) {
        self.launches.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn gemm(&self) {
        self.gemms.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn allocation(&self, bytes: usize) {
        self.allocations.fetch_add(1, Ordering::Relaxed);
        self.allocated_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    pub(super) fn take(&self, bytes: usize) {
        self.largest_take.fetch_max(bytes as u64, Ordering::Relaxed);
    }
    pub(super) fn reuse(&self) {
        self.reuses.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn upload(&self) {
        self.uploads.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn host_read(&self) {
        self.host_reads.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn epilogue_fallback(&self) {
        self.epilogue_fallbacks.fetch_add(1, Ordering::Relaxed);
    }
    pub(super) fn heuristic_query(&self) {
        self.heuristic_queries.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far, and the largest pool request since the previous snapshot (which this one restarts).
    pub fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            launches: get(&self.launches),
            gemms: get(&self.gemms),
            allocations: get(&self.allocations),
            allocated_bytes: get(&self.allocated_bytes),
            reuses: get(&self.reuses),
            uploads: get(&self.uploads),
            host_reads: get(&self.host_reads),
            epilogue_fallbacks: get(&self.epilogue_fallbacks),
            heuristic_queries: get(&self.heuristic_queries),
            largest_take: self.largest_take.swap(0, Ordering::Relaxed),
        }
    }
}

impl CounterSnapshot {
    /// What was counted after `earlier` (the largest request is already this interval's, if `earlier` was the
    /// snapshot before this one).
    pub fn since(self, earlier: CounterSnapshot) -> CounterSnapshot {
        CounterSnapshot {
            launches: self.launches - earlier.launches,
            gemms: self.gemms - earlier.gemms,
            allocations: self.allocations - earlier.allocations,
            allocated_bytes: self.allocated_bytes - earlier.allocated_bytes,
            reuses: self.reuses - earlier.reuses,
            uploads: self.uploads - earlier.uploads,
            host_reads: self.host_reads - earlier.host_reads,
            epilogue_fallbacks: self.epilogue_fallbacks - earlier.epilogue_fallbacks,
            heuristic_queries: self.heuristic_queries - earlier.heuristic_queries,
            largest_take: self.largest_take,
        }
    }
}

impl std::fmt::Display for CounterSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} kernel launches + {} cuBLAS products, {} allocations ({:.1} MB), {} pool reuses (largest request {:.1} kB), {} uploads, {} blocking reads, {} epilogue fallbacks, {} heuristic queries",
            self.launches,
            self.gemms,
            self.allocations,
            self.allocated_bytes as f64 / 1e6,
            self.reuses,
            self.largest_take as f64 / 1e3,
            self.uploads,
            self.host_reads,
            self.epilogue_fallbacks,
            self.heuristic_queries
        )
    }
}
