"""Training objectives: cross-entropy, EPG, aEPG and the entropy regularisers they are compared with.

Each objective is one catalogue entry (``aepg.catalog.OBJECTIVES``): a config class holding its
keys and its per-sample loss. The trainer receives one ``Objective``:
``objective(logits, targets, progress)`` returns the mean loss and diagnostics; it knows nothing
of tasks, models or tracking. Every loss is computed from ``log_softmax`` so logits of magnitude
1e4 stay finite. This module uses tensor methods only, so it imports without torch and the CLI
validates objective keys fast. docs/extending.md shows how to add one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from aepg.catalog import OBJECTIVES
from aepg.config import ObjectiveConfig
from aepg.schedules import Progress, Schedule, build_schedule

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class LossInputs:
    log_p: Tensor
    """Log-softmax over the logits the loss sees, (B, C)."""
    log_p_y: Tensor
    """Log-probability of the true class, (B,)."""
    a: float
    """The schedule's cross-entropy weight a_t (1.0 for objectives that are not annealed)."""


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


@OBJECTIVES.register("ce", display="CE")
class CrossEntropy(ObjectiveConfig):
    """Cross-entropy, -log p_y."""

    kind: Literal["ce"] = "ce"

    def per_sample(self, x: LossInputs) -> Tensor:
        return -x.log_p_y


@OBJECTIVES.register("epg", display="EPG")
class ExpectedPolicyGradient(ObjectiveConfig):
    """L_EPG = -p_y: the exact expected reward of the softmax policy, reward 1[a = y]."""

    kind: Literal["epg"] = "epg"

    def per_sample(self, x: LossInputs) -> Tensor:
        return -x.log_p_y.exp()


@OBJECTIVES.register("aepg", display="aEPG", traits=("annealed",))
class AnnealedEPG(ObjectiveConfig):
    """a_t CE + (1 - a_t) EPG, i.e. CE weighted per sample by a_t + (1 - a_t) p_y; a_t from ``schedule``."""

    kind: Literal["aepg"] = "aepg"

    def per_sample(self, x: LossInputs) -> Tensor:
        return -(x.a * x.log_p_y + (1.0 - x.a) * x.log_p_y.exp())


@OBJECTIVES.register("label_smoothing", display="label smoothing")
class LabelSmoothing(ObjectiveConfig):
    """Cross-entropy against (1 - eps) onehot + eps / K."""

    kind: Literal["label_smoothing"] = "label_smoothing"
    eps: float = Field(0.1, ge=0, lt=1)
    """Label smoothing."""

    def per_sample(self, x: LossInputs) -> Tensor:
        return -(1.0 - self.eps) * x.log_p_y - self.eps * x.log_p.mean(dim=-1)


@OBJECTIVES.register("focal", display="focal")
class Focal(ObjectiveConfig):
    """Focal loss, -(1 - p_y)^gamma log p_y."""

    kind: Literal["focal"] = "focal"
    gamma: float = Field(1.0, ge=0)
    """Focal loss exponent."""

    def per_sample(self, x: LossInputs) -> Tensor:
        # 1 - p_y via expm1 keeps precision near p_y = 1; the clamp keeps (1 - p)^gamma
        # differentiable at p = 1 for gamma < 1.
        one_minus_p = (-x.log_p_y.expm1()).clamp_min(1e-12)
        return -(one_minus_p**self.gamma) * x.log_p_y


@OBJECTIVES.register("confidence_penalty", display="confidence penalty")
class ConfidencePenalty(ObjectiveConfig):
    """CE - beta H(p): rewards confident outputs."""

    kind: Literal["confidence_penalty"] = "confidence_penalty"
    beta: float = Field(0.1, ge=0)
    """Weight of H(p)."""

    def per_sample(self, x: LossInputs) -> Tensor:
        return -x.log_p_y - self.beta * entropy(x.log_p)


@OBJECTIVES.register("entropy_penalty", display="entropy penalty")
class EntropyPenalty(ObjectiveConfig):
    """CE + beta H(p): penalises confident outputs."""

    kind: Literal["entropy_penalty"] = "entropy_penalty"
    beta: float = Field(0.1, ge=0)
    """Weight of H(p)."""

    def per_sample(self, x: LossInputs) -> Tensor:
        return -x.log_p_y + self.beta * entropy(x.log_p)


@OBJECTIVES.register("sce", display="symmetric CE")
class SymmetricCrossEntropy(ObjectiveConfig):
    """Symmetric cross-entropy (Wang et al., ICCV 2019) as SLCA++ computes it: ``a CE + b RCE`` with the
    reverse term ``RCE = -sum_k p_k log q_k`` over p clamped to [1e-7, 1] and the one-hot label q
    clamped to [1e-4, 1], i.e. ``-log(1e-4) (sum_k p_k - p_y)``: about 9.21 (1 - p_y), EPG's reward
    term at a fixed weight."""

    kind: Literal["sce"] = "sce"
    a: float = Field(1.0, ge=0)
    """The cross-entropy's weight (SLCA++'s ``sce_a``: 1.0 on CIFAR-100 and CUB-200, 0.5 on ImageNet-R)."""
    b: float = Field(0.1, ge=0)
    """The reverse term's weight (``sce_b``: 0.1 on CIFAR-100 and CUB-200, 0.5 on ImageNet-R)."""

    def per_sample(self, x: LossInputs) -> Tensor:
        p = x.log_p.exp().clamp(1e-7, 1.0)
        reverse = -math.log(1e-4) * (p.sum(dim=-1) - x.log_p_y.exp().clamp(1e-7, 1.0))
        return -self.a * x.log_p_y + self.b * reverse


def is_annealed(cfg: ObjectiveConfig) -> bool:
    """Whether the objective follows the ``schedule`` (its keys are inactive for the others)."""
    return OBJECTIVES.get(cfg.kind).has("annealed")


class Objective:
    """The mean of an objective's per-sample loss; annealed objectives read a_t from the schedule."""

    def __init__(self, cfg: ObjectiveConfig, schedule: Schedule | None = None):
        self.cfg = cfg
        self.schedule = schedule if is_annealed(cfg) else None

    def columns(self, start: int, stop: int) -> slice:
        """The logit columns the loss covers while training the classes [start, stop)."""
        return slice(start if self.cfg.logits == "local" else 0, stop)

    def weight(self, progress: Progress) -> float | None:
        return self.schedule(progress) if self.schedule else None

    def __call__(self, logits: Tensor, targets: Tensor, progress: Progress) -> ObjectiveOutput:
        inputs = self._inputs(logits, targets, progress)
        a_t = self.weight(progress)
        seen, seen_y = inputs.log_p.detach(), inputs.log_p_y.detach()
        return ObjectiveOutput(self.cfg.per_sample(inputs).mean(), a_t, entropy(seen).mean(), seen_y.exp().mean(),
                               -seen_y.mean())

    def per_sample(self, logits: Tensor, targets: Tensor, progress: Progress) -> Tensor:
        """Each sample's loss (what ``__call__`` averages)."""
        return self.cfg.per_sample(self._inputs(logits, targets, progress))

    def _inputs(self, logits: Tensor, targets: Tensor, progress: Progress) -> LossInputs:
        log_p = logits.log_softmax(dim=-1)
        a_t = self.weight(progress)
        return LossInputs(log_p, log_p.gather(1, targets.unsqueeze(1)).squeeze(1), 1.0 if a_t is None else a_t)


def build_objective(objective_cfg: ObjectiveConfig, schedule_cfg) -> Objective:
    return Objective(objective_cfg, build_schedule(schedule_cfg))
