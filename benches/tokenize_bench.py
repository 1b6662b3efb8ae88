#!/usr/bin/env python3
"""Offline tokenization throughput: `mftcoder tokenize` against Python `tokenizers` batch encoding.

Both sides do the same work on the same files: read every jsonl line, parse the JSON, encode the
`text` without special tokens, append the EOS. Rust also writes the .bin/.idx; Python keeps the ids
in memory. Both use every core (Rust: rayon over records; Python: `encode_batch_fast`, which
runs on the tokenizers crate's own rayon pool). Timing is wall clock, best of `--repeat` runs,
alternating Rust and Python.

The corpus is real code that every Rust machine has: the `.rs` files of the crates in the cargo
registry (sorted, one record per file, up to `--mb` megabytes).

    cargo build --release
    /work/venv/bin/python benches/tokenize_bench.py [--tokenizer DIR] [--mb 16] [--repeat 3]

Prints tokens/s for both and the ratio (Rust / Python); never part of the test suite. The Rust
time is the whole process (start-up and tokenizer loading included); the Python time starts after
loading. On a busy machine the numbers move a lot: run it when nothing else is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def default_tokenizer() -> Path:
    for d in [".cache/smollm2-135m-instruct", ".cache/tokenizers/gpt2", "fixtures/tokenizer"]:
        if (ROOT / d / "tokenizer.json").is_file():
            return ROOT / d
    sys.exit("no tokenizer found")


def build_corpus(out_dir: Path, mb: float) -> tuple[int, int]:
    registry = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "registry" / "src"
    files = sorted(registry.rglob("*.rs"))
    limit, size, n = int(mb * 1e6), 0, 0
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "code.jsonl", "w", encoding="utf-8") as f:
        for p in files:
            try:
                text = p.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            size += len(text.encode())
            n += 1
            if size >= limit:
                break
    return n, size


def python_run(tok_dir: Path, corpus: Path) -> tuple[int, float]:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    eos = AutoTokenizer.from_pretrained(str(tok_dir)).eos_token_id
    t0 = time.perf_counter()
    tokens = 0
    with open(corpus / "code.jsonl", encoding="utf-8") as f:
        lines = f.readlines()
    for start in range(0, len(lines), 2048):
        texts = [json.loads(line)["text"] for line in lines[start:start + 2048]]
        for enc in tok.encode_batch_fast(texts, add_special_tokens=False):
            ids = enc.ids + [eos]
            tokens += len(ids)
    return tokens, time.perf_counter() - t0


def rust_run(tok_dir: Path, corpus: Path, out: Path) -> tuple[int, float]:
    exe = ROOT / "target" / "release" / "mftcoder"
    t0 = time.perf_counter()
    r = subprocess.run([str(exe), "tokenize", "--tokenizer", str(tok_dir), "--data", str(corpus), "--out", str(out)],
                       capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"mftcoder tokenize failed: {r.stderr}")
    tokens = int(re.search(r"documents, (\d+) tokens", r.stderr).group(1))
    inner = float(re.search(r"; ([0-9.]+) s, ", r.stderr).group(1))
    return tokens, dt, inner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", type=Path, default=None)
    ap.add_argument("--mb", type=float, default=16.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tok_dir = args.tokenizer or default_tokenizer()
    if not (ROOT / "target" / "release" / "mftcoder").is_file():
        sys.exit("build first: cargo build --release")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        n, size = build_corpus(corpus, args.mb)
        print(f"corpus: {n} records, {size / 1e6:.1f} MB of Rust source; tokenizer {tok_dir}; {os.cpu_count()} cores")
        runs_r, runs_p = [], []
        for _ in range(args.repeat):  # alternate, so a burst of load on the machine hits both sides alike
            runs_r.append(rust_run(tok_dir, corpus, Path(tmp) / "out"))
            runs_p.append(python_run(tok_dir, corpus))
        rust = min(runs_r, key=lambda r: r[1])
        py = min(runs_p, key=lambda r: r[1])
        if rust[0] != py[0]:
            sys.exit(f"token counts differ: rust {rust[0]}, python {py[0]}")
        r_tps, p_tps = rust[0] / rust[1], py[0] / py[1]
        print(f"rust   mftcoder tokenize (parse + encode + write .bin/.idx): {rust[0]} tokens in {rust[1]:.2f} s = {r_tps:,.0f} tokens/s"
              f" (process wall time; {rust[0] / rust[2]:,.0f} tokens/s after loading the tokenizer)")
        print(f"python tokenizers encode_batch_fast (parse + encode):       {py[0]} tokens in {py[1]:.2f} s = {p_tps:,.0f} tokens/s")
        print(f"ratio rust / python: {r_tps / p_tps:.2f}")


if __name__ == "__main__":
    main()
