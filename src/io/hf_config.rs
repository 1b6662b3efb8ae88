//! `config.json`: reading it, and the pieces every architecture shares (RoPE parameters, special token ids).
//!
//! transformers changed the RoPE fields between major versions. Older files carry `rope_theta` and an optional
//! `rope_scaling: {"type" | "rope_type": "linear", "factor": f}`; transformers 5 writes
//! `rope_parameters: {"rope_type": "default" | "linear", "rope_theta": θ, "factor": f}`. We accept both and
//! resolve them into one [`RopeSpec`].

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Bounds on a model's sizes: far beyond any released model, small enough that nothing sized by them overflows.
pub const MAX_LAYERS: usize = 1 << 10;
pub const MAX_WIDTH: usize = 1 << 18;
pub const MAX_VOCAB: usize = 1 << 22;
pub const MAX_HEADS: usize = 1 << 12;

/// A parsed `config.json` with its path, so every error can name the file and the field.
pub struct HfConfig {
    pub path: PathBuf,
    pub json: Map<String, Value>,
}

impl HfConfig {
    pub fn read(model_dir: &Path) -> Result<Self> {
        if crate::gguf::is_gguf(model_dir) {
            return crate::gguf::hf_config(model_dir); // a GGUF file's metadata, as config.json
        }
        let path = model_dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}:{}:{}: not valid JSON ({e})", path.display(), e.line(), e.column()))?;
        match value {
            Value::Object(json) => Ok(HfConfig { path, json }),
            _ => bail!("{}: expected a JSON object", path.display()),
        }
    }

    fn err(&self, field: &str, problem: &str) -> anyhow::Error {
        anyhow!("{}: field `{field}` {problem}", self.path.display())
    }

    /// The `model_type` field (every transformers config has it).
    pub fn model_type(&self) -> Result<String> {
        self.opt_str("model_type")?.ok_or_else(|| self.err("model_type", "is missing"))
    }

    pub fn usize(&self, field: &str) -> Result<usize> {
        self.opt_usize(field)?.ok_or_else(|| self.err(field, "is missing"))
    }

    pub fn opt_usize(&self, field: &str) -> Result<Option<usize>> {
        match self.json.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(field, &format!("must be a non-negative integer, got {v}"))),
        }
    }

    /// A model size (layers, widths, heads, vocabulary): an integer in 1..=`max`, checked before anything is
    /// allocated from it (a 10¹² in `num_hidden_layers` is an error, not an out-of-memory abort).
    pub fn size(&self, field: &str, value: usize, max: usize) -> Result<usize> {
        if value == 0 || value > max {
            return Err(self.err(field, &format!("is {value}; allowed: 1 to {max}")));
        }
        Ok(value)
    }

    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.json.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.err(field, &format!("must be a number, got {v}"))),
        }
    }

    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.json.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.err(field, &format!("must be true or false, got {v}"))),
        }
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<String>> {
        match self.json.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_owned()))
                .ok_or_else(|| self.err(field, &format!("must be a string, got {v}"))),
        }
    }

    /// A token id field that may be an integer or a list of integers (`eos_token_id: [128001, 128009]`).
    pub fn token_ids(&self, field: &str) -> Result<Vec<u32>> {
        token_ids_of(self.json.get(field))
            .ok_or_else(|| self.err(field, "must be an integer below 2³² or a list of such integers"))
    }

    // ANCHOR: rope_spec
    /// RoPE in either the transformers-4 or the transformers-5 form, rotating whole heads; YaRN is refused
    /// (only DeepSeek-V2's reader applies its attention factor, see [`HfConfig::rope_with_yarn`]).
    pub fn rope(&self, default_theta: f64) -> Result<RopeSpec> {
        let spec = self.rope_with_yarn(default_theta)?;
        self.refuse_yarn(&spec)?;
        Ok(spec)
    }

    /// A YaRN spec is an error naming the field: the families that read it do not scale cos/sin.
    pub fn refuse_yarn(&self, spec: &RopeSpec) -> Result<()> {
        match spec.scaling {
            RopeScaling::Yarn(_) => {
                let field = if self.json.contains_key("rope_parameters") { "rope_parameters" } else { "rope_scaling" };
                Err(self.err(&format!("{field}.rope_type"), "is `yarn`, which is supported for deepseek_v2 only"))
            }
            _ => Ok(()),
        }
    }

    /// RoPE rotating whole heads, YaRN included.
    pub fn rope_with_yarn(&self, default_theta: f64) -> Result<RopeSpec> {
        let (spec, fraction) = self.partial_rope(default_theta, "rope_theta", "partial_rotary_factor", 1.0)?;
        if fraction != 1.0 {
            let field = if self.json.contains_key("rope_parameters") { "rope_parameters." } else { "" };
            return Err(self.err(
                &format!("{field}partial_rotary_factor"),
                "other than 1.0 is not supported for this architecture",
            ));
        }
        Ok(spec)
    }

    /// RoPE and the fraction of each head it rotates. transformers 5 keeps both in `rope_parameters`
    /// (`rope_theta`, `partial_rotary_factor`); older files put them at the top level under names that vary by
    /// family (GPT-NeoX: `rotary_emb_base`, `rotary_pct`; Phi: `rope_theta`, `partial_rotary_factor`).
    pub fn partial_rope(
        &self,
        default_theta: f64,
        legacy_theta: &str,
        legacy_fraction: &str,
        default_fraction: f64,
    ) -> Result<(RopeSpec, f64)> {
        let legacy = |field: &str, default: f64| -> Result<f64> { Ok(self.opt_f64(field)?.unwrap_or(default)) };
        let number = |params: &Map<String, Value>, key: &str, field: &str| -> Result<Option<f64>> {
            match params.get(key).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| self.err(&format!("{field}.{key}"), "must be a number")),
            }
        };
        let (spec, fraction) = if let Some(params) = self.json.get("rope_parameters").filter(|v| !v.is_null()) {
            let params = params.as_object().ok_or_else(|| self.err("rope_parameters", "must be an object"))?;
            let theta = match number(params, "rope_theta", "rope_parameters")? {
                Some(theta) => theta,
                None => legacy(legacy_theta, default_theta)?,
            };
            let fraction = match number(params, "partial_rotary_factor", "rope_parameters")? {
                Some(f) => f,
                None => legacy(legacy_fraction, default_fraction)?,
            };
            (self.rope_from_params(theta, params, "rope_parameters")?, fraction)
        } else {
            let theta = legacy(legacy_theta, default_theta)?;
            let fraction = legacy(legacy_fraction, default_fraction)?;
            let spec = match self.json.get("rope_scaling") {
                None | Some(Value::Null) => RopeSpec { theta, scaling: RopeScaling::None },
                Some(Value::Object(params)) => {
                    if let Some(f) = number(params, "partial_rotary_factor", "rope_scaling")?.filter(|&f| f != 1.0) {
                        return Err(self.err(
                            "rope_scaling.partial_rotary_factor",
                            &format!("is {f}; only 1.0 is supported there"),
                        ));
                    }
                    self.rope_from_params(theta, params, "rope_scaling")?
                }
                Some(_) => return Err(self.err("rope_scaling", "must be an object or null")),
            };
            (spec, fraction)
        };
        if !(spec.theta > 0.0 && spec.theta.is_finite()) {
            return Err(self.err("rope_theta", &format!("is {}; it must be a positive number", spec.theta)));
        }
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(self.err(legacy_fraction, &format!("is {fraction}; it must be in (0, 1]")));
        }
        Ok((spec, fraction))
    }
    // ANCHOR_END: rope_spec

    fn rope_from_params(&self, theta: f64, params: &Map<String, Value>, field: &str) -> Result<RopeSpec> {
        let kind = params.get("rope_type").or_else(|| params.get("type")).and_then(Value::as_str).unwrap_or("default");
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => {
                let factor = params
                    .get("factor")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| self.err(&format!("{field}.factor"), "must be a number for linear scaling"))?;
                if factor <= 0.0 {
                    return Err(self.err(&format!("{field}.factor"), "must be positive"));
                }
                RopeScaling::Linear { factor }
            }
            "yarn" => RopeScaling::Yarn(self.yarn(params, field)?),
            other => {
                return Err(self.err(
                    &format!("{field}.rope_type"),
                    &format!("is `{other}`, which is not supported yet (supported: default, linear, yarn)"),
                ));
            }
        };
        Ok(RopeSpec { theta, scaling })
    }

    // ANCHOR: yarn_params
    /// YaRN's parameters with transformers' defaults (`_compute_yarn_parameters`): `factor` (else
    /// max_position_embeddings / original), `original_max_position_embeddings` (else max_position_embeddings),
    /// β_fast 32, β_slow 1, `truncate` true, and the cos/sin factor `attention_factor` — given, or
    /// g(factor, mscale) / g(factor, mscale_all_dim) when both are non-zero, else g(factor, 1), with
    /// g(s, m) = 0.1·m·ln s + 1 (1 for s ≤ 1).
    fn yarn(&self, params: &Map<String, Value>, field: &str) -> Result<Yarn> {
        let number = |key: &str| -> Result<Option<f64>> {
            match params.get(key).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| self.err(&format!("{field}.{key}"), "must be a number")),
            }
        };
        let max_positions = self.opt_f64("max_position_embeddings")?.unwrap_or(2048.0);
        let original = number("original_max_position_embeddings")?.unwrap_or(max_positions);
        let factor = number("factor")?.unwrap_or(max_positions / original);
        if !(factor > 0.0 && factor.is_finite() && original >= 1.0 && original.is_finite()) {
            return Err(self.err(
                &format!("{field}.factor"),
                &format!("is {factor} with original_max_position_embeddings {original}; both must be positive"),
            ));
        }
        let g = |s: f64, m: f64| if s <= 1.0 { 1.0 } else { 0.1 * m * s.ln() + 1.0 };
        let (mscale, mscale_all_dim) = (number("mscale")?.unwrap_or(0.0), number("mscale_all_dim")?.unwrap_or(0.0));
        let attention_factor = match number("attention_factor")? {
            Some(a) => a,
            None if mscale != 0.0 && mscale_all_dim != 0.0 => g(factor, mscale) / g(factor, mscale_all_dim),
            None => g(factor, 1.0),
        };
        let truncate = match params.get("truncate").filter(|v| !v.is_null()) {
            None => true,
            Some(v) => v.as_bool().ok_or_else(|| self.err(&format!("{field}.truncate"), "must be true or false"))?,
        };
        Ok(Yarn {
            factor,
            original_max_position_embeddings: original,
            beta_fast: number("beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0),
            beta_slow: number("beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0),
            truncate,
            attention_factor,
            softmax_mscale: g(factor, mscale_all_dim),
        })
    }
    // ANCHOR_END: yarn_params
}

fn token_ids_of(value: Option<&Value>) -> Option<Vec<u32>> {
    match value {
        None | Some(Value::Null) => Some(Vec::new()),
        // ids past u32 are refused, not wrapped
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()).map(|n| vec![n]),
        Some(Value::Array(items)) => items.iter().map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok())).collect(),
        Some(_) => None,
    }
}

/// Rotary position embedding parameters, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeSpec {
    pub theta: f64,
    pub scaling: RopeScaling,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (equivalently, every inverse frequency divided by it).
    Linear {
        factor: f64,
    },
    /// YaRN (Peng et al., 2023): low frequencies divided by `factor`, high ones kept, a ramp between.
    Yarn(Yarn),
    /// Qwen-1's `use_dynamic_ntk`: at inference, a context longer than the `seq_length` it was trained on
    /// raises θ (see `nn::rope::ntk_alpha`); training keeps θ.
    QwenDynamicNtk {
        seq_length: usize,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: f64,
    pub beta_fast: f64,
    pub beta_slow: f64,
    /// Round the ramp's ends to whole dimensions.
    pub truncate: bool,
    /// Multiplies cos and sin (so the rotated part of every q·k score by its square).
    pub attention_factor: f64,
    /// g(factor, mscale_all_dim): DeepSeek-V2 multiplies its softmax scale by its square (1 without
    /// `mscale_all_dim`).
    pub softmax_mscale: f64,
}

/// The end-of-sequence ids generation stops at: `generation_config.json` wins over `config.json`,
/// as in transformers' `generate`.
pub fn generation_eos_ids(model_dir: &Path, config: &HfConfig) -> Result<Vec<u32>> {
    if crate::gguf::is_gguf(model_dir) {
        return crate::gguf::generation_eos_ids(model_dir);
    }
    let path = model_dir.join("generation_config.json");
    if path.is_file() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let json: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
        if let Some(ids) = token_ids_of(json.get("eos_token_id")).filter(|ids| !ids.is_empty()) {
            return Ok(ids);
        }
    }
    config.token_ids("eos_token_id")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> HfConfig {
        HfConfig { path: "config.json".into(), json: serde_json::from_str(json).unwrap() }
    }

    #[test]
    fn both_rope_forms_resolve_to_the_same_spec() {
        let v4 = config(r#"{"rope_theta": 500.0, "rope_scaling": {"type": "linear", "factor": 2.0}}"#);
        let v4b = config(r#"{"rope_theta": 500.0, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}"#);
        let v5 = config(r#"{"rope_parameters": {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}}"#);
        let want = RopeSpec { theta: 500.0, scaling: RopeScaling::Linear { factor: 2.0 } };
        assert_eq!(v4.rope(1e4).unwrap(), want);
        assert_eq!(v4b.rope(1e4).unwrap(), want);
        assert_eq!(v5.rope(1e4).unwrap(), want);
        assert_eq!(config("{}").rope(1e4).unwrap(), RopeSpec { theta: 1e4, scaling: RopeScaling::None });
    }

    #[test]
    fn unsupported_rope_type_names_the_field() {
        let err =
            config(r#"{"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}"#).rope(1e4).unwrap_err().to_string();
        assert!(err.contains("rope_scaling.rope_type") && err.contains("yarn"), "{err}");
    }

    #[test]
    fn token_ids_accept_int_or_list() {
        assert_eq!(config(r#"{"eos_token_id": 2}"#).token_ids("eos_token_id").unwrap(), vec![2]);
        assert_eq!(config(r#"{"eos_token_id": [2, 7]}"#).token_ids("eos_token_id").unwrap(), vec![2, 7]);
        assert!(config(r#"{"eos_token_id": "x"}"#).token_ids("eos_token_id").is_err());
    }
}
