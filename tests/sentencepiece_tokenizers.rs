//! SentencePiece `tokenizer.model` loaded directly, token for token against the reference tokenizer classes
//! (`tokenization_chatglm.py` for ChatGLM2/3, `tokenization_baichuan.py` for Baichuan2, under transformers 4.44.2)
//! and against `SentencePieceProcessor` for a plain Unigram model. Goldens: `fixtures/golden/sentencepiece_tokenizers.py`.

use mftcoder::data::{Encoder, RoleMarkers, TokenizeMode, parse_line, resolve_eos};
use mftcoder::infer::chat_template::{self, Role};
use mftcoder::io::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("fixtures/tokenizer").join(name)
}

fn golden(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("golden.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Encode with and without special tokens, and decode with and without skipping them.
fn check_encode_decode(tok: &Tokenizer, g: &Value) {
    for case in g["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        assert_eq!(tok.encode(text, false).unwrap(), want, "{}: text {text:?}", tok.path.display());
        assert_eq!(tok.encode_fast(text, true).unwrap(), ids(&case["ids_special"]), "with special tokens: {text:?}");
        assert_eq!(tok.encode_bounded(text).unwrap(), want, "bounded: {text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), case["decode"].as_str().unwrap(), "decode of {text:?}");
        assert_eq!(tok.decode(&want, true).unwrap(), case["decode_skip"].as_str().unwrap(), "skip: {text:?}");
    }
    check_random(tok, g);
    for case in g["decode"].as_array().unwrap() {
        let i = ids(&case["ids"]);
        assert_eq!(tok.decode(&i, false).unwrap(), case["text"].as_str().unwrap(), "decode {i:?}");
        assert_eq!(tok.decode(&i, true).unwrap(), case["text_skip"].as_str().unwrap(), "decode skipping {i:?}");
    }
}

/// The random mixed-script strings (byte fallback, whitespace runs, special-token texts), without special tokens.
fn check_random(tok: &Tokenizer, g: &Value) {
    let cases = g["random"].as_array().unwrap();
    assert!(cases.len() >= 250);
    for case in cases {
        let text = case[0].as_str().unwrap();
        assert_eq!(
            tok.encode_fast(text, false).unwrap(),
            ids(&case[1]),
            "{}: random text {text:?}",
            tok.path.display()
        );
    }
}

/// MFTCoder's chat template with the class's eos_token, and a chatML record through the data pipeline (§1.4).
fn check_mftcoder_layout(tok: &Tokenizer, g: &Value) {
    let eos = resolve_eos(tok).unwrap();
    assert_eq!(eos as u64, g["meta"]["eos_id"].as_u64().unwrap(), "MFTCoder's EOS resolution");
    let eos_token = g["eos_token"].as_str().unwrap();
    assert_eq!(tok.id_to_token(eos).as_deref(), Some(eos_token));
    for chat in g["chat"].as_array().unwrap() {
        let messages: Vec<(Role, &str)> = chat["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let role = match m[0].as_str().unwrap() {
                    "system" => Role::System,
                    "user" => Role::User,
                    _ => Role::Assistant,
                };
                (role, m[1].as_str().unwrap())
            })
            .collect();
        let text = chat_template::render(&messages, eos_token, true).unwrap();
        assert_eq!(text, chat["text"].as_str().unwrap());
        assert_eq!(tok.encode(&text, false).unwrap(), ids(&chat["ids"]), "chat {text:?}");
    }
    let record = parse_line(g["record"]["record"].to_string().as_bytes()).unwrap();
    let encoded = Encoder::new(tok, RoleMarkers::default(), TokenizeMode::Sft).unwrap().encode(&record).unwrap();
    assert_eq!(encoded.ids, ids(&g["record"]["ids"]));
    let mask: Vec<u8> = ids(&g["record"]["loss_mask"]).into_iter().map(|m| m as u8).collect();
    assert_eq!(encoded.loss_mask, mask);
}

fn check_meta(tok: &Tokenizer, g: &Value, family: &str) {
    assert!(tok.format().contains(family), "{}", tok.format());
    assert_eq!(tok.base_vocab_size() as u64, g["meta"]["vocab_size"].as_u64().unwrap());
    assert!(tok.summary().starts_with(&format!("SentencePiece tokenizer.model, {family} wrapper (BPE)")));
}

#[test]
fn chatglm2_matches_tokenization_chatglm() {
    let g = golden("chatglm2");
    let tok = Tokenizer::load(&fixture("chatglm2")).unwrap();
    check_meta(&tok, &g, "ChatGLM2");
    let n = tok.base_vocab_size() as u32 - 5;
    assert_eq!(tok.token_to_id("[gMASK]"), Some(n + 1));
    assert_eq!(tok.id_to_token(n + 3).as_deref(), Some("sop"));
    assert_eq!(tok.token_to_id("<|user|>"), None, "ChatGLM3's role tokens are not ChatGLM2's");
    check_encode_decode(&tok, &g);
    check_mftcoder_layout(&tok, &g);
}

#[test]
fn chatglm3_matches_tokenization_chatglm() {
    let g = golden("chatglm3");
    let tok = Tokenizer::load(&fixture("chatglm3").join("tokenizer.model")).unwrap();
    check_meta(&tok, &g, "ChatGLM3");
    let n = tok.base_vocab_size() as u32 - 9;
    assert_eq!(tok.token_to_id("<|observation|>"), Some(n + 8));
    let specials: Vec<String> = tok.special_tokens().into_iter().map(|(_, t)| t).collect();
    assert_eq!(specials[5..], ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]);
    check_encode_decode(&tok, &g);
    check_mftcoder_layout(&tok, &g);
}

#[test]
fn baichuan2_matches_tokenization_baichuan_with_and_without_bos() {
    let g = golden("baichuan2");
    let tok = Tokenizer::load(&fixture("baichuan2")).unwrap();
    check_meta(&tok, &g, "Baichuan2");
    let specials: Vec<(u64, String)> = serde_json::from_value(g["meta"]["special_tokens"].clone()).unwrap();
    let ours: Vec<(u64, String)> = tok.special_tokens().into_iter().map(|(i, t)| (i as u64, t)).collect();
    assert_eq!(ours, specials);
    check_encode_decode(&tok, &g);
    check_mftcoder_layout(&tok, &g);

    let dir = common::Scratch::new("baichuan-bos");
    std::fs::copy(fixture("baichuan2/tokenizer.model"), dir.join("tokenizer.model")).unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("baichuan2/tokenizer_config.json")).unwrap()).unwrap();
    for (k, v) in g["add_bos"]["tokenizer_config"].as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let tok = Tokenizer::load(&dir).unwrap();
    for (case, want) in g["encode"].as_array().unwrap().iter().zip(g["add_bos"]["ids_special"].as_array().unwrap()) {
        assert_eq!(tok.encode(case["text"].as_str().unwrap(), true).unwrap(), ids(want), "add_bos_token: {case}");
    }
}

fn check_plain(name: &str, model: &str) {
    let g = golden(name);
    let tok = Tokenizer::load(&fixture(name)).unwrap();
    assert_eq!(tok.format(), "SentencePiece tokenizer.model, plain SentencePiece wrapper");
    assert!(tok.summary().contains(&format!("({model})")), "{}", tok.summary());
    assert_eq!(tok.vocab_size() as u64, g["meta"]["vocab_size"].as_u64().unwrap());
    for case in g["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        assert_eq!(tok.encode(text, true).unwrap(), want, "text {text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), case["decode"].as_str().unwrap(), "decode of {text:?}");
    }
    check_random(&tok, &g);
    for case in g["decode"].as_array().unwrap() {
        assert_eq!(tok.decode(&ids(&case["ids"]), false).unwrap(), case["text"].as_str().unwrap(), "{case}");
    }
}

#[test]
fn a_plain_unigram_model_matches_sentencepiece_processor() {
    check_plain("sentencepiece_unigram", "Unigram");
}

#[test]
fn a_bpe_model_without_byte_fallback_matches_sentencepiece_processor() {
    check_plain("sentencepiece_bpe_unk", "BPE");
}

#[test]
fn user_defined_pieces_with_the_dummy_prefix_match_sentencepiece_processor() {
    check_plain("sentencepiece_bpe_user_defined", "BPE");
}

#[test]
fn a_text_longer_than_one_encoding_piece_gets_one_dummy_prefix() {
    let tok = Tokenizer::load(&fixture("chatglm2")).unwrap();
    let line = "def fib(n):\n    return fib(n - 1) + 我们 😀\n";
    let text = line.repeat((1 << 20) / line.len() + 50);
    let whole = tok.encode(&text, false).unwrap();
    assert_eq!(tok.encode_bounded(&text).unwrap(), whole);
}

/// A scratch directory holding a fixture's `tokenizer.model` and the given extra files.
fn dir_with(model_of: &str, files: &[(&str, &str)]) -> common::Scratch {
    let dir = common::Scratch::new("sp-family");
    std::fs::copy(fixture(model_of).join("tokenizer.model"), dir.join("tokenizer.model")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

#[test]
fn the_family_comes_from_the_configs_and_the_chatglm_code_file() {
    let family = |files: &[(&str, &str)]| Tokenizer::load(&dir_with("chatglm2", files)).unwrap().format();
    let class = r#"{"tokenizer_class": "ChatGLMTokenizer"}"#;
    assert!(family(&[("tokenizer_config.json", class)]).contains("ChatGLM2"));
    let v3 = "SPECIALS = ['<|user|>', '<|observation|>']";
    assert!(family(&[("tokenizer_config.json", class), ("tokenization_chatglm.py", v3)]).contains("ChatGLM3"));
    assert!(
        family(&[("tokenization_chatglm.py", "x"), ("config.json", r#"{"model_type": "chatglm"}"#)])
            .contains("ChatGLM2")
    );
    let named = r#"{"model_type": "chatglm", "_name_or_path": "THUDM/chatglm3-6b"}"#;
    assert!(family(&[("config.json", named)]).contains("ChatGLM3"));
    assert!(family(&[("config.json", r#"{"model_type": "baichuan"}"#)]).contains("Baichuan2"));
    assert!(family(&[]).contains("plain"));
}

#[test]
fn bad_models_and_configs_get_one_clear_error() {
    let err = |dir: &Path| format!("{:#}", Tokenizer::load(dir).err().expect("must fail"));
    let llama = dir_with("chatglm2", &[("tokenizer_config.json", r#"{"tokenizer_class": "LlamaTokenizer"}"#)]);
    let e = err(&llama);
    assert!(e.contains("tokenizer_config.json: tokenizer_class \"LlamaTokenizer\"") && e.contains("supported"), "{e}");
    let gpt = dir_with("chatglm2", &[("config.json", r#"{"model_type": "gpt2"}"#)]);
    assert!(err(&gpt).contains("config.json: model_type \"gpt2\""), "{}", err(&gpt));
    let eos = dir_with(
        "baichuan2",
        &[("tokenizer_config.json", r#"{"tokenizer_class": "BaichuanTokenizer", "eos_token": "<|nope|>"}"#)],
    );
    assert!(err(&eos).contains("eos_token \"<|nope|>\" is not a piece"), "{}", err(&eos));
    let cut = dir_with("chatglm2", &[]);
    let bytes = std::fs::read(fixture("chatglm2/tokenizer.model")).unwrap();
    std::fs::write(cut.join("tokenizer.model"), &bytes[..bytes.len() - 1]).unwrap(); // inside its last field
    let e = err(&cut);
    assert!(e.contains("tokenizer.model: ") && e.contains("past the end"), "{e}");
    let unknown_id = dir_with("chatglm2", &[]);
    assert!(
        Tokenizer::load(&unknown_id)
            .unwrap()
            .decode(&[1_000_000], false)
            .unwrap_err()
            .to_string()
            .contains("out of range")
    );
}

fn mftcoder(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mftcoder")).args(args).output().expect("run mftcoder")
}

#[test]
fn info_encode_and_tokenize_work_on_a_tokenizer_model_directory() {
    let g = golden("chatglm3");
    let dir = common::Scratch::new("sp-cli");
    for entry in std::fs::read_dir(root().join("fixtures/llama/gqa_tied")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        if !name.starts_with("tokenizer") && !name.starts_with("golden") {
            std::fs::copy(&path, dir.join(name)).unwrap();
        }
    }
    for name in ["tokenizer.model", "tokenizer_config.json"] {
        std::fs::copy(fixture("chatglm3").join(name), dir.join(name)).unwrap();
    }
    let d = dir.to_str().unwrap();
    let info = mftcoder(&["info", "--model", d]);
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    let info = String::from_utf8(info.stdout).unwrap();
    assert!(
        info.contains("SentencePiece tokenizer.model, ChatGLM3 wrapper (BPE)") && info.contains("[gMASK]="),
        "{info}"
    );

    let data = dir.join("chat.jsonl");
    std::fs::write(&data, format!("{}\n", g["record"]["record"])).unwrap();
    let out = mftcoder(&["encode", "--tokenizer", d, "--data", data.to_str().unwrap(), "--seq-length", "512"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().lines().next().unwrap()).unwrap();
    let want = ids(&g["record"]["ids"]);
    assert_eq!(ids(&line["input_ids"])[..want.len()], want[..]);

    // a merged model keeps the tokenizer.model it was trained with
    let merged = dir.join("merged");
    let adapter = root().join("fixtures/lora/gqa_tied/adapter");
    let out =
        mftcoder(&["merge", "--base", d, "--adapter", adapter.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(Tokenizer::load(&merged).unwrap().format().contains("ChatGLM3"));

    // offline tokenization: each document's ids and the EOS, read back from the .bin/.idx
    let tok = Tokenizer::load(&dir).unwrap();
    let text = g["encode"][3]["text"].as_str().unwrap();
    let data_dir = dir.join("jsonl");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("docs.jsonl"), format!("{}\n", serde_json::json!({ "content": text }))).unwrap();
    let prefix = dir.join("docs");
    let (data_dir, prefix) = (data_dir.to_str().unwrap(), prefix.to_str().unwrap());
    let out = mftcoder(&["tokenize", "--tokenizer", d, "--data", data_dir, "--out", prefix, "--threads", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bin = mftcoder::data::IndexedDataset::open(&dir.join("docs_input_ids")).unwrap();
    let mut want = ids(&g["encode"][3]["ids"]);
    want.push(resolve_eos(&tok).unwrap());
    assert_eq!(bin.get(0), want);
}
