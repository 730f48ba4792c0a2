"""A sweep's results from MLflow: the leaderboard, the best config, and plots.

Used at the end of ``aepg sweep`` and by ``aepg report``; everything is read back from the
sweep's parent and child runs, so a report can be made from any machine that sees the store.
Trials rank on ``final/<metric>``, which only trials that trained every task have; trials
stopped early show the running value they had, with the tasks it covers, below every finished
trial.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import warnings
from dataclasses import dataclass, field

import yaml

from aepg import plots, schema, tracking
from aepg.config import to_yaml, validate
from aepg.metrics import running_best
from aepg.schema import CONFIG_TAG, STAGE_TAG, STATUS_TAG, SWEEP_TAG
from aepg.sweep.leaderboard import (
    CONFIRMED_FIRST,
    TrialResult,
    format_table,
    mark_within_noise,
    markdown_table,
    narrow_table,
    rank,
    seed_ladder_entry,
    status_of,
    table,
    to_csv,
)
from aepg.sweep.noise import Noise, assess
from aepg.sweep.params import SweepParams
from aepg.sweep.spec import Param
from aepg.sweep.table import PaperTable, build_table
from aepg.tracking import Tracker


def best_config(tracker: Tracker, best: TrialResult, run_name: str, storage_path: str) -> str:
    """The best trial's resolved config, renamed and storing like a normal run: runnable as is."""
    data = yaml.safe_load(tracker.read_text(best.run_ids[0], "config.yaml"))
    data.update(run_name=run_name, storage_path=storage_path)
    return to_yaml(validate(data))


def convergence(entries: list[TrialResult], mode: str) -> list[tuple[float, float | None]]:
    """(tasks trained so far, best finished value so far), in the order trials ended."""
    ended = sorted((e for e in entries if e.end_time), key=lambda e: e.end_time)
    spent = itertools.accumulate(e.compute for e in ended)
    return list(zip(spent, running_best([e.value if e.status == "finished" else None for e in ended], mode)))


FEW_FOR_IMPORTANCE = 10
"""Below this many finished trials, the importance plot says that it is a rough guide."""


def importance_study(finished: list[TrialResult], space: dict[str, Param], mode: str):
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


def figures(name: str, entries: list[TrialResult], space: dict[str, Param], mode: str, metric: str,
            budget: float | None, confirmed: list[TrialResult] = (), best: TrialResult | None = None) -> dict[str, object]:
    """The metric over trials (every status, the ``confirmed`` ones too, the ``best`` starred), compute
    against the best value so far, parallel coordinates and Optuna's parameter importances over the
    finished trials of the search."""
    from optuna.visualization import matplotlib as ovm

    drawn = {"objective_over_trials.png": plots.trials_plot(
        [{"index": e.index, "status": e.status, "value": e.value, "progress": e.progress, "stage": e.stage}
         for e in [*entries, *confirmed]], metric, mode, f"sweep {name}: {metric} of each trial",
        best.index if best else None)}
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
            # One short line each, so that none is cut at the figure's edge (MLflow saves it as drawn).
            axes.set_title(f"sweep {name}\nimportance of each searched key for final/{metric},\n"
                           f"over {len(finished)} finished trials{caveat}", fontsize=10)
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
    best: TrialResult | None
    best_yaml: str | None
    figures: dict[str, object]
    entries: list[TrialResult]
    experiment_id: str = ""
    noise: Noise | None = None
    space_keys: list[str] = field(default_factory=list)
    verdict: str = ""
    """The protocol's answer in one line (paired arms: is the difference separated from zero; a
    trade-off: its front and which point best.yaml is); empty where it has none."""

    @property
    def text(self) -> str:
        return format_table(self.rows)

    def narrow_text(self, width: int) -> str:
        """The leaderboard for a terminal ``width`` columns wide (``leaderboard.txt`` has every column)."""
        return narrow_table(self.entries, self.metric, self.space_keys, width)

    def run_link(self, run_id: str) -> str:
        return f"#/experiments/{self.experiment_id}/runs/{run_id}?workflowType=machine_learning"

    def note(self) -> str:
        """The parent run's description: the best trial's link first (visible while the description
        is folded), the noise verdict, then a compact leaderboard whose trial names are links."""
        if self.best:
            over = f" over the confirmation's seeds {', '.join(map(str, self.best.seeds))}" if self.best.stage == "confirm" else ""
            lines = [f"**Best: [{self.best.name}]({self.run_link(self.best.run_ids[0])})**, "
                     f"final/{self.metric} = {self.best.value:.4f}{over}"]
        else:
            lines = ["**No trial finished.**"]
        if self.verdict:
            lines.append(f"{self.verdict}.")
        if any(entry.arms for entry in self.entries):
            lines.append(f"The verdict judges `final/{self.metric}`; the paper's table below also gives the other "
                         "metric, which is secondary, and none of its intervals is corrected for the several "
                         "comparisons it makes.")
        if self.noise:
            lines.append(f"{self.noise.verdict}.")
        lines += ["", f"Sweep {self.name}, ranked on `final/{self.metric}`: trials that trained every task first; "
                  "a stopped trial's value (in parentheses) is partial, from fewer tasks or seeds."
                  + (f" {CONFIRMED_FIRST}." if any(e.stage == "confirm" for e in self.entries) else ""), "",
                  markdown_table(self.note_rows())]
        return "\n".join(lines)

    def note_rows(self) -> list[dict[str, object]]:
        """The leaderboard in few columns: rank, linked trial, status, value (± std over seeds), the
        noise mark and the searched keys."""
        rows = []
        for i, entry in enumerate(self.entries, 1):
            row = {"rank": i, "trial": f"[{entry.name}]({self.run_link(entry.run_ids[0])})", "status": entry.status,
                   f"final/{self.metric}": entry.shown(with_progress=True)}
            if entry.arms:
                (first, *_, last), (mean, half) = list(entry.arms), entry.difference
                row[f"{last}-{first}"] = f"{mean:+.4f}" + (f" [{mean - half:+.4f}, {mean + half:+.4f}]" if half else "")
            if entry.front:
                row["front"] = entry.front
            if entry.within_noise:
                row["noise"] = entry.within_noise
            if entry.stage == "confirm":
                row["stage"] = "confirm"
            rows.append({**row, **entry.params})
        return rows


def build_report(tracker: Tracker, parent_run_id: str) -> SweepReport:
    """Everything about a sweep, read from its MLflow parent run and the child runs under it; its
    protocol (``aepg.sweep.protocols``) reads its runs back, picks the best and says its verdict."""
    parent, experiment = tracker.get_run(parent_run_id)
    space = {k: Param.model_validate(v) for k, v in json.loads(tracker.read_text(parent_run_id, "space.json")).items()}
    sweep = SweepParams.of(parent)
    protocol = sweep.reader
    children = tracker.find_runs(experiment, {schema.PARENT_TAG: parent_run_id})
    searched_entries = protocol.entries([c for c in children if c.tags.get(STAGE_TAG) != "confirm"], space, sweep)
    ranked = rank(protocol.group(searched_entries, sweep), sweep.mode)
    confirmed = rank([dataclasses.replace(seed_ladder_entry(run, space, len(sweep.confirm_seeds), sweep.num_tasks),
                                          stage="confirm")
                      for run in children if run.tags.get(STAGE_TAG) == "confirm"], sweep.mode)
    searched_finished = [e for e in ranked if e.status == "finished" and e.value is not None]
    finished = [e for e in confirmed if e.status == "finished" and e.value is not None]
    ranked = confirmed + ranked  # the confirmation decides: its configurations first, on their fresh seeds
    # The noise is judged on the confirmation when it has two configurations to compare, else on the search.
    judged = finished if len(finished) > 1 else searched_finished
    found = assess([e.by_seed for e in judged])
    mark_within_noise(judged, found)
    best = protocol.best(finished or searched_finished, sweep)
    best_yaml = best_config(tracker, best, f"{parent.name}-best", sweep.storage_path) if best else None
    figs = figures(parent.name, searched_entries, space, sweep.mode, sweep.metric, protocol.compute_budget(sweep),
                   confirmed, best if best in confirmed or best in searched_entries else None)
    nested: dict[str, list] = {}
    for run in tracker.find_runs(experiment, {SWEEP_TAG: parent.tags.get(SWEEP_TAG, parent.name)}):
        nested.setdefault(run.tags.get(schema.PARENT_TAG, ""), []).append(run)
    figs.update(protocol.figures(parent.name, ranked, sweep, best, nested))
    return SweepReport(parent.name, sweep.metric, table(ranked, sweep.metric, list(space)), best, best_yaml, figs,
                       ranked, parent.experiment_id, found, list(space), protocol.verdict(best, ranked, sweep))


def sweep_label(parent: tracking.RunRecord) -> str:
    """A sweep's benchmark, as the paper's table groups columns: ``imagenet-r, 10 tasks``."""
    return f"{parent.params.get('base.dataset', '?')}, {parent.params.get('base.num_tasks', '?')} tasks"


def paper_table(tracker: Tracker, parent_ids: list[str], rows_key: str = "method",
                columns_key: str = "objective.kind") -> PaperTable:
    """The seed-statistics table over the finished trials of one or more sweeps."""
    groups, parent = [], None
    for parent_id in parent_ids:
        parent, experiment = tracker.get_run(parent_id)
        children = tracker.find_runs(experiment, {schema.PARENT_TAG: parent_id})
        finished = [c for c in children if status_of(c) == "finished"]
        params = SweepParams.of(parent)
        if params.reader.nests_seed_runs(params) or params.confirm_seeds:  # each configuration's seeds (and arms) are nested runs
            per_seed = [run for status in ("seed run", "arm run")
                        for run in tracker.find_runs(experiment, {STATUS_TAG: status, SWEEP_TAG: parent.name})
                        if run.status == "FINISHED"]
            finished = table_runs(finished, per_seed)
        label = sweep_label(parent)
        groups.append((label if label not in [g for g, _ in groups] else f"{label} ({parent.name})", finished))
    sweep = SweepParams.of(parent)
    return build_table(groups, rows_key, columns_key, rank_metric=sweep.metric, mode=sweep.mode)


def table_runs(trials: list[tracking.RunRecord], per_seed: list[tracking.RunRecord]) -> list[tracking.RunRecord]:
    """The runs a seed ladder's table is built from: the seed (or arm) runs nested under each
    finished configuration, except that a configuration the confirmation trained again counts on
    the confirmation's seeds alone (the search's seeds chose it, so their mean is biased up)."""
    confirmed = {t.tags.get(CONFIG_TAG) for t in trials if t.tags.get(STAGE_TAG) == "confirm"}
    kept = {t.run_id for t in trials if t.tags.get(STAGE_TAG) == "confirm" or t.tags.get(CONFIG_TAG) not in confirmed}
    return [run for run in per_seed if run.tags.get(schema.PARENT_TAG) in kept]


def report_texts(report: SweepReport, table: PaperTable) -> dict[str, str]:
    """The files a sweep's report writes (into its folder, the parent run, or ``--out``)."""
    why = f"\n{CONFIRMED_FIRST}\n" if any(e.stage == "confirm" for e in report.entries) else ""
    texts = {"leaderboard.csv": to_csv(report.rows), "leaderboard.txt": report.text + "\n" + why,
             "leaderboard.md": markdown_table(report.rows) + "\n" + why, "paper_table.md": table.markdown() + "\n",
             "paper_table.csv": table.csv(), "paper_table.tex": table.latex() + "\n"}
    if report.best_yaml:
        texts["best.yaml"] = report.best_yaml
    return texts
