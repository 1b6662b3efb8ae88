//! pass@k on HumanEval-format problems (Chen et al., 2021): sample n completions per problem, run each with
//! the problem's unit tests in a Python subprocess, and estimate the chance that at least one of k samples
//! passes. MFTCoder has no harness of its own (reference §9); its authors evaluate greedy pass@1 with the
//! prompt in their chat template, which `--chat` reproduces.
//!
//! A problem file is jsonl with `task_id`, `prompt`, `test` and `entry_point` (openai/human-eval's format).
//! The program run for a completion is `prompt + completion + "\n" + test + "\ncheck(entry_point)\n"`: the
//! test defines `check(candidate)` and asserts on it.

use super::chat_template;
use super::generate::{Decoding, generate};
use crate::backend::Backend;
use crate::io::tokenizer::Tokenizer;
use crate::models::decoder::Decoder;
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Problem {
    pub task_id: String,
    pub prompt: String,
    pub test: String,
    pub entry_point: String,
}

/// Every problem of a jsonl file; a malformed line names the file and line.
pub fn load_problems(path: &Path) -> Result<Vec<Problem>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let problem: Problem = serde_json::from_str(line)
            .map_err(|e| anyhow!("{}:{}: not a problem record ({e})", path.display(), i + 1))?;
        problems.push(problem);
    }
    if problems.is_empty() {
        bail!("{}: no problems", path.display());
    }
    Ok(problems)
}

/// One completion of one problem and the program that runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Index into the problem list.
    pub problem: usize,
    pub completion: String,
    pub program: String,
}

/// `--completions`: jsonl `{"task_id", "completion"}`, each completion continuing its problem's prompt.
pub fn load_completions(path: &Path, problems: &[Problem]) -> Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{}:{}", path.display(), n + 1);
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| anyhow!("{}: not JSON ({e})", at()))?;
        let field = |name: &str| {
            value
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("{}: field `{name}` is missing or not a string", at()))
        };
        let (task_id, completion) = (field("task_id")?, field("completion")?);
        let problem = problems
            .iter()
            .position(|p| p.task_id == task_id)
            .ok_or_else(|| anyhow!("{}: task_id `{task_id}` is not in the problem file", at()))?;
        let program = format!("{}{completion}", problems[problem].prompt);
        out.push(Sample { problem, completion, program });
    }
    Ok(out)
}

/// How completions are drawn from a model.
#[derive(Clone, Debug)]
pub struct Sampling {
    /// Ask in MFTCoder's chat template and take the answer's code; otherwise continue the prompt.
    pub chat: bool,
    pub samples: usize,
    pub max_new_tokens: usize,
    /// 0: greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

/// `samples` completions of every problem from `model` (sample s of problem i seeded with seed + i·samples + s).
pub fn sample<B: Backend>(
    model: &Decoder<B>,
    b: &B,
    tok: &Tokenizer,
    eos: &[u32],
    problems: &[Problem],
    sampling: &Sampling,
) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (i, problem) in problems.iter().enumerate() {
        let ids = if sampling.chat {
            let request = format!("# language: Python\n{}", problem.prompt);
            tok.encode(&chat_template::single_turn_prompt(&request), false)? // MFTCoder: no special tokens
        } else {
            tok.encode(&problem.prompt, true)?
        };
        for s in 0..sampling.samples {
            let decoding = match sampling.temperature {
                t if t > 0.0 => Decoding::Sample {
                    temperature: t,
                    top_p: sampling.top_p,
                    seed: sampling.seed.wrapping_add((i * sampling.samples + s) as u64),
                },
                _ => Decoding::Greedy,
            };
            let text = tok.decode(&generate(model, b, &ids, sampling.max_new_tokens, &decoding, eos)?, true)?;
            let (completion, program) = if sampling.chat {
                (text.clone(), program_from_answer(problem, &text))
            } else {
                let completion = truncate_completion(&text).to_string();
                let program = format!("{}{completion}", problem.prompt);
                (completion, program)
            };
            out.push(Sample { problem: i, completion, program });
        }
        eprintln!("{}: {} samples", problem.task_id, sampling.samples);
    }
    Ok(out)
}

// ANCHOR: pass_at_k
/// The unbiased estimator of pass@k from n samples of which c passed: 1 − C(n−c, k)/C(n, k), computed as
/// 1 − Π_{i=n−c+1}^{n} (1 − k/i), which never forms the (huge) binomials.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(k >= 1 && k <= n && c <= n, "pass@k needs 1 ≤ k ≤ n and c ≤ n (n {n}, c {c}, k {k})");
    if n - c < k {
        return 1.0; // every draw of k samples contains a passing one
    }
    1.0 - ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
}
// ANCHOR_END: pass_at_k

// ANCHOR: truncate_completion
/// Where a raw continuation of a HumanEval prompt stops being the function body: at the first line that
/// starts a new top-level statement (Codex's stop sequences).
pub const STOP_SEQUENCES: &[&str] = &["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "];

pub fn truncate_completion(text: &str) -> &str {
    let end = STOP_SEQUENCES.iter().filter_map(|s| text.find(s)).min().unwrap_or(text.len());
    &text[..end]
}

/// A chat model's answer: the code of its first fenced block if it has one, else the whole answer. When that
/// code defines the entry point itself it replaces the prompt; otherwise it continues it.
pub fn program_from_answer(problem: &Problem, answer: &str) -> String {
    let code = match answer.split_once("```") {
        Some((_, rest)) => {
            let body = rest.split_once('\n').map_or(rest, |(lang, body)| {
                if lang.trim().is_empty() || lang.trim().chars().all(char::is_alphanumeric) { body } else { rest }
            });
            body.split_once("```").map_or(body, |(code, _)| code)
        }
        None => answer,
    };
    if code.contains(&format!("def {}(", problem.entry_point)) {
        // keep the prompt's imports and helpers, then the model's definition
        let imports: String = problem
            .prompt
            .lines()
            .filter(|l| l.starts_with("import ") || l.starts_with("from "))
            .map(|l| format!("{l}\n"))
            .collect();
        format!("{imports}{code}")
    } else {
        format!("{}{code}", problem.prompt)
    }
}
// ANCHOR_END: truncate_completion

/// What running one program gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed(String),
    TimedOut,
}

// ANCHOR: run_tests
/// Run `program + test + check(entry_point)` with `python` and a time limit. The program is untrusted model
/// output: it runs as a plain child process, in a fresh temporary directory, with nothing else between it and
/// the machine — the caller must have opted in (`mftcoder eval --execute`).
pub fn run_tests(python: &str, problem: &Problem, program: &str, timeout: Duration) -> Result<Outcome> {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mftcoder-eval-{}-{run}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let _cleanup = RemoveOnDrop(dir.clone());
    let path = dir.join("program.py");
    let source = format!("{program}\n\n{}\n\ncheck({})\n", problem.test, problem.entry_point);
    std::fs::File::create(&path)?.write_all(source.as_bytes())?;
    let mut child = Command::new(python)
        .arg(&path)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{python}` (set --python to a Python 3 interpreter)"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(Outcome::Passed);
            }
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                std::io::Read::read_to_string(&mut pipe, &mut stderr).ok();
            }
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("exited with an error");
            return Ok(Outcome::Failed(last.trim().to_string()));
        }
        if started.elapsed() > timeout {
            child.kill().ok();
            child.wait().ok();
            return Ok(Outcome::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
// ANCHOR_END: run_tests

/// Removes a scratch directory when the run is over, however it ends.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// pass@k over problems: the mean over problems of each one's estimate (problems with fewer than k samples
/// are an error).
pub fn mean_pass_at_k(passed: &[(usize, usize)], k: usize) -> Result<f64> {
    if let Some(&(n, _)) = passed.iter().find(|&&(n, _)| n < k) {
        bail!("pass@{k} needs at least {k} samples per problem, got {n}");
    }
    Ok(passed.iter().map(|&(n, c)| pass_at_k(n, c, k)).sum::<f64>() / passed.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binomial(n: usize, k: usize) -> f64 {
        (0..k).map(|i| (n - i) as f64 / (k - i) as f64).product()
    }

    #[test]
    fn pass_at_k_is_the_binomial_formula() {
        for (n, c, k) in [(10, 3, 1), (10, 3, 5), (20, 1, 10), (200, 37, 100), (5, 0, 3), (7, 7, 7)] {
            let direct = if n - c < k { 1.0 } else { 1.0 - binomial(n - c, k) / binomial(n, k) };
            assert!((pass_at_k(n, c, k) - direct).abs() < 1e-12, "n {n} c {c} k {k}");
        }
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-15, "pass@1 is the pass rate");
        assert_eq!(pass_at_k(4, 0, 2), 0.0);
        assert!(mean_pass_at_k(&[(3, 1)], 5).unwrap_err().to_string().contains("pass@5 needs at least 5"));
    }

    #[test]
    fn completions_stop_at_the_next_top_level_statement() {
        assert_eq!(truncate_completion("    return x + 1\n\ndef other():\n    pass"), "    return x + 1\n");
        assert_eq!(truncate_completion("    return x\n# tests\nprint(f(1))"), "    return x");
        assert_eq!(truncate_completion("    return x\n"), "    return x\n");
    }

    #[test]
    fn chat_answers_become_programs() {
        let p = Problem {
            task_id: "t/0".into(),
            prompt: "import math\n\ndef f(x):\n    \"\"\"root\"\"\"\n".into(),
            test: String::new(),
            entry_point: "f".into(),
        };
        let full = program_from_answer(&p, "Here:\n```python\ndef f(x):\n    return math.sqrt(x)\n```\nDone.");
        assert_eq!(full, "import math\ndef f(x):\n    return math.sqrt(x)\n");
        assert_eq!(
            program_from_answer(&p, "    return math.sqrt(x)\n"),
            format!("{}    return math.sqrt(x)\n", p.prompt)
        );
    }
}
