#!/usr/bin/env bash
# NVRTC (NVIDIA's run-time CUDA compiler) from PyPI into .cache/nvrtc, so the CUDA kernels can be compiled —
# and checked — on a machine without a GPU or a CUDA toolkit:
#
#   bash scripts/fetch_nvrtc.sh
#   LD_LIBRARY_PATH=$PWD/.cache/nvrtc/nvidia/cu13/lib cargo test --release --features cuda --lib backend::cuda::kernels
#
# Optional: nothing in the default build or tests needs it (the NVRTC test skips without the library).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/nvrtc
if [ -e "$dest/nvidia/cu13/lib/libnvrtc.so.13" ]; then
  echo "$dest: already there"
  exit 0
fi
python3 -m pip install --quiet --no-deps --target "$dest" "nvidia-cuda-nvrtc==13.2.86"
echo "NVRTC in $dest/nvidia/cu13/lib"
