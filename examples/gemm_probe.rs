use mftcoder::nn::matmul::matmul;
use ndarray::{Array2, ArrayView2};
use std::time::Instant;
fn gemm_nt(a: ArrayView2<f32>, w: ArrayView2<f32>, par: gemm::Parallelism) -> Array2<f32> {
    let (m, k) = a.dim();
    let n = w.nrows();
    let mut c = Array2::<f32>::zeros((m, n));
    unsafe { gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), 1, k as isize, w.as_ptr(), k as isize, 1, 0.0, 1.0, false, false, false, par); }
    c
}
fn gemm_nt_colmajor(a: ArrayView2<f32>, w: ArrayView2<f32>, par: gemm::Parallelism) -> Array2<f32> {
    let (m, k) = a.dim();
    let n = w.nrows();
    let mut ct = Array2::<f32>::zeros((n, m)); // C stored column-major
    unsafe { gemm::gemm(m, n, k, ct.as_mut_ptr(), m as isize, 1, false, a.as_ptr(), 1, k as isize, w.as_ptr(), k as isize, 1, 0.0, 1.0, false, false, false, par); }
    ct
}
fn med(f: &dyn Fn()) -> f64 { let mut v = vec![]; for _ in 0..21 { let s = Instant::now(); f(); v.push(s.elapsed().as_secs_f64()); } v.sort_by(|a,b| a.partial_cmp(b).unwrap()); v[10] }
fn main() {
    for &(m, k, n) in &[(256usize, 512usize, 1536usize), (256, 512, 512), (256, 1536, 512), (256, 512, 8192), (1024, 384, 1024)] {
        let a = Array2::<f32>::from_shape_fn((m, k), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.01);
        let w = Array2::<f32>::from_shape_fn((n, k), |(i, j)| ((i * 5 + j) % 11) as f32 * 0.01);
        let fl = 2.0 * (m * k * n) as f64 / 1e9;
        let ours = med(&|| { std::hint::black_box(matmul(a.view(), w.t())); });
        let one = med(&|| { std::hint::black_box(gemm_nt(a.view(), w.view(), gemm::Parallelism::None)); });
        let two = med(&|| { std::hint::black_box(gemm_nt(a.view(), w.view(), gemm::Parallelism::Rayon(2))); });
        let cm1 = med(&|| { std::hint::black_box(gemm_nt_colmajor(a.view(), w.view(), gemm::Parallelism::None)); });
        let cm2 = med(&|| { std::hint::black_box(gemm_nt_colmajor(a.view(), w.view(), gemm::Parallelism::Rayon(2))); });
        let cm2t = med(&|| { std::hint::black_box(gemm_nt_colmajor(a.view(), w.view(), gemm::Parallelism::Rayon(2)).reversed_axes().as_standard_layout().into_owned()); });
        let wt = w.t().as_standard_layout().into_owned(); // [k, n] row-major: Wᵀ stored
        let ours_wt = med(&|| { std::hint::black_box(matmul(a.view(), wt.view())); });
        println!("   stored-transposed ours {:.0}", fl/ours_wt);
        println!("{m}x{k}x{n}: ours {:.0}  gemm-1t {:.0}  gemm-rayon2 {:.0}  colmajor-1t {:.0} colmajor-2t {:.0} colmajor-2t+T {:.0} GFLOP/s", fl/ours, fl/one, fl/two, fl/cm1, fl/cm2, fl/cm2t);
    }
}
