"""LoRA and DoRA from HF peft, injected in place into a timm model on named targets.

Used for ``dora``, for ``lora`` when ``model.method.target_modules`` is set, and for ``lora`` on
backbones without a fused ``attn.qkv`` (EfficientNet: its 1x1 convolutions in every block).
Targets are module-name suffixes (``attn.qkv``, ``conv_pw``) restricted to chosen ``blocks.N``
(see ``HfLoraMethod.hf_target_pattern`` in ``aepg.models.peft``).
"""

from __future__ import annotations

from torch import nn

from aepg.models import facts
from aepg.models.peft import HfLoraMethod


def attach_peft_lora(backbone: nn.Module, cfg: HfLoraMethod, num_tasks: int) -> None:
    """Inject the LoRA (or DoRA) layers into ``backbone`` in place."""
    from peft import LoraConfig, inject_adapter_in_model

    pattern = cfg.hf_target_pattern(facts.of_model(backbone))
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=pattern, use_dora=cfg.kind == "dora")
    inject_adapter_in_model(lora, backbone)
