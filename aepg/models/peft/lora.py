"""LoRA as in LAE (``KVLoRA``): low-rank updates of the key and value rows of a ViT block's fused
``attn.qkv`` projection; the query rows are left alone.

Per adapted block: two independent rank-r pairs (A: r x d, Kaiming-uniform with a = sqrt(5);
B: d x r, zero), each times its own learnable scalar scale (init 1.0). The projection becomes
``qkv(x) + [0, s_k x A_k^T B_k^T, s_v x A_v^T B_v^T]``, which equals LAE's
``F.linear(x, W + [0; s_k B_k A_k; s_v B_v A_v], b)`` without forming the d x 3d update.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from aepg.models import facts
from aepg.models.peft import LoraMethod
from aepg.models.peft.base import MethodModule, Scale, add_to_qkv, blocks_of
from aepg.models.peft.peft_lora import attach_peft_lora


class LowRank(nn.Module):
    """One scaled rank-r update x -> s * x A^T B^T, zero at initialisation."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, dim))
        self.B = nn.Parameter(torch.zeros(dim, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = Scale()

    def forward(self, x: Tensor) -> Tensor:
        return self.scale(x @ self.A.t() @ self.B.t())


class KVLoRA(MethodModule):
    def __init__(self, backbone: nn.Module, blocks: list[int], rank: int):
        super().__init__()
        dim = backbone.embed_dim
        self.key = nn.ModuleList(LowRank(dim, rank) for _ in blocks)
        self.value = nn.ModuleList(LowRank(dim, rank) for _ in blocks)
        add_to_qkv(backbone, self, blocks, self._add_update)

    def _add_update(self, slot: int, x: Tensor, out: Tensor) -> Tensor:
        update = torch.cat([self.key[slot](x), self.value[slot](x)], dim=-1).to(out.dtype)
        dim = update.shape[-1] // 2
        return torch.cat([out[..., :dim], out[..., dim:] + update], dim=-1)


def build_lora(backbone: nn.Module, cfg: LoraMethod, num_tasks: int) -> KVLoRA | None:
    """LAE's key/value LoRA on a fused-qkv ViT, else HF peft's LoRA injected in place."""
    if cfg.implementation(facts.of_model(backbone)) == "hf-peft":
        return attach_peft_lora(backbone, cfg, num_tasks)
    return KVLoRA(backbone, blocks_of(backbone, cfg), cfg.rank)
