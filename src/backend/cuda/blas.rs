//! Row-major matrix products on cuBLAS (which is column-major).
//!
//! A row-major [r, c] matrix is, read column-major, its transpose [c, r] with leading dimension c. So
//! C = op(A)·op(B) in row-major terms is Cᵀ = op(B)ᵀ·op(A)ᵀ in cuBLAS's: pass B first, A second, and swap m
//! and n — no copies, only the transpose flags change.

use super::{Cuda, CudaTensor, Pooled, Precision, fail, int};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

fn op(transpose: bool) -> cublasOperation_t {
    if transpose { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N }
}

// ANCHOR: matmul
/// The cuBLAS call for out[m, n] = op(a)·op(b) on row-major a: [a_rows, a_cols], b: [b_rows, b_cols], with
/// **b passed as cuBLAS's first operand and a as its second**; also returns (m, n, k).
pub fn row_major_gemm(
    (a_rows, a_cols): (usize, usize),
    trans_a: bool,
    (b_rows, b_cols): (usize, usize),
    trans_b: bool,
) -> (GemmConfig<f32>, (usize, usize, usize)) {
    let (m, k) = if trans_a { (a_cols, a_rows) } else { (a_rows, a_cols) };
    let (k2, n) = if trans_b { (b_cols, b_rows) } else { (b_rows, b_cols) };
    assert_eq!(k, k2, "matmul: inner dimensions {k} and {k2} differ");
    let cfg = GemmConfig {
        transa: op(trans_b), // cuBLAS's A is our b, read column-major: bᵀ as stored; op(b)ᵀ needs the flag of b
        transb: op(trans_a),
        m: int(n, "matmul n"), // the column-major result is outᵀ: [n, m]
        n: int(m, "matmul m"),
        k: int(k, "matmul k"),
        alpha: 1.0f32,
        lda: int(b_cols, "ld b"), // a row-major buffer's leading dimension is its row length
        ldb: int(a_cols, "ld a"),
        beta: 0.0f32,
        ldc: int(n, "ld out"),
    };
    (cfg, (m, n, k))
}

/// out[m, n] = op(a)·op(b), every matrix row-major; op transposes when its flag is set.
pub fn matmul(cuda: &Cuda, a: &CudaTensor, trans_a: bool, b: &CudaTensor, trans_b: bool, out: &mut CudaTensor) {
    let (cfg, (m, n, k)) = row_major_gemm((a.rows, a.cols), trans_a, (b.rows, b.cols), trans_b);
    assert_eq!((out.rows, out.cols), (m, n), "matmul: output is not [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        cuda.stream.memset_zeros(&mut *out.data).unwrap_or_else(|e| fail("memset", e));
        return;
    }
    match cuda.precision {
        // SAFETY: the shapes are checked above; the leading dimensions are the row lengths of each buffer.
        Precision::F32 => {
            cuda.counters.gemm();
            unsafe { cuda.blas.gemm(cfg, &*b.data, &*a.data, &mut *out.data) }
                .unwrap_or_else(|e| fail("cuBLAS sgemm", e))
        }
        Precision::Bf16 => {
            let (a16, b16) = (to_bf16(cuda, a), to_bf16(cuda, b));
            gemm_bf16_in_f32_out(cuda, cfg, &b16, &a16, &mut out.data);
        }
    }
}
// ANCHOR_END: matmul

/// The operand rounded to bf16 (as raw 16-bit patterns), round to nearest even.
fn to_bf16(cuda: &Cuda, t: &CudaTensor) -> Pooled<u16> {
    let n = t.rows * t.cols;
    let mut out = cuda.pool_bf16.take(n); // the kernel writes all n entries
    let blocks = n.div_ceil(256).clamp(1, 65_536) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let n = n as i64;
    let f = cuda.function("f32_to_bf16");
    let mut args = cuda.stream.launch_builder(f);
    cuda.counters.launch();
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
    cuda.counters.gemm();
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    /// BLAS's sgemm as its documentation defines it, column-major: C = α·op(A)·op(B) + β·C with
    /// op(X)(i, l) = X[i + l·ld] (N) or X[l + i·ld] (T).
    fn reference_sgemm(cfg: &GemmConfig<f32>, a: &[f32], b: &[f32], c: &mut [f32]) {
        let (m, n, k) = (cfg.m as usize, cfg.n as usize, cfg.k as usize);
        let at = |x: &[f32], t: cublasOperation_t, ld: usize, i: usize, l: usize| match t {
            cublasOperation_t::CUBLAS_OP_N => x[i + l * ld],
            _ => x[l + i * ld],
        };
        for j in 0..n {
            for i in 0..m {
                let s: f32 = (0..k)
                    .map(|l| at(a, cfg.transa, cfg.lda as usize, i, l) * at(b, cfg.transb, cfg.ldb as usize, l, j))
                    .sum();
                let ci = i + j * cfg.ldc as usize;
                c[ci] = cfg.alpha * s + cfg.beta * c[ci];
            }
        }
    }

    #[test]
    fn row_major_products_map_onto_column_major_gemm() {
        let mut rng = crate::rng::Rng::new(3);
        let mut draw = |r: usize, c: usize| Array2::from_shape_fn((r, c), |_| rng.normal() as f32);
        let (m, n, k) = (5, 7, 3);
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = if trans_a { draw(k, m) } else { draw(m, k) };
            let b = if trans_b { draw(n, k) } else { draw(k, n) };
            let op_a = if trans_a { a.t().to_owned() } else { a.clone() };
            let op_b = if trans_b { b.t().to_owned() } else { b.clone() };
            let want = op_a.dot(&op_b);
            let (cfg, dims) = row_major_gemm(a.dim(), trans_a, b.dim(), trans_b);
            assert_eq!(dims, (m, n, k));
            let mut out = vec![0.0f32; m * n];
            // b first, a second, as `matmul` passes them; the buffer comes back row-major [m, n]
            reference_sgemm(&cfg, b.as_slice().unwrap(), a.as_slice().unwrap(), &mut out);
            let got = Array2::from_shape_vec((m, n), out).unwrap();
            for (x, y) in got.iter().zip(&want) {
                assert!((x - y).abs() < 1e-5, "trans_a {trans_a}, trans_b {trans_b}: {got} vs {want}");
            }
        }
    }
}
