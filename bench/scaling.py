"""Data-parallel scaling of one aepg job on Ray Train, in one run.

Measures (1) the fixed start-up cost of a TorchTrainer run (a no-op training function on N
workers), (2) the training throughput of the same job on 1 worker and on N workers, read
from the run's ``train/samples_per_second`` metric (evaluation and start-up excluded), and prints
the ratio. On CPU each worker gets ``cores / workers`` threads, so both sides use all cores.

    python bench/scaling.py                       # 1 worker x 2 threads vs 2 workers x 1 thread
    python bench/scaling.py --workers 8 --gpu     # on a GPU node: 1 GPU vs 8 GPUs
    python bench/scaling.py key=value ...         # any run-config override
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from aepg.config import load_config
from aepg.launch import fit_off_main_thread, run
from aepg.ray_setup import ensure_ray

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"


def startup_seconds(workers: int, gpu: bool, repeats: int) -> float:
    import ray.train
    from ray.train.torch import TorchTrainer

    times = []
    with tempfile.TemporaryDirectory() as storage:
        for i in range(repeats):
            trainer = TorchTrainer(
                lambda: None,
                scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpu),
                run_config=ray.train.RunConfig(name=f"startup-{i}", storage_path=storage),
            )
            start = time.perf_counter()
            fit_off_main_thread(trainer)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def job(workers: int, threads: int | None, gpu: bool, overrides: list[str], tmp: str) -> tuple[float, float]:
    """(training samples/s, wall seconds) of the job on ``workers`` workers."""
    scaling = [f"scaling.num_workers={workers}", f"scaling.use_gpu={str(gpu).lower()}"]
    if threads:
        scaling.append(f"scaling.torch_threads={threads}")
        scaling.append(f"scaling.cpus_per_worker={threads}")
    cfg = load_config(CONFIG, [f"storage_path={tmp}/runs", f"tracking_uri=sqlite:///{tmp}/mlflow.db",
                               *scaling, *overrides])
    start = time.perf_counter()
    result = run(cfg)
    wall = time.perf_counter() - start
    history = result.tracker.client.get_metric_history(result.run_id, "train/samples_per_second")
    return statistics.mean(m.value for m in history), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="N, compared with 1 worker")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--repeats", type=int, default=2, help="start-up measurements")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    ensure_ray()
    cores = os.cpu_count() or 1
    overrides = ["train.batch_size=32", *args.overrides]

    startup = startup_seconds(args.workers, args.gpu, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for workers in (1, args.workers):
            threads = None if args.gpu else max(1, cores // workers)
            rate, wall = job(workers, threads, args.gpu, overrides, tmp)
            rows.append((workers, threads, rate, wall))

    print(f"\nTorchTrainer start-up (no-op, {args.workers} workers): {startup:.1f} s (median of {args.repeats})")
    print(f"{'workers':>8} {'threads/worker':>15} {'train samples/s':>16} {'wall s':>8}")
    for workers, threads, rate, wall in rows:
        print(f"{workers:>8} {threads or '-':>15} {rate:>16.1f} {wall:>8.1f}")
    print(f"throughput ratio {args.workers} workers / 1 worker: {rows[1][2] / rows[0][2]:.3f}")


if __name__ == "__main__":
    main()
