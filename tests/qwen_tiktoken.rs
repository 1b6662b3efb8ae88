//! Qwen-1's `qwen.tiktoken` loaded as a `tokenizers` BPE, token for token against the reference
//! (`tokenization_qwen.py` over tiktoken; goldens from `fixtures/tokenizer/qwen/make_golden.py`).
//!
//! The committed fixture is the real file truncated to its first 8192 ranks; the real file and a large corpus
//! (`scripts/fetch_qwen_tiktoken.sh --corpus`) drive the ignored tests:
//! `cargo test --release --test qwen_tiktoken -- --include-ignored`.

use mftcoder::io::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden() -> Value {
    let text = std::fs::read_to_string(root().join("fixtures/tokenizer/qwen/golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Every text's ids under `vocab` ("full" or "small"), with and without `add_special_tokens` (Qwen adds none).
fn check_encode(tok: &Tokenizer, cases: &[Value], vocab: &str) -> usize {
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case[vocab]);
        assert_eq!(tok.encode(text, false).unwrap(), want, "{vocab} vocabulary, text {text:?}");
        assert_eq!(tok.encode_fast(text, true).unwrap(), want, "{vocab} vocabulary, text {text:?}");
    }
    cases.len()
}

fn check_decode(tok: &Tokenizer, cases: &[Value]) {
    for case in cases {
        let want = case["text"].as_str().unwrap();
        assert_eq!(tok.decode(&ids(&case["ids"]), false).unwrap(), want, "ids {}", case["ids"]);
    }
}

#[test]
fn truncated_ranks_encode_and_decode_as_tiktoken() {
    let g = golden();
    let tok = Tokenizer::load(&root().join("fixtures/tokenizer/qwen")).unwrap();
    assert!(tok.path.ends_with("qwen.tiktoken"), "{}", tok.path.display());
    check_encode(&tok, g["encode"].as_array().unwrap(), "small");
    check_decode(&tok, g["decode_small"].as_array().unwrap());
    let cutoff = g["meta"]["cutoff"].as_u64().unwrap() as u32;
    assert_eq!(tok.base_vocab_size(), cutoff as usize);
    assert_eq!(tok.vocab_size(), cutoff as usize + 208);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(cutoff));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(cutoff + 2));
    assert_eq!(tok.token_to_id("<|extra_204|>"), Some(cutoff + 207));
    assert_eq!(tok.special_tokens().len(), 208);
    // skip_special_tokens drops them, as the reference's `i < eod_id` filter does
    let with_special = tok.encode("a<|im_start|>b<|endoftext|>", false).unwrap();
    assert_eq!(tok.decode(&with_special, true).unwrap(), "ab");
}

#[test]
fn a_piece_that_is_a_token_stays_whole_even_where_no_merge_reaches_it() {
    let g = &golden()["handmade"];
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = g["ranks"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(r, t)| format!("{} {r}", t.as_str().unwrap()))
        .collect();
    std::fs::write(dir.path().join("qwen.tiktoken"), lines.join("\n")).unwrap();
    let tok = Tokenizer::load(dir.path()).unwrap();
    assert_eq!(tok.encode(g["text"].as_str().unwrap(), false).unwrap(), ids(&g["ids"]));
}

#[test]
fn bad_ranks_files_get_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 4] = [
        ("IQ== 0\nIg==\n", "expected `base64_token rank`"),
        ("IQ== 0\n!!! 1\n", "is not base64"),
        ("IQ== 0\nIg== 2\n", "rank 1 is missing"),
        ("IQ== 0\nIg== 1\n", "has no rank"),
    ];
    for (text, want) in cases {
        let path = dir.path().join("qwen.tiktoken");
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", Tokenizer::load(dir.path()).err().expect(text));
        assert!(err.contains(want) && err.contains("qwen.tiktoken"), "{text:?}: {err}");
    }
}

fn real_file() -> PathBuf {
    let path = root().join(".cache/qwen_tiktoken/qwen.tiktoken");
    assert!(path.is_file(), "{}: run scripts/fetch_qwen_tiktoken.sh", path.display());
    path
}

#[test]
#[ignore = "needs .cache/qwen_tiktoken/qwen.tiktoken: scripts/fetch_qwen_tiktoken.sh"]
fn real_qwen_tiktoken_matches_tokenization_qwen() {
    let g = golden();
    let tok = Tokenizer::load(&real_file()).unwrap();
    check_encode(&tok, g["encode"].as_array().unwrap(), "full");
    check_decode(&tok, g["decode"].as_array().unwrap());
    assert_eq!(tok.vocab_size(), 151851);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(151643));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(151644));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(151645));
}

#[test]
#[ignore = "needs .cache/qwen_tiktoken/big_corpus.json: scripts/fetch_qwen_tiktoken.sh --corpus"]
fn large_corpus_matches_tiktoken_for_both_vocabularies() {
    let path = root().join(".cache/qwen_tiktoken/big_corpus.json");
    let cases: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let full = Tokenizer::load(&real_file()).unwrap();
    let small = Tokenizer::load(Path::new(&root().join("fixtures/tokenizer/qwen"))).unwrap();
    assert!(check_encode(&full, &cases, "full") > 3000);
    check_encode(&small, &cases, "small");
}

mod common;

fn mftcoder(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mftcoder")).args(args).output().expect("run mftcoder")
}

/// A model directory as Qwen-1 ships its tokenizer: the tiny Llama fixture's weights, `qwen.tiktoken`, no
/// `tokenizer.json`.
fn qwen_style_dir() -> common::Scratch {
    let dir = common::Scratch::new("qwen-tiktoken");
    let llama = root().join("fixtures/llama/gqa_tied");
    for entry in std::fs::read_dir(&llama).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        if !name.starts_with("tokenizer") && !name.starts_with("golden") {
            std::fs::copy(&path, dir.join(name)).unwrap();
        }
    }
    std::fs::copy(root().join("fixtures/tokenizer/qwen/qwen.tiktoken"), dir.join("qwen.tiktoken")).unwrap();
    dir
}

#[test]
fn info_generate_and_encode_work_on_a_qwen_tiktoken_directory() {
    let dir = qwen_style_dir();
    let d = dir.to_str().unwrap();
    let tok = Tokenizer::load(&dir).unwrap();

    let info = mftcoder(&["info", "--model", d]);
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    let info = String::from_utf8(info.stdout).unwrap();
    assert!(info.contains("tiktoken ranks (BPE), 8400 tokens") && info.contains("<|endoftext|>=8192"), "{info}");

    let prompt = "a = b";
    let want_prompt = tok.encode(prompt, true).unwrap();
    assert!(want_prompt.iter().all(|&i| i < 320), "the prompt must fit the fixture model's 320 ids: {want_prompt:?}");
    let out = mftcoder(&["generate", "--model", d, "--prompt", prompt, "--max-new-tokens", "6", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&json["prompt_ids"]), want_prompt);
    let generated = ids(&json["generated_ids"]);
    assert!(!generated.is_empty());
    assert_eq!(json["text"].as_str().unwrap(), tok.decode(&generated, true).unwrap());

    // MFTCoder's training layout: the user turn and the assistant marker are one segment, then the answer + EOS
    let data = dir.join("chat.jsonl");
    let record =
        r#"{"chat_rounds": [{"role": "human", "content": "写一个函数"}, {"role": "bot", "content": "def f(): pass"}]}"#;
    std::fs::write(&data, format!("{record}\n")).unwrap();
    let out = mftcoder(&["encode", "--tokenizer", d, "--data", data.to_str().unwrap(), "--seq-length", "64"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().lines().next().unwrap()).unwrap();
    let mut want = tok.encode("<s>human\n写一个函数\n<s>bot\n", false).unwrap();
    want.extend(tok.encode("def f(): pass\n", false).unwrap());
    want.push(2); // config.json's eos_token_id
    assert_eq!(ids(&line["input_ids"])[..want.len()], want[..]);
}
