"""Reading a sweep file and checking it before a trial starts: the file's own keys, the base config,
every searched key against the run-config schema (and whether a trial would ever use it), every
value the space can produce (each choice and both ends of each range) through the run config's own
validation, the budget and ladder rules, and what the trials need of the machine or cluster."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from aepg.config import (
    ConfigError,
    dispatched,
    RunConfig,
    entry_keys,
    is_uri,
    merge_nested,
    merge_overrides,
    pydantic_problems,
    read_run_yaml,
    read_yaml,
    renamed_layer,
    resolve_tracking_uri,
    validate,
)
from aepg.catalog import SEARCHERS
from aepg.ray_setup import local_cpu_problem, package_cache_problems
from aepg.sweep.spec import Sweep, SweepSpec, apply_dotted, expected_trials


def _check_space(sweep: Sweep) -> list[tuple[str, str]]:
    problems = []
    known = set(sweep.base_flat) | entry_keys(RunConfig)
    seen: list[str] = []
    if not sweep.space and not sweep.protocol.compares:
        problems.append(("space", "is empty; a sweep searches at least one run-config key (or compares arms: compare)"))
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


SWITCHED_SECTIONS = tuple(f"{section}." for section in dispatched(RunConfig))
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


def _check_settings(sweep: Sweep) -> list[tuple[str, str]]:
    spec = sweep.spec
    problems = spec.search.problems(sweep) + spec.scheduler.problems(sweep) + sweep.protocol.problems(sweep)
    if "benchmark.num_tasks" in sweep.space:
        problems.append(("space.benchmark.num_tasks", "sets the sweep's budget (a trial is finished when it trains every "
                         "task): trials would train different task counts and rank on different sequences; run one "
                         "sweep per task count"))
    if not is_uri(spec.storage_path) and Path(spec.storage_path).expanduser().exists() \
            and not Path(spec.storage_path).expanduser().is_dir():
        problems.append(("storage_path", f"{spec.storage_path} is a file; sweep outputs need a folder"))
    storage = spec.storage_path if is_uri(spec.storage_path) else str(Path(spec.storage_path).expanduser().resolve())
    problems.extend(package_cache_problems({"storage_path": storage,
                                            "tracking_uri": resolve_tracking_uri(sweep.base_config.tracking_uri)}))
    from aepg.preflight import storage_problems

    problems.extend(storage_problems(storage))
    scaling = sweep.base_config.scaling
    fix = "lower trial.cpus" + (" or scaling.cpus_per_worker" if scaling.num_workers else "")
    problems.extend(local_cpu_problem(spec.trial.cpus + scaling.num_workers * scaling.cpus_per_worker, "one trial",
                                      "trial.cpus", fix))
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


def variants(sweep: Sweep) -> list[tuple[str, RunConfig]]:
    """The base config, and the base with each value a searched data or model key can take; for a
    grid, each of its points (whose keys may only make sense together)."""
    found = [("base_config", sweep.base_config)]
    if SEARCHERS.get(sweep.spec.search.algorithm).has("grid"):
        points = {json.dumps({k: v for k, v in point.items() if k != "seed"}, sort_keys=True) for point in sweep.grid()}
        return found + [(f"space point {point}", validate(apply_dotted(sweep.base, json.loads(point))))
                        for point in sorted(points) if point != "{}"]
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
        raise ConfigError(pydantic_problems(error, SweepSpec, data)) from None
    base_path = (path.parent / spec.base_config).resolve()
    try:
        base_file = read_run_yaml(base_path)
        validate(base_file)
    except ConfigError as error:
        raise ConfigError([(f"base_config ({base_path.name}): {k}", m) for k, m in error.problems]) from None
    try:
        sweep = Sweep(spec, merge_nested(base_file, renamed_layer(spec.base_overrides)), path.read_text())
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
