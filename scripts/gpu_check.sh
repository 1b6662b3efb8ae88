#!/usr/bin/env bash
# Everything the CUDA path still has to show on a real GPU, as one script for the device machine (an H200 with
# CUDA 13, PyTorch, transformers and peft; no Rust). Build here first:
#
#   bash scripts/gpu_check.sh build      # release binary + the CPU-vs-GPU test binaries into .gpu/
#
# then on the device (the `device` tool's run, with carry [".gpu"], about 8 minutes):
#
#   bash scripts/gpu_check.sh run 2>&1 | tee $OUT/log
#
# (or one phase per call: `run tests`, `run bench`, `run qlora`; each call keeps within GPU_CHECK_BUDGET_S)
#
# It runs the CPU-vs-GPU property tests (every op, whole full / LoRA / QLoRA / bf16 steps), then
# `mftcoder bench` and benches/gpu_torch.py on the same GPU, one after the other, for the four rows of gpu.md and
# the Llama-2-7B QLoRA pair (NF4 + double quantization; torch's side needs bitsandbytes).
set -uo pipefail
cd "$(dirname "$0")/.."
# the CPU-vs-GPU tests the run carries: ops, whole steps, the 4-bit base, the LoRA factors' bf16 copies, and the
# step counters (launches, allocations, blocking reads), asserted on the emulator, here counted on hardware
GPU_TESTS="cuda_vs_cpu cuda_training_steps cuda_qlora cuda_bf16_master cuda_step_counters cuda_product_outputs cuda_epilogues"
case "${1:-}" in
build)
  set -e
  cargo build --release --features cuda
  test_binary() {
    cargo test --release --features cuda --test "$1" --no-run --message-format=json 2>/dev/null |
      python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1"
  }
  mkdir -p .gpu
  cp target/release/mftcoder .gpu/mftcoder
  for t in $GPU_TESTS; do
    cp "$(test_binary "$t")" ".gpu/$t"
    strip --strip-debug ".gpu/$t" # the carry limit is 64 MiB
  done
  strip --strip-debug .gpu/mftcoder
  ls -la .gpu
  ;;
run)
  shift
  phases="${*:-tests bench qlora}"
  # The device tool stops a call at 600 s. Each command runs only while enough of this budget is left, under a
  # timeout cut to what is left, so a slow phase costs the ones after it but never the log. Phases can also be
  # run one per call on a warm machine: `run tests`, `run bench`, `run qlora`.
  BUDGET=${GPU_CHECK_BUDGET_S:-570}
  within() { # within <timeout> <command...>
    local left=$((BUDGET - SECONDS)) limit=$1
    shift
    if ((left < 30)); then
      echo "skipped, the budget is spent: $*"
      return
    fi
    ((limit > left)) && limit=$left
    timeout "$limit" "$@" || echo "exit $? (within $limit s): $*"
  }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  # NVRTC from the CUDA toolkit installed beside the driver, so what it emits is what the driver loads (the
  # backend compiles sm_XY cubins first and falls back to PTX; the bench's device line says which it used)
  for cuda_lib in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/targets/x86_64-linux/lib; do
    if ls "$cuda_lib"/libnvrtc.so* >/dev/null 2>&1; then
      export LD_LIBRARY_PATH="$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      echo "NVRTC: $(ls "$cuda_lib"/libnvrtc.so.* | head -1)"
      break
    fi
  done
  for phase in $phases; do
    case "$phase" in
    tests)
      echo "== CPU vs GPU property tests"
      within 150 .gpu/cuda_vs_cpu --test-threads 1 --nocapture
      within 150 .gpu/cuda_training_steps --test-threads 1 --nocapture
      for t in cuda_epilogues cuda_step_counters cuda_qlora cuda_bf16_master cuda_product_outputs; do
        within 60 ".gpu/$t" --test-threads 1 --nocapture
      done
      ;;
    bench)
      echo "== benchmarks (mftcoder bf16, then PyTorch bf16 + SDPA + fused AdamW)"
      for model in 134m 1.1b; do
        for mode in lora full; do
          within 150 .gpu/mftcoder bench --device cuda --precision bf16 --model "$model" --mode "$mode"
          within 120 python3 benches/gpu_torch.py --model "$model" --mode "$mode"
        done
      done
      ;;
    qlora)
      # QLoRA of Llama-2-7B (batch 1 × 2048): ours, then torch's (bitsandbytes Linear4bit + PEFT)
      within 400 .gpu/mftcoder bench --device cuda --precision bf16 --model 7b --mode qlora --warmup 2 --steps 5
      within 400 python3 benches/gpu_torch.py --model 7b --mode qlora --steps 5
      ;;
    *) echo "unknown phase $phase (tests, bench, qlora)" ;;
    esac
  done
  ;;
*)
  echo "usage: bash scripts/gpu_check.sh build | run [tests] [bench] [qlora]" >&2
  exit 2
  ;;
esac
