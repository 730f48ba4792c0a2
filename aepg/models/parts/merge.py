"""Incremental merging of the method's parameters, as LCA's reference code does it (tungts1101/LCA:
``helper.py`` ``trim``, ``merge_task_vectors``, ``merge``; ``lca.py`` ``Learner.merge`` with
``train_merge_incremental``).

Each task trains from the merged parameters of the tasks before it. When it ends, the task vectors
of the merged parameters it started from and of the parameters it trained, both relative to the
parameters as built (the pretrained backbone with its fresh module), are merged by ``rule`` and the
parameters become ``base + coefficient * merged``. TIES (LCA's default): each vector keeps its
``topk`` percent largest magnitudes per tensor, the sign of the summed signs is elected, and the
entries whose sign agrees are averaged. The first task's parameters stay as trained.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aepg.models.contract import MethodPart, TaskData


def trimmed(vector: Tensor, topk: float) -> Tensor:
    """``vector`` with all but its ``topk`` percent largest magnitudes set to 0 (ties at the
    threshold kept), as LCA's ``trim``."""
    flat = vector.reshape(-1)
    keep = max(1, int(len(flat) * topk / 100))
    threshold = torch.topk(flat.abs(), keep, largest=True, sorted=True).values[-1]
    return torch.where(flat.abs() >= threshold, flat, torch.zeros((), dtype=vector.dtype)).view_as(vector)


def merged_vector(vectors: list[Tensor], rule: str, topk: float) -> Tensor:
    """The task vectors of one tensor merged by ``rule``."""
    stacked = torch.stack(vectors)
    if rule == "ties":
        stacked = torch.stack([trimmed(v, topk) for v in vectors])
        signs = torch.sign(stacked)
        agree = signs == torch.sign(signs.sum(dim=0))
        return torch.where(agree, stacked, torch.zeros((), dtype=stacked.dtype)).sum(dim=0) / agree.sum(dim=0).clamp(min=1)
    if rule == "max":
        return stacked.max(dim=0).values
    if rule == "min":
        return stacked.min(dim=0).values
    return torch.gather(stacked, 0, stacked.abs().argmax(dim=0, keepdim=True)).squeeze(0)  # max_abs


class IncrementalMerge(MethodPart):
    def __init__(self, parameters: list[nn.Parameter], cfg):
        super().__init__()
        self.cfg = cfg
        self.merged_parameters = parameters  # not submodules: the model checkpoints them
        for i, p in enumerate(parameters):
            self.register_buffer(f"base_{i}", p.detach().clone())
            self.register_buffer(f"start_{i}", p.detach().clone())

    def prepare_task(self, task: int, data: TaskData) -> None:
        """The merged parameters the task starts from (LCA's ``merged_{t-1}``)."""
        with torch.no_grad():
            for i, p in enumerate(self.merged_parameters):
                getattr(self, f"start_{i}").copy_(p)

    def end_task(self, task: int, data: TaskData) -> None:
        if task == 0:
            return
        cfg = self.cfg
        with torch.no_grad():
            for i, p in enumerate(self.merged_parameters):
                base, start = getattr(self, f"base_{i}"), getattr(self, f"start_{i}")
                vector = merged_vector([start - base, p.detach() - base], cfg.rule, cfg.topk)
                p.copy_(base + cfg.coefficient * vector)


def build_merge(cfg, model) -> IncrementalMerge:
    """Incremental merging of the model's method parameters (``aepg.models.parts.MergePart``)."""
    return IncrementalMerge(model.method_parameters(), cfg)
