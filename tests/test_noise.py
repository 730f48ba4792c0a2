"""Seed noise and ties on hand-made leaderboards whose answers are known."""

import math
import statistics

import pytest

from aepg.metrics import final_name
from aepg.sweep.noise import assess, difference_interval, pooled_std, seeds_needed
from aepg.sweep.leaderboard import average_over_seeds, entries_of, mark_within_noise, rank, table
from aepg.sweep.schema import STATUS_TAG
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
    ranked = rank(average_over_seeds(entries_of(runs, space, "last_accuracy", 3)), "max")
    mark_within_noise(ranked, assess([e.by_seed for e in ranked]))
    rows = table(ranked, "last_accuracy", ["train.lr"])
    assert [(row["train.lr"], row.get("within noise")) for row in rows] == [(0.1, "best"), (0.2, "tied"), (0.3, None)]
    assert ranked[0].by_seed == WINNER
