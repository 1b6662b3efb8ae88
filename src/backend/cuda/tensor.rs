//! What a tensor is on the device, and how values get there and back: f32 or bf16 storage, buffers from the
//! pool, uploads, blocking reads, and the one-time bf16 copy of a frozen weight.
//!
//! Under [`Precision::Bf16`] the matrix products read every operand rounded to bf16, so what only products
//! read can be stored rounded, once: a weight that will never be trained again (the base of a LoRA or QLoRA
//! run, [`Cuda::freeze`]), and the outputs an op writes for products alone (`ReadBy::Products`: the norms',
//! SwiGLU's, the attention's). That changes no product; it halves their memory and removes the cast before
//! each product. Everything else a step computes is f32. Ops that read a tensor element by element take f32
//! ([`CudaTensor::f32`]); the ones that may be handed bf16 — the products, the embedding lookup, LoRA's dropout,
//! the attention's row terms, row slices, the download — read it too.

use super::pool::Pooled;
use super::upload_cache::Uploaded;
use super::{Cuda, Precision, ReadBy, elementwise_grid, fail};
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};

// ANCHOR: cuda_tensor
/// A row-major [rows, cols] matrix in device memory, in a buffer on loan from the backend's pool (at least
/// rows·cols long: the pool rounds sizes up to its buckets).
#[derive(Clone, Debug)]
pub struct CudaTensor {
    storage: Storage,
    pub rows: usize,
    pub cols: usize,
}

/// How a tensor's entries are stored.
#[derive(Clone, Debug)]
pub enum Storage {
    /// f32: everything computed, every trainable parameter, its gradient and its AdamW moments.
    F32(Pooled<f32>),
    /// bf16 bit patterns: a frozen weight under mixed precision (2 bytes per parameter), an output only products
    /// read, or an operand cast once for several products.
    Bf16(Pooled<u16>),
    /// A trained matrix under mixed precision (a LoRA factor): the f32 master every element-wise op and the
    /// optimizer read, and its rounding to bf16 that the products read. The optimizer's update rewrites both
    /// in the same pass ([`Cuda::keep_bf16_copy`]), so no product casts the matrix again.
    Master { f32: Pooled<f32>, bf16: Pooled<u16> },
}
// ANCHOR_END: cuda_tensor

impl CudaTensor {
    pub(super) fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub(super) fn storage(&self) -> &Storage {
        &self.storage
    }

    pub(super) fn storage_mut(&mut self) -> &mut Storage {
        &mut self.storage
    }

    /// The f32 entries. Element-wise kernels read only f32; a bf16 tensor reaching one is a bug in the caller
    /// (a frozen weight, or an output said to be read by products only, handed to an op that is not a
    /// product), reported with the caller's location.
    #[track_caller]
    pub(super) fn f32(&self) -> &Pooled<f32> {
        match &self.storage {
            Storage::F32(data) | Storage::Master { f32: data, .. } => data,
            Storage::Bf16(_) => fail_on_bf16(),
        }
    }

    /// The f32 entries, to be written. A master with a bf16 copy is written only by the optimizer, through
    /// [`CudaTensor::master_and_copy_mut`]: a write here would leave the products reading stale values.
    #[track_caller]
    pub(super) fn f32_mut(&mut self) -> &mut Pooled<f32> {
        match &mut self.storage {
            Storage::F32(data) => data,
            Storage::Bf16(_) => fail_on_bf16(),
            Storage::Master { .. } => {
                let at = std::panic::Location::caller();
                fail("tensor storage", format!("a write to a master with a bf16 copy outside the optimizer at {at}"))
            }
        }
    }

    /// The f32 entries and, for a master, its bf16 copy: what an optimizer update rewrites together.
    pub(super) fn master_and_copy_mut(&mut self) -> (&mut Pooled<f32>, Option<&mut Pooled<u16>>) {
        match &mut self.storage {
            Storage::F32(data) => (data, None),
            Storage::Master { f32, bf16 } => (f32, Some(bf16)),
            Storage::Bf16(_) => fail_on_bf16(),
        }
    }

    /// The bf16 bit patterns a product reads: a bf16 tensor's ([`Cuda::bf16_copy`]'s output) or a master's copy.
    pub(super) fn bf16_bits(&self) -> &Pooled<u16> {
        match &self.storage {
            Storage::Bf16(bits) | Storage::Master { bf16: bits, .. } => bits,
            Storage::F32(_) => fail("tensor storage", "an f32 tensor where bf16 bits were expected"),
        }
    }

    /// A master's bf16 copy (what the optimizer rewrites beside it); `None` for anything else.
    pub(super) fn bf16_copy_of_master(&self) -> Option<&Pooled<u16>> {
        match &self.storage {
            Storage::Master { bf16, .. } => Some(bf16),
            _ => None,
        }
    }

    /// The bf16 bits a product can read without a cast: `None` for plain f32.
    pub(super) fn bf16_for_products(&self) -> Option<&Pooled<u16>> {
        match &self.storage {
            Storage::Bf16(bits) | Storage::Master { bf16: bits, .. } => Some(bits),
            Storage::F32(_) => None,
        }
    }

    /// Whether its entries are bf16 bits alone (no f32 master beside them): what selects a kernel's `_bf16`
    /// entry point for an input, or its `_to_bf16` one for an output.
    pub(super) fn is_bf16(&self) -> bool {
        matches!(self.storage, Storage::Bf16(_))
    }

    /// Device bytes of its entries (2 for bf16, 4 for f32, 6 for a master and its copy, per entry; the pool's
    /// rounding up not counted).
    pub fn stored_bytes(&self) -> usize {
        match self.storage {
            Storage::F32(_) => 4 * self.len(),
            Storage::Bf16(_) => 2 * self.len(),
            Storage::Master { .. } => 6 * self.len(),
        }
    }
}

#[track_caller]
fn fail_on_bf16() -> ! {
    let at = std::panic::Location::caller();
    fail("tensor storage", format!("a bf16 tensor (frozen, or read by products only) reached an f32-only op at {at}"))
}

impl Cuda {
    /// A buffer of at least n entries from the pool, uninitialised (every caller writes what it reads).
    pub(super) fn alloc(&self, n: usize) -> Pooled<f32> {
        self.pool.take(n)
    }

    pub(super) fn tensor(&self, rows: usize, cols: usize) -> CudaTensor {
        CudaTensor { storage: Storage::F32(self.alloc(rows * cols)), rows, cols }
    }

    /// A [rows, cols] bf16 tensor from the pool, uninitialised (a dequantized band of a 4-bit weight).
    pub(super) fn bf16_tensor(&self, rows: usize, cols: usize) -> CudaTensor {
        CudaTensor { storage: Storage::Bf16(self.pool_bf16.take(rows * cols)), rows, cols }
    }

    /// A [rows, cols] tensor that only products will read, in the storage they read: bf16 under mixed
    /// precision, f32 under f32. LoRA's h = x·Aᵀ and ∂L/∂h (a product writes them rounded, as
    /// [`Cuda::product_operand`] would have rounded them, with no cast between) and a dequantized band of a
    /// 4-bit weight.
    pub(super) fn product_output(&self, rows: usize, cols: usize) -> CudaTensor {
        match self.precision {
            Precision::Bf16 => self.bf16_tensor(rows, cols),
            Precision::F32 => self.tensor(rows, cols),
        }
    }

    /// A kernel with a bf16 input has only a bf16-output entry point: the input exists under mixed precision
    /// only, where the output (read by products) is bf16 too.
    pub(super) fn bf16_input_has_bf16_output(&self, input: &CudaTensor, output: &CudaTensor, op: &str) {
        if input.is_bf16() && !output.is_bf16() {
            fail(op, "a bf16 input with an f32 output");
        }
    }

    /// A [rows, cols] output for `read_by`: one that only products read in their storage
    /// ([`Cuda::product_output`]), any other f32.
    pub(super) fn output_for(&self, read_by: ReadBy, rows: usize, cols: usize) -> CudaTensor {
        match read_by {
            ReadBy::Products => self.product_output(rows, cols),
            ReadBy::AnyOp => self.tensor(rows, cols),
        }
    }

    // ANCHOR: bf16_copy
    /// `t` rounded to bf16 (round to nearest even), as a tensor of its own: a frozen weight's storage, or an
    /// operand cast once and read by several products. A bf16 tensor is returned as it is.
    pub(super) fn bf16_copy(&self, t: &CudaTensor) -> CudaTensor {
        let data = match &t.storage {
            Storage::Bf16(_) => return t.clone(),
            Storage::Master { bf16, .. } => {
                return CudaTensor { storage: Storage::Bf16(bf16.clone()), rows: t.rows, cols: t.cols };
            }
            Storage::F32(data) => data,
        };
        let n = t.len();
        let mut out = self.pool_bf16.take(n); // the kernel writes all n entries
        let n_arg = n as i64;
        launch!(self, "f32_to_bf16", elementwise_grid(n), &mut out, data, &n_arg);
        CudaTensor { storage: Storage::Bf16(out), rows: t.rows, cols: t.cols }
    }

    /// A weight that will only be read from now on: under mixed precision it is stored as bf16 (its f32 buffer
    /// goes back to the pool); under f32 it stays as it is, exact.
    pub(super) fn freeze_weight(&self, w: &mut CudaTensor) {
        if self.precision == Precision::Bf16 {
            *w = self.bf16_copy(w);
        }
    }

    /// A matrix that is trained and read by products: under mixed precision its bf16 rounding is kept beside
    /// the f32 master (2 bytes more per entry), made here and rewritten by every optimizer update, instead of
    /// a cast before each product that reads it (four per LoRA adapter and step: A and B, forward and
    /// backward). Under f32 nothing changes.
    pub(super) fn keep_bf16_copy(&self, w: &mut CudaTensor) {
        if self.precision != Precision::Bf16 || !matches!(w.storage, Storage::F32(_)) {
            return;
        }
        let Storage::Bf16(bf16) = self.bf16_copy(w).storage else { unreachable!("an f32 tensor rounds to bf16") };
        // an empty buffer holds the place while the master moves (cloning a `Pooled` would copy it)
        let Storage::F32(f32) = std::mem::replace(&mut w.storage, Storage::Bf16(self.pool_bf16.take(0))) else {
            unreachable!("checked above")
        };
        w.storage = Storage::Master { f32, bf16 };
    }
    // ANCHOR_END: bf16_copy

    /// A bf16 tensor read back to the host and widened to f32 (exactly: every bf16 is an f32).
    pub(super) fn download_bf16(&self, data: &Pooled<u16>, n: usize) -> Vec<f32> {
        self.to_host(data, n).into_iter().map(|bits| half::bf16::from_bits(bits).to_f32()).collect()
    }

    /// A buffer of its own (not pooled) holding `host`: what lives as long as the model does (4-bit blocks).
    pub(super) fn to_device<T: DeviceRepr>(&self, host: &[T]) -> CudaSlice<T> {
        self.counters.upload();
        self.counters.allocation(std::mem::size_of_val(host).max(1));
        self.stream.clone_htod(host).unwrap_or_else(|e| fail("copy to device", e))
    }

    /// Token ids, targets, positions, segment tables: uploaded once per distinct content (`upload_cache.rs`).
    pub(super) fn ids_on_device(&self, host: &[u32]) -> Uploaded<u32> {
        self.ids.get(host)
    }

    /// Loss weights, inverse frequencies, per-row scales: uploaded once per distinct content.
    pub(super) fn floats_on_device(&self, host: &[f32]) -> Uploaded<f32> {
        self.floats.get(host)
    }

    /// The first n entries of a device buffer, on the host: waits for the stream (a blocking read).
    pub(super) fn to_host<T: DeviceRepr>(&self, dev: &CudaSlice<T>, n: usize) -> Vec<T> {
        self.counters.host_read();
        if n == 0 {
            return Vec::new();
        }
        self.stream.clone_dtoh(&dev.slice(0..n)).unwrap_or_else(|e| fail("copy to host", e))
    }
}

// A tensor's storage passed to a kernel as the buffer a kernel templated on its entry type reads: the f32
// entries (a master's included) or the bf16 bits; written, an f32 or a bf16 output (never a master, which only
// the optimizer writes). The launch picks the entry point that matches (`CudaTensor::is_bf16`).
// SAFETY: delegates to the pooled buffers' own implementations.
unsafe impl<'a, 'b: 'a> PushKernelArg<&'b Storage> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b Storage) -> &mut Self {
        match arg {
            Storage::F32(data) | Storage::Master { f32: data, .. } => self.arg(data),
            Storage::Bf16(bits) => self.arg(bits),
        }
    }
}

// SAFETY: as above.
unsafe impl<'a, 'b: 'a> PushKernelArg<&'b mut Storage> for LaunchArgs<'a> {
    fn arg(&mut self, arg: &'b mut Storage) -> &mut Self {
        match arg {
            Storage::F32(data) => self.arg(data),
            Storage::Bf16(bits) => self.arg(bits),
            Storage::Master { .. } => fail("tensor storage", "a kernel's output is a master with a bf16 copy"),
        }
    }
}
