"""The L2 anchor part's builder: imported only when a run builds its model."""

import torch

from aepg.models.contract import ActivatedPart, TaskData


class L2AnchorPart(ActivatedPart):
    """From the second task on, ``weight * sum((theta - anchor)^2)`` over the trained parameters,
    the anchor being their values at the end of the previous task (a buffer: checkpointed)."""

    def __init__(self, params, weight: float):
        super().__init__()
        self.params, self.weight = params, weight
        for i, p in enumerate(params):
            self.register_buffer(f"anchor_{i}", torch.zeros_like(p))

    def auxiliary_loss(self, batch=None):
        if not self.is_active or self.weight == 0:
            return 0.0
        return self.weight * sum(((p - getattr(self, f"anchor_{i}")) ** 2).sum() for i, p in enumerate(self.params))

    def end_task(self, task: int, data: TaskData) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.params):
                getattr(self, f"anchor_{i}").copy_(p)
        self.activate()


def build(cfg, model) -> L2AnchorPart:
    return L2AnchorPart([p for _, p in model.trainable_parameters()], cfg.weight)
