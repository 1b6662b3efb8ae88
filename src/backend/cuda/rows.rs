//! Rows moved on the GPU: gathered by id (the embedding lookup, which a mixture of experts also uses to collect
//! each expert's tokens) and scattered back by atomic adds, sliced, written in place, joined, and the same
//! entries viewed as another shape. Slices keep the tensor's storage, so a bf16 tensor stays bf16.

use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, Storage, elementwise_grid, fail, int};
use crate::backend::Backend;

impl Cuda {
    /// table [V, H] (f32, or a frozen one in bf16), ids [T] → its rows [T, H] in f32.
    pub(super) fn gather_rows(&self, table: &CudaTensor, ids: &[u32]) -> CudaTensor {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= table.rows) {
            panic!("embedding: token id {bad} is outside the vocabulary of {}", table.rows);
        }
        let dev_ids = self.ids_on_device(ids);
        let mut out = self.tensor(ids.len(), table.cols);
        let (t, h) = (int(ids.len(), "tokens"), int(table.cols, "hidden"));
        let grid = elementwise_grid(ids.len() * table.cols);
        match table.storage() {
            Storage::F32(rows) | Storage::Master { f32: rows, .. } => {
                launch!(self, "embedding", grid, out.f32_mut(), rows, &dev_ids, &t, &h)
            }
            Storage::Bf16(rows) => launch!(self, "embedding_bf16", grid, out.f32_mut(), rows, &dev_ids, &t, &h),
        }
        out
    }

    /// dy [T, H] → the table's gradient [vocab, H]: row ids[t] gets dy[t] added.
    pub(super) fn gather_rows_backward(&self, dy: &CudaTensor, ids: &[u32], vocab: usize) -> CudaTensor {
        assert_eq!(dy.rows, ids.len(), "embedding_backward: one id per row of dy");
        let dev_ids = self.ids_on_device(ids);
        let mut dtable = self.zeros(vocab, dy.cols);
        let (t, h) = (int(ids.len(), "tokens"), int(dy.cols, "hidden"));
        launch!(self, "embedding_backward", elementwise_grid(dy.len()), dtable.f32_mut(), dy.f32(), &dev_ids, &t, &h);
        dtable
    }

    /// [a; b]
    pub(super) fn rows_of_both(&self, a: &CudaTensor, b: &CudaTensor) -> CudaTensor {
        assert_eq!(a.cols, b.cols, "concat_rows: column counts differ");
        let mut out = self.tensor(a.rows + b.rows, a.cols);
        let (n_a, n_b) = (a.len() as i64, b.len() as i64);
        launch!(self, "concat_rows", elementwise_grid(out.len()), out.f32_mut(), a.f32(), &n_a, b.f32(), &n_b);
        out
    }

    /// The same entries as [rows, cols] (a copy: a pooled buffer has one owner).
    pub(super) fn reshaped(&self, t: &CudaTensor, rows: usize, cols: usize) -> CudaTensor {
        assert_eq!(t.len(), rows * cols, "reshape: [{}, {}] into [{rows}, {cols}]", t.rows, t.cols);
        let mut out = self.tensor(rows, cols);
        self.stream.memcpy_dtod(&**t.f32(), &mut **out.f32_mut()).unwrap_or_else(|e| fail("copy", e));
        out
    }

    /// Rows start..end, in the tensor's own storage.
    pub(super) fn rows_of(&self, t: &CudaTensor, start: usize, end: usize) -> CudaTensor {
        assert!(start <= end && end <= t.rows, "slice_rows: {start}..{end} of {} rows", t.rows);
        let (rows, entries) = (end - start, start * t.cols..end * t.cols);
        // a product-only bf16 tensor (the final norm's output, sliced by the chunked head) stays bf16
        let mut out = if t.is_bf16() { self.bf16_tensor(rows, t.cols) } else { self.tensor(rows, t.cols) };
        if rows > 0 {
            let copied = match (t.storage(), out.storage_mut()) {
                (Storage::Bf16(src), Storage::Bf16(dst)) => {
                    self.stream.memcpy_dtod(&src.slice(entries), &mut dst.slice_mut(0..rows * t.cols))
                }
                (_, dst) => {
                    let Storage::F32(dst) = dst else { unreachable!("an f32 output for an f32 tensor") };
                    self.stream.memcpy_dtod(&t.f32().slice(entries), &mut dst.slice_mut(0..rows * t.cols))
                }
            };
            copied.unwrap_or_else(|e| fail("copy", e));
        }
        out
    }

    /// Rows start..start + N of dst become src's, in place.
    pub(super) fn rows_into(&self, dst: &mut CudaTensor, start: usize, src: &CudaTensor) {
        assert_eq!(dst.cols, src.cols, "write_rows: column counts differ");
        assert!(start + src.rows <= dst.rows, "write_rows: {} rows at {start} into {}", src.rows, dst.rows);
        if src.rows > 0 {
            let at = start * dst.cols..(start + src.rows) * dst.cols;
            self.stream
                .memcpy_dtod(&src.f32().slice(0..src.len()), &mut dst.f32_mut().slice_mut(at))
                .unwrap_or_else(|e| fail("copy", e));
        }
    }
}
