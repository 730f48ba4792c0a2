"""How a sweep searches: the searcher, early stopping, and the fidelity at which trials compete.

The searcher is Optuna's TPE or random sampling through Ray Tune (define-by-run, seeded), or a
grid. Early stopping is the ``scheduler.kind`` entry (``aepg.sweep.schedulers``: ASHA by default,
or none) over one of these fidelities (``scheduler.fidelity``):

- ``tasks``: a trial trains the task sequence in order; ASHA compares trials after
  ``grace_period`` tasks (2 by default, the first point where forgetting shows), then every
  ``reduction_factor`` times as many, on the running value of ``rung_metric`` (default the
  sweep's metric); a stopped trial ends there.
- ``epochs`` and ``data``: a trial first trains the whole task sequence at a fraction of the
  epochs of every task (or of every task's training images), ``min_fraction`` at the lowest
  level and ``reduction_factor`` times more at each level up to the full budget; ASHA compares
  trials at each level on the sweep metric at the end of that level's sequence, and a promoted
  trial restarts at the next level (successive halving with restarts, as in Hyperband).

- ``seeds``: a trial is one configuration, trained at full budget on the sweep's seeds one after
  another; ASHA compares configurations on their mean over the seeds so far, at ``grace_period``
  seeds and then ``reduction_factor`` times as many (successive halving on the seed-mean), and
  the ones it keeps train more seeds. Optuna learns the seed-mean. With ``scheduler.kind: wilcoxon`` the seeds are instances:
  a configuration stops once a signed-rank test over its seeds so far, paired with the best
  finished configuration's, says it is worse.

Optuna is told the truth about stopped trials: PRUNED, with their intermediate values, never
COMPLETE with a value from less than the full budget. Compute is counted in tasks trained
(``compute/tasks``): a task at a fraction f of its epochs or data counts f.
"""

from __future__ import annotations

import json

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from aepg.catalog import SCHEDULERS, SEARCHERS
from aepg.schema import BUDGET_KEY, SEED_VALUES_RESULT, final_name, partial_name
from aepg.sweep.noise import signed_rank_worse
from aepg.sweep.spec import DefineByRun


def budget(sweep) -> tuple[str, int]:
    """(the result key counting a trial's progress, its value at the full budget): the protocol's."""
    return sweep.protocol.budget(sweep)


def progress_unit(sweep) -> str:
    """What ``budget`` counts, for the terminal: task, level or seed."""
    return sweep.protocol.unit


def compared_metric(sweep) -> str:
    """What trials are compared on while under way (ASHA's rungs, Optuna's intermediate values)."""
    return sweep.protocol.compared_metric(sweep)


def compared_mode(sweep) -> str:
    """The direction of the compared metric."""
    return sweep.protocol.compared_mode(sweep)


def searched_metric(sweep) -> str:
    """The value Optuna learns from: the sweep metric's running value, final at the full budget
    (over seeds: the seed-mean)."""
    return sweep.protocol.searched_metric(sweep)


class SweepOptunaSearch(OptunaSearch):
    """Ray Tune's Optuna search, told the truth about stopped trials and not wasting trials.

    Ray's OptunaSearch tells an ASHA-stopped trial COMPLETE with its partial value, which biases
    TPE toward configurations that merely look good early. Here such trials end as PRUNED,
    keeping the intermediate values Optuna already received.

    Over a space of choices a sampler often proposes a configuration again (TPE does, as it
    exploits); trained again on the same seeds it would give the same numbers for the same
    compute. Such a proposal is told FAIL (samplers learn nothing from it; its ``repeat_of`` user
    attribute names the trial it repeats) and a configuration not yet tried, drawn at random
    (seeded with the search), is trained in its place; only when ``REDRAWS`` draws find none does a trial repeat one.
    """

    REDRAWS = 200

    def __init__(self, *args, budget_key: str = BUDGET_KEY, full_budget: int, draw_seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.budget_key, self.full_budget, self.draw_seed = budget_key, full_budget, draw_seed
        self._proposed: dict[str, int] = {}
        """Each configuration proposed so far (as JSON), to the number of its Optuna trial."""
        self._draws = None
        """The study that draws untried configurations at random (made on the first repeat)."""

    def suggest(self, trial_id: str) -> dict | None:
        from optuna.trial import TrialState

        params = super().suggest(trial_id)
        repeated = self._proposed.get(_key(self._ot_trials[trial_id].params))
        untried = self._untried() if repeated is not None else None
        if untried is not None:
            repeat = self._ot_trials.pop(trial_id)
            repeat.set_user_attr("repeat_of", repeated)
            self._ot_study.tell(repeat, state=TrialState.FAIL)
            self._ot_study.enqueue_trial(untried)
            params = super().suggest(trial_id)
        trial = self._ot_trials[trial_id]
        self._proposed.setdefault(_key(trial.params), trial.number)
        return self._space.decode(params) if isinstance(self._space, DefineByRun) else params

    def _untried(self) -> dict | None:
        """A configuration of the space not proposed yet, drawn at random, or None if none is found."""
        if self._draws is None:
            self._draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=self.draw_seed))
        for _ in range(self.REDRAWS):
            trial = self._draws.ask()
            self._space(trial)
            if _key(trial.params) not in self._proposed:
                return trial.params
        return None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stopped_early = not error and result and result.get(self.budget_key, self.full_budget) < self.full_budget
        if stopped_early and trial_id not in self._completed_trials:
            from optuna.trial import TrialState

            self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    def optuna_state(self, trial_id: str) -> str | None:
        trial = self._ot_trials.get(trial_id)
        return self._ot_study.trials[trial.number].state.name if trial is not None else None

    # Ray keeps these private; read here, in one place, so that a Ray upgrade that renames them
    # breaks aepg visibly rather than every caller.
    @property
    def study(self):
        """The Optuna study this searcher tells: every trial with its state, values and params."""
        return self._ot_study

    @property
    def sampler(self):
        """The Optuna sampler that proposes configurations."""
        return self._sampler

    def optuna_trial(self, trial_id: str):
        """The Optuna trial behind a Tune trial, as proposed (its params and distributions)."""
        return self._ot_trials[trial_id]


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


class OwnMetric:
    """A scheduler mixin: the scheduler compares trials on its own metric (``compared_metric``: the
    running ``eval/...``, a level's or the seed-mean), while the Tuner (its progress line, its best
    trial) ranks on ``final/<metric>``."""

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True  # keep this scheduler's own metric and mode


class RungASHA(OwnMetric, ASHAScheduler):
    """ASHA comparing trials at its rungs on ``compared_metric``."""

    def __init__(self, *, time_attr: str, metric: str, mode: str, max_t: int, **kwargs):
        super().__init__(time_attr=time_attr, metric=metric, mode=mode, max_t=max_t, **kwargs)
        self.compares = {"time_attr": time_attr, "metric": metric, "mode": mode, "max_t": max_t}
        """What it compares trials on, and along what budget (Ray keeps these private)."""


def optuna_search(sweep) -> tuple[None, SweepOptunaSearch, int]:
    """An Optuna sampler (the entry's ``sampler()``) over the define-by-run space; with a trade-off,
    over every metric with its mode (a multi-objective study, told each trial's final values)."""
    key, full = budget(sweep)
    objectives = sweep.spec.objectives
    metric, mode = (searched_metric(sweep), sweep.spec.mode) if len(objectives) == 1 else \
        ([partial_name(name) for name in objectives], list(objectives.values()))
    found = SweepOptunaSearch(space=sweep.define_by_run(), metric=metric, mode=mode,
                              sampler=sweep.spec.search.sampler(), budget_key=key, full_budget=full,
                              draw_seed=getattr(sweep.spec.search, "seed", 0))
    return None, found, sweep.spec.search.num_trials


def grid_search(sweep) -> tuple[dict, None, int]:
    """Every grid point as one trial, through Ray Tune's grid."""
    return {"params": tune.grid_search(sweep.grid())}, None, 1


def searcher(sweep) -> tuple[dict | None, object | None, int]:
    """(param_space, searcher, num_samples) from the configured algorithm's catalogue entry."""
    return SEARCHERS.get(sweep.spec.search.algorithm).load()(sweep)


def asha_scheduler(sweep) -> RungASHA:
    """ASHA over the configured fidelity (a ladder's rungs are its levels)."""
    settings = sweep.spec.scheduler
    key, full = budget(sweep)
    grace = 1 if settings.climbs else settings.grace_period  # a ladder's rungs are its levels
    return RungASHA(time_attr=key, metric=compared_metric(sweep), mode=compared_mode(sweep), max_t=full,
                    grace_period=grace, reduction_factor=settings.reduction_factor)


class SignedRankStopping(OwnMetric, FIFOScheduler):
    """Seeds as instances: after each seed a configuration's values so far are tested against the
    best finished configuration's on the same seeds (``aepg.sweep.noise.signed_rank_worse``), and
    the configuration stops when they are worse. Knows the configurations finished in this run of
    the driver (a resumed sweep learns the best again as configurations finish)."""

    def __init__(self, mode: str, full_budget: int, p_threshold: float, startup: int):
        super().__init__()
        self.mode, self.full_budget, self.p_threshold, self.startup = mode, full_budget, p_threshold, startup
        self.finished: dict[str, dict[int, float]] = {}
        """Each configuration that trained every seed, by trial id: its value on each seed."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        values = {int(seed): value for seed, value in json.loads(result.get(SEED_VALUES_RESULT, "{}")).items()}
        if len(values) >= self.full_budget:
            self.finished[trial.trial_id] = values
            return self.CONTINUE
        return self.STOP if self.worse(values) else self.CONTINUE

    def worse(self, values: dict[int, float]) -> bool:
        """Whether a configuration's values on the seeds so far are worse than the best finished one's."""
        if not self.finished or len(values) < self.startup:
            return False
        sign = 1 if self.mode == "max" else -1
        best = max(self.finished.values(), key=lambda found: sign * sum(found.values()) / len(found))
        return signed_rank_worse(values, best, self.mode, self.p_threshold, self.startup)


def wilcoxon_scheduler(sweep) -> SignedRankStopping:
    """Seeds as instances, stopped by a signed-rank test against the best (``scheduler.kind: wilcoxon``)."""
    settings = sweep.spec.scheduler
    return SignedRankStopping(sweep.spec.mode, len(sweep.seeds), settings.p_threshold, settings.startup_seeds)


def fifo_scheduler(sweep) -> FIFOScheduler:
    """No early stopping: every trial to the full budget."""
    return FIFOScheduler()


def scheduler(sweep):
    """Ray Tune's scheduler from the configured kind's catalogue entry."""
    return SCHEDULERS.get(sweep.spec.scheduler.kind).load()(sweep)


def tuner_settings(sweep, **extra) -> tuple[dict | None, tune.TuneConfig]:
    """(param_space, TuneConfig): ranked on ``final/<metric>``, searched and stopped as configured."""
    spec = sweep.spec
    param_space, found, num_samples = searcher(sweep)
    return param_space, tune.TuneConfig(
        metric=final_name(spec.metric), mode=spec.mode, search_alg=found, scheduler=scheduler(sweep),
        num_samples=num_samples, max_concurrent_trials=spec.search.max_concurrent, reuse_actors=True, **extra)
