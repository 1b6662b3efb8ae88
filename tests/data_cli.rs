//! `mftcoder encode` and `mftcoder tokenize` as a user runs them: the JSONL contract, the summary, the
//! one-line errors with file:line and exit code 2, no partial output, and `.bin/.idx` that read back.

use mftcoder::data::IndexedDataset;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny() -> PathBuf {
    root().join("fixtures/tokenizer")
}

fn mftcoder(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mftcoder")).args(args).output().expect("run mftcoder")
}

mod common;
use common::Scratch;

fn temp(name: &str) -> Scratch {
    Scratch::new(&format!("cli-{name}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn golden_tiny() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("fixtures/data/golden/tiny.json")).unwrap()).unwrap()
}

#[test]
fn encode_prints_one_json_object_per_sample_matching_the_goldens() {
    let g = golden_tiny();
    let data: Vec<String> =
        g["task_paths"].as_array().unwrap().iter().map(|p| s(&root().join(p.as_str().unwrap())).to_string()).collect();
    let seq = g["seq_length"].to_string();
    let out = mftcoder(&[
        "encode",
        "--tokenizer",
        s(&tiny()),
        "--data",
        &data.join(","),
        "--seq-length",
        &seq,
        "--padding-mode",
        "pack",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let want = g["samples"]["pack"]["fixed"].as_array().unwrap();
    let want: Vec<(usize, &Value)> =
        want.iter().enumerate().flat_map(|(k, t)| t.as_array().unwrap().iter().map(move |x| (k, x))).collect();
    assert_eq!(lines.len(), want.len());
    let l = g["seq_length"].as_u64().unwrap() as usize + 1;
    let eos = g["eos_id"].as_u64().unwrap();
    for (line, (k, w)) in lines.iter().zip(want) {
        assert_eq!(line["task_id"].as_u64().unwrap() as usize, k);
        let ids = line["input_ids"].as_array().unwrap();
        let mask = line["loss_mask"].as_array().unwrap();
        let segs = line["segment_ids"].as_array().unwrap();
        assert_eq!((ids.len(), mask.len(), segs.len()), (l, l, l), "padded to seq_length + 1");
        let n = w[0].as_array().unwrap().len();
        assert_eq!(&ids[..n], w[0].as_array().unwrap().as_slice());
        assert_eq!(&mask[..n], w[1].as_array().unwrap().as_slice());
        assert!(ids[n..].iter().all(|x| x.as_u64() == Some(eos)) && mask[n..].iter().all(|x| x.as_u64() == Some(0)));
        assert!(segs[..n].iter().all(|x| x.as_u64().unwrap() >= 1) && segs[n..].iter().all(|x| x.as_u64() == Some(0)));
    }
    assert_eq!(lines[0]["task"], "chat");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().filter(|l| l.starts_with("task ")).count(), 3, "{stderr}");
    assert!(
        stderr.contains("task text.jsonl (id 2)") && stderr.contains("supervised") && stderr.contains("dropped"),
        "{stderr}"
    );
}

#[test]
fn encode_writes_atomically_and_reports_bad_records_with_file_and_line() {
    let dir = temp("encode");
    let good = dir.join("good.jsonl");
    std::fs::write(&good, "{\"prompt\":\"p\",\"answer\":\"a\"}\n").unwrap();
    let out_file = dir.join("samples.jsonl");
    let out = mftcoder(&[
        "encode",
        "--tokenizer",
        s(&tiny()),
        "--data",
        s(&good),
        "--seq-length",
        "16",
        "--unpadded",
        "--out",
        s(&out_file),
        "--role-markers",
        r#"{"system":"S:","user":"U:","assistant":"A:"}"#,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
    let v: Value = serde_json::from_str(std::fs::read_to_string(&out_file).unwrap().trim()).unwrap();
    assert_eq!(v["task"], "good.jsonl");
    assert!(v["input_ids"].as_array().unwrap().len() < 17, "unpadded");

    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"text\":\"fine\"}\n{\"chat_rounds\":[{\"role\":\"bot\",\"content\":\"a\"}]}\n").unwrap();
    let out_bad = dir.join("never.jsonl");
    let out =
        mftcoder(&["encode", "--tokenizer", s(&tiny()), "--data", s(&bad), "--seq-length", "16", "--out", s(&out_bad)]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: {}:2: chat_rounds[0]: conversation roles must alternate", bad.display())),
        "{stderr}"
    );
    assert!(!out_bad.exists(), "no partial output");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3, "no temporary file left");

    let out =
        mftcoder(&["encode", "--tokenizer", s(&tiny()), "--data", s(&bad), "--seq-length", "16", "--skip-bad-records"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1);
    assert!(String::from_utf8(out.stderr).unwrap().contains("1 bad records skipped"));

    let out = mftcoder(&[
        "encode",
        "--tokenizer",
        s(&tiny()),
        "--data",
        &format!("{},{}", s(&good), s(&dir.join("x/other.jsonl"))),
        "--seq-length",
        "16",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("no such file"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tokenize_writes_mmididx_that_reads_back_identically() {
    let dir = temp("tokenize");
    let out = mftcoder(&[
        "tokenize",
        "--tokenizer",
        s(&tiny()),
        "--data",
        s(&root().join("fixtures/data/pretrain")),
        "--out",
        s(&dir.join("corpus")),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("tokens/s"), "{stderr}");
    let bin = std::fs::read(dir.join("corpus_input_ids.bin")).unwrap();
    let idx = std::fs::read(dir.join("corpus_input_ids.idx")).unwrap();
    assert_eq!(bin, std::fs::read(root().join("fixtures/data/offline/tiny_input_ids.bin")).unwrap());
    assert_eq!(idx, std::fs::read(root().join("fixtures/data/offline/tiny_input_ids.idx")).unwrap());
    let ds = IndexedDataset::open(&dir.join("corpus_input_ids")).unwrap();
    let docs: Vec<Vec<u32>> = golden_tiny()["offline"]["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
        .collect();
    assert_eq!((0..ds.len()).map(|i| ds.get(i)).collect::<Vec<_>>(), docs);

    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("x.jsonl"), "{\"text\":\"a\"}\nnot json\n").unwrap();
    let out = mftcoder(&[
        "tokenize",
        "--tokenizer",
        s(&tiny()),
        "--data",
        s(&bad),
        "--out",
        s(&dir.join("b")),
        "--threads",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with(&format!("error: {}:2: invalid JSON", bad.join("x.jsonl").display())), "{stderr}");
    assert!(!dir.join("b_input_ids.bin").exists() && !dir.join("b_input_ids.idx").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Run `mftcoder encode` and return its output with its peak resident memory in bytes (from wait4).
fn encode_measured(args: &[&str]) -> (Output, u64) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mftcoder"))
        .arg("encode")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = Vec::new();
    child.stderr.take().unwrap().read_to_end(&mut stderr).unwrap();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: reaps our own child and fills `usage`.
    assert_eq!(unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) }, child.id() as i32);
    let code = std::os::unix::process::ExitStatusExt::from_raw(status);
    (Output { status: code, stdout: Vec::new(), stderr }, usage.ru_maxrss as u64 * 1024)
}

#[test]
fn a_record_far_beyond_seq_length_is_dropped_or_cut_before_it_is_tokenized() {
    let dir = temp("huge-record");
    let body = "def f(x):\n    return x + 1\n".repeat(220_000); // 5.9 MB
    let huge = serde_json::json!({"prompt": "q", "answer": body}).to_string();
    let small = serde_json::json!({"prompt": "hi", "answer": "ok"}).to_string();
    let data = dir.join("t.jsonl");
    std::fs::write(&data, format!("{huge}\n{small}\n")).unwrap();
    let out = dir.join("out.jsonl");
    let (run, peak) =
        encode_measured(&["--tokenizer", s(&tiny()), "--data", s(&data), "--seq-length", "64", "--out", s(&out)]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{err}");
    assert!(
        err.contains(&format!("warning: {}:1: a record of {} bytes, far beyond seq_length", s(&data), huge.len())),
        "{err}"
    );
    assert!(err.contains("2 records in 1 files → 1 samples") && err.contains("1 dropped (too long)"), "{err}");
    // tokenizing the record whole took 1.2 GB; reading its line without tokenizing it costs nothing like it
    assert!(peak < 200 << 20, "peak resident memory {} MiB", peak >> 20);

    // truncate: cut before tokenizing, and the kept tokens are those of a whole-record truncation
    let (run, peak) = encode_measured(&[
        "--tokenizer",
        s(&tiny()),
        "--data",
        s(&data),
        "--seq-length",
        "64",
        "--truncate",
        "--out",
        s(&out),
    ]);
    assert!(run.status.success() && peak < 200 << 20, "{} ({} MiB)", String::from_utf8_lossy(&run.stderr), peak >> 20);
    let short = dir.join("short.jsonl");
    let head = serde_json::json!({"prompt": "q", "answer": &body[..20_000]}).to_string();
    std::fs::write(&short, format!("{head}\n{small}\n")).unwrap();
    let short_out = dir.join("short-out.jsonl");
    let (run, _) = encode_measured(&[
        "--tokenizer",
        s(&tiny()),
        "--data",
        s(&short),
        "--seq-length",
        "64",
        "--truncate",
        "--out",
        s(&short_out),
    ]);
    assert!(run.status.success());
    let samples = |p: &Path| -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("task");
                v
            })
            .collect()
    };
    assert_eq!(samples(&out), samples(&short_out));
    std::fs::remove_dir_all(&dir).unwrap();
}
