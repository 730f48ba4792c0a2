"""SLCA++'s hybrid slow learner (GengDavid/SLCA ``models/slca_pp.py``, ``convs/vits.py``
``LoraAttention``/``LoraMlp``).

One LoRA per adapted block on ``attn.qkv``, ``mlp.fc1`` and ``mlp.fc2``: ``W x + s B A x`` with a
fixed scale s, B zero and A the top ``rank`` right singular vectors of the pretrained W (the
reference's ``init_lora``, done once, on the first task's weights, which are the pretrained ones);
the same LoRA goes on training over every task. Beside it, every backbone parameter whose name holds
``norm`` or ``bias``, and ``cls_token``, trains too (the reference's name test). The LoRA trains at
``first_task_lr_scale`` times the rate on the first task and at ``lr_scale`` after; the rest always
at ``lr_scale``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aepg.models.peft import SlcaPlusPlusMethod
from aepg.models.peft.base import MethodModule, add_to_linear, blocks_of

LAYERS = ("attn.qkv", "mlp.fc1", "mlp.fc2")
HYBRID = ("norm", "bias", "cls_token")


class SingularLoRA(nn.Module):
    """x -> s x A^T B^T, A from the layer's top right singular vectors, B zero."""

    def __init__(self, layer: nn.Linear, rank: int, scale: float):
        super().__init__()
        _, _, vh = torch.linalg.svd(layer.weight.detach())  # the reference's call (full matrices)
        self.A = nn.Parameter(vh[:rank].clone())
        self.B = nn.Parameter(torch.zeros(layer.out_features, rank, dtype=layer.weight.dtype))
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return x @ (self.B @ self.A).t().to(x.dtype) * self.scale


class HybridSlowLearner(MethodModule):
    def __init__(self, backbone: nn.Module, cfg: SlcaPlusPlusMethod):
        super().__init__()
        if cfg.hybrid:
            for name, p in backbone.named_parameters():
                p.requires_grad_(any(word in name for word in HYBRID))
        layers = [backbone.blocks[b].get_submodule(name) for b in blocks_of(backbone, cfg) for name in LAYERS]
        self.lora = nn.ModuleList(SingularLoRA(layer, cfg.rank, cfg.scale) for layer in layers)
        for slot, layer in enumerate(layers):
            add_to_linear(layer, self, self._add_update, slot)
        self.first_task_lr_scale = cfg.first_task_lr_scale

    def _add_update(self, slot: int, x: Tensor, out: Tensor) -> Tensor:
        return out + self.lora[slot](x).to(out.dtype)

    def learning_rates(self, task: int, scale: float) -> dict[int, float]:
        return {id(p): self.first_task_lr_scale for p in self.lora.parameters()} if task == 0 else {}


def build_slca_pp(backbone: nn.Module, cfg: SlcaPlusPlusMethod, num_tasks: int) -> HybridSlowLearner:
    return HybridSlowLearner(backbone, cfg)
