"""Throughput of the aepg trainer against a bare PyTorch loop on the same model, data and batches.

Both train EfficientNet-Lite0 + LoRA on split digits with the aEPG loss, in this process, with
the same sampler seeds; the aepg side also logs every step to a real MLflow store. Evaluation
is excluded from both. Runs alternate (aepg, bare, aepg, bare, ...) and the medians are compared.

    python bench/train_overhead.py [--rounds 3] [key=value ...]
Target: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from aepg.preflight import charts, planned_run
from aepg.tracking import Tracker
from aepg.benchmarks.images import collate
from aepg.config import load_config
from aepg.distributed import Context, derive_seed
from aepg.launch import build_job
from aepg.objectives import build_objective
from aepg.trainer import ContinualTrainer, TrainState

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"


def fresh_model(cfg):
    return build_job(cfg)[0]


def run_aepg(cfg, benchmark, run) -> tuple[int, float]:
    model = fresh_model(cfg)
    trainer = ContinualTrainer(cfg, model, benchmark, build_objective(cfg.objective, cfg.annealing),
                               Context(device=torch.device("cpu")), [run.reporter(charts(cfg))])
    state, samples = TrainState(), 0
    start = time.perf_counter()
    for task in benchmark.tasks:
        trainer.train_task(task, state, None)
        state.task, state.epoch = task.index + 1, 0
        samples += cfg.train.epochs * len(task.train)
    return samples, time.perf_counter() - start


def run_bare(cfg, benchmark) -> tuple[int, float]:
    model = fresh_model(cfg)
    model.train()
    samples = 0
    start = time.perf_counter()
    for task in benchmark.tasks:
        sampler = DistributedSampler(task.train, num_replicas=1, rank=0, shuffle=True,
                                     seed=derive_seed(cfg.seed, task.index))
        loader = DataLoader(task.train, batch_size=cfg.train.batch_size, sampler=sampler, collate_fn=collate)
        optimizer = torch.optim.Adam(list(model.head.parameters()) + model.method_parameters(), lr=cfg.train.lr)
        T, t = cfg.train.epochs * len(loader), 0
        for epoch in range(cfg.train.epochs):
            sampler.set_epoch(epoch)
            for images, sizes, y in loader:
                x = benchmark.train_view(images, sizes)
                a = 1 / (1 + math.exp(-cfg.annealing.tau * (T - 2 * t) / T))
                log_p_y = F.log_softmax(model(x, slice(task.start, task.stop)), -1).gather(1, (y - task.start)[:, None])
                loss = -(a * log_p_y + (1 - a) * log_p_y.exp()).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                t += 1
        samples += cfg.train.epochs * len(task.train)
    return samples, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(CONFIG, ["train.epochs=2", "train.batch_size=32", *args.overrides])
    torch.set_num_threads(cfg.scaling.torch_threads or torch.get_num_threads())
    benchmark = build_job(cfg)[1]
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db")
        run = tracker.open_run(planned_run(cfg))
        run_bare(cfg, benchmark)  # warm-up
        aepg_rates, bare_rates = [], []
        for r in range(args.rounds):
            n, s = run_aepg(cfg, benchmark, run)
            aepg_rates.append(n / s)
            n, s = run_bare(cfg, benchmark)
            bare_rates.append(n / s)
            print(f"round {r + 1}: aepg {aepg_rates[-1]:7.1f} samples/s   bare {bare_rates[-1]:7.1f} samples/s")
    aepg_rate, bare_rate = statistics.median(aepg_rates), statistics.median(bare_rates)
    print(f"threads {torch.get_num_threads()}, batch {cfg.train.batch_size}, {cfg.model.backbone} {cfg.model.image_size}px")
    print(f"aepg trainer: {aepg_rate:.1f} samples/s (median of {args.rounds})")
    print(f"bare loop:    {bare_rate:.1f} samples/s")
    print(f"ratio:        {aepg_rate / bare_rate:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
