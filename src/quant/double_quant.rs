//! Double quantization (QLoRA's "DQ", bitsandbytes' `compress_statistics`): the f32 block absmax values are
//! themselves quantized to 8 bits.
//!
//! With 64-weight blocks an f32 absmax costs 32/64 = 0.5 bits per weight. DQ stores instead
//!
//! ```text
//! offset        = mean(absmax)                         f32, one per tensor (`nested_offset`)
//! c             = absmax − offset                      centred, so the signed map is used fully
//! nested_absmax = max |c| over blocks of 256           f32, one per 256 blocks
//! codes[i]      = nearest entry of the dynamic map to c[i] / nested_absmax[i / 256]    u8
//! ```
//!
//! and decodes `absmax[i] = map[codes[i]] · nested_absmax[i / 256] + offset` (f32 multiply, then f32 add):
//! 8/64 + 32/(64·256) ≈ 0.127 bits per weight. The 8-bit map is bitsandbytes' signed "dynamic" map
//! (`create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`), a float-like code whose leading
//! zeros act as an exponent: for e = 0..6 it holds the 2^e midpoints of `linspace(0.1, 1, 2^e + 1)` scaled by
//! 10^(e−6), with both signs, plus 0 and 1 — 256 sorted values from −0.99296875 to 1.
//!
//! Quantization follows bitsandbytes' CPU kernel (`quantize_cpu` in `csrc/cpu_ops.cpp`), which is not an exact
//! nearest-value search: it maps `v = c · (1/absmax)` (clamped to [-1, 1]) onto a 65536-entry lookup table,
//! index `⌊((v + 1) · 0.5) · 65535 + 0.5⌋`, each entry being the nearest map value to the centre
//! `−1 + 2i/65535` of its bin. Near a midpoint a value can therefore land on the second-nearest code; matching
//! bytes need the same table.

use super::torch_mean::torch_mean;
use rayon::prelude::*;
use std::sync::OnceLock;

/// Blocks of 256 absmax values share one nested absmax (`nested_blocksize`).
pub const NESTED_BLOCKSIZE: usize = 256;

/// The 127 positive values of the dynamic map below 1, ascending. torch's vectorised `linspace` decides the
/// last bit of several of them, so they are kept as bitsandbytes computes them (checked against its map).
const DYNAMIC_POSITIVE: [f32; 127] = [
    5.5000004e-07,
    3.2500002e-06,
    7.75e-06,
    2.1249998e-05,
    4.375e-05,
    6.625e-05,
    8.875e-05,
    0.00015625001,
    0.00026875004,
    0.00038125002,
    0.00049375003,
    0.0006062501,
    0.00071875006,
    0.00083125,
    0.0009437501,
    0.0012812499,
    0.00184375,
    0.00240625,
    0.00296875,
    0.0035312497,
    0.00409375,
    0.0046562497,
    0.0052187503,
    0.00578125,
    0.00634375,
    0.00690625,
    0.00746875,
    0.00803125,
    0.00859375,
    0.009156249,
    0.00971875,
    0.01140625,
    0.01421875,
    0.01703125,
    0.019843752,
    0.02265625,
    0.02546875,
    0.028281251,
    0.03109375,
    0.03390625,
    0.036718752,
    0.03953125,
    0.042343747,
    0.04515625,
    0.04796875,
    0.05078125,
    0.05359375,
    0.05640625,
    0.059218753,
    0.06203125,
    0.06484375,
    0.067656256,
    0.070468746,
    0.07328125,
    0.07609375,
    0.07890625,
    0.08171876,
    0.08453125,
    0.08734375,
    0.09015625,
    0.092968754,
    0.09578126,
    0.09859375,
    0.107031256,
    0.12109375,
    0.13515624,
    0.14921875,
    0.16328125,
    0.17734376,
    0.19140625,
    0.20546874,
    0.21953125,
    0.23359375,
    0.24765624,
    0.26171875,
    0.27578127,
    0.28984374,
    0.30390626,
    0.31796873,
    0.33203125,
    0.34609374,
    0.36015624,
    0.37421876,
    0.38828123,
    0.40234375,
    0.41640624,
    0.43046874,
    0.44453126,
    0.45859373,
    0.47265625,
    0.4867187,
    0.50078124,
    0.5148437,
    0.5289062,
    0.54296875,
    0.5570313,
    0.5710938,
    0.58515626,
    0.5992187,
    0.61328125,
    0.6273438,
    0.6414063,
    0.65546876,
    0.6695312,
    0.68359375,
    0.6976563,
    0.7117188,
    0.72578126,
    0.7398437,
    0.75390625,
    0.7679688,
    0.78203124,
    0.79609376,
    0.8101562,
    0.82421875,
    0.8382813,
    0.85234374,
    0.86640626,
    0.8804687,
    0.89453125,
    0.9085938,
    0.92265624,
    0.93671876,
    0.9507812,
    0.96484375,
    0.9789063,
    0.99296874,
];

// ANCHOR: dynamic_map
/// The signed 8-bit dynamic map: 127 negatives (mirrored), 0 at index 127, 127 positives, 1 at index 255.
pub const DYNAMIC_MAP: [f32; 256] = {
    let mut m = [0.0f32; 256];
    let mut i = 0;
    while i < 127 {
        m[126 - i] = -DYNAMIC_POSITIVE[i];
        m[128 + i] = DYNAMIC_POSITIVE[i];
        i += 1;
    }
    m[255] = 1.0;
    m
};
// ANCHOR_END: dynamic_map

const LUT_SIZE: usize = 65536;

/// bitsandbytes' `build_quantize_lut`: bin i (centre `−1 + 2i/65535`) → the code whose midpoint range holds it.
fn build_lut(map: &[f32; 256]) -> Vec<u8> {
    let mid: Vec<f32> = map.windows(2).map(|w| 0.5f32 * (w[0] + w[1])).collect();
    let mut lut = vec![0u8; LUT_SIZE];
    let mut code = 0usize;
    for (i, entry) in lut.iter_mut().enumerate() {
        let val = -1.0f32 + (2.0f32 * i as f32) / (LUT_SIZE - 1) as f32;
        while code < 255 && mid[code] < val {
            code += 1;
        }
        *entry = code as u8;
    }
    lut
}

fn dynamic_lut() -> &'static [u8] {
    static LUT: OnceLock<Vec<u8>> = OnceLock::new();
    LUT.get_or_init(|| build_lut(&DYNAMIC_MAP))
}

// ANCHOR: quantize_8bit
/// Blockwise 8-bit quantization into the dynamic map (bitsandbytes' CPU `quantize_blockwise`).
/// Returns the codes and one f32 absmax per block.
pub fn quantize_blockwise_8bit(x: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    let lut = dynamic_lut();
    let mut codes = vec![0u8; x.len()];
    let mut absmax = vec![0.0f32; x.len().div_ceil(blocksize)];
    codes.par_chunks_mut(blocksize).zip(x.par_chunks(blocksize)).zip(absmax.par_iter_mut()).for_each(
        |((q, block), am)| {
            *am = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if *am == 0.0 {
                return; // an all-zero block stays code 0
            }
            let inv = 1.0f32 / *am;
            for (q, &v) in q.iter_mut().zip(block) {
                let v = (v * inv).clamp(-1.0, 1.0);
                let index = ((v + 1.0) * 0.5 * (LUT_SIZE - 1) as f32 + 0.5) as usize; // truncation
                *q = lut[index];
            }
        },
    );
    (codes, absmax)
}
// ANCHOR_END: quantize_8bit

/// The double-quantized form of a tensor's block absmax values (the `nested_*` tensors of bitsandbytes).
#[derive(Clone, Debug, PartialEq)]
pub struct DoubleQuant {
    /// One 8-bit code per 4-bit block (stored as the `absmax` tensor, uint8).
    pub codes: Vec<u8>,
    /// One f32 absmax per 256 codes (`nested_absmax`).
    pub nested_absmax: Vec<f32>,
    /// The 256-entry map the codes index (`nested_quant_map`).
    pub nested_quant_map: Vec<f32>,
    /// The mean subtracted before quantizing (`nested_offset`).
    pub offset: f32,
}

impl DoubleQuant {
    // ANCHOR: compress
    /// Quantize block absmax values: centre on their torch mean, then 8-bit blockwise with blocks of 256.
    /// `torch_threads` only matters for 32768 or more blocks (see [`super::torch_mean`]).
    pub fn compress(absmax: &[f32], torch_threads: usize) -> Self {
        let offset = torch_mean(absmax, torch_threads);
        let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
        let (codes, nested_absmax) = quantize_blockwise_8bit(&centred, NESTED_BLOCKSIZE);
        DoubleQuant { codes, nested_absmax, nested_quant_map: DYNAMIC_MAP.to_vec(), offset }
    }

    /// The f32 block absmax values bitsandbytes dequantizes with: `map[q] · nested[i/256] + offset`.
    pub fn decode(&self) -> Vec<f32> {
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &q)| self.nested_quant_map[q as usize] * self.nested_absmax[i / NESTED_BLOCKSIZE] + self.offset)
            .collect()
    }
    // ANCHOR_END: compress
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_map_shape() {
        assert!(DYNAMIC_MAP.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((DYNAMIC_MAP[0], DYNAMIC_MAP[127], DYNAMIC_MAP[255]), (-0.99296874, 0.0, 1.0));
        // Each exponent band e holds 2^e values 10^(e-6)·(midpoints of linspace(0.1, 1, 2^e + 1)).
        let mut k = 128;
        for e in 0..7 {
            let n = 1usize << e;
            for j in 0..n {
                let lo = 0.1 + 0.9 * j as f64 / n as f64;
                let hi = 0.1 + 0.9 * (j + 1) as f64 / n as f64;
                let want = 10f64.powi(e - 6) * (lo + hi) / 2.0;
                let got = DYNAMIC_MAP[k] as f64;
                assert!((got - want).abs() <= 4.0 * f32::EPSILON as f64 * want, "entry {k}: {got} vs {want}");
                k += 1;
            }
        }
        assert_eq!(k, 255);
    }

    #[test]
    fn lut_quantization_is_near_nearest_and_zero_blocks_stay_zero() {
        let x: Vec<f32> = (0..600).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let (q, am) = quantize_blockwise_8bit(&x, 256);
        assert_eq!(am.len(), 3);
        for (i, (&v, &c)) in x.iter().zip(&q).enumerate() {
            let s = v / am[i / 256];
            // Never further than one map step from the true value.
            let err = (DYNAMIC_MAP[c as usize] - s).abs();
            let step = (DYNAMIC_MAP[(c as usize + 1).min(255)] - DYNAMIC_MAP[(c as usize).saturating_sub(1)]).abs();
            assert!(err <= step, "x[{i}] = {v}: code {c}");
        }
        let (q, am) = quantize_blockwise_8bit(&[0.0; 10], 256);
        assert_eq!((q, am), (vec![0; 10], vec![0.0]));
    }

    #[test]
    fn compress_then_decode_is_close() {
        let absmax: Vec<f32> = (0..700).map(|i| 0.5 + ((i * 13 % 97) as f32) / 97.0).collect();
        let dq = DoubleQuant::compress(&absmax, 1);
        assert_eq!((dq.codes.len(), dq.nested_absmax.len()), (700, 3));
        for (a, d) in absmax.iter().zip(dq.decode()) {
            assert!((a - d).abs() < 0.01, "{a} vs {d}");
        }
    }
}
