"""Search algorithms are catalogue entries, built with every setting explicit and logged; the
example plugin's quasi-Monte Carlo searcher (docs/extending.md) runs in tests/test_plugins.py."""


import pytest
from conftest import REPO

from aepg.config import ConfigError
from aepg.sweep.checks import load_sweep

SEARCH = REPO / "sweeps" / "search.yaml"


def proposals(sampler, trials: int = 10) -> list[dict]:
    """What ``sampler`` proposes on a small study of two keys told a fixed objective: two samplers
    built alike propose alike, so this compares their settings by what they do."""
    import optuna

    def objective(trial) -> float:
        x, y = trial.suggest_float("x", 0.0, 1.0), trial.suggest_float("y", 0.0, 1.0)
        return (x - 0.3) ** 2 + (y - 0.7) ** 2 + x * y

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=trials)
    return [trial.params for trial in study.trials]


def test_the_parent_run_records_every_sampler_and_scheduler_setting():
    """Optuna 5 changed TPE's defaults: a sweep builds its sampler with explicit arguments and logs them."""
    from importlib.metadata import version

    from aepg.sweep.params import parent_params
    from aepg.sweep.search import searcher

    sweep = load_sweep(SEARCH, ["search.multivariate=false", "scheduler.kind=asha", "scheduler.grace_period=2"],
                       check_runs=False)
    import optuna

    # The sampler proposes what one built with those arguments does, and not what Optuna 5's default would.
    built = proposals(searcher(sweep)[1].sampler)
    assert built == proposals(optuna.samplers.TPESampler(seed=0, n_startup_trials=4, multivariate=False,
                                                         constant_liar=True))
    assert built != proposals(optuna.samplers.TPESampler(seed=0, n_startup_trials=4, multivariate=True,
                                                         constant_liar=True))
    params = parent_params(sweep, "path", 8)
    assert params["search.sampler"] == "TPESampler(seed=0, n_startup_trials=4, multivariate=False, constant_liar=True)"
    assert params["sweep.protocol"] == "plain"
    assert params["search.scheduler"] == ("ASHA(fidelity=tasks, grace_period=2, reduction_factor=3.0, "
                                          "rung_metric=avg_incremental_accuracy, min_fraction=0.1111)")
    assert params["versions.optuna"] == version("optuna") and params["versions.ray"] == version("ray")


def test_each_searcher_checks_what_it_can_search():
    with pytest.raises(ConfigError, match="grid search takes choice parameters only"):
        load_sweep(SEARCH, ["search.algorithm=grid"], check_runs=False)
    with pytest.raises(ConfigError, match="several seeds need search.algorithm: grid"):
        load_sweep(SEARCH, ["search.algorithm=random", "seeds=[0,1]"], check_runs=False)
    with pytest.raises(ConfigError, match="unknown search algorithm 'randm'; did you mean 'random'"):
        load_sweep(SEARCH, ["search.algorithm=randm"], check_runs=False)


def test_nsga2_searches_a_trade_off_and_survives_ray_saving_it(tmp_path):
    """NSGA-II over sweeps/trade_off.yaml: a two-objective study, which Ray saves with the searcher
    (Optuna's genetic samplers hold a thread lock, which plain pickling refuses) and restores."""
    from ray import cloudpickle

    from aepg.sweep.params import parent_params
    from aepg.sweep.search import searcher

    sweep = load_sweep(REPO / "sweeps" / "trade_off.yaml", ["search.algorithm=nsga2"], check_runs=False)
    found = searcher(sweep)[1]
    assert found.suggest("t1") is not None and len(found.study.directions) == 2
    found.save(str(tmp_path / "searcher.pkl"))
    restored = cloudpickle.loads(cloudpickle.dumps(found))
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t2") is not None and [t.number for t in restored.study.trials] == [0, 1]
    assert parent_params(sweep, "path", 8)["search.sampler"] == "NSGAIISampler(seed=0, population_size=8)"
