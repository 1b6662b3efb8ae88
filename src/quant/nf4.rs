//! NF4, the 4-bit NormalFloat codebook of QLoRA, as bitsandbytes stores it.
//!
//! Sixteen values chosen so that each holds an equal share of a standard normal distribution, normalised to
//! [-1, 1]: bitsandbytes builds them with `create_normal_map(offset=0.9677083, use_extra_value=True)` — eight
//! positive quantiles `Φ⁻¹(linspace(0.9677083, 0.5, 9)[:-1])`, seven negative ones and an exact zero, all divided
//! by the largest — and then hard-codes the result. The table is asymmetric: seven negative codes, one zero,
//! eight positive codes, so both -1 and +1 are exact.
//!
//! A weight block is scaled by `1/absmax` into [-1, 1] (see [`super`]); each scaled value `s` gets the code whose
//! value is nearest. bitsandbytes decides "nearest" with the midpoints between neighbouring codes, computed in
//! f32 as `(c[i] + c[i+1]) / 2`, and `torch.bucketize(s, midpoints)`: the code is the number of midpoints
//! strictly below `s`, so a value exactly on a midpoint goes to the lower code (the CUDA decision tree agrees:
//! strict `x > t` goes up).

// ANCHOR: nf4_code
/// The NF4 code values, indexed by the 4-bit code (`bitsandbytes.functional.get_4bit_type("nf4")`).
#[allow(clippy::excessive_precision)] // bitsandbytes' digits, kept verbatim (each is exactly an f32)
pub const CODE: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];
// ANCHOR_END: nf4_code

/// The 15 decision thresholds: f32 midpoints of neighbouring codes (the table is sorted).
pub const THRESHOLDS: [f32; 15] = midpoints(&CODE);

/// `(c[i] + c[i+1]) / 2` in f32, as `(code[:-1] + code[1:]) / 2` computes it in torch.
pub(crate) const fn midpoints(sorted: &[f32; 16]) -> [f32; 15] {
    let mut m = [0.0f32; 15];
    let mut i = 0;
    while i < 15 {
        m[i] = (sorted[i] + sorted[i + 1]) / 2.0;
        i += 1;
    }
    m
}

// ANCHOR: nf4_encode
/// The code of a scaled value `s ∈ [-1, 1]`: how many thresholds lie strictly below it
/// (`torch.bucketize(s, thresholds, right=False)`).
#[inline]
pub fn encode(s: f32) -> u8 {
    THRESHOLDS.iter().map(|&t| (t < s) as u8).sum()
}
// ANCHOR_END: nf4_encode

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_asymmetric_and_spans_minus_one_to_one() {
        assert!(CODE.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((CODE[0], CODE[7], CODE[15]), (-1.0, 0.0, 1.0));
        assert_eq!(CODE.iter().filter(|&&c| c < 0.0).count(), 7);
        assert_eq!(CODE.iter().filter(|&&c| c > 0.0).count(), 8);
    }

    #[test]
    #[allow(clippy::excessive_precision)] // the published f64 digits
    fn thresholds_are_the_published_midpoints() {
        // The decision values of bitsandbytes' CUDA `dQuantizeNF4`.
        let cuda = [
            -0.8480964004993439f32,
            -0.6106329262256622,
            -0.4599952697753906,
            -0.33967943489551544,
            -0.23460740596055984,
            -0.13791173323988914,
            -0.045525018125772476,
            0.03979014977812767,
            0.1202552504837513,
            0.2035212516784668,
            0.2920137718319893,
            0.3893125355243683,
            0.5016634166240692,
            0.6427869200706482,
            0.8614784181118011,
        ];
        // The CUDA literals are midpoints taken in f64; ours are taken in f32 like the torch backend's, so they
        // may differ in the last bit.
        for (t, c) in THRESHOLDS.iter().zip(cuda) {
            assert!((t - c).abs() <= c.abs() * f32::EPSILON, "{t} vs {c}");
        }
    }

    #[test]
    fn every_code_encodes_to_itself_and_midpoints_go_down() {
        for (i, &c) in CODE.iter().enumerate() {
            assert_eq!(encode(c), i as u8);
        }
        for (i, &t) in THRESHOLDS.iter().enumerate() {
            assert_eq!(encode(t), i as u8, "exactly on a midpoint: the lower code");
            assert_eq!(encode(t.next_up()), i as u8 + 1);
        }
        assert_eq!(encode(-0.0), 7);
    }

    #[test]
    fn encode_is_the_nearest_code() {
        let mut s = -1.0f32;
        while s <= 1.0 {
            let q = encode(s) as usize;
            let best = CODE.iter().map(|&c| (c - s).abs()).fold(f32::INFINITY, f32::min);
            assert!((CODE[q] - s).abs() <= best * (1.0 + 1e-6) + 1e-7, "s = {s}: code {q}");
            s += 1.0 / 1024.0;
        }
    }
}
