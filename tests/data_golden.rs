//! The data pipeline against the Python transcription of MFTCoder (`fixtures/golden/data.py`), token for token:
//! per-record ids and masks (sft, pretrain, a role-marker override), the samples of every padding mode in
//! MFTCoder's behaviour and in ours, the seeded shuffle/split and the blend, the collator, the offline
//! `.bin/.idx` bytes and the Megatron sample index. The project's own tokenizer always runs; the fetched ones
//! (`fixtures/fetch.sh`) are `#[ignore]`d with that reason; `--include-ignored` runs them where they are fetched.

use mftcoder::data::megatron::{SampleIndex, split_documents};
use mftcoder::data::offline::tokenize_to_bin;
use mftcoder::data::{
    CollateOptions, DataConfig, Encoder, IndexedDataset, MultiTaskDataset, PaddingMode, RoleMarkers, TokenizeMode,
    load_tasks, parse_line, resolve_eos,
};
use mftcoder::io::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden(name: &str) -> Value {
    let path = root().join(format!("fixtures/data/golden/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn u8s(v: &Value) -> Vec<u8> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u8).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn config(g: &Value, mode: PaddingMode, quirks: bool, tokenize: TokenizeMode) -> DataConfig {
    DataConfig {
        data_paths: g["task_paths"].as_array().unwrap().iter().map(|p| root().join(p.as_str().unwrap())).collect(),
        seq_length: g["seq_length"].as_u64().unwrap() as usize,
        padding_mode: mode,
        tokenize_mode: tokenize,
        data_split: g["data_split"].as_str().unwrap().parse().unwrap(),
        seed: g["seed"].as_u64().unwrap() as u32,
        mftcoder_quirks: quirks,
        ..DataConfig::default()
    }
}

/// Everything the golden file of tokenizer `name` records. The third-party tokenizers are optional downloads:
/// their tests are ignored by a plain `cargo test` and fail, saying what fetches them, when asked for without them.
fn check(name: &str) {
    let g = golden(name);
    let dir = root().join(g["tokenizer_dir"].as_str().unwrap());
    let fetch = if name == "smollm2" { "scripts/fetch_smollm2.sh" } else { "fixtures/fetch.sh" };
    assert!(dir.join("tokenizer.json").is_file(), "{}/tokenizer.json is absent: {fetch} fetches it", dir.display());
    let tok = Tokenizer::load(&dir).unwrap();
    let eos = resolve_eos(&tok).unwrap();
    assert_eq!(eos, g["eos_id"].as_u64().unwrap() as u32, "{name}: EOS resolution");

    // 1. Per-record ids and masks.
    let markers = RoleMarkers::from_json(&g["markers_override"].to_string()).unwrap();
    for (key, m, mode) in [
        ("sft", RoleMarkers::default(), TokenizeMode::Sft),
        ("pretrain", RoleMarkers::default(), TokenizeMode::Pretrain),
        ("markers", markers, TokenizeMode::Sft),
    ] {
        let enc = Encoder::new(&tok, m, mode).unwrap();
        let rows = g["records"][key].as_array().unwrap();
        assert!(rows.len() >= 20, "{name}: the fixture covers every schema");
        for row in rows {
            let (file, line) = (row[0].as_str().unwrap(), row[1].as_u64().unwrap() as usize);
            let text = std::fs::read_to_string(root().join(file)).unwrap();
            let rec = parse_line(text.lines().nth(line - 1).unwrap().as_bytes()).unwrap();
            let e = enc.encode(&rec).unwrap();
            assert_eq!(e.ids, u32s(&row[2]), "{name} {key}: ids of {file}:{line}");
            assert_eq!(e.loss_mask, u8s(&row[3]), "{name} {key}: loss mask of {file}:{line}");
        }
    }

    // 2. Samples of every padding mode, MFTCoder's behaviour and ours.
    for (key, mode, tokenize) in [
        ("padding", PaddingMode::Padding, TokenizeMode::Sft),
        ("pack", PaddingMode::Pack, TokenizeMode::Sft),
        ("concat", PaddingMode::Concat, TokenizeMode::Sft),
        ("pack_pretrain", PaddingMode::Pack, TokenizeMode::Pretrain),
    ] {
        for variant in ["mftcoder", "fixed"] {
            let Some(want) = g["samples"][key].get(variant) else { continue };
            let (tasks, _) = load_tasks(&tok, &config(&g, mode, variant == "mftcoder", tokenize)).unwrap();
            for (k, task) in tasks.iter().enumerate() {
                let want = want[k].as_array().unwrap();
                assert_eq!(task.samples.len(), want.len(), "{name} {key}/{variant}: samples of task {k}");
                for (i, (s, w)) in task.samples.iter().zip(want).enumerate() {
                    assert_eq!(s.window.ids, u32s(&w[0]), "{name} {key}/{variant}: task {k} sample {i} ids");
                    assert_eq!(s.window.loss_mask, u8s(&w[1]), "{name} {key}/{variant}: task {k} sample {i} mask");
                }
            }
        }
    }

    // 3. Shuffle, split and blend (padding mode), and the collator on the first four blended samples.
    let cfg = config(&g, PaddingMode::Padding, false, TokenizeMode::Sft);
    let (tasks, pad) = load_tasks(&tok, &cfg).unwrap();
    let ordered: Vec<Vec<_>> = tasks.iter().map(|t| t.samples.clone()).collect();
    let ds = MultiTaskDataset::from_tasks(tasks, pad, &cfg);
    let split = &g["split"];
    for k in 0..ds.num_tasks() {
        let perm = usizes(&split["perms"][k]);
        let n_train = split["train_counts"][k].as_u64().unwrap() as usize;
        assert_eq!(ds.train[k].len(), n_train, "{name}: train count of task {k}");
        let got: Vec<_> = ds.train[k].iter().chain(&ds.valid[k]).collect();
        let want: Vec<_> = perm.iter().map(|&p| &ordered[k][p]).collect();
        assert_eq!(got, want, "{name}: shuffled order of task {k}");
    }
    let blend: Vec<(usize, usize)> = split["blend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_u64().unwrap() as usize))
        .collect();
    assert_eq!(ds.train_order, blend, "{name}: blended order");
    let batch = ds.train_batch(&[0, 1, 2, 3], CollateOptions { isolate_samples: false, ..Default::default() });
    let c = &g["collate_first4"];
    let rows = |v: &Value| v.as_array().unwrap().iter().map(u32s).collect::<Vec<_>>();
    let arr_rows = |a: &ndarray::Array2<u32>| a.rows().into_iter().map(|r| r.to_vec()).collect::<Vec<_>>();
    assert_eq!(arr_rows(&batch.input_ids), rows(&c["input_ids"]), "{name}: collated input_ids");
    assert_eq!(arr_rows(&batch.labels), rows(&c["labels"]), "{name}: collated labels");
    let mask: Vec<Vec<u32>> =
        batch.loss_mask.rows().into_iter().map(|r| r.iter().map(|&x| x as u32).collect()).collect();
    assert_eq!(mask, rows(&c["loss_mask"]), "{name}: collated loss_mask");

    // 4. Offline tokenization: the .bin/.idx bytes of the Python writer, and the Megatron sample index.
    let off = &g["offline"];
    let scratch = tempfile::Builder::new().prefix(&format!("mftcoder-golden-{name}-")).tempdir().unwrap();
    let tmp = scratch.path();
    let stats = tokenize_to_bin(&tok, &root().join("fixtures/data/pretrain"), &tmp.join(name), false, false).unwrap();
    assert_eq!(stats.dtype_code as u64, off["dtype_code"].as_u64().unwrap(), "{name}: token dtype");
    let bin = std::fs::read(&stats.bin).unwrap();
    let idx = std::fs::read(&stats.idx).unwrap();
    assert_eq!(bin, std::fs::read(root().join(off["bin"].as_str().unwrap())).unwrap(), "{name}: .bin bytes");
    assert_eq!(idx, std::fs::read(root().join(off["idx"].as_str().unwrap())).unwrap(), "{name}: .idx bytes");
    let data = IndexedDataset::open(&tmp.join(format!("{name}_input_ids"))).unwrap();
    let docs: Vec<Vec<u32>> = off["docs"].as_array().unwrap().iter().map(u32s).collect();
    assert_eq!((0..data.len()).map(|i| data.get(i)).collect::<Vec<_>>(), docs, "{name}: documents read back");
    let bounds = usizes(&off["split_bounds"]);
    let r = split_documents([80.0, 20.0, 0.0], docs.len()).unwrap();
    assert_eq!(vec![r[0].start, r[0].end, r[1].end, r[2].end], bounds, "{name}: document split");
    let seq = off["megatron_seq_length"].as_u64().unwrap() as usize;
    let index = SampleIndex::build(&data.sizes, r[0].clone(), seq, 1, cfg.seed).unwrap();
    let m = &off["megatron_train"];
    assert_eq!(index.doc_idx, u32s(&m["doc_idx"]), "{name}: doc_idx");
    let sample_idx: Vec<(u32, u32)> = m["sample_idx"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_u64().unwrap() as u32))
        .collect();
    assert_eq!(index.sample_idx, sample_idx, "{name}: sample_idx");
    assert_eq!(index.shuffle_idx, u32s(&m["shuffle_idx"]), "{name}: shuffle_idx");
    // Every sample is seq_length + 1 consecutive tokens of the shuffled document stream.
    let stream: Vec<u32> = index.doc_idx.iter().flat_map(|&d| data.get(d as usize)).collect();
    for j in 0..index.len() {
        let s = index.shuffle_idx[j] as usize;
        assert_eq!(index.sample(&data, j), stream[s * seq..s * seq + seq + 1].to_vec(), "{name}: megatron sample {j}");
    }
}

#[test]
fn golden_tiny_bpe_project_tokenizer() {
    check("tiny");
}

#[test]
#[ignore = "needs .cache/tokenizers/gpt2: fixtures/fetch.sh"]
fn golden_gpt2_byte_level_bpe() {
    check("gpt2");
}

#[test]
#[ignore = "needs .cache/tokenizers/mistral: fixtures/fetch.sh"]
fn golden_mistral_sentencepiece_style_bpe() {
    check("mistral");
}

#[test]
#[ignore = "needs .cache/tokenizers/qwen3: fixtures/fetch.sh"]
fn golden_qwen3_byte_level_bpe_int32_tokens() {
    check("qwen3");
}

#[test]
#[ignore = "needs .cache/smollm2-135m-instruct: scripts/fetch_smollm2.sh"]
fn golden_smollm2_byte_level_bpe() {
    check("smollm2");
}

#[test]
fn golden_numpy_shuffle_blend_and_split() {
    let g = golden("numpy");
    for (key, want) in g["permutations_first64_then_checksum"].as_object().unwrap() {
        let (n, seed) = key.split_once('_').unwrap();
        let p = mftcoder::data::mt19937::numpy_permutation(n.parse().unwrap(), seed.parse().unwrap());
        let want = usizes(want);
        let (head, checksum) = want.split_at(want.len() - 1);
        assert_eq!(&p[..head.len()], head, "RandomState({seed}).shuffle(arange({n}))");
        let sum =
            p.iter().enumerate().fold(0u128, |acc, (i, &x)| (acc + (i as u128) * (x as u128)) % ((1u128 << 61) - 1));
        assert_eq!(sum as usize, checksum[0], "checksum of RandomState({seed}).shuffle(arange({n}))");
    }
    for (key, want) in g["blend_tasks"].as_object().unwrap() {
        let counts: Vec<usize> = key.split(',').map(|c| c.parse().unwrap()).collect();
        let tasks: Vec<usize> = mftcoder::data::blend_by_count(&counts).iter().map(|&(t, _)| t).collect();
        assert_eq!(tasks, usizes(want), "blend of {key}");
    }
    for (key, want) in g["doc_splits"].as_object().unwrap() {
        let (s, n) = key.split_once('_').unwrap();
        let mut split = [0.0; 3];
        for (i, x) in s.split(',').enumerate() {
            split[i] = x.parse().unwrap();
        }
        let r = split_documents(split, n.parse().unwrap()).unwrap();
        assert_eq!(vec![r[0].start, r[0].end, r[1].end, r[2].end], usizes(want), "split {key}");
    }
}

#[test]
fn goldens_exercise_what_they_claim() {
    // Guard against a fixture that silently stopped covering a case.
    let g = golden("tiny");
    let sft = g["records"]["sft"].as_array().unwrap();
    let texts: Vec<String> = sft
        .iter()
        .map(|r| {
            let f = std::fs::read_to_string(root().join(r[0].as_str().unwrap())).unwrap();
            f.lines().nth(r[1].as_u64().unwrap() as usize - 1).unwrap().to_string()
        })
        .collect();
    for key in [
        "\"system\"",
        "\"prompt\"",
        "\"response\"",
        "\"input\"",
        "\"instruction\"",
        "\"question\"",
        "\"query\"",
        "\"text\"",
        "\"gpt\"",
        "\u{a0}",
        "\u{202f}",
        "🎉",
    ] {
        assert!(texts.iter().any(|t| t.contains(key)), "no fixture record contains {key}");
    }
    let samples = &g["samples"];
    let count =
        |k: &str, v: &str| samples[k][v].as_array().unwrap().iter().map(|t| t.as_array().unwrap().len()).sum::<usize>();
    assert!(count("padding", "fixed") < sft.len(), "some records are longer than seq_length and dropped");
    assert!(count("pack", "fixed") > count("pack", "mftcoder"), "the flushed packs differ from MFTCoder's");
    assert!(count("concat", "fixed") > count("concat", "mftcoder"));
}
