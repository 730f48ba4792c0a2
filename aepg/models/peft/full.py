"""Full fine-tuning: the backbone itself trains, BatchNorm included (``batchnorm: train``).

Nothing is added to the backbone; the module only unfreezes it and tells the classifier to keep
its BatchNorm layers in train mode and to checkpoint the whole backbone (running statistics too).
"""

from __future__ import annotations

from torch import nn

from aepg.models.peft import FullMethod
from aepg.models.peft.base import MethodModule


class FullFineTuning(MethodModule):
    trains_backbone = True

    def __init__(self, backbone: nn.Module, batchnorm: str):
        super().__init__()
        self.trains_batchnorm = batchnorm == "train"
        backbone.requires_grad_(True)


def build_full(backbone: nn.Module, cfg: FullMethod, num_tasks: int) -> FullFineTuning:
    return FullFineTuning(backbone, cfg.batchnorm)
