"""LoRA (and DoRA) from HF peft, injected in place into a timm model.

Targets are module-name suffixes (``attn.qkv``, ``conv_pw``) restricted to chosen ``blocks.N``;
defaults follow the backbone family: a ViT's attention and MLP linears in blocks 0-4 (the
paper), an EfficientNet's 1x1 convolutions in every block.
"""

from __future__ import annotations

import re

from torch import nn

from aepg.models.peft.base import PeftError

DEFAULT_TARGETS = {
    "VisionTransformer": ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"],
    "EfficientNet": ["conv_pw", "conv_pwl"],
}
DEFAULT_BLOCKS = {"VisionTransformer": [0, 1, 2, 3, 4]}


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


def attach_lora(backbone: nn.Module, cfg, dora: bool = False) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    targets = cfg.target_modules or default_targets(backbone)
    blocks = cfg.blocks if cfg.blocks is not None else DEFAULT_BLOCKS.get(type(backbone).__name__)
    pattern = target_pattern(targets, blocks)
    if not any(re.fullmatch(pattern, name) for name, _ in backbone.named_modules()):
        raise PeftError(f"model.peft.target_modules {targets} with blocks {blocks} match no module of {type(backbone).__name__}")
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=pattern, use_dora=dora)
    return inject_adapter_in_model(lora, backbone)
