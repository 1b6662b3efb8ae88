#!/usr/bin/env bash
# Time the same work in Rust (criterion) and PyTorch (CPU, same threads) back to back and print the ratios.
# Needs the Python reference stack: PYTHON=.venv/bin/python (see README). Medians; these machines are noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
THREADS=${THREADS:-2}
export MATMUL_NUM_THREADS=$THREADS RAYON_NUM_THREADS=$THREADS
median_ns() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['median']['point_estimate'])" "$1"; }

cargo bench --bench forward -- --noplot >/dev/null 2>&1
cargo bench --bench train_step -- --noplot >/dev/null 2>&1
rust_fwd=$(median_ns target/criterion/llama_forward/34M_seq256/new/estimates.json)
rust_step=$(median_ns target/criterion/llama_train_step/16M_b4_seq256/new/estimates.json)
torch_fwd=$("$PY" benches/forward_torch.py --threads "$THREADS" | "$PY" -c "import sys,json; print([json.loads(l) for l in sys.stdin if 'sdpa' in l][0]['median_s'])")
torch_step=$("$PY" benches/train_torch.py --threads "$THREADS" | "$PY" -c "import sys,json; print(json.loads(sys.stdin.read())['median_s'])")
torch_step_eager=$("$PY" benches/train_torch.py --threads "$THREADS" --attn eager | "$PY" -c "import sys,json; print(json.loads(sys.stdin.read())['median_s'])")
rust_lora=$(median_ns target/criterion/llama_train_step/16M_b4_seq256_lora_r16/new/estimates.json)
"$PY" - "$rust_fwd" "$torch_fwd" "$rust_step" "$torch_step" "$torch_step_eager" "$rust_lora" <<'PYEOF'
import sys
rf, tf, rs, ts = float(sys.argv[1]) / 1e9, float(sys.argv[2]), float(sys.argv[3]) / 1e9, float(sys.argv[4])
te, rl = float(sys.argv[5]), float(sys.argv[6]) / 1e9
print(f"forward  34M seq256      : rust {rf*1e3:7.1f} ms ({256/rf:7.0f} tok/s)  torch {tf*1e3:7.1f} ms ({256/tf:7.0f} tok/s)  ratio {tf/rf:.2f}x")
print(f"train step 16M 4x256     : rust {rs*1e3:7.1f} ms ({1024/rs:7.0f} tok/s)  torch {ts*1e3:7.1f} ms ({1024/ts:7.0f} tok/s)  ratio {ts/rs:.2f}x (sdpa)")
print(f"                           torch eager {te*1e3:7.1f} ms  ratio {te/rs:.2f}x (eager)")
print(f"LoRA r16 step (ours)     : {rl*1e3:7.1f} ms = {rl/rs:.2f} of our full step")
PYEOF
