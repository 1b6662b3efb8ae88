//! TensorBoard event files: our encoder gives TensorBoard's own bytes (`fixtures/tensorboard/`, written by
//! tensorboard 2.21's protobuf classes and RecordWriter), and a training run's events hold exactly the numbers
//! of its metrics.jsonl — one event per line, at the line's step — with a resumed run in a new file that starts
//! with a restart marker.
//! (`scripts/check_tensorboard.py` reads a real run back with TensorBoard's EventAccumulator.)

use mftcoder::train::metrics::{Tags, scalars};
use mftcoder::train::tensorboard::{What, event, masked_crc32c, record};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

#[test]
fn our_records_are_tensorboards_bytes() {
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tensorboard/events.json")).unwrap()).unwrap();
    let mut ours = Vec::new();
    for e in spec["events"].as_array().unwrap() {
        let (wall, step) = (e["wall_time"].as_f64().unwrap(), e["step"].as_i64().unwrap());
        let values: Vec<(String, f32)> = e["scalars"]
            .as_array()
            .map(|vs| vs.iter().map(|v| (v[0].as_str().unwrap().to_owned(), v[1].as_f64().unwrap() as f32)).collect())
            .unwrap_or_default();
        let what = match (e.get("file_version"), e.get("session_start")) {
            (Some(v), _) => What::FileVersion(v.as_str().unwrap()),
            (_, Some(_)) => What::SessionStart,
            _ => What::Scalars(&values),
        };
        ours.extend(record(&event(wall, step, what)));
    }
    let golden = std::fs::read(fixture("tensorboard/golden.tfevents")).unwrap();
    assert_eq!(ours.len(), golden.len());
    assert_eq!(ours, golden, "our event file differs from TensorBoard's");
}

/// One decoded event: step, and the scalars or the kind of event.
#[derive(Debug, PartialEq)]
enum Decoded {
    Version(String),
    Start(i64),
    Scalars(i64, Vec<(String, f32)>),
}

/// Read a TFRecord file, checking both CRCs of every record, and decode the events (the fields we write).
fn read_events(path: &Path) -> Vec<Decoded> {
    let bytes = std::fs::read(path).unwrap();
    let (mut at, mut out) = (0, Vec::new());
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), masked_crc32c(&bytes[at..at + 8]));
        let data = &bytes[at + 12..at + 12 + len];
        let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
        assert_eq!(crc, masked_crc32c(data), "{}: a record's CRC is wrong", path.display());
        out.push(decode_event(data));
        at += 16 + len;
    }
    out
}

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*at];
        *at += 1;
        v |= ((byte & 0x7F) as u64) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// (field number, wire type, payload) of each field of a message.
fn fields(b: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
    let (mut at, mut out) = (0, Vec::new());
    while at < b.len() {
        let key = varint(b, &mut at);
        let payload = match key & 7 {
            0 => varint(b, &mut at).to_le_bytes().to_vec(),
            1 => (at..at + 8).map(|i| b[i]).collect::<Vec<_>>(),
            5 => (at..at + 4).map(|i| b[i]).collect::<Vec<_>>(),
            2 => {
                let n = varint(b, &mut at) as usize;
                (at..at + n).map(|i| b[i]).collect::<Vec<_>>()
            }
            t => panic!("wire type {t}"),
        };
        at += match key & 7 {
            1 => 8,
            5 => 4,
            2 => payload.len(),
            _ => 0,
        };
        out.push((key >> 3, key & 7, payload));
    }
    out
}

fn decode_event(data: &[u8]) -> Decoded {
    let mut step = 0i64;
    for (field, _, payload) in fields(data) {
        match field {
            2 => step = i64::from_le_bytes(payload.try_into().unwrap()),
            3 => return Decoded::Version(String::from_utf8(payload).unwrap()),
            5 => {
                let values = fields(&payload)
                    .into_iter()
                    .map(|(_, _, value)| {
                        let parts = fields(&value);
                        let tag = String::from_utf8(parts[0].2.clone()).unwrap();
                        (tag, f32::from_le_bytes(parts[1].2.clone().try_into().unwrap()))
                    })
                    .collect();
                return Decoded::Scalars(step, values);
            }
            7 => return Decoded::Start(step),
            _ => {}
        }
    }
    panic!("an event without content")
}

fn events_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."))
        .collect();
    files.sort();
    files
}

fn write_tasks(dir: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for (task, n) in [("add", 24), ("reverse", 16)] {
        let d = dir.join(task);
        std::fs::create_dir_all(&d).unwrap();
        let lines: String = (0..n)
            .map(|i| {
                let (q, a) = if task == "add" {
                    (format!("{i} + 3"), format!("{}", i + 3))
                } else {
                    (format!("rev {i}x"), format!("x{i}"))
                };
                format!("{}\n", serde_json::json!({"prompt": q, "answer": a}))
            })
            .collect();
        std::fs::write(d.join("train.jsonl"), lines).unwrap();
        paths.push(d);
    }
    paths
}

#[test]
fn a_runs_events_hold_its_metrics_and_a_resumed_run_starts_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let (out, tb) = (dir.path().join("out"), dir.path().join("tb"));
    let cfg = serde_json::json!({
        "data_paths": write_tasks(dir.path()), "output_dir": out, "tb_dir": tb,
        "pretrained_model_path": fixture("llama/gqa_tied"), "peft_type": "lora", "lora_rank": 4,
        "weighted_loss_mode": "coba", "coba_warmup_steps": 1, "coba_history_length": 2,
        "seq_length": 32, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "learning_rate": 1e-3,
        "num_train_epochs": 1, "max_train_steps": 4, "data_split": "75,25,0", "checkpointing_steps": 2,
        "evaluation_steps": 2, "num_warmup_steps": 1, "early_stopping": false
    });
    let cfg_path = dir.path().join("config.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let train = || {
        let run = Command::new(env!("CARGO_BIN_EXE_mftcoder"))
            .args(["train", "--config", cfg_path.to_str().unwrap(), "--quiet"])
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    };
    train();
    let check = |file: &Path, first_step: i64| {
        let metrics: Vec<Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|l: &Value| l["step"].as_i64().unwrap() >= first_step)
            .collect();
        let events = read_events(file);
        assert_eq!(events[0], Decoded::Version("brain.Event:2".into()));
        assert_eq!(events[1], Decoded::Start(first_step));
        let want: Vec<Decoded> = metrics
            .iter()
            .map(|l| Decoded::Scalars(l["step"].as_i64().unwrap(), scalars(l, Tags::Mft { coba: true })))
            .collect();
        assert_eq!(&events[2..], &want[..], "{}", file.display());
        events
    };
    let files = events_files(&tb);
    assert_eq!(files.len(), 1);
    let events = check(&files[0], 0);
    let tags: Vec<&str> = events
        .iter()
        .filter_map(|e| if let Decoded::Scalars(_, v) = e { Some(v) } else { None })
        .flatten()
        .map(|(t, _)| t.as_str())
        .collect();
    for tag in ["Loss/train", "add_loss/train", "reverse_coba_weight/train", "LearningRate/train", "Loss/valid"] {
        assert!(tags.contains(&tag), "no `{tag}` in {tags:?}");
    }

    // as if killed after step 2: `latest` names step_2; the resumed run writes steps 3 and 4 into a new file
    let step2 = out.join("step_2");
    std::fs::write(out.join("latest"), serde_json::json!({"latest_ckpt": step2, "lr": 0.0}).to_string()).unwrap();
    train();
    let files = events_files(&tb);
    assert_eq!(files.len(), 2, "a resumed run appends a new events file");
    check(&files[1], 3);
}
