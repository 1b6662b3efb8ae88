#!/usr/bin/env bash
# mftcoder beside PyTorch on this machine's CPU, in one sitting: the 134m Llama shape at 1 × 512 for a full,
# a LoRA (r 16, α 32, seven projections) and a QLoRA (that LoRA on an NF4 + double-quantized base) training
# step, and greedy decoding of SmolLM2-135M (128 tokens, KV cache) where `scripts/fetch_smollm2.sh` has
# fetched it. Rounds alternate the two implementations; medians over rounds are printed with the ratio
# (PyTorch's time ÷ ours: above 1 we are faster), resident memory, and the load average before and after.
# Never part of the tests. Needs the Python reference stack (.venv, see README).
#   ROUNDS=5 STEPS=5 bash benches/cpu_compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ROUNDS=${ROUNDS:-3} STEPS=${STEPS:-5} WARMUP=${WARMUP:-2} THREADS=${THREADS:-2}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
cargo build --release --quiet
BIN=target/release/mftcoder
SMOL=.cache/smollm2-135m-instruct
PROMPT='def fibonacci(n):'
results=$(mktemp)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
  for mode in full lora qlora; do
    # ours: the bench table's `mftcoder` row (step ms) and the peak resident GiB
    /usr/bin/time -f "%M" -o /tmp/cpu_compare_rss "$BIN" bench --model 134m --batch 1 --seq 512 --mode "$mode" \
      --warmup "$WARMUP" --steps "$STEPS" | awk -v m="$mode" '$1 == "mftcoder" {print "ours", m, $3 / 1000}' >>"$results"
    echo "rss ours $mode $(awk '{print $1 * 1024 / 1e9}' /tmp/cpu_compare_rss)" >>"$results"
    "$PY" benches/cpu_step_torch.py --mode "$mode" --batch 1 --seq 512 --warmup "$WARMUP" --steps "$STEPS" \
      --threads "$THREADS" 2>/dev/null | "$PY" -c "import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); print('torch', r['mode'], r['median_s']); print('rss torch', r['mode'], r['rss_gb'])" >>"$results"
  done
  if [ -f "$SMOL/model.safetensors" ]; then
    "$BIN" generate --model "$SMOL" --prompt "$PROMPT" --max-new-tokens 128 --json \
      | "$PY" -c "import json,sys; r=json.loads(sys.stdin.read()); print('ours decode', r['generate_seconds'] / len(r['generated_ids']))" >>"$results"
    "$PY" benches/decode_torch.py --model "$SMOL" --prompt "$PROMPT" --threads "$THREADS" 2>/dev/null \
      | "$PY" -c "import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); print('torch decode', r['seconds'] / r['new_tokens'])" >>"$results"
  fi
  echo "round $round done (load $(cut -d' ' -f1 /proc/loadavg))"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" - "$results" <<'PYEOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
def med(*key):
    vals = [float(r[-1]) for r in rows if tuple(r[:-1]) == key]
    return statistics.median(vals) if vals else None
print(f"{'':8} {'mftcoder':>12} {'pytorch':>12} {'ratio':>7} {'RSS ours':>9} {'RSS torch':>9}")
for mode in ("full", "lora", "qlora"):
    ours, torch = med("ours", mode), med("torch", mode)
    if ours and torch:
        print(f"{mode:8} {ours:11.3f}s {torch:11.3f}s {torch / ours:6.2f}x {med('rss', 'ours', mode):8.2f}G "
              f"{med('rss', 'torch', mode):8.2f}G")
ours, torch = med("ours", "decode"), med("torch", "decode")
if ours and torch:
    print(f"{'decode':8} {ours * 1e3:9.1f}ms/t {torch * 1e3:9.1f}ms/t {torch / ours:6.2f}x")
full = med("ours", "full")
for mode in ("lora", "qlora"):
    if full and med("ours", mode):
        print(f"our {mode} step = {med('ours', mode) / full:.2f} of our full step")
PYEOF
rm -f "$results"
