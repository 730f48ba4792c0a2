"""Attach a parameter-efficient module to a frozen timm backbone in one call: ``attach_peft``.

One file per method. LoRA on a ViT is LAE's key/value LoRA (``lora.py``); HF peft serves LoRA
on named targets and DoRA (``peft_lora.py``); the adapters, prefix tuning, L2P, DualPrompt and
CODA-Prompt follow their reference code; LAE's online/offline pair wraps any of them
(``lae.py``, used by ``aepg.models.ContinualClassifier``). docs/methods.md lists every
remaining difference from the reference code.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from aepg.models.peft.adapter import build_adapter
from aepg.models.peft.adaptformer import build_adaptformer
from aepg.models.peft.base import PeftError, PeftModule, attach, is_vit, module_of
from aepg.models.peft.coda import build_coda
from aepg.models.peft.dualprompt import build_dualprompt
from aepg.models.peft.l2p import build_l2p
from aepg.models.peft.lora import build_kv_lora
from aepg.models.peft.peft_lora import attach_peft_lora
from aepg.models.peft.prefix import build_prefix

__all__ = ["KINDS", "PeftError", "PeftModule", "attach_peft", "lora_implementation", "module_of"]

# kind -> builder(backbone, cfg, num_tasks) returning a PeftModule
MODULES: dict[str, Callable] = {
    "adapter": build_adapter,
    "adaptformer": build_adaptformer,
    "prefix": build_prefix,
    "l2p": build_l2p,
    "dualprompt": build_dualprompt,
    "coda": build_coda,
}
KINDS = ("none", "lora", "dora", *MODULES)


def lora_implementation(cfg, has_fused_qkv: bool) -> str:
    """``kv-lora`` (LAE's, the ViT default) or ``hf-peft`` (named targets, DoRA, other families)."""
    if cfg.kind == "lora" and not cfg.target_modules and has_fused_qkv:
        return "kv-lora"
    return "hf-peft"


def attach_peft(backbone: nn.Module, cfg, num_tasks: int) -> nn.Module:
    """The frozen backbone with the configured PEFT module; only its parameters require grad."""
    backbone.requires_grad_(False)
    if cfg.kind == "none":
        return backbone
    if cfg.kind in ("lora", "dora"):
        if lora_implementation(cfg, is_vit(backbone)) == "kv-lora":
            return attach(backbone, build_kv_lora(backbone, cfg, num_tasks))
        return attach_peft_lora(backbone, cfg, dora=cfg.kind == "dora")
    if cfg.kind in MODULES:
        return attach(backbone, MODULES[cfg.kind](backbone, cfg, num_tasks))
    raise PeftError(f"unknown PEFT kind {cfg.kind!r}; choose one of {KINDS}")
