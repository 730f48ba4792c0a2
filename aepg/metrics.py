"""Continual-learning metrics from the accuracy matrix and the test-set sizes.

``R[i][j]`` is task j's test accuracy (predictions over all classes seen so far, no task id)
after training task i, for j <= i; ``sizes[j]`` is the number of task j's test samples.
``A_i``, the accuracy after task i, is the accuracy over all seen test samples pooled (as
LAE and PILOT compute it and the paper reports it); the mean of row i over the seen tasks is
kept as ``task_mean_accuracy``. The two differ when tasks have test sets of unequal size.
Forgetting and BWT use the per-task matrix.
"""

from __future__ import annotations

from statistics import mean

from aepg.schema import BUDGET_KEY, final_name, partial_name


def pooled_accuracy(row: list[float], sizes: list[int]) -> float:
    """Accuracy over the pooled test samples of the tasks in ``row``."""
    seen = sizes[: len(row)]
    return sum(acc * n for acc, n in zip(row, seen)) / sum(seen)


def accuracy_after_each_task(R: list[list[float]], sizes: list[int]) -> list[float]:
    return [pooled_accuracy(row, sizes) for row in R]


def summarize(R: list[list[float]], sizes: list[int]) -> dict[str, float]:
    """last_accuracy, avg_incremental_accuracy, task_mean_accuracy and, with two or more tasks,
    forgetting and bwt.

    forgetting: mean over old tasks of (best accuracy before the last task - last accuracy).
    bwt: mean over old tasks of (last accuracy - accuracy right after learning the task).
    """
    if not R:
        return {}
    A = accuracy_after_each_task(R, sizes)
    summary = {"last_accuracy": A[-1], "avg_incremental_accuracy": mean(A), "task_mean_accuracy": mean(R[-1])}
    last, old = R[-1], range(len(R) - 1)
    if len(R) > 1:
        summary["forgetting"] = mean(max(R[i][j] for i in range(j, len(R) - 1)) - last[j] for j in old)
        summary["bwt"] = mean(last[j] - R[j][j] for j in old)
    return summary


# The summary metrics a sweep can rank on, and their names while a run is under way (after each
# task) and once it has used its whole budget (``final/``, which only complete runs have).
SUMMARY_METRICS = ("avg_incremental_accuracy", "last_accuracy", "task_mean_accuracy", "forgetting", "bwt")


def running_best(values: list[float | None], mode: str) -> list[float | None]:
    """The best value so far at each position (None values skipped; None before the first)."""
    better, best, out = (max if mode == "max" else min), None, []
    for value in values:
        if value is not None:
            best = value if best is None else better(best, value)
        out.append(best)
    return out


def task_metrics(R: list[list[float]], sizes: list[int], num_tasks: int, placeholders: bool = False) -> dict[str, float]:
    """What is logged and reported after each task: the tasks done, the running summary, and the
    ``final/`` summary once every task is done. ``placeholders`` gives every name a value, NaN
    until it exists (Ray Tune wants each result to carry the metrics it ranks on)."""
    summary = summarize(R, sizes)
    metrics = {BUDGET_KEY: len(R), **{partial_name(k): v for k, v in summary.items()}}
    if len(R) == num_tasks:
        metrics.update({final_name(k): v for k, v in summary.items()})
    if placeholders:
        names = [name(k) for k in SUMMARY_METRICS for name in (partial_name, final_name)]
        metrics = {**dict.fromkeys(names, float("nan")), **metrics}
    return metrics
