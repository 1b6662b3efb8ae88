//! Products with a frozen 4-bit weight (QLoRA's base) that never form all of Ŵ [out, in] in full precision.
//!
//! Ŵ is dequantized a band of output rows at a time into one pooled buffer of at most [`DEFAULT_BAND_BYTES`]
//! (bf16 under [`Precision::Bf16`], which the products round every operand to anyway; f32 under
//! [`Precision::F32`]), and the band's share of the product runs at once, reading and writing its columns of
//! the activations in place (`blas::gemm_strided`):
//!
//! ```text
//! forward   y[:, band]  = x · Ŵ[band, :]ᵀ      x: [T, in], Ŵ[band, :]: [rows, in], y: [T, out]
//! backward  dx         += dy[:, band] · Ŵ[band, :]   dy: [T, out], dx: [T, in]; β = 0 for the first band
//! ```
//!
//! A model whose matrices fit one band (every small one) runs exactly one dequantization and one product per
//! 4-bit matrix; a 7B model's MLP matrix (11008 × 4096, 90 MB as bf16) runs in three bands of 32 MB. The CPU
//! does the same with cache-sized bands (`nn::linear_4bit`).

use super::blas::{self, Columns};
use super::{Cuda, CudaPacked, CudaTensor, Precision, ReadBy};
use crate::backend::Backend;
use crate::quant::Quantized4bit;

/// The largest dequantized band the products use: 32 MiB.
pub const DEFAULT_BAND_BYTES: usize = 32 << 20;

/// Rows of Ŵ [out, in] per band of at most `band_bytes` (at least one row, at most all of them).
fn band_rows(out: usize, inp: usize, entry_bytes: usize, band_bytes: usize) -> usize {
    (band_bytes / (inp.max(1) * entry_bytes)).clamp(1, out.max(1))
}

impl Cuda {
    /// Rows of Ŵ per band, and the band buffer (at most `band_bytes`, sized for the first, fullest band).
    fn bands(&self, host: &Quantized4bit, band_bytes: usize) -> (usize, CudaTensor) {
        let [out, inp] = host.shape;
        let entry = if self.precision == Precision::Bf16 { 2 } else { 4 };
        let rows = band_rows(out, inp, entry, band_bytes);
        (rows, self.product_output(rows, inp)) // a band only products read
    }

    // ANCHOR: forward
    /// x: [T, in], a 4-bit W [out, in], bias: [1, out] → x·Ŵᵀ + b: [T, out], dequantizing at most `band_bytes`
    /// of Ŵ at a time ([`DEFAULT_BAND_BYTES`] from `Backend::linear_4bit`; tests force several bands).
    pub fn linear_4bit_banded(
        &self,
        x: &CudaTensor,
        host: &Quantized4bit,
        p: &CudaPacked,
        bias: Option<&CudaTensor>,
        band_bytes: usize,
    ) -> CudaTensor {
        let [out, inp] = host.shape;
        assert_eq!(x.cols, inp, "linear_4bit: x has {} columns, W has {inp} inputs", x.cols);
        if inp == 0 || out == 0 || x.rows == 0 {
            let mut y = self.zeros(x.rows, out);
            if let Some(b) = bias {
                self.add_bias_rows((b, 0), &mut y, 0, out);
            }
            return y;
        }
        let mut y = self.tensor(x.rows, out);
        self.linear_4bit_into(&mut y, 0, &self.product_operand(x), (host, p), band_bytes, bias);
        y
    }

    /// y[:, at .. at + out] = x·Ŵᵀ (+ bias, added by each band's product), x already in the products'
    /// precision, band by band.
    fn linear_4bit_into(
        &self,
        y: &mut CudaTensor,
        at: usize,
        x_op: &CudaTensor,
        (host, p): (&Quantized4bit, &CudaPacked),
        band_bytes: usize,
        bias: Option<&CudaTensor>,
    ) {
        let out = host.shape[0];
        let (rows, mut band) = self.bands(host, band_bytes);
        for o0 in (0..out).step_by(rows) {
            band.rows = rows.min(out - o0); // the last band may be short
            self.dequantize_rows(host, p, o0, &mut band); // Ŵ[o0 .. o0 + rows, :]
            // y[:, at + o0 .. at + o0 + rows] = x[T, in] · Ŵ[band, :]ᵀ (+ b[o0 .. o0 + rows])
            match bias {
                Some(b) => self.product_with_bias(x_op, &band, (b, o0), y, at + o0),
                None => {
                    blas::gemm_strided(self, Columns::all(x_op), false, Columns::all(&band), true, 1.0, 0.0, y, at + o0)
                }
            }
        }
    }

    /// [`Backend::linear_4bit_stacked`]: each part's bands into its own columns of one [T, Σ outᵢ] output.
    pub fn linear_4bit_stacked_banded(
        &self,
        x: &CudaTensor,
        parts: &[(&Quantized4bit, &CudaPacked)],
        band_bytes: usize,
        read_by: ReadBy,
    ) -> CudaTensor {
        let total = parts.iter().map(|(q, _)| q.shape[0]).sum();
        assert!(parts.iter().all(|(q, _)| q.shape[1] == x.cols), "linear_4bit_stacked: a part's inputs ≠ x's columns");
        let mut y = if x.cols == 0 { self.zeros(x.rows, total) } else { self.output_for(read_by, x.rows, total) };
        if x.cols > 0 {
            let x_op = self.product_operand(x); // one rounding for every part
            let mut at = 0;
            for &(host, p) in parts {
                self.linear_4bit_into(&mut y, at, &x_op, (host, p), band_bytes, None);
                at += host.shape[0];
            }
        }
        y
    }
    // ANCHOR_END: forward

    // ANCHOR: backward
    /// The backward of [`Cuda::linear_4bit_banded`] (a frozen Ŵ has no gradient): dy: [T, out] →
    /// (dx = dy·Ŵ: [T, in], db: [1, out] if `bias_grad`), the bands accumulating into dx in order.
    pub fn linear_4bit_backward_banded(
        &self,
        dy: &CudaTensor,
        host: &Quantized4bit,
        p: &CudaPacked,
        bias_grad: bool,
        band_bytes: usize,
    ) -> (CudaTensor, Option<CudaTensor>) {
        let [out, inp] = host.shape;
        assert_eq!(dy.cols, out, "linear_4bit_backward: dy has {} columns, W has {out} outputs", dy.cols);
        let mut dx = if out == 0 { self.zeros(dy.rows, inp) } else { self.tensor(dy.rows, inp) };
        if inp > 0 && out > 0 {
            self.linear_4bit_backward_into(&mut dx, (&self.product_operand(dy), 0), (host, p), false, band_bytes);
        }
        (dx, bias_grad.then(|| self.column_sum(dy)))
    }

    /// dx (+)= dy[:, at .. at + out]·Ŵ, band by band: written by the first band unless `accumulate` (a later
    /// part of a stack), added to after that. dy already in the products' precision.
    fn linear_4bit_backward_into(
        &self,
        dx: &mut CudaTensor,
        (dy_op, at): (&CudaTensor, usize),
        (host, p): (&Quantized4bit, &CudaPacked),
        accumulate: bool,
        band_bytes: usize,
    ) {
        let out = host.shape[0];
        let (rows, mut band) = self.bands(host, band_bytes);
        for o0 in (0..out).step_by(rows) {
            band.rows = rows.min(out - o0);
            self.dequantize_rows(host, p, o0, &mut band);
            let dy_band = Columns { t: dy_op, start: at + o0, width: band.rows }; // dy[:, at + o0 .. + rows]
            let beta = if o0 == 0 && !accumulate { 0.0 } else { 1.0 };
            // dx[T, in] (+)= dy[:, band] · Ŵ[band, :]
            blas::gemm_strided(self, dy_band, false, Columns::all(&band), false, 1.0, beta, dx, 0);
        }
    }

    /// [`Backend::linear_4bit_stacked_backward`]: every part's bands adding into one dx.
    pub fn linear_4bit_stacked_backward_banded(
        &self,
        dy: &CudaTensor,
        parts: &[(&Quantized4bit, &CudaPacked)],
        band_bytes: usize,
    ) -> CudaTensor {
        let inp = parts.first().map_or(0, |(q, _)| q.shape[1]);
        let total: usize = parts.iter().map(|(q, _)| q.shape[0]).sum();
        assert_eq!(dy.cols, total, "linear_4bit_stacked_backward: dy has {} columns, the parts {total}", dy.cols);
        let mut dx = if total == 0 { self.zeros(dy.rows, inp) } else { self.tensor(dy.rows, inp) };
        if inp > 0 && total > 0 {
            let dy_op = self.product_operand(dy);
            let mut at = 0;
            for &(host, p) in parts.iter().filter(|(q, _)| q.shape[0] > 0) {
                self.linear_4bit_backward_into(&mut dx, (&dy_op, at), (host, p), at > 0, band_bytes);
                at += host.shape[0];
            }
        }
        dx
    }
    // ANCHOR_END: backward
}
