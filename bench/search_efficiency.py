"""Search efficiency: the compute each search method needs to come within 0.5 points of the best
configuration a grid finds, measured over three searcher seeds.

Benchmark: split Fashion-MNIST in 5 tasks of 2 classes (the Debian IDX files), EfficientNet-Lite0
+ LoRA, configs/fashion_mnist.yaml reduced to 300 training and 200 test images per class and 2
epochs per task. Space: objective (ce, aepg) x learning rate (log-uniform 1e-5 to 1e-2) x tau for
aEPG (2 to 10); the grid: objective x learning rate {1e-5, 1e-4, 1e-3, 1e-2}.

Every method runs as a real sweep (Ray Tune, Optuna, ASHA, MLflow) with searcher seeds 0, 1, 2.
Compute is tasks trained (a task at a fraction of its data counts that fraction), summed over
trials in the order they ended; a method reaches the target when a trial that trained every
task comes within 0.5 points of the grid's best final/avg_incremental_accuracy. The output gives
each method's minutes; with random among the methods, the last line says what the target asks
of any searcher (how many configurations fit in a third of the grid's compute, and how likely
configurations drawn at random put one of them within 0.5 points). ``--check-ranking`` trains the
grid on the reduced and the full benchmark and prints Spearman's rho between the two rankings.

    python bench/search_efficiency.py [--methods tpe-asha-tasks,random,tpe-asha-data,tpe10-asha-tasks,tpe] [--seeds 0,1,2]
    python bench/search_efficiency.py --check-ranking
Target: TPE with the chosen early stopping reaches the target with <= 1/3 of the grid's compute.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "fashion_mnist.yaml"
METRIC = "avg_incremental_accuracy"
WITHIN = 0.005
REDUCED = {"benchmark": {"max_train_per_class": 300, "max_test_per_class": 200}, "train": {"epochs": 2},
           "checkpoint": {"every_epochs": 0}}
SPACE = {"objective.kind": {"choice": ["ce", "aepg"]},
         "train.lr": {"loguniform": [1.0e-5, 1.0e-2]},
         "schedule.tau": {"uniform": [2.0, 10.0], "when": {"objective.kind": "aepg"}}}
GRID = {"objective.kind": {"choice": ["ce", "aepg"]}, "train.lr": {"choice": [1.0e-5, 1.0e-4, 1.0e-3, 1.0e-2]}}
TASKS_ASHA = {"kind": "asha", "fidelity": "tasks", "grace_period": 2, "reduction_factor": 3}
METHODS = {
    # The shipped default (sweeps/quickstart.yaml): TPE after 4 random trials, ASHA over tasks.
    "tpe-asha-tasks": ({"algorithm": "tpe", "num_trials": 12, "startup_trials": 4}, TASKS_ASHA),
    "tpe10-asha-tasks": ({"algorithm": "tpe", "num_trials": 12, "startup_trials": 10}, TASKS_ASHA),
    "tpe-asha-data": ({"algorithm": "tpe", "num_trials": 12, "startup_trials": 4},
                      {"kind": "asha", "fidelity": "data", "reduction_factor": 3, "min_fraction": 0.111}),
    "tpe": ({"algorithm": "tpe", "num_trials": 8, "startup_trials": 4}, {"kind": "none"}),
    "random": ({"algorithm": "random", "num_trials": 8}, {"kind": "none"}),
}


def sweep_file(folder: Path, name: str, space: dict, search: dict, scheduler: dict, base: dict) -> Path:
    spec = {"name": name, "base_config": str(BASE), "base_overrides": base, "space": space,
            "search": {"max_concurrent": 2, **search}, "scheduler": scheduler, "metric": METRIC, "mode": "max",
            "storage_path": str(folder / "sweeps"), "trial": {"cpus": 1, "max_failures": 0}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run(path: Path):
    """The sweep's leaderboard entries (each with its status, final value and compute)."""
    from aepg.sweep.driver import finalize, run_sweep
    from aepg.sweep.spec import load_sweep

    runtime, complete = run_sweep(load_sweep(path))
    if not complete:
        raise KeyboardInterrupt
    return finalize(runtime).entries


def compute_to_reach(entries, target: float) -> float | None:
    spent = 0.0
    for entry in sorted(entries, key=lambda e: e.end_time or 0):
        spent += entry.compute
        if entry.status == "finished" and entry.value is not None and entry.value >= target:
            return spent
    return None


def best_of(entries) -> float | None:
    values = [e.value for e in entries if e.status == "finished" and e.value is not None]
    return max(values) if values else None


def median_to_target(runs) -> float:
    """The median over seeds of the compute to the target; a seed that never reached it counts as infinite."""
    return statistics.median(needed if needed is not None else float("inf") for needed, _, _ in runs)


def search_efficiency(folder: Path, methods: list[str], seeds: list[int]) -> None:
    start = time.perf_counter()
    grid = run(sweep_file(folder, "grid", GRID, {"algorithm": "grid"}, {"kind": "none"}, REDUCED))
    grid_best, grid_compute = best_of(grid), sum(e.compute for e in grid)
    if grid_best is None:
        sys.exit("search_efficiency: no grid trial finished, so there is no target; see the trials' errors above")
    target = grid_best - WITHIN
    print(f"\ngrid: best final/{METRIC} {grid_best:.4f} after {grid_compute:.0f} tasks; target {target:.4f}", flush=True)
    grid_minutes = (time.perf_counter() - start) / 60
    results, minutes, finished = {}, {}, {}
    for method in methods:
        search, scheduler = METHODS[method]
        runs, began = [], time.perf_counter()
        for seed in seeds:
            entries = run(sweep_file(folder, f"{method}-s{seed}", SPACE, {**search, "seed": seed}, scheduler, REDUCED))
            runs.append((compute_to_reach(entries, target), best_of(entries), sum(e.compute for e in entries)))
            finished.setdefault(method, []).extend(e.value for e in entries if e.status == "finished" and e.value is not None)
            needed, best, compute = runs[-1]
            reached = "target never reached" if needed is None else f"target reached after {needed:.1f} tasks"
            found = "none finished" if best is None else f"{best:.4f}"
            print(f"{method} seed {seed}: {reached}; best {found}; compute {compute:.1f}", flush=True)
        results[method], minutes[method] = runs, (time.perf_counter() - began) / 60
    print(f"\n{'method':<20} {'seeds':>5} {'reached':>8} {'median compute to target / grid':>33} "
          f"{'median best':>12} {'median compute':>15} {'minutes':>8}")
    print(f"{'grid':<20} {1:>5} {'1/1':>8} {'-':>33} {grid_best:>12.4f} {grid_compute:>15.1f} {grid_minutes:>8.1f}")
    for method, runs in results.items():
        reached = [r[0] for r in runs if r[0] is not None]
        median = median_to_target(runs)
        fraction = f"{median / grid_compute:.2f}" if median != float("inf") else "never"
        bests = [r[1] for r in runs if r[1] is not None]
        print(f"{method:<20} {len(runs):>5} {f'{len(reached)}/{len(runs)}':>8} {fraction:>33} "
              f"{(statistics.median(bests) if bests else float('nan')):>12.4f} {statistics.median(r[2] for r in runs):>15.1f} "
              f"{minutes[method]:>8.1f}")
    print(f"\ntook {(time.perf_counter() - start) / 60:.1f} min")
    if "tpe-asha-tasks" in results:
        needed = median_to_target(results["tpe-asha-tasks"])
        verdict = (f"met: {needed / grid_compute:.2f} of the grid's compute" if needed <= grid_compute / 3
                   else "missed: never within 0.5 points" if needed == float("inf")
                   else f"missed: {needed / grid_compute:.2f} of the grid's compute")
    else:
        verdict = "not judged: tpe-asha-tasks was not among the methods"
    print(f"target (tpe-asha-tasks <= 1/3 of the grid's compute): {verdict}")
    if finished.get("random"):
        print(odds(finished["random"], target, grid_compute, max(e.compute for e in grid), len(seeds)))


def odds(finished: list[float], target: float, grid_compute: float, tasks: float, seeds: int) -> str:
    """What the target asks of any searcher: how many configurations fit in a third of the grid's
    compute, and the chance that one of them, drawn at random (as TPE's start-up trials are), comes
    within 0.5 points, from the share of random search's trials (every one finished) that did."""
    fit = max(0, 1 + int((grid_compute / 3 - tasks) // TASKS_ASHA["grace_period"]))
    hits = sum(value >= target for value in finished)
    share = hits / len(finished)
    per_seed = 1 - (1 - share) ** fit
    # The median of the seeds reaches the target when more than half of them do.
    median = sum(math.comb(seeds, k) * per_seed ** k * (1 - per_seed) ** (seeds - k) for k in range(seeds // 2 + 1, seeds + 1))
    return (f"odds: {hits} of random search's {len(finished)} trials came within 0.5 points ({share:.0%}). A third of "
            f"the grid's compute fits {fit} configurations at most (one trained on every task, the rest stopped at task "
            f"{TASKS_ASHA['grace_period']}); drawn at random, as TPE's start-up trials are, one of them is within 0.5 points "
            f"with chance {per_seed:.0%}. So even a perfect early stop meets the target in a seed with chance about "
            f"{per_seed:.0%}, and in the median of {seeds} seeds about {median:.0%}.")


def check_ranking(folder: Path) -> None:
    """Spearman's rank correlation between the reduced and the full benchmark over the grid."""
    from scipy import stats

    values = {}
    for name, base in (("reduced", REDUCED), ("full", {"checkpoint": {"every_epochs": 0}})):
        entries = run(sweep_file(folder, f"grid-{name}", GRID, {"algorithm": "grid"}, {"kind": "none"}, base))
        values[name] = {tuple(sorted(e.params.items())): e.value for e in entries}
    keys = sorted(values["reduced"])
    reduced, full = [values["reduced"][k] for k in keys], [values["full"][k] for k in keys]
    for key, a, b in zip(keys, reduced, full):
        print(f"{dict(key)}: reduced {a:.4f}, full {b:.4f}")
    rho = stats.spearmanr(reduced, full)
    print(f"Spearman's rho between the reduced and the full benchmark over {len(keys)} configurations: "
          f"{rho.statistic:.2f} (p = {rho.pvalue:.2f})")


def seed_list(text: str) -> list[int]:
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="tpe-asha-tasks", help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--seeds", default="0,1,2", type=seed_list, help="comma-separated searcher seeds")
    parser.add_argument("--check-ranking", action="store_true", help="rank the grid on the reduced and the full benchmark")
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose among {sorted(METHODS)}")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from aepg.config import ConfigError

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        try:
            if args.check_ranking:
                check_ranking(Path(tmp))
            else:
                search_efficiency(Path(tmp), methods, args.seeds)
        except ConfigError as error:
            problems = "; ".join(f"{key}: {message}" for key, message in error.problems)
            sys.exit(f"search_efficiency: cannot run the benchmark: {problems}")
        except KeyboardInterrupt:
            sys.exit("search_efficiency: interrupted")


if __name__ == "__main__":
    main()
