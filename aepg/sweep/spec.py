"""Sweep files: a base run config, a search space over its dotted keys, and search settings: the
file's schema, the space (its grid and its Optuna define-by-run encoding) and a trial's config.

``aepg.sweep.checks`` reads a file and checks all of it before a trial starts; ``plan`` prints
what it costs; ``state`` holds its folder's state file and its trials' names.
"""

from __future__ import annotations

import copy
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SerializeAsAny, field_validator, model_validator
from pydantic_core import PydanticCustomError

from aepg.catalog import PROTOCOLS, SCHEDULERS, SEARCHERS
from aepg.config import RunConfig, Section, by_kind, current_key, current_value, default_storage, flatten, validate
from aepg.config.entries import Choice, entry
from aepg.metrics import SUMMARY_METRICS
from aepg.sweep.protocols import SweepProtocol, protocol_for
from aepg.sweep.schedulers import DEFAULT_SCHEDULER, SchedulerSettings
from aepg.sweep.searchers import DEFAULT_SEARCHER, SearchSettings

Scalar = str | int | float | bool | None


class Param(Section):
    """One searched key: exactly one of choice / uniform / loguniform / int, optionally ``when``."""

    choice: list[Scalar] | None = Field(None, min_length=1)
    uniform: list[float] | None = Field(None, min_length=2, max_length=2)
    loguniform: list[float] | None = Field(None, min_length=2, max_length=2)
    integer: list[int] | None = Field(None, min_length=2, max_length=2, alias="int")
    when: dict[str, Scalar | list[Scalar]] | None = None
    """Sample this key only when every listed key has the given value (or one of the listed values)."""

    model_config = {**Section.model_config, "populate_by_name": True}

    @model_validator(mode="after")
    def _one_kind(self) -> Param:
        kinds = [k for k in ("choice", "uniform", "loguniform", "integer") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of choice, uniform, loguniform, int")
        low_high = self.uniform or self.loguniform or self.integer
        if low_high is not None and not low_high[0] < low_high[1]:
            raise ValueError(f"range {low_high} must have low < high")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("choice", "uniform", "loguniform", "integer") if getattr(self, k) is not None)

    def extremes(self) -> list[Scalar]:
        """The values to validate: every choice, both ends of a range."""
        return list(self.choice) if self.choice is not None else list(self.uniform or self.loguniform or self.integer)

    def active(self, values: dict[str, Any]) -> bool:
        for key, wanted in (self.when or {}).items():
            allowed = wanted if isinstance(wanted, list) else [wanted]
            if values.get(key) not in allowed:
                return False
        return True

    @property
    def ordered(self) -> bool:
        """A choice of three or more numbers in increasing order (a grid of learning rates, say)."""
        values = self.choice or []
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        return len(values) >= 3 and numbers and all(a < b for a, b in zip(values, values[1:]))

    def suggest(self, trial, name: str):
        """The value for one trial. An ordered choice is asked as its index, so that a sampler that
        models neighbours (TPE) knows 3e-3 lies between 1e-3 and 1e-2; a category has no neighbours."""
        if self.ordered:
            return self.choice[trial.suggest_int(name, 0, len(self.choice) - 1)]
        if self.choice is not None:
            return trial.suggest_categorical(name, self.choice)
        if self.uniform is not None:
            return trial.suggest_float(name, *self.uniform)
        if self.loguniform is not None:
            return trial.suggest_float(name, *self.loguniform, log=True)
        return trial.suggest_int(name, *self.integer)

    def from_optuna(self, value):
        """The key's value from what Optuna holds for it (an ordered choice holds its index)."""
        return self.choice[value] if self.ordered else value

    def to_optuna(self, value):
        """What Optuna holds for the key's value (``from_optuna`` undone)."""
        return self.choice.index(value) if self.ordered else value

    def contains(self, value) -> bool:
        if self.choice is not None:
            return value in self.choice
        low, high = self.uniform or self.loguniform or self.integer
        return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high

    def distribution(self):
        """The Optuna distribution of what Optuna holds for the key (``to_optuna``), as ``suggest`` asks it."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.ordered:
            return IntDistribution(0, len(self.choice) - 1)
        if self.choice is not None:
            return CategoricalDistribution(self.choice)
        if self.uniform is not None:
            return FloatDistribution(*self.uniform)
        if self.loguniform is not None:
            return FloatDistribution(*self.loguniform, log=True)
        return IntDistribution(*self.integer)


class TrialSettings(Section):
    """What one run of a trial asks Ray for: a plain trial trains its run in its own process; a seed
    ladder's or paired trial holds nothing itself and sends its runs out as Ray tasks, each asking
    for this."""

    cpus: float = Field(1.0, gt=0)
    """CPUs of a run's process. In-process runs train there; with scaling.num_workers > 0 the
    process only drives a TorchTrainer, and a fraction (0.1) is enough."""
    gpus: float = Field(0.0, ge=0)
    """GPUs of an in-process run; fractions let small runs share a GPU."""
    resources: dict[str, float] = {}
    """Custom Ray resources, e.g. to keep trial drivers on non-spot nodes."""
    max_failures: int = Field(1, ge=0)
    """Retries of a failed trial, each resuming from the trial's latest checkpoint."""


class ConfirmSettings(Section):
    """After the search: the best configurations trained again on fresh seeds at full budget, so
    that the winner is the best on seeds no choice was made on."""

    top_k: int = Field(ge=1)
    """How many of the search's best finished configurations are trained again."""
    seeds: list[int] = Field(min_length=1)
    """The fresh seeds each of them trains on (none of the search's)."""


def _current_values(key: str, values):
    """A searched or compared value (or list of them) of an old key, as it means under the new one."""
    return [current_value(key, v) for v in values] if isinstance(values, list) else current_value(key, values)


class SweepSpec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    protocol: Annotated[SerializeAsAny[SweepProtocol] | None,
                        BeforeValidator(lambda value: None if value is None else by_kind(PROTOCOLS, value, "plain")),
                        Choice(PROTOCOLS, None)] = None
    """How a trial trains a configuration and what its result means: an entry of
    ``aepg.catalog.PROTOCOLS`` (``aepg.sweep.protocols``); default the one the file's other keys ask
    for (``compare``: paired, ``scheduler.fidelity: seeds``: seeds, an epochs or data fidelity:
    ladder, ``trade_off``: trade_off, else plain)."""
    base_config: str
    """Run config YAML, relative to the sweep file."""
    base_overrides: dict[str, Any] = {}
    """Nested run-config keys applied to the base config."""
    experiment: str | None = None
    """MLflow experiment of the sweep and its trials; default the base config's."""
    space: dict[str, Param]
    search: entry(SearchSettings, SEARCHERS, DEFAULT_SEARCHER)
    """``algorithm`` picks an entry of ``aepg.catalog.SEARCHERS`` (``aepg.sweep.searchers``: tpe,
    random, grid), whose config holds the other keys."""
    scheduler: entry(SchedulerSettings, SCHEDULERS, DEFAULT_SCHEDULER)
    """Early stopping: ``kind`` picks an entry of ``aepg.catalog.SCHEDULERS`` (``aepg.sweep.schedulers``:
    asha, none), whose config holds the other keys."""
    metric: Literal[SUMMARY_METRICS] = "avg_incremental_accuracy"
    """Trials are ranked on ``final/<metric>``, which only trials that trained every task have;
    early stopping compares them after each task on its running value ``eval/...``."""
    mode: Literal["max", "min"] = "max"
    trade_off: dict[Literal[SUMMARY_METRICS], Literal["max", "min"]] | None = None
    """Other metrics searched with ``metric`` as a trade-off, each with its mode, e.g. ``{forgetting:
    min}``: Optuna's multi-objective samplers search the Pareto front of ``final/`` values, and the
    leaderboard marks the configurations on it (and those off it only within seed noise)."""
    pick: dict[Literal[SUMMARY_METRICS], float] | None = None
    """Which point of the front ``best.yaml`` is: the best ``metric`` among the front's points whose
    value of each listed trade-off metric is within the given tolerance of the front's best value
    of it, e.g. ``{forgetting: 0.02}``; default the front's best ``metric``."""
    seeds: list[int] | None = Field(None, min_length=1)
    """Run every grid point once per seed (the leaderboard averages over seeds); with
    ``scheduler.fidelity: seeds``, the seeds each configuration trains on, in order."""
    compare: dict[str, list[Any]] | None = None
    """Paired arms, e.g. ``{objective.kind: [ce, aepg]}``: every configuration the searcher proposes
    is trained under each arm on the same seeds (with ``scheduler.fidelity: seeds``), one MLflow
    run per arm and seed nested under the configuration's run; the leaderboard shows each arm and
    the paired difference of the last arm minus the first, with its 95% interval over the seeds."""
    compare_by: str = "mean"
    """What the searcher and the ranking are told for a configuration on a seed: ``mean`` over the
    arms (the default: settings good for every arm, so that the comparison is not tuned for one),
    or one arm's value (e.g. ``aepg``: the settings that suit that arm)."""
    confirm: ConfirmSettings | None = None
    """Re-train the top configurations on fresh seeds; the leaderboard and best.yaml then rank on
    their mean over those seeds."""
    trial: TrialSettings = TrialSettings()
    storage_path: str = Field(default_factory=lambda: default_storage("sweeps", "aepg_sweeps"))
    """Where Ray Tune's state, trial checkpoints and the best config go: a folder or URI. Default:
    ``$AEPG_STORAGE/sweeps`` where AEPG_STORAGE is set, else ./aepg_sweeps."""

    @field_validator("space", mode="before")
    @classmethod
    def _current_keys(cls, value):
        """Searched keys and their ``when`` keys under their current names, their values as they mean
        now (``model.peft.*`` of older sweep files is ``model.method.*``)."""
        if not isinstance(value, dict):
            return value
        current = {}
        for key, param in value.items():
            if isinstance(param, dict) and isinstance(param.get("when"), dict):
                param = {**param, "when": {current_key(str(k)): _current_values(str(k), v) for k, v in param["when"].items()}}
            if isinstance(param, dict) and isinstance(param.get("choice"), list):
                param = {**param, "choice": _current_values(str(key), param["choice"])}
            current[current_key(str(key))] = param
        return current

    @field_validator("compare", mode="before")
    @classmethod
    def _current_compare_keys(cls, value):
        if not isinstance(value, dict):
            return value
        return {current_key(str(key)): _current_values(str(key), arms) for key, arms in value.items()}

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds):
        repeated = sorted({seed for seed in seeds or () if seeds.count(seed) > 1})
        if repeated:
            raise PydanticCustomError("repeated_seed", "seed {seeds} listed twice: a repeat would train the same trial "
                                      "again", {"seeds": ", ".join(map(str, repeated))})
        return seeds


    @property
    def objectives(self) -> dict[str, str]:
        """Every metric searched, with its mode: ``metric`` first, then the trade-off's."""
        return {self.metric: self.mode, **(self.trade_off or {})}


class Sweep:
    """A validated sweep: spec, the base config as data and as ``RunConfig``, and the space."""

    def __init__(self, spec: SweepSpec, base: dict[str, Any], source_text: str,
                 points: list[dict[str, Any]] | None = None):
        """``points``: the configurations to train instead of the space's (the confirmation stage)."""
        self.spec, self.base, self.source_text, self.points = spec, base, source_text, points
        self.base_config = validate(base)
        self.base_flat = flatten(self.base_config.model_dump(mode="json"))
        self.key_uses: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]] | None] = {}
        """``_key_use`` of each searched key, once per sweep (the checks and the warnings read it)."""

    def confirmation(self, points: list[dict[str, Any]]) -> Sweep:
        """The confirmation stage as a sweep: ``points`` (the search's best configurations) on the
        confirmation's seeds, every one to the full budget."""
        confirm = self.spec.confirm
        spec = self.spec.model_copy(update={
            "seeds": confirm.seeds, "confirm": None, "protocol": None, "search": SEARCHERS.get("grid").config(
                max_concurrent=self.spec.search.max_concurrent),
            "scheduler": SCHEDULERS.get("none").config(fidelity="seeds")})
        return Sweep(spec, self.base, self.source_text, points)

    @property
    def space(self) -> dict[str, Param]:
        return self.spec.space

    @cached_property
    def protocol(self) -> SweepProtocol:
        """How its trials train and what their results mean (``aepg.sweep.protocols``)."""
        return protocol_for(self.spec)

    @property
    def experiment(self) -> str:
        return self.spec.experiment or self.base_config.experiment

    @property
    def num_tasks(self) -> int:
        return self.base_config.benchmark.num_tasks

    @property
    def seeds(self) -> list[int]:
        return self.spec.seeds or [self.base_config.seed]

    def run_config(self, params: dict[str, Any], storage_path: str, run_name: str) -> RunConfig:
        """The run config of one trial: base + sampled params, storing under the sweep."""
        overrides = {"experiment": self.experiment, "run_name": run_name, "storage_path": storage_path, **params}
        return validate(apply_dotted(self.base, overrides))

    def define_by_run(self) -> DefineByRun:
        return DefineByRun(self.space, self.base_flat)

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of choices, inactive keys dropped and duplicates removed, per seed."""
        if self.points is not None:
            return self.points
        points: list[dict[str, Any]] = [{}]
        for key, param in self.space.items():
            grown = []
            for point in points:
                if param.active({**self.base_flat, **point}):
                    grown.extend({**point, key: value} for value in param.choice)
                else:
                    grown.append(point)
            points = grown
        unique = list({tuple(sorted(p.items(), key=lambda kv: kv[0])): p for p in points}.values())
        return self.protocol.points(unique, self)


class DefineByRun:
    """Optuna define-by-run space: conditional keys are asked only when their ``when`` holds.

    A class rather than a closure, because Ray Tune pickles the searcher with its space.
    """

    def __init__(self, space: dict[str, Param], base_flat: dict[str, Any]):
        self.space, self.base_flat = space, base_flat

    def __call__(self, trial) -> None:
        values = dict(self.base_flat)
        for key, param in self.space.items():
            if param.active(values):
                values[key] = param.suggest(trial, key)

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's config values from the params Optuna holds (an ordered choice holds its index)."""
        return {key: self.space[key].from_optuna(value) if key in self.space else value
                for key, value in params.items()}


def apply_dotted(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of nested ``data`` with dotted keys set (values kept as they are, not parsed)."""
    result = copy.deepcopy(data)
    for dotted, value in values.items():
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            if isinstance(node.get(part), str):  # a catalogue entry by its name alone
                node[part] = {"kind": node[part]}
            node = node.setdefault(part, {})
        node[leaf] = value
    return result


def expected_trials(sweep: Sweep) -> int:
    return sweep.spec.search.trials(sweep)
