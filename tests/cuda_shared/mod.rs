//! What the GPU-vs-CPU test files share (tests/cuda_vs_cpu.rs, tests/cuda_qlora.rs): the device opened once
//! per precision or a skip, seeded random matrices, and the tolerance check relative to the CPU's magnitude.

#![allow(dead_code)] // each includer uses its own subset

use mftcoder::backend::cuda::{Cuda, Precision};
use mftcoder::rng::Rng;
use ndarray::Array2;
use std::sync::OnceLock;

// ANCHOR: gpu_or_skip
/// The device, opened once per precision; None (and one line saying why) without a GPU.
pub fn gpu(precision: Precision) -> Option<&'static Cuda> {
    static F32: OnceLock<Option<Cuda>> = OnceLock::new();
    static BF16: OnceLock<Option<Cuda>> = OnceLock::new();
    let slot = match precision {
        Precision::F32 => &F32,
        Precision::Bf16 => &BF16,
    };
    slot.get_or_init(|| match Cuda::new(0, precision) {
        Ok(cuda) => Some(cuda),
        Err(e) => {
            eprintln!("skipping the GPU comparison: {e}");
            None
        }
    })
    .as_ref()
}

// ANCHOR_END: gpu_or_skip

pub fn matrix(rows: usize, cols: usize, seed: u64, scale: f64) -> Array2<f32> {
    let mut rng = Rng::new(seed);
    Array2::from_shape_fn((rows, cols), |_| (rng.normal() * scale) as f32)
}

#[track_caller]
pub fn assert_close(what: &str, cpu: &Array2<f32>, gpu: &Array2<f32>, tol: f32) {
    assert_eq!(cpu.dim(), gpu.dim(), "{what}: shapes differ");
    let scale = cpu.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let (worst, at) = cpu
        .iter()
        .zip(gpu.iter())
        .enumerate()
        .map(|(i, (a, b))| ((a - b).abs(), i))
        .fold((0.0f32, 0), |m, x| if x.0 > m.0 || x.0.is_nan() { x } else { m });
    assert!(
        worst <= tol * scale,
        "{what}: max |cpu − gpu| = {worst:e} at flat index {at} > {tol:e} · {scale} (cpu {}, gpu {})",
        cpu.iter().nth(at).unwrap(),
        gpu.iter().nth(at).unwrap()
    );
}

// ANCHOR: emulated_rerun
/// The includer's tests again, in a child process on the emulated device (`tests/kernel_emulator/`), where no
/// GPU answered: the passed child run's summary line, printed with every stderr line that contains one of
/// `echo`. `None` in the child run itself, where a real GPU answered, and where the emulator cannot be built
/// (each says why); a failing child run fails the caller.
pub fn rerun_on_the_emulated_device_without_a_gpu(tag: &str, echo: &[&str]) -> Option<String> {
    if super::emulated_device::is_the_emulated_run() {
        return None; // this is the child run
    }
    if gpu(Precision::F32).is_some() {
        eprintln!("a real GPU answered: the emulated run is not needed");
        return None;
    }
    let (stdout, stderr) = super::emulated_device::rerun_on_the_emulated_device(tag)?;
    assert!(!stderr.contains("skipping the GPU comparison"), "the emulated device did not open:\n{stderr}");
    let summary = stdout.lines().find(|l| l.starts_with("test result")).unwrap_or("no summary").to_string();
    eprintln!("emulated device: {summary}");
    for line in stderr.lines().filter(|l| echo.iter().any(|e| l.contains(e))) {
        eprintln!("emulated device: {line}");
    }
    Some(summary)
}
// ANCHOR_END: emulated_rerun
