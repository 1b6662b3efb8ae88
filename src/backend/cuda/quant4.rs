//! QLoRA's frozen base on the GPU: the launches of quant4.cu (`quant` on the CPU): a double-quantized absmax
//! decoded once at upload, and each weight dequantized into a temporary for one product.

use super::{Cuda, CudaPacked, CudaTensor, LaunchConfig, PushKernelArg, elementwise_grid, fail, int};
use crate::quant::{Absmax, Quantized4bit};

impl Cuda {
    /// A 4-bit matrix's packed codes, absmax (a double-quantized one decoded on the device) and code table.
    pub(super) fn upload_packed(&self, q: &Quantized4bit) -> CudaPacked {
        let packed = self.to_device(&q.packed);
        let code = self.to_device(q.quant_type.code());
        let absmax = match &q.absmax {
            Absmax::Plain(a) => self.to_device(a),
            Absmax::Double(dq) => {
                let codes = self.to_device(&dq.codes);
                let nested = self.to_device(&dq.nested_absmax);
                let map = self.to_device(&dq.nested_quant_map);
                let mut absmax = self.to_device(&vec![0.0f32; dq.codes.len()]); // kept with the model, not pooled
                let blocks = int(dq.codes.len(), "blocks");
                launch!(
                    self,
                    "decode_double_quant",
                    elementwise_grid(dq.codes.len()),
                    &mut absmax,
                    &codes,
                    &nested,
                    &map,
                    &dq.offset,
                    &blocks
                );
                absmax
            }
        };
        CudaPacked { packed, absmax, code }
    }
    /// W [out, in] of a 4-bit matrix, decoded into a temporary.
    pub(super) fn dequantize_packed(&self, host: &Quantized4bit, p: &CudaPacked) -> CudaTensor {
        let [rows, cols] = host.shape;
        let mut w = self.tensor(rows, cols);
        let (n, blocksize) = ((rows * cols) as i64, int(host.blocksize, "blocksize"));
        launch!(
            self,
            "dequantize_4bit",
            elementwise_grid(rows * cols),
            w.f32_mut(),
            &p.packed,
            &p.absmax,
            &p.code,
            &n,
            &blocksize
        );
        w
    }
}
