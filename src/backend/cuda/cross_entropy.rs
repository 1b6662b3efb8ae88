//! Cross-entropy on the GPU (cross_entropy.cu; `nn::cross_entropy` on the CPU): one block per row, the
//! per-row losses left on the device for the step's report (`optim.rs`), the targets and weights uploaded once
//! per distinct content.

use super::{Cuda, CudaTensor, LaunchConfig, PushKernelArg, fail, int, row_grid};

impl Cuda {
    // ANCHOR: cross_entropy_on_device
    /// → (losses [T, 1], dlogits [T, V] = wₜ·(softmax(zₜ) − onehot(yₜ)))
    pub(super) fn cross_entropy_rows(
        &self,
        logits: &CudaTensor,
        targets: &[u32],
        weights: &[f32],
    ) -> (CudaTensor, CudaTensor) {
        assert_eq!(targets.len(), logits.rows, "cross_entropy: one target per row of logits");
        assert_eq!(weights.len(), logits.rows, "cross_entropy: one weight per row of logits");
        if let Some(&bad) = targets.iter().find(|&&y| y as usize >= logits.cols) {
            panic!("cross_entropy: target {bad} is outside the vocabulary of {}", logits.cols);
        }
        let (dev_targets, dev_weights) = (self.ids_on_device(targets), self.floats_on_device(weights));
        let mut losses = self.tensor(logits.rows, 1);
        let mut dlogits = self.tensor(logits.rows, logits.cols);
        let vocab = int(logits.cols, "vocab");
        launch!(
            self,
            "cross_entropy",
            row_grid(logits.rows),
            losses.f32_mut(),
            dlogits.f32_mut(),
            logits.f32(),
            &dev_targets,
            &dev_weights,
            &vocab
        );
        (losses, dlogits) // the losses stay on the device until the step's report (`optim.rs`)
    }
    // ANCHOR_END: cross_entropy_on_device
}
