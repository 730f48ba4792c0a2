"""Training objectives: cross-entropy, EPG, aEPG and the entropy regularisers they are compared with.

An objective is one object the trainer receives: ``objective(logits, targets, progress)``
returns the mean loss and diagnostics. It knows nothing of tasks, models or tracking.
Every loss is computed from ``log_softmax`` so logits of magnitude 1e4 stay finite.

Adding an objective: write a per-sample loss below and register it in ``OBJECTIVES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from aepg.schedules import Progress, Schedule, build_schedule


@dataclass
class ObjectiveOutput:
    loss: Tensor
    """Mean loss over the batch (the tensor to back-propagate)."""
    a_t: float | None
    """Cross-entropy weight at this step, for annealed objectives."""
    entropy: Tensor
    """Mean entropy of the softmax over the logits the loss sees (detached)."""
    p_y: Tensor
    """Mean probability of the true class (detached)."""
    ce: Tensor
    """Mean plain cross-entropy of the batch (detached): every objective on one scale."""


def entropy(log_p: Tensor) -> Tensor:
    """Per-sample entropy H(p) = -sum p log p, finite when some p underflow to 0."""
    return -(log_p.exp() * log_p).sum(dim=-1)


def cross_entropy_terms(log_p_y: Tensor) -> Tensor:
    return -log_p_y


def epg_terms(log_p_y: Tensor) -> Tensor:
    """L_EPG = -p_y: the exact expected reward of the softmax policy, reward 1[a = y]."""
    return -log_p_y.exp()


def aepg_terms(log_p_y: Tensor, a: float) -> Tensor:
    """a CE + (1 - a) EPG, i.e. CE weighted per sample by a + (1 - a) p_y."""
    return -(a * log_p_y + (1.0 - a) * log_p_y.exp())


def label_smoothing_terms(log_p: Tensor, log_p_y: Tensor, eps: float) -> Tensor:
    return -(1.0 - eps) * log_p_y - eps * log_p.mean(dim=-1)


def focal_terms(log_p_y: Tensor, gamma: float) -> Tensor:
    # 1 - p_y via expm1 keeps precision near p_y = 1; the clamp keeps (1 - p)^gamma
    # differentiable at p = 1 for gamma < 1.
    one_minus_p = (-torch.expm1(log_p_y)).clamp_min(1e-12)
    return -(one_minus_p**gamma) * log_p_y


@dataclass
class LossInputs:
    log_p: Tensor
    log_p_y: Tensor
    a: float


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: per-sample loss and whether it follows the a_t schedule."""

    per_sample: Callable[[LossInputs, object], Tensor]
    annealed: bool = False


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "ce": ObjectiveSpec(lambda x, c: cross_entropy_terms(x.log_p_y)),
    "epg": ObjectiveSpec(lambda x, c: epg_terms(x.log_p_y)),
    "aepg": ObjectiveSpec(lambda x, c: aepg_terms(x.log_p_y, x.a), annealed=True),
    "label_smoothing": ObjectiveSpec(lambda x, c: label_smoothing_terms(x.log_p, x.log_p_y, c.eps)),
    "focal": ObjectiveSpec(lambda x, c: focal_terms(x.log_p_y, c.gamma)),
    "confidence_penalty": ObjectiveSpec(lambda x, c: -x.log_p_y - c.beta * entropy(x.log_p)),
    "entropy_penalty": ObjectiveSpec(lambda x, c: -x.log_p_y + c.beta * entropy(x.log_p)),
}


class Objective:
    """Mean of a registered per-sample loss; annealed objectives read a_t from the schedule."""

    def __init__(self, cfg, schedule: Schedule | None = None):
        if cfg.kind not in OBJECTIVES:
            raise ValueError(f"unknown objective {cfg.kind!r}; known: {sorted(OBJECTIVES)}")
        self.cfg = cfg
        self.spec = OBJECTIVES[cfg.kind]
        self.schedule = schedule

    def weight(self, progress: Progress) -> float | None:
        return self.schedule(progress) if self.spec.annealed and self.schedule else None

    def __call__(self, logits: Tensor, targets: Tensor, progress: Progress) -> ObjectiveOutput:
        log_p = F.log_softmax(logits, dim=-1)
        log_p_y = log_p.gather(1, targets.unsqueeze(1)).squeeze(1)
        a_t = self.weight(progress)
        terms = self.spec.per_sample(LossInputs(log_p, log_p_y, 1.0 if a_t is None else a_t), self.cfg)
        with torch.no_grad():
            diagnostics = (entropy(log_p).mean(), log_p_y.exp().mean(), -log_p_y.mean())
        return ObjectiveOutput(terms.mean(), a_t, *diagnostics)


def build_objective(objective_cfg, schedule_cfg) -> Objective:
    return Objective(objective_cfg, build_schedule(schedule_cfg))
