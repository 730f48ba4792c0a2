"""LoRA and DoRA from HF peft, injected in place into a timm model on named targets.

Used for ``dora``, for ``lora`` when ``model.peft.target_modules`` is set, and for ``lora`` on
backbones without a fused ``attn.qkv`` (EfficientNet: its 1x1 convolutions in every block).
Targets are module-name suffixes (``attn.qkv``, ``conv_pw``) restricted to chosen ``blocks.N``.
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


def target_pattern(targets: list[str], blocks: list[int] | None) -> str:
    """A full-match regex over module names: ``blocks.<b>.[...].<target>`` or any ``<target>``."""
    names = "|".join(re.escape(t) for t in targets)
    if blocks is None:
        return rf"^(?:.*\.)?(?:{names})$"
    block_ids = "|".join(str(b) for b in sorted(set(blocks)))
    return rf"^blocks\.(?:{block_ids})\.(?:.*\.)?(?:{names})$"


def resolved_targets(family: str, module_names: list[str], cfg) -> tuple[str, list[str]]:
    """(pattern, matched module names) for ``cfg``; PeftError when nothing matches.

    Works from names alone, so the CLI can check a config against a backbone's cached layout.
    """
    if cfg.target_modules:
        targets = cfg.target_modules
    elif family in DEFAULT_TARGETS:
        targets = DEFAULT_TARGETS[family]
    else:
        raise PeftError(f"no default LoRA targets for {family}; set model.peft.target_modules "
                        "(module-name suffixes such as attn.qkv)")
    blocks = cfg.blocks if cfg.blocks is not None else DEFAULT_BLOCKS.get(family)
    pattern = target_pattern(targets, blocks)
    matched = [name for name in module_names if re.fullmatch(pattern, name)]
    if not matched:
        raise PeftError(f"model.peft.target_modules {targets} with blocks {blocks} match no module of {family}")
    return pattern, matched


def attach_peft_lora(backbone: nn.Module, cfg, dora: bool = False) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    names = [name for name, _ in backbone.named_modules()]
    pattern, _ = resolved_targets(type(backbone).__name__, names, cfg)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=pattern, use_dora=dora)
    return inject_adapter_in_model(lora, backbone)
