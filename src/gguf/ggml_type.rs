//! The tensor element types of ggml: what a GGUF tensor's `type` field names, and how many bytes a block of
//! them takes. Quantized types store a row in fixed-size blocks (32 or 256 values) of packed integers and
//! one or two scales; float types are blocks of one.

use anyhow::{Result, bail};

/// A ggml type this crate knows the block size of (the numbering is `enum ggml_type` in ggml.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    /// A type whose size is known (so the file can be read and described) but which is not dequantized here
    /// (the IQ* importance-matrix grids, ternary and FP4 types, integer tensors).
    Other {
        id: u32,
        name: &'static str,
        block: usize,
        bytes: usize,
    },
}

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

impl GgmlType {
    pub fn from_id(id: u32) -> Result<Self> {
        use GgmlType::*;
        let other = |name, block, bytes| Other { id, name, block, bytes };
        Ok(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            16 => other("IQ2_XXS", 256, 66),
            17 => other("IQ2_XS", 256, 74),
            18 => other("IQ3_XXS", 256, 98),
            19 => other("IQ1_S", 256, 50),
            20 => other("IQ4_NL", 32, 18),
            21 => other("IQ3_S", 256, 110),
            22 => other("IQ2_S", 256, 82),
            23 => other("IQ4_XS", 256, 136),
            24 => other("I8", 1, 1),
            25 => other("I16", 1, 2),
            26 => other("I32", 1, 4),
            27 => other("I64", 1, 8),
            28 => other("F64", 1, 8),
            29 => other("IQ1_M", 256, 56),
            30 => BF16,
            34 => other("TQ1_0", 256, 54),
            35 => other("TQ2_0", 256, 66),
            39 => other("MXFP4", 32, 17),
            _ => bail!("unknown ggml type id {id}"),
        })
    }

    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            BF16 => 30,
            Other { id, .. } => id,
        }
    }

    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            BF16 => "BF16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
            Other { name, .. } => name,
        }
    }

    /// (values per block, bytes per block), as in ggml's type traits.
    pub fn block(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 | BF16 => (1, 2),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2K => (QK_K, 84),
            Q3K => (QK_K, 110),
            Q4K => (QK_K, 144),
            Q5K => (QK_K, 176),
            Q6K => (QK_K, 210),
            Q8K => (QK_K, 292),
            Other { block, bytes, .. } => (block, bytes),
        }
    }

    /// Bytes of `n` values (a whole number of blocks), or an error when `n` is not one.
    pub fn bytes_for(self, n: u64) -> Result<u64> {
        let (block, bytes) = self.block();
        if !n.is_multiple_of(block as u64) {
            bail!("{n} values are not a whole number of {} blocks of {block}", self.name());
        }
        (n / block as u64).checked_mul(bytes as u64).ok_or_else(|| anyhow::anyhow!("{n} values: size overflows"))
    }
}
