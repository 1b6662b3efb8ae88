//! Products with an epilogue, on cuBLASLt: the kernel that computes a product also adds a bias to every row of
//! it, or also sums one operand over the inner dimension (a bias gradient), while the result is still in
//! registers. No kernel after the product reads and writes the output again.
//!
//! In cuBLAS's column-major terms (`blas.rs`: a row-major y [T, out] is the column-major D [out, T]):
//!
//! ```text
//! Bias          D = α·op(A)·op(B) + β·C + bias·1ᵀ      bias: [m], one entry per row of D (per column of y)
//! BiasGradient  D = α·op(A)·op(B) + β·C,  g = Σₗ op(B)[l, :]   g: [n], op(B)'s sum over the inner dimension
//! ```
//!
//! The weight gradient dW [out, in] = dyᵀ·x is the column-major D [in, out] with op(B) = dy [T, out], so its
//! BiasGradient is Σₜ dy[t, :], the bias gradient, from the same pass over dy.
//!
//! cuBLASLt picks a kernel per shape, operand types and epilogue (`cublasLtMatmulAlgoGetHeuristic`) and may have
//! none, for an unaligned band of a wider output, say. Every caller then falls back to the plain product and
//! the kernel it replaces (`add_bias_rows`, `column_sum`); `DeviceCounters::epilogue_fallbacks` counts these,
//! and the first one says so in one line.

use super::{Cuda, fail};
use cudarc::cublas::GemmConfig;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublaslt::result::{self as lt, CublasError};
use cudarc::cublaslt::sys::{
    self, cublasComputeType_t, cublasLtEpilogue_t, cublasLtMatmulDescAttributes_t as Attribute,
    cublasLtMatmulPreferenceAttributes_t, cudaDataType,
};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// What the product's kernel does besides the product: a device pointer to f32 entries, read or written.
#[derive(Clone, Copy)]
pub enum Epilogue {
    /// Add `bias[i]` to row i of the column-major D (column i of the row-major output).
    Bias(u64),
    /// Write op(B)'s sum over the inner dimension, one f32 per column of the column-major D.
    BiasGradient(u64),
}

/// A matrix operand or output: device pointer, entry type, and its column-major (rows, cols, leading dimension).
pub struct Matrix {
    pub ptr: u64,
    pub entry: cudaDataType,
    pub shape: (u64, u64, i64),
}

/// The cuBLASLt handle and its workspace (allocated at the first product that needs one).
pub struct BlasLt {
    handle: sys::cublasLtHandle_t,
    workspace: OnceLock<CudaSlice<u8>>,
    workspace_bytes: usize,
    said_fallback: AtomicBool,
}

// SAFETY: the handle is only used from calls on the backend's one stream, as cuBLAS's is.
unsafe impl Send for BlasLt {}
unsafe impl Sync for BlasLt {}

impl BlasLt {
    /// A handle for a device of compute capability `major`: NVIDIA's suggested workspace is 32 MiB on Hopper
    /// and later, 4 MiB before.
    pub fn new(major: i32) -> Result<Self, CublasError> {
        let workspace_bytes = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let handle = lt::create_handle()?;
        Ok(BlasLt { handle, workspace: OnceLock::new(), workspace_bytes, said_fallback: AtomicBool::new(false) })
    }

    /// One line, the first time a product falls back to a separate kernel.
    pub fn note_fallback(&self, what: &str, why: CublasError) {
        if !self.said_fallback.swap(true, Ordering::Relaxed) {
            eprintln!("note: cuBLASLt has no {what} epilogue for a product here ({why:?}); a kernel does that part");
        }
    }
}

impl Drop for BlasLt {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

/// Destroys a cuBLASLt descriptor when it goes out of scope, whichever way the call returns.
struct Owned<T: Copy>(T, unsafe fn(T) -> Result<(), CublasError>);

impl<T: Copy> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: each descriptor is created once below and destroyed here once.
        let _ = unsafe { (self.1)(self.0) };
    }
}

fn layout(m: &Matrix) -> Result<Owned<sys::cublasLtMatrixLayout_t>, CublasError> {
    let (rows, cols, ld) = m.shape;
    Ok(Owned(lt::create_matrix_layout(m.entry, rows, cols, ld)?, lt::destroy_matrix_layout))
}

/// Sets one descriptor attribute from a plain value.
unsafe fn set<V>(desc: sys::cublasLtMatmulDesc_t, attribute: Attribute, value: &V) -> Result<(), CublasError> {
    // SAFETY: the caller passes the attribute's documented value type.
    unsafe { lt::set_matmul_desc_attribute(desc, attribute, value as *const V as *const c_void, size_of::<V>()) }
}

// ANCHOR: matmul_epilogue
/// D = α·op(A)·op(B) + β·D with `epilogue`, f32 accumulation and f32 α, β (`cfg` from `blas::row_major_gemm`,
/// its A and B in `a`, `b`; C is D). `Err` where cuBLASLt has no kernel for it or refuses the call: nothing
/// was launched.
///
/// # Safety
/// The pointers are live device buffers of the shapes and entry types given, the epilogue's f32 vector has
/// m (Bias) or n (BiasGradient) entries, and nothing else writes them until the stream has run the product.
pub unsafe fn matmul(
    cuda: &Cuda,
    cfg: &GemmConfig<f32>,
    (a, b, d): (&Matrix, &Matrix, &Matrix),
    epilogue: Epilogue,
) -> Result<(), CublasError> {
    let blas_lt = &cuda.blas_lt;
    let desc = Owned(
        lt::create_matmul_desc(cublasComputeType_t::CUBLAS_COMPUTE_32F, cudaDataType::CUDA_R_32F)?,
        lt::destroy_matmul_desc,
    );
    let transposed = |op: cublasOperation_t| i32::from(op == cublasOperation_t::CUBLAS_OP_T);
    let (kind, vector) = match epilogue {
        Epilogue::Bias(ptr) => (cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS, ptr),
        Epilogue::BiasGradient(ptr) => (cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BGRADB, ptr),
    };
    // SAFETY: each attribute gets its documented type: int32 transposes, a uint32 epilogue, a device pointer,
    // and the vector's entry type (f32 whatever the output's: our biases and their gradients are f32).
    unsafe {
        set(desc.0, Attribute::CUBLASLT_MATMUL_DESC_TRANSA, &transposed(cfg.transa))?;
        set(desc.0, Attribute::CUBLASLT_MATMUL_DESC_TRANSB, &transposed(cfg.transb))?;
        set(desc.0, Attribute::CUBLASLT_MATMUL_DESC_EPILOGUE, &(kind as u32))?;
        set(desc.0, Attribute::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &vector)?;
        set(desc.0, Attribute::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &(cudaDataType::CUDA_R_32F as i32))?;
    }
    let (a_layout, b_layout, d_layout) = (layout(a)?, layout(b)?, layout(d)?);
    let pref = Owned(lt::create_matmul_pref()?, lt::destroy_matmul_pref);
    let bytes = blas_lt.workspace_bytes;
    // SAFETY: MAX_WORKSPACE_BYTES is a uint64.
    unsafe {
        lt::set_matmul_pref_attribute(
            pref.0,
            cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &(bytes as u64) as *const u64 as *const c_void,
            size_of::<u64>(),
        )?;
    }
    // SAFETY: the descriptors are live; the heuristic reads the vector pointer only for its alignment.
    let found = unsafe {
        lt::get_matmul_algo_heuristic(blas_lt.handle, desc.0, a_layout.0, b_layout.0, d_layout.0, d_layout.0, pref.0)
    }?;
    let workspace = blas_lt.workspace.get_or_init(|| workspace(cuda, bytes));
    let stream: &Arc<CudaStream> = &cuda.stream;
    let (workspace_ptr, _in_use) = workspace.device_ptr(stream);
    // SAFETY: the caller's pointers and shapes (see above); the algorithm came from this descriptor and layouts.
    unsafe {
        lt::matmul(
            blas_lt.handle,
            desc.0,
            (&cfg.alpha) as *const f32 as *const c_void,
            (&cfg.beta) as *const f32 as *const c_void,
            a.ptr as *const c_void,
            a_layout.0,
            b.ptr as *const c_void,
            b_layout.0,
            d.ptr as *const c_void,
            d_layout.0,
            d.ptr as *mut c_void,
            d_layout.0,
            &found.algo,
            workspace_ptr as *mut c_void,
            bytes,
            stream.cu_stream() as *mut _,
        )
    }?;
    cuda.counters.gemm();
    Ok(())
}
// ANCHOR_END: matmul_epilogue

/// The workspace, once per backend: one allocation, counted as the pool's are.
fn workspace(cuda: &Cuda, bytes: usize) -> CudaSlice<u8> {
    cuda.counters.allocation(bytes);
    // SAFETY: cuBLASLt writes it before it reads it.
    unsafe { cuda.stream.alloc::<u8>(bytes) }.unwrap_or_else(|e| fail("cuBLASLt workspace", e))
}
