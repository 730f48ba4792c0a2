"""Check a GPU machine in one command (``bash bench/gpu_check.sh``): the tests marked ``gpu``
(precisions, throughput knobs, pinned memory and the decoded cache, a Ray Train run with a GPU
worker, two trials sharing a GPU), the training throughput of ViT-B/16 + LoRA (the step alone and
the whole input path, bench/gpu_throughput.py), and a one-task ``aepg train`` of ViT-B/16 + LoRA on
synthetic ImageNet-R-sized data; then one table of the figures and which checks passed.

Without CUDA it says so and exits 0; ``--cpu`` runs every step on the CPU with small settings, to
check the script itself (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
AEPG = Path(sys.executable).with_name("aepg")


def gpu_tests() -> tuple[str, str]:
    """pytest -m gpu: its closing counts, and the tests that failed."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rf"],
                          cwd=REPO, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    failed = [line.split(" ", 2)[1] for line in lines if line.startswith("FAILED ")]
    return (lines[-1].strip("= ") if lines else f"pytest exited {done.returncode}"), ", ".join(failed) or "none"


def one_task_run(cpu: bool) -> tuple[bool, float, str]:
    """``aepg train`` of the paper's ViT-B/16 + LoRA preset as one task over synthetic images in
    ImageNet-R's layout and sizes (random weights): whether it finished, its wall time, its last line."""
    sys.path.insert(0, str(REPO / "bench"))
    from input_pipeline import write_folder

    small = ["model.image_size=64", "model.backbone_kwargs={depth: 5, embed_dim: 96, num_heads: 4, patch_size: 16}",
             "benchmark.max_train_per_class=2"] if cpu else ["train.device=cuda"]
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), 1000 if cpu else 3000)  # ImageNet-R: 200 classes, a few images each
        start = time.perf_counter()
        done = subprocess.run([str(AEPG), "train", str(REPO / "configs" / "paper" / "imagenet_r_lora.yaml"),
                               "model.weights=random", f"benchmark.root={tmp}", "benchmark.num_tasks=1",
                               f"storage_path={tmp}/runs", "train.epochs=1", "train.head_only_epochs=0", "scaling.num_workers=0",
                               *small],
                              cwd=tmp, capture_output=True, text=True,
                              env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"})
        seconds = time.perf_counter() - start
    last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or [""])[-1]
    return done.returncode == 0, seconds, last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run every step on the CPU (a check of this script)")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; the GPU figures are still to be measured (run this on a GPU "
              "machine, or with --cpu to check the script)")
        return 0
    from gpu_throughput import measure

    device = torch.device("cpu" if args.cpu else "cuda")
    counts, failed = gpu_tests()
    figures = measure(device, 16 if args.cpu else 256, 5 if args.cpu else 30, 1000 if args.cpu else 4000, [])
    finished, seconds, last = one_task_run(args.cpu)
    name = "CPU (a check of the script, not a measurement)" if args.cpu else torch.cuda.get_device_name()
    peak = figures["memory_peak_gib"]
    rows = [
        ("device", name),
        ("precision", figures["precision"]),
        ("training step alone", f"{figures['step alone']:.0f} images/s"),
        ("whole input path", f"{figures['whole path']:.0f} images/s"),
        ("ratio (target >= 0.9)", f"{figures['ratio']:.3f}"),
        ("projected 10-task ImageNet-R", f"{figures['projected_min']:.1f} min"),
        ("GPU memory peak", f"{peak:.1f} GiB" if peak is not None else "-"),
        ("tests marked gpu", counts),
        ("failed", failed),
        ("one-task ViT-B/16 + LoRA run", f"{'finished' if finished else 'FAILED'} in {seconds:.0f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    if not finished:
        print(f"  its last line: {last}")
    return 0 if finished and failed == "none" and not re.search(r"\d+ (failed|error)", counts) else 1


if __name__ == "__main__":
    sys.exit(main())
