"""A sweep's results from MLflow: the leaderboard, the best config, and plots.

Used at the end of ``aepg sweep`` and by ``aepg report``; everything is read back from the
sweep's parent and child runs, so a report can be made from any machine that sees the store.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import warnings
from dataclasses import dataclass, field

import yaml

from aepg import plots, tracking
from aepg.config import to_yaml, validate
from aepg.sweep.spec import Param

STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "killed", "RUNNING": "running", "SCHEDULED": "running"}


@dataclass
class Entry:
    """One configuration on the leaderboard: a trial, or the mean of a config's trials over seeds."""

    name: str
    status: str
    params: dict[str, object]
    value: float | None
    metrics: dict[str, float]
    run_ids: list[str]
    seeds: list[int] = field(default_factory=list)
    spread: float | None = None
    optuna_state: str = ""


def _typed(value: str):
    return yaml.safe_load(value) if value not in (None, "None") else None


def _status(run: tracking.RunRecord) -> str:
    if run.status == "KILLED" and run.tags.get("aepg.pruned") == "true":
        return "pruned"
    return STATUS.get(run.status, run.status.lower())


def sampled_params(run: tracking.RunRecord, space: dict[str, Param]) -> dict[str, object]:
    """The searched keys that were active in this trial (its config holds every key)."""
    values = {k: _typed(v) for k, v in run.params.items()}
    return {key: values[key] for key, param in space.items() if key in values and param.active(values)}


def entries_of(runs: list[tracking.RunRecord], space: dict[str, Param], metric: str) -> list[Entry]:
    entries = []
    for run in runs:
        params = sampled_params(run, space)
        seed = _typed(run.params.get("seed", "0"))
        entries.append(Entry(run.name, _status(run), params, run.metrics.get(metric), dict(run.metrics), [run.run_id],
                             [seed], optuna_state=run.tags.get("aepg.optuna_state", "")))
    return entries


def average_over_seeds(entries: list[Entry]) -> list[Entry]:
    """Group trials that differ only by seed; finished groups get the mean and std of the metric."""
    groups: dict[tuple, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(tuple(sorted(entry.params.items(), key=lambda kv: kv[0])), []).append(entry)
    merged = []
    for members in groups.values():
        finished = [m for m in members if m.status == "finished" and m.value is not None]
        status = "finished" if len(finished) == len(members) else "/".join(sorted({m.status for m in members}))
        values = [m.value for m in finished]
        merged.append(Entry(
            name=members[0].name if len(members) == 1 else f"{len(members)} seeds",
            status=status,
            params=members[0].params,
            value=statistics.mean(values) if values else None,
            metrics={},
            run_ids=[r for m in members for r in m.run_ids],
            seeds=sorted(s for m in members for s in m.seeds),
            spread=statistics.stdev(values) if len(values) > 1 else None,
        ))
    return merged


def rank(entries: list[Entry], mode: str) -> list[Entry]:
    """Finished entries by value (best first), then pruned, running, killed and failed ones."""
    order = {"finished": 0, "pruned": 1, "running": 2, "killed": 3, "failed": 4}
    sign = -1 if mode == "max" else 1

    def key(entry: Entry):
        return order.get(entry.status, 5), (sign * entry.value if entry.value is not None else float("inf"))

    return sorted(entries, key=key)


def table(entries: list[Entry], metric: str, space_keys: list[str]) -> list[dict[str, object]]:
    rows = []
    for i, entry in enumerate(entries, 1):
        row = {"rank": i, "trial": entry.name, "status": entry.status,
               metric: None if entry.value is None else round(entry.value, 4)}
        if entry.spread is not None or len(entry.seeds) > 1:
            row["std"] = None if entry.spread is None else round(entry.spread, 4)
            row["seeds"] = " ".join(map(str, entry.seeds))
        row.update({k: entry.params.get(k, "") for k in space_keys})
        if entry.optuna_state:
            row["optuna"] = entry.optuna_state
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, object]]) -> str:
    if not rows:
        return "(no trials)"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in text)
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def to_csv(rows: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def best_config(tracking_uri: str, best: Entry, run_name: str, storage_path: str) -> str:
    """The best trial's resolved config, renamed and storing like a normal run: runnable as is."""
    data = yaml.safe_load(tracking.read_text(tracking_uri, best.run_ids[0], "config.yaml"))
    data.update(run_name=run_name, storage_path=storage_path)
    return to_yaml(validate(data))


def figures(entries: list[Entry], space: dict[str, Param], mode: str, metric: str) -> dict[str, object]:
    """The objective over trials (in start order, every status), and Optuna's parameter
    importances and parallel coordinates over the finished trials."""
    import optuna
    from optuna.visualization import matplotlib as ovm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for entry in entries:
        if entry.status != "finished" or entry.value is None:
            continue
        params = {k: v for k, v in entry.params.items() if k in space and space[k].contains(v)}
        distributions = {k: space[k].distribution() for k in params}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=entry.value))
    drawn = {"objective_over_trials.png": plots.trials_plot(
        [(e.status, e.value) for e in entries], metric, mode)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, plot in (("param_importances.png", ovm.plot_param_importances),
                           ("parallel_coordinate.png", ovm.plot_parallel_coordinate)):
            try:
                axes = plot(study, target_name=metric)
            except Exception:  # too few finished trials, or no parameter that varies
                continue
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(9, 5)
            figure.tight_layout()
            drawn[name] = figure
    return drawn


@dataclass
class SweepReport:
    name: str
    metric: str
    rows: list[dict[str, object]]
    best: Entry | None
    best_yaml: str | None
    figures: dict[str, object]

    @property
    def text(self) -> str:
        return format_table(self.rows)


def build_report(tracking_uri: str, parent_run_id: str) -> SweepReport:
    """Everything about a sweep, read from its MLflow parent run and the child runs under it."""
    parent, experiment = tracking.get_run(tracking_uri, parent_run_id)
    space = {k: Param.model_validate(v) for k, v in json.loads(tracking.read_text(tracking_uri, parent_run_id, "space.json")).items()}
    metric, mode = parent.params["metric"], parent.params["mode"]
    children = tracking.find_runs(tracking_uri, experiment, {tracking.PARENT_TAG: parent_run_id})
    entries = entries_of(children, space, metric)
    if len(json.loads(parent.params["seeds"])) > 1:
        entries = average_over_seeds(entries)
    figs = figures(entries, space, mode, metric)
    ranked = rank(entries, mode)
    best = next((e for e in ranked if e.status == "finished" and e.value is not None), None)
    best_yaml = (best_config(tracking_uri, best, f"{parent.name}-best", parent.params["base.storage_path"])
                 if best else None)
    return SweepReport(parent.name, metric, table(ranked, metric, list(space)), best, best_yaml,
                       figs)
