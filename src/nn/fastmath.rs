//! `exp` for f32 written so the compiler can vectorise it (libm's `expf` is an opaque call per element).
//!
//! exp(x) = 2ⁿ · e^r with n = round(x / ln 2) and r = x − n·ln 2 ∈ [−ln2/2, ln2/2]. e^r comes from its Taylor
//! series to r⁷ (truncation error below 5·10⁻⁹ relative on that interval) in Horner form, and 2ⁿ is built
//! directly in the exponent bits. Accuracy: within 2 ulp of the correctly rounded result over the normal range
//! (tested below against f64); exp(x) = 0 for x < −87.3 (so exp(−∞) = 0, as masking needs), +∞ above 88.7.

// ANCHOR: fast_exp
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75; // ln 2 split in two so n·LN2_HI is exact for |n| < 2¹²
    const LN2_LO: f32 = 1.428_606_8e-6;
    let clamped = x.clamp(-87.3, 88.7);
    // round to nearest by adding and subtracting 1.5·2²³ (exact for |v| < 2²²): no libm call, so it vectorises
    const ROUND: f32 = 12_582_912.0;
    let n = (clamped * LOG2E + ROUND) - ROUND;
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = p * two_n;
    if x < -87.3 {
        0.0
    } else if x > 88.7 {
        f32::INFINITY
    } else {
        y
    }
}
// ANCHOR_END: fast_exp

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_two_ulp_of_the_true_value() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp() as f32;
            let got = exp(x);
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() as u32;
            worst = worst.max(ulps);
            x += 0.001_7;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
    }
}
