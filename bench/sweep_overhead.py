"""Wall time of the same N trials run by plain Optuna in one process and by `aepg sweep`.

Both sample the space of sweeps/search.yaml with Optuna's seeded random sampler (so both run the same
configurations), run each trial with the aepg trainer logging to MLflow, and run
`--concurrency` trials at a time: plain Optuna with threads in this process, aepg with Ray Tune
trial processes. The aepg wall time includes starting the local Ray instance. On a shared
2-core machine single timings vary by about 10 %, so `--repeat` alternates the two and reports
medians.

    python bench/sweep_overhead.py [--trials 6] [--concurrency 2] [--repeat 3] [key=value ...]
Target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import ray
import torch

from aepg.preflight import planned_run
from aepg.tracking import Tracker
from aepg.distributed import Context
from aepg.launch import train_worker
from aepg.sweep.driver import finalize, run_sweep
from aepg.sweep.checks import load_sweep

SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "search.yaml"


def plain_optuna(sweep, trials: int, concurrency: int, tmp: str) -> float:
    tracker = Tracker(f"sqlite:///{tmp}/plain.db")
    space = sweep.define_by_run()
    torch.set_num_threads(1)

    def objective(trial: optuna.Trial) -> float:
        space(trial)
        cfg = sweep.run_config(trial.params, f"{tmp}/plain-runs", f"plain-{trial.number}")
        run = tracker.open_run(planned_run(cfg))
        state = train_worker(cfg, run, Context(device=torch.device("cpu")))
        run.close("FINISHED")
        return state.summary[sweep.spec.metric]

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=sweep.spec.search.seed))
    start = time.perf_counter()
    study.optimize(objective, n_trials=trials, n_jobs=concurrency)
    return time.perf_counter() - start


def aepg_sweep(overrides: list[str], tmp: str) -> float:
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/aepg.db"
    start = time.perf_counter()
    runtime, complete = run_sweep(load_sweep(SWEEP, overrides))
    assert complete
    finalize(runtime)
    elapsed = time.perf_counter() - start
    ray.shutdown()  # each repeat starts its own Ray, as `aepg sweep` does
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="alternate both sides this many times; report medians")
    parser.add_argument("overrides", nargs="*", help="sweep-file overrides")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    overrides = ["search.algorithm=random", "scheduler.kind=none", f"search.num_trials={args.trials}",
                 f"search.max_concurrent={args.concurrency}", *args.overrides]
    plain, aepg = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            sweep = load_sweep(SWEEP, overrides + [f"storage_path={tmp}/sweeps"])
            plain.append(plain_optuna(sweep, args.trials, args.concurrency, tmp))
            aepg.append(aepg_sweep(overrides + [f"storage_path={tmp}/sweeps"], tmp))
    print(f"\n{args.trials} trials, {args.concurrency} at a time, {os.cpu_count()} cores, {args.repeat} repeat(s)")
    print(f"plain Optuna (threads, one process): {statistics.median(plain):7.1f} s  ({', '.join(f'{t:.1f}' for t in plain)})")
    print(f"aepg sweep (Ray Tune + Optuna):      {statistics.median(aepg):7.1f} s  ({', '.join(f'{t:.1f}' for t in aepg)}; "
          "includes starting Ray)")
    print(f"ratio of medians: {statistics.median(aepg) / statistics.median(plain):.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
