use ndarray::{Array2, ArrayView2};
use std::time::Instant;
fn gemm_nt(a: ArrayView2<f32>, w: ArrayView2<f32>, threads: usize) -> Array2<f32> {
    let (m, k) = a.dim();
    let n = w.nrows();
    let mut c = Array2::<f32>::zeros((m, n));
    let (ars, acs) = (a.strides()[0], a.strides()[1]);
    let (wrs, wcs) = (w.strides()[0], w.strides()[1]);
    unsafe {
        gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), acs, ars, w.as_ptr(), wrs, wcs, 0.0, 1.0, false, false, false,
            if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None });
    }
    c
}
fn main() {
    for &(m, k, n) in &[(256usize, 512usize, 1536usize), (1024, 384, 1024), (1024, 1024, 384), (1024, 384, 8192), (512, 512, 512), (1024,1024,1024)] {
        let a = Array2::<f32>::from_shape_fn((m, k), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.01);
        let w = Array2::<f32>::from_shape_fn((n, k), |(i, j)| ((i * 5 + j) % 11) as f32 * 0.01);
        let r = a.dot(&w.t());
        let g = gemm_nt(a.view(), w.view(), 2);
        let diff = r.iter().zip(g.iter()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        for (name, f) in [("mm", 0), ("gemm", 1)] {
            let mut times = vec![];
            for _ in 0..15 { let t = Instant::now(); if f == 0 { std::hint::black_box(a.dot(&w.t())); } else { std::hint::black_box(gemm_nt(a.view(), w.view(), std::env::var("T").map(|v| v.parse().unwrap()).unwrap_or(2))); } times.push(t.elapsed().as_secs_f64()); }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let med = times[7];
            println!("{name:5} {m}x{k}x{n}: median {:.2} ms, {:.0} GFLOP/s (diff {diff:.1e})", med * 1e3, 2.0 * (m * k * n) as f64 / med / 1e9);
        }
    }
}
