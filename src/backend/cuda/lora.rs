//! LoRA's branch on the GPU (`Backend::lora_forward_into`, `lora_backward_into`; the CPU composes the same
//! math from `linear`, `scale` and adds): cuBLAS computes C = α·op(A)·op(B) + β·C, so the scale s goes into α
//! and "add the branch to what is there" into β = 1. No scaled copy of dy, no temporary for B·(A·x), no add:
//! four products forward and backward that would have been eight launches. Under mixed precision each
//! activation a product reads twice is rounded to bf16 once (`product_operand`), not once per product, and
//! h = x·Aᵀ and ∂L/∂h, which only products read, come out of cuBLAS in bf16 (`product_output`): no rounding
//! launch at all, and half the bytes for the h kept for the backward.
//! Dropout draws its mask inside the multiply (`dropout_apply`, `dropout_add` in random.cu).

use super::blas::{self, Columns};
use super::{Cuda, CudaTensor, LaunchConfig, Precision, PushKernelArg, Storage, elementwise_grid, fail};
use std::borrow::Cow;

impl Cuda {
    // ANCHOR: product_operand
    /// The tensor the products read: under bf16 an f32 activation rounded once, here, for all its products.
    pub(super) fn product_operand<'a>(&self, x: &'a CudaTensor) -> Cow<'a, CudaTensor> {
        match (self.precision, x.storage()) {
            (Precision::Bf16, Storage::F32(_)) => Cow::Owned(self.bf16_copy(x)),
            _ => Cow::Borrowed(x),
        }
    }
    // ANCHOR_END: product_operand

    // ANCHOR: cuda_lora_forward
    /// y[:, at .. at + out] += s·(x·Aᵀ)·Bᵀ → h = x·Aᵀ [T, r]. Two products, the second accumulating into y's
    /// columns in place (the leading dimension is y's whole row: a part of a stacked output is no copy).
    pub(super) fn lora_forward(
        &self,
        y: &mut CudaTensor,
        at: usize,
        x: &CudaTensor,
        a: &CudaTensor,
        b: &CudaTensor,
        s: f32,
    ) -> CudaTensor {
        assert_eq!(x.cols, a.cols, "lora_forward: x has {} columns, A has {} inputs", x.cols, a.cols);
        assert_eq!(b.cols, a.rows, "lora_forward: B's rank {} is not A's {}", b.cols, a.rows);
        assert!(at + b.rows <= y.cols, "lora_forward: columns {at}..{} of a [T, {}] output", at + b.rows, y.cols);
        let mut h = self.product_output(x.rows, a.rows);
        blas::gemm(self, x, false, a, true, 1.0, 0.0, &mut h); // h[T, r] = x·Aᵀ
        // a strided product reads its operands as stored: both in the products' precision
        let (h_operand, b_operand) = (self.product_operand(&h), self.product_operand(b));
        let (h_all, b_all) = (Columns::all(&h_operand), Columns::all(&b_operand));
        blas::gemm_strided(self, h_all, false, b_all, true, s, 1.0, y, at); // y[T, at..at+out] += s·h·Bᵀ
        h
    }
    // ANCHOR_END: cuda_lora_forward

    // ANCHOR: cuda_lora_backward
    /// dx [T, in] += s·(dy·B)·A → (∂L/∂A [r, in], ∂L/∂B [out, r]), dy read from columns `at .. at + out` of
    /// the given tensor. Four products, s in two of their α, the last accumulating into dx (three without a
    /// dx); dy is rounded once for its products, and ∂L/∂h (like h) comes out of its product in bf16.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lora_backward(
        &self,
        dx: Option<&mut CudaTensor>,
        (dy, at): (&CudaTensor, usize),
        x: &CudaTensor,
        h: &CudaTensor,
        a: &CudaTensor,
        b: &CudaTensor,
        s: f32,
    ) -> (CudaTensor, CudaTensor) {
        assert!(dy.rows == x.rows && at + b.rows <= dy.cols, "lora_backward: dy has no [T, out] at column {at}");
        assert_eq!((h.rows, h.cols), (x.rows, a.rows), "lora_backward: h is not [T, r]");
        let (dy, h_operand, b_operand) = (self.product_operand(dy), self.product_operand(h), self.product_operand(b));
        let dy_part = Columns { t: &dy, start: at, width: b.rows };
        let (h_all, b_all) = (Columns::all(&h_operand), Columns::all(&b_operand));
        let mut db = self.tensor(b.rows, b.cols);
        blas::gemm_strided(self, dy_part, true, h_all, false, s, 0.0, &mut db, 0); // ∂L/∂B [out, r] = s·dyᵀ·h
        let mut dh = self.product_output(h.rows, h.cols);
        blas::gemm_strided(self, dy_part, false, b_all, false, s, 0.0, &mut dh, 0); // ∂L/∂h [T, r] = s·dy·B
        let mut da = self.tensor(a.rows, a.cols);
        blas::gemm(self, &dh, true, x, false, 1.0, 0.0, &mut da); // ∂L/∂A [r, in] = (∂L/∂h)ᵀ·x
        if let Some(dx) = dx {
            blas::gemm(self, &dh, false, a, false, 1.0, 1.0, dx); // dx [T, in] += (∂L/∂h)·A
        }
        (da, db)
    }
    // ANCHOR_END: cuda_lora_backward

    /// x ∘ m, the mask m of `dropout_mask(rows, cols, p, seed)` drawn in the multiply. Only A's products read
    /// x̃: it comes out in their storage, from an x in f32 or (a product-only norm output) in bf16.
    pub(super) fn dropout_apply(&self, x: &CudaTensor, p: f32, seed: u64) -> CudaTensor {
        assert!((0.0..1.0).contains(&p), "dropout probability {p} is not in [0, 1)");
        let mut out = self.product_output(x.rows, x.cols);
        self.bf16_input_has_bf16_output(x, &out, "dropout");
        let kernel = match (x.is_bf16(), out.is_bf16()) {
            (false, false) => "dropout_apply",
            (false, true) => "dropout_apply_to_bf16",
            (true, _) => "dropout_apply_bf16",
        };
        let (threshold, keep) = crate::backend::dropout_threshold(p);
        let n = x.len() as i64;
        let grid = elementwise_grid(x.len());
        launch!(self, kernel, grid, out.storage_mut(), x.storage(), &n, &seed, &threshold, &keep);
        out
    }

    /// dx += g ∘ m, the same m.
    pub(super) fn dropout_add(&self, dx: &mut CudaTensor, g: &CudaTensor, p: f32, seed: u64) {
        Self::same_shape(dx, g, "dropout_add");
        let (threshold, keep) = crate::backend::dropout_threshold(p);
        let n = g.len() as i64;
        launch!(self, "dropout_add", elementwise_grid(g.len()), dx.f32_mut(), g.f32(), &n, &seed, &threshold, &keep);
    }
}
