"""A sweep's results from MLflow: the leaderboard, the best config, and plots.

Used at the end of ``aepg sweep`` and by ``aepg report``; everything is read back from the
sweep's parent and child runs, so a report can be made from any machine that sees the store.
Trials rank on ``final/<metric>``, which only trials that trained every task have; trials
stopped early show the running value they had, with the tasks it covers, below every finished
trial.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import re
import statistics
import warnings
from dataclasses import dataclass, field

import yaml

from aepg import plots, tracking
from aepg.config import to_yaml, validate
from aepg.metrics import BUDGET_KEY, final_name, partial_name, running_best
from aepg.sweep.fidelity import COMPUTE_KEY, COUNTER_TAGS, LEVEL_KEY, level_metric
from aepg.sweep.noise import Noise, assess
from aepg.sweep.schema import (
    CONFIG_TAG,
    INDEX_TAG,
    NODE_NAMES_TAG,
    OPTUNA_STATE_TAG,
    SEED_VALUES_TAG,
    STAGE_TAG,
    STATUS_TAG,
    SWEEP_TAG,
    SweepParams,
)
from aepg.sweep.spec import Param
from aepg.sweep.table import PaperTable, build_table, markdown_grid
from aepg.tracking import Tracker

_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
STATUS_ORDER = {"finished": 0, "stopped early": 1, "running": 2, "interrupted": 3, "failed": 4}


@dataclass
class Entry:
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


def entries_of(runs: list[tracking.RunRecord], space: dict[str, Param], metric: str, num_tasks: int,
               levels: int | None = None, seeds: int | None = None) -> list[Entry]:
    """Leaderboard entries; ``levels`` for sweeps over an epochs or data ladder, ``seeds`` for a seed
    ladder (a trial's value is its mean over the seeds it trained)."""
    entries = []
    for run in runs:
        status = status_of(run)
        if seeds:
            entries.append(seed_ladder_entry(run, status, space, seeds, num_tasks))
            continue
        if levels:  # a ladder: the value at the last level trained, compute from the trial's own count
            level = count_of(run, COUNTER_TAGS[LEVEL_KEY], LEVEL_KEY)
            partial, progress, compute = level_metric(metric), f"level {level}/{levels}", run.metrics.get(COMPUTE_KEY, 0.0)
        else:
            done = count_of(run, tracking.TASKS_DONE_TAG, BUDGET_KEY)
            partial, progress, compute = partial_name(metric), f"{done}/{num_tasks} tasks", float(done)
        value = run.metrics.get(final_name(metric) if status == "finished" else partial)
        seed = _typed(run.params.get("seed", "0"))
        entries.append(Entry(run.name, status, sampled_params(run, space), value, progress, compute, [run.run_id],
                             int(run.tags.get(INDEX_TAG, 0)), [seed],
                             optuna_state=run.tags.get(OPTUNA_STATE_TAG, ""), end_time=run.end_time,
                             objective=run.params.get("objective.kind", ""),
                             by_seed={seed: value} if status == "finished" and value is not None else {},
                             nodes=nodes_of(run)))
    return entries


def nodes_of(run: tracking.RunRecord) -> list[str]:
    return [name for name in run.tags.get(NODE_NAMES_TAG, "").split(",") if name]


def count_of(run: tracking.RunRecord, tag: str, metric: str) -> int:
    """A run's count (tasks done, ladder level) from its tag; runs logged before the tag carried it
    as the metric."""
    return int(run.tags.get(tag) or run.metrics.get(metric, 0))


def seed_ladder_entry(run: tracking.RunRecord, status: str, space: dict[str, Param], seeds: int,
                      num_tasks: int) -> Entry:
    """A seed ladder's trial: its mean, spread and values over the seeds it trained."""
    by_seed = {int(k): v for k, v in json.loads(run.tags.get(SEED_VALUES_TAG, "{}")).items()}
    values = list(by_seed.values())
    return Entry(run.name, status, sampled_params(run, space), statistics.mean(values) if values else None,
                 f"{len(values)}/{seeds} seeds", float(len(values) * num_tasks), [run.run_id],
                 int(run.tags.get(INDEX_TAG, 0)), sorted(by_seed), statistics.stdev(values) if len(values) > 1 else None,
                 run.tags.get(OPTUNA_STATE_TAG, ""), run.end_time, run.params.get("objective.kind", ""), by_seed,
                 nodes=nodes_of(run))


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
            progress=members[0].progress if len({m.progress for m in members}) == 1 else "mixed",
            compute=sum(m.compute for m in members),
            run_ids=[r for m in members for r in m.run_ids],
            index=min(m.index for m in members),
            seeds=sorted(s for m in members for s in m.seeds),
            spread=statistics.stdev(values) if len(values) > 1 else None,
            objective=members[0].objective,
            by_seed={seed: value for m in finished for seed, value in m.by_seed.items()},
            nodes=list(dict.fromkeys(n for m in members for n in m.nodes)),
        ))
    return merged


def rank(entries: list[Entry], mode: str) -> list[Entry]:
    """Finished entries by value (best first), then stopped, running, interrupted and failed ones."""
    sign = -1 if mode == "max" else 1

    def key(entry: Entry):
        return STATUS_ORDER.get(entry.status, 5), (sign * entry.value if entry.value is not None else float("inf"))

    return sorted(entries, key=key)


def table(entries: list[Entry], metric: str, space_keys: list[str]) -> list[dict[str, object]]:
    rows, confirmed = [], any(entry.stage == "confirm" for entry in entries)
    several_nodes = len({node for entry in entries for node in entry.nodes}) > 1
    for i, entry in enumerate(entries, 1):
        finished = entry.status == "finished"
        row = {"rank": i, "trial": entry.name, "status": entry.status,
               final_name(metric): round(entry.value, 4) if finished and entry.value is not None else None,
               "progress": entry.progress,
               f"{metric} when stopped": round(entry.value, 4) if not finished and entry.value is not None else None}
        if entry.spread is not None or len(entry.seeds) > 1:
            row["std"] = None if entry.spread is None else round(entry.spread, 4)
            row["seeds"] = " ".join(map(str, entry.seeds))
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
    if not rows:
        return "(no trials)"
    columns = _columns(rows)
    text = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in text)
    return "\n".join(lines)


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


def best_config(tracker: Tracker, best: Entry, run_name: str, storage_path: str) -> str:
    """The best trial's resolved config, renamed and storing like a normal run: runnable as is."""
    data = yaml.safe_load(tracker.read_text(best.run_ids[0], "config.yaml"))
    data.update(run_name=run_name, storage_path=storage_path)
    return to_yaml(validate(data))


def convergence(entries: list[Entry], mode: str) -> list[tuple[float, float | None]]:
    """(tasks trained so far, best finished value so far), in the order trials ended."""
    ended = sorted((e for e in entries if e.end_time), key=lambda e: e.end_time)
    spent = itertools.accumulate(e.compute for e in ended)
    return list(zip(spent, running_best([e.value if e.status == "finished" else None for e in ended], mode)))


FEW_FOR_IMPORTANCE = 10
"""Below this many finished trials, the importance plot says that it is a rough guide."""


def importance_study(finished: list[Entry], space: dict[str, Param], mode: str):
    """The finished trials as an Optuna study, each key held as the search asks it (an ordered
    choice as its index, so that importance treats it as ordered)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its "[W ...]" lines are about this study, not the user's
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for entry in finished:
        params = {k: space[k].to_optuna(v) for k, v in entry.params.items() if k in space and space[k].contains(v)}
        distributions = {k: space[k].distribution() for k in params}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=entry.value))
    return study


def figures(name: str, entries: list[Entry], space: dict[str, Param], mode: str, metric: str,
            budget: float | None) -> dict[str, object]:
    """The metric over trials (every status), compute against the best value so far, parallel
    coordinates and Optuna's parameter importances over the finished trials."""
    from optuna.visualization import matplotlib as ovm

    drawn = {"objective_over_trials.png": plots.trials_plot(
        [{"index": e.index, "status": e.status, "value": e.value, "progress": e.progress} for e in entries], metric, mode,
        f"sweep {name}: {metric} of each trial")}
    points = convergence(entries, mode)
    if points:
        drawn["convergence.png"] = plots.convergence_plot(points, budget, f"final/{metric}",
                                                          f"sweep {name}: best finished value against compute")
    finished = [e for e in entries if e.status == "finished" and e.value is not None]
    varying = [k for k in space if len({json.dumps(e.params.get(k)) for e in finished}) > 1]
    if len(finished) >= 2 and varying:
        rows = [{**e.params, metric: e.value} for e in finished]
        drawn["parallel_coordinates.png"] = plots.parallel_coordinates(
            rows, varying, metric, mode, f"sweep {name}: finished trials by final/{metric}")
    study = importance_study(finished, space, mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            axes = ovm.plot_param_importances(study, target_name=f"final/{metric}")
            figure = axes.figure
            figure.set_size_inches(8, 4)
            axes.set_title("", loc="left")  # Optuna's own title, which would sit under ours
            caveat = (f"\nonly {len(finished)} finished trials: a rough guide, and a key near 0 may still matter"
                      if len(finished) < FEW_FOR_IMPORTANCE else "")
            axes.set_title(f"sweep {name}: importance of each searched key for final/{metric}, over "
                           f"{len(finished)} finished trials{caveat}", fontsize=10)
            figure.tight_layout()
            drawn["param_importances.png"] = figure
        except Exception:  # too few finished trials, or no key that varies
            pass
    return drawn


@dataclass
class SweepReport:
    name: str
    metric: str
    rows: list[dict[str, object]]
    best: Entry | None
    best_yaml: str | None
    figures: dict[str, object]
    entries: list[Entry]
    experiment_id: str = ""
    noise: Noise | None = None

    @property
    def text(self) -> str:
        return format_table(self.rows)

    def run_link(self, run_id: str) -> str:
        return f"#/experiments/{self.experiment_id}/runs/{run_id}?workflowType=machine_learning"

    def note(self) -> str:
        """The parent run's description: the best trial's link first (visible while the description
        is folded), the noise verdict, then a compact leaderboard whose trial names are links."""
        if self.best:
            lines = [f"**Best: [{self.best.name}]({self.run_link(self.best.run_ids[0])})**, "
                     f"final/{self.metric} = {self.best.value:.4f}"]
        else:
            lines = ["**No trial finished.**"]
        if self.noise:
            lines.append(f"{self.noise.verdict}.")
        lines += ["", f"Sweep {self.name}, ranked on `final/{self.metric}`: trials that trained every task first; "
                  "a stopped trial's value (in parentheses) is partial, from fewer tasks or seeds.", "",
                  markdown_table(self.note_rows())]
        return "\n".join(lines)

    def note_rows(self) -> list[dict[str, object]]:
        """The leaderboard in few columns: rank, linked trial, status, value (± std over seeds), the
        noise mark and the searched keys."""
        rows = []
        for i, entry in enumerate(self.entries, 1):
            if entry.value is None:
                value = ""
            elif entry.status == "finished":
                value = f"{entry.value:.4f}" + (f" ± {entry.spread:.4f}" if entry.spread is not None else "")
            else:
                value = f"({entry.value:.4f} at {entry.progress})"
            row = {"rank": i, "trial": f"[{entry.name}]({self.run_link(entry.run_ids[0])})", "status": entry.status,
                   f"final/{self.metric}": value}
            if entry.within_noise:
                row["noise"] = entry.within_noise
            if entry.stage == "confirm":
                row["stage"] = "confirm"
            rows.append({**row, **entry.params})
        return rows


def mark_within_noise(judged: list[Entry], found: Noise) -> None:
    """Mark the best of ``judged`` (finished entries, best first) and those tied with it, when the
    noise is known."""
    if found.seed_std is None:
        return
    for i, (entry, tied) in enumerate(zip(judged, found.tied)):
        entry.within_noise = ("best" if i == 0 else "tied") if tied else ""


def build_report(tracker: Tracker, parent_run_id: str) -> SweepReport:
    """Everything about a sweep, read from its MLflow parent run and the child runs under it."""
    parent, experiment = tracker.get_run(parent_run_id)
    space = {k: Param.model_validate(v) for k, v in json.loads(tracker.read_text(parent_run_id, "space.json")).items()}
    sweep = SweepParams.of(parent)
    children = tracker.find_runs(experiment, {tracking.PARENT_TAG: parent_run_id})
    searched = [c for c in children if c.tags.get(STAGE_TAG) != "confirm"]
    ladder_seeds = len(sweep.seeds) if sweep.seeds_per_trial else None
    entries = entries_of(searched, space, sweep.metric, sweep.num_tasks, sweep.levels, ladder_seeds)
    budget = sweep.num_trials * sweep.num_tasks * (ladder_seeds or 1) if sweep.num_tasks else None
    figs = figures(parent.name, entries, space, sweep.mode, sweep.metric, budget)
    if len(sweep.seeds) > 1 and not ladder_seeds:
        entries = average_over_seeds(entries)
    ranked = rank(entries, sweep.mode)
    confirmed = rank([dataclasses.replace(seed_ladder_entry(run, status_of(run), space, len(sweep.confirm_seeds),
                                                            sweep.num_tasks), stage="confirm")
                      for run in children if run.tags.get(STAGE_TAG) == "confirm"], sweep.mode)
    searched_finished = [e for e in ranked if e.status == "finished" and e.value is not None]
    finished = [e for e in confirmed if e.status == "finished" and e.value is not None]
    ranked = confirmed + ranked  # the confirmation decides: its configurations first, on their fresh seeds
    # The noise is judged on the confirmation when it has two configurations to compare, else on the search.
    judged = finished if len(finished) > 1 else searched_finished
    found = assess([e.by_seed for e in judged])
    mark_within_noise(judged, found)
    best = (finished or searched_finished or [None])[0]
    best_yaml = best_config(tracker, best, f"{parent.name}-best", sweep.storage_path) if best else None
    return SweepReport(parent.name, sweep.metric, table(ranked, sweep.metric, list(space)), best, best_yaml, figs,
                       ranked, parent.experiment_id, found)


def sweep_label(parent: tracking.RunRecord) -> str:
    """A sweep's benchmark, as the paper's table groups columns: ``imagenet-r, 10 tasks``."""
    return f"{parent.params.get('base.dataset', '?')}, {parent.params.get('base.num_tasks', '?')} tasks"


def paper_table(tracker: Tracker, parent_ids: list[str], rows_key: str = "method",
                columns_key: str = "objective.kind") -> PaperTable:
    """The seed-statistics table over the finished trials of one or more sweeps."""
    groups, parent = [], None
    for parent_id in parent_ids:
        parent, experiment = tracker.get_run(parent_id)
        children = tracker.find_runs(experiment, {tracking.PARENT_TAG: parent_id})
        finished = [c for c in children if status_of(c) == "finished"]
        params = SweepParams.of(parent)
        if params.seeds_per_trial or params.confirm_seeds:  # each finished configuration's other seeds
            seed_runs = [run for run in tracker.find_runs(experiment, {STATUS_TAG: "seed run", SWEEP_TAG: parent.name})
                         if run.status == "FINISHED"]
            finished = table_runs(finished, seed_runs)
        label = sweep_label(parent)
        groups.append((label if label not in [g for g, _ in groups] else f"{label} ({parent.name})", finished))
    sweep = SweepParams.of(parent)
    return build_table(groups, rows_key, columns_key, rank_metric=sweep.metric, mode=sweep.mode)


def table_runs(trials: list[tracking.RunRecord], seed_runs: list[tracking.RunRecord]) -> list[tracking.RunRecord]:
    """The runs a seed sweep's table is built from: each finished trial with its seed runs, except
    that a configuration the confirmation trained again counts on the confirmation's seeds alone
    (the search's seeds chose it, so their mean is biased up)."""
    confirmed = {t.tags.get(CONFIG_TAG) for t in trials if t.tags.get(STAGE_TAG) == "confirm"}
    kept = [t for t in trials if t.tags.get(STAGE_TAG) == "confirm" or t.tags.get(CONFIG_TAG) not in confirmed]
    ids = {t.run_id for t in kept}
    return kept + [run for run in seed_runs if run.tags.get(tracking.PARENT_TAG) in ids]


def report_texts(report: SweepReport, table: PaperTable) -> dict[str, str]:
    """The files a sweep's report writes (into its folder, the parent run, or ``--out``)."""
    texts = {"leaderboard.csv": to_csv(report.rows), "leaderboard.txt": report.text + "\n",
             "leaderboard.md": markdown_table(report.rows) + "\n", "paper_table.md": table.markdown() + "\n",
             "paper_table.csv": table.csv(), "paper_table.tex": table.latex() + "\n"}
    if report.best_yaml:
        texts["best.yaml"] = report.best_yaml
    return texts


RANK_KEY = "sweep/rank"
"""A child's place on its sweep's leaderboard (1 is best): sorting by it is the leaderboard's order."""
FAMILIES = ("Blues", "Oranges", "Greens", "Purples", "Reds", "Greys")
PARENT_COLOUR = "#000000"  # black: no trial's shade


def publish(tracker: Tracker, parent_id: str, report: SweepReport, table: PaperTable) -> None:
    """Log the report to the sweep's parent run: files, plots, counts, the best run and a description."""
    counts = {f"sweep.trials_{status.replace(' ', '_')}": str(sum(status in e.status.split("/") for e in report.entries))
              for status in ("finished", "stopped early", "failed")}  # tags: counts are no chart
    metrics = {f"sweep/best_{report.metric}": report.best.value} if report.best else {}
    metrics.update(report.noise.params() if report.noise else {})
    tags = {tracking.NOTE_TAG: report.note() + "\n\n" + table.markdown(), tracking.COLOR_TAG: PARENT_COLOUR, **counts}
    if report.best:
        tags["best_run_id"] = report.best.run_ids[0]
    if report.noise:
        tags["sweep.noise_verdict"] = report.noise.verdict
    tracker.log_outputs(parent_id, report_texts(report, table), report.figures, metrics, tags)
    colours = run_colours(report.entries)
    for i, entry in enumerate(report.entries, 1):
        for run_id in entry.run_ids:
            tracker.set_tags(run_id, {tracking.NOTE_TAG: child_note(entry, i, len(report.entries), report.metric),
                                      tracking.COLOR_TAG: colours[run_id]})
            tracker.log_metrics(run_id, {RANK_KEY: i})


def child_note(entry: Entry, rank: int, of: int, metric: str) -> str:
    """A trial's one-line description: how it ended, how far it got, its value and its rank."""
    if entry.value is None:
        value = ""
    elif entry.status == "finished":
        value = f", {final_name(metric)} = {entry.value:.4f}"
    else:
        value = f", {metric} {entry.value:.4f} when it stopped (partial: not comparable with finished trials)"
    return f"{entry.status}, {entry.progress}{value}; rank {rank} of {of}"


def run_colours(entries: list[Entry]) -> dict[str, str]:
    """A hue family per objective, so the compared objectives never share a colour in MLflow's
    charts and runs table: finished trials in its strong shades, darker for better ranks; trials
    that did not finish (stopped early, failed) in its pale ones, which no finished trial takes
    (``entries`` in leaderboard order)."""
    from matplotlib import colormaps, colors

    kinds = sorted({entry.objective for entry in entries})
    colours = {}
    for i, kind in enumerate(kinds):
        cmap = colormaps[FAMILIES[i % len(FAMILIES)]]
        for finished, (darkest, lightest) in ((True, (0.95, 0.5)), (False, (0.4, 0.2))):
            group = [entry for entry in entries if entry.objective == kind and (entry.status == "finished") == finished]
            for j, entry in enumerate(group):
                shade = colors.to_hex(cmap(darkest - (darkest - lightest) * j / max(1, len(group) - 1)))
                colours.update(dict.fromkeys(entry.run_ids, shade))
    return colours
