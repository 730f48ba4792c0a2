"""The optimiser of a training phase and its learning rate at each step.

Every phase (a task's head-only epochs, then its other epochs) gets a fresh optimiser, so the
learning-rate schedule also runs over one phase: warm-up from ``lr / warmup_steps`` to ``lr``,
then constant, cosine to zero, or times ``lr_gamma`` at each milestone epoch. The rate is a pure
function of the step, so a run resumed inside a phase continues the curve with no saved state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aepg.config import TrainConfig


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``params``; ``fused``: Adam's fused CUDA kernel."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


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
    warmup = min(cfg.warmup_epochs * phase.steps_per_epoch, phase.steps)
    if t < warmup:
        return cfg.lr * (t + 1) / warmup
    if cfg.lr_schedule == "cosine":
        span = max(phase.steps - warmup, 1)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / span))
    if cfg.lr_schedule == "step":
        passed = sum(1 for milestone in cfg.lr_milestones if epoch - phase.first >= milestone)
        return cfg.lr * cfg.lr_gamma ** passed
    return cfg.lr


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
