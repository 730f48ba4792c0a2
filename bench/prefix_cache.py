"""The frozen prefix cache (``train.prefix_cache``) against the uncached path: one run of the evidence
preset (configs/evidence/fashion_mnist_lite0.yaml) per method, each way, on one CPU thread, timed
from building the model to the last evaluation (in-process, no MLflow), with the cached activations'
size and whether the final metrics agree.

    python bench/prefix_cache.py [key=value ...]     # overrides of the preset, e.g. model.image_size=64
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from aepg.config import load_config
from aepg.distributed import Context
from aepg.launch import build_job
from aepg.models.prefix import cache_prefix
from aepg.preflight import backbone_facts
from aepg.trainer import ContinualTrainer, TrainState

PRESET = Path(__file__).resolve().parents[1] / "configs" / "evidence" / "fashion_mnist_lite0.yaml"
METHODS = {"LoRA (blocks 5-6)": [], "linear probe": ["model.method.kind=none"]}


def one_run(overrides: list[str], cached: bool) -> tuple[float, dict, int]:
    cfg = load_config(PRESET, [*overrides, f"train.prefix_cache={str(cached).lower()}"])
    start = time.perf_counter()
    model, benchmark, objective = build_job(cfg)
    size = 0
    if cached:
        first = cfg.model.method.first_adapted_block(backbone_facts(cfg))
        benchmark = cache_prefix(model, benchmark, first, torch.device("cpu"), None, cfg.train.eval_batch_size)
        size = sum(split.activations.numel() * split.activations.element_size()
                   for task in benchmark.tasks for split in (task.train, task.test))
    state = ContinualTrainer(cfg, model, benchmark, objective, Context(device=torch.device("cpu"))).fit(TrainState())
    return time.perf_counter() - start, state.summary, size


def main(overrides: list[str]) -> int:
    torch.set_num_threads(1)
    print(f"{'method':<20} {'uncached':>9} {'cached':>8} {'speed-up':>9} {'activations':>12}  same metrics")
    for name, method in METHODS.items():
        slow, plain, _ = one_run([*method, *overrides], cached=False)
        fast, cached, size = one_run([*method, *overrides], cached=True)
        same = all(abs(plain[k] - cached[k]) < 1e-6 for k in plain)
        print(f"{name:<20} {slow:>8.1f}s {fast:>7.1f}s {slow / fast:>8.1f}x {size / 2**20:>9.1f} MiB  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
