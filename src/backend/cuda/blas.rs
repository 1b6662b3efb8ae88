//! Row-major matrix products on cuBLAS (which is column-major).
//!
//! A row-major [r, c] matrix is, read column-major, its transpose [c, r] with leading dimension c. So
//! C = op(A)·op(B) in row-major terms is Cᵀ = op(B)ᵀ·op(A)ᵀ in cuBLAS's: pass B first, A second, and swap m
//! and n — no copies, only the transpose flags change.

use super::blas_lt::{self, Epilogue, Matrix};
use super::{Cuda, CudaTensor, Precision, Storage, fail, int};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::cublaslt::result::CublasError;
use cudarc::cublaslt::sys::cudaDataType as LtType;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};

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
    gemm(cuda, a, trans_a, b, trans_b, 1.0, 0.0, out)
}

/// out[m, n] = α·op(a)·op(b) + β·out: with β = 1 the product is added to what `out` holds (LoRA's update into
/// the base output, a second gradient into the first) and α scales it on the way, both at no extra pass.
///
/// Both operands f32 under [`Precision::F32`]: cuBLAS's sgemm, exact to f32 (no TF32). Otherwise the
/// tensor cores: a bf16 operand (a frozen weight, or one cast once for several products) is read as it is, an
/// f32 one is rounded to bf16 first; accumulation and `out` stay f32.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    cuda: &Cuda,
    a: &CudaTensor,
    trans_a: bool,
    b: &CudaTensor,
    trans_b: bool,
    alpha: f32,
    beta: f32,
    out: &mut CudaTensor,
) {
    let (mut cfg, (m, n, k)) = row_major_gemm((a.rows, a.cols), trans_a, (b.rows, b.cols), trans_b);
    assert_eq!((out.rows, out.cols), (m, n), "matmul: output is not [{m}, {n}]");
    (cfg.alpha, cfg.beta) = (alpha, beta);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // an empty sum: out = β·out, for the two β the backend uses
        assert!(beta == 0.0 || beta == 1.0, "matmul: an empty product with β = {beta}");
        if beta == 0.0 {
            let zeroed = match out.storage_mut() {
                Storage::Bf16(bits) => cuda.stream.memset_zeros(&mut **bits), // +0.0 is all zero bits in bf16 too
                _ => cuda.stream.memset_zeros(&mut **out.f32_mut()),
            };
            zeroed.unwrap_or_else(|e| fail("memset", e));
        }
        return;
    }
    match (cuda.precision, a.storage(), b.storage()) {
        (Precision::F32, Storage::F32(a_data), Storage::F32(b_data)) => {
            cuda.counters.gemm();
            // SAFETY: the shapes are checked above; the leading dimensions are the row lengths of each buffer.
            unsafe { cuda.blas.gemm(cfg, &**b_data, &**a_data, &mut **out.f32_mut()) }
                .unwrap_or_else(|e| fail("cuBLAS sgemm", e))
        }
        _ => {
            let (a_cast, b_cast);
            let a16 = match a.bf16_for_products() {
                Some(bits) => bits,
                None => {
                    a_cast = cuda.bf16_copy(a);
                    a_cast.bf16_bits()
                }
            };
            let b16 = match b.bf16_for_products() {
                Some(bits) => bits,
                None => {
                    b_cast = cuda.bf16_copy(b);
                    b_cast.bf16_bits()
                }
            };
            gemm_bf16_into(cuda, cfg, &**b16, &**a16, out, 0);
        }
    }
}
// ANCHOR_END: matmul

// ANCHOR: gemm_strided
/// Columns `start .. start + width` of a row-major tensor: a [rows, width] matrix whose rows lie `t.cols`
/// apart (cuBLAS's leading dimension), starting `start` entries into the buffer.
#[derive(Clone, Copy)]
pub struct Columns<'a> {
    pub t: &'a CudaTensor,
    pub start: usize,
    pub width: usize,
}

impl<'a> Columns<'a> {
    /// The whole tensor.
    pub fn all(t: &'a CudaTensor) -> Self {
        Columns { t, start: 0, width: t.cols }
    }
}

/// out[:, out_start .. out_start + n] = α·op(a)·op(b) + β·(those columns), where a and b may themselves be column
/// slices: the products of a band of a weight (`linear_4bit.rs`) reading and writing their columns of the
/// whole activations in place, with no copy in or out. The operands are read as they are stored — both f32
/// (sgemm, exact) or both bf16 (the tensor cores, f32 accumulation); the caller casts once for all bands.
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    cuda: &Cuda,
    a: Columns,
    trans_a: bool,
    b: Columns,
    trans_b: bool,
    alpha: f32,
    beta: f32,
    out: &mut CudaTensor,
    out_start: usize,
) {
    let (mut cfg, (m, n, k)) = row_major_gemm((a.t.rows, a.width), trans_a, (b.t.rows, b.width), trans_b);
    assert!(a.start + a.width <= a.t.cols && b.start + b.width <= b.t.cols, "gemm_strided: operand columns");
    assert!(out.rows == m && out_start + n <= out.cols, "gemm_strided: output is not [{m}, ≥{n}]");
    assert!(k > 0, "gemm_strided: an empty inner dimension");
    if m == 0 || n == 0 {
        return;
    }
    // the leading dimensions are the row lengths of the whole buffers, not of the slices
    (cfg.lda, cfg.ldb, cfg.ldc) = (int(b.t.cols, "ld b"), int(a.t.cols, "ld a"), int(out.cols, "ld out"));
    (cfg.alpha, cfg.beta) = (alpha, beta);
    match (a.t.storage(), b.t.storage()) {
        (Storage::F32(a_data), Storage::F32(b_data)) => {
            cuda.counters.gemm();
            let mut c = out.f32_mut().slice_mut(out_start..);
            // SAFETY: the shapes and column ranges are checked above; each view starts at its slice's first
            // entry and the leading dimensions are the row lengths of the buffers the views point into.
            unsafe { cuda.blas.gemm(cfg, &b_data.slice(b.start..), &a_data.slice(a.start..), &mut c) }
                .unwrap_or_else(|e| fail("cuBLAS sgemm", e))
        }
        (Storage::Bf16(_) | Storage::Master { .. }, Storage::Bf16(_) | Storage::Master { .. }) => {
            let (a_bits, b_bits) = (a.t.bf16_bits(), b.t.bf16_bits());
            gemm_bf16_into(cuda, cfg, &b_bits.slice(b.start..), &a_bits.slice(a.start..), out, out_start)
        }
        _ => fail("gemm_strided", "operands of two storage types (cast both to bf16 first)"),
    }
}
// ANCHOR_END: gemm_strided

// ANCHOR: gemm_epilogue
/// What a product's own kernel does besides out = op(a)·op(b), in row-major terms (`blas_lt.rs`).
pub enum ProductEpilogue<'a> {
    /// out[:, j] += bias[start + j] (bias: [1, ≥ start + n], f32): a layer's bias, added as the product is
    /// written.
    AddBias { bias: &'a CudaTensor, start: usize },
    /// sums[i] = Σₗ op(a)[i, l] (sums: [1, m], f32): with out = dW = dyᵀ·x, the bias gradient Σₜ dy[t, :] from
    /// the same pass over dy.
    RowSumsOfA(&'a mut CudaTensor),
}

/// out[:, out_start .. out_start + n] = op(a)·op(b) with `epilogue`, as one cuBLASLt product. The operands are
/// in the products' precision (`Cuda::product_operand`): both f32 under [`Precision::F32`], both readable as
/// bf16 otherwise; `out` is f32 or bf16. `Err` where cuBLASLt has no kernel for it: nothing was written, and
/// the caller does the plain product and the kernel the epilogue replaces.
#[allow(clippy::too_many_arguments)]
pub fn gemm_epilogue(
    cuda: &Cuda,
    a: &CudaTensor,
    trans_a: bool,
    b: &CudaTensor,
    trans_b: bool,
    out: &mut CudaTensor,
    out_start: usize,
    epilogue: ProductEpilogue,
) -> Result<(), CublasError> {
    let (mut cfg, (m, n, k)) = row_major_gemm((a.rows, a.cols), trans_a, (b.rows, b.cols), trans_b);
    assert!(out.rows == m && out_start + n <= out.cols, "gemm_epilogue: output is not [{m}, ≥{n}]");
    assert!(m > 0 && n > 0 && k > 0, "gemm_epilogue: an empty product");
    cfg.ldc = int(out.cols, "ld out");
    let stream = &cuda.stream;
    let ((a_ptr, entry, _a), (b_ptr, _, _b)) = (operand(cuda, a, stream), operand(cuda, b, stream));
    let (vector, _vector) = match epilogue {
        ProductEpilogue::AddBias { bias, start } => {
            assert!(bias.rows == 1 && start + n <= bias.cols, "gemm_epilogue: the bias is not [1, ≥{}]", start + n);
            let (ptr, guard) = bias.f32().device_ptr(stream);
            (Epilogue::Bias(ptr + 4 * start as u64), guard)
        }
        ProductEpilogue::RowSumsOfA(sums) => {
            assert_eq!((sums.rows, sums.cols), (1, m), "gemm_epilogue: the sums are not [1, {m}]");
            let (ptr, guard) = sums.f32_mut().device_ptr_mut(stream);
            (Epilogue::BiasGradient(ptr), guard)
        }
    };
    let (d_ptr, d_entry, _d) = match out.storage_mut() {
        Storage::Bf16(bits) => {
            let (ptr, guard) = bits.device_ptr_mut(stream);
            (ptr + 2 * out_start as u64, LtType::CUDA_R_16BF, guard)
        }
        _ => {
            let (ptr, guard) = out.f32_mut().device_ptr_mut(stream);
            (ptr + 4 * out_start as u64, LtType::CUDA_R_32F, guard)
        }
    };
    // cuBLAS's A is our b and its B our a (`row_major_gemm`); each is stored [rows, cols] column-major as op
    // leaves it: op(A) is [m, k], op(B) [k, n], in cuBLAS's m and n.
    let (cm, cn, ck) = (cfg.m as u64, cfg.n as u64, cfg.k as u64);
    let stored = |op: cublasOperation_t, rows, cols| {
        if op == cublasOperation_t::CUBLAS_OP_N { (rows, cols) } else { (cols, rows) }
    };
    let ((ar, ac), (br, bc)) = (stored(cfg.transa, cm, ck), stored(cfg.transb, ck, cn));
    let lt_a = Matrix { ptr: b_ptr, entry, shape: (ar, ac, cfg.lda as i64) };
    let lt_b = Matrix { ptr: a_ptr, entry, shape: (br, bc, cfg.ldb as i64) };
    let lt_d = Matrix { ptr: d_ptr, entry: d_entry, shape: (cm, cn, cfg.ldc as i64) };
    // SAFETY: the shapes are checked above, each pointer is a live buffer of its entry type read through its
    // leading dimension, and the vector has m_cuBLAS = n entries (bias) or n_cuBLAS = m (sums).
    unsafe { blas_lt::matmul(cuda, &cfg, (&lt_a, &lt_b, &lt_d), vector) }
}

/// A product operand's device pointer and entry type: f32 under [`Precision::F32`], its bf16 bits otherwise.
fn operand<'a>(cuda: &Cuda, t: &'a CudaTensor, stream: &'a CudaStream) -> (u64, LtType, SyncOnDrop<'a>) {
    match cuda.precision {
        Precision::F32 => {
            let (ptr, guard) = t.f32().device_ptr(stream);
            (ptr, LtType::CUDA_R_32F, guard)
        }
        Precision::Bf16 => {
            let (ptr, guard) = t.bf16_bits().device_ptr(stream);
            (ptr, LtType::CUDA_R_16BF, guard)
        }
    }
}
// ANCHOR_END: gemm_epilogue

// ANCHOR: gemm_bf16_into
/// The tensor cores' mixed-precision product (bf16 A and B, f32 accumulation) into columns `out_start..` of
/// `out`: an f32 output takes β as given; a bf16 output (an activation only products read, such as LoRA's
/// h = x·Aᵀ) gets the accumulator rounded to nearest even on the way out, which is the rounding a cast
/// before the next product would have made. With β ≠ 0 a bf16 C is read as bf16 and the sum rounded again
/// (an adapter's branch added into a stacked base output kept in bf16).
fn gemm_bf16_into(
    cuda: &Cuda,
    cfg: GemmConfig<f32>,
    a: &impl DevicePtr<u16>,
    b: &impl DevicePtr<u16>,
    out: &mut CudaTensor,
    out_start: usize,
) {
    match out.storage_mut() {
        Storage::Bf16(bits) => {
            gemm_ex_bf16(cuda, cfg, a, b, &mut bits.slice_mut(out_start..), cudaDataType_t::CUDA_R_16BF)
        }
        _ => gemm_ex_bf16(cuda, cfg, a, b, &mut out.f32_mut().slice_mut(out_start..), cudaDataType_t::CUDA_R_32F),
    }
}
// ANCHOR_END: gemm_bf16_into

/// cublasGemmEx with bf16 A and B, C of `c_type` and f32 accumulation (CUBLAS_COMPUTE_32F).
fn gemm_ex_bf16<C>(
    cuda: &Cuda,
    cfg: GemmConfig<f32>,
    a: &impl DevicePtr<u16>,
    b: &impl DevicePtr<u16>,
    c: &mut impl DevicePtrMut<C>,
    c_type: cudaDataType_t,
) {
    let (alpha, beta) = (cfg.alpha, cfg.beta);
    cuda.counters.gemm();
    let stream = &cuda.stream;
    let (a_ptr, _a_guard) = a.device_ptr(stream);
    let (b_ptr, _b_guard) = b.device_ptr(stream);
    let (c_ptr, _c_guard) = c.device_ptr_mut(stream);
    // SAFETY: the pointers are live device buffers of the sizes `matmul` checked, C's elements of `c_type`;
    // alpha/beta are f32 as CUBLAS_COMPUTE_32F requires.
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
            c_type,
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
