"""The continual classifier: frozen timm backbone + PEFT module + one linear head over all classes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.data import resolve_data_config
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from aepg.models.backbones import WeightsError, create_backbone
from aepg.models.peft import PeftError, attach_peft

__all__ = ["ContinualClassifier", "InputSpec", "PeftError", "WeightsError", "build_model"]


@dataclass(frozen=True)
class InputSpec:
    """What the backbone expects: square image size and normalisation."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class ContinualClassifier(nn.Module):
    """Logits over every class of the benchmark; the trainer slices the columns it needs.

    Only the PEFT parameters and the head train. Normalisation statistics of the frozen
    backbone stay fixed: ``train()`` keeps batch-norm layers in eval mode.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, head_init_std: float):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        nn.init.normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)
        self.peft_names = [f"backbone.{n}" for n, p in backbone.named_parameters() if p.requires_grad]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> "ContinualClassifier":
        super().train(mode)
        for module in self.backbone.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
        return self

    def peft_parameters(self) -> list[nn.Parameter]:
        params = dict(self.named_parameters())
        return [params[n] for n in self.peft_names]

    def set_peft_trainable(self, trainable: bool) -> None:
        """Head-only phases switch the PEFT parameters off so backward stops at the head."""
        for p in self.peft_parameters():
            p.requires_grad_(trainable)

    def trainable_names(self) -> list[str]:
        return self.peft_names + ["head.weight", "head.bias"]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """PEFT and head weights: all a checkpoint needs, since the backbone never changes."""
        state = self.state_dict()
        return {name: state[name].detach().cpu().clone() for name in self.trainable_names()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_names())
        if set(state) != expected:
            raise ValueError(f"trainable state mismatch: missing {sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
        self.load_state_dict(state, strict=False)

    def parameter_counts(self) -> dict[str, int]:
        peft = sum(p.numel() for p in self.peft_parameters())
        head = sum(p.numel() for p in self.head.parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"params_peft": peft, "params_head": head, "params_trainable": peft + head, "params_total": total}


def build_model(cfg, num_classes: int) -> tuple[ContinualClassifier, InputSpec]:
    """The model a ``ModelConfig`` describes, and the input its backbone expects."""
    backbone = create_backbone(cfg.backbone, cfg.weights, cfg.image_size)
    data = resolve_data_config({}, model=backbone)
    spec = InputSpec(cfg.image_size or data["input_size"][-1], tuple(data["mean"]), tuple(data["std"]))
    backbone = attach_peft(backbone, cfg.peft)
    return ContinualClassifier(backbone, num_classes, cfg.head_init_std), spec
