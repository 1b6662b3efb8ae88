//! The K-quants: super-blocks of 256 values in 8 or 16 sub-blocks, each sub-block with its own small integer
//! scale (and minimum), those scales themselves quantized against one f16 `d` (and `dmin`) per super-block.
//!
//! Why they exist: a 32-value block with an f16 scale spends 16 bits of scale on 32 values (0.5 bit per
//! value; Q4_0 is 4.5 bits per weight). Storing the sub-block scales in 6 bits (Q4_K, Q5_K) or 8 bits (Q6_K)
//! and only two f16 per 256 values keeps the scale overhead near 0.4 bit while letting every 32 (or 16)
//! values have their own range: Q4_K is 4.5 bits per weight like Q4_0 but with an affine scale and min per
//! 32 values, and clearly lower error. The formulas follow llama.cpp's `dequantize_row_q*_K` and evaluate in
//! f32 in the same order, so they match the `gguf` Python package bit for bit.

use super::dequant::f16_at;

// ANCHOR: scale_min_k4
/// The eight 6-bit (scale, min) pairs of Q4_K / Q5_K, packed in 12 bytes:
/// ```text
/// bytes 0-3:  ss ssssss   scale j (j < 4) in the low 6 bits; top 2 bits: high bits of scale j + 4
/// bytes 4-7:  mm mmmmmm   min j (j < 4) in the low 6 bits;   top 2 bits: high bits of min j + 4
/// bytes 8-11: mmmm ssss   low 4 bits of scale j + 4 and of min j + 4
/// ```
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}
// ANCHOR_END: scale_min_k4

// ANCHOR: q4_k
/// Q4_K, 144 bytes: `d: f16 | dmin: f16 | scales: [u8; 12] | qs: [u8; 128]`. Sub-block j (32 values) has
/// scale `d·sc_j` and min `dmin·m_j`; its 4-bit values are the low nibbles of `qs[32·(j/2)..][..32]` for even
/// j and the high nibbles for odd j; `x = (d·sc_j)·q − dmin·m_j`.
pub(super) fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let (scale, min) = (d * f32::from(sc), dmin * f32::from(m));
        let shift = 4 * (j % 2);
        for l in 0..32 {
            let q = (qs[32 * (j / 2) + l] >> shift) & 0xF;
            y[32 * j + l] = scale * f32::from(q) - min;
        }
    }
}
// ANCHOR_END: q4_k

/// Q5_K, 176 bytes: `d | dmin | scales: [u8; 12] | qh: [u8; 32] | qs: [u8; 128]`: Q4_K's layout plus a fifth
/// bit per value, bit j of `qh[l]` for value l of sub-block j; `x = (d·sc_j)·q − dmin·m_j`.
pub(super) fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let (scale, min) = (d * f32::from(sc), dmin * f32::from(m));
        let shift = 4 * (j % 2);
        for l in 0..32 {
            let q = ((qs[32 * (j / 2) + l] >> shift) & 0xF) | (((qh[l] >> j) & 1) << 4);
            y[32 * j + l] = scale * f32::from(q) - min;
        }
    }
}

// ANCHOR: q6_k
/// Q6_K, 210 bytes: `ql: [u8; 128] | qh: [u8; 64] | scales: [i8; 16] | d: f16`; 16 sub-blocks of 16 values
/// with 8-bit signed scales. Each half (128 values) takes 64 bytes of `ql` and 32 of `qh`: value 32·s + l
/// (s < 4, l < 32) has low nibble `ql[l + 32·(s % 2)] >> 4·(s / 2)` and high two bits `qh[l] >> 2·s`;
/// `x = (d·scale) · (q − 32)`.
pub(super) fn q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, scales, d) = (&b[0..128], &b[128..192], &b[192..208], f16_at(b, 208));
    for half in 0..2 {
        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
        for s in 0..4 {
            for l in 0..32 {
                let lo = (ql[l + 32 * (s % 2)] >> (4 * (s / 2))) & 0xF;
                let hi = (qh[l] >> (2 * s)) & 3;
                let e = 128 * half + 32 * s + l;
                let scale = d * f32::from(scales[e / 16] as i8);
                y[e] = scale * f32::from(((lo | (hi << 4)) as i8) - 32);
            }
        }
    }
}
// ANCHOR_END: q6_k

/// Q8_K, 292 bytes: `d: f32 | qs: [i8; 256] | bsums: [i16; 16]` (the block sums serve llama.cpp's dot
/// products only); `x = d·q`. llama.cpp uses it for activations, rarely for stored weights.
pub(super) fn q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (j, y) in y.iter_mut().enumerate() {
        *y = d * f32::from(b[4 + j] as i8);
    }
}

/// Q2_K, 84 bytes: `scales: [u8; 16] | qs: [u8; 64] | d: f16 | dmin: f16`; 16 sub-blocks of 16 values, each
/// scale byte a 4-bit scale (low) and a 4-bit min (high); 2-bit values, four per byte: value 32·s + l of
/// half h is `qs[32·h + l] >> 2·s`; `x = (d·sc)·q − dmin·m`.
pub(super) fn q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs, d, dmin) = (&b[0..16], &b[16..80], f16_at(b, 80), f16_at(b, 82));
    for (e, y) in y.iter_mut().enumerate() {
        let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
        let sc = scales[e / 16];
        let q = (qs[32 * h + l] >> (2 * s)) & 3;
        *y = (d * f32::from(sc & 0xF)) * f32::from(q) - dmin * f32::from(sc >> 4);
    }
}

/// Q3_K, 110 bytes: `hmask: [u8; 32] | qs: [u8; 64] | scales: [u8; 12] | d: f16`; 16 sub-blocks with 6-bit
/// signed scales (low nibbles in bytes 0-7, high pairs in 8-11, minus 32); 2 low bits as in Q2_K, and a
/// third bit, bit e / 32 of `hmask[e % 32]`, that when *clear* subtracts 4; `x = (d·sc)·q`.
pub(super) fn q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, scales, d) = (&b[0..32], &b[32..96], &b[96..108], f16_at(b, 108));
    for (e, y) in y.iter_mut().enumerate() {
        let g = e / 16;
        let low = (scales[g % 8] >> (4 * (g / 8))) & 0xF;
        let high = (scales[8 + g % 4] >> (2 * (g / 4))) & 3;
        let sc = ((low | (high << 4)) as i8 - 32) as f32;
        let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
        let ql = ((qs[32 * h + l] >> (2 * s)) & 3) as i8;
        let borrow = (((hmask[l] >> (e / 32)) & 1) ^ 1) as i8;
        *y = (d * sc) * f32::from(ql - (borrow << 2));
    }
}
