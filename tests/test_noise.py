"""Seed noise and ties on hand-made leaderboards whose answers are known."""

import math
import statistics

import pytest

from aepg.schema import STATUS_TAG, final_name
from aepg.sweep.leaderboard import average_over_seeds, mark_within_noise, rank, table, task_entries
from aepg.sweep.noise import assess, difference_interval, pooled_std, seeds_needed
from aepg.sweep.spec import Param
from aepg.tracking import RunRecord

WINNER = {0: 0.80, 1: 0.82, 2: 0.81}
TIED = {0: 0.805, 1: 0.80, 2: 0.815}  # paired differences -0.005, 0.02, -0.005: mean 0.0033, interval +-0.036
BEATEN = {0: 0.60, 1: 0.61, 2: 0.62}  # 0.20, 0.21, 0.19 below the winner on every seed


def test_pooled_noise_sums_the_degrees_of_freedom_of_repeated_configurations():
    assert pooled_std([[1.0, 2.0, 3.0], [4.0, 6.0], [9.0]]) == (pytest.approx(math.sqrt((2 * 1 + 1 * 2) / 3)), 3)
    assert pooled_std([[1.0], [2.0]]) == (None, 0)


def test_differences_are_paired_over_shared_seeds_or_use_the_pooled_noise():
    difference, half = difference_interval(WINNER, BEATEN, None, 0)
    assert difference == pytest.approx(0.20) and half == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-5)
    # One shared seed: the interval comes from the pooled noise (t with the pooled degrees of freedom).
    difference, half = difference_interval({0: 0.8}, {0: 0.7}, 0.05, 10)
    assert difference == pytest.approx(0.1) and half == pytest.approx(2.228139 * 0.05 * math.sqrt(2), rel=1e-5)
    assert difference_interval({0: 0.8}, {1: 0.7}, None, 0) is None


def test_a_leaderboard_marks_the_configurations_tied_with_the_winner():
    found = assess([WINNER, TIED, BEATEN])
    assert found.tied == [True, True, False] and found.repeated == 3
    assert found.seed_std == pytest.approx(math.sqrt((0.01 ** 2 + statistics.variance(TIED.values()) + 0.01 ** 2) / 3))
    assert "2 configurations are tied within noise" in found.verdict and f"seed noise {found.seed_std:.4f}" in found.verdict
    separated = assess([WINNER, BEATEN])
    assert separated.tied == [True, False] and "separated from the next (0.2000 apart" in separated.verdict
    unknown = assess([{0: 0.8}, {0: 0.7}])
    assert unknown.seed_std is None and "seed noise unknown" in unknown.verdict


def test_seeds_needed_follow_the_two_sample_power_formula():
    # 2 (z_0.975 + z_0.8)^2 sigma^2 / delta^2: noise 0.033 against a 0.01 difference.
    assert seeds_needed(0.01, 0.033) == math.ceil(2 * ((1.959964 + 0.841621) * 3.3) ** 2) == 171
    assert seeds_needed(0.5, 0.01) == 2 and seeds_needed(0.0, 0.01) == math.inf


def test_the_leaderboard_shows_which_configurations_are_within_noise():
    space = {"train.lr": Param(choice=[0.1, 0.2, 0.3])}
    runs = [RunRecord(f"{lr}-{seed}", f"t-{lr}-{seed}", "FINISHED", {"train.lr": str(lr), "seed": str(seed)},
                      {final_name("last_accuracy"): values[seed]}, {STATUS_TAG: "finished"})
            for lr, values in ((0.1, WINNER), (0.2, TIED), (0.3, BEATEN)) for seed in values]
    ranked = rank(average_over_seeds(task_entries(runs, space, "last_accuracy", 3)), "max")
    mark_within_noise(ranked, assess([e.by_seed for e in ranked]))
    rows = table(ranked, "last_accuracy", ["train.lr"])
    assert [(row["train.lr"], row.get("within noise")) for row in rows] == [(0.1, "best"), (0.2, "tied"), (0.3, None)]
    assert ranked[0].by_seed == WINNER


def test_seeds_as_instances_stop_a_configuration_the_signed_rank_test_finds_worse_and_keep_the_others():
    """The Wilcoxon scheduler (Optuna's WilcoxonPruner over seeds): against the best finished
    configuration, a configuration below it on every one of four seeds is stopped (one-sided exact
    p = 1/16 < 0.1); on three seeds the test cannot reach 0.1 (p = 1/8); one that trades places
    with the best goes on, and so does one whose mean so far is above the best's mean."""
    import json

    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from aepg.schema import SEED_VALUES_RESULT
    from aepg.sweep.search import SignedRankStopping

    best = {0: 0.80, 1: 0.82, 2: 0.81, 3: 0.83, 4: 0.80}
    scheduler = SignedRankStopping("max", full_budget=5, p_threshold=0.1, startup=2)
    trials = {name: Trial("__fake", trial_id=name, stub=True) for name in ("best", "worse", "close", "lucky")}

    def told(name: str, values: dict[int, float]) -> str:
        return scheduler.on_trial_result(None, trials[name], {SEED_VALUES_RESULT: json.dumps(values)})

    below = {seed: value - 0.1 for seed, value in best.items()}
    assert told("worse", dict(list(below.items())[:4])) == TrialScheduler.CONTINUE, "no finished configuration yet"
    assert told("best", best) == TrialScheduler.CONTINUE
    assert told("worse", dict(list(below.items())[:3])) == TrialScheduler.CONTINUE
    assert told("worse", dict(list(below.items())[:4])) == TrialScheduler.STOP
    assert told("close", {0: 0.81, 1: 0.81, 2: 0.80, 3: 0.84}) == TrialScheduler.CONTINUE
    # Below the best on each of its seeds, but its seeds were the best's good ones: its mean so far
    # (0.814) is above the best's over all five (0.812), so Optuna's safety keeps it.
    assert told("lucky", {seed: best[seed] - 0.001 for seed in range(4)}) == TrialScheduler.CONTINUE
    # Minimising (forgetting), the same values are the better ones: nothing is stopped.
    minimising = SignedRankStopping("min", full_budget=5, p_threshold=0.1, startup=2)
    minimising.on_trial_result(None, trials["best"], {SEED_VALUES_RESULT: json.dumps(best)})
    assert minimising.on_trial_result(None, trials["worse"], {SEED_VALUES_RESULT: json.dumps(
        dict(list(below.items())[:4]))}) == TrialScheduler.CONTINUE
