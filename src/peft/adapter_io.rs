//! PEFT's adapter directory: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! Tensor keys (PEFT 0.21.2, adapter name stripped on save), for the HF module path `<m>`:
//!
//!   base_model.model.<m>.lora_A.weight      A [r, in]
//!   base_model.model.<m>.lora_B.weight      B [out, r]
//!   base_model.model.<m>.base_layer.bias    b [out]   bias = lora_only / all, adapted layers
//!   base_model.model.<m>.bias               b [out]   bias = all, layers without an adapter
//!
//! The config is the JSON PEFT writes (`json.dumps(indent=2, sort_keys=True)`, all 41 fields of its
//! `LoraConfig`); we write it byte for byte the same for the same configuration. Anything that changes the
//! numbers and that we do not implement (DoRA, `fan_in_fan_out`, per-module rank/alpha patterns, extra
//! trained modules, LoRA variants) is refused on load with a line naming the field.

use super::lora::{LoraBias, LoraConfig, TargetModules};
use crate::io::safetensors::{OwnedTensor, WeightStore, serialize};
use anyhow::{Context, Result, anyhow, bail};
use ndarray::{Array1, Array2};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const CONFIG_NAME: &str = "adapter_config.json";
pub const WEIGHTS_NAME: &str = "adapter_model.safetensors";
/// The key prefix of every tensor: PeftModel.base_model (LoraModel).model (the HF model).
pub const KEY_PREFIX: &str = "base_model.model.";
/// The PEFT release whose files we read and write.
pub const PEFT_VERSION: &str = "0.21.2";
pub use super::target_modules::{find_minimal_target_modules, peft_target_modules};

// ANCHOR: adapter
/// A LoRA adapter in memory: its config and, per adapted layer, A and B.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    pub config: LoraConfig,
    /// HF module path (e.g. `model.layers.0.self_attn.q_proj`) → (A [r, in], B [out, r])
    pub tensors: BTreeMap<String, (Array2<f32>, Array2<f32>)>,
    /// HF module path → trained bias [out] (empty with `bias = none`; the adapted layers' biases with
    /// `lora_only`; every bias with `all`). These replace the base model's biases.
    pub biases: BTreeMap<String, Array1<f32>>,
}
// ANCHOR_END: adapter

impl Adapter {
    /// Read `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn load(dir: &Path) -> Result<Adapter> {
        let config_path = dir.join(CONFIG_NAME);
        let text =
            std::fs::read_to_string(&config_path).with_context(|| format!("{}: cannot read", config_path.display()))?;
        let json: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config_path.display()))?;
        let config = config_from_json(&json).map_err(|e| anyhow!("{}: {e}", config_path.display()))?;

        let weights_path = dir.join(WEIGHTS_NAME);
        if !weights_path.is_file() {
            if dir.join("adapter_model.bin").is_file() {
                bail!(
                    "{}: missing; only adapter_model.bin (a pickle) is there, which is not read here: re-save the \
                     adapter with PEFT's save_pretrained(safe_serialization=True)",
                    weights_path.display()
                );
            }
            bail!("{}: missing", weights_path.display());
        }
        let store = WeightStore::open_checked(&weights_path)?; // NaN or ∞ in an adapter: refused, named
        let (tensors, biases) = read_tensors(&store, &config, &weights_path)?;
        if tensors.is_empty() {
            bail!("{}: holds no lora_A / lora_B tensors", weights_path.display());
        }
        Ok(Adapter { config, tensors, biases })
    }

    /// Write the adapter as PEFT 0.21.2 would: the config with all of PEFT's fields, the tensors as F32 with
    /// PEFT's keys and `{"format": "pt"}` metadata. A new `dir` is built in a temporary sibling and renamed
    /// into place; into an existing directory each file is written atomically (temp + rename), weights first.
    pub fn save(&self, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
        self.check_shapes()?;
        let config = serde_json::to_string_pretty(&self.config_json(base_model_name_or_path))?;
        let weights = serialize(&self.owned_tensors(), Some(BTreeMap::from([("format".into(), "pt".into())])))?;
        if dir.is_dir() {
            crate::io::write_atomic(&dir.join(WEIGHTS_NAME), &weights)?;
            return crate::io::write_atomic(&dir.join(CONFIG_NAME), config.as_bytes());
        }
        let tmp = temp_sibling(dir)?;
        let _ = std::fs::remove_dir_all(&tmp);
        let written = (|| -> Result<()> {
            std::fs::create_dir_all(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
            std::fs::write(tmp.join(WEIGHTS_NAME), &weights)
                .with_context(|| format!("{}: cannot write", tmp.display()))?;
            std::fs::write(tmp.join(CONFIG_NAME), config.as_bytes())
                .with_context(|| format!("{}: cannot write", tmp.display()))?;
            std::fs::rename(&tmp, dir)
                .with_context(|| format!("{}: cannot move the finished adapter into place", dir.display()))
        })();
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        written
    }

    /// The module paths that carry an adapter, in order.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// `adapter_config.json` as PEFT 0.21.2 writes it for this configuration (see [`peft_target_modules`]).
    pub fn config_json(&self, base_model_name_or_path: &str) -> Value {
        let c = &self.config;
        let alpha = if c.lora_alpha.fract() == 0.0 && c.lora_alpha.abs() < 1e15 {
            json!(c.lora_alpha as i64) // an integer α is written as PEFT users pass it: 16, not 16.0
        } else {
            json!(c.lora_alpha)
        };
        let bias = match c.bias {
            LoraBias::None => "none",
            LoraBias::LoraOnly => "lora_only",
            LoraBias::All => "all",
        };
        let targets = peft_target_modules(&c.target_modules, self.modules());
        let mut m = Map::new();
        for (key, value) in [
            ("alora_invocation_tokens", Value::Null),
            ("alpha_pattern", json!({})),
            ("arrow_config", Value::Null),
            ("auto_mapping", Value::Null),
            ("base_model_name_or_path", json!(base_model_name_or_path)),
            ("bias", json!(bias)),
            ("corda_config", Value::Null),
            ("ensure_weight_tying", json!(false)),
            ("eva_config", Value::Null),
            ("exclude_modules", Value::Null),
            ("fan_in_fan_out", json!(false)),
            ("inference_mode", json!(true)),
            ("init_lora_weights", json!(true)),
            ("kasa_config", Value::Null),
            ("layer_replication", Value::Null),
            ("layers_pattern", Value::Null),
            ("layers_to_transform", Value::Null),
            ("loftq_config", json!({})),
            ("lora_alpha", alpha),
            ("lora_bias", json!(false)),
            ("lora_dropout", json!(c.lora_dropout)),
            ("lora_ga_config", Value::Null),
            ("megatron_config", Value::Null),
            ("megatron_core", json!("megatron.core")),
            ("modules_to_save", Value::Null),
            ("monteclora_config", Value::Null),
            ("peft_type", json!("LORA")),
            ("peft_version", json!(PEFT_VERSION)),
            ("qalora_group_size", json!(16)),
            ("r", json!(c.r)),
            ("rank_pattern", json!({})),
            ("revision", Value::Null),
            ("target_modules", json!(targets)),
            ("target_parameters", Value::Null),
            ("task_type", json!("CAUSAL_LM")),
            ("trainable_token_indices", Value::Null),
            ("use_bdlora", Value::Null),
            ("use_dora", json!(false)),
            ("use_qalora", json!(false)),
            ("use_rslora", json!(c.use_rslora)),
            ("velora_config", Value::Null),
        ] {
            m.insert(key.to_string(), value);
        }
        Value::Object(m)
    }

    fn check_shapes(&self) -> Result<()> {
        for (module, (a, b)) in &self.tensors {
            if a.nrows() != self.config.r || b.ncols() != self.config.r {
                bail!(
                    "adapter for `{module}`: A is {:?} and B is {:?}, but r = {}",
                    a.shape(),
                    b.shape(),
                    self.config.r
                );
            }
        }
        for (module, bias) in &self.biases {
            if let Some((_, b)) = self.tensors.get(module).filter(|(_, b)| b.nrows() != bias.len()) {
                bail!("adapter for `{module}`: bias has {} entries, B has {} rows", bias.len(), b.nrows());
            }
        }
        Ok(())
    }

    fn owned_tensors(&self) -> Vec<OwnedTensor> {
        let mut out = Vec::with_capacity(2 * self.tensors.len() + self.biases.len());
        for (module, (a, b)) in &self.tensors {
            let (a, b) = (a.as_standard_layout(), b.as_standard_layout());
            out.push(OwnedTensor::f32(
                &format!("{KEY_PREFIX}{module}.lora_A.weight"),
                a.shape(),
                a.as_slice().unwrap(),
            ));
            out.push(OwnedTensor::f32(
                &format!("{KEY_PREFIX}{module}.lora_B.weight"),
                b.shape(),
                b.as_slice().unwrap(),
            ));
        }
        for (module, bias) in &self.biases {
            // PEFT's key: the bias of a wrapped layer lives in its `base_layer`
            let key = if self.tensors.contains_key(module) { "base_layer.bias" } else { "bias" };
            out.push(OwnedTensor::f32(&format!("{KEY_PREFIX}{module}.{key}"), &[bias.len()], &bias.to_vec()));
        }
        out
    }
}

fn temp_sibling(dir: &Path) -> Result<PathBuf> {
    let name = dir.file_name().with_context(|| format!("{}: not a directory path", dir.display()))?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create", parent.display()))?;
    Ok(parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id())))
}

// ANCHOR: config_from_json
/// Our `LoraConfig` from PEFT's JSON; fields that would change the numbers in ways we do not implement are
/// refused by name. Missing fields take PEFT's defaults.
fn config_from_json(json: &Value) -> Result<LoraConfig> {
    let obj = json.as_object().ok_or_else(|| anyhow!("expected a JSON object"))?;
    let field = |k: &str| obj.get(k).filter(|v| !v.is_null());
    match field("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        Some(other) => bail!("field `peft_type` is `{other}`; only LoRA adapters (`LORA`) are supported"),
        None => bail!("field `peft_type` is missing (expected `LORA`)"),
    }
    if let Some(t) = field("task_type").and_then(Value::as_str).filter(|&t| t != "CAUSAL_LM") {
        bail!("field `task_type` is `{t}`; only `CAUSAL_LM` adapters are supported");
    }
    let flag = |k: &str| field(k).and_then(Value::as_bool).unwrap_or(false);
    for (key, what) in [
        ("fan_in_fan_out", "weights stored [in, out] (GPT-2 Conv1D)"),
        ("use_dora", "DoRA"),
        ("lora_bias", "a bias on lora_B"),
        ("use_qalora", "QALoRA"),
    ] {
        if flag(key) {
            bail!("field `{key}` is true ({what}), which is not supported");
        }
    }
    for key in [
        "alora_invocation_tokens",
        "arrow_config",
        "kasa_config",
        "monteclora_config",
        "use_bdlora",
        "velora_config",
        "layer_replication",
        "modules_to_save",
        "target_parameters",
        "trainable_token_indices",
    ] {
        if let Some(v) = field(key).filter(|v| !is_empty(v) && *v != &Value::Bool(false)) {
            bail!("field `{key}` is {v}, which is not supported (only plain LoRA on linear layers)");
        }
    }
    // These inits rewrite the base weights (W − s·B₀A₀); PEFT's conversion to a plain LoRA resets the field to true.
    if let Some(init) = field("init_lora_weights").and_then(Value::as_str) {
        let lower = init.to_ascii_lowercase();
        if ["pissa", "corda", "olora", "loftq", "lora_ga"].iter().any(|p| lower.starts_with(p)) {
            bail!(
                "field `init_lora_weights` is `{init}`: such an adapter expects base weights modified by its init; \
                 convert it to a plain LoRA with PEFT (save_pretrained(path_initial_model_for_weight_conversion=...)) first"
            );
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if let Some(v) = field(key).filter(|v| !is_empty(v)) {
            bail!("field `{key}` is {v}; per-module ranks or alphas are not supported");
        }
    }
    let number = |k: &str, default: f64| -> Result<f64> {
        match field(k) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| anyhow!("field `{k}` is {v}, expected a number")),
        }
    };
    let r = match field("r") {
        None => 8,
        Some(v) => {
            v.as_u64().filter(|&r| r > 0).ok_or_else(|| anyhow!("field `r` is {v}, expected a positive integer"))?
        }
    } as usize;
    let lora_dropout = number("lora_dropout", 0.0)?;
    if !(0.0..1.0).contains(&lora_dropout) {
        bail!("field `lora_dropout` is {lora_dropout}, expected a probability in [0, 1)");
    }
    let bias = match field("bias")
        .map(|v| v.as_str().ok_or_else(|| anyhow!("field `bias` is {v}, expected a string")))
        .transpose()?
    {
        None | Some("none") => LoraBias::None,
        Some("lora_only") => LoraBias::LoraOnly,
        Some("all") => LoraBias::All,
        Some(other) => bail!("field `bias` is `{other}`; allowed: none, lora_only, all"),
    };
    let target_modules = match field("target_modules") {
        Some(Value::String(s)) if s.eq_ignore_ascii_case("all-linear") => TargetModules::AllLinear,
        Some(Value::String(s)) => bail!(
            "field `target_modules` is the regular expression `{s}`; only a list of module names or \"all-linear\" is supported"
        ),
        Some(Value::Array(items)) => TargetModules::Names(
            items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_owned).ok_or_else(|| anyhow!("field `target_modules`: {v} is not a string"))
                })
                .collect::<Result<_>>()?,
        ),
        Some(v) => bail!("field `target_modules` is {v}, expected a list of names or \"all-linear\""),
        None => bail!("field `target_modules` is missing"),
    };
    Ok(LoraConfig {
        r,
        lora_alpha: number("lora_alpha", 8.0)?,
        lora_dropout,
        use_rslora: flag("use_rslora"),
        bias,
        target_modules,
    })
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}
// ANCHOR_END: config_from_json

type LoraTensors = BTreeMap<String, (Array2<f32>, Array2<f32>)>;

/// Split the file's keys into per-module A, B and biases, checking names, shapes and the rank.
fn read_tensors(
    store: &WeightStore,
    config: &LoraConfig,
    path: &Path,
) -> Result<(LoraTensors, BTreeMap<String, Array1<f32>>)> {
    let mut a_of = BTreeMap::new();
    let mut b_of = BTreeMap::new();
    let mut biases = BTreeMap::new();
    let file = path.display();
    for key in store.names() {
        let rest = key
            .strip_prefix(KEY_PREFIX)
            .ok_or_else(|| anyhow!("{file}: tensor `{key}` does not start with `{KEY_PREFIX}`"))?;
        let matrix = || -> Result<Array2<f32>> {
            store.tensor_f32(key)?.into_dimensionality().map_err(|_| anyhow!("{file}: tensor `{key}` is not a matrix"))
        };
        if let Some(module) = rest.strip_suffix(".lora_A.weight") {
            a_of.insert(module.to_string(), (key.to_string(), matrix()?));
        } else if let Some(module) = rest.strip_suffix(".lora_B.weight") {
            b_of.insert(module.to_string(), (key.to_string(), matrix()?));
        } else if let Some(module) = rest.strip_suffix(".base_layer.bias").or_else(|| rest.strip_suffix(".bias")) {
            if config.bias == LoraBias::None {
                bail!("{file}: tensor `{key}` is a bias, but the config says `bias: \"none\"`");
            }
            let v = store.tensor_f32(key)?;
            let v = v.into_dimensionality().map_err(|_| anyhow!("{file}: tensor `{key}` is not a vector"))?;
            if biases.insert(module.to_string(), v).is_some() {
                bail!("{file}: the bias of `{module}` is stored twice");
            }
        } else {
            bail!(
                "{file}: tensor `{key}` is not a LoRA A/B weight or a bias (embedding LoRA, DoRA, lora_B bias and \
                 modules_to_save are not supported)"
            );
        }
    }
    let mut tensors = BTreeMap::new();
    for (module, (a_key, a)) in a_of {
        let (b_key, b) = b_of
            .remove(&module)
            .ok_or_else(|| anyhow!("{file}: tensor `{a_key}` has no `{KEY_PREFIX}{module}.lora_B.weight` beside it"))?;
        if a.nrows() != config.r {
            bail!("{file}: tensor `{a_key}` has shape {:?}, expected [r = {}, in]", a.shape(), config.r);
        }
        if b.ncols() != config.r {
            bail!("{file}: tensor `{b_key}` has shape {:?}, expected [out, r = {}]", b.shape(), config.r);
        }
        if let Some(bias) = biases.get(&module).filter(|bias: &&Array1<f32>| bias.len() != b.nrows()) {
            bail!("{file}: the bias of `{module}` has {} entries, but `{b_key}` has {} rows", bias.len(), b.nrows());
        }
        tensors.insert(module, (a, b));
    }
    if let Some((module, (b_key, _))) = b_of.into_iter().next() {
        bail!("{file}: tensor `{b_key}` has no `{KEY_PREFIX}{module}.lora_A.weight` beside it");
    }
    Ok((tensors, biases))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use std::collections::BTreeSet;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mftcoder-adapter-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn sample(bias: LoraBias) -> Adapter {
        let mut rng = Rng::new(9);
        let mut m = |r: usize, c: usize| Array2::from_shape_fn((r, c), |_| rng.normal() as f32);
        let config = LoraConfig { r: 2, lora_alpha: 4.0, bias, ..LoraConfig::default() };
        let tensors = BTreeMap::from([
            ("model.layers.0.self_attn.q_proj".to_string(), (m(2, 6), m(8, 2))),
            ("model.layers.0.self_attn.v_proj".to_string(), (m(2, 6), m(4, 2))),
        ]);
        let biases = if bias == LoraBias::None {
            BTreeMap::new()
        } else {
            BTreeMap::from([
                ("model.layers.0.self_attn.q_proj".to_string(), Array1::from_vec((0..8).map(|i| i as f32).collect())),
                ("model.layers.0.mlp.up_proj".to_string(), Array1::from_vec(vec![0.5; 3])), // not adapted (bias = all)
            ])
        };
        Adapter { config, tensors, biases }
    }

    #[test]
    fn save_then_load_round_trips() {
        for bias in [LoraBias::None, LoraBias::All] {
            let dir = scratch(&format!("roundtrip-{bias:?}"));
            let adapter = sample(bias);
            adapter.save(&dir, "base").unwrap();
            assert_eq!(Adapter::load(&dir).unwrap(), adapter);
            let store = WeightStore::open(&dir.join(WEIGHTS_NAME)).unwrap();
            assert_eq!(store.metadata().unwrap(), BTreeMap::from([("format".to_string(), "pt".to_string())]));
            if bias == LoraBias::All {
                assert!(store.contains("base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias"));
                assert!(store.contains("base_model.model.model.layers.0.mlp.up_proj.bias"));
            }
            // saving again into the existing directory replaces the files and keeps others
            std::fs::write(dir.join("README.md"), "kept").unwrap();
            let mut changed = adapter.clone();
            changed.config.lora_alpha = 3.5;
            changed.save(&dir, "base").unwrap();
            assert_eq!(Adapter::load(&dir).unwrap().config.lora_alpha, 3.5);
            assert!(dir.join("README.md").is_file());
            let leftovers: Vec<_> = std::fs::read_dir(dir.parent().unwrap())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name().to_string_lossy().contains(&format!("adapter-{}-roundtrip", std::process::id()))
                })
                .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
                .collect();
            assert!(leftovers.is_empty());
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn config_json_writes_integer_alpha_and_peft_field_set() {
        let adapter = sample(LoraBias::None);
        let json = adapter.config_json("x");
        assert_eq!(json.as_object().unwrap().len(), 41);
        assert_eq!(json["lora_alpha"].to_string(), "4");
        assert_eq!(json["lora_dropout"].to_string(), "0.0");
        assert_eq!(json["target_modules"], json!(["q_proj", "v_proj"]));
    }

    fn load_err(config: Value, files: &[OwnedTensor]) -> String {
        let dir = scratch("bad");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(CONFIG_NAME), config.to_string()).unwrap();
        if !files.is_empty() {
            crate::io::safetensors::save(&dir.join(WEIGHTS_NAME), files).unwrap();
        }
        let err = format!("{:#}", Adapter::load(&dir).unwrap_err());
        std::fs::remove_dir_all(&dir).unwrap();
        err
    }

    #[test]
    fn unsupported_configs_and_tensors_are_refused_by_name() {
        let ok = || json!({"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]});
        let with = |k: &str, v: Value| {
            let mut c = ok();
            c[k] = v;
            c
        };
        let a = OwnedTensor::f32("base_model.model.m.q_proj.lora_A.weight", &[2, 3], &[0.0; 6]);
        let b = || OwnedTensor::f32("base_model.model.m.q_proj.lora_B.weight", &[4, 2], &[0.0; 8]);
        let cases: Vec<(Value, Vec<OwnedTensor>, &[&str])> = vec![
            (with("fan_in_fan_out", json!(true)), vec![], &["adapter_config.json", "fan_in_fan_out"]),
            (with("use_dora", json!(true)), vec![], &["use_dora", "DoRA"]),
            (with("init_lora_weights", json!("pissa_niter_4")), vec![], &["init_lora_weights", "pissa_niter_4"]),
            (with("peft_type", json!("PREFIX_TUNING")), vec![], &["peft_type", "PREFIX_TUNING"]),
            (with("rank_pattern", json!({"q_proj": 4})), vec![], &["rank_pattern"]),
            (with("modules_to_save", json!(["lm_head"])), vec![], &["modules_to_save"]),
            (with("target_modules", json!(".*q_proj")), vec![], &["target_modules", "regular expression"]),
            (with("bias", json!("some")), vec![], &["bias", "lora_only"]),
            (ok(), vec![], &["adapter_model.safetensors", "missing"]),
            (
                ok(),
                vec![OwnedTensor::f32("base_model.model.m.q_proj.lora_A.weight", &[2, 3], &[0.0; 6])],
                &["adapter_model.safetensors", "m.q_proj.lora_A.weight", "lora_B"],
            ),
            (
                ok(),
                vec![OwnedTensor::f32("base_model.model.m.q_proj.lora_A.weight", &[3, 3], &[0.0; 9]), b()],
                &["m.q_proj.lora_A.weight", "[3, 3]", "r = 2"],
            ),
            (
                ok(),
                vec![OwnedTensor::f32("base_model.model.m.q_proj.lora_magnitude_vector", &[4], &[0.0; 4])],
                &["lora_magnitude_vector", "DoRA"],
            ),
            (
                ok(),
                vec![OwnedTensor::f32("base_model.model.m.q_proj.base_layer.bias", &[4], &[0.0; 4])],
                &["base_layer.bias", "none"],
            ),
        ];
        for (config, files, needles) in cases {
            let files: Vec<OwnedTensor> = if files.is_empty() && needles[0] != "adapter_model.safetensors" {
                vec![OwnedTensor::f32(&a.name, &a.shape, &[0.0; 6]), b()]
            } else {
                files
            };
            let err = load_err(config, &files);
            assert_eq!(err.lines().count(), 1, "{err}");
            for n in needles {
                assert!(err.contains(n), "`{n}` not in: {err}");
            }
        }
    }

    #[test]
    fn minimal_targets_follow_peft_docstring_example() {
        let targets: BTreeSet<String> = (0..100)
            .flat_map(|i| {
                [
                    format!("model.decoder.layers.{i}.self_attn.q_proj"),
                    format!("model.decoder.layers.{i}.self_attn.v_proj"),
                ]
            })
            .collect();
        let others: BTreeSet<String> = (0..100).map(|i| format!("model.encoder.layers.{i}.self_attn.k_proj")).collect();
        let got = find_minimal_target_modules(&targets, &others);
        assert_eq!(got, BTreeSet::from(["q_proj".to_string(), "v_proj".to_string()]));
        // when the leaf name is shared with a non-target, a longer suffix is needed
        let targets = BTreeSet::from(["dec.q_proj".to_string()]);
        let others = BTreeSet::from(["enc.q_proj".to_string()]);
        assert_eq!(find_minimal_target_modules(&targets, &others), BTreeSet::from(["dec.q_proj".to_string()]));
    }
}
