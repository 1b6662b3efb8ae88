//! 4-bit weight quantization, bit-identical to bitsandbytes 0.50.2 (`quantize_4bit` / `dequantize_4bit`).
//!
//! A weight matrix is flattened row-major and cut into blocks of `blocksize` (64) values; blocks run across row
//! boundaries and a short last block keeps its own scale. Each block stores
//!
//! ```text
//! absmax  = max |w|                          f32 (or 8 bits with double quantization, see double_quant.rs)
//! code[j] = encode(w[j] · (1/absmax))        4 bits: nf4.rs or fp4.rs picks the nearest codebook value
//! ```
//!
//! and decodes `ŵ[j] = CODE[code[j]] · absmax` in f32. Two codes share a byte, element 2k in the high nibble.
//! The rounding details that make the bytes identical to bitsandbytes' (its torch backend, which the CPU runs):
//! the scale is the f32 reciprocal `1/max(absmax, 1e-38)` multiplied in, but the short last block divides by
//! `max(absmax, 1e-38)` and stores that clamped value; scaled values are clamped to [-1, 1]; an odd element
//! count pads the last low nibble with the code of 0.

pub mod checkpoint; // whole checkpoints: write a bnb 4-bit model directory, read one back dequantized
pub mod cli; // `mftcoder quantize`: arguments and the run function
pub mod double_quant; // the 8-bit dynamic map and double quantization of the block absmax values
pub mod format; // the tensors and quant_state JSON bitsandbytes saves per quantized weight
pub mod fp4; // the FP4 codebook (1 sign, 2 exponent, 1 mantissa bit)
pub mod nf4; // the NF4 codebook (normal quantiles)
pub mod torch_mean; // torch's f32 summation order, for the double-quant offset

use anyhow::{Result, bail};
use double_quant::DoubleQuant;
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

/// Which 4-bit codebook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantType {
    Nf4,
    Fp4,
}

impl QuantType {
    /// The name bitsandbytes uses (`quant_type`, and the `bitsandbytes__<name>` key suffix).
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Nf4 => "nf4",
            QuantType::Fp4 => "fp4",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "nf4" => Ok(QuantType::Nf4),
            "fp4" => Ok(QuantType::Fp4),
            other => bail!("unknown 4-bit quant type `{other}` (allowed: nf4, fp4)"),
        }
    }

    /// The 16 code values, indexed by the 4-bit code.
    pub fn code(self) -> &'static [f32; 16] {
        match self {
            QuantType::Nf4 => &nf4::CODE,
            QuantType::Fp4 => &fp4::CODE,
        }
    }

    #[inline]
    fn encode(self, s: f32) -> u8 {
        match self {
            QuantType::Nf4 => nf4::encode(s),
            QuantType::Fp4 => fp4::encode(s),
        }
    }
}

/// The block sizes bitsandbytes accepts.
pub const BLOCKSIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// How to quantize. The defaults are QLoRA's: blocks of 64, double quantization.
#[derive(Clone, Copy, Debug)]
pub struct QuantOptions {
    pub blocksize: usize,
    pub double_quant: bool,
    /// torch's intra-op thread count in the run being matched; it only changes the double-quant offset of
    /// tensors with 32768 or more blocks (see [`torch_mean`]).
    pub torch_threads: usize,
}

impl Default for QuantOptions {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        QuantOptions { blocksize: 64, double_quant: true, torch_threads: threads }
    }
}

/// The per-block scales: plain f32, or double-quantized.
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax {
    Plain(Vec<f32>),
    Double(DoubleQuant),
}

/// A 4-bit quantized matrix, in exactly the pieces bitsandbytes stores.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized4bit {
    /// `(n + 1) / 2` bytes, element 2k in the high nibble.
    pub packed: Vec<u8>,
    pub absmax: Absmax,
    /// `[out_features, in_features]`.
    pub shape: [usize; 2],
    pub quant_type: QuantType,
    pub blocksize: usize,
    /// The dtype of the original weight, recorded in the quant state (`"float32"`, `"bfloat16"`, `"float16"`).
    pub dtype: String,
}

impl Quantized4bit {
    /// Bytes of its pieces: the packed codes, the per-block scales (one f32 each, or with double quantization
    /// one byte each plus an f32 per 256 of them and the 256-entry map) — about 0.52 bytes per weight for NF4 +
    /// double quantization with blocks of 64, 0.56 without.
    pub fn stored_bytes(&self) -> usize {
        let scales = match &self.absmax {
            Absmax::Plain(a) => 4 * a.len(),
            Absmax::Double(dq) => dq.codes.len() + 4 * (dq.nested_absmax.len() + dq.nested_quant_map.len()) + 4,
        };
        self.packed.len() + scales
    }

    /// Quantize with blocks of 64 (see [`QuantOptions`] for the rest).
    pub fn quantize(w: ArrayView2<f32>, quant_type: QuantType, double_quant: bool) -> Result<Self> {
        Self::quantize_with(w, quant_type, QuantOptions { double_quant, ..QuantOptions::default() })
    }

    // ANCHOR: quantize
    pub fn quantize_with(w: ArrayView2<f32>, quant_type: QuantType, opts: QuantOptions) -> Result<Self> {
        let bs = opts.blocksize;
        if !BLOCKSIZES.contains(&bs) {
            bail!("blocksize {bs} is not one bitsandbytes accepts ({BLOCKSIZES:?})");
        }
        let flat: Vec<f32> = w.iter().copied().collect(); // row-major, whatever the view's layout
        if let Some(i) = flat.iter().position(|v| !v.is_finite()) {
            bail!("element {i} is {}; 4-bit quantization needs finite weights", flat[i]);
        }
        let n = flat.len();
        let full_blocks = n / bs;
        let zero_code = quant_type.encode(0.0); // pads an odd count
        let mut packed = vec![0u8; n.div_ceil(2)];
        let mut absmax = vec![0.0f32; n.div_ceil(bs)];
        packed.par_chunks_mut(bs / 2).zip(flat.par_chunks(bs)).zip(absmax.par_iter_mut()).enumerate().for_each(
            |(b, ((bytes, block), am))| {
                let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let clamped = max.max(1e-38);
                let code = |v: f32| {
                    let s = if b < full_blocks { v * (1.0 / clamped) } else { v / clamped };
                    quant_type.encode(s.clamp(-1.0, 1.0))
                };
                for (byte, pair) in bytes.iter_mut().zip(block.chunks(2)) {
                    let lo = if pair.len() == 2 { code(pair[1]) } else { zero_code };
                    *byte = (code(pair[0]) << 4) | lo;
                }
                *am = if b < full_blocks { max } else { clamped }; // torch keeps the clamp on the short block
            },
        );
        let absmax = if opts.double_quant {
            Absmax::Double(DoubleQuant::compress(&absmax, opts.torch_threads))
        } else {
            Absmax::Plain(absmax)
        };
        let (rows, cols) = w.dim();
        Ok(Quantized4bit { packed, absmax, shape: [rows, cols], quant_type, blocksize: bs, dtype: "float32".into() })
    }
    // ANCHOR_END: quantize

    pub fn numel(&self) -> usize {
        self.shape[0] * self.shape[1]
    }

    /// The f32 absmax of every block, decoded from the 8-bit codes when double-quantized.
    pub fn scales(&self) -> Vec<f32> {
        match &self.absmax {
            Absmax::Plain(a) => a.clone(),
            Absmax::Double(dq) => dq.decode(),
        }
    }

    pub fn dequantize(&self) -> Array2<f32> {
        let mut out = Array2::zeros((self.shape[0], self.shape[1]));
        self.dequantize_into(out.as_slice_mut().expect("a fresh array is contiguous"));
        out
    }

    // ANCHOR: dequantize
    /// Write the dequantized matrix, row-major, into `out` (`numel` values): `ŵ = CODE[nibble] · absmax` in
    /// f32, in parallel over runs of blocks. Fast enough to run before every matmul.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        assert_eq!(out.len(), self.numel(), "dequantize_into: output length");
        let scales = self.scales();
        let code = self.quant_type.code();
        let pairs: [[f32; 2]; 256] = std::array::from_fn(|b| [code[b >> 4], code[b & 15]]);
        let bs = self.blocksize;
        const BLOCKS_PER_TASK: usize = 64;
        out.par_chunks_mut(bs * BLOCKS_PER_TASK).enumerate().for_each(|(t, chunk)| {
            for (j, block) in chunk.chunks_mut(bs).enumerate() {
                let b = t * BLOCKS_PER_TASK + j;
                let scale = scales[b];
                let bytes = &self.packed[b * bs / 2..];
                let half = block.len() / 2;
                let mut pairs_out = block.chunks_exact_mut(2);
                for (o, &byte) in (&mut pairs_out).zip(bytes) {
                    let [hi, lo] = pairs[byte as usize];
                    o[0] = hi * scale;
                    o[1] = lo * scale;
                }
                if let [last] = pairs_out.into_remainder() {
                    *last = code[(bytes[half] >> 4) as usize] * scale;
                }
            }
        });
    }
    // ANCHOR_END: dequantize

    // ANCHOR: dequantize_range
    /// Write ŵ for the flat (row-major) elements `start .. start + out.len()` into `out`, with `scales` from
    /// [`Quantized4bit::scales`]: the same f32 values as [`Quantized4bit::dequantize_into`], for any range, so
    /// a product can dequantize one band of rows at a time (`nn::linear_4bit`).
    pub fn dequantize_range_into(&self, scales: &[f32], start: usize, out: &mut [f32]) {
        let end = start + out.len();
        assert!(end <= self.numel(), "dequantize_range_into: {start}..{end} is past {} elements", self.numel());
        let code = self.quant_type.code();
        let nibble = |j: usize| {
            let byte = self.packed[j / 2];
            code[if j % 2 == 0 { byte >> 4 } else { byte & 15 } as usize]
        };
        let mut j = start;
        let mut out = out.iter_mut();
        while j < end {
            let block_end = ((j / self.blocksize + 1) * self.blocksize).min(end); // j..block_end share a scale
            let scale = scales[j / self.blocksize];
            if j % 2 == 1 {
                *out.next().expect("sized") = nibble(j) * scale;
                j += 1;
            }
            let pairs = (block_end - j) / 2;
            for &byte in &self.packed[j / 2..j / 2 + pairs] {
                *out.next().expect("sized") = code[(byte >> 4) as usize] * scale;
                *out.next().expect("sized") = code[(byte & 15) as usize] * scale;
            }
            j += 2 * pairs;
            if j < block_end {
                *out.next().expect("sized") = nibble(j) * scale;
                j += 1;
            }
        }
    }
    // ANCHOR_END: dequantize_range

    /// Storage bits per weight: the packed codes, the scales (8-bit codes + nested f32 absmax + the f32 offset
    /// with double quantization, else f32), not counting the constant code tables.
    pub fn bits_per_param(&self) -> f64 {
        let scale_bits = match &self.absmax {
            Absmax::Plain(a) => 32 * a.len(),
            Absmax::Double(dq) => 8 * dq.codes.len() + 32 * dq.nested_absmax.len() + 32,
        };
        (8 * self.packed.len() + scale_bits) as f64 / self.numel() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn sample(rows: usize, cols: usize) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(i, j)| (((i * 31 + j * 17) % 97) as f32 - 48.0) / 40.0)
    }

    #[test]
    fn round_trip_error_is_bounded_by_half_the_widest_gap() {
        for qt in [QuantType::Nf4, QuantType::Fp4] {
            for dq in [false, true] {
                let w = sample(33, 17); // odd count, short last block
                let q = Quantized4bit::quantize(w.view(), qt, dq).unwrap();
                assert_eq!((q.packed.len(), q.scales().len()), (281, 9));
                let d = q.dequantize();
                let scales = q.scales();
                let widest = 0.34f32; // the widest gap between neighbouring codes, NF4 and FP4 alike
                for (k, (a, b)) in w.iter().zip(d.iter()).enumerate() {
                    let tol = widest / 2.0 * scales[k / 64] + 0.02 * dq as i32 as f32;
                    assert!((a - b).abs() <= tol, "{qt:?} dq={dq} element {k}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn any_range_dequantizes_to_the_whole_matrix_values() {
        // 33 × 17 = 561 elements: odd, blocks of 32 and 64 straddle rows, a short last block
        for blocksize in [32, 64] {
            let opts = QuantOptions { blocksize, double_quant: true, torch_threads: 1 };
            let q = Quantized4bit::quantize_with(sample(33, 17).view(), QuantType::Nf4, opts).unwrap();
            let (whole, scales) = (q.dequantize(), q.scales());
            let flat = whole.as_slice().unwrap();
            for (start, len) in [(0, 561), (0, 1), (1, 1), (17, 34), (63, 66), (64, 64), (100, 3), (559, 2), (31, 1)] {
                let mut part = vec![f32::NAN; len];
                q.dequantize_range_into(&scales, start, &mut part);
                assert_eq!(part, flat[start..start + len], "blocksize {blocksize}, {start}..{}", start + len);
            }
        }
    }

    #[test]
    fn packing_puts_the_even_element_in_the_high_nibble() {
        let w = Array2::from_shape_vec((1, 3), vec![-1.0f32, 1.0, 0.0]).unwrap();
        let q = Quantized4bit::quantize(w.view(), QuantType::Nf4, false).unwrap();
        assert_eq!(q.packed, vec![0x0F, 0x77]); // codes 0, 15 | 7, pad 7
        assert_eq!(q.dequantize().into_raw_vec_and_offset().0, vec![-1.0, 1.0, 0.0]);
    }

    #[test]
    fn zero_blocks_and_bad_input() {
        let w = Array2::<f32>::zeros((2, 64));
        let q = Quantized4bit::quantize(w.view(), QuantType::Nf4, false).unwrap();
        assert!(q.packed.iter().all(|&b| b == 0x77));
        assert_eq!(q.scales(), vec![0.0, 0.0]);
        let mut bad = w.clone();
        bad[[1, 5]] = f32::NAN;
        let err = Quantized4bit::quantize(bad.view(), QuantType::Nf4, false).unwrap_err().to_string();
        assert!(err.contains("element 69"), "{err}");
        let err = Quantized4bit::quantize_with(
            w.view(),
            QuantType::Nf4,
            QuantOptions { blocksize: 48, ..Default::default() },
        );
        assert!(err.unwrap_err().to_string().contains("blocksize 48"));
    }

    #[test]
    fn bits_per_param() {
        let w = sample(256, 256); // 1024 blocks: 4 nested blocks
        let plain = Quantized4bit::quantize(w.view(), QuantType::Nf4, false).unwrap();
        let dq = Quantized4bit::quantize(w.view(), QuantType::Nf4, true).unwrap();
        assert_eq!(plain.bits_per_param(), 4.5);
        let want = 4.0 + 8.0 / 64.0 + (4.0 * 32.0 + 32.0) / 65536.0; // ≈ 4.1274
        assert!((dq.bits_per_param() - want).abs() < 1e-12, "{}", dq.bits_per_param());
    }

    #[test]
    fn dequantize_into_matches_per_element_formula() {
        let w = sample(40, 100);
        let q = Quantized4bit::quantize_with(
            w.view(),
            QuantType::Fp4,
            QuantOptions { blocksize: 32, ..Default::default() },
        )
        .unwrap();
        let d = q.dequantize();
        let s = q.scales();
        for (k, v) in d.iter().enumerate() {
            let nib = if k % 2 == 0 { q.packed[k / 2] >> 4 } else { q.packed[k / 2] & 15 };
            assert_eq!(*v, fp4::CODE[nib as usize] * s[k / 32]);
        }
    }
}
