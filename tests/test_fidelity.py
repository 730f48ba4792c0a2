"""Fidelities of a sweep: the epochs and data ladders, what each level trains and costs, and the
settings that cannot work refused before any trial."""

import pytest
import yaml

from aepg.config import ConfigError, load_config
from aepg.catalog import SCHEDULERS
from aepg.sweep.fidelity import full_per_class, level_compute, level_config
from aepg.sweep.checks import load_sweep

from conftest import CONFIGS

DIGITS = CONFIGS / "digits.yaml"


def sweep(tmp_path, scheduler: dict, base: dict | None = None):
    spec = {"name": "s", "base_config": str(DIGITS), "base_overrides": base or {"train": {"epochs": 9}},
            "space": {"train.lr": {"loguniform": [1.0e-4, 1.0e-3]}}, "scheduler": {"kind": "asha", **scheduler}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_sweep(path)


def test_the_ladder_grows_by_the_reduction_factor_up_to_the_full_budget(tmp_path):
    scheduler = sweep(tmp_path, {"fidelity": "epochs", "reduction_factor": 3, "min_fraction": 0.111}).spec.scheduler
    assert [round(level.fraction, 4) for level in scheduler.levels()] == [0.1111, 0.3333, 1.0]
    scheduler = sweep(tmp_path, {"fidelity": "epochs", "reduction_factor": 2, "min_fraction": 0.25}).spec.scheduler
    assert [level.fraction for level in scheduler.levels()] == [0.25, 0.5, 1.0]
    assert [level.label for level in scheduler.levels()] == ["1/4 budget", "1/2 budget", "full budget"]


def test_levels_train_fewer_epochs_or_images_and_count_their_share():
    cfg = load_config(DIGITS, ["train.epochs=9", "train.head_only_epochs=3", "benchmark.max_train_per_class=90"])
    third = SCHEDULERS.get("asha").config(fidelity="epochs", min_fraction=1 / 3, reduction_factor=3.0).levels()[0]
    low = level_config(cfg, "epochs", third, 90)
    assert (low.train.epochs, low.train.head_only_epochs, low.benchmark.max_train_per_class) == (3, 1, 90)
    assert level_compute(cfg, low, "epochs", 90) == pytest.approx(5 / 3)
    low = level_config(cfg, "data", third, 90)
    assert (low.train.epochs, low.benchmark.max_train_per_class) == (9, 30)
    assert level_compute(cfg, low, "data", 90) == pytest.approx(5 / 3)
    assert cfg.train.epochs == 9 and cfg.benchmark.max_train_per_class == 90, "the trial's own config is untouched"
    # Without a cap the full budget is the largest class of the data set (digits: 137 training images).
    assert full_per_class(load_config(DIGITS)) == 137


@pytest.mark.parametrize("scheduler, base, key, fragment", [
    ({"fidelity": "epochs", "min_fraction": 0.5, "reduction_factor": 3}, None, "scheduler.min_fraction", "single level"),
    ({"fidelity": "epochs", "min_fraction": 0.111, "reduction_factor": 3}, {"train": {"epochs": 2}},
     "scheduler.min_fraction", "two levels train the same"),
    ({"fidelity": "data", "min_fraction": 0.001, "reduction_factor": 10}, {"benchmark": {"max_train_per_class": 20}},
     "scheduler.min_fraction", "two levels train the same"),
    ({"fidelity": "tasks", "grace_period": 6}, None, "scheduler.grace_period", "the benchmark has 5"),
    ({"fidelity": "tasks", "grace_period": 1, "rung_metric": "forgetting"}, None, "scheduler.grace_period",
     "from the second task on"),
])
def test_settings_that_cannot_work_are_refused(tmp_path, scheduler, base, key, fragment):
    with pytest.raises(ConfigError) as error:
        sweep(tmp_path, scheduler, base)
    assert any(k == key and fragment in m for k, m in error.value.problems), error.value.problems


def test_search_follows_the_fidelity(tmp_path):
    from aepg.sweep import search

    tasks = sweep(tmp_path, {"fidelity": "tasks"})
    assert search.budget(tasks) == ("eval/tasks_done", 5)
    assert search.compared_metric(tasks) == search.searched_metric(tasks) == "eval/avg_incremental_accuracy"
    chosen = sweep(tmp_path, {"fidelity": "tasks", "rung_metric": "last_accuracy"})
    assert search.compared_metric(chosen) == "eval/accuracy" and search.scheduler(chosen).compares["mode"] == "max"
    # A rung metric other than the sweep's is compared in its own direction: less forgetting is better.
    forgetting = sweep(tmp_path, {"fidelity": "tasks", "rung_metric": "forgetting"})
    compares = search.scheduler(forgetting).compares
    assert (compares["metric"], compares["mode"]) == ("eval/forgetting", "min")
    data = sweep(tmp_path, {"fidelity": "data", "reduction_factor": 3, "min_fraction": 0.111})
    assert search.budget(data) == ("fidelity/level", 3)
    assert search.compared_metric(data) == search.searched_metric(data) == "fidelity/avg_incremental_accuracy"
    scheduler = search.scheduler(data)
    assert scheduler.compares == {"time_attr": "fidelity/level", "max_t": 3, "metric": "fidelity/avg_incremental_accuracy",
                                  "mode": "max"}
    # Without early stopping a fidelity setting changes nothing: trials train the sequence once.
    unstopped = sweep(tmp_path, {"kind": "none", "fidelity": "data"})
    assert search.budget(unstopped) == search.budget(tasks)
    assert search.searched_metric(unstopped) == search.searched_metric(tasks)
