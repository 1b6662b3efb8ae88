//! The Q/K row permutation llama.cpp's converter applies to Llama-style checkpoints, and its inverse.
//!
//! Hugging Face's Llama rotates the two *halves* of each head (`rotate_half`: dimension i pairs with
//! i + head_dim/2); llama.cpp's Llama kernel rotates *adjacent* pairs (2i with 2i + 1). So that the same
//! weights give the same attention, `convert_hf_to_gguf.py` reorders the rows of `q_proj` and `k_proj`
//! within every head: `W.reshape(heads, 2, head_dim/2, cols).swapaxes(1, 2)`. HF row `t·head_dim/2 + i` of a
//! head (t ∈ {0, 1}) becomes GGUF row `2i + t`. `k_proj` has `num_key_value_heads` heads.
//! Families whose llama.cpp kernel rotates halves ("NeoX style": Qwen2, Gemma, StarCoder2, ...) are not
//! permuted.

use anyhow::{Result, bail};

// ANCHOR: permute
/// GGUF row of HF row `r` (`to_gguf`), or HF row of GGUF row `r`, for heads of `head_dim` rows.
fn permuted_row(r: usize, head_dim: usize, to_gguf: bool) -> usize {
    let (head, within) = (r / head_dim, r % head_dim);
    let half = head_dim / 2;
    let moved = if to_gguf {
        let (t, i) = (within / half, within % half); // HF: t·half + i
        2 * i + t
    } else {
        let (i, t) = (within / 2, within % 2); // GGUF: 2i + t
        t * half + i
    };
    head * head_dim + moved
}

/// Reorder the rows of a row-major `[heads·head_dim, cols]` tensor (`cols` = 1 for a bias): llama.cpp's
/// permutation with `to_gguf`, its inverse without.
pub fn permute_rows<T: Copy + Default>(values: &[T], heads: usize, cols: usize, to_gguf: bool) -> Result<Vec<T>> {
    if heads == 0 || cols == 0 || !values.len().is_multiple_of(heads * cols) {
        bail!("{} values are not {heads} heads of rows of {cols}", values.len());
    }
    let head_dim = values.len() / cols / heads;
    if !head_dim.is_multiple_of(2) {
        bail!("head size {head_dim} is odd; rotary pairs need an even one");
    }
    let mut out = vec![T::default(); values.len()];
    for r in 0..heads * head_dim {
        let to = permuted_row(r, head_dim, to_gguf);
        out[to * cols..(to + 1) * cols].copy_from_slice(&values[r * cols..(r + 1) * cols]);
    }
    Ok(out)
}
// ANCHOR_END: permute

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_converters_reshape_and_inverts() {
        // 2 heads of 4 rows, 3 columns: HF rows per head [a0 a1 b0 b1] become [a0 b0 a1 b1]
        let w: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let g = permute_rows(&w, 2, 3, true).unwrap();
        let rows: Vec<f32> = g.chunks(3).map(|r| r[0] / 3.0).collect();
        assert_eq!(rows, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(permute_rows(&g, 2, 3, false).unwrap(), w);
        assert!(permute_rows(&w, 5, 3, true).is_err());
    }
}
