//! The caching allocator: device buffers are never given back to the driver while the backend lives; a
//! dropped tensor's buffer goes onto a free list for its size bucket, and the next request of that bucket takes
//! it. A training step asks for the same sizes every time, so after the first step every buffer it needs is
//! already cached and a steady-state step makes no device allocation at all (`tests/cuda_step_counters.rs`).
//!
//! Everything runs on one stream, so a buffer freed by one op and reused by the next is ordered by the stream
//! itself: the kernel that last read it has been queued before the kernel that writes it again.

use super::counters::DeviceCounters;
use super::fail;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, LaunchArgs, PushKernelArg};
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

// ANCHOR: bucket
/// The size class of a request for n elements: at least 256, then eight classes per power of two, so a
/// buffer is less than 1/8 longer than the request it serves (and shapes that differ by a few rows still share
/// a bucket).
pub fn bucket(n: usize) -> usize {
    let n = n.max(1);
    if n <= 256 {
        return 256;
    }
    let step = (n.next_power_of_two() / 16).max(256);
    n.div_ceil(step) * step
}
// ANCHOR_END: bucket

/// Free device buffers of one element type, by bucket.
pub struct Pool<T> {
    stream: Arc<CudaStream>,
    counters: Arc<DeviceCounters>,
    free: Mutex<HashMap<usize, Vec<CudaSlice<T>>>>,
}

/// A buffer on loan from a [`Pool`]: it reads as the `CudaSlice` it holds (at least as long as asked for, the
/// bucket's length) and goes back to the pool when dropped. Cloning takes another buffer and copies the data.
pub struct Pooled<T: DeviceRepr> {
    slice: ManuallyDrop<CudaSlice<T>>,
    pool: Arc<Pool<T>>,
}

impl<T: DeviceRepr> Pool<T> {
    pub fn new(stream: Arc<CudaStream>, counters: Arc<DeviceCounters>) -> Arc<Self> {
        Arc::new(Pool { stream, counters, free: Mutex::new(HashMap::new()) })
    }

    // ANCHOR: take
    /// A buffer of at least n elements, uninitialised: from the free list when one is cached (a reuse), else
    /// a new device allocation.
    pub fn take(self: &Arc<Self>, n: usize) -> Pooled<T> {
        let size = bucket(n);
        self.counters.take(n * std::mem::size_of::<T>());
        let cached = self.free.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&size).and_then(Vec::pop);
        let slice = match cached {
            Some(slice) => {
                self.counters.reuse();
                slice
            }
            None => {
                self.counters.allocation(size * std::mem::size_of::<T>());
                // SAFETY: every caller writes the entries it reads (kernels write their outputs in full).
                unsafe { self.stream.alloc::<T>(size) }.unwrap_or_else(|e| fail("alloc", e))
            }
        };
        Pooled { slice: ManuallyDrop::new(slice), pool: self.clone() }
    }
    // ANCHOR_END: take

    fn give_back(&self, slice: CudaSlice<T>) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).entry(slice.len()).or_default().push(slice);
    }

    /// Bytes held on the free lists (allocated, not in use).
    pub fn cached_bytes(&self) -> usize {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.iter().map(|(size, list)| size * list.len() * std::mem::size_of::<T>()).sum()
    }

    /// Give every cached buffer back to the driver (buffers in use stay where they are).
    pub fn release_cached(&self) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The backend's caches as its users see them.
impl super::Cuda {
    // ANCHOR: pool_api
    /// Bytes of device memory the pool holds for reuse (allocated, no tensor in it).
    pub fn cached_bytes(&self) -> usize {
        self.pool.cached_bytes() + self.pool_bf16.cached_bytes()
    }

    /// Give the pool's cached buffers back to the driver (after training, before a long generation, say); the
    /// next ops allocate again.
    pub fn release_cached(&self) {
        self.ids.clear();
        self.floats.clear();
        self.words.clear();
        self.pool.release_cached();
        self.pool_bf16.release_cached();
    }
    // ANCHOR_END: pool_api
}

impl<T: DeviceRepr> Drop for Pooled<T> {
    fn drop(&mut self) {
        // SAFETY: `slice` is not touched again: this is the end of `self`.
        let slice = unsafe { ManuallyDrop::take(&mut self.slice) };
        self.pool.give_back(slice);
    }
}

impl<T: DeviceRepr> Deref for Pooled<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        &self.slice
    }
}

impl<T: DeviceRepr> DerefMut for Pooled<T> {
    fn deref_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.slice
    }
}

impl<T: DeviceRepr> Clone for Pooled<T> {
    fn clone(&self) -> Self {
        let mut copy = self.pool.take(self.slice.len());
        self.pool.stream.memcpy_dtod(&*self.slice, &mut *copy.slice).unwrap_or_else(|e| fail("copy", e));
        copy
    }
}

impl<T: DeviceRepr> std::fmt::Debug for Pooled<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pooled({} elements)", self.slice.len())
    }
}

// A pooled buffer is passed to a kernel as the slice it holds.
// SAFETY: delegates to cudarc's own implementations for `&CudaSlice` / `&mut CudaSlice`.
unsafe impl<'a, 'b: 'a, T: DeviceRepr> PushKernelArg<&'b Pooled<T>> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b Pooled<T>) -> &mut Self {
        <Self as PushKernelArg<&'b CudaSlice<T>>>::arg(self, &arg.slice)
    }
}

// SAFETY: as above.
unsafe impl<'a, 'b: 'a, T: DeviceRepr> PushKernelArg<&'b mut Pooled<T>> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b mut Pooled<T>) -> &mut Self {
        <Self as PushKernelArg<&'b mut CudaSlice<T>>>::arg(self, &mut arg.slice)
    }
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn buckets_round_up_by_at_most_an_eighth() {
        assert_eq!(bucket(0), 256);
        assert_eq!(bucket(256), 256);
        assert_eq!(bucket(257), 512);
        for n in [1000usize, 4097, 65_535, 1 << 20, 3_000_001] {
            let b = bucket(n);
            assert!(b >= n && (b - n) * 8 <= n, "{n} → {b}");
            assert_eq!(bucket(b), b, "a bucket is its own bucket");
        }
    }
}
