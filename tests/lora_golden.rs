//! PEFT interop against adapters written by PEFT 0.21.2 (`fixtures/generate.py --only lora`, see
//! `fixtures/golden/lora.py` for what each file holds):
//!
//! * `Adapter::load` reads PEFT's files: config values, key set, shapes, values bit for bit;
//! * saving it back writes PEFT's `adapter_config.json` byte for byte and the same tensors;
//! * our config for PEFT's defaults and for `all-linear` is the one PEFT writes (expanded below 20 modules,
//!   condensed to suffixes from 20 on);
//! * merging every adapted weight (and the trained biases) into the base and running the plain Llama forward
//!   gives PEFT's `merge_and_unload()` logits. Tolerance 1e-4 absolute, as every f32 logits golden.
//!
//! The adapted model's unmerged logits and the LoRA gradients in the same goldens are checked where the model
//! carries adapters.

use mftcoder::backend::Backend;
use mftcoder::backend::cpu::Cpu;
use mftcoder::io::safetensors::{OwnedTensor, WeightStore, save};
use mftcoder::models::{self, decoder::Logits};
use mftcoder::peft::adapter_io::{CONFIG_NAME, WEIGHTS_NAME};
use mftcoder::peft::lora::merge;
use mftcoder::peft::{Adapter, LoraBias, LoraConfig, TargetModules};
use ndarray::{Array2, Ix2, s};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LOGITS_ATOL: f32 = 1e-4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

mod common;
use common::Scratch;

/// A scratch directory (removed when the test ends) and a path inside it that does not exist yet.
fn scratch(name: &str) -> (Scratch, PathBuf) {
    let dir = Scratch::new(&format!("lora-golden-{name}"));
    let inside = dir.join("dir");
    (dir, inside)
}

struct Case {
    name: &'static str,
    config: LoraConfig,
    /// the HF module paths PEFT adapted
    modules: Vec<String>,
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn cases() -> Vec<Case> {
    let all_linear = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
    vec![
        Case {
            name: "gqa_tied",
            config: LoraConfig {
                r: 8,
                lora_alpha: 16.0,
                lora_dropout: 0.05,
                use_rslora: false,
                bias: LoraBias::None,
                target_modules: TargetModules::Names(names(&["q_proj", "v_proj"])),
            },
            modules: (0..2)
                .flat_map(|l| ["q_proj", "v_proj"].map(|m| format!("model.layers.{l}.self_attn.{m}")))
                .collect(),
        },
        Case {
            name: "odd_sizes_bf16_bias",
            config: LoraConfig {
                r: 4,
                lora_alpha: 8.0,
                lora_dropout: 0.0,
                use_rslora: true,
                bias: LoraBias::LoraOnly,
                // 21 adapted modules: PEFT condenses its expanded all-linear list to the leaf names
                target_modules: TargetModules::Names(names(&[
                    "down_proj",
                    "gate_proj",
                    "k_proj",
                    "o_proj",
                    "q_proj",
                    "up_proj",
                    "v_proj",
                ])),
            },
            modules: (0..3).flat_map(|l| all_linear.map(|m| format!("model.layers.{l}.{m}"))).collect(),
        },
    ]
}

/// The linear layers of a Llama checkpoint: every `<module>.weight` matrix but the embedding and the head.
fn base_linears(store: &WeightStore) -> BTreeMap<String, Vec<usize>> {
    store
        .names()
        .filter(|n| n.starts_with("model.layers.") && n.ends_with("_proj.weight"))
        .map(|n| (n.trim_end_matches(".weight").to_string(), store.info(n).unwrap().shape))
        .collect()
}

#[test]
fn peft_adapters_load_with_their_config_key_set_and_shapes() {
    for case in cases() {
        let dir = root().join("lora").join(case.name);
        let adapter = Adapter::load(&dir.join("adapter")).unwrap();
        assert_eq!(adapter.config, case.config, "{}", case.name);
        let golden = WeightStore::open(&dir.join("golden.safetensors")).unwrap();
        let scaling: f64 = golden.metadata().unwrap()["scaling"].parse().unwrap();
        assert_eq!(adapter.config.scaling(), scaling, "{}: α/r or α/√r", case.name);

        let modules: BTreeSet<String> = case.modules.iter().cloned().collect();
        assert_eq!(adapter.tensors.keys().cloned().collect::<BTreeSet<_>>(), modules, "{}", case.name);
        let base = WeightStore::open(&root().join("llama").join(case.name)).unwrap();
        let file = WeightStore::open(&dir.join("adapter").join(WEIGHTS_NAME)).unwrap();
        let mut expected_keys = BTreeSet::new();
        for (module, shape) in base_linears(&base) {
            // PEFT's suffix rule on our side picks exactly the layers PEFT adapted
            assert_eq!(adapter.config.target_modules.matches(&module), modules.contains(&module), "{module}");
            let Some((a, b)) = adapter.tensors.get(&module) else { continue };
            let (out, inp) = (shape[0], shape[1]);
            assert_eq!(a.dim(), (case.config.r, inp), "{module}: A is [r, in]");
            assert_eq!(b.dim(), (out, case.config.r), "{module}: B is [out, r]");
            for (suffix, m) in [("lora_A.weight", a), ("lora_B.weight", b)] {
                let key = format!("base_model.model.{module}.{suffix}");
                let stored = file.tensor_f32(&key).unwrap().into_dimensionality::<Ix2>().unwrap();
                assert!(stored.iter().zip(m).all(|(x, y)| x.to_bits() == y.to_bits()), "{key}");
                expected_keys.insert(key);
            }
            assert!(b.iter().any(|&v| v != 0.0), "{module}: the golden's B is non-zero");
            if case.config.bias == LoraBias::LoraOnly {
                let key = format!("base_model.model.{module}.base_layer.bias");
                let bias = &adapter.biases[&module];
                assert_eq!(bias.len(), out);
                let stored = file.tensor_f32(&key).unwrap();
                assert!(stored.iter().zip(bias).all(|(x, y)| x.to_bits() == y.to_bits()), "{key}");
                expected_keys.insert(key);
            }
        }
        let file_keys: BTreeSet<String> = file.names().map(str::to_owned).collect();
        assert_eq!(file_keys, expected_keys, "{}: every key is accounted for", case.name);
        if case.config.bias == LoraBias::None {
            assert!(adapter.biases.is_empty());
        }
    }
}

fn assert_same_adapter_files(ours: &Path, peft: &Path) {
    let (a, b) = (
        std::fs::read_to_string(ours.join(CONFIG_NAME)).unwrap(),
        std::fs::read_to_string(peft.join(CONFIG_NAME)).unwrap(),
    );
    assert_eq!(a, b, "{}: adapter_config.json differs from PEFT's", peft.display());
    let (ours, theirs) =
        (WeightStore::open(&ours.join(WEIGHTS_NAME)).unwrap(), WeightStore::open(&peft.join(WEIGHTS_NAME)).unwrap());
    assert_eq!(ours.names().collect::<Vec<_>>(), theirs.names().collect::<Vec<_>>(), "{}: key set", peft.display());
    assert_eq!(ours.metadata().unwrap(), theirs.metadata().unwrap());
    for name in theirs.names() {
        let (x, y) = (ours.info(name).unwrap(), theirs.info(name).unwrap());
        assert_eq!((x.dtype, &x.shape), (y.dtype, &y.shape), "{name}");
        let (x, y) = (ours.tensor_f32(name).unwrap(), theirs.tensor_f32(name).unwrap());
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name}");
    }
}

fn peft_base_name(dir: &Path) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(CONFIG_NAME)).unwrap()).unwrap();
    json["base_model_name_or_path"].as_str().unwrap().to_string()
}

#[test]
fn saving_a_peft_adapter_back_writes_peft_files() {
    let dirs = [
        root().join("lora/gqa_tied/adapter"),
        root().join("lora/odd_sizes_bf16_bias/adapter"),
        root().join("lora/configs/all_linear_gqa_tied"),
    ];
    for (i, peft) in dirs.iter().enumerate() {
        let adapter = Adapter::load(peft).unwrap();
        let (_scratch, ours) = scratch(&format!("resave-{i}"));
        adapter.save(&ours, &peft_base_name(peft)).unwrap();
        assert_same_adapter_files(&ours, peft);
        assert_eq!(Adapter::load(&ours).unwrap(), adapter);
        std::fs::remove_dir_all(&ours).unwrap();
    }
}

fn config_text(adapter: &Adapter, base: &str) -> String {
    serde_json::to_string_pretty(&adapter.config_json(base)).unwrap()
}

#[test]
fn our_config_for_defaults_and_all_linear_is_the_one_peft_writes() {
    // PEFT's defaults on gqa_tied: q_proj and v_proj of both layers
    let peft = root().join("lora/configs/default");
    let base = WeightStore::open(&root().join("llama/gqa_tied")).unwrap();
    let config = LoraConfig::default();
    let tensors = base_linears(&base)
        .into_iter()
        .filter(|(m, _)| config.target_modules.matches(m))
        .map(|(m, shape)| (m, (Array2::zeros((config.r, shape[1])), Array2::zeros((shape[0], config.r)))))
        .collect::<BTreeMap<_, _>>();
    assert_eq!(tensors.len(), 4);
    let adapter = Adapter { config, tensors, biases: BTreeMap::new() };
    assert_eq!(config_text(&adapter, &peft_base_name(&peft)), std::fs::read_to_string(peft.join(CONFIG_NAME)).unwrap());

    // all-linear: 14 modules are written as full paths, 21 as the seven leaf names
    for peft in [root().join("lora/configs/all_linear_gqa_tied"), root().join("lora/odd_sizes_bf16_bias/adapter")] {
        let mut adapter = Adapter::load(&peft).unwrap();
        adapter.config.target_modules = TargetModules::AllLinear;
        let text = config_text(&adapter, &peft_base_name(&peft));
        assert_eq!(text, std::fs::read_to_string(peft.join(CONFIG_NAME)).unwrap(), "{}", peft.display());
    }
}

#[test]
fn merged_weights_give_pefts_merged_logits() {
    for case in cases() {
        let dir = root().join("lora").join(case.name);
        let base_dir = root().join("llama").join(case.name);
        let adapter = Adapter::load(&dir.join("adapter")).unwrap();
        let s = adapter.config.scaling() as f32;
        let base = WeightStore::open(&base_dir).unwrap();

        // merge in memory: W += s·B·A for every adapted layer; trained biases replace the base's
        let mut merged = Vec::new();
        let (mut n_merged, mut n_biases) = (0, 0);
        for name in base.names() {
            let t = base.tensor_f32(name).unwrap();
            let shape = t.shape().to_vec();
            let module = name.rsplit_once('.').map_or(name, |(m, _)| m);
            let values: Vec<f32> =
                if let (true, Some((a, b))) = (name.ends_with(".weight"), adapter.tensors.get(module)) {
                    let mut w: Array2<f32> = t.into_dimensionality().unwrap();
                    merge(&mut w, a.view(), b.view(), s);
                    n_merged += 1;
                    w.iter().copied().collect()
                } else if let (true, Some(bias)) = (name.ends_with(".bias"), adapter.biases.get(module)) {
                    assert_eq!(shape, [bias.len()]);
                    n_biases += 1;
                    bias.to_vec()
                } else {
                    t.iter().copied().collect()
                };
            merged.push(OwnedTensor::f32(name, &shape, &values));
        }
        assert_eq!(n_merged, adapter.tensors.len());
        assert_eq!(n_biases, adapter.biases.len());
        let (_scratch, model_dir) = scratch(&format!("merged-{}", case.name));
        std::fs::create_dir_all(&model_dir).unwrap();
        std::fs::copy(base_dir.join("config.json"), model_dir.join("config.json")).unwrap();
        save(&model_dir.join("model.safetensors"), &merged).unwrap();

        let golden = WeightStore::open(&dir.join("golden.safetensors")).unwrap();
        let ids: Vec<u32> = golden.tensor_i64("input_ids").unwrap().iter().map(|&i| i as u32).collect();
        let want: Array2<f32> = golden.tensor_f32("merged_logits").unwrap().into_dimensionality().unwrap();
        let model = models::load_causal_lm(&Cpu, &model_dir).unwrap();
        let got = Cpu.download(&model.forward(&Cpu, &ids, None, Logits::All).unwrap());
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);

        // the adapter must matter: the base model's logits (a prefix of its own golden) are far from these
        let base_golden = WeightStore::open(&base_dir.join("golden.safetensors")).unwrap();
        let base_logits: Array2<f32> = base_golden.tensor_f32("logits").unwrap().into_dimensionality().unwrap();
        let moved =
            base_logits.slice(s![..ids.len(), ..]).iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("{}: max |Δ merged logits| = {diff:.2e} (the adapter moves them by up to {moved:.2e})", case.name);
        assert!(moved > 100.0 * LOGITS_ATOL, "{}: the adapter barely changes the logits ({moved})", case.name);
        assert!(diff <= LOGITS_ATOL, "{}: max |Δ merged logits| = {diff}", case.name);
        std::fs::remove_dir_all(&model_dir).unwrap();
    }
}
