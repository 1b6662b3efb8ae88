#!/usr/bin/env bash
# The LoRA step's matrix products one by one (134m shape, 512 tokens), ours (benches/products.rs, the `gemm`
# crate through nn::matmul) beside MKL's (benches/products_torch.py), alternating rounds; medians of the
# rounds' GFLOP/s and the ratio (ours ÷ MKL: above 1 we are faster). Needs the Python reference stack (.venv).
#   ROUNDS=3 bash benches/products.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ROUNDS=${ROUNDS:-3} THREADS=${THREADS:-2}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
cargo bench --bench products --no-run --quiet 2>/dev/null
results=$(mktemp)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
  cargo bench --quiet --bench products 2>/dev/null | sed 's/^/ours /' >>"$results"
  "$PY" benches/products_torch.py --threads "$THREADS" 2>/dev/null | sed 's/^/mkl /' >>"$results"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" - "$results" <<'PYEOF'
import json, statistics, sys
by = {}
for line in open(sys.argv[1]):
    who, rest = line.split(" ", 1)
    r = json.loads(rest)
    by.setdefault(r["name"], {}).setdefault(who, []).append(r["gflops"])
print(f"{'product':28s} {'ours GFLOP/s':>12s} {'MKL GFLOP/s':>12s} {'ratio':>6s}")
for name, v in by.items():
    o, m = statistics.median(v["ours"]), statistics.median(v["mkl"])
    print(f"{name:28s} {o:12.1f} {m:12.1f} {o / m:5.2f}x")
PYEOF
