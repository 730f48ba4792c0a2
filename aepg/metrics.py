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


def running_metrics(R: list[list[float]], sizes: list[int]) -> dict[str, float]:
    """What is reported after each task: the budget used (``tasks_done``) and the summary so far."""
    return {"tasks_done": len(R), "accuracy_after_task": accuracy_after_each_task(R, sizes)[-1], **summarize(R, sizes)}
