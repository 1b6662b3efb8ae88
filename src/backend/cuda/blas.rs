//! Row-major matrix products on cuBLAS (which is column-major).
//!
//! A row-major [r, c] matrix is, read column-major, its transpose [c, r] with leading dimension c. So
//! C = op(A)·op(B) in row-major terms is Cᵀ = op(B)ᵀ·op(A)ᵀ in cuBLAS's: pass B first, A second, and swap m
//! and n — no copies, only the transpose flags change.

use super::{Cuda, CudaTensor, Precision, fail, int};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

fn op(transpose: bool) -> cublasOperation_t {
    if transpose { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N }
}

// ANCHOR: matmul
/// out[m, n] = op(a)·op(b), every matrix row-major; op transposes when its flag is set.
pub fn matmul(cuda: &Cuda, a: &CudaTensor, trans_a: bool, b: &CudaTensor, trans_b: bool, out: &mut CudaTensor) {
    let (m, k) = if trans_a { (a.cols, a.rows) } else { (a.rows, a.cols) };
    let (k2, n) = if trans_b { (b.cols, b.rows) } else { (b.rows, b.cols) };
    assert_eq!(k, k2, "matmul: inner dimensions {k} and {k2} differ");
    assert_eq!((out.rows, out.cols), (m, n), "matmul: output is not [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        cuda.stream.memset_zeros(&mut out.data).unwrap_or_else(|e| fail("memset", e));
        return;
    }
    let cfg = GemmConfig {
        transa: op(trans_b),
        transb: op(trans_a),
        m: int(n, "matmul n"),
        n: int(m, "matmul m"),
        k: int(k, "matmul k"),
        alpha: 1.0f32,
        lda: int(b.cols, "ld b"),
        ldb: int(a.cols, "ld a"),
        beta: 0.0f32,
        ldc: int(n, "ld out"),
    };
    match cuda.precision {
        // SAFETY: the shapes are checked above; the leading dimensions are the row lengths of each buffer.
        Precision::F32 => {
            unsafe { cuda.blas.gemm(cfg, &b.data, &a.data, &mut out.data) }.unwrap_or_else(|e| fail("cuBLAS sgemm", e))
        }
        Precision::Bf16 => {
            let (a16, b16) = (to_bf16(cuda, a), to_bf16(cuda, b));
            gemm_bf16_in_f32_out(cuda, cfg, &b16, &a16, &mut out.data);
        }
    }
}
// ANCHOR_END: matmul

/// The operand rounded to bf16 (as raw 16-bit patterns), round to nearest even.
fn to_bf16(cuda: &Cuda, t: &CudaTensor) -> CudaSlice<u16> {
    let n = t.rows * t.cols;
    // SAFETY: the kernel writes all n entries.
    let mut out = unsafe { cuda.stream.alloc::<u16>(n.max(1)) }.unwrap_or_else(|e| fail("alloc", e));
    let blocks = n.div_ceil(256).clamp(1, 65_536) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let n = n as i64;
    let f = cuda.function("f32_to_bf16");
    let mut args = cuda.stream.launch_builder(f);
    args.arg(&mut out).arg(&t.data).arg(&n);
    // SAFETY: (u16 out, f32 in, n) is the kernel's signature; both buffers hold n entries.
    unsafe { args.launch(cfg) }.unwrap_or_else(|e| fail("f32_to_bf16", e));
    out
}

/// cublasGemmEx with bf16 A and B, f32 C and f32 accumulation (CUBLAS_COMPUTE_32F): the tensor cores'
/// mixed-precision product.
fn gemm_bf16_in_f32_out(
    cuda: &Cuda,
    cfg: GemmConfig<f32>,
    a: &CudaSlice<u16>,
    b: &CudaSlice<u16>,
    c: &mut CudaSlice<f32>,
) {
    let (alpha, beta) = (cfg.alpha, cfg.beta);
    let stream = &cuda.stream;
    let (a_ptr, _a_guard) = a.device_ptr(stream);
    let (b_ptr, _b_guard) = b.device_ptr(stream);
    let (c_ptr, _c_guard) = c.device_ptr_mut(stream);
    // SAFETY: the pointers are live device buffers of the sizes `matmul` checked; alpha/beta are f32 as
    // CUBLAS_COMPUTE_32F requires.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *cuda.blas.handle(),
            cfg.transa,
            cfg.transb,
            cfg.m,
            cfg.n,
            cfg.k,
            (&alpha) as *const f32 as *const _,
            a_ptr as *const _,
            cudaDataType_t::CUDA_R_16BF,
            cfg.lda,
            b_ptr as *const _,
            cudaDataType_t::CUDA_R_16BF,
            cfg.ldb,
            (&beta) as *const f32 as *const _,
            c_ptr as *mut _,
            cudaDataType_t::CUDA_R_32F,
            cfg.ldc,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .unwrap_or_else(|e| fail("cuBLAS gemm_ex (bf16)", e));
}
