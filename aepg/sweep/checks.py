"""Reading a sweep file and checking it before a trial starts: the file's own keys, the base config,
every searched key against the run-config schema (and whether a trial would ever use it), every
value the space can produce (each choice and both ends of each range) through the run config's own
validation, the budget and ladder rules, and what the trials need of the machine or cluster."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aepg.config import DISPATCHED as RUN_SECTIONS
from aepg.config import (
    ConfigError,
    current_layout,
    RunConfig,
    entry_keys,
    is_uri,
    merge_nested,
    merge_overrides,
    pydantic_problems,
    read_run_yaml,
    read_yaml,
    validate,
)
from aepg.ray_setup import local_cpu_problem, package_cache_problems
from aepg.sweep.fidelity import seeds_per_trial
from aepg.sweep.spec import DISPATCHED, Sweep, SweepSpec, apply_dotted, expected_trials


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
                validate(apply_dotted(sweep.base, {key: value}))
            except ConfigError as error:
                problems.extend((where, f"value {value!r}: {k}: {m}") for k, m in error.problems)
        seen.append(key)
    return problems


SWITCHED_SECTIONS = tuple(f"{section}." for section in RUN_SECTIONS)
"""Sections whose keys a configuration can leave unused: the keys of another entry than the one
chosen (and the schedule of an objective that is not annealed); ``RunConfig.active_params`` knows
which."""
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
    from aepg.preflight import backbone_facts

    contexts = _contexts(sweep, key) if key.startswith(SWITCHED_SECTIONS) else None
    if contexts is None:
        return None
    used, unused = [], []
    for context in contexts:
        trials = [_valid(sweep.base, {**context, key: value}) for value in sweep.space[key].extremes()]
        valid = [cfg for cfg in trials if cfg is not None]
        if any(key in cfg.active_params(backbone_facts(cfg)) for cfg in valid):
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
            kinds = ", ".join(f"{k}={sweep.base_flat[k]}" for k in ("objective.kind", "model.method.kind"))
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
        return validate(apply_dotted(base, values))
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
    if spec.compare is not None:
        problems.extend(_check_compare(sweep))
    if spec.trade_off or spec.pick:
        problems.extend(_check_trade_off(sweep))
    return problems


def _check_trade_off(sweep: Sweep) -> list[tuple[str, str]]:
    """A trade-off is searched by Optuna over full-budget values: nothing that ranks on one metric
    (early stopping, the seed ladder, arms, a confirmation) comes with it."""
    spec = sweep.spec
    trade_off = spec.trade_off or {}
    problems = []
    if not trade_off:
        problems.append(("pick", "picks a point of a trade-off's front: add trade_off, e.g. {forgetting: min}"))
    if spec.metric in trade_off:
        problems.append((f"trade_off.{spec.metric}", "is the sweep's metric already: list the other metrics"))
    for key in (spec.pick or {}):
        if key not in trade_off:
            problems.append((f"pick.{key}", f"is not a trade-off metric ({', '.join(trade_off) or 'none'})"))
        elif spec.pick[key] < 0:
            problems.append((f"pick.{key}", "a tolerance is 0 or more"))
    if trade_off and spec.scheduler.stops_early:
        problems.append(("scheduler.kind", f"{spec.scheduler.kind} compares trials on one metric; with trade_off, "
                         "use scheduler.kind: none"))
    elif trade_off and seeds_per_trial(spec):
        problems.append(("scheduler.fidelity", "the seed ladder follows one metric; with trade_off, train seeds "
                         "as a grid's (search.algorithm: grid, seeds: [...]) with scheduler.fidelity: tasks"))
    if trade_off and spec.compare is not None:
        problems.append(("compare", "arms are compared on one metric; drop compare or trade_off"))
    if trade_off and spec.confirm is not None:
        problems.append(("confirm", "a confirmation ranks on one metric; drop confirm or trade_off"))
    return problems


def _check_compare(sweep: Sweep) -> list[tuple[str, str]]:
    """Paired arms: one key, two or more distinct values, each a valid run config; the arms train on
    each seed of a configuration, so the seed ladder carries them."""
    spec = sweep.spec
    if len(spec.compare) != 1:
        return [("compare", f"compares one key's values, e.g. {{objective.kind: [ce, aepg]}} (got {len(spec.compare)} keys)")]
    ((key, values),) = spec.compare.items()
    problems = []
    labels = spec.arm_labels()
    if len(set(labels)) < 2:
        problems.append((f"compare.{key}", f"needs two or more different values to compare (got {values})"))
    if key in spec.space:
        problems.append((f"compare.{key}", "is also searched in space: a key is either compared or searched"))
    for value in values:
        try:
            validate(apply_dotted(sweep.base, {key: value}))
        except ConfigError as error:
            problems += [(f"compare.{key}={value}: {k}", m) for k, m in error.problems]
    if not seeds_per_trial(spec):
        problems.append(("scheduler.fidelity", "compare trains every arm on each seed of a configuration: set "
                         "scheduler.fidelity: seeds, with the seeds to pair over (seeds: [0, 1, 2])"))
    if spec.compare_by != "mean" and spec.compare_by not in labels:
        close = difflib.get_close_matches(spec.compare_by, ["mean", *labels], n=1)
        problems.append(("compare_by", f"{spec.compare_by!r} is neither mean nor an arm of compare ({', '.join(labels)})"
                         + (f"; did you mean {close[0]!r}?" if close else "")))
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
                found.append((f"space.{key}={value}", validate(apply_dotted(sweep.base, {key: value}))))
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


RUN_CONFIG_KEYS = ("benchmark", "model", "objective", "annealing", "schedule", "train")


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
        sweep = Sweep(spec, current_layout(merge_nested(base_file, spec.base_overrides)), path.read_text())
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
