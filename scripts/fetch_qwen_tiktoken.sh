#!/usr/bin/env bash
# Fetch Qwen-1's real `qwen.tiktoken` (2.5 MB, 151 643 ranks) for the ignored tests of tests/qwen_tiktoken.rs.
#
# Source: the PyPI package `dashscope` (Apache-2.0), whose wheel carries dashscope/resources/qwen.tiktoken, the
# file Qwen-7B/14B ship. Written to .cache/qwen_tiktoken/qwen.tiktoken (ignored by git) and checked by sha256.
# With --corpus it also runs fixtures/tokenizer/qwen/make_golden.py, which writes the large-corpus golden
# .cache/qwen_tiktoken/big_corpus.json (needs `tiktoken` in the venv: `.venv/bin/pip install tiktoken`).
#
# Usage: scripts/fetch_qwen_tiktoken.sh [--corpus]       (PYTHON=... to use another venv's python)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-.venv/bin/python}"
VERSION="2.0.2"
SHA256="b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
DL=".cache/dl"
OUT=".cache/qwen_tiktoken"
WHEEL="$DL/dashscope-$VERSION-py3-none-any.whl"

mkdir -p "$DL" "$OUT"
if [ ! -f "$WHEEL" ]; then
    "$PYTHON" -m pip download "dashscope==$VERSION" --no-deps -d "$DL" -q
fi
if [ ! -f "$OUT/qwen.tiktoken" ]; then
    "$PYTHON" -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("dashscope/resources/qwen.tiktoken"))' \
        "$WHEEL" "$OUT/qwen.tiktoken"
fi
echo "$SHA256  $OUT/qwen.tiktoken" | sha256sum -c --quiet - || { echo "error: $OUT/qwen.tiktoken: unexpected sha256" >&2; exit 1; }
if [ "${1:-}" = "--corpus" ]; then
    "$PYTHON" fixtures/tokenizer/qwen/make_golden.py "$OUT/qwen.tiktoken"
fi
echo "$OUT/qwen.tiktoken"
