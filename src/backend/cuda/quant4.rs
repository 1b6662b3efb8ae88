//! QLoRA's frozen base on the GPU: a 4-bit matrix kept on the device in the pieces the host
//! [`Quantized4bit`] keeps (no decoded copy of anything), and the launches of quant4.cu that dequantize a band
//! of its rows, as f32 or bf16, reading a double-quantized absmax where it is stored.

use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, Storage, elementwise_grid, fail, int};
use crate::quant::{Absmax, Quantized4bit};
use cudarc::driver::CudaSlice;

// ANCHOR: cuda_packed
/// A 4-bit matrix in device memory, as bitsandbytes stores it: two codes a byte, the 16-entry code table, and
/// the block scales — plain f32, or double-quantized (decoded by each thread that reads one, never at upload).
pub struct CudaPacked {
    /// `(n + 1) / 2` bytes, element 2k in the high nibble
    packed: CudaSlice<u8>,
    /// the 16 code values (NF4 or FP4)
    code: CudaSlice<f32>,
    scales: Scales,
}

/// The per-block absmax values on the device.
enum Scales {
    /// one f32 per block
    Plain(CudaSlice<f32>),
    /// absmax[b] = nested_map[codes[b]] · nested_absmax[b / 256] + offset
    Double { codes: CudaSlice<u8>, nested_absmax: CudaSlice<f32>, nested_map: CudaSlice<f32>, offset: f32 },
}
// ANCHOR_END: cuda_packed

impl CudaPacked {
    /// Device bytes of every piece: codes, scales (with their double-quantization statistics) and code table.
    pub fn device_bytes(&self) -> usize {
        let scales = match &self.scales {
            Scales::Plain(absmax) => 4 * absmax.len(),
            Scales::Double { codes, nested_absmax, nested_map, offset: _ } => {
                codes.len() + 4 * (nested_absmax.len() + nested_map.len())
            }
        };
        self.packed.len() + 4 * self.code.len() + scales
    }
}

impl Cuda {
    /// Copy a 4-bit matrix's pieces to the device as they are.
    pub(super) fn upload_packed(&self, q: &Quantized4bit) -> CudaPacked {
        let scales = match &q.absmax {
            Absmax::Plain(a) => Scales::Plain(self.to_device(a)),
            Absmax::Double(dq) => Scales::Double {
                codes: self.to_device(&dq.codes),
                nested_absmax: self.to_device(&dq.nested_absmax),
                nested_map: self.to_device(&dq.nested_quant_map),
                offset: dq.offset,
            },
        };
        CudaPacked { packed: self.to_device(&q.packed), code: self.to_device(q.quant_type.code()), scales }
    }

    /// All of Ŵ [out, in] as an f32 temporary (tests, and callers that want the whole matrix).
    pub(super) fn dequantize_packed(&self, host: &Quantized4bit, p: &CudaPacked) -> CudaTensor {
        let [rows, cols] = host.shape;
        let mut w = self.tensor(rows, cols);
        self.dequantize_rows(host, p, 0, &mut w);
        w
    }

    // ANCHOR: dequantize_rows
    /// Rows `row0 .. row0 + band.rows` of Ŵ [out, in] into `band` ([rows, in]), in its storage: f32, or bf16
    /// rounded to nearest even. Bit-identical to the CPU's `dequantize_range_into` (rounded, for bf16).
    pub(super) fn dequantize_rows(&self, host: &Quantized4bit, p: &CudaPacked, row0: usize, band: &mut CudaTensor) {
        let [out, inp] = host.shape;
        assert!(band.cols == inp && row0 + band.rows <= out, "dequantize_rows: band outside the matrix");
        let n = band.rows * band.cols;
        let (start, count, bs) = ((row0 * inp) as i64, n as i64, int(host.blocksize, "blocksize"));
        let grid = elementwise_grid(n);
        let (packed, code) = (&p.packed, &p.code);
        match (&p.scales, band.storage_mut()) {
            (Scales::Plain(absmax), Storage::F32(w)) => {
                launch!(self, "dequantize_4bit", grid, w, packed, absmax, code, &start, &count, &bs)
            }
            (Scales::Plain(absmax), Storage::Bf16(w)) => {
                launch!(self, "dequantize_4bit_bf16", grid, w, packed, absmax, code, &start, &count, &bs)
            }
            (Scales::Double { codes, nested_absmax, nested_map, offset }, Storage::F32(w)) => launch!(
                self,
                "dequantize_4bit_dq",
                grid,
                w,
                packed,
                codes,
                nested_absmax,
                nested_map,
                offset,
                code,
                &start,
                &count,
                &bs
            ),
            (Scales::Double { codes, nested_absmax, nested_map, offset }, Storage::Bf16(w)) => launch!(
                self,
                "dequantize_4bit_dq_bf16",
                grid,
                w,
                packed,
                codes,
                nested_absmax,
                nested_map,
                offset,
                code,
                &start,
                &count,
                &bs
            ),
            (_, Storage::Master { .. }) => fail("dequantize_rows", "a band is a fresh f32 or bf16 tensor"),
        }
    }
    // ANCHOR_END: dequantize_rows
}
