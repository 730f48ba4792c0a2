"""A sweep's report published to MLflow: its files, plots, counts and description on the parent run,
and on every child run its standing (``sweep/standing``), a one-line description and a colour by objective."""

from __future__ import annotations

from aepg import schema, tracking
from aepg.schema import STANDING_KEY, best_name, final_name, one_seed_name, seed_metric
from aepg.sweep.leaderboard import TrialResult
from aepg.sweep.report import SweepReport, report_texts
from aepg.sweep.table import PaperTable
from aepg.tracking import Tracker

FAMILIES = ("Blues", "Oranges", "Greens", "Purples", "Reds")
NEUTRAL = "Greys"
"""The family of runs that train no one objective: a paired configuration's, whose arms hold them."""
PARENT_COLOUR = "#000000"  # black: no trial's shade


def publish(tracker: Tracker, parent_id: str, report: SweepReport, table: PaperTable) -> None:
    """Log the report to the sweep's parent run: files, plots, counts, the best run and a description."""
    counts = {f"sweep.trials_{status.replace(' ', '_')}": str(sum(status in e.status.split("/") for e in report.entries))
              for status in ("finished", "stopped early", "failed")}  # tags: counts are no chart
    metrics = {best_name(report.metric): report.best.value} if report.best else {}
    metrics.update(report.noise.params() if report.noise else {})
    tags = {schema.NOTE_TAG: report.note() + "\n\n## The paper's table\n\n" + table.markdown(),
            schema.COLOR_TAG: PARENT_COLOUR, **counts}
    if report.best:
        tags["best_run_id"] = report.best.run_ids[0]
    if report.noise:
        tags["sweep.noise_verdict"] = report.noise.verdict
    parent = tracker.get_run(parent_id)[0]
    tracker.run(parent_id).log_outputs(report_texts(report, table), report.figures, new_values(parent, metrics), tags)
    nested = {run_id: tracker.nested_runs(report.experiment_id, run_id) for entry in report.entries
              for run_id in entry.run_ids}
    colours = run_colours(report.entries, nested)
    confirmed = any(entry.stage == "confirm" for entry in report.entries)
    for i, entry in enumerate(report.entries, 1):
        for run_id in entry.run_ids:
            note = child_note(entry, i, len(report.entries), report.metric, confirmed)
            if entry is report.best and report.verdict:
                note += f". {report.verdict}"
            run = tracker.run(run_id)
            run.set_tags({schema.NOTE_TAG: note, schema.COLOR_TAG: colours[run_id]})
            run.log_metrics(new_values(tracker.get_run(run_id)[0], {STANDING_KEY: len(report.entries) + 1 - i}))
            for nested_run in nested[run_id]:  # seed, arm and ladder runs: their configuration's shade
                tags = {schema.COLOR_TAG: colours[nested_run.run_id]}
                if nested_run.tags.get(schema.ARM_TAG):
                    tags[schema.NOTE_TAG] = arm_note(nested_run, entry.name, report.metric)
                tracker.run(nested_run.run_id).set_tags(tags)


def new_values(run, metrics: dict[str, float]) -> dict[str, float]:
    """The metrics a run does not hold yet with that value: a report published again (``aepg report``
    run twice) adds no point to their histories."""
    return {key: value for key, value in metrics.items() if run.metrics.get(key) != value}


def arm_note(run, configuration: str, metric: str) -> str:
    """An arm run's one-line description: its arm and seed, its configuration, its value."""
    value = run.metrics.get(one_seed_name(metric))
    said = f": {one_seed_name(metric)} = {value:.4f}" if value is not None else ""
    return (f"arm {run.tags[schema.ARM_TAG]} on seed {run.tags.get(schema.SEED_TAG, '?')} of configuration "
            f"{configuration}{said}")


def child_note(entry: TrialResult, rank: int, of: int, metric: str, confirmed: bool = False) -> str:
    """A trial's one-line description: how it ended, how far it got, its value and its rank (in a
    sweep whose ``confirmed`` configurations decide, a search trial's value is its search seeds' mean)."""
    if entry.value is None:
        value = ""
    elif entry.status == "finished" and confirmed and entry.stage == "search":
        value = f", {seed_metric(metric)} = {entry.value:.4f} (the confirmed configurations rank first)"
    elif entry.status == "finished":
        value = f", {final_name(metric)} = {entry.value:.4f}" + (" on fresh seeds" if entry.stage == "confirm" else "")
    else:
        value = f", {metric} {entry.value:.4f} when it stopped (partial: not comparable with finished trials)"
    front = {"front": "; on the Pareto front", "within noise": "; off the Pareto front only within seed noise"}
    return f"{entry.status}, {entry.progress}{value}; rank {rank} of {of}{front.get(entry.front, '')}"


def run_colours(entries: list[TrialResult], nested: dict[str, list[tracking.RunRecord]] | None = None) -> dict[str, str]:
    """A hue family per objective, so the compared objectives never share a colour in MLflow's
    charts and runs table: finished trials in its strong shades, darker for better ranks; trials
    that did not finish (stopped early, failed) in its pale ones, which no finished trial takes
    (``entries`` in leaderboard order). The runs ``nested`` under a trial's run (its seeds, its
    arms, its ladder's levels) take the trial's shade in the family of their own objective, so a
    CE arm and an aEPG arm of one configuration differ in hue and match in shade."""
    from matplotlib import colormaps, colors

    nested = nested or {}
    objective = lambda run: run.params.get("objective.kind", "")  # noqa: E731
    kinds = sorted({entry.objective for entry in entries} | {objective(r) for runs in nested.values() for r in runs})
    named = [kind for kind in kinds if kind]  # a configuration whose arms differ in objective has none: grey
    family = {"": colormaps[NEUTRAL], **{kind: colormaps[FAMILIES[i % len(FAMILIES)]] for i, kind in enumerate(named)}}
    colours = {}
    for kind in kinds:
        for finished, (darkest, lightest) in ((True, (0.95, 0.5)), (False, (0.4, 0.2))):
            group = [entry for entry in entries if entry.objective == kind and (entry.status == "finished") == finished]
            for j, entry in enumerate(group):
                level = darkest - (darkest - lightest) * j / max(1, len(group) - 1)
                colours.update(dict.fromkeys(entry.run_ids, colors.to_hex(family[kind](level))))
                for run in (r for run_id in entry.run_ids for r in nested.get(run_id, [])):
                    colours[run.run_id] = colors.to_hex(family[objective(run) or kind](level))
    return colours
