"""Parameter-efficient modules for frozen timm backbones, one file per method, attached in one
call by ``aepg.models.peft.attach.attach_peft``.

This file holds what can be decided without building anything: the kinds, which blocks and
modules each adapts, and the checks a backbone must pass. They work from a backbone's facts
(``aepg.models.facts``), so the CLI runs them before importing torch, and ``attach_peft`` runs
the same checks on the live backbone.
"""

from __future__ import annotations

import re

KINDS = ("none", "lora", "dora", "adapter", "adaptformer", "prefix", "l2p", "dualprompt", "coda")
VIT_ONLY = ("adapter", "adaptformer", "prefix", "l2p", "dualprompt", "coda")
DEFAULT_BLOCKS = [0, 1, 2, 3, 4]
"""The paper's blocks 0-4, as far as the ViT goes."""
DUALPROMPT_GENERAL_BLOCKS = (0, 1)
HF_DEFAULT_TARGETS = {
    "VisionTransformer": ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"],
    "EfficientNet": ["conv_pw", "conv_pwl"],
}
HF_DEFAULT_BLOCKS = {"VisionTransformer": DEFAULT_BLOCKS}


# The PEFT keys each implementation reads (the others are inactive and not logged as params).
KEYS = {
    "none": (),
    "kv-lora": ("rank", "blocks"),
    "hf-peft": ("rank", "alpha", "dropout", "target_modules", "blocks"),
    "adapter": ("bottleneck", "blocks"),
    "adaptformer": ("bottleneck", "adapter_scale", "adapter_dropout", "blocks"),
    "prefix": ("length", "blocks"),
    "l2p": ("length", "pool_size", "top_k", "pull_weight", "batchwise_prompt"),
    "dualprompt": ("length", "g_length", "pull_weight", "blocks"),
    "coda": ("length", "pool_size", "ortho_weight", "blocks"),
}


class PeftError(ValueError):
    """The PEFT settings do not fit the backbone."""


def lora_implementation(cfg, fused_qkv: bool) -> str:
    """``kv-lora`` (LAE's, the ViT default) or ``hf-peft`` (named targets, DoRA, other families)."""
    if cfg.kind == "lora" and not cfg.target_modules and fused_qkv:
        return "kv-lora"
    return "hf-peft"


def implementation(cfg, facts: dict) -> str:
    """What runs for ``cfg`` on this backbone: the kind, or for LoRA which implementation."""
    if cfg.kind in ("lora", "dora"):
        return lora_implementation(cfg, facts["fused_qkv"])
    return cfg.kind


def adapted_blocks(blocks: list[int] | None, depth: int) -> list[int]:
    if blocks is None:
        return [b for b in DEFAULT_BLOCKS if b < depth]
    chosen = sorted(set(blocks))
    if any(b >= depth for b in chosen):
        raise PeftError(f"model.peft.blocks {chosen} exceed the backbone's {depth} blocks")
    return chosen


def dualprompt_blocks(blocks: list[int]) -> tuple[list[int], list[int]]:
    """(general, expert) blocks: the general prompts take blocks 0-1, the experts the rest."""
    general = [b for b in blocks if b in DUALPROMPT_GENERAL_BLOCKS] or blocks[:1]
    return general, [b for b in blocks if b not in general]


def target_pattern(targets: list[str], blocks: list[int] | None) -> str:
    """A full-match regex over module names: ``blocks.<b>.[...].<target>`` or any ``<target>``."""
    names = "|".join(re.escape(t) for t in targets)
    if blocks is None:
        return rf"^(?:.*\.)?(?:{names})$"
    block_ids = "|".join(str(b) for b in sorted(set(blocks)))
    return rf"^blocks\.(?:{block_ids})\.(?:.*\.)?(?:{names})$"


def hf_target_pattern(cfg, facts: dict) -> str:
    """The HF peft target regex for ``cfg`` on this backbone; PeftError when it matches nothing."""
    family = facts["family"]
    targets = cfg.target_modules or HF_DEFAULT_TARGETS.get(family)
    if not targets:
        raise PeftError(f"no default LoRA targets for {family}; set model.peft.target_modules "
                        "(module-name suffixes such as attn.qkv)")
    blocks = cfg.blocks if cfg.blocks is not None else HF_DEFAULT_BLOCKS.get(family)
    pattern = target_pattern(targets, blocks)
    if not any(re.fullmatch(pattern, name) for name in facts["modules"]):
        raise PeftError(f"model.peft.target_modules {targets} with blocks {blocks} match no module of {family}")
    return pattern


def check(cfg, facts: dict, num_tasks: int) -> None:
    """Raise PeftError when the PEFT settings ``cfg`` do not fit the backbone ``facts`` describes."""
    kind = implementation(cfg, facts)
    if kind == "none":
        return
    if kind == "hf-peft":
        hf_target_pattern(cfg, facts)
        return
    if not facts["is_vit"]:
        raise PeftError(f"model.peft.kind={cfg.kind} needs a timm VisionTransformer, not {facts['family']}")
    blocks = adapted_blocks(cfg.blocks, facts["depth"])
    if kind == "dualprompt" and not dualprompt_blocks(blocks)[1]:
        raise PeftError("DualPrompt needs blocks for expert prompts beyond the general ones (default 0-4)")
    if kind == "coda":
        if cfg.pool_size < num_tasks:
            raise PeftError(f"model.peft.pool_size ({cfg.pool_size}) must be at least the number of tasks ({num_tasks})")
        if cfg.length % 2:
            raise PeftError("model.peft.length must be even for CODA-Prompt (half keys, half values)")
        if cfg.pool_size > facts["embed_dim"]:
            raise PeftError(f"model.peft.pool_size ({cfg.pool_size}) exceeds the embedding width ({facts['embed_dim']}): "
                            "that many keys cannot be orthogonal")
