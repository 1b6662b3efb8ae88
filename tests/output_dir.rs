//! One run per output directory: a second run into a directory in use is refused, a stale lock is taken
//! over, a run with another config, base model or data never resumes from (or deletes) the one recorded
//! there unless `--overwrite-output-dir`; a step that makes the weights non-finite stops before it is
//! checkpointed; partial files of killed runs are removed at start-up.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::Scratch;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mftcoder"))
}

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/llama/gqa_tied")
}

/// One small task; `config(dir, extra)` writes a full-parameter config over it into `dir/config-N.json`.
fn config(dir: &Path, extra: serde_json::Value) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    if !data.join("train.jsonl").exists() {
        let lines: String = (0..40)
            .map(|i| {
                format!("{}\n", serde_json::json!({"prompt": format!("{i} + 1 ="), "answer": format!("{}", i + 1)}))
            })
            .collect();
        std::fs::write(data.join("train.jsonl"), lines).unwrap();
    }
    let mut cfg = serde_json::json!({
        "data_paths": [data], "output_dir": dir.join("out"), "pretrained_model_path": fixture_model(),
        "peft_type": null, "seq_length": 32, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4,
        "learning_rate": 1e-3, "min_lr": 0.0, "num_train_epochs": 1, "data_split": "80,20,0",
        "checkpointing_steps": 4, "evaluation_steps": 0, "num_warmup_steps": 0, "early_stopping": false,
        "saving_limit": 1
    });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let path = dir.join(format!("config-{}.json", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

fn train(cfg: &Path, extra_args: &[&str]) -> Output {
    bin().args(["train", "--config", cfg.to_str().unwrap(), "--quiet"]).args(extra_args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn one_line_error(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

/// Every file under `dir` with its bytes (to show a refused run changed nothing).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_second_run_into_an_output_directory_in_use_is_refused() {
    // On a loaded machine the first run can finish before the second has started; the second then rightly
    // succeeds, and the case is tried again with a longer first run.
    for epochs in [40, 400, 4000] {
        let s = Scratch::new(&format!("concurrent-{epochs}"));
        let cfg = config(&s, serde_json::json!({"num_train_epochs": epochs}));
        let mut first =
            bin().args(["train", "--config", cfg.to_str().unwrap(), "--quiet"]).stderr(Stdio::piped()).spawn().unwrap();
        let lock = s.join("out/.mftcoder.lock");
        let t0 = Instant::now();
        while !lock.is_file() {
            assert!(t0.elapsed() < Duration::from_secs(30), "the first run never took the lock");
            std::thread::sleep(Duration::from_millis(5));
        }
        let second = train(&cfg, &[]);
        let first_had_ended = first.try_wait().unwrap().is_some();
        if second.status.success() && first_had_ended {
            first.wait_with_output().unwrap();
            continue;
        }
        one_line_error(&second, &["in use by another run", &format!("process {}", first.id())]);
        let out = first.wait_with_output().unwrap();
        assert!(out.status.success(), "the first run: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!lock.exists(), "the lock is released at exit");
        return;
    }
    panic!("the first run always ended before the second could start, even at 4000 epochs");
}

#[test]
fn a_stale_lock_of_a_dead_process_is_taken_over_with_a_notice() {
    let s = Scratch::new("stale");
    let cfg = config(&s, serde_json::json!({}));
    std::fs::create_dir_all(s.join("out")).unwrap();
    std::fs::write(s.join("out/.mftcoder.lock"), "999999999\n").unwrap(); // above any pid_max
    let run = train(&cfg, &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("taking over the lock of process 999999999"), "{}", stderr(&run));
}

#[test]
fn a_run_with_another_config_is_refused_and_leaves_the_recorded_run_untouched() {
    let s = Scratch::new("other-config");
    let cfg = config(&s, serde_json::json!({}));
    let first = train(&cfg, &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let before = snapshot(&s.join("out"));
    assert!(before.iter().any(|(p, _)| p.ends_with("metrics.jsonl")));

    let other = config(&s, serde_json::json!({"learning_rate": 2e-3}));
    let refused = train(&other, &[]);
    one_line_error(
        &refused,
        &["holds another run", "field `learning_rate` was 0.001, is now 0.002", "--overwrite-output-dir"],
    );
    assert_eq!(snapshot(&s.join("out")), before, "the earlier run's files changed");

    // other data: named too
    let data = s.join("data/train.jsonl");
    let text = std::fs::read_to_string(&data).unwrap();
    std::fs::write(&data, text.replace("\"1 + 1 =\"", "\"one plus one\"")).unwrap();
    let cfg = config(&s, serde_json::json!({}));
    one_line_error(&train(&cfg, &[]), &["the data files changed"]);
    assert_eq!(snapshot(&s.join("out")), before);

    let fresh = train(&other, &["--overwrite-output-dir"]);
    let err = stderr(&fresh);
    assert!(fresh.status.success(), "{err}");
    assert!(err.contains("removed") && !err.contains("resuming"), "{err}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.join("out/mftcoder_run.json")).unwrap()).unwrap();
    assert_eq!(record["config"]["learning_rate"], 2e-3);
}

#[test]
fn the_same_run_resumes_and_a_finished_one_says_so() {
    let s = Scratch::new("same");
    let cfg = config(&s, serde_json::json!({}));
    assert!(train(&cfg, &[]).status.success());
    let again = train(&cfg, &[]);
    let err = stderr(&again);
    assert!(again.status.success(), "{err}");
    assert!(err.contains("already complete"), "{err}");
}

#[test]
fn a_step_that_makes_the_weights_non_finite_stops_before_it_is_saved() {
    let s = Scratch::new("non-finite");
    // step 1 runs at lr 0 (warm-up), step 2 at 1.5e38: f32 overflows in the update itself, while its loss and
    // gradients (computed before the update) are finite
    let cfg = config(
        &s,
        serde_json::json!({"learning_rate": 3e38, "lr_scheduler_type": "constant_with_warmup",
                           "num_warmup_steps": 2, "checkpointing_steps": 1, "gradient_clipping": 0.0}),
    );
    let run = train(&cfg, &[]);
    one_line_error(&run, &["step 2", "non-finite", "latest"]);
    let latest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.join("out/latest")).unwrap()).unwrap();
    let ckpt = PathBuf::from(latest["latest_ckpt"].as_str().unwrap());
    assert!(ckpt.ends_with("step_1"), "{ckpt:?}");
    let store = mftcoder::io::safetensors::WeightStore::open(&ckpt).unwrap();
    for name in store.names() {
        assert!(store.tensor_f32(name).unwrap().iter().all(|v| v.is_finite()), "{name} is not finite");
    }
    assert!(!s.join("out/step_2").exists());
}

#[test]
fn partial_files_of_killed_runs_are_removed_at_start_up() {
    let s = Scratch::new("partials");
    let cfg = config(&s, serde_json::json!({}));
    let out = s.join("out");
    std::fs::create_dir_all(out.join(".step_4.partial-999999999")).unwrap();
    std::fs::write(out.join(".step_4.partial-999999999/model.safetensors"), b"half").unwrap();
    std::fs::write(out.join(".write-test-999999999"), b"ok").unwrap();
    std::fs::write(out.join(".latest.tmp-999999999"), b"{").unwrap();
    let run = train(&cfg, &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    let hidden: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "left: {hidden:?}");
}

#[test]
fn dpo_refuses_an_output_directory_of_another_run() {
    let s = Scratch::new("dpo");
    let train_cfg = config(&s, serde_json::json!({}));
    assert!(train(&train_cfg, &[]).status.success());
    let pairs = s.join("pairs.jsonl");
    let pair = serde_json::json!({"chosen": [{"role": "human", "content": "1+1"}, {"role": "bot", "content": "2"}],
                                  "rejected": [{"role": "human", "content": "1+1"}, {"role": "bot", "content": "3"}]});
    std::fs::write(&pairs, format!("{pair}\n").repeat(8)).unwrap();
    let dpo_cfg = s.join("dpo.json");
    let cfg = serde_json::json!({"data_paths": [pairs], "output_dir": s.join("out"), "pretrained_model_path": fixture_model(),
        "peft_type": "lora", "lora_rank": 4, "per_device_train_batch_size": 2, "num_train_epochs": 1, "data_split": "100,0",
        "max_prompt_length": 16, "max_length": 32});
    std::fs::write(&dpo_cfg, cfg.to_string()).unwrap();
    let run = bin().args(["dpo", "--config", dpo_cfg.to_str().unwrap(), "--quiet"]).output().unwrap();
    one_line_error(&run, &["holds another run", "written by `mftcoder train`, this is `mftcoder dpo`"]);
}

#[test]
fn a_save_that_fails_removes_its_partial_checkpoint() {
    let s = Scratch::new("save-fails");
    let cfg = config(&s, serde_json::json!({}));
    // files up to 100 KiB: the run starts, the 330 KB model.safetensors of the first checkpoint cannot be written
    // (SIGXFSZ ignored, so the write fails with EFBIG as on a full disk)
    let script = format!(
        "ulimit -f 100; trap '' XFSZ; exec '{}' train --config '{}' --quiet",
        env!("CARGO_BIN_EXE_mftcoder"),
        cfg.display()
    );
    let run = Command::new("bash").args(["-c", &script]).output().unwrap();
    one_line_error(&run, &["step_4"]);
    let left: Vec<_> = std::fs::read_dir(s.join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.iter().any(|n| n.starts_with('.') || n.starts_with("step_")), "left: {left:?}");
}
