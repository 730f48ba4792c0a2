"""The plain protocol: a trial is one run of the configuration at the full budget, reported after
each task, so that early stopping compares trials after ``grace_period`` tasks on the running value
of ``rung_metric``. A grid on several ``seeds`` trains every point once per seed; the leaderboard
averages them."""

from __future__ import annotations

import itertools
from typing import Literal

from aepg.catalog import PROTOCOLS
from aepg.schema import BUDGET_KEY, partial_name
from aepg.sweep.protocols import SweepProtocol


@PROTOCOLS.register("plain", display="plain")
class PlainProtocol(SweepProtocol):
    """One run per trial at the full budget, reported after each task; a grid's points once per seed."""

    kind: Literal["plain"] = "plain"
    precedence = 0

    @classmethod
    def matches(cls, spec) -> bool:
        return True

    def points(self, points: list[dict], sweep) -> list[dict]:
        if not sweep.spec.seeds:
            return points
        return [{**point, "seed": seed} for point, seed in itertools.product(points, sweep.spec.seeds)]

    def train_trial(self, cfg, run, runtime) -> None:
        tasks = cfg.benchmark.num_tasks
        runtime.train(cfg, run.run, lambda state: run.report(state.metrics(tasks, placeholders=True)))

    def budget(self, sweep) -> tuple[str, int]:
        return BUDGET_KEY, sweep.num_tasks

    def compared_metric(self, sweep) -> str:
        spec = sweep.spec
        return partial_name(spec.scheduler.compared_metric(spec.metric))

    def compared_mode(self, sweep) -> str:
        """The sweep's mode for its own metric; another rung metric's natural one (less forgetting is
        better, more of the rest)."""
        spec = sweep.spec
        compared = spec.scheduler.compared_metric(spec.metric)
        return spec.mode if compared == spec.metric else "min" if compared == "forgetting" else "max"

    def searched_metric(self, sweep) -> str:
        return partial_name(sweep.spec.metric)

    def entries(self, runs, space, params):
        from aepg.sweep.leaderboard import task_entries

        return task_entries(runs, space, params.metric, params.num_tasks, list(params.trade_off))

    def group(self, entries, params):
        """A grid's points on several seeds: one row per point, the mean and std over its seeds."""
        from aepg.sweep.leaderboard import average_over_seeds

        return average_over_seeds(entries) if len(params.seeds) > 1 else entries
