"""Online EWC (Schwarz et al., "Progress & Compress", ICML 2018), as Avalanche's
``EWCPlugin(mode="online")`` computes it (ContinualAI/avalanche, ``training/plugins/ewc.py``).

After each task: with the model in eval mode, for every batch of the task's training data the
squared gradient of the batch's mean loss (the run's objective, as at the task's end) with
respect to each trained parameter (the method's and the head's); their mean over the batches is
the task's importance F_new, and ``F = decay * F + F_new`` (F = F_new after the first task). The
parameters as they are then are the anchor. Every later step adds
``weight * sum(F * (theta - anchor)^2)``, with no factor 1/2, as Avalanche writes it.

Precision: the gradients are taken with autocast off, so F is never built from bf16 activations.
Several workers: each sums its shard's squared gradients and counts its batches; both are summed
over the workers before dividing, so every worker holds the same F.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aepg.models.contract import ActivatedPart, TaskData, TrainingBatch, full_precision


class OnlineEWC(ActivatedPart):
    def __init__(self, params: list[nn.Parameter], weight: float, decay: float):
        super().__init__()
        self.params, self.weight, self.decay = params, weight, decay
        for i, p in enumerate(params):
            self.register_buffer(f"importance_{i}", torch.zeros_like(p))
            self.register_buffer(f"anchor_{i}", torch.zeros_like(p))

    def importances(self) -> list[Tensor]:
        return [getattr(self, f"importance_{i}") for i in range(len(self.params))]

    def anchors(self) -> list[Tensor]:
        return [getattr(self, f"anchor_{i}") for i in range(len(self.params))]

    def auxiliary_loss(self, batch: TrainingBatch | None = None) -> Tensor | float:
        if not self.is_active or self.weight == 0:
            return 0.0
        penalty = sum(((p - anchor) ** 2 * importance).sum()
                      for p, importance, anchor in zip(self.params, self.importances(), self.anchors()))
        return self.weight * penalty

    def end_task(self, task: int, data: TaskData) -> None:
        new = self.task_importances(data)
        with torch.no_grad():
            for p, importance, anchor, fresh in zip(self.params, self.importances(), self.anchors(), new):
                importance.mul_(self.decay if self.is_active else 0.0).add_(fresh)
                anchor.copy_(p)
        self.activate()

    def task_importances(self, data: TaskData) -> list[Tensor]:
        """The task's F_new: the mean over its batches of each parameter's squared batch gradient."""
        model = data.model
        trained = [i for i, p in enumerate(self.params) if p.requires_grad]
        squares = [torch.zeros_like(p) for p in self.params]
        batches = 0
        was_training = model.training
        model.eval()
        try:
            for x, y in data.batches():
                with torch.enable_grad(), full_precision(x.device):
                    loss = data.loss(model.head_logits(x, data.columns).float(), y)
                    grads = torch.autograd.grad(loss, [self.params[i] for i in trained], allow_unused=True)
                for i, grad in zip(trained, grads):
                    if grad is not None:
                        squares[i] += grad.detach() ** 2
                batches += 1
        finally:
            model.train(was_training)
        count = data.sum(torch.tensor(float(batches), device=squares[0].device if squares else None))
        return [data.sum(square) / count.clamp(min=1) for square in squares]


def build_ewc(cfg, model) -> OnlineEWC:
    """EWC over the method's and the head's parameters (``aepg.models.parts.EWCPart``)."""
    return OnlineEWC([p for _, p in model.trainable_parameters()], cfg.weight, cfg.decay)
