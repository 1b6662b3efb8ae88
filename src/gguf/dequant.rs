//! Dequantization of the float types and the 32-value block quantizations (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
//!
//! A row is cut into blocks of 32 values; each block stores one f16 scale `d` (and, in the `_1` types, an f16
//! offset `m`) followed by 32 small integers `q`. The `_0` types are symmetric, `x ≈ d·(q − z)` with a fixed zero
//! point `z`; the `_1` types are affine, `x ≈ d·q + m`. Every formula here is evaluated in f32 in the same order
//! as llama.cpp and the `gguf` Python package, so the results are identical bit for bit (checked against
//! goldens from `gguf.quants.dequantize`).

use super::ggml_type::GgmlType;
use super::k_quants;
use anyhow::{Result, bail};
use half::f16;

pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

// ANCHOR: dequantize
/// The f32 values of `bytes` stored as `ty` (a whole number of blocks), in storage order.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>> {
    let (block, size) = ty.block();
    if !bytes.len().is_multiple_of(size) {
        bail!("{} bytes are not a whole number of {} blocks of {size} bytes", bytes.len(), ty.name());
    }
    let mut out = vec![0f32; bytes.len() / size * block];
    let kernel: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, y| y[0] = f16_at(b, 0),
        // bf16 is the top half of an f32
        GgmlType::BF16 => |b, y| y[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q2K => k_quants::q2_k,
        GgmlType::Q3K => k_quants::q3_k,
        GgmlType::Q4K => k_quants::q4_k,
        GgmlType::Q5K => k_quants::q5_k,
        GgmlType::Q6K => k_quants::q6_k,
        GgmlType::Q8K => k_quants::q8_k,
        other => bail!(
            "ggml type {} is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, \
             Q4_K, Q5_K, Q6_K, Q8_K)",
            other.name()
        ),
    };
    for (b, y) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(block)) {
        kernel(b, y);
    }
    Ok(out)
}
// ANCHOR_END: dequantize

// ANCHOR: q8_0
/// Q8_0, 34 bytes: `d: f16 | q: [i8; 32]`; `x = q·d`.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, y) in y.iter_mut().enumerate() {
        *y = f32::from(b[2 + j] as i8) * d;
    }
}
// ANCHOR_END: q8_0

// ANCHOR: q4_0
/// Q4_0, 18 bytes: `d: f16 | qs: [u8; 16]`; value j < 16 is the low nibble of `qs[j]`, value j + 16 its high
/// nibble; `x = d·(q − 8)`.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        y[j] = d * ((b[2 + j] & 0xF) as i32 - 8) as f32;
        y[j + 16] = d * ((b[2 + j] >> 4) as i32 - 8) as f32;
    }
}

/// Q4_1, 20 bytes: `d: f16 | m: f16 | qs: [u8; 16]`, nibbles as in Q4_0; `x = d·q + m`.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        y[j] = d * f32::from(b[4 + j] & 0xF) + m;
        y[j + 16] = d * f32::from(b[4 + j] >> 4) + m;
    }
}
// ANCHOR_END: q4_0

// ANCHOR: q5_0
/// Q5_0, 22 bytes: `d: f16 | qh: u32 | qs: [u8; 16]`; the low four bits as in Q4_0, bit j of `qh` is the fifth
/// bit of value j; `x = d·(q − 16)`.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let lo = (b[6 + j] & 0xF) as u32 | ((qh >> j) & 1) << 4;
        let hi = (b[6 + j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * (lo as i32 - 16) as f32;
        y[j + 16] = d * (hi as i32 - 16) as f32;
    }
}
// ANCHOR_END: q5_0

/// Q5_1, 24 bytes: `d: f16 | m: f16 | qh: u32 | qs: [u8; 16]`, bits as in Q5_0; `x = d·q + m`.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let lo = (b[8 + j] & 0xF) as u32 | ((qh >> j) & 1) << 4;
        let hi = (b[8 + j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = d * lo as f32 + m;
        y[j + 16] = d * hi as f32 + m;
    }
}
