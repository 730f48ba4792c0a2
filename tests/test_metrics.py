import pytest

from aepg.metrics import accuracy_after_each_task, summarize

R = [
    [0.90],
    [0.70, 0.80],
    [0.60, 0.75, 0.95],
]
EQUAL = [100, 100, 100]  # equal test sets: pooled accuracy equals the task mean


def test_accuracy_after_each_task():
    assert accuracy_after_each_task(R, EQUAL) == pytest.approx([0.90, 0.75, (0.60 + 0.75 + 0.95) / 3])


def test_summary_by_hand():
    s = summarize(R, EQUAL)
    assert s["last_accuracy"] == pytest.approx(0.7666666667) == pytest.approx(s["task_mean_accuracy"])
    assert s["avg_incremental_accuracy"] == pytest.approx((0.90 + 0.75 + 0.7666666667) / 3)
    # forgetting: task 1 best before last 0.90 -> 0.60 (0.30); task 2 best 0.80 -> 0.75 (0.05)
    assert s["forgetting"] == pytest.approx((0.30 + 0.05) / 2)
    # bwt: (0.60 - 0.90 + 0.75 - 0.80) / 2
    assert s["bwt"] == pytest.approx(-0.175)


def test_forgetting_uses_best_not_first():
    s = summarize([[0.5], [0.9, 0.8], [0.4, 0.8, 0.7]], EQUAL)
    assert s["forgetting"] == pytest.approx(((0.9 - 0.4) + (0.8 - 0.8)) / 2)
    assert s["bwt"] == pytest.approx(((0.4 - 0.5) + (0.8 - 0.8)) / 2)


def test_single_task_has_no_forgetting():
    assert summarize([[0.8]], [50]) == {"last_accuracy": 0.8, "avg_incremental_accuracy": 0.8, "task_mean_accuracy": 0.8}
