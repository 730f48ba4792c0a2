"""Sweep protocols through their objects: which one a sweep file gets, what each says a trial costs and
is compared on, what each refuses, and how each reads runs back as leaderboard rows (runs made by
hand, as the driver writes them). Their trial bodies run for real in tests/test_sweep.py,
tests/test_cluster.py and, for a protocol a package adds, tests/test_plugins.py."""

import json
import tempfile
from pathlib import Path

import pytest
import yaml

from aepg.config import ConfigError
from aepg.schema import (ARM_VALUES_TAG, BUDGET_KEY, INDEX_TAG, LEVEL_KEY, SEED_VALUES_TAG, SEEDS_KEY, STATUS_TAG,
                         TASKS_DONE_TAG)
from aepg.sweep.checks import load_sweep
from aepg.sweep.params import SweepParams
from aepg.sweep.spec import Param
from aepg.tracking import RunRecord

from conftest import REPO

SEARCH = REPO / "sweeps" / "search.yaml"
SPACE = {"train.lr": Param.model_validate({"choice": [0.1, 0.2]})}


def sweep(*overrides, **changes):
    """sweeps/search.yaml with top-level keys replaced (``changes``) and dotted ``overrides``."""
    data = {**yaml.safe_load(SEARCH.read_text()), "base_config": str(REPO / "configs" / "digits.yaml"), **changes}
    folder = Path(tempfile.mkdtemp())
    (folder / "sweep.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return load_sweep(folder / "sweep.yaml", list(overrides), check_runs=False)


def params(protocol: str, seeds=(0,), levels=None, trade_off=None) -> SweepParams:
    return SweepParams("last_accuracy", "max", 5, 4, protocol, levels, list(seeds), [], "/tmp", "digits",
                       trade_off or {}, {})


def run(name: str, lr: float, metrics: dict, tags: dict, status: str = "finished", seed: int = 0) -> RunRecord:
    return RunRecord(name, name, "FINISHED", {"train.lr": str(lr), "seed": str(seed), "objective.kind": "aepg"}, metrics,
                     {STATUS_TAG: status, INDEX_TAG: name[1:3], **tags}, 0, 1)


LR_AND_RANK = {key: value for key, value in yaml.safe_load(SEARCH.read_text())["space"].items()
               if key in ("train.lr", "model.method.rank")}


GRID = {"search": {"algorithm": "grid"}, "space": {"train.lr": {"choice": [0.1, 0.2]}}}
PAIRED = {"space": LR_AND_RANK, "compare": {"objective.kind": ["ce", "aepg"]}}


@pytest.mark.parametrize("overrides, changes, kind", [
    ([], {}, "plain"),
    (["seeds=[0,1]"], GRID, "plain"),
    (["trade_off={forgetting: min}", "metric=last_accuracy"], {}, "trade_off"),
    (["scheduler.kind=asha", "scheduler.fidelity=epochs", "scheduler.min_fraction=0.5", "scheduler.reduction_factor=2"], {},
     "ladder"),
    (["scheduler.fidelity=seeds", "seeds=[0,1,2]"], {}, "seeds"),
    (["scheduler.fidelity=seeds", "seeds=[0,1]"], PAIRED, "paired"),
    (["protocol=plain"], {}, "plain"),
    (["protocol={kind: plain}", "trade_off={forgetting: min}", "metric=last_accuracy"], {}, "plain"),
])
def test_a_sweep_file_gets_the_protocol_its_keys_ask_for_or_the_one_it_names(overrides, changes, kind):
    assert sweep(*overrides, **changes).protocol.kind == kind


def test_an_unknown_protocol_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match="unknown sweep protocol 'pairde'; did you mean 'paired'"):
        sweep("protocol=pairde")


def test_plain_trials_train_a_grid_once_per_seed_and_rows_average_the_seeds():
    grid = sweep("seeds=[0,1]", **GRID)
    protocol = grid.protocol
    assert grid.grid() == [{"train.lr": 0.1, "seed": 0}, {"train.lr": 0.1, "seed": 1},
                           {"train.lr": 0.2, "seed": 0}, {"train.lr": 0.2, "seed": 1}]
    assert protocol.budget(grid) == (BUDGET_KEY, 5) and protocol.unit == "task"
    assert protocol.compared_metric(grid) == "eval/avg_incremental_accuracy" and protocol.trial_resources(grid)["CPU"] == 1
    runs = [run(f"t0{i}", lr, {"final/last_accuracy": value}, {TASKS_DONE_TAG: "5"}, seed=seed)
            for i, (lr, seed, value) in enumerate([(0.1, 0, 0.5), (0.1, 1, 0.7), (0.2, 0, 0.4), (0.2, 1, 0.4)], 1)]
    read = params("plain", seeds=[0, 1])
    entries = read.reader.entries(runs, SPACE, read)
    assert [(e.params["train.lr"], e.value, e.progress) for e in entries] == \
        [(0.1, 0.5, "5/5 tasks"), (0.1, 0.7, "5/5 tasks"), (0.2, 0.4, "5/5 tasks"), (0.2, 0.4, "5/5 tasks")]
    rows = read.reader.group(entries, read)
    assert [(r.params["train.lr"], round(r.value, 6), r.seeds) for r in rows] == [(0.1, 0.6, [0, 1]), (0.2, 0.4, [0, 1])]


def test_a_ladder_is_compared_at_its_levels_and_costs_its_lower_levels_too():
    ladder = sweep("scheduler.kind=asha", "scheduler.fidelity=epochs", "scheduler.min_fraction=0.5",
                   "scheduler.reduction_factor=2")
    protocol = ladder.protocol
    assert protocol.budget(ladder) == (LEVEL_KEY, 2) and protocol.compared_metric(ladder) == "fidelity/avg_incremental_accuracy"
    assert protocol.parent_params(ladder) == {"scheduler.levels": 2}
    line, total = protocol.cost(ladder, "up to 900", 8 * 900)
    half = "{:,}".format(2694 // 2)  # the epochs' half of digits' 2,694 training samples
    assert line == f"up to 900 training samples at the full budget, and {half} on the levels below it"
    assert total == round(8 * 900 * 1.5), "each trial trains the lower level too"
    with pytest.raises(ConfigError, match="space.train.epochs: the epochs fidelity sets it at each level"):
        sweep("scheduler.kind=asha", "scheduler.fidelity=epochs", "scheduler.min_fraction=0.5", "scheduler.reduction_factor=2",
              space={**LR_AND_RANK, "train.epochs": {"choice": [2, 3]}})
    runs = [run("t01-a", 0.1, {"final/last_accuracy": 0.6}, {"aepg.levels_done": "2"}),
            run("t02-b", 0.2, {"fidelity/last_accuracy": 0.3}, {"aepg.levels_done": "1"}, status="stopped early")]
    read = params("ladder", levels=2)
    assert [(e.value, e.progress) for e in read.reader.entries(runs, SPACE, read)] == [(0.6, "level 2/2"), (0.3, "level 1/2")]


def test_a_seed_ladder_trains_between_rungs_from_a_trial_that_holds_no_cpu():
    ladder = sweep("scheduler.kind=asha", "scheduler.fidelity=seeds", "seeds=[0,1,2,3]", "scheduler.grace_period=1",
                   "scheduler.reduction_factor=2")
    protocol = ladder.protocol
    assert ladder.spec.scheduler.seed_rungs(4) == [1, 2, 4]
    assert protocol.budget(ladder) == (SEEDS_KEY, 4) and protocol.unit == "seed"
    assert protocol.trial_resources(ladder)["CPU"] == 0 and protocol.run_resources(ladder)["CPU"] == 1
    assert protocol.trial_config(ladder.base_config.model_copy(update={"seed": 9}), ladder).seed == 0
    line, total = protocol.cost(ladder, "up to 900", 8 * 900)
    assert line == ("up to 900 training samples per seed, on up to 4 seeds (rungs at 1, 2, 4 seeds; the seeds up to a "
                    "rung train at once)") and total == 4 * 8 * 900
    with pytest.raises(ConfigError, match="scheduler.fidelity: seeds needs two or more seeds"):
        sweep("scheduler.fidelity=seeds", "seeds=[0]")
    runs = [run("t01-a", 0.1, {}, {SEED_VALUES_TAG: json.dumps({"0": 0.5, "1": 0.7})}, status="stopped early")]
    read = params("seeds", seeds=[0, 1, 2, 3])
    (entry,) = read.reader.entries(runs, SPACE, read)
    assert (entry.value, entry.progress, entry.seeds, entry.compute) == (0.6, "2/4 seeds", [0, 1], 10.0)
    assert read.reader.nests_seed_runs(read)


def test_paired_arms_train_every_arm_on_each_seed_and_pair_their_difference():
    paired = sweep("scheduler.fidelity=seeds", "seeds=[0,1,2]", "compare_by=aepg", **PAIRED)
    protocol = paired.protocol
    assert protocol.runs_per_seed(paired.spec) == 2
    assert protocol.seed_value(paired.spec, {"ce": 0.2, "aepg": 0.6}) == 0.6, "compare_by names an arm"
    assert protocol.seed_value(paired.spec.model_copy(update={"compare_by": "mean"}), {"ce": 0.2, "aepg": 0.6}) == 0.4
    line, total = protocol.cost(paired, "up to 900", 4 * 900)
    assert "per seed and arm, on up to 3 seeds x 2 arms (ce, aepg)" in line and total == 4 * 900 * 3 * 2
    for bad, changes, fragment in [
            ([], {"compare": {"objective.kind": ["ce", "ce"]}}, "needs two or more different values"),
            (["scheduler.fidelity=tasks"], {}, "compare trains every arm on each seed of a configuration"),
            (["compare_by=aepgg"], {}, "did you mean 'aepg'?")]:
        with pytest.raises(ConfigError, match=fragment.replace("?", r"\?")):
            sweep("scheduler.fidelity=seeds", "seeds=[0,1]", *bad, **{**PAIRED, **changes})
    by_arm = {"0": {"ce": 0.50, "aepg": 0.56}, "1": {"ce": 0.40, "aepg": 0.44}}
    runs = [run("t01-a", 0.1, {"final/last_accuracy": 0.475}, {ARM_VALUES_TAG: json.dumps(by_arm),
                                                              SEED_VALUES_TAG: json.dumps({"0": 0.53, "1": 0.42})})]
    read = params("paired", seeds=[0, 1])
    (entry,) = read.reader.entries(runs, SPACE, read)
    assert entry.arms == pytest.approx({"ce": 0.45, "aepg": 0.50}) and entry.difference[0] == pytest.approx(0.05)
    assert read.reader.verdict(entry, [entry], read).startswith("aepg - ce at t01-a: +0.0500, 95% interval [")


def test_a_trade_off_refuses_what_ranks_on_one_metric():
    base = ["trade_off={forgetting: min}", "metric=last_accuracy"]
    with pytest.raises(ConfigError, match="scheduler.kind: asha compares trials on one metric"):
        sweep(*base, "scheduler.kind=asha")
    with pytest.raises(ConfigError, match="pick: picks a point of a trade-off's front"):
        sweep("pick={forgetting: 0.1}", "scheduler.kind=none")
    with pytest.raises(ConfigError, match="the seed ladder follows one metric"):
        sweep(*base, "scheduler.fidelity=seeds", "seeds=[0,1]")
    trade_off = sweep(*base)
    assert trade_off.protocol.parent_params(trade_off) == {"trade_off": json.dumps({"forgetting": "min"})}
