"""The early-stopping schedulers a sweep can use, one catalogue entry each
(``aepg.catalog.SCHEDULERS``): ``scheduler.kind`` picks the entry, whose config holds its keys and
says what it compares, which rungs and levels it plans and what it refuses. Imports no Ray, so
``aepg sweep --dry-run`` stays fast; each builder (``aepg.sweep.search``) returns Ray Tune's
scheduler for a sweep. How each fidelity works is told in ``aepg.sweep.search``."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field

from aepg.catalog import SCHEDULERS
from aepg.config import EntryConfig
from aepg.metrics import SUMMARY_METRICS
from aepg.sweep.fidelity import Level

DEFAULT_SCHEDULER = "asha"
Fidelity = Literal["tasks", "epochs", "data", "seeds"]


class SchedulerSettings(EntryConfig):
    """What every scheduler's settings hold; ``kind`` picks the entry."""

    kind: str = DEFAULT_SCHEDULER
    fidelity: Fidelity = "tasks"
    """What a partial budget is: the first tasks of the sequence; or every task at a fraction of its
    epochs or of its training images, restarted at a larger fraction when promoted; or (``seeds``)
    some of the sweep's ``seeds``, the configurations kept training more of them."""

    stops_early: ClassVar[bool] = False
    """Whether trials may end before the full budget."""

    @property
    def climbs(self) -> bool:
        """Whether trials climb an epochs or data ladder; otherwise a trial trains the task sequence
        at its full budget (over tasks, or once per seed)."""
        return False

    def levels(self) -> list[Level]:
        """The levels of the epochs or data ladder (one, the full budget, unless the scheduler climbs)."""
        return [Level(0, 1.0)]

    def seed_rungs(self, seeds: int) -> list[int]:
        """The seed counts at which configurations are compared (fidelity seeds): all of them."""
        return [seeds]

    def compared_metric(self, metric: str) -> str:
        """The summary metric compared at the rungs of a sweep ranked on ``metric``."""
        return metric

    def problems(self, sweep) -> list[tuple[str, str]]:
        """(sweep-file key, message) for what this scheduler cannot do with ``sweep``."""
        return []

    def summary(self) -> str:
        """How the dry run names it."""
        return "no early stopping"

    def described(self, metric: str) -> str:
        """The parent run's ``search.scheduler``: the scheduler with every setting it ran with."""
        return "none (every trial to the full budget)"


@SCHEDULERS.register("asha", builder="aepg.sweep.search:asha_scheduler", display="ASHA")
class AshaSettings(SchedulerSettings):
    """Asynchronous successive halving: trials compared at rungs of the fidelity, the best
    1 / reduction_factor of them going on."""

    kind: Literal["asha"] = "asha"
    grace_period: int = Field(2, ge=1)
    """Fidelity tasks: the tasks every trial trains before ASHA may stop it (2: forgetting shows);
    fidelity seeds: the seeds every configuration trains first (1 or 2)."""
    reduction_factor: float = Field(3.0, gt=1)
    """ASHA keeps 1 / reduction_factor of the trials at each rung; levels grow by this factor."""
    rung_metric: Literal[SUMMARY_METRICS] | None = None
    """Fidelity tasks: the running metric compared at rungs; default the sweep's metric."""
    min_fraction: float = Field(1 / 9, gt=0, le=1)
    """Fidelities epochs and data: the lowest level's share of the full budget."""

    stops_early: ClassVar[bool] = True

    @property
    def climbs(self) -> bool:
        return self.fidelity in ("epochs", "data")

    def levels(self) -> list[Level]:
        """min_fraction, then x reduction_factor, up to the full budget."""
        if not self.climbs:
            return super().levels()
        count = 1 + math.floor(math.log(1 / self.min_fraction) / math.log(self.reduction_factor) + 1e-9)
        return [Level(k, self.reduction_factor ** (k - count + 1)) for k in range(count)]

    def seed_rungs(self, seeds: int) -> list[int]:
        """``grace_period`` seeds, then ``reduction_factor`` times as many, and every seed listed."""
        rungs, count = [], self.grace_period
        while count < seeds:
            rungs.append(count)
            count = max(count + 1, round(count * self.reduction_factor))
        return [*rungs, seeds]

    def compared_metric(self, metric: str) -> str:
        return self.rung_metric or metric

    def problems(self, sweep) -> list[tuple[str, str]]:
        problems = []
        if self.fidelity == "tasks":
            if self.grace_period > sweep.num_tasks:
                problems.append(("scheduler.grace_period", f"{self.grace_period} tasks but the benchmark has {sweep.num_tasks}"))
            if sweep.num_tasks < 2:
                problems.append(("scheduler.kind", "ASHA over tasks needs at least 2 tasks to stop trials early"))
            compared = self.compared_metric(sweep.spec.metric)
            if compared in ("forgetting", "bwt") and self.grace_period < 2:
                problems.append(("scheduler.grace_period", f"{compared} exists from the second task on: use a grace "
                                 "period of 2 or more"))
        seeds = len(sweep.spec.seeds or ())
        if self.fidelity == "seeds" and seeds >= 2 and self.grace_period >= seeds:
            problems.append(("scheduler.grace_period", f"the first rung ({self.grace_period} seeds) leaves no rung "
                             f"below the {seeds} seeds listed: ASHA would stop nothing; use 1 or 2"))
        if self.climbs and len(self.levels()) < 2:
            problems.append(("scheduler.min_fraction", f"{self.min_fraction} gives a single level; lower it below "
                             f"1 / reduction_factor ({1 / self.reduction_factor:.3g})"))
        return problems

    def summary(self) -> str:
        return f"ASHA over {self.fidelity}"

    def described(self, metric: str) -> str:
        return (f"ASHA(fidelity={self.fidelity}, grace_period={self.grace_period}, "
                f"reduction_factor={self.reduction_factor}, rung_metric={self.compared_metric(metric)}, "
                f"min_fraction={self.min_fraction:.4g})")


@SCHEDULERS.register("wilcoxon", builder="aepg.sweep.search:wilcoxon_scheduler", display="Wilcoxon over seeds")
class WilcoxonSettings(SchedulerSettings):
    """Seeds as instances (Optuna's WilcoxonPruner, as SMAC intensifies): a configuration trains the
    sweep's seeds one by one and stops once a one-sided Wilcoxon signed-rank test over the seeds it
    has done, paired with the best finished configuration's values on the same seeds, says it is
    worse; a test in place of the seed ladder's fixed rungs."""

    kind: Literal["wilcoxon"] = "wilcoxon"
    fidelity: Literal["seeds"] = "seeds"
    p_threshold: float = Field(0.2, gt=0, lt=1)
    """Stop a configuration when the test's p-value falls below this. Optuna's default is 0.1;
    bench/search_efficiency.py's replay found 0.2 to pick the same configurations at less compute
    (it can stop after 3 seeds, not 4)."""
    startup_seeds: int = Field(2, ge=2)
    """Seeds every configuration trains before the test may stop it."""

    stops_early: ClassVar[bool] = True

    def seed_rungs(self, seeds: int) -> list[int]:
        """Compared after every seed."""
        return list(range(1, seeds + 1))

    def problems(self, sweep) -> list[tuple[str, str]]:
        # The smallest one-sided p-value of the signed-rank test over n pairs is 1 / 2^n (all n agree).
        seeds = len(sweep.spec.seeds or ())
        needed = next(n for n in range(1, 64) if 0.5 ** n < self.p_threshold)
        if 2 <= seeds < needed + 1:
            return [("seeds", f"the signed-rank test over at most {seeds - 1} seeds before the last cannot reach "
                     f"p < {self.p_threshold} (its smallest p over n seeds is 1/2^n): it would stop nothing; "
                     f"list {needed + 1} or more seeds, or raise scheduler.p_threshold")]
        return []

    def summary(self) -> str:
        return f"Wilcoxon over seeds (stop at p < {self.p_threshold:g})"

    def described(self, metric: str) -> str:
        return f"Wilcoxon(fidelity=seeds, p_threshold={self.p_threshold:g}, startup_seeds={self.startup_seeds})"


@SCHEDULERS.register("none", builder="aepg.sweep.search:fifo_scheduler", display="none")
class NoEarlyStopping(SchedulerSettings):
    """Every trial to the full budget (with fidelity seeds: on every seed)."""

    kind: Literal["none"] = "none"
