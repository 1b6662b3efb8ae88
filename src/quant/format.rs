//! How bitsandbytes serializes one 4-bit weight (`Linear4bit._save_to_state_dict` + `QuantState.as_dict`).
//!
//! For a weight `P = <module>.weight` a transformers checkpoint holds
//!
//! | tensor | dtype, shape | content |
//! |---|---|---|
//! | `P` | u8 [(n+1)/2, 1] | the packed nibbles |
//! | `P.absmax` | f32 [blocks], or u8 [blocks] with double quant | block scales, or their 8-bit codes |
//! | `P.quant_map` | f32 [16] | the 4-bit code table |
//! | `P.nested_absmax` | f32 [⌈blocks/256⌉] | double quant only |
//! | `P.nested_quant_map` | f32 [256] | double quant only: the dynamic map |
//! | `P.quant_state.bitsandbytes__nf4` (`__fp4`) | u8 [len] | UTF-8 bytes of a JSON dict |
//!
//! The JSON is Python's `json.dumps` of `{"quant_type", "blocksize", "dtype", "shape"}` and, with double quant,
//! `"nested_blocksize", "nested_dtype", "nested_offset"`, in that order, with `", "` and `": "` separators and
//! floats written by Python's `repr`.

use super::double_quant::{DoubleQuant, NESTED_BLOCKSIZE};
use super::{Absmax, QuantType, Quantized4bit};
use crate::io::safetensors::{OwnedTensor, WeightStore};
use anyhow::{Result, anyhow, bail};
use safetensors::Dtype;
use serde_json::Value;

/// The key of the packed quant state, after `<weight>.`.
pub const QUANT_STATE_KEY: &str = "quant_state.bitsandbytes__";

/// The suffixes, after `<weight>.`, of the tensors that describe a quantized weight.
pub const SIDE_SUFFIXES: [&str; 4] = ["absmax", "quant_map", "nested_absmax", "nested_quant_map"];

/// Python's `repr(float)`: the shortest digits that round-trip, in exponent form when the decimal exponent is
/// below -4 or above 15 (`1e-05`, `1e+16`), otherwise positional with at least one decimal (`2.0`).
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{x:e}"); // shortest round-trip digits, e.g. "-3.96983e-1"
    let (mantissa, exp) = sci.split_once('e').expect("LowerExp writes an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|&c| c != '.').collect();
    let point = exp + 1; // digits = 0.d1d2… × 10^point
    if point <= -4 || point > 16 {
        let m = if digits.len() == 1 { digits.clone() } else { format!("{}.{}", &digits[..1], &digits[1..]) };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    } else if point <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
    } else if (point as usize) < digits.len() {
        format!("{sign}{}.{}", &digits[..point as usize], &digits[point as usize..])
    } else {
        format!("{sign}{digits}{}.0", "0".repeat(point as usize - digits.len()))
    }
}

// ANCHOR: quant_state_json
/// The JSON bitsandbytes packs into `quant_state.bitsandbytes__<type>`.
pub fn quant_state_json(q: &Quantized4bit) -> String {
    let mut s = format!(
        "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}, {}]",
        q.quant_type.name(),
        q.blocksize,
        q.dtype,
        q.shape[0],
        q.shape[1]
    );
    if let Absmax::Double(dq) = &q.absmax {
        s += &format!(
            ", \"nested_blocksize\": {NESTED_BLOCKSIZE}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
            python_float_repr(dq.offset as f64)
        );
    }
    s + "}"
}
// ANCHOR_END: quant_state_json

fn u8_tensor(name: String, shape: &[usize], bytes: Vec<u8>) -> OwnedTensor {
    OwnedTensor { name, dtype: Dtype::U8, shape: shape.to_vec(), bytes }
}

/// The tensors of one quantized weight, named as bitsandbytes names them (`weight_name` ends in `.weight`).
pub fn to_tensors(weight_name: &str, q: &Quantized4bit) -> Vec<OwnedTensor> {
    let p = weight_name;
    let mut out = vec![u8_tensor(p.to_string(), &[q.packed.len(), 1], q.packed.clone())];
    match &q.absmax {
        Absmax::Plain(a) => out.push(OwnedTensor::f32(&format!("{p}.absmax"), &[a.len()], a)),
        Absmax::Double(dq) => out.push(u8_tensor(format!("{p}.absmax"), &[dq.codes.len()], dq.codes.clone())),
    }
    out.push(OwnedTensor::f32(&format!("{p}.quant_map"), &[16], q.quant_type.code()));
    if let Absmax::Double(dq) = &q.absmax {
        out.push(OwnedTensor::f32(&format!("{p}.nested_absmax"), &[dq.nested_absmax.len()], &dq.nested_absmax));
        out.push(OwnedTensor::f32(&format!("{p}.nested_quant_map"), &[256], &dq.nested_quant_map));
    }
    let json = quant_state_json(q).into_bytes();
    out.push(u8_tensor(format!("{p}.{QUANT_STATE_KEY}{}", q.quant_type.name()), &[json.len()], json));
    out
}

/// The quant-state key of `weight_name` in `store`, if the weight is 4-bit quantized.
pub fn quant_state_name(store: &WeightStore, weight_name: &str) -> Option<String> {
    ["nf4", "fp4"].iter().map(|t| format!("{weight_name}.{QUANT_STATE_KEY}{t}")).find(|k| store.contains(k))
}

fn bytes_of(store: &WeightStore, name: &str) -> Result<Vec<u8>> {
    let info = store.info(name)?;
    if info.dtype != Dtype::U8 {
        bail!("{}: tensor `{name}` has dtype {:?}, expected U8", store.describe(), info.dtype);
    }
    Ok(store.tensor_i64(name)?.into_iter().map(|v| v as u8).collect())
}

fn f32_vec(store: &WeightStore, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = store.tensor_f32(name)?;
    if t.len() != len {
        bail!("{}: tensor `{name}` has {} values, expected {len}", store.describe(), t.len());
    }
    Ok(t.iter().copied().collect())
}

// ANCHOR: from_store
/// Read a quantized weight back (the inverse of [`to_tensors`]).
pub fn from_store(store: &WeightStore, weight_name: &str) -> Result<Quantized4bit> {
    let p = weight_name;
    let state_name = quant_state_name(store, p)
        .ok_or_else(|| anyhow!("{}: no `{p}.{QUANT_STATE_KEY}nf4|fp4` tensor", store.describe()))?;
    let err = |what: &str| anyhow!("{}: tensor `{state_name}`: {what}", store.describe());
    let json: Value =
        serde_json::from_slice(&bytes_of(store, &state_name)?).map_err(|e| err(&format!("not JSON ({e})")))?;
    let field = |k: &str| json.get(k).filter(|v| !v.is_null()).ok_or_else(|| err(&format!("missing field `{k}`")));
    let quant_type =
        QuantType::parse(field("quant_type")?.as_str().ok_or_else(|| err("`quant_type` is not a string"))?)
            .map_err(|e| err(&e.to_string()))?;
    let blocksize = field("blocksize")?.as_u64().ok_or_else(|| err("`blocksize` is not an integer"))? as usize;
    let dtype = field("dtype")?.as_str().ok_or_else(|| err("`dtype` is not a string"))?.to_string();
    let shape: Vec<usize> = field("shape")?
        .as_array()
        .and_then(|a| a.iter().map(|v| v.as_u64().map(|u| u as usize)).collect())
        .ok_or_else(|| err("`shape` is not a list of integers"))?;
    let [rows, cols] = shape[..] else { return Err(err("`shape` is not 2-D")) };
    if !super::BLOCKSIZES.contains(&blocksize) {
        return Err(err(&format!("blocksize {blocksize} is not one bitsandbytes accepts")));
    }
    let n = rows * cols;
    let blocks = n.div_ceil(blocksize);
    let packed = bytes_of(store, p)?;
    if packed.len() != n.div_ceil(2) {
        bail!(
            "{}: tensor `{p}` holds {} bytes, expected {} for shape [{rows}, {cols}]",
            store.describe(),
            packed.len(),
            n.div_ceil(2)
        );
    }
    let quant_map = f32_vec(store, &format!("{p}.quant_map"), 16)?;
    if quant_map[..] != quant_type.code()[..] {
        bail!("{}: tensor `{p}.quant_map` is not the {} code table", store.describe(), quant_type.name());
    }
    let absmax = if json.get("nested_offset").is_some() {
        let nested_blocksize = field("nested_blocksize")?.as_u64();
        if nested_blocksize != Some(NESTED_BLOCKSIZE as u64) {
            return Err(err(&format!("nested_blocksize {nested_blocksize:?}, expected {NESTED_BLOCKSIZE}")));
        }
        let offset = field("nested_offset")?.as_f64().ok_or_else(|| err("`nested_offset` is not a number"))? as f32;
        let codes = bytes_of(store, &format!("{p}.absmax"))?;
        if codes.len() != blocks {
            bail!("{}: tensor `{p}.absmax` has {} codes, expected {blocks}", store.describe(), codes.len());
        }
        let nested_absmax = f32_vec(store, &format!("{p}.nested_absmax"), blocks.div_ceil(NESTED_BLOCKSIZE))?;
        let nested_quant_map = f32_vec(store, &format!("{p}.nested_quant_map"), 256)?;
        Absmax::Double(DoubleQuant { codes, nested_absmax, nested_quant_map, offset })
    } else {
        Absmax::Plain(f32_vec(store, &format!("{p}.absmax"), blocks)?)
    };
    Ok(Quantized4bit { packed, absmax, shape: [rows, cols], quant_type, blocksize, dtype })
}
// ANCHOR_END: from_store

/// The names of the 4-bit weights in `store` (each has a `.quant_state.bitsandbytes__*` tensor).
pub fn quantized_weights(store: &WeightStore) -> Vec<String> {
    store.names().filter_map(|n| n.split_once(&format!(".{QUANT_STATE_KEY}")).map(|(w, _)| w.to_string())).collect()
}

/// Whether `name` is one of the tensors that describe a quantized weight rather than a parameter.
pub fn is_side_tensor(name: &str, quantized: &std::collections::BTreeSet<String>) -> bool {
    name.contains(&format!(".{QUANT_STATE_KEY}"))
        || SIDE_SUFFIXES
            .iter()
            .any(|s| name.strip_suffix(s).and_then(|w| w.strip_suffix('.')).is_some_and(|w| quantized.contains(w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python_repr() {
        let cases = [
            (0.3969830572605133, "0.3969830572605133"),
            (2.643193006515503, "2.643193006515503"),
            (1e-05, "1e-05"),
            (1.5e-07, "1.5e-07"),
            (0.0001, "0.0001"),
            (2.0, "2.0"),
            (-0.5, "-0.5"),
            (123.25, "123.25"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0, "0.0"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want);
        }
        assert_eq!(python_float_repr(0.1f32 as f64), "0.10000000149011612");
    }

    #[test]
    fn side_tensors_are_recognised() {
        let q: std::collections::BTreeSet<String> = ["a.weight".to_string()].into();
        for n in [
            "a.weight.absmax",
            "a.weight.quant_map",
            "a.weight.nested_absmax",
            "a.weight.nested_quant_map",
            "a.weight.quant_state.bitsandbytes__nf4",
        ] {
            assert!(is_side_tensor(n, &q), "{n}");
        }
        for n in ["a.weight", "a.bias", "b.weight.absmax"] {
            assert!(!is_side_tensor(n, &q), "{n}");
        }
    }
}
