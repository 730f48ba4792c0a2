"""LoRA and DoRA from HF peft, injected in place into a timm model on named targets.

Used for ``dora``, for ``lora`` when ``model.peft.target_modules`` is set, and for ``lora`` on
backbones without a fused ``attn.qkv`` (EfficientNet: its 1x1 convolutions in every block).
Targets are module-name suffixes (``attn.qkv``, ``conv_pw``) restricted to chosen ``blocks.N``
(see ``aepg.models.peft.hf_target_pattern``).
"""

from __future__ import annotations

from torch import nn

from aepg.models.peft import hf_target_pattern


def attach_peft_lora(backbone: nn.Module, cfg, facts: dict) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=hf_target_pattern(cfg, facts), use_dora=cfg.kind == "dora")
    return inject_adapter_in_model(lora, backbone)
