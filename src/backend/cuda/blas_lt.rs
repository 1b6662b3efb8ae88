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
//! and the first one says so in one line. The heuristic's answer depends on nothing but what `PlanKey` holds,
//! so each distinct product asks once and keeps its descriptors and kernel, or the refusal (`Plan`).

use super::{Cuda, fail};
use cudarc::cublas::GemmConfig;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublaslt::result::{self as lt, CublasError};
use cudarc::cublaslt::sys::{
    self, cublasComputeType_t, cublasLtEpilogue_t, cublasLtMatmulDescAttributes_t as Attribute,
    cublasLtMatmulPreferenceAttributes_t as Preference, cudaDataType,
};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// What the product's kernel does besides the product: a device pointer to f32 entries, read or written.
#[derive(Clone, Copy)]
pub enum Epilogue {
    /// Add `bias[i]` to row i of the column-major D (column i of the row-major output).
    Bias(u64),
    /// Write op(B)'s sum over the inner dimension, one f32 per column of the column-major D.
    BiasGradient(u64),
}

impl Epilogue {
    fn kind(self) -> cublasLtEpilogue_t {
        match self {
            Epilogue::Bias(_) => cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::BiasGradient(_) => cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BGRADB,
        }
    }

    fn vector(self) -> u64 {
        match self {
            Epilogue::Bias(ptr) | Epilogue::BiasGradient(ptr) => ptr,
        }
    }
}

/// A matrix operand or output: device pointer, entry type, and its column-major (rows, cols, leading dimension).
pub struct Matrix {
    pub ptr: u64,
    pub entry: cudaDataType,
    pub shape: (u64, u64, i64),
}

/// The cuBLASLt handle, its workspace (allocated at the first product that needs one), and the plan of every
/// distinct product asked of it so far.
pub struct BlasLt {
    handle: sys::cublasLtHandle_t,
    workspace: OnceLock<CudaSlice<u8>>,
    workspace_bytes: usize,
    plans: Mutex<HashMap<PlanKey, Result<Plan, CublasError>>>,
    said_fallback: AtomicBool,
}

// SAFETY: the handle and the plans' descriptors are only used from calls on the backend's one stream, as
// cuBLAS's handle is, and the plans behind a lock.
unsafe impl Send for BlasLt {}
unsafe impl Sync for BlasLt {}

impl BlasLt {
    /// A handle for a device of compute capability `major`: NVIDIA's suggested workspace is 32 MiB on Hopper
    /// and later, 4 MiB before.
    pub fn new(major: i32) -> Result<Self, CublasError> {
        let workspace_bytes = if major >= 9 { 32 << 20 } else { 4 << 20 };
        let handle = lt::create_handle()?;
        let plans = Mutex::new(HashMap::new());
        Ok(BlasLt { handle, workspace: OnceLock::new(), workspace_bytes, plans, said_fallback: AtomicBool::new(false) })
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
        // the plans' descriptors first, then the handle they were made for
        if let Ok(plans) = self.plans.get_mut() {
            plans.clear();
        }
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

/// Sets one preference attribute from a plain value.
unsafe fn prefer<V>(
    pref: sys::cublasLtMatmulPreference_t,
    attribute: Preference,
    value: &V,
) -> Result<(), CublasError> {
    // SAFETY: the caller passes the attribute's documented value type.
    unsafe { lt::set_matmul_pref_attribute(pref, attribute, value as *const V as *const c_void, size_of::<V>()) }
}

// ANCHOR: plan_cache
/// The largest power of two (up to 256 bytes, cuBLASLt's default assumption) that divides a device address.
/// A kernel chosen for 16-byte-aligned operands may not read a band that starts 2 bytes in.
fn alignment(ptr: u64) -> u32 {
    1 << ptr.trailing_zeros().min(8)
}

/// Everything cuBLASLt's choice of kernel depends on: transposes, epilogue, each matrix's type, shape, leading
/// dimension and alignment, and the epilogue vector's alignment. Pointers themselves are not in it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    transposes: (i32, i32),
    epilogue: cublasLtEpilogue_t,
    matrices: [(cudaDataType, (u64, u64, i64), u32); 3],
    vector_alignment: u32,
}

impl PlanKey {
    fn new(cfg: &GemmConfig<f32>, matrices: [&Matrix; 3], epilogue: Epilogue) -> Self {
        let transposed = |op: cublasOperation_t| i32::from(op == cublasOperation_t::CUBLAS_OP_T);
        PlanKey {
            transposes: (transposed(cfg.transa), transposed(cfg.transb)),
            epilogue: epilogue.kind(),
            matrices: matrices.map(|m| (m.entry, m.shape, alignment(m.ptr))),
            vector_alignment: alignment(epilogue.vector()),
        }
    }
}

/// A product's descriptor, its three layouts, and the kernel the heuristic chose for them: built the first time
/// a key is seen, then reused with only the epilogue's pointer set again. A refusal is kept as well, so a
/// product cuBLASLt has no kernel for is not asked about again every step.
struct Plan {
    desc: Owned<sys::cublasLtMatmulDesc_t>,
    layouts: [Owned<sys::cublasLtMatrixLayout_t>; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Plan {
    /// # Safety
    /// `epilogue`'s pointer is a live device buffer (the heuristic may read its alignment).
    unsafe fn new(
        blas_lt: &BlasLt,
        key: &PlanKey,
        matrices: [&Matrix; 3],
        epilogue: Epilogue,
    ) -> Result<Self, CublasError> {
        let desc = Owned(
            lt::create_matmul_desc(cublasComputeType_t::CUBLAS_COMPUTE_32F, cudaDataType::CUDA_R_32F)?,
            lt::destroy_matmul_desc,
        );
        // SAFETY: each attribute gets its documented type: int32 transposes, a uint32 epilogue, a device pointer,
        // and the vector's entry type (f32 whatever the output's: our biases and their gradients are f32).
        unsafe {
            set(desc.0, Attribute::CUBLASLT_MATMUL_DESC_TRANSA, &key.transposes.0)?;
            set(desc.0, Attribute::CUBLASLT_MATMUL_DESC_TRANSB, &key.transposes.1)?;
            set(desc.0, Attribute::CUBLASLT_MATMUL_DESC_EPILOGUE, &(key.epilogue as u32))?;
            set(desc.0, Attribute::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &epilogue.vector())?;
            set(desc.0, Attribute::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &(cudaDataType::CUDA_R_32F as i32))?;
        }
        let [a, b, d] = matrices;
        let layouts = [layout(a)?, layout(b)?, layout(d)?];
        let pref = Owned(lt::create_matmul_pref()?, lt::destroy_matmul_pref);
        let [(_, _, a_align), (_, _, b_align), (_, _, d_align)] = key.matrices;
        // SAFETY: MAX_WORKSPACE_BYTES is a uint64, the alignments uint32 (C is D)
        unsafe {
            prefer(pref.0, Preference::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &(blas_lt.workspace_bytes as u64))?;
            prefer(pref.0, Preference::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a_align)?;
            prefer(pref.0, Preference::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &b_align)?;
            prefer(pref.0, Preference::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &d_align)?;
            prefer(pref.0, Preference::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &d_align)?;
        }
        let [la, lb, ld] = &layouts;
        // SAFETY: the descriptors are live.
        let found = unsafe { lt::get_matmul_algo_heuristic(blas_lt.handle, desc.0, la.0, lb.0, ld.0, ld.0, pref.0) }?;
        Ok(Plan { desc, layouts, algo: found.algo })
    }
}
// ANCHOR_END: plan_cache

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
    let key = PlanKey::new(cfg, [a, b, d], epilogue);
    let mut plans = blas_lt.plans.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let plan = plans.entry(key).or_insert_with(|| {
        cuda.counters.heuristic_query();
        // SAFETY: the caller's epilogue pointer is live.
        unsafe { Plan::new(blas_lt, &key, [a, b, d], epilogue) }
    });
    let plan = plan.as_ref().map_err(|refused| *refused)?;
    // SAFETY: the plan's descriptor is ours alone while the lock is held; a device pointer attribute.
    unsafe { set(plan.desc.0, Attribute::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &epilogue.vector())? };
    let bytes = blas_lt.workspace_bytes;
    let workspace = blas_lt.workspace.get_or_init(|| workspace(cuda, bytes));
    let stream: &Arc<CudaStream> = &cuda.stream;
    let (workspace_ptr, _in_use) = workspace.device_ptr(stream);
    let [la, lb, ld] = &plan.layouts;
    // SAFETY: the caller's pointers and shapes (see above), which the plan's layouts and alignments describe;
    // the algorithm came from this descriptor and layouts.
    unsafe {
        lt::matmul(
            blas_lt.handle,
            plan.desc.0,
            (&cfg.alpha) as *const f32 as *const c_void,
            (&cfg.beta) as *const f32 as *const c_void,
            a.ptr as *const c_void,
            la.0,
            b.ptr as *const c_void,
            lb.0,
            d.ptr as *const c_void,
            ld.0,
            d.ptr as *mut c_void,
            ld.0,
            &plan.algo,
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
