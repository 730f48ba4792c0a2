"""Annealing schedules for a_t, the weight of cross-entropy in the aEPG loss: one entry of
``aepg.catalog.SCHEDULES`` each (its config, with its keys and its ``a_t``; no torch).

Every schedule maps progress (t, T) to a_t in [0, 1]: t is the optimisation step and T the
number of steps in the current task (or in the whole run, with ``scope: run``). They start
near 1 (cross-entropy) and end near 0 (EPG), except ``constant``. docs/extending.md shows how to
add one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

from pydantic import Field

from aepg.catalog import SCHEDULES
from aepg.config import ScheduleConfig


@dataclass(frozen=True)
class Progress:
    """Where the optimiser is: step ``t`` of ``T`` steps."""

    t: int
    T: int

    @property
    def fraction(self) -> float:
        return self.t / self.T if self.T > 0 else 1.0


Schedule = Callable[[Progress], float]


def progress(scope: str, step: int, task_steps: int, run_step: int, run_steps: int) -> Progress:
    """Where the schedule is at an optimiser step: inside the task (``scope: task``, the paper) or
    over the whole run (``scope: run``)."""
    return Progress(run_step, run_steps) if scope == "run" else Progress(step, task_steps)


@SCHEDULES.register("sigmoid")
class SigmoidSchedule(ScheduleConfig):
    """a_t = 1 / (1 + exp(-tau (T - 2t) / T)): the paper's default (a_0 ~ 0.998 for tau 6)."""

    kind: Literal["sigmoid"] = "sigmoid"
    tau: float = Field(6.0, gt=0)

    def a_t(self, p: Progress) -> float:
        return 1.0 / (1.0 + math.exp(-self.tau * (1.0 - 2.0 * p.fraction)))


@SCHEDULES.register("linear")
class LinearSchedule(ScheduleConfig):
    """a_t = (T - t) / T."""

    kind: Literal["linear"] = "linear"

    def a_t(self, p: Progress) -> float:
        return 1.0 - p.fraction


@SCHEDULES.register("cosine")
class CosineSchedule(ScheduleConfig):
    """a_t = 1/2 + 1/2 cos(pi t / T)."""

    kind: Literal["cosine"] = "cosine"

    def a_t(self, p: Progress) -> float:
        return 0.5 + 0.5 * math.cos(math.pi * p.fraction)


@SCHEDULES.register("constant")
class ConstantSchedule(ScheduleConfig):
    """A fixed a, for the paper's ablation (lower a is better, a schedule better still)."""

    kind: Literal["constant"] = "constant"
    a: float = Field(0.5, ge=0, le=1)
    """The fixed weight."""

    def a_t(self, p: Progress) -> float:
        return self.a


def build_schedule(cfg: ScheduleConfig) -> Schedule:
    """The schedule a ``ScheduleConfig`` describes: its entry's ``a_t``."""
    return cfg.a_t
