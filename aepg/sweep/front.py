"""A trade-off's Pareto front over a sweep's finished configurations, knowing its seed noise.

A configuration is on the front when no other is at least as good on every metric and better on
one (each metric in its own direction). One that another dominates is marked ``within noise``
when no dominating configuration is better on any metric by more than the seed noise allows
(the 95% interval of the difference, paired over shared seeds or from the pooled noise, as
``aepg.sweep.noise`` computes it, contains zero): on other seeds it could be on the front. With
one seed per configuration the noise is unknown and nothing is marked so.

``best.yaml`` is one named point of the front: the best value of the sweep's ``metric`` among the
front's points whose value of each ``pick`` metric is within its tolerance of the front's best
value of that metric (with no ``pick``, the front's best ``metric``).
"""

from __future__ import annotations

import statistics

from aepg.sweep.noise import difference_interval, pooled_std

ON_FRONT, WITHIN_NOISE = "front", "within noise"


def better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def dominates(a: dict[str, float], b: dict[str, float], objectives: dict[str, str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` on every metric and better on one."""
    return (all(not better(b[m], a[m], mode) for m, mode in objectives.items())
            and any(better(a[m], b[m], mode) for m, mode in objectives.items()))


def front_marks(values: list[dict[str, dict[int, float]]], objectives: dict[str, str]) -> list[str]:
    """For each configuration (its value of each metric on each seed): ``front``, ``within noise``
    or empty."""
    means = [{m: statistics.mean(v[m].values()) for m in objectives} for v in values]
    noise = {m: pooled_std([list(v[m].values()) for v in values]) for m in objectives}

    def clearly_better(j: int, i: int) -> bool:
        """Whether configuration j is better than i on some metric beyond the seed noise."""
        for m, mode in objectives.items():
            if not better(means[j][m], means[i][m], mode):
                continue
            found = difference_interval(values[j][m], values[i][m], *noise[m])
            if found is None or abs(found[0]) > found[1]:
                return True
        return False

    marks = []
    for i in range(len(values)):
        dominating = [j for j in range(len(values)) if j != i and dominates(means[j], means[i], objectives)]
        if not dominating:
            marks.append(ON_FRONT)
        elif not any(clearly_better(j, i) for j in dominating):
            marks.append(WITHIN_NOISE)
        else:
            marks.append("")
    return marks


def pick(means: list[dict[str, float]], marks: list[str], objectives: dict[str, str],
         tolerances: dict[str, float]) -> int | None:
    """The index of ``best.yaml``'s configuration: on the front, within ``tolerances`` of the front's
    best value of each listed metric, and best on the first metric among those."""
    front = [i for i, mark in enumerate(marks) if mark == ON_FRONT]
    if not front:
        return None
    for m, tolerance in tolerances.items():
        sign = 1 if objectives[m] == "max" else -1
        best = max(sign * means[i][m] for i in front)
        front = [i for i in front if best - sign * means[i][m] <= tolerance + 1e-12]
    metric, mode = next(iter(objectives.items()))
    sign = 1 if mode == "max" else -1
    return max(front, key=lambda i: sign * means[i][metric])


def pick_rule(metric: str, tolerances: dict[str, float], objectives: dict[str, str]) -> str:
    """The rule ``pick`` applies, in words."""
    if not tolerances:
        return f"the front's best {metric}"
    within = " and ".join(f"{m} within {t:g} of the front's {'highest' if objectives[m] == 'max' else 'lowest'}"
                          for m, t in tolerances.items())
    return f"the best {metric} on the front with {within}"
