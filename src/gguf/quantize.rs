//! Quantization for export: Q8_0 and Q4_K, llama.cpp's reference algorithms (`quantize_row_q8_0_ref`,
//! `quantize_row_q4_K_ref` in ggml-quants.c), evaluated in f32 in the same order so the bytes match.

use super::ggml_type::QK_K;
use super::k_quants::scale_min_k4;
use half::f16;

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes() // round to nearest even, as GGML_FP32_TO_FP16
}

// ANCHOR: quantize_q8_0
/// Q8_0: per 32 values, `d = amax / 127` and `q = round(x / d)` (half away from zero), `d` stored as f16.
/// The integers use the f32 `d`, not the rounded f16 one, as llama.cpp does.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    assert!(x.len().is_multiple_of(32), "Q8_0 rows are whole blocks of 32");
    let mut out = Vec::with_capacity(x.len() / 32 * 34);
    for block in x.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16_bytes(d));
        out.extend(block.iter().map(|&v| (v * id).round() as i8 as u8));
    }
    out
}
// ANCHOR_END: quantize_q8_0

/// llama.cpp's `nearest_int`: round half to even (its float trick, for |x| < 2²²).
fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

// ANCHOR: make_qkx2_quants
/// The scale and min of one 32-value sub-block for `nmax + 1` levels (`make_qkx2_quants`): start from the
/// block's range, then try 21 slightly different scales, each followed by the weighted least-squares fit of
/// (scale, min) to the levels it picks, and keep the one with the smallest weighted squared error. Returns
/// (scale, −min) and writes the levels into `levels`.
fn best_scale_min(x: &[f32], weights: &[f32], nmax: u8, levels: &mut [u8]) -> (f32, f32) {
    let (rmin, rdelta, nstep) = (-1.0f32, 0.1f32, 20);
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (weights[0], weights[0] * x[0]);
    for i in 1..x.len() {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let level = |v: f32, iscale: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, nmax as i32) as u8;
    let mut iscale = f32::from(nmax) / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..x.len() {
        levels[i] = level(x[i], iscale, min);
        let diff = scale * f32::from(levels[i]) + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut trial = [0u8; 32];
    for step in 0..=nstep {
        iscale = (rmin + rdelta * step as f32 + f32::from(nmax)) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..x.len() {
            trial[i] = level(x[i], iscale, min);
            let (w, l) = (weights[i], f32::from(trial[i]));
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut error = 0f32;
            for i in 0..x.len() {
                let diff = this_scale * f32::from(trial[i]) + this_min - x[i];
                error += weights[i] * (diff * diff);
            }
            if error < best_error {
                levels.copy_from_slice(&trial[..x.len()]);
                best_error = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}
// ANCHOR_END: make_qkx2_quants

// ANCHOR: quantize_q4_k
/// Q4_K: per 256 values, eight sub-blocks of 32, each fitted its own (scale, min) by [`best_scale_min`]
/// (weights |x| + rms of the sub-block, so large values count more); the eight scales and eight mins are
/// quantized to 6 bits against the super-block's largest (`d = max_scale / 63`, `dmin = max_min / 63`, f16),
/// and every value is re-quantized against the scale it will really be read back with.
pub fn quantize_q4_k(x: &[f32]) -> Vec<u8> {
    assert!(x.len().is_multiple_of(QK_K), "Q4_K rows are whole blocks of 256");
    let mut out = Vec::with_capacity(x.len() / QK_K * 144);
    for x in x.chunks_exact(QK_K) {
        let mut levels = [0u8; QK_K];
        let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
        for j in 0..8 {
            let sub = &x[32 * j..32 * (j + 1)];
            let sum_x2 = sub.iter().fold(0f32, |s, v| s + v * v);
            let av_x = (sum_x2 / 32.0).sqrt();
            let weights: Vec<f32> = sub.iter().map(|v| av_x + v.abs()).collect();
            (scales[j], mins[j]) = best_scale_min(sub, &weights, 15, &mut levels[32 * j..32 * (j + 1)]);
        }
        let max_scale = scales.iter().fold(0f32, |m, &s| if s > m { s } else { m });
        let max_min = mins.iter().fold(0f32, |m, &s| if s > m { s } else { m });
        let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut packed = [0u8; 12];
        for j in 0..8 {
            // C stores nearest_int into a uint8_t before clamping: the same wrap here
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                packed[j] = ls;
                packed[j + 4] = lm;
            } else {
                packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                packed[j - 4] |= (ls >> 4) << 6;
                packed[j] |= (lm >> 4) << 6;
            }
        }
        let (d, dmin) = (f16_bytes(max_scale / 63.0), f16_bytes(max_min / 63.0));
        let (d_f, dmin_f) = (f16::from_le_bytes(d).to_f32(), f16::from_le_bytes(dmin).to_f32());
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &packed);
            let dj = d_f * f32::from(sc);
            if dj == 0.0 {
                continue; // the sub-block keeps the levels its fit chose
            }
            let dm = dmin_f * f32::from(m);
            for i in 0..32 {
                levels[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dj).clamp(0, 15) as u8;
            }
        }
        out.extend(d);
        out.extend(dmin);
        out.extend(packed);
        for chunk in (0..QK_K).step_by(64) {
            out.extend((0..32).map(|l| levels[chunk + l] | (levels[chunk + l + 32] << 4)));
        }
    }
    out
}
// ANCHOR_END: quantize_q4_k
