"""Optimisers and learning-rate schedules: one entry of ``aepg.catalog.OPTIMIZERS`` or
``aepg.catalog.LR_SCHEDULES`` each (its config, with its keys; torch only when one is built).

Every phase (a task's head-only epochs, then its other epochs) gets a fresh optimiser, so the
learning-rate schedule also runs over one phase: warm-up from ``lr / warmup_steps`` to ``lr``,
then the entry's multiple of ``lr``. The rate is a pure function of the step, so a run resumed
inside a phase continues the curve with no saved state. docs/extending.md shows how to add either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal

from pydantic import Field, model_validator

from aepg.catalog import LR_SCHEDULES, OPTIMIZERS
from aepg.config import FLOAT32_MAX, LRScheduleConfig, OptimizerConfig, TrainConfig

ADAM_MAX_LR = FLOAT32_MAX * (1 - 0.9)
"""Adam's first step is ``lr / (1 - beta1)`` times a unit-sized direction, computed in float32 (torch's
default beta1 of 0.9): a rate from a tenth of float32's largest value on overflows there."""


@OPTIMIZERS.register("adam", display="Adam")
class AdamOptimizer(OptimizerConfig):
    """Adam, with L2 weight decay in the gradient (the prompt methods' references use it)."""

    kind: Literal["adam"] = "adam"
    max_lr: ClassVar[float] = ADAM_MAX_LR

    def build(self, params: list, lr: float, weight_decay: float, fused: bool):
        import torch

        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


@OPTIMIZERS.register("adamw", display="AdamW")
class AdamWOptimizer(OptimizerConfig):
    """AdamW: Adam with decoupled weight decay."""

    kind: Literal["adamw"] = "adamw"
    max_lr: ClassVar[float] = ADAM_MAX_LR

    def build(self, params: list, lr: float, weight_decay: float, fused: bool):
        import torch

        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


@OPTIMIZERS.register("sgd", display="SGD")
class SGDOptimizer(OptimizerConfig):
    """SGD with momentum (the from-scratch CIFAR recipe: 0.9, Nesterov)."""

    kind: Literal["sgd"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDOptimizer:
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        return self

    def build(self, params: list, lr: float, weight_decay: float, fused: bool):
        import torch

        return torch.optim.SGD(params, lr=lr, momentum=self.momentum, nesterov=self.nesterov,
                               weight_decay=weight_decay)


@LR_SCHEDULES.register("constant")
class ConstantRate(LRScheduleConfig):
    """``train.lr`` throughout (after any warm-up)."""

    kind: Literal["constant"] = "constant"

    def factor(self, step: int, steps: int, epoch: int) -> float:
        return 1.0


@LR_SCHEDULES.register("cosine")
class CosineRate(LRScheduleConfig):
    """Cosine from ``train.lr`` to 0 over the phase's steps after warm-up (CODA-Prompt's)."""

    kind: Literal["cosine"] = "cosine"

    @property
    def varies(self) -> bool:
        return True

    def factor(self, step: int, steps: int, epoch: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))


@LR_SCHEDULES.register("step")
class StepRate(LRScheduleConfig):
    """``train.lr`` times ``gamma`` at each of ``milestones`` (epochs of the phase)."""

    kind: Literal["step"] = "step"
    milestones: list[int] = []
    """Epochs of the phase after which the rate is multiplied by ``gamma``, e.g. [60, 120, 160]."""
    gamma: float = Field(0.1, gt=0, le=1)

    @property
    def varies(self) -> bool:
        return True

    def factor(self, step: int, steps: int, epoch: int) -> float:
        return self.gamma ** sum(1 for milestone in self.milestones if epoch >= milestone)

    def problems(self, cfg) -> list[tuple[str, str]]:
        problems, (key, epochs) = super().problems(cfg), cfg.train.fewest_epochs
        if not self.milestones:
            problems.append(("milestones", "the step schedule needs milestone epochs, e.g. [60, 120, 160]"))
        elif any(not 0 < m < epochs for m in self.milestones):
            problems.append(("milestones", f"milestones must lie between 0 and {key} ({epochs})"))
        return problems

    def scaled(self, epochs: Callable[[int], int]) -> StepRate:
        low = super().scaled(epochs)
        return low.model_copy(update={"milestones": sorted({max(1, epochs(m)) for m in self.milestones})})


def build_optimizer(params: list, cfg: TrainConfig, fused: bool):
    """``train.optimizer`` over ``params`` (tensors, or parameter groups); ``fused``: Adam's fused CUDA kernel."""
    return cfg.optimizer.build(params, cfg.lr, cfg.weight_decay, fused)


@dataclass(frozen=True)
class Phase:
    """The epochs [first, stop) that one optimiser trains, of ``steps_per_epoch`` steps each."""

    first: int
    stop: int
    steps_per_epoch: int

    @property
    def steps(self) -> int:
        return (self.stop - self.first) * self.steps_per_epoch


def learning_rate(cfg: TrainConfig, phase: Phase, epoch: int, step_in_epoch: int) -> float:
    """The rate at step ``step_in_epoch`` of epoch ``epoch`` (counted in the task) of ``phase``."""
    t = (epoch - phase.first) * phase.steps_per_epoch + step_in_epoch
    warmup = min(cfg.lr_schedule.warmup_epochs * phase.steps_per_epoch, phase.steps)
    if t < warmup:
        return cfg.lr * (t + 1) / warmup
    return cfg.lr * cfg.lr_schedule.factor(t - warmup, phase.steps - warmup, epoch - phase.first)


LR_SCALE = "lr_scale"
"""A parameter group's rate as a multiple of the phase's (``model.method.lr_scale`` for the method's)."""


def set_learning_rate(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get(LR_SCALE, 1.0)
