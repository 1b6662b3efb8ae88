//! FP4, the other 4-bit codebook of bitsandbytes: a tiny float with 1 sign, 2 exponent and 1 mantissa bit.
//!
//! Bit 3 is the sign; the low three bits decode to `0, 0.0625, 8, 12, 4, 6, 2, 3` (a subnormal zero and
//! 0.0625, then exponent/mantissa pairs), and the whole table is divided by its largest magnitude, 12, in f32
//! (`get_4bit_type("fp4")`). Unlike NF4 the codes are not sorted, so bitsandbytes' torch backend sorts them
//! (`argsort`), finds the nearest sorted entry with midpoints exactly as for NF4, and maps the position back to
//! the bit pattern. Python writes the table as `[0, 0.0625, …, -0, -0.0625, …]`, and `-0` is the *integer*
//! zero, so 0b1000 is +0.0 as well. `argsort` puts 0b0000 ahead of 0b1000: zero and negative values up to
//! the midpoint encode as 0b0000, tiny positive values (0, 0.0026] as 0b1000. Both decode to +0.

/// The raw FP4 values, by bit pattern, before normalisation (0b1000 is +0: bitsandbytes writes the integer `-0`).
const RAW: [f32; 16] = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0];

// ANCHOR: fp4_code
/// The FP4 code values, indexed by the 4-bit code: `RAW / 12` in f32.
pub const CODE: [f32; 16] = {
    let mut c = [0.0f32; 16];
    let mut i = 0;
    while i < 16 {
        c[i] = RAW[i] / 12.0;
        i += 1;
    }
    c
};

/// The codes in ascending order of value, as `torch.argsort` returns them (0b0000 before the tied 0b1000).
pub const ORDER: [u8; 16] = [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3];
// ANCHOR_END: fp4_code

/// The 15 midpoints between neighbouring sorted codes, in f32.
pub const THRESHOLDS: [f32; 15] = super::nf4::midpoints(&{
    let mut s = [0.0f32; 16];
    let mut i = 0;
    while i < 16 {
        s[i] = CODE[ORDER[i] as usize];
        i += 1;
    }
    s
});

/// The code of a scaled value `s ∈ [-1, 1]`: bucketize against the sorted table, then map back.
#[inline]
pub fn encode(s: f32) -> u8 {
    let rank: u8 = THRESHOLDS.iter().map(|&t| (t < s) as u8).sum();
    ORDER[rank as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_sorts_the_table_and_the_sign_is_bit_three() {
        let sorted: Vec<f32> = ORDER.iter().map(|&i| CODE[i as usize]).collect();
        assert!(sorted.windows(2).all(|w| w[0] <= w[1]));
        for i in 0..8 {
            assert_eq!(CODE[i + 8], -CODE[i]);
        }
        assert_eq!((CODE[3], CODE[11], CODE[1]), (1.0, -1.0, 0.0625 / 12.0));
    }

    #[test]
    fn codes_encode_to_themselves_and_ties_go_down() {
        for (i, &c) in CODE.iter().enumerate() {
            let want = if i == 8 { 0 } else { i as u8 }; // 0b1000 is also 0.0, and 0b0000 sorts first
            assert_eq!(encode(c), want, "code {i}");
        }
        assert_eq!(encode(-0.0), 0);
        assert_eq!(encode(f32::MIN_POSITIVE), 8); // above the zero-zero midpoint: the second zero
        // On a midpoint: the lower of the two sorted neighbours.
        for (r, &t) in THRESHOLDS.iter().enumerate() {
            assert_eq!(encode(t), ORDER[r]);
            assert_eq!(encode(t.next_up()), ORDER[r + 1]);
        }
    }
}
