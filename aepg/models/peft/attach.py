"""Attach a parameter-efficient module to a frozen timm backbone in one call: ``attach_peft``.

One file per method. LoRA on a ViT is LAE's key/value LoRA (``lora.py``); HF peft serves LoRA
on named targets and DoRA (``peft_lora.py``); the adapters, prefix tuning, L2P, DualPrompt and
CODA-Prompt follow their reference code; LAE's online/offline pair wraps any of them
(``lae.py``, used by ``aepg.models.classifier``). docs/methods.md lists every remaining
difference from the reference code.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from aepg.models import facts as backbone_facts
from aepg.models.peft import check, implementation
from aepg.models.peft.adapter import build_adapter
from aepg.models.peft.adaptformer import build_adaptformer
from aepg.models.peft.base import attach
from aepg.models.peft.coda import build_coda
from aepg.models.peft.dualprompt import build_dualprompt
from aepg.models.peft.l2p import build_l2p
from aepg.models.peft.lora import build_kv_lora
from aepg.models.peft.peft_lora import attach_peft_lora
from aepg.models.peft.prefix import build_prefix

# implementation -> builder(backbone, cfg, num_tasks) returning a PeftModule
MODULES: dict[str, Callable] = {
    "kv-lora": build_kv_lora,
    "adapter": build_adapter,
    "adaptformer": build_adaptformer,
    "prefix": build_prefix,
    "l2p": build_l2p,
    "dualprompt": build_dualprompt,
    "coda": build_coda,
}


def attach_peft(backbone: nn.Module, cfg, num_tasks: int) -> nn.Module:
    """The frozen backbone with the configured PEFT module; only its parameters require grad.

    Raises PeftError (from the same checks the CLI runs) when the settings do not fit."""
    backbone.requires_grad_(False)
    facts = backbone_facts.of_model(backbone)
    check(cfg, facts, num_tasks)
    kind = implementation(cfg, facts)
    if kind == "none":
        return backbone
    if kind == "hf-peft":
        return attach_peft_lora(backbone, cfg, facts)
    return attach(backbone, MODULES[kind](backbone, cfg, num_tasks))
