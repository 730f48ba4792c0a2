"""Continual-learning metrics from the accuracy matrix.

``R[i][j]`` is task j's test accuracy (predictions over all classes seen so far, no task id)
after training task i, for j <= i. ``A_i``, the accuracy after task i, is the mean of row i
over the tasks seen (equal to accuracy on all seen test data when tasks have equal size).
"""

from __future__ import annotations

from statistics import mean


def accuracy_after_each_task(R: list[list[float]]) -> list[float]:
    return [mean(row[: i + 1]) for i, row in enumerate(R)]


def summarize(R: list[list[float]]) -> dict[str, float]:
    """last_accuracy, avg_incremental_accuracy and, with two or more tasks, forgetting and bwt.

    forgetting: mean over old tasks of (best accuracy before the last task - last accuracy).
    bwt: mean over old tasks of (last accuracy - accuracy right after learning the task).
    """
    if not R:
        return {}
    A = accuracy_after_each_task(R)
    summary = {"last_accuracy": A[-1], "avg_incremental_accuracy": mean(A)}
    last, old = R[-1], range(len(R) - 1)
    if len(R) > 1:
        summary["forgetting"] = mean(max(R[i][j] for i in range(j, len(R) - 1)) - last[j] for j in old)
        summary["bwt"] = mean(last[j] - R[j][j] for j in old)
    return summary


def running_metrics(R: list[list[float]]) -> dict[str, float]:
    """What is reported after each task: the budget used (``tasks_done``) and the summary so far."""
    return {"tasks_done": len(R), "accuracy_after_task": accuracy_after_each_task(R)[-1], **summarize(R)}
