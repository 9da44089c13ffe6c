#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the CUDA checks (tests marked `gpu`: CUDA-vs-CPU occupancy and mesh
# parity, batched meshing, grasps, the server on --device cuda) and the meshing benchmark on the GPU.
# Usage: scripts/gpu_check.sh [extra `halo bench mesh` arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

command -v nvidia-smi >/dev/null 2>&1 || { echo "gpu_check: no NVIDIA driver (nvidia-smi) on this machine" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
# With a driver present, setup.sh installs PyTorch's CUDA wheel (a CPU wheel already in .venv stays: remove
# .venv first if `torch.cuda.is_available()` below says False).
scripts/setup.sh --dev
.venv/bin/python -c "import sys, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); \
sys.exit(0 if torch.cuda.is_available() else 'gpu_check: this PyTorch build cannot use the GPU')"
# Every gpu test must run: a skip here means the check did not happen, so skips fail the script.
report=$(mktemp)
.venv/bin/python -m pytest -m gpu tests/test_gpu.py -v -rs --junitxml "$report"
if grep -q "<skipped" "$report"; then echo "gpu_check: some gpu tests were skipped" >&2; exit 1; fi
mkdir -p out
.venv/bin/halo bench mesh --device cuda --resolutions 128,512 --batches 1,8,32 --json out/bench_mesh_cuda.json "$@"
echo "gpu_check: all gpu tests passed; benchmark in out/bench_mesh_cuda.json"
