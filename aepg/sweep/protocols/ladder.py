"""The epochs or data ladder (``scheduler.fidelity: epochs`` or ``data``): a trial trains the whole
task sequence at a fraction of the epochs of every task (or of every task's training images),
``min_fraction`` at the lowest level and ``reduction_factor`` times more at each level up to the full
budget, reporting at the end of each level; early stopping compares trials at each level on the
sweep metric, and a promoted trial restarts at the next level (successive halving with restarts,
as in Hyperband). Levels below the full budget train into runs nested under the trial's run."""

from __future__ import annotations

from typing import Literal

from aepg import schema
from aepg.catalog import PROTOCOLS
from aepg.schema import LEVEL_KEY, LEVEL_TAG, level_metric
from aepg.sweep import fidelity
from aepg.sweep.protocols import SweepProtocol

BUDGET_KEYS = {"train.epochs": "epochs", "benchmark.max_train_per_class": "data"}
"""The keys each ladder sets at its levels, which a sweep over it cannot search."""


@PROTOCOLS.register("ladder", display="epochs or data ladder")
class LadderProtocol(SweepProtocol):
    """The task sequence at a growing share of its epochs or data, each level reported; a promoted
    trial restarts one level up."""

    kind: Literal["ladder"] = "ladder"
    precedence = 20
    unit = "level"

    @classmethod
    def matches(cls, spec) -> bool:
        return spec.scheduler.climbs

    def train_trial(self, cfg, run, runtime) -> None:
        from aepg.sweep.runtime import log_rung

        spec = runtime.sweep.spec
        kind, metric, tasks = spec.scheduler.fidelity, spec.metric, cfg.benchmark.num_tasks
        per_class = fidelity.full_per_class(cfg) if kind == "data" else 0
        compute = 0.0
        for level in spec.scheduler.levels():
            low = fidelity.level_config(cfg, kind, level, per_class)
            compute += fidelity.level_compute(cfg, low, kind, per_class)
            if level.fraction < 1:
                level_run = runtime.nested_run(run, {LEVEL_TAG: str(level.index)}, low,
                                               f"{kind} {level.label}@{run.name}", "low fidelity")
                state = runtime.train(low, level_run, summary=None)
                level_run.close("FINISHED")
            else:
                state = runtime.train(cfg, run.run)
            progress = {LEVEL_KEY: level.index + 1, level_metric(metric): state.summary[metric],
                        "fidelity/fraction": level.fraction, schema.COMPUTE_KEY: compute}
            log_rung(run.run, progress, LEVEL_KEY)
            run.report({**state.metrics(tasks, placeholders=True), **progress})

    def budget(self, sweep) -> tuple[str, int]:
        return LEVEL_KEY, len(sweep.spec.scheduler.levels())

    def compared_metric(self, sweep) -> str:
        return level_metric(sweep.spec.metric)

    def parent_params(self, sweep) -> dict[str, object]:
        return {"scheduler.levels": len(sweep.spec.scheduler.levels())}

    def problems(self, sweep) -> list[tuple[str, str]]:
        """Every level must train something different, and what the ladder sets is not searched."""
        spec = sweep.spec
        kind = spec.scheduler.fidelity
        problems = [(f"space.{key}", f"the {kind} fidelity sets it at each level of its ladder; search it with "
                     "scheduler.fidelity: tasks, or without early stopping")
                    for key, which in BUDGET_KEYS.items() if key in sweep.space and which == kind]
        if spec.trade_off:
            problems.append(("scheduler.kind", f"{spec.scheduler.kind} compares trials on one metric; with trade_off, "
                             "use scheduler.kind: none"))
        levels, cfg = spec.scheduler.levels(), sweep.base_config
        try:
            per_class = fidelity.full_per_class(cfg) if kind == "data" else 0
        except FileNotFoundError:  # the data set is missing: its check says so
            return problems
        budgets = [fidelity.level_config(cfg, kind, level, per_class) for level in levels]
        sizes = [b.train.epochs if kind == "epochs" else b.benchmark.max_train_per_class for b in budgets]
        if len(set(sizes)) < len(sizes):
            what = "epochs per task" if kind == "epochs" else "training images per class"
            problems.append(("scheduler.min_fraction", f"levels {[f'{lv.fraction:.3g}' for lv in levels]} train {sizes} "
                             f"{what}: two levels train the same; raise min_fraction"
                             + (" or train.epochs" if kind == "epochs" else "")))
        return problems

    def cost(self, sweep, per_trial: str, total: int) -> tuple[str, int]:
        """A promoted trial also trains every lower level."""
        from aepg import preflight

        spec, base = sweep.spec, sweep.base_config
        per_class = fidelity.full_per_class(base) if spec.scheduler.fidelity == "data" else 0
        lows = [preflight.plan(fidelity.level_config(base, spec.scheduler.fidelity, level, per_class)).train_samples
                for level in spec.scheduler.levels()]
        return (f"{per_trial} training samples at the full budget, and {sum(lows[:-1]):,} on the levels below it",
                round(total * sum(lows) / lows[-1]))

    def entries(self, runs, space, params):
        from aepg.sweep.leaderboard import level_entries

        return level_entries(runs, space, params.metric, params.levels)
