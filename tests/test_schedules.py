import math

import pytest

from aepg.config import schedule_config
from aepg.schedules import Progress, build_schedule


@pytest.mark.parametrize(
    "kind, start, middle, end",
    [
        ("sigmoid", 1 / (1 + math.exp(-6)), 0.5, 1 / (1 + math.exp(6))),
        ("linear", 1.0, 0.5, 0.0),
        ("cosine", 1.0, 0.5, 0.0),
        ("constant", 0.3, 0.3, 0.3),
    ],
)
def test_values_at_start_middle_end(kind, start, middle, end):
    a = build_schedule(schedule_config(kind=kind, tau=6.0, a=0.3))
    T = 200
    assert a(Progress(0, T)) == pytest.approx(start)
    assert a(Progress(T // 2, T)) == pytest.approx(middle)
    assert a(Progress(T, T)) == pytest.approx(end)


def test_sigmoid_matches_formula_and_decreases():
    tau, T = 3.0, 37
    a = build_schedule(schedule_config(kind="sigmoid", tau=tau))
    values = [a(Progress(t, T)) for t in range(T + 1)]
    for t, v in enumerate(values):
        assert v == pytest.approx(1 / (1 + math.exp(-tau * (T - 2 * t) / T)))
    assert all(x > y for x, y in zip(values, values[1:]))


def test_cosine_quarter():
    a = build_schedule(schedule_config(kind="cosine"))
    assert a(Progress(25, 100)) == pytest.approx(0.5 + 0.5 * math.cos(math.pi / 4))
