use mftcoder::nn::matmul::matmul;
use ndarray::Array2;
use std::time::Instant;
fn main() {
    // backward shapes of the train bench: T=1024, hidden 384, inter 1024, vocab 8192
    for &(out, inp) in &[(384usize, 384usize), (1024, 384), (384, 1024), (8192, 384)] {
        let t = 1024;
        let dy = Array2::<f32>::from_shape_fn((t, out), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.01);
        let x = Array2::<f32>::from_shape_fn((t, inp), |(i, j)| ((i * 5 + j) % 11) as f32 * 0.01);
        let w = Array2::<f32>::from_shape_fn((out, inp), |(i, j)| ((i * 3 + j) % 7) as f32 * 0.01);
        let time = |f: &dyn Fn()| { let mut v = vec![]; for _ in 0..9 { let s = Instant::now(); f(); v.push(s.elapsed().as_secs_f64()); } v.sort_by(|a,b| a.partial_cmp(b).unwrap()); v[4] };
        let fl = 2.0 * (t * out * inp) as f64;
        let a = time(&|| { std::hint::black_box(matmul(x.view(), w.t())); });
        let b = time(&|| { std::hint::black_box(matmul(dy.view(), w.view())); });
        let c = time(&|| { std::hint::black_box(matmul(dy.t(), x.view())); });
        let d = time(&|| { std::hint::black_box(dy.t().dot(&x)); });
        println!("out {out} in {inp}: fwd {:.0}  dx {:.0}  dW {:.0}  dW(ndarray) {:.0} GFLOP/s", fl/a/1e9, fl/b/1e9, fl/c/1e9, fl/d/1e9);
    }
}
