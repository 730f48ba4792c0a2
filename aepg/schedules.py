"""Annealing schedules for a_t, the weight of cross-entropy in the aEPG loss.

Every schedule maps progress (t, T) to a_t in [0, 1]: t is the optimisation step and T the
number of steps in the current task (or in the whole run, with ``scope: run``). They start
near 1 (cross-entropy) and end near 0 (EPG), except ``constant``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
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


def sigmoid(tau: float = 6.0) -> Schedule:
    """a_t = 1 / (1 + exp(-tau (T - 2t) / T)): the paper's default (a_0 ~ 0.998 for tau 6)."""

    def a(p: Progress) -> float:
        return 1.0 / (1.0 + math.exp(-tau * (1.0 - 2.0 * p.fraction)))

    return a


def linear() -> Schedule:
    """a_t = (T - t) / T."""
    return lambda p: 1.0 - p.fraction


def cosine() -> Schedule:
    """a_t = 1/2 + 1/2 cos(pi t / T)."""
    return lambda p: 0.5 + 0.5 * math.cos(math.pi * p.fraction)


def constant(a: float) -> Schedule:
    """A fixed a, for the paper's ablation (lower a is better, a schedule better still)."""
    return lambda p: a


def build_schedule(cfg: ScheduleConfig) -> Schedule:
    """The schedule a ``ScheduleConfig`` describes."""
    if cfg.kind == "sigmoid":
        return sigmoid(cfg.tau)
    if cfg.kind == "linear":
        return linear()
    if cfg.kind == "cosine":
        return cosine()
    if cfg.kind == "constant":
        return constant(cfg.a)
    raise ValueError(f"unknown schedule kind {cfg.kind!r}")
