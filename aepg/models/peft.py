"""Attach a parameter-efficient module to a frozen timm backbone in one call.

LoRA comes from HF peft, injected in place into the timm model. Targets are module-name
suffixes (``attn.qkv``, ``conv_pw``) restricted to chosen ``blocks.N``; defaults follow the
backbone family: a ViT's attention and MLP linears, an EfficientNet's 1x1 convolutions.
"""

from __future__ import annotations

import re

from torch import nn

DEFAULT_TARGETS = {
    "VisionTransformer": ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"],
    "EfficientNet": ["conv_pw", "conv_pwl"],
}


class PeftError(ValueError):
    """The PEFT settings do not fit the backbone."""


def default_targets(backbone: nn.Module) -> list[str]:
    family = type(backbone).__name__
    if family not in DEFAULT_TARGETS:
        raise PeftError(
            f"no default LoRA targets for {family}; set model.peft.target_modules "
            "(module-name suffixes such as attn.qkv)"
        )
    return DEFAULT_TARGETS[family]


def target_pattern(targets: list[str], blocks: list[int] | None) -> str:
    """A full-match regex over module names: ``blocks.<b>.[...].<target>`` or any ``<target>``."""
    names = "|".join(re.escape(t) for t in targets)
    if blocks is None:
        return rf"^(?:.*\.)?(?:{names})$"
    block_ids = "|".join(str(b) for b in sorted(set(blocks)))
    return rf"^blocks\.(?:{block_ids})\.(?:.*\.)?(?:{names})$"


def attach_lora(backbone: nn.Module, cfg) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    pattern = target_pattern(cfg.target_modules or default_targets(backbone), cfg.blocks)
    if not any(re.fullmatch(pattern, name) for name, _ in backbone.named_modules()):
        raise PeftError(
            f"model.peft.target_modules {cfg.target_modules or default_targets(backbone)} with blocks "
            f"{cfg.blocks} match no module of {type(backbone).__name__}"
        )
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=pattern)
    return inject_adapter_in_model(lora, backbone)


def attach_peft(backbone: nn.Module, cfg) -> nn.Module:
    """The backbone with the configured PEFT module; only the PEFT parameters require grad."""
    backbone.requires_grad_(False)
    if cfg.kind == "none":
        return backbone
    if cfg.kind == "lora":
        return attach_lora(backbone, cfg)
    raise PeftError(f"unknown PEFT kind {cfg.kind!r}")
