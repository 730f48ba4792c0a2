"""Task-specific and universal parameters with entropy-based selection, as TUNA's authors' code does
it (Wang et al., ICCV 2025; its ViT-B/16 release: ``models/tuna.py`` ``_eval_cnn``, ``orth_loss``;
``backbone/vit_tuna.py`` ``adapter_update``, ``merge``, ``emr_merge``).

The method's parameters train on task after task as usual. When a task ends they are kept as the
task's own (the checkpoint holds every task's). From the second task on a prediction runs each task's
parameters over the input; per input, the softmax over the seen classes with the least entropy
``-sum p log(p + 1e-10)`` is chosen and added to the softmax of the universal parameters, and the
prediction is the argmax of the sum (the rule returns its log). The universal parameters are those as
trained (TUNA's code) or the EMR merge of every task's: per entry the sign of their mean (+1 where it
is positive, else -1) times the largest magnitude among the tasks' entries of that sign.

TUNA's orthogonality term: while task t trains, ``orth_weight exp(-(t + 1))`` times the sum over the
earlier tasks of the mean over the adapted blocks of ``|mean(n(U) n(U_i)^T)|``, U the block's
up-projection (d x r, its rows normalised), U_i that task's.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aepg.models.contract import MethodPart, TaskData, TrainingBatch, swapped


class TaskSelection(MethodPart):
    def __init__(self, params: list[nn.Parameter], up_projections: list[nn.Parameter], cfg):
        super().__init__()
        self.cfg = cfg
        self.params = params  # not submodules: the model checkpoints them
        index = {id(p): i for i, p in enumerate(params)}
        self.up_index = [index[id(p)] for p in up_projections]
        for i, p in enumerate(params):
            self.register_buffer(f"tasks_{i}", torch.zeros(0, *p.shape))
            if cfg.universal == "merged":
                self.register_buffer(f"merged_{i}", torch.zeros_like(p))
        self.task = 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for i in range(len(self.params)):  # one row per task ended
            kept = state_dict.get(f"{prefix}tasks_{i}")
            if kept is not None:
                setattr(self, f"tasks_{i}", torch.zeros_like(kept, device=self.params[i].device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def kept(self, task: int) -> list[Tensor]:
        return [getattr(self, f"tasks_{i}")[task] for i in range(len(self.params))]

    @property
    def tasks_ended(self) -> int:
        return len(self.tasks_0) if self.params else 0

    def begin_task(self, task: int) -> None:
        self.task = task

    def auxiliary_loss(self, batch: TrainingBatch | None = None) -> Tensor | float:
        if not self.cfg.orth_weight or self.task == 0 or batch is None:
            return 0.0
        current = [self.params[i] for i in self.up_index]
        if not current[0].requires_grad:  # a head-only step
            return 0.0
        earlier = [[getattr(self, f"tasks_{i}")[t] for i in self.up_index] for t in range(self.task)]
        decay = math.exp(-(self.task + 1))
        return self.cfg.orth_weight * decay * orthogonality(current, earlier)

    @torch.no_grad()
    def end_task(self, task: int, data: TaskData) -> None:
        for i, p in enumerate(self.params):
            setattr(self, f"tasks_{i}", torch.cat([getattr(self, f"tasks_{i}"), p.detach()[None]]))
            if self.cfg.universal == "merged":
                getattr(self, f"merged_{i}").copy_(emr_merged(getattr(self, f"tasks_{i}")))

    def predict(self, logits: Tensor, features: Tensor, columns: slice, again: Callable[[], Tensor]) -> Tensor:
        if self.tasks_ended < 2:
            return logits
        specific = []
        for t in range(self.tasks_ended):
            with swapped(self.params, self.kept(t)):
                specific.append(again())
        if self.cfg.universal == "merged":
            with swapped(self.params, [getattr(self, f"merged_{i}") for i in range(len(self.params))]):
                logits = again()
        return (F.softmax(logits, dim=1) + F.softmax(least_entropy(torch.stack(specific)), dim=1)).log()


def least_entropy(logits: Tensor) -> Tensor:
    """Per input (dim 1), the logits among the passes (dim 0) whose softmax has the least entropy."""
    probs = F.softmax(logits, dim=-1)
    entropy = -(probs * torch.log(probs + 1e-10)).sum(dim=-1)
    chosen = entropy.argmin(dim=0)
    return logits[chosen, torch.arange(logits.shape[1], device=logits.device)]


def emr_merged(tasks: Tensor) -> Tensor:
    """EMR's unified vector of the tasks' tensors (dim 0): the sign of their mean (+1 where it is
    positive, else -1) times the largest magnitude among the entries of that sign."""
    sign = torch.where(tasks.mean(dim=0) > 0, 1.0, -1.0).to(tasks.dtype)
    agreeing = (tasks * sign) > 0
    return (tasks * agreeing).abs().amax(dim=0) * sign


def orthogonality(current: list[Tensor], earlier: list[list[Tensor]]) -> Tensor:
    """Sum over the earlier tasks of the mean over the blocks of ``|mean(n(U) n(U_i)^T)|``."""
    total = current[0].new_zeros(())
    for task in earlier:
        for now, then in zip(current, task, strict=True):
            total = total + (F.normalize(now, p=2, dim=1) @ F.normalize(then, p=2, dim=1).T).mean().abs() / len(current)
    return total


def build_selection(cfg, model) -> TaskSelection:
    """TUNA's selection over the model's method parameters (``aepg.models.parts.TaskSelectionPart``)."""
    module = model.method_module
    ups = module.up_projections() if cfg.orth_weight else []
    return TaskSelection(model.method_parameters(), ups, cfg)
