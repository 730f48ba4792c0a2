#!/usr/bin/env bash
# One command that checks a GPU machine: the tests marked `gpu`, bench/gpu_throughput.py's figures and a
# one-task ViT-B/16 + LoRA run on synthetic ImageNet-R-sized data, then one table (bench/gpu_check.py).
# Without CUDA it says so in one line and exits 0; `--cpu` runs the same steps on the CPU to check them.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python bench/gpu_check.py "$@"
