"""The classifier heads a method may ask for (``model.method.head``): a linear layer, or a cosine
classifier as MACIL and TUNA write theirs (the cosine between the normalised feature and each class's
normalised weights, scaled by s, without a bias)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CosineHead(nn.Module):
    """``scale * cos(feature, weight_c)`` per class c."""

    def __init__(self, in_features: int, out_features: int, scale: float):
        super().__init__()
        self.in_features, self.out_features, self.scale = in_features, out_features, scale
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.register_parameter("bias", None)

    def forward(self, features: Tensor) -> Tensor:
        return self.with_weights(features, self.weight)

    def with_weights(self, features: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return self.scale * F.linear(F.normalize(features, dim=-1), F.normalize(weight, dim=-1))


def build_head(kind: str, in_features: int, out_features: int, init_std: float, scale: float) -> nn.Module:
    """The head ``kind`` names, its weights drawn from N(0, init_std) and its bias (if any) zero."""
    head = CosineHead(in_features, out_features, scale) if kind == "cosine" else nn.Linear(in_features, out_features)
    nn.init.normal_(head.weight, std=init_std)
    if head.bias is not None:
        nn.init.zeros_(head.bias)
    return head
