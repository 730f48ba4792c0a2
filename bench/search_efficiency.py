"""Search efficiency on the offline benchmark: TPE + ASHA against random search and a small grid.

All three search objective (ce, aepg), learning rate and, for aepg, tau on split Fashion-MNIST
(a reduced training set so the script ends in about 15 minutes on 2 CPU cores). Compute is
counted in tasks trained (every task costs the same), summed over trials in the order they end.
For each method the script prints the compute spent until a finished trial came within 0.5
points of the grid's best avg_incremental_accuracy, as a fraction of the grid's whole compute.

    python bench/search_efficiency.py [--trials 12] [key=value ...]
Target: TPE + ASHA reaches it with <= 1/3 of the grid's compute.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import yaml

from aepg.sweep.driver import finalize, run_sweep
from aepg.sweep.spec import load_sweep

BASE = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist.yaml"
METRIC = "avg_incremental_accuracy"
WITHIN = 0.005


def sweep_file(tmp: str, name: str, space: dict, search: dict, scheduler: dict, base_overrides: dict) -> str:
    spec = {"name": name, "base_config": str(BASE), "base_overrides": base_overrides, "space": space,
            "search": search, "scheduler": scheduler, "metric": METRIC, "mode": "max",
            "storage_path": f"{tmp}/sweeps", "trial": {"cpus": 1, "max_failures": 0}}
    path = Path(tmp) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def trials_in_end_order(path: str) -> list[tuple[str, float, float | None]]:
    runtime, complete = run_sweep(load_sweep(path))
    assert complete, "sweep interrupted"
    finalize(runtime)
    runs = sorted(runtime.children(), key=lambda r: r.end_time or 0)
    return [(r.status, r.metrics.get("tasks_done", 0.0), r.metrics.get(METRIC)) for r in runs]


def compute_to_reach(trials, target: float) -> float | None:
    spent = 0.0
    for status, tasks, value in trials:
        spent += tasks
        if status == "FINISHED" and value is not None and value >= target:
            return spent
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="TPE + ASHA and random-search trials")
    parser.add_argument("--per-class", type=int, default=300, help="training images per class")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    base = {"benchmark": {"max_train_per_class": args.per_class}, "train": {"epochs": 2}, "checkpoint": {"every_epochs": 0}}
    space = {"objective.kind": {"choice": ["ce", "aepg"]},
             "train.lr": {"loguniform": [1.0e-4, 3.0e-3]},
             "schedule.tau": {"uniform": [2.0, 10.0], "when": {"objective.kind": "aepg"}}}
    grid_space = {"objective.kind": {"choice": ["ce", "aepg"]},
                  "train.lr": {"choice": [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3]}}
    asha = {"kind": "asha", "grace_period": 1, "reduction_factor": 2}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        grid = trials_in_end_order(sweep_file(tmp, "grid", grid_space, {"algorithm": "grid", "max_concurrent": 2},
                                              {"kind": "none"}, base))
        tpe = trials_in_end_order(sweep_file(tmp, "tpe-asha", space, {"algorithm": "tpe", "seed": 0, "num_trials": args.trials,
                                                                      "max_concurrent": 2}, asha, base))
        rnd = trials_in_end_order(sweep_file(tmp, "random", space, {"algorithm": "random", "seed": 0,
                                                                     "num_trials": args.trials, "max_concurrent": 2},
                                             {"kind": "none"}, base))
    grid_best = max(v for s, _, v in grid if s == "FINISHED" and v is not None)
    grid_compute = sum(t for _, t, _ in grid)
    target = grid_best - WITHIN
    print(f"\ngrid best {METRIC}: {grid_best:.4f}; target {target:.4f}; grid compute {grid_compute:.0f} tasks")
    print(f"{'method':<12} {'trials':>6} {'compute':>8} {'to target':>10} {'/ grid':>7} {'best':>7}")
    for name, trials in (("grid", grid), ("tpe + asha", tpe), ("random", rnd)):
        reach = compute_to_reach(trials, target)
        best = max((v for s, _, v in trials if s == "FINISHED" and v is not None), default=float("nan"))
        ratio = f"{reach / grid_compute:.2f}" if reach is not None else "never"
        print(f"{name:<12} {len(trials):>6} {sum(t for _, t, _ in trials):>8.0f} "
              f"{(f'{reach:.0f}' if reach is not None else '-'):>10} {ratio:>7} {best:>7.4f}")
    print("target: tpe + asha / grid <= 0.33")


if __name__ == "__main__":
    main()
