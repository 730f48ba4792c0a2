"""Attach a parameter-efficient module to a frozen timm backbone in one call: ``attach_peft``.

LoRA and DoRA come from HF peft; the adapter, prefix tuning, L2P, DualPrompt and CODA-Prompt
are written here for timm ViTs (no library serves them); LAE wraps any of them (see
``aepg.models.ContinualClassifier``).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from aepg.models.peft.adapter import build_adapter
from aepg.models.peft.base import PeftError, PeftModule, attach, module_of
from aepg.models.peft.lora import attach_lora
from aepg.models.peft.prompts import build_coda, build_dualprompt, build_l2p, build_prefix

__all__ = ["KINDS", "PeftError", "PeftModule", "attach_peft", "module_of"]

# kind -> builder(backbone, cfg, num_tasks) returning a PeftModule
MODULES: dict[str, Callable] = {
    "adapter": lambda backbone, cfg, num_tasks: build_adapter(backbone, cfg),
    "prefix": build_prefix,
    "l2p": build_l2p,
    "dualprompt": build_dualprompt,
    "coda": build_coda,
}
KINDS = ("none", "lora", "dora", *MODULES)


def attach_peft(backbone: nn.Module, cfg, num_tasks: int) -> nn.Module:
    """The frozen backbone with the configured PEFT module; only its parameters require grad."""
    backbone.requires_grad_(False)
    if cfg.kind == "none":
        return backbone
    if cfg.kind in ("lora", "dora"):
        return attach_lora(backbone, cfg, dora=cfg.kind == "dora")
    if cfg.kind in MODULES:
        return attach(backbone, MODULES[cfg.kind](backbone, cfg, num_tasks))
    raise PeftError(f"unknown PEFT kind {cfg.kind!r}; choose one of {KINDS}")
