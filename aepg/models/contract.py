"""The contract between the trainer and a training method's parts: its PEFT module (if any) and the
parts of ``model.method.parts`` (LAE's pair, EWC, LwF, a plugin's). The classifier calls each part's
hooks in turn and knows none of them by name; the trainer knows none of them at all.

Life cycle, per task: ``begin_task``; ``prepare_task`` with the task's context (``TaskData``: the
model, the objective and the task's unaugmented training images), once, before the first epoch;
``trains`` (a part may skip a task's training); then every step: ``auxiliary_loss`` with the step's
``TrainingBatch`` (its inputs, labels, logits and features with gradients, and the step's optimiser),
``transform_gradients``, ``after_step``; then ``end_task`` with the task's context, before the
task's evaluation; at test time ``predict`` rewrites the logits.

Gradients. A step computes ``loss = objective + sum of every part's auxiliary_loss`` and calls
``backward`` once: a part never calls ``backward`` or steps an optimiser itself, and its loss term
reaches exactly the parameters that train in the current phase. Those are the method's parameters
(``frozen_parameters`` excluded: they have ``requires_grad`` off for the task, so they get no
gradient and no weight decay) and the head's; in a task's head-only epochs, the head's alone (the
backbone runs without an autograd graph). ``transform_gradients`` then sees each trained
parameter's ``.grad`` as backward left it (under fp16, already unscaled), and may change it in place
(project it, zero it) before gradient clipping and the optimiser's step; ``after_step`` sees the
parameters after the step (an EMA of them, say). Gradients from the step's parts add up in the
order the parts run, and none is read by another part.

Refusals: a method's config may refuse a part, and a part's config a method, both in their
entry's ``problems(cfg)`` (``aepg.config``), before anything is built.

Precision: mixed precision (``train.precision``) covers the training and evaluation forwards only.
Every hook runs with autocast off: ``TaskData.features()`` are float32 (or the dtype asked for),
computed with autocast off, so covariances, Gram matrices, ridge solves, prototypes and bases are
never built from bf16 or fp16 activations; ``predict`` gets float32 logits and features, with
autocast off. A part that computes its statistics from its own forward passes does them inside
these hooks, where the rule already holds.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor, nn


class TaskData(Protocol):
    """The context of a task's hooks (``prepare_task``, ``end_task``): the model, the objective and
    the task's training images as unaugmented model inputs on the device."""

    start: int
    """The task's first class (its labels are ``start`` to ``stop - 1``)."""
    stop: int
    model: nn.Module
    """The classifier (``aepg.models.classifier.ContinualClassifier``, not a DDP wrapper):
    ``backbone``, ``head``, ``head_logits(x, columns)`` (a forward with gradients and without
    prediction rules), ``trainable_parameters()``."""
    columns: slice
    """The head's columns the objective covers while this task trains."""

    def loss(self, logits: Tensor, labels: Tensor, start: int | None = None, reduction: str = "mean") -> Tensor:
        """The run's objective on ``logits`` for ``labels`` (dataset labels), as it stands at the
        task's last step (a_t at its end for annealed objectives); the logits' first column is class
        ``start`` (by default ``columns.start``: logits over ``columns``); ``reduction="none"``: each
        sample's loss."""

    def generator(self, *salt: int) -> torch.Generator:
        """A CPU generator seeded from the run's seed, the task and ``salt``: the same draws on
        every worker, and after a resume as in the uninterrupted run."""

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(inputs, labels) batches over the task's training images; every worker sees its shard."""

    def features(self, dtype: torch.dtype = torch.float32) -> Iterator[tuple[Tensor, Tensor]]:
        """(backbone features, labels) of the same batches, computed in eval mode without
        gradients by the backbone with its module as it is now (its hooks see every input), with
        autocast off whatever ``train.precision`` says; the features as ``dtype`` (float64 where a
        method's reference computes in it)."""

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over the workers (each saw its shard); itself with one worker."""


@dataclass
class TrainingBatch:
    """One training step as ``auxiliary_loss`` sees it, after the forward."""

    inputs: Tensor
    """The model inputs (augmented)."""
    labels: Tensor
    """Labels relative to ``columns.start``."""
    logits: Tensor
    """The forward's logits over ``columns`` (float32, with gradients)."""
    features: Tensor
    """The backbone's features of that forward (with gradients): ``model.head(features)`` gives the
    logits of any other columns at no extra forward."""
    columns: slice
    task_start: int
    """The first class of the task being trained: classes before it are the earlier tasks'."""
    model: nn.Module
    """The classifier (not a DDP wrapper), e.g. for a forward with other parameters
    (``torch.func.functional_call(model, tensors, (inputs, columns), {"rules": False})``)."""
    optimizer: torch.optim.Optimizer | None = None
    """The optimiser of the step's phase (a fresh one per phase): its parameter groups and state,
    e.g. for a part whose ``transform_gradients`` or ``after_step`` needs the step's rate."""


@contextmanager
@torch.no_grad()
def swapped(params: list[nn.Parameter], values: list[Tensor]):
    """The parameters hold ``values`` inside the block and their own again after it (a forward
    with other parameters that keeps the model whole: LAE's offline copy, a kept old model)."""
    own = [p.detach().clone() for p in params]
    for p, value in zip(params, values, strict=True):
        p.copy_(value)
    try:
        yield
    finally:
        for p, kept in zip(params, own):
            p.copy_(kept)


def full_precision(device: torch.device):
    """Autocast off on ``device`` (and so in every hook a forward inside it reaches): for statistics
    that bf16 or fp16 would move."""
    return torch.autocast(device.type, enabled=False)


class MethodPart(nn.Module):
    """One participant in a method's life cycle (a PEFT module, or a part such as LAE's
    online/offline pair); see the module's docstring for the order of the hooks and what their
    gradients do.

    ``predicts_from_exact_features``: its prediction rule is a closed-form head on the features
    (RanPAC's), so the test-time forward that feeds it runs in float32 with autocast off."""

    predicts_from_exact_features = False

    def set_num_classes(self, num_classes: int) -> None:
        """Called once, when the classifier is built, with its head's size (for methods with their
        own prediction rule, such as a closed-form head)."""

    def begin_task(self, task: int) -> None:
        """Called before training task ``task`` (and again when a run resumes inside it)."""

    def trains(self, task: int) -> bool:
        """Whether task ``task`` is trained at all (RanPAC trains the first task only); if not, the
        trainer goes from ``prepare_task`` straight to ``end_task``."""
        return True

    def prepare_task(self, task: int, data: TaskData) -> None:
        """Called once before task ``task``'s first epoch, after ``begin_task``, with its training
        data (e.g. to build the task's parameters from it); not when a run resumes inside it."""

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The part's parameters that must not train in the current task (earlier tasks' parts)."""
        return []

    def auxiliary_loss(self, batch: TrainingBatch | None = None) -> Tensor | float:
        """A loss term the part adds to the objective at a training step, before the step's one
        backward: from its last forward (key matching, orthogonality) or from the step's ``batch``
        (a penalty, a distillation)."""
        return 0.0

    def transform_gradients(self) -> None:
        """Called after backward, before clipping and each optimiser step (e.g. to project gradients)."""

    def after_step(self) -> None:
        """Called after each optimiser step."""

    def end_task(self, task: int, data: TaskData) -> None:
        """Called once a task's training is done, before its evaluation, with its training data
        (e.g. to update a subspace or class prototypes)."""

    def predict(self, logits: Tensor, features: Tensor, columns: slice, again: Callable[[], Tensor]) -> Tensor:
        """The logits a prediction at test time uses over the head's ``columns``: from ``logits``
        (those columns, as the parts before this one left them) and the backbone's ``features``,
        both float32, with autocast off; ``again()`` recomputes ``logits`` from the same input, for
        rules that ensemble passes (LAE), in float32 too. Default: ``logits``."""
        return logits


class ActivatedPart(MethodPart):
    """A part that acts from some task on (LAE's pair, EWC, LwF): an ``active`` flag checkpointed
    with its state, and a host copy of it, so that no step waits on the device to read it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))
        self.is_active = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.is_active = bool(self.active)

    def activate(self) -> None:
        self.active.fill_(True)
        self.is_active = True
