"""A sweep's leaderboard from its MLflow runs: each trial (or configuration, averaged over its seeds)
as one result with its status, progress, value and sampled settings, ranked (finished trials on
``final/<metric>`` first, then those stopped early on the running value they had), and the
leaderboard as a terminal table, markdown and CSV."""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
import textwrap
from dataclasses import dataclass, field

import yaml

from aepg import schema, tracking
from aepg.config import tag_of
from aepg.schema import (
    ARM_VALUES_TAG,
    BUDGET_KEY,
    COMPUTE_KEY,
    COUNTER_TAGS,
    INDEX_TAG,
    LEVEL_KEY,
    NODE_NAMES_TAG,
    RUN_NODES_TAG,
    OPTUNA_STATE_TAG,
    SEED_VALUES_TAG,
    STATUS_TAG,
    final_name,
    level_metric,
    partial_name,
)
from aepg.sweep.front import WITHIN_NOISE
from aepg.sweep.noise import Noise, paired_summary
from aepg.sweep.spec import Param
from aepg.sweep.state import compact, short_name
from aepg.sweep.table import markdown_grid

_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
STATUS_ORDER = {"finished": 0, "stopped early": 1, "running": 2, "interrupted": 3, "failed": 4}
CONFIRMED_FIRST = ("stage confirm: trained again on fresh seeds, which decide; they rank first, above higher "
                   "search values, which the choosing biased up")
"""Why a confirmed configuration can sit above a higher number, said wherever the stage is shown."""


@dataclass
class TrialResult:
    """One configuration on the leaderboard: a trial, or the mean of a config's trials over seeds."""

    name: str
    status: str
    params: dict[str, object]
    value: float | None
    """final/<metric> of a finished trial; the value a stopped one had when it stopped."""
    progress: str
    """How far the trial got: tasks trained, or the ladder's level."""
    compute: float
    """Tasks trained, at their share of the budget (a task at 1/3 of its data counts 1/3)."""
    run_ids: list[str]
    index: int = 0
    seeds: list[int] = field(default_factory=list)
    spread: float | None = None
    optuna_state: str = ""
    end_time: int | None = None
    objective: str = ""
    """The objective the configuration trained with (its runs' hue family in MLflow's charts)."""
    by_seed: dict[int, float] = field(default_factory=dict)
    """final/<metric> of each finished seed."""
    within_noise: str = ""
    """``best``, or ``tied`` when within seed noise of it (``aepg.sweep.noise``); empty otherwise."""
    stage: str = "search"
    """``search``, or ``confirm``: a configuration trained again on fresh seeds after the search."""
    nodes: list[str] = field(default_factory=list)
    """The Ray nodes its runs' attempts ran on, in order (a retried trial's lists both)."""
    arms: dict[str, float] = field(default_factory=dict)
    """Paired arms: each arm's mean over the seeds every arm trained, in ``compare``'s order."""
    difference: tuple[float, float | None] | None = None
    """Paired arms: the last arm minus the first, mean over seeds and half its 95% interval."""
    trade_off: dict[str, dict[int, float]] = field(default_factory=dict)
    """A trade-off's other metrics: each one's final value on each finished seed."""
    front: str = ""
    """A trade-off: ``front`` on the Pareto front, ``within noise`` off it only within seed noise."""

    def mean_of(self, metric: str) -> float | None:
        """The mean over seeds of a trade-off metric (None before the trial finished)."""
        values = self.trade_off.get(metric)
        return statistics.mean(values.values()) if values else None

    def shown(self, with_progress: bool = False) -> str:
        """The value as the tables show it: to 4 decimals (± its std over seeds) when finished, in
        parentheses when stopped (partial; ``with_progress`` adds how far it got)."""
        if self.value is None:
            return ""
        if self.status == "finished":
            return f"{self.value:.4f}" + (f" ± {self.spread:.4f}" if self.spread is not None else "")
        return f"({self.value:.4f}" + (f" at {self.progress})" if with_progress else ")")


def _typed(value: str | None, param: Param | None = None):
    """A param back from MLflow's text. A choice comes back as the choice MLflow wrote as that text
    (so the string '1e3' stays a string). Otherwise YAML, except that YAML 1.1 reads an exponent
    without a dot as text, and that is how Python writes small floats (str(1e-05) == '1e-05')."""
    if value in (None, "None"):
        return None
    if param is not None and param.choice is not None:
        match = next((choice for choice in param.choice if str(choice) == value), None)
        if match is not None:
            return match
    return float(value) if _EXPONENT.fullmatch(value) else yaml.safe_load(value)


def status_of(run: tracking.RunRecord) -> str:
    """finished / stopped early / failed (the driver's tag), running, or interrupted (Ctrl-C)."""
    if run.status in ("RUNNING", "SCHEDULED"):
        return "running"
    if run.status == "KILLED":
        return "interrupted"
    tag = run.tags.get(STATUS_TAG)
    return tag if tag in ("finished", "stopped early", "failed") else run.status.lower()


def sampled_params(run: tracking.RunRecord, space: dict[str, Param]) -> dict[str, object]:
    """The searched keys that were active in this trial (its params hold only active keys)."""
    values = {k: _typed(v, space.get(k)) for k, v in run.params.items()}
    return {key: values[key] for key, param in space.items() if key in values and param.active(values)}


def task_entries(runs: list[tracking.RunRecord], space: dict[str, Param], metric: str, num_tasks: int,
                 trade_off: list[str] = ()) -> list[TrialResult]:
    """A trial per run that trains the task sequence once: its final value, or the running value it
    had when it stopped; ``trade_off``: the other metrics a trade-off searched."""
    entries = []
    for run in runs:
        done = count_of(run, schema.TASKS_DONE_TAG, BUDGET_KEY)
        entries.append(_run_entry(run, space, metric, partial_name(metric), f"{done}/{num_tasks} tasks", float(done),
                                  trade_off))
    return entries


def level_entries(runs: list[tracking.RunRecord], space: dict[str, Param], metric: str, levels: int) -> list[TrialResult]:
    """A trial per run that climbs an epochs or data ladder: its value at the last level it trained,
    its compute from its own count."""
    return [_run_entry(run, space, metric, level_metric(metric),
                       f"level {count_of(run, COUNTER_TAGS[LEVEL_KEY], LEVEL_KEY)}/{levels}",
                       run.metrics.get(COMPUTE_KEY, 0.0)) for run in runs]


def _run_entry(run: tracking.RunRecord, space: dict[str, Param], metric: str, partial: str, progress: str,
               compute: float, trade_off: list[str] = ()) -> TrialResult:
    status = status_of(run)
    value = run.metrics.get(final_name(metric) if status == "finished" else partial)
    seed = _typed(run.params.get("seed", "0"))
    finished = status == "finished" and value is not None
    others = {m: {seed: run.metrics[final_name(m)]} for m in trade_off if finished and final_name(m) in run.metrics}
    return TrialResult(run.name, status, sampled_params(run, space), value, progress, compute, [run.run_id],
                       int(run.tags.get(INDEX_TAG, 0)), [seed], optuna_state=run.tags.get(OPTUNA_STATE_TAG, ""),
                       end_time=run.end_time, objective=run.params.get("objective.kind", ""),
                       by_seed={seed: value} if finished else {}, nodes=nodes_of(run), trade_off=others)


def nodes_of(run: tracking.RunRecord) -> list[str]:
    """Where a trial trained: the nodes of the runs it trained as Ray tasks, else of its attempts."""
    return [name for name in (run.tags.get(RUN_NODES_TAG) or run.tags.get(NODE_NAMES_TAG, "")).split(",") if name]


def count_of(run: tracking.RunRecord, tag: str, metric: str) -> int:
    """A run's count (tasks done, ladder level) from its tag; runs logged before the tag carried it
    as the metric."""
    return int(tag_of(run.tags, tag) or run.metrics.get(metric, 0))


def seed_ladder_entry(run: tracking.RunRecord, space: dict[str, Param], seeds: int, num_tasks: int) -> TrialResult:
    """A seed ladder's trial: its mean, spread and values over the seeds it trained (and, with arms,
    each arm's mean and their paired difference)."""
    status = status_of(run)
    by_seed = {int(k): v for k, v in json.loads(run.tags.get(SEED_VALUES_TAG, "{}")).items()}
    values = list(by_seed.values())
    by_arm = json.loads(run.tags.get(ARM_VALUES_TAG, "{}"))
    arms = list(dict.fromkeys(arm for per_seed in by_arm.values() for arm in per_seed))
    means, difference = paired_summary(by_arm, arms) if len(arms) > 1 and by_seed else ({}, None)
    return TrialResult(run.name, status, sampled_params(run, space), statistics.mean(values) if values else None,
                 f"{len(values)}/{seeds} seeds", float(len(values) * num_tasks * max(1, len(arms))), [run.run_id],
                 int(run.tags.get(INDEX_TAG, 0)), sorted(by_seed), statistics.stdev(values) if len(values) > 1 else None,
                 run.tags.get(OPTUNA_STATE_TAG, ""), run.end_time, run.params.get("objective.kind", ""), by_seed,
                 nodes=nodes_of(run), arms=means, difference=difference)


def average_over_seeds(entries: list[TrialResult]) -> list[TrialResult]:
    """Group trials that differ only by seed; finished groups get the mean and std of the metric."""
    groups: dict[tuple, list[TrialResult]] = {}
    for entry in entries:
        groups.setdefault(tuple(sorted(entry.params.items(), key=lambda kv: kv[0])), []).append(entry)
    merged = []
    for members in groups.values():
        finished = [m for m in members if m.status == "finished" and m.value is not None]
        status = "finished" if len(finished) == len(members) else "/".join(sorted({m.status for m in members}))
        values = [m.value for m in finished]
        merged.append(TrialResult(
            name=members[0].name if len(members) == 1 else f"{len(members)} seeds",
            status=status,
            params=members[0].params,
            value=statistics.mean(values) if values else None,
            progress=members[0].progress if len({m.progress for m in members}) == 1 else "mixed",
            compute=sum(m.compute for m in members),
            run_ids=[r for m in members for r in m.run_ids],
            index=min(m.index for m in members),
            seeds=sorted(s for m in members for s in m.seeds),
            spread=statistics.stdev(values) if len(values) > 1 else None,
            objective=members[0].objective,
            by_seed={seed: value for m in finished for seed, value in m.by_seed.items()},
            nodes=list(dict.fromkeys(n for m in members for n in m.nodes)),
            trade_off={metric: {seed: value for m in finished for seed, value in m.trade_off.get(metric, {}).items()}
                       for metric in dict.fromkeys(k for m in finished for k in m.trade_off)},
        ))
    return merged


def rank(entries: list[TrialResult], mode: str) -> list[TrialResult]:
    """Finished entries by value (best first), then stopped, running, interrupted and failed ones."""
    sign = -1 if mode == "max" else 1

    def key(entry: TrialResult):
        return STATUS_ORDER.get(entry.status, 5), (sign * entry.value if entry.value is not None else float("inf"))

    return sorted(entries, key=key)


def table(entries: list[TrialResult], metric: str, space_keys: list[str]) -> list[dict[str, object]]:
    rows, confirmed = [], any(entry.stage == "confirm" for entry in entries)
    several_nodes = len({node for entry in entries for node in entry.nodes}) > 1
    for i, entry in enumerate(entries, 1):
        finished = entry.status == "finished"
        row = {"rank": i, "trial": entry.name, "status": entry.status,
               final_name(metric): round(entry.value, 4) if finished and entry.value is not None else None,
               **{final_name(m): None if entry.mean_of(m) is None else round(entry.mean_of(m), 4) for m in entry.trade_off},
               **({"front": entry.front} if entry.front else {}),
               "progress": entry.progress,
               f"{metric} when stopped": round(entry.value, 4) if not finished and entry.value is not None else None}
        if entry.spread is not None or len(entry.seeds) > 1:
            row["std"] = None if entry.spread is None else round(entry.spread, 4)
            row["seeds"] = " ".join(map(str, entry.seeds))
        if entry.arms:
            row.update({f"{arm} (mean)": round(mean, 4) for arm, mean in entry.arms.items()})
            first, last = list(entry.arms)[0], list(entry.arms)[-1]
            row[f"{last} - {first}"] = round(entry.difference[0], 4)
            if entry.difference[1] is not None:
                row[f"{last} - {first}, 95% interval"] = (f"[{entry.difference[0] - entry.difference[1]:+.4f}, "
                                                          f"{entry.difference[0] + entry.difference[1]:+.4f}]")
        if entry.within_noise:
            row["within noise"] = entry.within_noise
        if confirmed:
            row["stage"] = entry.stage
        if several_nodes:
            row["nodes"] = " > ".join(entry.nodes)
        row.update({k: entry.params.get(k, "") for k in space_keys})
        if entry.optuna_state:
            row["optuna"] = entry.optuna_state
        rows.append(row)
    return rows


def _columns(rows: list[dict[str, object]]) -> list[str]:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return [c for c in columns if any(row.get(c) not in (None, "") for row in rows)]


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def format_table(rows: list[dict[str, object]]) -> str:
    """Every column of the leaderboard as text (``leaderboard.txt``), numbers right-aligned."""
    if not rows:
        return "(no trials)"
    columns = _columns(rows)
    numeric = {i for i, c in enumerate(columns)
               if all(isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool)
                      for row in rows if row.get(c) not in (None, ""))}
    return "\n".join(aligned(columns, [[_cell(row.get(c, "")) for c in columns] for row in rows], numeric))


def trial_id(name: str) -> str:
    """A trial's short id, the first part of its run name (``t03`` of ``t03-aepg-lr3e-4``)."""
    return name.split("-", 1)[0]


def aligned(header: list[str], rows: list[list[str]], numeric: set[int]) -> list[str]:
    """Rows of text cells in columns two spaces apart, numbers right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


def narrow_table(entries: list[TrialResult], metric: str, keys: list[str], width: int) -> str:
    """The leaderboard for a terminal ``width`` columns wide: each trial by its short id, values to
    4 decimals and right-aligned (a stopped trial's partial value in parentheses), the searched
    keys by short names, explained below, as columns while they fit and the rest on a line under
    each trial; every line within the width (leaderboard.md has every column and full names)."""
    if not entries:
        return "(no trials)"
    spread = any(e.spread is not None for e in entries)
    counts = {len(e.seeds) for e in entries if len(e.seeds) > 1}
    seeds = len(counts | {len(e.seeds) for e in entries}) > 1 and bool(counts)  # a column only where counts differ
    noise = any(e.within_noise for e in entries)
    stage = any(e.stage == "confirm" for e in entries)
    nodes = len({node for e in entries for node in e.nodes}) > 1
    arms = next((list(e.arms) for e in entries if e.arms), [])
    paired = [*arms, f"{arms[-1]}-{arms[0]}"] if arms else []
    others = list(dict.fromkeys(m for e in entries for m in e.trade_off))
    front = any(e.front for e in entries)
    values = [*others, *paired]  # the numeric columns after the final value
    header = ["#", "trial", "status", "final ± std" if spread else "final", *(["seeds"] if seeds else []), *values,
              *(["front"] if front else []), *(["noise"] if noise else []), *(["stage"] if stage else [])]
    numeric = {0, 3, *([4] if seeds else []), *range(4 + seeds, 4 + seeds + len(values))}
    fixed = len(header)

    def base_rows(tight: bool) -> list[list[str]]:
        squeeze = (lambda text: text.replace(" ± ", "±")) if tight else (lambda text: text)  # noqa: E731
        return [[str(i), trial_id(e.name), e.status.replace("stopped early", "stopped"), squeeze(e.shown()),
                 *([str(len(e.seeds))] if seeds else []),
                 *("" if e.mean_of(m) is None else f"{e.mean_of(m):.4f}" for m in others), *paired_cells(e, arms),
                 *([e.front.replace(WITHIN_NOISE, "noise")] if front else []), *([e.within_noise] if noise else []),
                 *([e.stage] if stage else [])] for i, e in enumerate(entries, 1)]

    rows = base_rows(tight=False)
    if max(len(line) for line in aligned(header, rows, numeric)) > width:
        rows = base_rows(tight=True)
    where = [">".join(e.nodes) for e in entries]
    nodes_under = False  # the nodes are a column where it fits, else on the line under each trial
    if nodes:
        with_nodes = [row + [cell] for row, cell in zip(rows, where)]
        if max(len(line) for line in aligned(header + ["nodes"], with_nodes, numeric)) <= width:
            header, rows, fixed = header + ["nodes"], with_nodes, fixed + 1
        else:
            nodes_under = True
    shown = []
    for key in keys:  # as many key columns as the width takes
        cells = [compact(e.params.get(key, "")) for e in entries]
        trial = aligned(header + [short_name(k) for k in shown + [key]],
                        [row + [compact(e.params.get(k, "")) for k in shown] + [cell]
                         for row, e, cell in zip(rows, entries, cells)], numeric)
        if max(len(line) for line in trial) > width:
            break
        shown.append(key)
    lines = aligned(header + [short_name(k) for k in shown],
                    [row + [compact(e.params.get(k, "")) for k in shown] for row, e in zip(rows, entries)],
                    numeric | {fixed + j for j, k in enumerate(shown)
                               if all(isinstance(e.params.get(k), (int, float)) and not isinstance(e.params.get(k), bool)
                                      for e in entries if e.params.get(k) not in (None, ""))})
    rest = keys[len(shown):]
    if rest or nodes_under:  # the keys (and nodes) that do not fit as columns: under each trial, indented
        lines = lines[:2] + [line for e, row, node in zip(entries, lines[2:], where) for line in
                             (row, ("      " + "  ".join([*(f"{short_name(k)} {compact(e.params.get(k, ''))}"
                                                          for k in rest), *([f"nodes {node}"] if nodes_under else [])]))[:width])]
    legend = [f"final: final/{metric}" + (f" over {counts.pop()} seeds" if len(counts) == 1 and not seeds else "")
              + ("; (x): the value a stopped trial had, partial" if any(
        e.status != "finished" and e.value is not None for e in entries) else "")]
    if others:
        legend.append(f"{', '.join(others)}: final/ values of the trade-off" + (" (seed means)" if spread else ""))
    if front:
        legend.append("front: on the Pareto front; noise: off it only within seed noise")
    if arms:
        legend.append(f"{arms[-1]}-{arms[0]}: their difference paired over the seeds, ± half its 95% interval")
    if stage:
        legend.append(CONFIRMED_FIRST)
    legend += [f"{short_name(k)}: {k}" for k in keys if short_name(k) != k]
    if nodes:
        legend.append("nodes: the Ray nodes its runs trained on")
    if rest or nodes_under:
        legend.append(("the searched keys" if rest else "the nodes") + (" and nodes" if rest and nodes_under else "")
                      + " that do not fit as columns are under each trial; full trial names: leaderboard.md")
    return "\n".join([line[:width] for line in lines] + [textwrap.fill("; ".join(legend), width)])


def paired_cells(entry: TrialResult, arms: list[str]) -> list[str]:
    """Each arm's mean and the paired difference ± half its 95% interval; blank without arms."""
    if not arms:
        return []
    if not entry.arms:
        return [""] * (len(arms) + 1)
    mean, half = entry.difference
    return [*(f"{entry.arms[arm]:.4f}" for arm in arms), f"{mean:+.4f}" + (f"±{half:.4f}" if half is not None else "")]


def markdown_table(rows: list[dict[str, object]]) -> str:
    if not rows:
        return "(no trials)"
    columns = _columns(rows)
    return markdown_grid(columns, [[_cell(row.get(c, "")) for c in columns] for row in rows])


def to_csv(rows: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def mark_within_noise(judged: list[TrialResult], found: Noise) -> None:
    """Mark the best of ``judged`` (finished entries, best first) and those tied with it, when the
    noise is known."""
    if found.seed_std is None:
        return
    for i, (entry, tied) in enumerate(zip(judged, found.tied)):
        entry.within_noise = ("best" if i == 0 else "tied") if tied else ""
