"""Attach a parameter-efficient module to a frozen timm backbone in one call: ``attach_method``.

The method's catalogue entry (``aepg.models.peft``) names its builder,
``build(backbone, cfg, num_tasks)``, which returns a ``MethodModule`` (attached as
``backbone.aepg_peft``) or changes the backbone in place and returns None (HF peft's LoRA and
DoRA). LAE's online/offline pair wraps any of them (``lae.py``, used by
``aepg.models.classifier``). docs/methods.md lists every remaining difference from the
reference code.
"""

from __future__ import annotations

from torch import nn

from aepg.catalog import METHODS
from aepg.config import MethodConfig
from aepg.config.renames import old_names
from aepg.models import facts as backbone_facts
from aepg.models.peft import check
from aepg.models.peft.base import attach

__getattr__ = old_names(__name__)


def attach_method(backbone: nn.Module, cfg: MethodConfig, num_tasks: int) -> nn.Module:
    """The frozen backbone with the configured PEFT module; only its parameters require grad.

    Raises MethodError (from the same checks the CLI runs) when the settings do not fit."""
    backbone.requires_grad_(False)
    check(cfg, backbone_facts.of_model(backbone), num_tasks)
    entry = METHODS.get(cfg.kind)
    if entry.builder is None:
        return backbone
    module = entry.load()(backbone, cfg, num_tasks)
    return attach(backbone, module) if module is not None else backbone
