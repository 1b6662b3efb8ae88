//! Small per-step inputs on the device, uploaded once: token ids, targets and loss weights, RoPE positions and
//! inverse frequencies, a packed batch's segment tables. Each layer's forward,
//! its backward and any recompute ask for the same arrays again; the cache answers them from device memory, keyed
//! by content, so a batch's positions cross the bus once, and not at all when the next batch has the same.
//!
//! The last `CAPACITY` distinct arrays of each element type are kept; an older one is dropped, and its buffer
//! goes back to the pool, where the next upload of that size finds it (so a miss allocates nothing either).

use super::pool::{Pool, Pooled};
use super::{counters::DeviceCounters, fail};
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, LaunchArgs, PushKernelArg};
use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

/// Distinct arrays kept per element type: a step's ids, targets, weights, positions, frequencies and three
/// segment tables, with room for more micro-batches' and a mixture of experts' routing lists.
const CAPACITY: usize = 24;

/// A read-only array on the device, shared by every op that asked for the same content.
pub struct Uploaded<T: DeviceRepr>(Arc<Pooled<T>>);

impl<T: DeviceRepr> Clone for Uploaded<T> {
    fn clone(&self) -> Self {
        Uploaded(self.0.clone())
    }
}

impl<T: DeviceRepr> Deref for Uploaded<T> {
    type Target = CudaSlice<T>;
    fn deref(&self) -> &CudaSlice<T> {
        &self.0
    }
}

// SAFETY: delegates to cudarc's implementation for `&CudaSlice` (kernels only read an upload).
unsafe impl<'a, 'b: 'a, T: DeviceRepr> PushKernelArg<&'b Uploaded<T>> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b Uploaded<T>) -> &mut Self {
        <Self as PushKernelArg<&'b CudaSlice<T>>>::arg(self, &arg.0)
    }
}

/// The cache for one element type, most recently used first.
pub struct UploadCache<T: DeviceRepr> {
    pool: Arc<Pool<T>>,
    stream: Arc<CudaStream>,
    counters: Arc<DeviceCounters>,
    entries: Mutex<VecDeque<(Vec<u8>, Uploaded<T>)>>,
}

/// The bytes of an array of plain numbers (u32, f32, u64: no padding), compared bit for bit, so that −0.0 and
/// 0.0 are different content.
fn bytes<T: DeviceRepr>(host: &[T]) -> &[u8] {
    // SAFETY: the element types uploaded are plain numbers without padding; the length is the slice's size.
    unsafe { std::slice::from_raw_parts(host.as_ptr().cast::<u8>(), std::mem::size_of_val(host)) }
}

impl<T: DeviceRepr> UploadCache<T> {
    pub fn new(pool: Arc<Pool<T>>, stream: Arc<CudaStream>, counters: Arc<DeviceCounters>) -> Self {
        UploadCache { pool, stream, counters, entries: Mutex::new(VecDeque::new()) }
    }

    // ANCHOR: upload_cached
    /// `host` on the device: the cached copy when the same content was uploaded recently, else one upload
    /// into a pooled buffer.
    pub fn get(&self, host: &[T]) -> Uploaded<T> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = bytes(host);
        if let Some(at) = entries.iter().position(|(content, _)| content.as_slice() == key) {
            let hit = entries.remove(at).expect("the position just found");
            let device = hit.1.clone();
            entries.push_front(hit);
            return device;
        }
        let device = self.upload(host);
        entries.push_front((key.to_vec(), device.clone()));
        entries.truncate(CAPACITY);
        device
    }
    // ANCHOR_END: upload_cached

    /// `host` in a pooled buffer of its own, not cached: for content that is new every time (the optimizer's
    /// tables of device pointers, which follow where the pool put this step's gradients). The buffer goes back
    /// to the pool when the last op holding it is done.
    pub fn upload(&self, host: &[T]) -> Uploaded<T> {
        let mut buffer = self.pool.take(host.len());
        if !host.is_empty() {
            self.counters.upload();
            let mut head = buffer.slice_mut(0..host.len());
            self.stream.memcpy_htod(host, &mut head).unwrap_or_else(|e| fail("copy to device", e));
        }
        Uploaded(Arc::new(buffer))
    }

    /// Forget every cached array (their buffers go back to the pool once no op holds them).
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
