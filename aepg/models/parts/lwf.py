"""Learning without Forgetting (Li and Hoiem, ECCV 2016), as PyCIL's and LibContinual's ``LwF``
write it for class-incremental learning (``core/model/lwf.py``: ``lamda = 3``, ``T = 2``).

When a task after the first starts, the model's trained parameters (the method's and the head's)
are kept as the previous model. Every step of that task adds
``weight * KD(new[:, :start], old[:, :start])`` with
``KD(new, old) = -sum(softmax(old / T) * log_softmax(new / T)) / batch``: ``old`` are the previous
model's logits (in eval mode, without gradients) and ``new`` the current model's, both over the
classes seen before the task, on the step's inputs. As in the references there is no factor T^2.

The previous model's logits come from a second forward with the kept tensors in place of the
parameters (``torch.func.functional_call``): nothing is copied into the model, so the step's
autograd graph stays intact, and the kept tensors are checkpointed with the part.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from aepg.models.contract import ActivatedPart, TaskData, TrainingBatch


class LearningWithoutForgetting(ActivatedPart):
    def __init__(self, params: list[tuple[str, nn.Parameter]], weight: float, temperature: float):
        super().__init__()
        self.names = [name for name, _ in params]
        self.params = [p for _, p in params]
        self.weight, self.temperature = weight, temperature
        for i, p in enumerate(self.params):
            self.register_buffer(f"previous_{i}", torch.zeros_like(p))

    def previous(self) -> dict[str, Tensor]:
        return {name: getattr(self, f"previous_{i}") for i, name in enumerate(self.names)}

    @torch.no_grad()
    def prepare_task(self, task: int, data: TaskData) -> None:
        """From task 1 on, the model as the task finds it becomes the previous model."""
        if task >= 1:
            for p, kept in zip(self.params, self.previous().values()):
                kept.copy_(p)
            self.activate()

    def auxiliary_loss(self, batch: TrainingBatch | None = None) -> Tensor | float:
        if batch is None or not self.is_active or self.weight == 0 or batch.task_start == 0:
            return 0.0
        old_classes = slice(0, batch.task_start)
        new = batch.model.head(batch.features.float())[:, old_classes]
        model, was_training = batch.model, batch.model.training
        model.eval()
        try:
            with torch.no_grad():
                # tie_weights off: the method's module is reachable by two names (``method_module`` and
                # ``backbone.aepg_peft``), and tying them would not hand the model its own parameters back.
                old = functional_call(model, self.previous(), (batch.inputs, old_classes), {"rules": False},
                                      tie_weights=False).float()
        finally:
            model.train(was_training)
        return self.weight * distillation(new, old, self.temperature)


def distillation(new: Tensor, old: Tensor, temperature: float) -> Tensor:
    """-sum(softmax(old / T) * log_softmax(new / T)) / batch (PyCIL's and LibContinual's ``_KD_loss``)."""
    return -(torch.softmax(old / temperature, dim=1) * torch.log_softmax(new / temperature, dim=1)).sum() / len(new)


def build_lwf(cfg, model) -> LearningWithoutForgetting:
    """LwF over the method's and the head's parameters (``aepg.models.parts.LwFPart``)."""
    return LearningWithoutForgetting(model.trainable_parameters(), cfg.weight, cfg.temperature)
