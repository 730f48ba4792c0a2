"""How noisy a sweep's measurements are, and which configurations that noise cannot tell apart.

A configuration trained on several seeds shows the seed noise: the pooled standard deviation of
the repeated configurations (degrees of freedom summed) is set beside the spread of the
configurations' means. A configuration is tied with the winner when the 95% confidence interval
of their difference contains zero: paired over the seeds both have (two or more), else from the
pooled noise (Welch-free: both share one noise). The verdict says in one line whether the sweep
separates its best two configurations, and if not, about how many seeds each would need (a
two-sided 5% test with 80% power at the measured noise and difference).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from aepg.schema import SEED_NOISE_KEY, SPREAD_KEY

Z_TEST, Z_POWER = 1.959964, 0.841621  # normal quantiles: two-sided 5%, 80% power


def t_quantile(df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def pooled_std(groups: list[list[float]]) -> tuple[float | None, int]:
    """The pooled standard deviation of the groups with two or more values, and its degrees of freedom."""
    repeated = [g for g in groups if len(g) > 1]
    df = sum(len(g) - 1 for g in repeated)
    if not df:
        return None, 0
    return math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in repeated) / df), df


def difference_interval(best: dict[int, float], other: dict[int, float], noise: float | None,
                        df: int) -> tuple[float, float] | None:
    """(mean of best - other, half width of its 95% interval): paired over shared seeds when there
    are two or more, else from the pooled noise; None when neither is possible."""
    shared = sorted(set(best) & set(other))
    if len(shared) > 1:
        return paired_difference([best[s] - other[s] for s in shared])
    if noise is None or not best or not other:
        return None
    difference = statistics.mean(best.values()) - statistics.mean(other.values())
    return difference, t_quantile(df) * noise * math.sqrt(1 / len(best) + 1 / len(other))


def paired_difference(diffs: list[float]) -> tuple[float, float | None]:
    """(mean of per-seed differences, half width of its 95% t-interval; None under two seeds)."""
    if len(diffs) < 2:
        return statistics.mean(diffs), None
    return statistics.mean(diffs), t_quantile(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))


def paired_summary(by_seed: dict, arms: list[str]) -> tuple[dict[str, float], tuple[float, float | None]]:
    """Over the seeds on which every arm trained: each arm's mean, and the difference of the last
    arm minus the first (its mean over seeds, and the half width of its 95% interval)."""
    complete = [values for values in by_seed.values() if all(arm in values for arm in arms)]
    means = {arm: statistics.mean(values[arm] for values in complete) for arm in arms}
    return means, paired_difference([values[arms[-1]] - values[arms[0]] for values in complete])


def paired_verdict(name: str, arms: list[str], difference: tuple[float, float | None], seeds: int) -> str:
    """One line: whether the paired difference of the last arm minus the first is separated from zero."""
    mean, half = difference
    said = f"{arms[-1]} - {arms[0]} at {name}: {mean:+.4f}"
    if half is None:
        return f"{said} on one seed: no interval; pair over more seeds to tell a difference from luck"
    low, high = mean - half, mean + half
    where = (f"separated from zero ({arms[-1] if mean > 0 else arms[0]} higher)" if low > 0 or high < 0
             else "not separated from zero: the seeds cannot tell the arms apart")
    return f"{said}, 95% interval [{low:+.4f}, {high:+.4f}] over {seeds} seeds: {where}"


def seeds_needed(difference: float, noise: float) -> float:
    """Seeds per configuration for a two-sided 5% test with 80% power to see ``difference``."""
    if difference == 0:
        return math.inf
    return max(2, math.ceil(2 * ((Z_TEST + Z_POWER) * noise / abs(difference)) ** 2))


@dataclass(frozen=True)
class Noise:
    seed_std: float | None
    """Pooled standard deviation over seeds of the configurations trained on several."""
    repeated: int
    """How many configurations were trained on several seeds."""
    spread: float | None
    """Standard deviation of the configurations' mean values."""
    tied: list[bool]
    """Per configuration (in leaderboard order): within noise of the winner (the winner itself too)."""
    verdict: str

    def params(self) -> dict[str, float]:
        values = {SEED_NOISE_KEY: self.seed_std, SPREAD_KEY: self.spread}
        return {key: value for key, value in values.items() if value is not None}


def assess(values: list[dict[int, float]]) -> Noise:
    """``values``: each finished configuration's value per seed, best configuration first."""
    noise, df = pooled_std([list(v.values()) for v in values])
    repeated = sum(len(v) > 1 for v in values)
    means = [statistics.mean(v.values()) for v in values if v]
    spread = statistics.stdev(means) if len(means) > 1 else None
    tied = [True] + [False] * (len(values) - 1) if values else []
    intervals = [difference_interval(values[0], other, noise, df) for other in values[1:]]
    for i, interval in enumerate(intervals, 1):
        tied[i] = interval is not None and abs(interval[0]) <= interval[1]
    return Noise(noise, repeated, spread, tied, verdict(values, noise, spread, intervals))


def verdict(values: list[dict[int, float]], noise: float | None, spread: float | None,
            intervals: list[tuple[float, float] | None]) -> str:
    """One line: the measured noise and spread, and whether the best two configurations separate."""
    if len(values) < 2:
        return "one finished configuration: nothing to separate"
    if noise is None:
        return ("seed noise unknown (no configuration was trained on two or more seeds): "
                "the ranking may be luck; train the leaders on more seeds")
    measured = f"seed noise {noise:.4f} (pooled over {sum(len(v) > 1 for v in values)} configurations)"
    measured += f", spread between configurations {spread:.4f}" if spread is not None else ""
    first = intervals[0]
    if first is None:
        return f"{measured}; the best two cannot be compared"
    difference, half = first
    if abs(difference) > half:
        return f"{measured}; the best configuration is separated from the next ({abs(difference):.4f} apart, ±{half:.4f})"
    ties = sum(1 for interval in intervals if interval is not None and abs(interval[0]) <= interval[1])
    need = seeds_needed(difference, noise)
    more = "any number of seeds (they are equal)" if need == math.inf else f"about {need} seeds each"
    return (f"{measured}; {ties + 1} configurations are tied within noise: telling the best two apart "
            f"({abs(difference):.4f}) needs {more}")


def signed_rank_worse(values: dict[int, float], best: dict[int, float], mode: str, p_threshold: float,
                      startup: int) -> bool:
    """Seeds as instances: whether a configuration's values on the seeds it has trained, paired with
    the best finished configuration's on the same seeds, are worse by a one-sided Wilcoxon
    signed-rank test (p < ``p_threshold``, after ``startup`` seeds), as Optuna's ``WilcoxonPruner``
    decides it (it keeps a configuration whose mean so far is above the best's mean)."""
    import warnings

    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    study.add_trial(create_trial(value=statistics.mean(best.values()), intermediate_values=best,
                                 params={}, distributions={}))
    current = create_trial(state=TrialState.RUNNING, intermediate_values=values, params={}, distributions={})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        pruner = optuna.pruners.WilcoxonPruner(p_threshold=p_threshold, n_startup_steps=startup)
    return pruner.prune(study, current)
