"""The epochs and data ladders of a sweep (``scheduler.fidelity``; ``aepg.sweep.protocols.ladder``):
the levels, a trial's config at each and what each costs. Pure arithmetic on configs, so sweep
files are checked without importing Ray."""

from __future__ import annotations

from dataclasses import dataclass

from aepg.config import RunConfig


@dataclass(frozen=True)
class Level:
    """One rung of an epochs or data fidelity ladder."""

    index: int
    fraction: float
    """The share of the full budget this level trains (of the epochs, or of each task's data)."""

    @property
    def label(self) -> str:
        return "full budget" if self.fraction >= 1 else f"1/{round(1 / self.fraction)} budget"


def level_config(cfg: RunConfig, fidelity: str, level: Level, full_per_class: int) -> RunConfig:
    """``cfg`` at a level of the ladder: fewer epochs (head-only and warm-up epochs and the
    learning rate's milestones scaled alike), or fewer training images per class
    (``full_per_class`` is the full budget's)."""
    if level.fraction >= 1:
        return cfg
    low = cfg.model_copy(deep=True)
    if fidelity == "epochs":
        epochs = max(1, round(cfg.train.epochs * level.fraction))
        scaled = lambda value: min(round(value * level.fraction), epochs - 1)  # noqa: E731
        low.train.head_only_epochs = scaled(cfg.train.head_only_epochs)
        low.train.lr_schedule = cfg.train.lr_schedule.scaled(scaled)
        low.train.epochs = epochs
        if cfg.train.first_task_epochs is not None:
            low.train.first_task_epochs = max(1, round(cfg.train.first_task_epochs * level.fraction))
    else:
        low.benchmark.max_train_per_class = max(1, round(full_per_class * level.fraction))
    return low


def level_compute(cfg: RunConfig, low: RunConfig, fidelity: str, full_per_class: int) -> float:
    """Tasks trained by a whole sequence at this level, in full-budget tasks."""
    if fidelity == "epochs":
        return cfg.benchmark.num_tasks * low.train.epochs / cfg.train.epochs
    return cfg.benchmark.num_tasks * min(1.0, low.benchmark.max_train_per_class / full_per_class)


def full_per_class(cfg: RunConfig) -> int:
    """Training images per class at the full budget: the config's cap, or the largest class."""
    largest = max(cfg.benchmark.dataset.class_sizes(cfg.benchmark)[0])
    return min(cfg.benchmark.max_train_per_class or largest, largest)
