//! pass@k on HumanEval-format problems (Chen et al., 2021): sample n completions per problem, run each with
//! the problem's unit tests in a Python subprocess, and estimate the chance that at least one of k samples
//! passes. MFTCoder has no harness of its own (reference §9); its authors evaluate greedy pass@1 with the
//! prompt in their chat template, which `--chat` reproduces.
//!
//! A problem file is jsonl with `task_id`, `prompt`, `test` and `entry_point` (openai/human-eval's format).
//! The program run for a completion is `prompt + completion + "\n" + test + "\ncheck(entry_point)"`: the
//! test defines `check(candidate)` and asserts on it. It runs in [`super::sandbox`]; it passes only when
//! `check` returned (the harness then prints a per-run random token).

use super::chat_template;
use super::generate::{Decoding, generate};
use super::sandbox::{self, Exit, Finished, InterruptGuard, Limits, Workspace};
use crate::backend::Backend;
use crate::io::tokenizer::Tokenizer;
use crate::models::decoder::Decoder;
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
/// The harness run for every program: it reads the run's random token from stdin, runs `program.py`
/// (program + test + `check(entry_point)`, exactly human-eval's `check_correctness` program) in a fresh
/// namespace, and prints the token only once `check` has returned. An exit code, 0 or not, never passes.
const HARNESS: &str = r#"import os, sys
def _harness():
    token = sys.stdin.readline().strip()
    sys.stdin = open(os.devnull)
    with open("program.py") as f:
        source = f.read()
    exec(compile(source, "program.py", "exec"), {})
    sys.stdout.flush()
    os.write(1, ("\n" + token + "\n").encode())
_harness()
"#;

/// Runs programs against their problems' tests, each in the [sandbox](super::sandbox) in a fresh directory.
/// While it lives, SIGINT/SIGTERM/SIGHUP stop the run in progress (its processes killed, its directory
/// removed) and make `run` return an error.
pub struct Executor {
    python: PathBuf,
    limits: Limits,
    noticed: bool,
    _interrupts: InterruptGuard,
}

impl Executor {
    /// `python`: an interpreter's own path, as [`sandbox::resolve_python`] finds it.
    pub fn new(python: PathBuf, limits: Limits) -> Self {
        Executor { python, limits, noticed: false, _interrupts: InterruptGuard::install() }
    }

    pub fn run(&mut self, problem: &Problem, program: &str) -> Result<Outcome> {
        let workspace = Workspace::create()?;
        let source = format!("{program}\n{}\ncheck({})\n", problem.test, problem.entry_point);
        for (name, text) in [("program.py", source.as_str()), ("harness.py", HARNESS)] {
            let path = workspace.path().join(name);
            std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))?;
        }
        let token = format!("{:016x}{:016x}", sandbox::random_u64(), sandbox::random_u64());
        let args = ["-I", "-B", "harness.py"]; // isolated mode: no PYTHON* variables, no user site
        let input = format!("{token}\n");
        let done =
            sandbox::run(&self.python, &args, &workspace, input.as_bytes(), &self.limits, Some(token.as_bytes()))?;
        if !std::mem::replace(&mut self.noticed, true) {
            let gaps = done.isolation.gaps();
            if !gaps.is_empty() {
                eprintln!("note: eval sandbox: {}", gaps.join("; "));
            }
        }
        Ok(verdict(&done))
    }
}

/// Passed only when the harness printed its token, even if the program then hung (as human-eval counts a
/// check that returned); otherwise timed out, or failed with the last line of stderr.
pub fn verdict(done: &Finished) -> Outcome {
    if done.stdout.found {
        return Outcome::Passed;
    }
    match done.exit {
        Exit::TimedOut => Outcome::TimedOut,
        Exit::Code(0) => Outcome::Failed("exited with code 0 before the tests returned".into()),
        Exit::Code(code) => Outcome::Failed(done.stderr.last_line().unwrap_or_else(|| match code {
            c if c > 128 => format!("killed by signal {}", c - 128),
            c => format!("exited with code {c}"),
        })),
    }
}
// ANCHOR_END: run_tests

/// Run every sample's tests: per problem (samples, passed), and one JSON line per sample (task_id,
/// completion, program, outcome) for `--out`.
pub fn score(
    executor: &mut Executor,
    problems: &[Problem],
    samples: &[Sample],
) -> Result<(Vec<(usize, usize)>, String)> {
    let (mut tally, mut lines) = (vec![(0usize, 0usize); problems.len()], String::new());
    for sample in samples {
        let problem = &problems[sample.problem];
        let outcome = executor.run(problem, &sample.program)?;
        tally[sample.problem].0 += 1;
        tally[sample.problem].1 += usize::from(outcome == Outcome::Passed);
        let line = serde_json::json!({"task_id": problem.task_id, "completion": sample.completion,
            "program": sample.program, "outcome": outcome});
        lines += &format!("{line}\n");
    }
    Ok((tally, lines))
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
