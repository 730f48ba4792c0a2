"""A sweep's parent run params, written when the sweep starts (``parent_params``) and read back by
the report (``SweepParams``), and how a sweep's parent is found; the tag and metric names are
``aepg.schema``'s."""

from __future__ import annotations

import json
from dataclasses import dataclass

from aepg.schema import KIND_TAG, SWEEP_TAG
from aepg.tracking import RunRecord, Tracker


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


def parent_params(sweep, path: str, num_trials: int) -> dict[str, object]:
    """The parent run's params: the sweep's settings and what the report needs to read it back."""
    spec, base = sweep.spec, sweep.base_config
    search = {f"search.{key}": value for key, value in spec.search.model_dump(mode="json").items()}
    scheduler = {f"scheduler.{key}": value for key, value in spec.scheduler.model_dump(mode="json").items()}
    return {"sweep.name": spec.name, "sweep.path": path, "sweep.protocol": sweep.protocol.kind, **search,
            "search.num_trials": num_trials, **search_settings(spec), **scheduler, **sweep.protocol.parent_params(sweep),
            **({"confirm.top_k": spec.confirm.top_k, "confirm.seeds": spec.confirm.seeds} if spec.confirm else {}),
            "metric": f"final/{spec.metric}", "mode": spec.mode,
            "seeds": sweep.seeds, "base.dataset": base.benchmark.dataset.kind,
            "base.num_tasks": sweep.num_tasks, "base.storage_path": base.storage_path}


@dataclass(frozen=True)
class SweepParams:
    """The parent run's params, typed."""

    metric: str
    mode: str
    num_tasks: int
    num_trials: int
    protocol: str
    """The sweep's protocol (``aepg.sweep.protocols``): how its trials' runs read back."""
    levels: int | None
    """Levels of an epochs or data ladder; None for sweeps over tasks."""
    seeds: list[int]
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
        return cls(p["metric"].removeprefix("final/"), p["mode"], int(p.get("base.num_tasks", 0)), int(p["search.num_trials"]),
                   p.get("sweep.protocol") or logged_before_protocols(p),
                   int(p["scheduler.levels"]) if "scheduler.levels" in p else None, json.loads(p["seeds"]),
                   json.loads(p.get("confirm.seeds", "[]")), p["base.storage_path"], p.get("base.dataset", "?"),
                   json.loads(p.get("trade_off", "{}")), json.loads(p.get("pick", "{}")))

    @property
    def reader(self):
        """The protocol that reads the sweep's runs back (``aepg.sweep.protocols``)."""
        from aepg.catalog import PROTOCOLS

        return PROTOCOLS.get(self.protocol).config()


def logged_before_protocols(params: dict[str, str]) -> str:
    """The protocol of a sweep logged before sweeps named theirs, from its settings (a paired sweep's
    arms read back as the seed ladder's runs, their arms from their tags)."""
    if params.get("scheduler.fidelity") == "seeds":
        return "seeds"
    if "scheduler.levels" in params:
        return "ladder"
    return "trade_off" if "trade_off" in params else "plain"


def find_sweep(tracker: Tracker, name: str) -> str | None:
    """The parent run of the newest sweep whose folder name or sweep name is ``name``."""
    for query in (f"tags.`{SWEEP_TAG}` = '{name}'", f"params.`sweep.name` = '{name}'"):
        found = tracker.search(f"tags.`{KIND_TAG}` = 'sweep' and {query}")
        if found:
            return found[0].run_id
    return None
