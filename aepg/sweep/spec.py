"""Sweep files: a base run config, a search space over its dotted keys, and search settings.

Everything is validated before a trial starts: the file's own keys, the base config, every
searched key against the run-config schema, and every value the space can produce (each
choice and both ends of each range) through the run config's own validation.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from aepg.catalog import SCHEDULERS, SEARCHERS
from aepg.config import (
    ConfigError,
    RunConfig,
    Section,
    by_kind,
    default_storage,
    entry_keys,
    flatten,
    is_uri,
    merge_nested,
    merge_overrides,
    pydantic_problems,
    read_run_yaml,
    read_yaml,
    validate,
)
from aepg.metrics import SUMMARY_METRICS
from aepg.ray_setup import local_cpu_problem, package_cache_problems
from aepg.sweep.fidelity import seeds_per_trial
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
    cpus: float = Field(1.0, gt=0)
    """CPUs of the trial process. In-process trials train there; with scaling.num_workers > 0
    the trial only drives a TorchTrainer, and a fraction (0.1) is enough."""
    gpus: float = Field(0.0, ge=0)
    """GPUs of an in-process trial; fractions let small trials share a GPU."""
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


class SweepSpec(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base_config: str
    """Run config YAML, relative to the sweep file."""
    base_overrides: dict[str, Any] = {}
    """Nested run-config keys applied to the base config."""
    experiment: str | None = None
    """MLflow experiment of the sweep and its trials; default the base config's."""
    space: dict[str, Param]
    search: SerializeAsAny[SearchSettings] = Field(default_factory=lambda: SEARCHERS.get(DEFAULT_SEARCHER).config())
    """``algorithm`` picks an entry of ``aepg.catalog.SEARCHERS`` (``aepg.sweep.searchers``: tpe,
    random, grid), whose config holds the other keys."""
    scheduler: SerializeAsAny[SchedulerSettings] = Field(
        default_factory=lambda: SCHEDULERS.get(DEFAULT_SCHEDULER).config())
    """Early stopping: ``kind`` picks an entry of ``aepg.catalog.SCHEDULERS`` (``aepg.sweep.schedulers``:
    asha, none), whose config holds the other keys."""
    metric: Literal[SUMMARY_METRICS] = "avg_incremental_accuracy"
    """Trials are ranked on ``final/<metric>``, which only trials that trained every task have;
    early stopping compares them after each task on its running value ``eval/...``."""
    mode: Literal["max", "min"] = "max"
    seeds: list[int] | None = Field(None, min_length=1)
    """Run every grid point once per seed (the leaderboard averages over seeds); with
    ``scheduler.fidelity: seeds``, the seeds each configuration trains on, in order."""
    confirm: ConfirmSettings | None = None
    """Re-train the top configurations on fresh seeds; the leaderboard and best.yaml then rank on
    their mean over those seeds."""
    trial: TrialSettings = TrialSettings()
    storage_path: str = Field(default_factory=lambda: default_storage("sweeps", "aepg_sweeps"))
    """Where Ray Tune's state, trial checkpoints and the best config go: a folder or URI. Default:
    ``$AEPG_STORAGE/sweeps`` where AEPG_STORAGE is set, else ./aepg_sweeps."""

    @field_validator("search", mode="before")
    @classmethod
    def _searcher(cls, value):
        return by_kind(SEARCHERS, value, DEFAULT_SEARCHER)

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler(cls, value):
        return by_kind(SCHEDULERS, value, DEFAULT_SCHEDULER)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds):
        repeated = sorted({seed for seed in seeds or () if seeds.count(seed) > 1})
        if repeated:
            raise PydanticCustomError("repeated_seed", "seed {seeds} listed twice: a repeat would train the same trial "
                                      "again", {"seeds": ", ".join(map(str, repeated))})
        return seeds


DISPATCHED = {"search": (SEARCHERS, DEFAULT_SEARCHER), "scheduler": (SCHEDULERS, DEFAULT_SCHEDULER)}


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
            "seeds": confirm.seeds, "confirm": None, "search": SEARCHERS.get("grid").config(
                max_concurrent=self.spec.search.max_concurrent),
            "scheduler": SCHEDULERS.get("none").config(fidelity="seeds")})
        return Sweep(spec, self.base, self.source_text, points)

    @property
    def space(self) -> dict[str, Param]:
        return self.spec.space

    @property
    def experiment(self) -> str:
        return self.spec.experiment or self.base_config.experiment

    @property
    def num_tasks(self) -> int:
        return self.base_config.benchmark.num_tasks

    @property
    def seeds(self) -> list[int]:
        return self.spec.seeds or [self.base_config.seed]

    def trial_config(self, params: dict[str, Any], storage_path: str, run_name: str) -> RunConfig:
        """The run config of one trial: base + sampled params, storing under the sweep."""
        overrides = {"experiment": self.experiment, "run_name": run_name, "storage_path": storage_path, **params}
        return validate(_apply_dotted(self.base, overrides))

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
        if self.spec.seeds and not seeds_per_trial(self.spec):
            return [{**p, "seed": s} for p, s in itertools.product(unique, self.spec.seeds)]
        return unique


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


def _apply_dotted(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of nested ``data`` with dotted keys set (values kept as they are, not parsed)."""
    result = copy.deepcopy(data)
    for dotted, value in values.items():
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return result


def _check_space(sweep: Sweep) -> list[tuple[str, str]]:
    problems = []
    known = set(sweep.base_flat) | entry_keys()
    seen: list[str] = []
    if not sweep.space:
        problems.append(("space", "is empty; a sweep searches at least one run-config key"))
    for key, param in sweep.space.items():
        where = f"space.{key}"
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            problems.append((where, "not a run-config key" + (f"; did you mean '{close[0]}'?" if close else "")))
            continue
        for dependency, wanted in (param.when or {}).items():
            allowed = wanted if isinstance(wanted, list) else [wanted]
            if dependency not in known or (dependency in sweep.space and dependency not in seen):
                problems.append((f"{where}.when", f"{dependency!r} must be a run-config key searched before {key!r} or fixed in the base config"))
            elif dependency not in sweep.space and sweep.base_flat.get(dependency) not in allowed:
                problems.append((f"{where}.when", f"never holds: {dependency} is fixed to {sweep.base_flat.get(dependency)!r} "
                                 f"in the base config, not {wanted!r}, so {key} would never be searched"))
            elif dependency in sweep.space and sweep.space[dependency].choice is not None and \
                    not set(map(repr, allowed)) & set(map(repr, sweep.space[dependency].choice)):
                problems.append((f"{where}.when", f"never holds: {dependency} is searched over "
                                 f"{sweep.space[dependency].choice}, never {wanted!r}"))
        for value in param.extremes():
            try:
                validate(_apply_dotted(sweep.base, {key: value}))
            except ConfigError as error:
                problems.extend((where, f"value {value!r}: {k}: {m}") for k, m in error.problems)
        seen.append(key)
    return problems


# Sections whose keys a configuration can leave unused: the schedule of an objective that is not
# annealed, the keys of another PEFT method or objective (``tracking.run_params`` knows which).
SWITCHED_SECTIONS = ("schedule.", "model.peft.", "objective.")
MAX_CONTEXTS = 64


def _contexts(sweep: Sweep, key: str) -> list[dict[str, Any]] | None:
    """Every combination of the other searched choices (with ``key``'s ``when`` values), or None when
    there are too many to try."""
    when = sweep.space[key].when or {}
    contexts: list[dict[str, Any]] = [{dep: (v if not isinstance(v, list) else v[0]) for dep, v in when.items()}]
    for other, param in sweep.space.items():
        if other == key or other in when or param.choice is None:
            continue
        contexts = [{**c, other: value} for c in contexts for value in param.choice]
        if len(contexts) > MAX_CONTEXTS:
            return None
    return contexts


def _key_use(sweep: Sweep, key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """(the combinations of the other searched choices in which some trial uses ``key``, those that
    make valid configs in which none does), or None when there are too many to try."""
    if key not in sweep.key_uses:
        sweep.key_uses[key] = _find_key_use(sweep, key)
    return sweep.key_uses[key]


def _find_key_use(sweep: Sweep, key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    from aepg.tracking import run_params

    contexts = _contexts(sweep, key) if key.startswith(SWITCHED_SECTIONS) else None
    if contexts is None:
        return None
    used, unused = [], []
    for context in contexts:
        trials = [_valid(sweep.base, {**context, key: value}) for value in sweep.space[key].extremes()]
        valid = [cfg for cfg in trials if cfg is not None]
        if any(key in run_params(cfg) for cfg in valid):
            used.append(context)
        elif valid:
            unused.append(context)
    return used, unused


def _check_unused_keys(sweep: Sweep) -> list[tuple[str, str]]:
    """A searched key that no trial's configuration uses would plan trials that differ in name only."""
    problems = []
    for key in sweep.space:
        use = _key_use(sweep, key)
        if use is not None and not use[0]:
            kinds = ", ".join(f"{k}={sweep.base_flat[k]}" for k in ("objective.kind", "model.peft.kind"))
            problems.append((f"space.{key}", f"no trial would use it: the base config ({kinds}) leaves it inactive; "
                             "search the kind that uses it too, or drop the key"))
    return problems


def sweep_warnings(sweep: Sweep) -> list[str]:
    """Searched keys that some trials use and others do not: where a trial does not, its sampled
    value is ignored, so trials that differ only by it repeat one configuration."""
    notes = []
    for key in sweep.space:
        use = _key_use(sweep, key)
        if use is None or not use[0] or not use[1]:
            continue
        used, unused = use
        where = ", ".join(f"{k}={v}" for k, v in unused[0].items() if k != key)
        # The choices whose values tell the two apart, as a when that keeps the key where it is used.
        when = {k: sorted({str(c[k]) for c in used}) for k in used[0]
                if {str(c[k]) for c in used} != {str(c[k]) for c in used + unused}}
        hint = ", ".join(f"{k}: {v[0] if len(v) == 1 else '[' + ', '.join(v) + ']'}" for k, v in when.items())
        notes.append(f"space.{key} is inactive in {len(unused)} of {len(used) + len(unused)} combinations of the "
                     f"other searched choices (e.g. {where}), where its value is ignored; limit it with "
                     f"when: {{{hint}}}")
    return notes


def _valid(base: dict[str, Any], values: dict[str, Any]) -> RunConfig | None:
    """The base config with ``values`` set, or None where that combination is not a valid config."""
    try:
        return validate(_apply_dotted(base, values))
    except ConfigError:
        return None


BUDGET_KEYS = {"train.epochs": "epochs", "benchmark.max_train_per_class": "data"}


def _check_budget_keys(sweep: Sweep) -> list[tuple[str, str]]:
    """Keys that set what a trial's budget is cannot be searched where budgets are compared."""
    problems = []
    if "benchmark.num_tasks" in sweep.space:
        problems.append(("space.benchmark.num_tasks", "sets the sweep's budget (a trial is finished when it trains every "
                         "task): trials would train different task counts and rank on different sequences; run one "
                         "sweep per task count"))
    fidelity = sweep.spec.scheduler.fidelity if sweep.spec.scheduler.climbs else None
    for key, kind in BUDGET_KEYS.items():
        if key in sweep.space and fidelity == kind:
            problems.append((f"space.{key}", f"the {kind} fidelity sets it at each level of its ladder; search it "
                             "with scheduler.fidelity: tasks, or without early stopping"))
    return problems


def _check_settings(sweep: Sweep) -> list[tuple[str, str]]:
    from aepg.tracking import resolve_tracking_uri

    spec = sweep.spec
    problems = spec.search.problems(sweep) + spec.scheduler.problems(sweep) + _check_budget_keys(sweep)
    if not is_uri(spec.storage_path) and Path(spec.storage_path).expanduser().exists() \
            and not Path(spec.storage_path).expanduser().is_dir():
        problems.append(("storage_path", f"{spec.storage_path} is a file; sweep outputs need a folder"))
    storage = spec.storage_path if is_uri(spec.storage_path) else str(Path(spec.storage_path).expanduser().resolve())
    problems.extend(package_cache_problems({"storage_path": storage,
                                            "tracking_uri": resolve_tracking_uri(sweep.base_config.tracking_uri)}))
    scaling = sweep.base_config.scaling
    fix = "lower trial.cpus" + (" or scaling.cpus_per_worker" if scaling.num_workers else "")
    problems.extend(local_cpu_problem(spec.trial.cpus + scaling.num_workers * scaling.cpus_per_worker, "one trial",
                                      "trial.cpus", fix))
    if spec.scheduler.climbs:
        problems.extend(_check_ladder(sweep))
    if seeds_per_trial(spec):
        problems.extend(_check_seed_ladder(sweep))
    if spec.confirm:
        problems.extend(_check_confirm(sweep))
    return problems


def _check_confirm(sweep: Sweep) -> list[tuple[str, str]]:
    confirm, trials = sweep.spec.confirm, expected_trials(sweep)
    problems = []
    if confirm.top_k > trials:
        problems.append(("confirm.top_k", f"{confirm.top_k} configurations, but the search runs {trials} trials"))
    reused = sorted(set(confirm.seeds) & set(sweep.seeds))
    if reused:
        problems.append(("confirm.seeds", f"seed {', '.join(map(str, reused))} is the search's: confirmation "
                         "needs seeds no choice was made on"))
    repeated = sorted({s for s in confirm.seeds if confirm.seeds.count(s) > 1})
    if repeated:
        problems.append(("confirm.seeds", f"seed {', '.join(map(str, repeated))} listed twice"))
    return problems


def _check_seed_ladder(sweep: Sweep) -> list[tuple[str, str]]:
    """A seed ladder needs seeds to climb (the scheduler checks its first rung against them)."""
    seeds = sweep.spec.seeds or []
    if len(seeds) < 2:
        return [("seeds", f"scheduler.fidelity: seeds needs two or more seeds to train each configuration on "
                 f"(got {seeds or 'none'}), e.g. seeds: [0, 1, 2, 3, 4]")]
    return []


def _check_ladder(sweep: Sweep) -> list[tuple[str, str]]:
    """The levels of an epochs or data ladder must each train something different (the scheduler
    checks that it plans two or more)."""
    from aepg.sweep.fidelity import full_per_class, level_config

    levels = sweep.spec.scheduler.levels()
    fidelity, cfg = sweep.spec.scheduler.fidelity, sweep.base_config
    try:
        per_class = full_per_class(cfg) if fidelity == "data" else 0
    except FileNotFoundError:  # the data set is missing: its check says so
        return []
    budgets = [level_config(cfg, fidelity, level, per_class) for level in levels]
    sizes = [b.train.epochs if fidelity == "epochs" else b.benchmark.max_train_per_class for b in budgets]
    if len(set(sizes)) < len(sizes):
        what = "epochs per task" if fidelity == "epochs" else "training images per class"
        return [("scheduler.min_fraction", f"levels {[f'{lv.fraction:.3g}' for lv in levels]} train {sizes} {what}: "
                 "two levels train the same; raise min_fraction" + (" or train.epochs" if fidelity == "epochs" else ""))]
    return []


def variants(sweep: Sweep) -> list[tuple[str, RunConfig]]:
    """The base config, and the base with each value a searched data or model key can take."""
    found = [("base_config", sweep.base_config)]
    for key, param in sweep.space.items():
        if key.startswith(("benchmark.", "model.")):
            for value in param.extremes():
                found.append((f"space.{key}={value}", validate(_apply_dotted(sweep.base, {key: value}))))
    return found


def _check_runs(sweep: Sweep) -> list[tuple[str, str]]:
    """What every trial's run would check before compute (data, backbone, PEFT, weights)."""
    from aepg import preflight

    problems, seen = [], set()
    for where, cfg in variants(sweep):
        for key, message in preflight.problems(cfg):
            if (key, message) not in seen:  # said once, where it first shows
                seen.add((key, message))
                problems.append((f"{where}: {key}", message))
    return problems


RUN_CONFIG_KEYS = ("benchmark", "model", "objective", "schedule", "train")


def load_sweep(path: str | Path, overrides: list[str] = (), check_runs: bool = True) -> Sweep:
    """Read, override and validate a sweep file (and its base config); ConfigError on any problem.

    ``check_runs`` also runs every check a trial's run would make before compute (data,
    backbone, PEFT, weights), on the base config and each searched data or model value."""
    path = Path(path)
    raw = read_yaml(path)
    if "space" not in raw and "base_config" not in raw and any(k in raw for k in RUN_CONFIG_KEYS):
        raise ConfigError([(str(path), "is a run config, not a sweep file: run it with `aepg train`, or write a "
                            "sweep file naming it as base_config with a space to search (see sweeps/quickstart.yaml)")])
    data = merge_overrides(raw, list(overrides))
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as error:
        raise ConfigError(pydantic_problems(error, SweepSpec, data, DISPATCHED)) from None
    base_path = (path.parent / spec.base_config).resolve()
    try:
        base_file = read_run_yaml(base_path)
        validate(base_file)
    except ConfigError as error:
        raise ConfigError([(f"base_config ({base_path.name}): {k}", m) for k, m in error.problems]) from None
    try:
        sweep = Sweep(spec, merge_nested(base_file, spec.base_overrides), path.read_text())
    except ConfigError as error:
        raise ConfigError([(f"base_overrides.{k}", m) for k, m in error.problems]) from None
    problems = _check_space(sweep) + _check_settings(sweep)
    problems = problems or _check_unused_keys(sweep)
    if problems:
        raise ConfigError(problems)
    problems = _check_runs(sweep) if check_runs else []
    if problems:
        raise ConfigError(problems)
    return sweep


def expected_trials(sweep: Sweep) -> int:
    return sweep.spec.search.trials(sweep)


def sweep_plan(sweep: Sweep) -> list[str]:
    """What ``aepg sweep --dry-run`` prints: trials, the space, and the training samples they cost."""
    from aepg import preflight

    spec = sweep.spec
    trials = expected_trials(sweep)
    ladder = spec.scheduler.climbs
    stopping = spec.scheduler.summary()
    lines = [f"sweep {spec.name}: {trials} trials of {spec.search.algorithm} search over {', '.join(sweep.space)}; "
             f"ranked on final/{spec.metric} ({spec.mode}); {stopping}"]
    if SEARCHERS.get(spec.search.algorithm).has("grid"):
        configs = [sweep.trial_config(point, "plan", "plan") for point in sweep.grid()]
        samples = [preflight.plan(cfg).train_samples for cfg in configs]
        total, per_trial = sum(samples), f"{min(samples):,} to {max(samples):,}"
    else:
        samples = [preflight.plan(cfg).train_samples for _, cfg in variants(sweep)]
        samples += [preflight.plan(validate(_apply_dotted(sweep.base, {k: v}))).train_samples
                    for k, p in sweep.space.items() if k.startswith("train.") for v in p.extremes()]
        total, per_trial = trials * max(samples), f"up to {max(samples):,}"
    base = preflight.plan(sweep.base_config)
    if ladder:  # a promoted trial also trains every lower level
        from aepg.sweep.fidelity import full_per_class, level_config

        per_class = full_per_class(sweep.base_config) if spec.scheduler.fidelity == "data" else 0
        lows = [preflight.plan(level_config(sweep.base_config, spec.scheduler.fidelity, level, per_class)).train_samples
                for level in spec.scheduler.levels()]
        total = round(total * sum(lows) / lows[-1])
        per_trial += f" training samples at the full budget, and {sum(lows[:-1]):,} on the levels below it"
    else:
        per_trial += " training samples"
    if seeds_per_trial(spec):
        rungs = spec.scheduler.seed_rungs(len(sweep.seeds))
        per_trial += f" per seed, on up to {len(sweep.seeds)} seeds (rungs at {', '.join(map(str, rungs))} seeds)"
        total *= len(sweep.seeds)
    lines.append(f"each trial: {len(base.tasks)} tasks; {per_trial}")
    if spec.confirm:
        lines.append(f"then the best {spec.confirm.top_k} configurations again on seeds "
                     f"{', '.join(map(str, spec.confirm.seeds))}")
        total += spec.confirm.top_k * len(spec.confirm.seeds) * max(samples)
    lines.append(f"the whole sweep: at most {total:,} training samples"
                 + (" (early stopping trains fewer)" if spec.scheduler.stops_early else ""))
    return lines


STATE_FILE = "aepg_sweep.json"


def sweep_folder(path: str) -> str:
    """A sweep's output folder as given to ``--resume``: local paths made absolute and checked."""
    if is_uri(path):
        return path.rstrip("/")
    folder = Path(path).expanduser().resolve()
    if folder.is_file():
        raise ConfigError([("--resume", f"{folder} is a file; give the sweep's output folder (e.g. aepg_sweeps/NAME-DATE)")])
    if not folder.is_dir():
        raise ConfigError([("--resume", f"no such folder: {folder}")])
    return str(folder)


def read_state(path: str) -> dict:
    """The state ``aepg sweep`` saved in its folder; ConfigError naming the file when absent or damaged."""
    import pyarrow.fs as pafs

    fs, folder = pafs.FileSystem.from_uri(path if is_uri(path) else Path(path).as_uri())
    where = f"{path}/{STATE_FILE}"
    try:
        with fs.open_input_stream(f"{folder}/{STATE_FILE}") as stream:
            state = json.loads(stream.read())
    except (FileNotFoundError, OSError):
        raise ConfigError([("--resume", f"{path} is not an aepg sweep folder (no {STATE_FILE})")]) from None
    except ValueError as error:
        raise ConfigError([(where, f"is not valid JSON ({error}); the sweep's state is damaged")]) from None
    missing = [k for k in ("spec", "base", "source", "tracking_uri", "parent_run_id") if k not in state] \
        if isinstance(state, dict) else ["everything"]
    if missing:
        raise ConfigError([(where, f"is not an aepg sweep state (missing {missing})")])
    return state


SHORT_NAMES = {"train.lr": "lr", "model.peft.rank": "r", "schedule.tau": "tau", "seed": "s", "train.epochs": "ep",
               "train.batch_size": "b", "train.weight_decay": "wd", "model.peft.length": "len", "model.peft.lae": "lae"}


def _number(value: float) -> str:
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.3g}"


def _short(key: str, value) -> str:
    """A searched value as a run name shows it: words as they are, numbers after a short key name."""
    name = SHORT_NAMES.get(key, key.rsplit(".", 1)[-1])
    if isinstance(value, bool):
        return name if value else f"no{name}"
    if isinstance(value, str):
        return value
    return name + (_number(value) if isinstance(value, float) else str(value))


def trial_run_name(index: int, params: dict[str, Any]) -> str:
    """A readable run name that says what differs: ``t03-aepg-cosine-r6-lr3e-4``."""
    parts = [f"t{index:02d}"] + [_short(key, value) for key, value in params.items()]
    return re.sub(r"[^A-Za-z0-9.+_-]+", "", "-".join(parts))[:120]
