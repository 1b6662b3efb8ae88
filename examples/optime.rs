use mftcoder::nn;
use mftcoder::nn::attention::{AttentionMask, AttentionShape};
use ndarray::Array2;
use std::time::Instant;
fn t<F: FnMut()>(name: &str, n: usize, mut f: F) { f(); let s = Instant::now(); for _ in 0..n { f(); } println!("{name}: {:.3} ms", s.elapsed().as_secs_f64()*1e3/n as f64); }
fn main() {
    let x = Array2::<f32>::from_shape_fn((256, 512), |(i,j)| ((i*7+j*3)%13) as f32 * 0.01);
    let w = Array2::<f32>::from_shape_fn((1536, 512), |(i,j)| ((i*5+j)%11) as f32 * 0.01);
    let wl = Array2::<f32>::from_shape_fn((8192, 512), |(i,j)| ((i*5+j)%11) as f32 * 0.01);
    t("linear 256x512 -> 1536", 20, || { std::hint::black_box(nn::linear::linear(x.view(), w.view(), None)); });
    let wt = w.t().as_standard_layout().to_owned();
    t("plain dot 256x512 . 512x1536", 20, || { std::hint::black_box(x.dot(&wt)); });
    t("lm_head 256x512 -> 8192", 10, || { std::hint::black_box(nn::linear::linear(x.view(), wl.view(), None)); });
    let q = Array2::<f32>::from_shape_fn((256, 512), |(i,j)| ((i*7+j*3)%13) as f32 * 0.01);
    let k = Array2::<f32>::from_shape_fn((256, 256), |(i,j)| ((i*3+j*5)%17) as f32 * 0.01);
    let shape = AttentionShape { n_heads: 8, n_kv_heads: 4, head_dim: 64, scale: 0.125 };
    t("attention T=256", 20, || { std::hint::black_box(nn::attention::causal_attention(q.view(), k.view(), k.view(), &shape, &AttentionMask::default())); });
    let wn = ndarray::Array1::<f32>::ones(512);
    t("rms_norm", 50, || { std::hint::black_box(nn::rms_norm::rms_norm(x.view(), wn.view(), 1e-6)); });
    let inv: Vec<f32> = (0..32).map(|i| 1.0/(10000f32).powf(i as f32/32.0)).collect();
    let pos: Vec<usize> = (0..256).collect();
    t("rope", 50, || { std::hint::black_box(nn::rope::rope(x.view(), 8, 64, &pos, &inv)); });
    let g = Array2::<f32>::zeros((256,1536));
    t("swiglu", 50, || { std::hint::black_box(nn::mlp::swiglu(g.view(), g.view())); });
    let x1 = Array2::<f32>::from_shape_fn((1, 576), |(i,j)| ((i*7+j*3)%13) as f32 * 0.01);
    let wg = Array2::<f32>::from_shape_fn((49152, 576), |(i,j)| ((i*5+j)%11) as f32 * 0.01);
    t("gemv lm_head 1x576 -> 49152", 10, || { std::hint::black_box(nn::linear::linear(x1.view(), wg.view(), None)); });
}
