"""A sweep's MLflow schema, in one place: the tags on its parent and child runs, and the parent
run's params, written when the sweep starts (``parent_params``) and read back by the report
(``SweepParams``). Changing a name here changes it for the driver, the report and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass

from aepg.tracking import RunRecord, Tracker

KIND_TAG = "aepg.kind"
"""``sweep`` on a parent run."""
SWEEP_TAG = "aepg.sweep"
"""The sweep's folder name, on the parent and every run under it."""
TRIAL_TAG = "aepg.trial_id"
STATUS_TAG = "aepg.status"
"""finished, stopped early, failed, running, or low fidelity (a ladder level's nested run)."""
INDEX_TAG = "aepg.trial_index"
"""The trial's start order, from 1."""
LEVEL_TAG = "aepg.fidelity_level"
OPTUNA_STATE_TAG = "aepg.optuna_state"
NODE_TAG = "aepg.ray_node_id"
"""The Ray node id the trial's latest attempt runs on."""
NODE_NAMES_TAG = "aepg.nodes"
"""The names of the nodes each attempt of the trial ran on, in order (a retry adds one): ``worker-1,head``."""
SEED_VALUES_TAG = "aepg.seed_values"
"""Seed ladder: a trial's final value of each seed trained so far, as JSON {seed: value}."""
SEED_TAG = "aepg.seed"
"""Seed ladder: the seed a run nested under its configuration's run trained."""
ARM_TAG = "aepg.arm"
"""Paired arms: the arm (``compare``'s value) a run nested under its configuration's run trained."""
ARM_VALUES_TAG = "aepg.arm_values"
"""Paired arms: a configuration's final value of each arm on each seed so far, as JSON {seed: {arm: value}}."""
PAIRED_PREFIX = "paired/"
"""Paired arms: the configuration run's metrics, each arm's seed-mean and the difference of the
last arm minus the first with its 95% interval (``paired/<arm>_<metric>``, ``paired/diff_<metric>``,
``paired/diff_low_<metric>``, ``paired/diff_high_<metric>``)."""
STAGE_TAG = "aepg.stage"
"""``confirm`` on the runs of the confirmation stage (the search's runs have none)."""
CONFIG_TAG = "aepg.config_id"
"""The trial's configuration, seed aside: the runs of one configuration share it (group by it in MLflow)."""


def config_id(params: dict[str, object]) -> str:
    """A short stable id of a trial's searched values without its seed."""
    import hashlib

    text = json.dumps({k: v for k, v in params.items() if k != "seed"}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def search_settings(spec) -> dict[str, object]:
    """What the search ran with, so that it can be read and rerun alike: the sampler with every
    argument it was built with, the scheduler's settings, and the Optuna and Ray versions."""
    from importlib.metadata import version

    found: dict[str, object] = {"versions.optuna": version("optuna"), "versions.ray": version("ray")}
    if hasattr(spec.search, "sampler_settings"):
        settings = ", ".join(f"{key}={value}" for key, value in spec.search.sampler_settings().items())
        name = spec.search.sampler_class or type(spec.search.sampler()).__name__
        found["search.sampler"] = f"{name}({settings})"
    found["search.scheduler"] = spec.scheduler.described(spec.metric)
    return found


def parent_params(sweep, path: str, num_trials: int, levels: int) -> dict[str, object]:
    """The parent run's params: the sweep's settings and what the report needs to read it back."""
    spec, base = sweep.spec, sweep.base_config
    search = {f"search.{key}": value for key, value in spec.search.model_dump(mode="json").items()}
    scheduler = {f"scheduler.{key}": value for key, value in spec.scheduler.model_dump(mode="json").items()}
    return {"sweep.name": spec.name, "sweep.path": path, **search, "search.num_trials": num_trials,
            **search_settings(spec), **scheduler, **({"scheduler.levels": levels} if spec.scheduler.climbs else {}),
            **({"confirm.top_k": spec.confirm.top_k, "confirm.seeds": spec.confirm.seeds} if spec.confirm else {}),
            "metric": f"final/{spec.metric}", "mode": spec.mode,
            **({"trade_off": json.dumps(spec.trade_off)} if spec.trade_off else {}),
            **({"pick": json.dumps(spec.pick)} if spec.pick else {}),
            "seeds": sweep.seeds, "base.dataset": base.benchmark.dataset,
            "base.num_tasks": sweep.num_tasks, "base.storage_path": base.storage_path}


@dataclass(frozen=True)
class SweepParams:
    """The parent run's params, typed."""

    metric: str
    mode: str
    num_tasks: int
    num_trials: int
    levels: int | None
    """Levels of an epochs or data ladder; None for sweeps over tasks."""
    seeds: list[int]
    seeds_per_trial: bool
    """A trial trains a configuration on several of ``seeds`` (the seed ladder)."""
    confirm_seeds: list[int]
    """The confirmation stage's seeds (none without one)."""
    storage_path: str
    dataset: str
    trade_off: dict[str, str]
    """The metrics searched with ``metric`` as a trade-off, with their modes (none: one metric)."""
    pick: dict[str, float]
    """The tolerances that choose ``best.yaml`` on the front (``SweepSpec.pick``)."""

    @property
    def objectives(self) -> dict[str, str]:
        return {self.metric: self.mode, **self.trade_off}

    @classmethod
    def of(cls, parent: RunRecord) -> "SweepParams":
        p = parent.params
        ladder = p.get("scheduler.fidelity", "tasks") in ("epochs", "data") and "scheduler.levels" in p
        return cls(p["metric"].removeprefix("final/"), p["mode"], int(p.get("base.num_tasks", 0)), int(p["search.num_trials"]),
                   int(p["scheduler.levels"]) if ladder else None, json.loads(p["seeds"]),
                   p.get("scheduler.fidelity") == "seeds", json.loads(p.get("confirm.seeds", "[]")),
                   p["base.storage_path"], p.get("base.dataset", "?"), json.loads(p.get("trade_off", "{}")),
                   json.loads(p.get("pick", "{}")))


def find_sweep(tracker: Tracker, name: str) -> str | None:
    """The parent run of the newest sweep whose folder name or sweep name is ``name``."""
    for query in (f"tags.`{SWEEP_TAG}` = '{name}'", f"params.`sweep.name` = '{name}'"):
        found = tracker.search(f"tags.`{KIND_TAG}` = 'sweep' and {query}")
        if found:
            return found[0].run_id
    return None
