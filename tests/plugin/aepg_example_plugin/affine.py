"""The feature affine module: ``features * scale + shift`` on the backbone's output."""

import torch
from torch import nn

from aepg.models.peft.base import MethodModule


class FeatureAffine(MethodModule):
    def __init__(self, backbone: nn.Module, init_scale: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((backbone.num_features,), init_scale))
        self.shift = nn.Parameter(torch.zeros(backbone.num_features))
        backbone.register_forward_hook(self.transform)

    def transform(self, backbone: nn.Module, inputs, features: torch.Tensor) -> torch.Tensor:
        return features * self.scale + self.shift if self.enabled else features


def build(backbone: nn.Module, cfg, num_tasks: int) -> FeatureAffine:
    return FeatureAffine(backbone, cfg.init_scale)
